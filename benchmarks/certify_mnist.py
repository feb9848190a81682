"""Randomized smoothing on MNIST (Cohen et al. 2019), σ = 0.25: certified accuracy vs L2 radius.

Trains (or loads) a Gaussian-augmented SmallCNN base classifier, certifies a subset of test
digits with CERTIFY (n0, n, α) and prints certified accuracy at r = 0, 0.25, 0.5, 0.75, 1.0,
plus the PREDICT accuracy of the smoothed classifier on the same points. Writes results.json,
certified_curve.png and the base model (zoo format) to --out.

    OMP_NUM_THREADS=1 PYTHONPATH=src python3 benchmarks/certify_mnist.py --points 100 --n 1000

``--init zoo`` (default) fine-tunes the zoo's mnist-smallcnn with noise (cheap); ``--init
scratch`` trains from a fresh initialisation. ``--train mnist5k`` uses the 4,000 training
digits of mnist5k; ``--train full`` the 60,000 MNIST digits from --mnist-dir. Test points are
the first --points digits of the mnist5k test split (or of MNIST t10k with --test full).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from advex import data, zoo
from advex.defenses.smoothing import (
    SmoothedClassifier,
    certified_accuracy,
    save_certified_curve,
    train_gaussian_augmentation,
)

RADII = [0.0, 0.25, 0.5, 0.75, 1.0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--predict-n", type=int, default=100)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--init", choices=("zoo", "scratch"), default="zoo")
    p.add_argument("--train", choices=("mnist5k", "full"), default="mnist5k")
    p.add_argument("--test", choices=("mnist5k", "full"), default="mnist5k")
    p.add_argument("--mnist-dir", default="../shared/datasets/mnist")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=".advex-cache/certify_mnist")
    p.add_argument("--reuse", action="store_true", help="load the base model from --out")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    train = data.mnist5k("train") if a.train == "mnist5k" else data.mnist(a.mnist_dir, "train")
    test = data.mnist5k("test") if a.test == "mnist5k" else data.mnist(a.mnist_dir, "test")
    t0 = time.perf_counter()
    model_dir = out / "base"
    if a.reuse:
        base = zoo.load(model_dir)
    else:
        init = zoo.load("mnist-smallcnn") if a.init == "zoo" else "smallcnn"
        base = train_gaussian_augmentation(
            init,
            train,
            a.sigma,
            a.epochs,
            seed=a.seed,
            arch="smallcnn",
            out_dir=model_dir,
            test_data=test,
            progress=True,
        )
    t_train = time.perf_counter() - t0
    card = zoo.load_card(model_dir)
    print(
        f"base: clean acc {card.get('accuracy')}, noisy acc {card.get('accuracy_noisy')} "
        f"({t_train:.0f}s)",
        file=sys.stderr,
    )

    x, y = test.tensors()
    x, y = x[: a.points], y[: a.points]
    smooth = SmoothedClassifier(base, a.sigma, num_classes=10, batch_size=a.batch_size)
    t1 = time.perf_counter()
    labels, radii = smooth.certify(x, a.n0, a.n, a.alpha, torch.Generator().manual_seed(a.seed))
    t_cert = time.perf_counter() - t1
    pred = smooth.predict(x, a.predict_n, a.alpha, torch.Generator().manual_seed(a.seed + 1))
    acc = certified_accuracy(labels, radii, y, RADII).tolist()
    res = {
        "sigma": a.sigma,
        "points": a.points,
        "test": a.test,
        "train": a.train,
        "init": a.init,
        "epochs": a.epochs,
        "n0": a.n0,
        "n": a.n,
        "alpha": a.alpha,
        "base_clean_accuracy": card.get("accuracy"),
        "base_noisy_accuracy": card.get("accuracy_noisy"),
        "certified_accuracy": dict(zip([str(r) for r in RADII], acc, strict=True)),
        "abstain_rate": float((labels == -1).double().mean()),
        "predict_n": a.predict_n,
        "predict_accuracy": float((pred == y).double().mean()),
        "predict_abstain_rate": float((pred == -1).double().mean()),
        "train_seconds": round(t_train, 1),
        "certify_seconds": round(t_cert, 1),
        "torch_threads": a.threads,
    }
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    save_certified_curve(
        out / "certified_curve.png",
        labels,
        radii,
        y,
        max_radius=1.0,
        title=f"MNIST, σ={a.sigma}, {a.points} points, n={a.n}",
    )
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
