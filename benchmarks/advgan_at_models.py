"""A saved AdvGAN generator (trained on the zoo CNN, model A) against other MNIST models: the
transfer table (B: the zoo CNN's architecture with another seed, C: an MLP, both trained here
on 2,000 ``mnist5k`` digits with a fixed seed) and the project's adversarially trained models
(PGD-AT and TRADES, ``bench-models`` in the zoo cache, trained by ``benchmarks/bench_models.py``).
Per model: clean accuracy, uniform-noise success, the generator's success and (``--pgd``)
white-box PGD-40 success, on the first ``--n-test`` ``mnist5k`` test digits, L∞ ε = 0.3.

    OMP_NUM_THREADS=1 python benchmarks/advgan.py --save-generator gens/full --out ...
    OMP_NUM_THREADS=1 python benchmarks/advgan_at_models.py --generator gens/full [--pgd] \\
        --out benchmarks/results/2026-11-29-advgan-transfer-at.json

Success counts the digits a model already misclassifies (as every advex attack result does).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch import nn

from advex import data, zoo
from advex._io import write_json
from advex.attacks import PGD, AdvGAN
from advex.training import Trainer
from advex.zoo.arch import smallcnn


def _plain(net: nn.Module, train, epochs: int, seed: int) -> nn.Module:
    Trainer(net, epochs=epochs, batch_size=64, lr=1e-3, seeds=seed, progress=False).fit(train)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--generator", required=True, help="a saved AdvGAN (AdvGAN.save)")
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--pgd", action="store_true", help="also white-box PGD-40 per model")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache = os.path.join(os.environ.get("ADVEX_CACHE", ".advex-cache"), "bench-models")
    xt, yt = data.mnist5k("train").tensors()
    train = (xt[:2000], yt[:2000])
    x, y = data.mnist5k("test").tensors()
    x, y = x[: args.n_test], y[: args.n_test]
    gen = AdvGAN.load(args.generator, input_shape=tuple(x.shape[1:]))
    torch.manual_seed(1)
    b = _plain(smallcnn(), train, 3, 1)
    torch.manual_seed(2)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    c = _plain(mlp, train, 6, 2)
    a = zoo.load("mnist-smallcnn", progress=False)
    models = {
        "A: zoo mnist-smallcnn (G trained on it)": (a, "zoo"),
        "B: smallcnn seed 1": (b, "smallcnn, Adam 1e-3, 3 epochs, batch 64, seed 1, 2,000 digits"),
        "C: MLP 784-256-10 seed 2": (c, "MLP, Adam 1e-3, 6 epochs, batch 64, seed 2, 2,000 digits"),
        "PGD-AT": (zoo.load(f"{cache}/pgd-at"), "bench-models/pgd-at"),
        "TRADES": (zoo.load(f"{cache}/trades"), "bench-models/trades"),
    }
    g = torch.Generator().manual_seed(0)
    noisy = (x + 0.3 * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
    x_adv = gen.generate(x)  # one generator pass for every model (the same examples)
    out: dict = {
        "n_test": len(x),
        "eps": 0.3,
        "generator": str(args.generator),
        "generator_recipe": gen.params(),
        "rows": [],
    }
    for name, (m, recipe) in models.items():
        with torch.no_grad():
            clean = m(x).argmax(1)
            row = {
                "model": name,
                "recipe": recipe,
                "clean_accuracy": float((clean == y).float().mean()),
                "noise_success": float((m(noisy).argmax(1) != y).float().mean()),
                # the attack: digits already wrong stay as they are, the rest get x + G(x)
                "advgan_success": float(((clean != y) | (m(x_adv).argmax(1) != y)).float().mean()),
            }
        check = float(gen(m, x, y).success.float().mean())
        assert abs(check - row["advgan_success"]) < 1e-6, (check, row)
        if args.pgd:
            t = time.process_time()
            row["pgd40_success"] = float(PGD(0.3, steps=40, seed=0)(m, x, y).success.float().mean())
            row["pgd40_cpu_seconds"] = time.process_time() - t
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    write_json(args.out, out)


if __name__ == "__main__":
    main()
