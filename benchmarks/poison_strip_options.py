"""STRIP's defender-side options, each measured on the same victim and the same inputs.

    python benchmarks/poison_strip_options.py --victim /tmp/pois/cache/64e77ad60a7967d7.pt
    python benchmarks/poison_strip_options.py --cache /tmp/pois/cache            # full MNIST
    python benchmarks/poison_strip_options.py --quick                            # mnist5k smoke

The victim is the BadNets 1 % pair of ``benchmarks/poison.py`` (reused from its ``--cache``,
trained with the same recipe when the cache does not hold it; ``--victim FILE`` names one cache
file directly — a pair cached before the recipe gained fields has another cache key). For
every configuration
(``--configs``: ``mode/overlays/balanced/N``, e.g. ``add/shared/balanced/100``) it runs
:func:`advex.poison.defenses.strip_evaluate` (overlay pool: a seeded third of the test set;
threshold: the 1 % quantile of the clean entropies of the calibration third; evaluation: the
last third, clean and triggered) and adds

- ``selection_miss_rate``: misses on the *calibration* third's own triggered copies at that
  threshold — the number a configuration is chosen by, so that nothing is tuned on the
  evaluation inputs;
- ``roc_miss_rate_at_frr``: the ROC curve's miss rate at exactly 1 % false rejections on the
  evaluation inputs (threshold = the 1 % quantile of the evaluation clean entropies);
- the paper's normal-fit threshold (a normal fitted to the calibration entropies).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from poison import DATA, RESULTS, Clock, _trained_pair  # noqa: E402

from advex import data as D  # noqa: E402
from advex import zoo  # noqa: E402
from advex._io import write_json  # noqa: E402
from advex.poison import BadNets, VictimRecipe, default_recipe  # noqa: E402
from advex.poison import defenses as P  # noqa: E402

DEFAULT_CONFIGS = "add/random/uniform/100,add/random/balanced/100,add/shared/balanced/100"


def load_victim(path, attack):
    """The victim of one cache file of ``benchmarks/poison.py`` (a ``.pt`` of tensors
    read with ``weights_only=True``), checked to hold ``attack``'s backdoor."""
    st = torch.load(path, weights_only=True)
    meta = json.loads(st["meta"])
    if json.loads(meta["key"])[3] != attack.describe():
        raise SystemExit(f"{path} holds another attack: {meta['key']}")
    model = zoo.build(json.loads(meta["key"])[4]["arch"], **meta["arch_kwargs"])
    model.load_state_dict(st["victim"])
    return model.eval(), meta["key"]


def parse(cfg: str) -> dict:
    mode, overlays, pool, n = cfg.split("/")
    if pool not in ("uniform", "balanced"):
        raise SystemExit(f"config {cfg!r}: pool must be 'uniform' or 'balanced'")
    balanced = pool == "balanced"
    return {"mode": mode, "overlays": overlays, "balanced": balanced, "n_overlays": int(n)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="mnist5k, 20 overlays, n=100")
    ap.add_argument("--cache", default=None, help="benchmarks/poison.py's --cache")
    ap.add_argument("--victim", default=None, help="one cache file of benchmarks/poison.py")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    ap.add_argument("--frr", type=float, default=0.01)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    if args.quick:
        train, test = D.mnist5k("train"), D.mnist5k("test")
        rate, recipe, n = 0.03, VictimRecipe(epochs=2, seed=1), 100
        configs = [{**parse(c), "n_overlays": 20} for c in args.configs.split(",")]
    else:
        kind, path = DATA["mnist"]
        train, test = D.load(f"{kind}:{path}", "train"), D.load(f"{kind}:{path}", "test")
        rate, recipe, n = 0.01, default_recipe(train, seed=0), 1000
        configs = [parse(c) for c in args.configs.split(",")]
    attack = BadNets(rate, 0)
    if args.victim:
        model, key = load_victim(args.victim, attack)
        reused = {"file": args.victim, "cache_key": key}
    else:
        model = _trained_pair(attack, train, test, recipe, args.cache)[0].model
        reused = args.cache
    out = (
        Path(args.out)
        if args.out
        else RESULTS
        / ("2026-11-30-poison-strip-options" + ("-quick" if args.quick else "") + ".json")
    )
    res = {
        "benchmark": "poison STRIP options",
        "data": train.name,
        "victim": {"attack": attack.describe(), "recipe": recipe.__dict__, "reused": reused},
        "frr": args.frr,
        "results": {},
    }
    # the calibration third, as strip_evaluate splits the test set (seed 0)
    perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    third = len(test) // 3
    m_ = min(third, n)
    cal = perm[third : third + m_]
    for cfg in configs:
        name = f"{cfg['mode']}/{cfg['overlays']}/{'balanced' if cfg['balanced'] else 'uniform'}"
        name += f"/{cfg['n_overlays']}"
        ck = Clock()
        s = P.strip_evaluate(model, attack, test, frr=args.frr, n=n, seed=0, **cfg)
        # selection: the calibration third's triggered copies, same STRIP, same threshold
        strip = P.STRIP(model, test.subset(perm[:third]), seed=0, **cfg)
        xc, yc = test.x[cal], test.y[cal]
        xt = attack.apply_trigger(xc[yc != attack.target], test.bounds)
        sel = float((strip.entropy(xt) >= s.threshold).float().mean())
        hc = s.entropy_calibration.double()
        z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(args.frr)))
        th_n = float(hc.mean() + z * hc.std())
        r = {
            **s.to_dict(),
            "n_missed": int((s.entropy_triggered >= s.threshold).sum()),
            "selection_miss_rate": sel,
            "selection_n_triggered": len(xt),
            "roc_miss_rate_at_frr": s.miss_rate_at(args.frr),
            "roc_miss_rate_firing_at_frr": s.miss_rate_at(args.frr, firing=True),
            "normal_fit": {
                "threshold": th_n,
                "false_rejection_rate": float((s.entropy_clean < th_n).float().mean()),
                "miss_rate": float((s.entropy_triggered >= th_n).float().mean()),
                "miss_rate_firing": float((s.entropy_triggered[s.fires] >= th_n).float().mean()),
            },
            **ck.done(),
        }
        res["results"][name] = r
        print(
            name,
            {
                k: r[k]
                for k in (
                    "selection_miss_rate",
                    "false_rejection_rate",
                    "miss_rate",
                    "miss_rate_firing",
                    "roc_miss_rate_at_frr",
                    "roc_auc",
                    "cpu_s",
                )
            },
            flush=True,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, res)
    print("wrote", out)


if __name__ == "__main__":
    main()
