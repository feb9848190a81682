"""Poisoning benchmark: advex.poison against ART on the same data and the same victim.

    python benchmarks/poison.py --mnist ../shared/datasets/mnist        # full MNIST, 1 %
    python benchmarks/poison.py --quick                                 # mnist5k smoke run

Stages (results.json is rewritten after each, so an interrupted run keeps what it measured):

1. BadNets (4x4 checkerboard, bottom right, all-to-one → 0): the victim and a clean
   reference trained with the same recipe; attack success, clean accuracy, drop.
2. Training-set detectors on that victim: advex spectral signatures and activation
   clustering (whitened, and the papers' unwhitened variants), ART's
   SpectralSignatureDefense and ActivationDefence on the same model and data.
3. STRIP: advex (100 overlays; 20 in --quick) and ART's STRIP (its defaults: 20 samples),
   both at 1 % false rejections, on the same inputs.
4. Neural Cleanse + unlearning (advex). ART's NeuralCleanse supports Keras classifiers only
   (``NotImplementedError`` for others) and Keras/TensorFlow are not installed: not run.
5. Clean-label (Turner et al.) at 10 % of the target class, PGD on the clean reference.
6. ART's PoisoningAttackBackdoor (add_pattern_bd) at the same rate, same victim recipe.
7. Filter (advex spectral flags) and retrain with the same recipe.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from advex import data as D  # noqa: E402
from advex._io import write_json  # noqa: E402
from advex.poison import (  # noqa: E402
    BadNets,
    CleanLabel,
    VictimRecipe,
    accuracy,
    attack_success_rate,
    measure,
    train_victim,
)
from advex.poison import defenses as P  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "2026-11-29-poison.json"


def _art_classifier(model, shape, k):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        input_shape=tuple(shape),
        nb_classes=k,
        clip_values=(0.0, 1.0),
    )


def _scores(is_clean, idx, n):
    flagged = torch.as_tensor(~np.asarray(is_clean, dtype=bool))
    return P.score_detection(flagged, None, idx, n)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="mnist5k, small budgets (smoke)")
    ap.add_argument("--mnist", default=str(ROOT.parent / "shared" / "datasets" / "mnist"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip", default="", help="comma-separated stages to skip (e.g. 6,7)")
    ap.add_argument("--n-train", type=int, default=None, help="first N training samples")
    ap.add_argument("--n-test", type=int, default=None, help="first N test samples")
    ap.add_argument("--epochs", type=int, default=None, help="victim epochs")
    ap.add_argument("--nc-steps", type=int, default=None, help="Neural Cleanse steps per class")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    out = (
        Path(args.out) if args.out else (OUT.with_name("poison-quick.json") if args.quick else OUT)
    )
    if args.quick:
        train, test = D.mnist5k("train"), D.mnist5k("test")
        rate, recipe, overlays, nc_steps, n_clean = (
            0.03,
            VictimRecipe(epochs=2, seed=1),
            20,
            100,
            300,
        )
    else:
        train, test = D.mnist(args.mnist, "train"), D.mnist(args.mnist, "test")
        rate, recipe, overlays, nc_steps, n_clean = (
            0.01,
            VictimRecipe(epochs=2, seed=0),
            50,
            150,
            500,
        )
    if args.n_train:
        train = train.subset(args.n_train)
    if args.n_test:
        test = test.subset(args.n_test)
    if args.epochs:
        recipe = VictimRecipe(**{**recipe.__dict__, "epochs": args.epochs})
    if args.nc_steps:
        nc_steps = args.nc_steps
    n_clean = min(n_clean, len(test) // 2)
    res: dict = {
        "benchmark": "poison",
        "mode": "quick" if args.quick else "full",
        "data": train.name,
        "n_train": len(train),
        "n_test": len(test),
        "recipe": recipe.__dict__,
        "machine": f"{platform.machine()}, torch threads 1 (2 shared cores, contended)",
        "stages": {},
    }

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, res)

    def stage(name):
        print(f"\n== {name}", flush=True)
        return time.perf_counter()

    # 1. BadNets
    t = stage("1. BadNets")
    attack = BadNets(rate, 0)
    m = measure(attack, train, test, recipe=recipe)
    res["stages"]["badnets"] = {
        **{k: v for k, v in m.to_dict().items() if k != "poisoned_indices"},
        "wall_s": time.perf_counter() - t,
    }
    print(json.dumps(res["stages"]["badnets"], default=str)[:600], flush=True)
    save()
    p, idx, n = m.poisoned.dataset, m.poisoned.indices, len(train)

    # 2. training-set detectors
    t = stage("2. spectral signatures / activation clustering")
    det = {}
    for name, fn, kw in (
        ("advex spectral (whitened)", P.spectral_signatures, {}),
        ("advex spectral (paper: unwhitened)", P.spectral_signatures, {"whiten": False}),
        ("advex activation clustering (whitened, PCA)", P.activation_clustering, {}),
        (
            "advex activation clustering (paper: ICA, unwhitened)",
            P.activation_clustering,
            {"reduce": "ica", "whiten": False},
        ),
    ):
        t0 = time.perf_counter()
        d = fn(m.model, p, poisoned_indices=idx, **kw)
        det[name] = {**d.metrics, "wall_s": time.perf_counter() - t0}
        if name == "advex spectral (whitened)":
            spectral_flags = d.flagged
        print(name, det[name], flush=True)
    x_np = p.x.numpy()
    y_oh = np.eye(train.num_classes, dtype=np.float32)[p.y.numpy()]
    try:
        from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense

        clf = _art_classifier(m.model, train.x.shape[1:], train.num_classes)
        t0 = time.perf_counter()
        ssd = SpectralSignatureDefense(clf, x_np, y_oh, expected_pp_poison=rate, batch_size=256)
        _, is_clean = ssd.detect_poison()
        det["ART SpectralSignatureDefense (expected_pp_poison=rate)"] = {
            **_scores(is_clean, idx, n),
            "wall_s": time.perf_counter() - t0,
        }
        t0 = time.perf_counter()
        ad = ActivationDefence(clf, x_np, y_oh)
        _, is_clean = ad.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA")
        det["ART ActivationDefence (PCA, 10 dims)"] = {
            **_scores(is_clean, idx, n),
            "wall_s": time.perf_counter() - t0,
        }
        det["ART note"] = (
            "ART takes the activations of the last layer in layer_names; for a PyTorch "
            "nn.Sequential that is the 10-logit output layer (it warns 'too small')"
        )
    except Exception as e:  # noqa: BLE001 - a peer failure is reported, not fatal
        det["ART error"] = f"{type(e).__name__}: {e}"
    for k, v in det.items():
        if k.startswith("ART") and isinstance(v, dict):
            print(k, v, flush=True)
    res["stages"]["detectors"] = {**det, "wall_s": time.perf_counter() - t}
    save()

    # 3. STRIP
    t = stage("3. STRIP")
    s = P.strip_evaluate(m.model, attack, test, frr=0.01, n_overlays=overlays, n=n_clean)
    strip = {"advex STRIP": {**s.to_dict(), "wall_s": time.perf_counter() - t}}
    print(strip["advex STRIP"], flush=True)
    try:
        from art.defences.transformer.poisoning import STRIP as ArtSTRIP

        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(test), generator=g)
        third = len(test) // 3
        m_art = min(third, 300)
        cal = test.x[perm[third : third + m_art]].numpy()
        ev = perm[2 * third : 2 * third + m_art]
        xe, ye = test.x[ev], test.y[ev]
        keep = ye != attack.target
        xt = attack.apply_trigger(xe[keep]).numpy()
        np.random.seed(0)
        # ART's STRIP takes the entropy of predict(): give it probabilities, not logits
        probs = torch.nn.Sequential(m.model, torch.nn.Softmax(dim=1)).eval()
        clf = _art_classifier(probs, train.x.shape[1:], train.num_classes)
        defended = ArtSTRIP(clf)(num_samples=20, false_acceptance_rate=0.01)
        defended.mitigate(cal)
        pc = defended.predict(xe.numpy())
        pt = defended.predict(xt)
        abst_c = float(np.mean(np.all(pc == 0, axis=1)))
        abst_t = float(np.mean(np.all(pt == 0, axis=1)))
        strip["ART STRIP (num_samples=20, false_acceptance_rate=0.01)"] = {
            "false_rejection_rate": abst_c,
            "miss_rate": 1 - abst_t,
            "n_clean": len(xe),
            "n_triggered": len(xt),
            "wall_s": time.perf_counter() - t0,
        }
        print(strip["ART STRIP (num_samples=20, false_acceptance_rate=0.01)"], flush=True)
    except Exception as e:  # noqa: BLE001
        strip["ART error"] = f"{type(e).__name__}: {e}"
    res["stages"]["strip"] = strip
    save()

    # 4. Neural Cleanse + unlearning
    t = stage("4. Neural Cleanse + unlearning")
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(test), generator=g)
    half = len(test) // 2
    clean, evalset = test.subset(perm[:n_clean]), test.subset(perm[half:])
    nc = P.neural_cleanse(m.model, clean, steps=nc_steps)
    ncd = nc.to_dict()
    # the flagged class; when the MAD rule flags none, the most anomalous one (reported)
    tgt = nc.suspected_target if nc.suspected_target is not None else nc.most_anomalous
    ncd["unlearned_class"] = tgt
    ncd["unlearned_class_flagged"] = nc.suspected_target is not None
    if tgt is not None:
        rep = P.unlearn(m.model, clean, nc.masks[tgt], nc.patterns[tgt], lr=3e-4, epochs=5)
        ncd.update(
            {
                "attack_success_before": attack_success_rate(m.model, attack, evalset),
                "clean_accuracy_before": accuracy(m.model, evalset),
                "attack_success_after": attack_success_rate(rep, attack, evalset),
                "clean_accuracy_after": accuracy(rep, evalset),
            }
        )
    ncd["wall_s"] = time.perf_counter() - t
    ncd["ART NeuralCleanse"] = (
        "not run: art.defences.transformer.poisoning.NeuralCleanse raises NotImplementedError "
        "for non-Keras classifiers ('Only Keras classifiers are supported for this defence') "
        "and Keras/TensorFlow are not installed"
    )
    res["stages"]["neural_cleanse"] = ncd
    print({k: v for k, v in ncd.items() if k not in ("l1_norms",)}, flush=True)
    save()

    # 5. clean-label
    if "5" not in skip:
        t = stage("5. clean-label")
        n_target = int((train.y == 0).sum())
        cl_rate = 0.1 * n_target / len(train)
        cl = CleanLabel(cl_rate, 0, eps=0.3, steps=20)
        mc = measure(cl, train, test, recipe=recipe, reference_model=m.reference_model)
        res["stages"]["clean_label"] = {
            **{k: v for k, v in mc.to_dict().items() if k != "poisoned_indices"},
            "wall_s": time.perf_counter() - t,
        }
        print(res["stages"]["clean_label"], flush=True)
        save()

    # 6. ART's backdoor attack, same rate, same recipe
    if "6" not in skip:
        t = stage("6. ART PoisoningAttackBackdoor")
        try:
            from art.attacks.poisoning import PoisoningAttackBackdoor
            from art.attacks.poisoning.perturbations import add_pattern_bd

            g = torch.Generator().manual_seed(0)
            k = int(round(rate * len(train)))
            pick = torch.randperm(len(train), generator=g)[:k].numpy()
            bd = PoisoningAttackBackdoor(lambda x: add_pattern_bd(x, pixel_value=1.0))
            x_art = train.x.numpy().copy()
            sub = x_art[pick][:, 0]  # ART's image perturbations take (N, H, W)
            y_target = np.zeros((k, train.num_classes), dtype=np.float32)
            y_target[:, 0] = 1
            xp, _ = bd.poison(sub, y=y_target)
            x_art[pick, 0] = xp
            y_art = train.y.clone()
            y_art[torch.as_tensor(pick)] = 0
            pd = D.ArrayDataset(
                torch.from_numpy(x_art), y_art, num_classes=train.num_classes, name="art-poisoned"
            )
            victim = train_victim(pd, recipe, arch_kwargs=m.recipe["arch_kwargs"])
            xt = test.x[test.y != 0]
            xt_art = torch.from_numpy(add_pattern_bd(xt.numpy()[:, 0].copy(), pixel_value=1.0))
            pred = torch.cat(
                [victim(xt_art[i : i + 1000, None]).argmax(1) for i in range(0, len(xt), 1000)]
            )
            res["stages"]["art_backdoor"] = {
                "attack_success_rate": float((pred == 0).float().mean()),
                "clean_accuracy": accuracy(victim, test),
                "clean_accuracy_reference": m.clean_accuracy_reference,
                "n_poisoned": k,
                "wall_s": time.perf_counter() - t,
            }
        except Exception as e:  # noqa: BLE001
            res["stages"]["art_backdoor"] = {"error": f"{type(e).__name__}: {e}"}
        print(res["stages"]["art_backdoor"], flush=True)
        save()

    # 7. filter and retrain
    if "7" not in skip:
        t = stage("7. filter (advex spectral) and retrain")
        fr = P.filter_and_retrain(
            p, spectral_flags, test, attack, recipe=recipe, arch_kwargs=m.recipe["arch_kwargs"]
        )
        fr.pop("model")
        res["stages"]["filter_and_retrain"] = {**fr, "wall_s": time.perf_counter() - t}
        print(res["stages"]["filter_and_retrain"], flush=True)
        save()
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
