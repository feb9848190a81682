"""Record or check per-attack fingerprints on the zoo MNIST CNN: pass counts, success and x_adv.

A refactor that should change nothing must leave every fingerprint identical: the same forward and
backward passes per point, the same successes and the same adversarial examples (to 1e-5).

    python benchmarks/fingerprints.py --record     # writes tests/data/attack_fingerprints.*
    python benchmarks/fingerprints.py              # compares, prints the differences

``tests/test_fingerprints.py`` runs the comparison in CI. The fingerprints are only comparable on
the zoo weights they were recorded with (the weights depend on the CPU's float kernels): the
stored weight hash is checked first and the comparison is skipped, with a message, when it differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
JSON_PATH = DATA / "attack_fingerprints.json"
TENSORS_PATH = DATA / "attack_fingerprints.safetensors"
N_POINTS = 12


def cases() -> dict:
    """Small configurations of every attack (name -> (factory, target))."""
    from advex import attacks as A

    return {
        "fgsm": (lambda: A.FGSM(eps=0.1), None),
        "pgd-linf": (lambda: A.PGD(eps=0.1, steps=10), None),
        "pgd-l2": (lambda: A.PGD(eps=1.0, norm="l2", steps=10), None),
        "pgd-l1": (lambda: A.PGD(eps=8.0, norm="l1", steps=10), None),
        "pgd-targeted": (lambda: A.PGD(eps=0.2, steps=10), "next"),
        "mifgsm": (lambda: A.MIFGSM(eps=0.1, steps=10), None),
        "apgd-ce": (lambda: A.APGD(eps=0.1, steps=20), None),
        "apgd-l1": (lambda: A.APGD(eps=8.0, norm="l1", steps=20), None),
        "apgd-t": (lambda: A.APGD(eps=0.1, steps=10, targeted=True, n_target_classes=3), None),
        "square": (lambda: A.Square(eps=0.15, n_queries=100), None),
        "cw-l2": (
            lambda: A.CW(binary_search_steps=2, max_iterations=30, learning_rate=0.1,
                         initial_const=1.0),
            None,
        ),
        "cw-linf": (lambda: A.CW(norm="linf", max_iterations=20), None),
        "ead": (lambda: A.EAD(binary_search_steps=2, max_iterations=30, initial_const=1.0,
                              learning_rate=0.05), None),
        "deepfool-l2": (lambda: A.DeepFool(max_iter=20), None),
        "deepfool-linf": (lambda: A.DeepFool(norm="linf", max_iter=20), None),
        "fab-linf": (lambda: A.FAB(steps=10), None),
        "fab-l2": (lambda: A.FAB(norm="l2", steps=10), None),
        "fab-t": (lambda: A.FABT(steps=10, n_target_classes=2), None),
        "jsma": (lambda: A.JSMA(), "next"),
        "lbfgs": (lambda: A.LBFGS(search_steps=2, max_iterations=10), "next"),
        "universal": (lambda: A.UniversalPerturbation(eps=0.2, max_epochs=1, inner_steps=5), None),
    }


def _weights_hash(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def setup():
    from advex import data, zoo

    torch.set_num_threads(1)
    model = zoo.load("mnist-smallcnn", progress=False)
    x, y = data.mnist5k("test").tensors()
    with torch.no_grad():
        pred = model(x[:64]).argmax(1)
    keep = (pred == y[:64]).nonzero().squeeze(1)[:N_POINTS]
    return model, x[keep].clone(), y[keep].clone()


def run_all(only: list[str] | None = None) -> tuple[dict, dict]:
    model, x, y = setup()
    summary: dict = {"weights": _weights_hash(model), "attacks": {}}
    tensors: dict = {}
    for name, (make, target) in cases().items():
        if only and name not in only:
            continue
        t = (y + 1) % 10 if target == "next" else None
        res = make()(model, x, y, target=t)
        summary["attacks"][name] = {
            "queries": res.queries.tolist(),
            "gradients": res.gradients.tolist(),
            "success": res.success.tolist(),
        }
        tensors[name] = res.x_adv.contiguous()
    return summary, tensors


def compare(summary: dict, tensors: dict, atol: float = 1e-5) -> list[str]:
    """Differences between a fresh run and the recorded fingerprints (empty = identical)."""
    want = json.loads(JSON_PATH.read_text())
    want_x = load_file(str(TENSORS_PATH))
    diffs = []
    for name, got in summary["attacks"].items():
        ref = want["attacks"].get(name)
        if ref is None:
            diffs.append(f"{name}: no recorded fingerprint")
            continue
        for key in ("queries", "gradients", "success"):
            if got[key] != ref[key]:
                diffs.append(f"{name}: {key} {got[key]} != recorded {ref[key]}")
        err = float((tensors[name] - want_x[name]).abs().max())
        if err > atol:
            diffs.append(f"{name}: x_adv differs from the recording by up to {err:.3g}")
    return diffs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true", help="overwrite the stored fingerprints")
    ap.add_argument("--only", default="", help="comma-separated case names")
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s] or None
    summary, tensors = run_all(only)
    if args.record:
        DATA.mkdir(parents=True, exist_ok=True)
        if only and JSON_PATH.exists():  # update some cases, keep the others
            old = json.loads(JSON_PATH.read_text())
            old_x = load_file(str(TENSORS_PATH))
            old["attacks"].update(summary["attacks"])
            old_x.update(tensors)
            summary, tensors = old, old_x
        JSON_PATH.write_text(json.dumps(summary, indent=1) + "\n")
        save_file(tensors, str(TENSORS_PATH))
        print(f"recorded {len(summary['attacks'])} fingerprints to {JSON_PATH}")
        return 0
    want = json.loads(JSON_PATH.read_text())
    if want["weights"] != summary["weights"]:
        print(f"zoo weights {summary['weights']} differ from the recording's {want['weights']}")
        return 2
    diffs = compare(summary, tensors)
    for d in diffs:
        print(d)
    print("identical" if not diffs else f"{len(diffs)} difference(s)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
