"""AdvGAN and PGD-40 against the project's adversarially trained MNIST models (the
``bench-models`` PGD-AT and TRADES in the zoo cache, trained by ``benchmarks/bench_models.py``),
500 test digits, L∞ ε = 0.3; a generator fitted 3 epochs against PGD-AT.

    OMP_NUM_THREADS=1 python benchmarks/advgan_at_models.py OUT.json

(The success of run D's generator, trained on the zoo CNN, on these models was measured with
``AdvGAN.load(DIR)(model, x, y)`` on the same 500 digits and added to the results file.)
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from advex import data, zoo
from advex._io import write_json
from advex.attacks import PGD, AdvGAN


def main() -> None:
    torch.set_num_threads(1)
    cache = os.path.join(os.environ.get("ADVEX_CACHE", ".advex-cache"), "bench-models")
    models = {n: zoo.load(f"{cache}/{n}") for n in ("pgd-at", "trades")}
    xt, yt = data.mnist5k("train").tensors()
    x, y = data.mnist5k("test").tensors()
    x, y = x[:500], y[:500]
    out: dict = {"n_test": 500, "eps": 0.3, "models": {}}
    g = torch.Generator().manual_seed(0)
    noisy = (x + 0.3 * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
    for n, m in models.items():
        with torch.no_grad():
            acc = float((m(x).argmax(1) == y).float().mean())
            noise = float((m(noisy).argmax(1) != y).float().mean())
        r = PGD(0.3, steps=40, seed=0)(m, x, y)
        out["models"][n] = {
            "card": {k: m.card.get(k) for k in ("accuracy", "robust_accuracy", "epochs_completed")},
            "recipe": m.card.get("config") or m.card.get("recipe"),
            "clean_accuracy": acc,
            "pgd40_success": float(r.success.float().mean()),
            "noise_success": noise,
        }
        print(n, acc, out["models"][n]["pgd40_success"], flush=True)
    gen = AdvGAN(0.3, epochs=3, batch_size=32, width=8, alpha=0.1, beta=1.0, seed=0)
    t = time.process_time()
    gen.fit(models["pgd-at"], (xt, yt))
    cpu = time.process_time() - t
    out["advgan_vs_pgd_at"] = {
        "recipe": gen.params(),
        "fit_cpu_seconds": cpu,
        "history": gen.history_,
    }
    for n, m in models.items():
        out["models"][n]["advgan_trained_on_pgd_at_success"] = float(
            gen(m, x, y).success.float().mean()
        )
    print(json.dumps({n: v["advgan_trained_on_pgd_at_success"] for n, v in out["models"].items()}))
    write_json(sys.argv[1], out)


if __name__ == "__main__":
    main()
