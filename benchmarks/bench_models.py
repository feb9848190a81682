"""The robust MNIST models of ``benchmarks/autoattack_passes.py``: short advex recipes, trained
once and cached outside the repository under ``$ADVEX_CACHE/bench-models/NAME``.

Every model is a zoo ``smallcnn`` trained on ``mnist5k`` (4,000 training digits) with
:func:`advex.defenses.train_from_spec`; the recipes are in :data:`RECIPES`.

    PYTHONPATH=src python3 benchmarks/bench_models.py            # train what is missing
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

#: name -> (what it is, evaluation ε, train_from_spec arguments)
RECIPES: dict[str, tuple[str, float, dict]] = {
    "trades": (
        "TRADES CNN (β = 6, PGD-40 inner steps, 10 epochs, onecycle Adam 1e-3)",
        0.3,
        dict(method="trades", eps=0.3, epochs=10, attack_steps=40, eval_n=500),
    ),
    "pgd-at": (
        "PGD-AT CNN (PGD-7 inner steps, 6 epochs, ε warm-up 2 epochs)",
        0.3,
        dict(method="pgd", eps=0.3, epochs=6, attack_steps=7, eps_warmup_epochs=2, eval_n=200),
    ),
    "fgsm-rs": (
        "FGSM-RS CNN (one FGSM step α = 1.25ε from a random start, 10 epochs, ε warm-up 3)",
        0.3,
        dict(method="fgsm-rs", eps=0.3, epochs=10, eps_warmup_epochs=3, eval_n=200),
    ),
    "distilled": (
        "defensive distillation T = 100 (teacher and student 4 epochs each): the cross-entropy "
        "gradient underflows (gradient masking); evaluated at ε = 0.1, where it is partly robust",
        0.1,
        dict(method="distill", eps=0.1, epochs=4, temperature=100.0),
    ),
}


def model_dir(name: str) -> Path:
    from advex import zoo

    return zoo.cache_dir() / "bench-models" / name


def ensure(name: str, log=print):
    """The cached model ``name`` (trained with its recipe when absent), loaded."""
    from advex import zoo

    if name == "zoo":  # the zoo's standard-trained CNN: the smoke run's model
        return zoo.load("mnist-smallcnn", progress=False)
    if name not in RECIPES:
        raise SystemExit(f"unknown benchmark model {name!r}; choose from {', '.join(RECIPES)}")
    out = model_dir(name)
    if not (out / "model.safetensors").exists():
        from advex.defenses.spec import train_from_spec

        kw = dict(RECIPES[name][2])
        method, eps, epochs = kw.pop("method"), kw.pop("eps"), kw.pop("epochs")
        log(f"training {name} into {out}: {RECIPES[name][0]}")
        t0 = time.perf_counter()
        tmp = out.with_name(out.name + ".partial")
        train_from_spec(
            "smallcnn",
            "mnist5k",
            method,
            eps,
            epochs,
            tmp,
            progress=False,
            resume=tmp.exists() and method != "distill",
            **kw,
        )
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        log(f"trained {name} in {time.perf_counter() - t0:.0f} s")
    return zoo.load(str(out), progress=False)


if __name__ == "__main__":
    for n in sys.argv[1:] or list(RECIPES):
        m = ensure(n)
        print(n, {k: m.card.get(k) for k in ("accuracy", "robust_accuracy", "train_time_s")})
