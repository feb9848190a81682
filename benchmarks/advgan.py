"""AdvGAN on MNIST (L∞, ε = 0.3): success and throughput next to advex PGD-40 in one run; the
transfer table; adversarially trained models; the distilled (black-box) variant; generator-based
adversarial training.

    OMP_NUM_THREADS=1 python benchmarks/advgan.py [--quick] [--epochs 30] [--alpha 0.1]
        [--beta 1.0] [--kappa 0] [--schedule cosine] [--save-generator DIR] [--out FILE]
    OMP_NUM_THREADS=1 python benchmarks/advgan.py --section transfer [--generator DIR]
        [--out FILE]

``--section main`` (default): trains a generator against the zoo CNN on ``mnist5k`` train
(4,000 digits), timing it in wall and process CPU seconds, then on the 1,000 ``mnist5k`` test
digits measures success (next to uniform noise of the same ε) and throughput (images/s) of

- ``advgan.generate``: one generator forward per image, no query of the target;
- ``advgan attack()``: the full attack (clean pass + generator + re-prediction);
- ``pgd-40`` (advex default, fooled points stop early) and ``pgd-40 no early stop`` (all 40
  steps for every point, the textbook cost) on the same model and points.

``--section transfer``: trains the other models of the table (the zoo CNN's architecture with
another seed, an MLP, a short PGD-AT model with a stated recipe, a generator-trained model) and
reports, per model: PGD-40 success (white-box), the success of the generator trained on the zoo
CNN (``--generator DIR``, as written by ``--save-generator``; trained here if absent), of a
generator trained against that model itself, and uniform noise; then the distilled variant (a
surrogate distilled from label queries to the zoo CNN, a generator trained against the
surrogate, success on the zoo CNN, queries spent).

``--quick``: tiny sizes (a smoke test of the script, numbers meaningless).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from advex import data, zoo
from advex._io import write_json
from advex.attacks import PGD, AdvGAN, distill_surrogate
from advex.defenses import AdversarialTrainer
from advex.models import LabelBlackBox
from advex.training import Trainer
from advex.zoo.arch import smallcnn


def _timed(fn, repeats: int = 1):
    best = float("inf")
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def _noise_success(model, x, y, eps, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = (x + eps * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
    with torch.no_grad():
        return float((model(noise).argmax(1) != y).float().mean())


def _accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _advgan(args, **kw) -> AdvGAN:
    opts = dict(
        epochs=args.epochs,
        batch_size=args.batch_size,
        width=args.width,
        blocks=args.blocks,
        sampling=args.sampling,
        alpha=args.alpha,
        beta=args.beta,
        kappa=args.kappa,
        schedule=args.schedule,
        seed=0,
    )
    opts.update(kw)
    return AdvGAN(args.eps, "linf", **opts)


def _fit_timed(atk: AdvGAN, model, train) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    atk.fit(model, train)
    return time.perf_counter() - wall, time.process_time() - cpu


def main_section(args, train, test) -> dict:
    model = zoo.load("mnist-smallcnn", progress=False)
    x_train, y_train = train
    x, y = test
    advgan = _advgan(args)
    fit_wall, fit_cpu = _fit_timed(advgan, model, (x_train, y_train))
    if args.save_generator:
        advgan.save(args.save_generator)
    rows: dict[str, dict] = {}
    res, t = _timed(lambda: advgan(model, x, y), repeats=3)
    rows["advgan attack()"] = {"success": float(res.success.float().mean()), "seconds": t}
    _, t = _timed(lambda: advgan.generate(x), repeats=3)
    rows["advgan.generate"] = {"success": rows["advgan attack()"]["success"], "seconds": t}
    for label, early in (("pgd-40", True), ("pgd-40 no early stop", False)):
        pgd = PGD(args.eps, "linf", steps=40, early_stop=early, seed=0)
        res, t = _timed(lambda pgd=pgd: pgd(model, x, y))
        rows[label] = {"success": float(res.success.float().mean()), "seconds": t}
    # the generator again, right after PGD (the machine's load changes over minutes)
    _, t = _timed(lambda: advgan.generate(x), repeats=3)
    rows["advgan.generate"]["seconds"] = min(rows["advgan.generate"]["seconds"], t)
    n = len(x)
    for r in rows.values():
        r["images_per_s"] = n / r["seconds"]

    def ratio(a, b):
        return rows[a]["images_per_s"] / rows[b]["images_per_s"]

    summary = {
        "section": "main",
        "eps": args.eps,
        "norm": "linf",
        "n_train": len(x_train),
        "n_test": n,
        "clean_accuracy": _accuracy(model, x, y),
        "uniform_noise_success": _noise_success(model, x, y, args.eps),
        "fit_wall_seconds": fit_wall,
        "fit_cpu_seconds": fit_cpu,
        "recipe": advgan.params(),
        "threads": torch.get_num_threads(),
        "history": advgan.history_,
        "rows": rows,
        "ratios": {
            "generate vs pgd-40": ratio("advgan.generate", "pgd-40"),
            "generate vs pgd-40 no early stop": ratio("advgan.generate", "pgd-40 no early stop"),
            "attack() vs pgd-40": ratio("advgan attack()", "pgd-40"),
            "attack() vs pgd-40 no early stop": ratio("advgan attack()", "pgd-40 no early stop"),
        },
    }
    print(
        f"fit: {fit_wall:.0f} s wall, {fit_cpu:.0f} s CPU ({args.epochs} epochs on "
        f"{len(x_train)} digits)"
    )
    print(
        f"clean accuracy {summary['clean_accuracy']:.3f}; "
        f"noise success {summary['uniform_noise_success']:.3f}"
    )
    print(f"{'method':24s} {'success':>8s} {'images/s':>10s}")
    for name, r in rows.items():
        print(f"{name:24s} {r['success']:8.3f} {r['images_per_s']:10.1f}")
    for name, v in summary["ratios"].items():
        print(f"throughput ratio {name}: {v:.1f}x")
    return summary


def _train_plain(net: nn.Module, train, epochs: int, seed: int) -> nn.Module:
    Trainer(net, epochs=epochs, batch_size=64, lr=1e-3, seeds=seed, progress=False).fit(train)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def transfer_section(args, train, test) -> dict:
    x, y = test
    eps = args.eps
    q = args.quick
    models: dict[str, nn.Module] = {"A: zoo mnist-smallcnn": zoo.load("mnist-smallcnn")}
    recipes: dict[str, str] = {"A: zoo mnist-smallcnn": "zoo recipe (12 epochs, shift aug.)"}
    times: dict[str, float] = {}
    ep = 1 if q else 6
    torch.manual_seed(1)
    t = time.process_time()
    models["B: smallcnn seed 1"] = _train_plain(smallcnn(), train, ep, 1)
    recipes["B: smallcnn seed 1"] = f"smallcnn, Adam 1e-3, {ep} epochs, batch 64, seed 1"
    times["B"] = time.process_time() - t
    torch.manual_seed(2)
    t = time.process_time()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    models["C: MLP 784-256-10 seed 2"] = _train_plain(mlp, train, 2 * ep, 2)
    recipes["C: MLP 784-256-10 seed 2"] = f"MLP, Adam 1e-3, {2 * ep} epochs, batch 64, seed 2"
    times["C"] = time.process_time() - t
    at_epochs, at_steps = (1, 2) if q else (args.at_epochs, args.at_steps)
    for method, label in (("pgd", "D: PGD-AT"), ("generator", "E: generator-AT")):
        torch.manual_seed(3)
        net = smallcnn()
        t = time.process_time()
        kw = {"attack_steps": at_steps} if method == "pgd" else {}
        trainer = AdversarialTrainer(
            net,
            method,
            eps,
            epochs=at_epochs,
            batch_size=64,
            eval_n=200,
            eval_steps=10,
            final_eval_steps=10,
            select_best=False,
            progress=False,
            seed=3,
            **kw,
        )
        trainer.fit(train)
        times[label[0]] = time.process_time() - t
        for p in net.parameters():
            p.requires_grad_(False)
        models[label] = net.eval()
        recipes[label] = (
            f"smallcnn, {method} eps={eps} (inner: "
            + (f"PGD-{at_steps}, step 2.5 eps/{at_steps}" if method == "pgd" else "online AdvGAN")
            + f"), Adam onecycle 1e-3, {at_epochs} epochs, batch 64, seed 3, "
            f"{times[label[0]]:.0f} s CPU"
        )
    gen_dir = Path(args.generator) if args.generator else None
    waited = 0.0
    while gen_dir is not None and not (gen_dir / "card.json").is_file() and waited < 3600:
        time.sleep(20)  # a main section running alongside writes it when its fit ends
        waited += 20
    if gen_dir is not None and (gen_dir / "card.json").is_file():
        g_a = AdvGAN.load(gen_dir, input_shape=(1, 28, 28))
        g_a_from = str(gen_dir)
    else:
        g_a = _advgan(args, epochs=1 if q else args.epochs)
        g_a.fit(models["A: zoo mnist-smallcnn"], train)
        g_a_from = "trained here"
    table = []
    own_epochs = 1 if q else args.own_epochs
    for name, m in models.items():
        row = {"model": name, "recipe": recipes[name], "clean_accuracy": _accuracy(m, x, y)}
        row["noise_success"] = _noise_success(m, x, y, eps)
        row["pgd40_success"] = float(PGD(eps, steps=40, seed=0)(m, x, y).success.float().mean())
        row["advgan_from_A_success"] = float(g_a(m, x, y).success.float().mean())
        if not name.startswith("A"):
            own = _advgan(args, epochs=own_epochs)
            t = time.process_time()
            own.fit(m, train)
            row["advgan_own_success"] = float(own(m, x, y).success.float().mean())
            row["advgan_own_fit_cpu_seconds"] = time.process_time() - t
        table.append(row)
        print(json.dumps(row))
    # the distilled variant: label queries to A, a surrogate, a generator against it
    box = LabelBlackBox(models["A: zoo mnist-smallcnn"], num_classes=10)
    budget = 500 if q else args.distill_queries
    t = time.process_time()
    d = distill_surrogate(
        box, train[0], budget, augment="jacobian", rounds=2, epochs=2 if q else 10, seed=0
    )
    g_s = _advgan(args, epochs=own_epochs)
    with torch.no_grad():  # the attacker's labels: the surrogate's (no further query of A)
        y_s = d.model(train[0]).argmax(1)
    g_s.fit(d.model, (train[0], y_s))
    distilled = {
        "queries": d.queries,
        "rounds": d.rounds,
        "surrogate_agreement_on_test": d.agreement(models["A: zoo mnist-smallcnn"], x),
        "success_on_A": float(g_s(models["A: zoo mnist-smallcnn"], x, y).success.float().mean()),
        "success_on_surrogate": float(g_s(d.model, x, y).success.float().mean()),
        "cpu_seconds": time.process_time() - t,
    }
    print(json.dumps(distilled))
    return {
        "section": "transfer",
        "eps": eps,
        "n_test": len(x),
        "generator_A": g_a_from,
        "generator_recipe": g_a.params(),
        "training_cpu_seconds": times,
        "table": table,
        "distilled": distilled,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--section", choices=["main", "transfer"], default="main")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--own-epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--sampling", default="conv")
    ap.add_argument("--alpha", type=float, default=0.1, help="weight of the GAN loss")
    ap.add_argument("--beta", type=float, default=1.0, help="weight of the hinge loss")
    ap.add_argument("--kappa", type=float, default=0.0, help="margin confidence")
    ap.add_argument("--schedule", default="cosine")
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--at-epochs", type=int, default=5)
    ap.add_argument("--at-steps", type=int, default=10)
    ap.add_argument("--distill-queries", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-generator", default=None)
    ap.add_argument("--generator", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x_train, y_train = data.mnist5k("train").tensors()
    x, y = data.mnist5k("test").tensors()
    if args.quick:
        args.epochs = 1
        x_train, y_train, x, y = x_train[:500], y_train[:500], x[:100], y[:100]
    train, test = (x_train, y_train), (x, y)
    if args.section == "main":
        summary = main_section(args, train, test)
    else:
        summary = transfer_section(args, train, test)
    summary["quick"] = bool(args.quick)
    if args.out:
        write_json(args.out, summary)


if __name__ == "__main__":
    main()
