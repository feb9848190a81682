"""SHA-256 of the weights of small training runs of every trainer in advex (zoo.train,
AdversarialTrainer per method, DefensiveDistillation, Gaussian augmentation for smoothing).

Run before and after a change to the training code: the printed hashes must not change.

    python benchmarks/trainer_hashes.py            # print
    python benchmarks/trainer_hashes.py --save F   # record
    python benchmarks/trainer_hashes.py --check F  # compare with a recording
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile

import torch


def state_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def main() -> int:
    from advex import data, zoo
    from advex.defenses.distillation import DefensiveDistillation
    from advex.defenses.smoothing import train_gaussian_augmentation
    from advex.defenses.training import AdversarialTrainer

    torch.set_num_threads(1)
    out: dict[str, str] = {}
    digits = data.digits("train")
    mnist = data.mnist5k("train").subset(256)
    val = data.mnist5k("test").subset(64)

    torch.manual_seed(0)
    m = zoo.build("mlp")
    zoo.train(m, digits, epochs=1, lr=3e-3, batch_size=32, seed=0, progress=False)
    out["zoo.train digits mlp"] = state_hash(m)
    torch.manual_seed(0)
    m = zoo.build("smallcnn")
    zoo.train(
        m, mnist, epochs=1, lr=1e-3, batch_size=64, seed=0, augment="shift", progress=False
    )
    out["zoo.train mnist smallcnn shift"] = state_hash(m)

    for method in ("pgd", "trades", "mart", "fgsm-rs", "standard"):
        torch.manual_seed(0)
        m = zoo.build("smallcnn")
        kw = dict(epochs=2, batch_size=64, eval_n=32, eval_steps=2, final_eval_steps=2)
        if method in ("pgd", "trades", "mart"):
            kw["attack_steps"] = 2
        eps = 0.0 if method == "standard" else 0.3
        with tempfile.TemporaryDirectory() as d:
            r = AdversarialTrainer(
                m, method, eps=eps, progress=False, out_dir=d, eps_warmup_epochs=1, **kw
            ).fit(mnist, val)
        out[f"AdversarialTrainer {method}"] = state_hash(m)
        out[f"AdversarialTrainer {method} log"] = hashlib.sha256(
            json.dumps([{k: v for k, v in e.items() if k != "seconds"} for e in r.log]).encode()
        ).hexdigest()[:24]
    # channels-last off, SGD + piecewise
    torch.manual_seed(0)
    m = zoo.build("smallcnn")
    AdversarialTrainer(
        m, "pgd", eps=0.3, epochs=1, batch_size=64, attack_steps=2, optimizer="sgd",
        schedule="piecewise", channels_last=False, progress=False,
    ).fit(mnist)
    out["AdversarialTrainer pgd sgd piecewise nchw"] = state_hash(m)

    r = DefensiveDistillation(
        "smallcnn", temperature=100, epochs=1, lr=5e-3, batch_size=64, progress=False
    ).fit(mnist)
    out["distillation student"] = state_hash(r.model)
    out["distillation teacher"] = state_hash(r.teacher)

    m = train_gaussian_augmentation("mlp", digits, sigma=0.25, epochs=1, lr=3e-3, batch_size=32)
    out["smoothing gaussian mlp"] = state_hash(m)

    ap = argparse.ArgumentParser()
    ap.add_argument("--save")
    ap.add_argument("--check")
    a = ap.parse_args()
    for k, v in out.items():
        print(f"{v}  {k}")
    if a.save:
        with open(a.save, "w") as f:
            json.dump(out, f, indent=1)
    if a.check:
        with open(a.check) as f:
            ref = json.load(f)
        bad = [k for k in ref if ref[k] != out.get(k)]
        print("identical" if not bad else f"DIFFERENT: {bad}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
