"""Why STRIP misses on the full-MNIST BadNets victim: per-(input, overlay) entropies.

    python benchmarks/poison_strip_diagnose.py --victim /tmp/pois/cache/64e77ad60a7967d7.pt
    python benchmarks/poison_strip_diagnose.py --quick                    # mnist5k smoke

The inputs are strip_evaluate's (seed 0): the calibration third and the evaluation third of the
test set, clean and triggered (non-target digits). Every input is superimposed with the same
class-balanced set of ``--overlays`` images (30 per class by default) of the overlay third, by
each ``--modes`` operator (``add``: the paper's saturated sum; ``average``: the 50/50 blend), and
the entropy, the predicted class and the target's probability of every superimposition are kept.
From that one pass, subsets of the columns give STRIP with a shared set of N = 50 … 300 and with
random per-input draws; the threshold is always the 1 % quantile of the calibration clean
entropies; ``sel`` is the miss rate on the calibration third's triggered copies (the number a
choice may be made by), ``miss`` / ``frr`` those on the evaluation inputs, ``roc_miss`` the miss
rate at exactly 1 % false rejections of the evaluation clean inputs. It then prints what the
missed triggered inputs and the low-entropy clean inputs are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from poison import DATA, _trained_pair  # noqa: E402
from poison_strip_options import load_victim  # noqa: E402

from advex import data as D  # noqa: E402
from advex._io import write_json  # noqa: E402
from advex.poison import BadNets, VictimRecipe, default_recipe  # noqa: E402
from advex.poison.measure import predict  # noqa: E402


def superimpose(model, sets, ov, mode):
    out = {}
    with torch.no_grad():
        for name, (x, y) in sets.items():
            n = len(ov)
            H, A, P0 = torch.empty(len(x), n), torch.empty(len(x), n, dtype=torch.long), None
            P0 = torch.empty(len(x), n)
            for i in range(len(x)):
                mix = (x[i][None] + ov).clamp(0, 1) if mode == "add" else (x[i][None] + ov) / 2
                for j in range(0, n, 150):
                    p = F.softmax(model(mix[j : j + 150]).double(), 1)
                    H[i, j : j + 150] = (-(p * p.clamp_min(1e-12).log()).sum(1)).float()
                    A[i, j : j + 150] = p.argmax(1)
                    P0[i, j : j + 150] = p[:, 0].float()
            out[name] = {"H": H, "A": A, "P0": P0, "y": y, "pred": predict(model, x)}
    return out


def score(d, cols_fn):
    st = {k: torch.gather(d[k]["H"], 1, cols_fn(len(d[k]["H"]), k)).double().mean(1) for k in d}
    thr = float(st["cal_clean"].quantile(0.01))
    fires = d["ev_trig"]["pred"] == 0
    miss = st["ev_trig"] >= thr
    th_o = float(st["ev_clean"].quantile(0.01))
    pct = lambda v: round(100 * float(v), 2)  # noqa: E731
    return {
        "sel": pct((st["cal_trig"] >= thr).float().mean()),
        "frr": pct((st["ev_clean"] < thr).float().mean()),
        "miss": pct(miss.float().mean()),
        "n_missed": int(miss.sum()),
        "miss_firing": pct(miss[fires].float().mean()),
        "roc_miss": pct((st["ev_trig"] >= th_o).float().mean()),
        "threshold": round(thr, 4),
    }


def analyse(d, ov, oy, mode):
    """The table of configurations and the diagnosis of the misses, from one pass."""
    n_ov = len(ov)

    def shared(lo, size):
        return lambda b, _k: torch.arange(lo, lo + size).repeat(b, 1)

    def random(size, seed=0):
        def f(b, key):
            gg = torch.Generator().manual_seed(seed + sum(map(ord, key)))
            return torch.stack([torch.randperm(n_ov, generator=gg)[:size] for _ in range(b)])

        return f

    q = n_ov // 3
    rows = {f"shared {q * i}-{q * (i + 1)}": shared(q * i, q) for i in range(3)}
    rows.update({f"shared {2 * q}": shared(0, 2 * q), f"shared {n_ov}": shared(0, n_ov)})
    rows.update({f"random {q} (seed 0)": random(q, 0), f"random {q} (seed 1)": random(q, 1)})
    rows[f"random {2 * q}"] = random(2 * q)
    res = {name: score(d, fn) for name, fn in rows.items()}
    # what the misses (shared, all columns) are
    hc = d["cal_clean"]["H"].double().mean(1)
    thr = float(hc.quantile(0.01))
    ht = d["ev_trig"]["H"].double().mean(1)
    missed = (ht >= thr).nonzero().squeeze(1)
    A = d["ev_trig"]["A"][missed]
    lose = A != 0
    low = hc.argsort()[:12]
    ink = ov.sum((1, 2, 3))
    lose_rate = (d["ev_trig"]["A"] != 0).float().mean(0)
    h_m = d["ev_trig"]["H"][missed]
    diag = {
        "missed_labels": d["ev_trig"]["y"][missed].tolist(),
        "missed_share_of_overlays_target_loses": [round(float(v), 3) for v in lose.float().mean(1)],
        "missed_entropy_share_from_lost_overlays": [
            round(float((h_m[i] * lose[i]).sum() / h_m[i].sum()), 3) for i in range(len(missed))
        ],
        "overlay_class_when_target_loses": torch.bincount(
            oy.repeat(len(missed), 1)[lose], minlength=10
        ).tolist(),
        "predicted_class_when_target_loses": torch.bincount(A[lose], minlength=10).tolist(),
        "all_triggered_share_target_loses": round(
            float((d["ev_trig"]["A"] != 0).float().mean()), 4
        ),
        "corr_lose_rate_overlay_ink": round(
            float(torch.corrcoef(torch.stack([lose_rate, ink]))[0, 1]), 3
        ),
        "overlay_ink_in_trigger_corner_mean": round(
            float(ov[..., 22:27, 22:27].sum((1, 2, 3)).mean()), 4
        ),
        "calibration_lowest_labels": d["cal_clean"]["y"][low].tolist(),
        "calibration_lowest_entropies": [round(float(v), 4) for v in hc[low]],
        "calibration_lowest_share_keeping_own_class": [
            round(float((d["cal_clean"]["A"][i] == d["cal_clean"]["pred"][i]).float().mean()), 3)
            for i in low
        ],
    }
    for name, r in res.items():
        print(mode, name, r, flush=True)
    print(mode, diag, flush=True)
    return {"configs": res, "diagnosis": diag}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cache", default=None, help="benchmarks/poison.py's --cache")
    ap.add_argument("--victim", default=None, help="one cache file of benchmarks/poison.py")
    ap.add_argument("--modes", default="add,average")
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        train, test = D.mnist5k("train"), D.mnist5k("test")
        rate, recipe, n, k = 0.03, VictimRecipe(epochs=2, seed=1), 60, 3
    else:
        kind, path = DATA["mnist"]
        train, test = D.load(f"{kind}:{path}", "train"), D.load(f"{kind}:{path}", "test")
        rate, recipe, n, k = 0.01, default_recipe(train, seed=0), 1000, args.per_class
    attack = BadNets(rate, 0)
    if args.victim:
        model = load_victim(args.victim, attack)[0]
    else:
        model = _trained_pair(attack, train, test, recipe, args.cache)[0].model.eval()
    perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    third = len(test) // 3
    pool, cal, ev = perm[:third], perm[third : third + n], perm[2 * third : 2 * third + n]
    g = torch.Generator().manual_seed(123)
    per_class = []
    for c in range(test.num_classes):
        ic = pool[test.y[pool] == c]
        per_class.append(ic[torch.randperm(len(ic), generator=g)[:k]])
    ov_idx = torch.stack(per_class, 1).reshape(-1)  # classes 0..9, 0..9, ...: balanced prefixes
    ov, oy = test.x[ov_idx], test.y[ov_idx]
    sets = {}
    for name, idx in (("cal", cal), ("ev", ev)):
        x, y = test.x[idx], test.y[idx]
        sets[name + "_clean"] = (x, y)
        sets[name + "_trig"] = (attack.apply_trigger(x[y != 0], test.bounds), y[y != 0])
    report = {}
    for mode in args.modes.split(","):
        report[mode] = analyse(superimpose(model, sets, ov, mode), ov, oy, mode)
    out = args.out or ROOT / "benchmarks" / "results" / (
        "2026-11-30-poison-strip-diagnose" + ("-quick" if args.quick else "") + ".json"
    )
    write_json(Path(out), {"overlays": len(ov_idx), "n": n, "modes": report})
    print("wrote", out)


if __name__ == "__main__":
    main()
