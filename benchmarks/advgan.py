"""AdvGAN on MNIST (L∞, ε = 0.3): success and throughput next to advex PGD-40 in one run; the
transfer table; adversarially trained models; the distilled (black-box) variant; generator-based
adversarial training.

    OMP_NUM_THREADS=1 python benchmarks/advgan.py [--quick] [--epochs 2] [--alpha 0.01]
        [--beta 1.0] [--kappa 5] [--saturation 1] [--edge-gradient] [--schedule cosine]
        [--train-data mnist-full|mnist5k] [--save-generator DIR] [--out FILE]
    OMP_NUM_THREADS=1 python benchmarks/advgan.py --section transfer [--generator DIR]
        [--out FILE]

``--section main`` (default): trains a generator against the zoo CNN on all of MNIST minus the
1,000 ``mnist5k`` test digits (``--train-data mnist5k``: its 4,000 train digits), timing it
in wall and process CPU seconds, then on the 1,000 ``mnist5k`` test digits measures success
(next to uniform noise of the same ε) and throughput (images/s) of

- ``advgan.generate``: one generator forward per image, no query of the target;
- ``advgan attack()``: the full attack (clean pass + generator + re-prediction);
- ``pgd-40`` (advex default, fooled points stop early) and ``pgd-40 no early stop`` (all 40
  steps for every point, the textbook cost) on the same model and points.

``--section transfer`` (``--parts table,distilled,at``): ``table`` trains the other models of
the transfer table (the zoo CNN's architecture with another seed, an MLP, a short PGD-AT model
with a stated recipe), a generator against the zoo CNN (A) and one against the PGD-AT model
(D), and reports per model: clean accuracy, PGD-40 success (white-box), uniform noise and the
generators' success; ``distilled`` distils a surrogate from label queries to A, trains a
generator against the surrogate (labels: the surrogate's), and reports its success on A and
the queries spent; ``at`` trains the same architecture with ``standard``, ``generator`` and
``pgd`` adversarial training (same epochs, seed) and reports clean accuracy and PGD-40 success.

``--quick``: tiny sizes (a smoke test of the script, numbers meaningless).
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
        saturation=args.saturation,
        edge_gradient=args.edge_gradient,
        schedule=args.schedule,
        seed=args.seed,
    )
    opts.update(kw)
    return AdvGAN(args.eps, "linf", **opts)


def _fit_timed(atk: AdvGAN, model, train) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    atk.fit(model, train)
    return time.perf_counter() - wall, time.process_time() - cpu


def _mnist_root(args) -> str:
    root = args.mnist_root
    return root if os.path.basename(os.path.normpath(root)) == "mnist" else f"{root}/mnist"


def _full_mnist_train(root: str, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All 70,000 MNIST digits (IDX files in ``root``) minus every digit that equals one of
    the reported test digits (the ``mnist5k`` test split is drawn from MNIST's training set):
    the generator never sees a point it is scored on."""
    x, y = data.mnist(root, "all").tensors()
    key = lambda t: (t * 255).round().to(torch.uint8).flatten(1)  # noqa: E731
    test_keys = {bytes(r.numpy()) for r in key(test_x)}
    keep = torch.tensor([bytes(r.numpy()) not in test_keys for r in key(x)])
    print(f"full MNIST: {len(x)} digits, {int((~keep).sum())} equal a test digit and are dropped")
    return x[keep], y[keep]


def main_section(args, train, test) -> dict:
    model = zoo.load("mnist-smallcnn", progress=False)
    x_train, y_train = train
    x, y = test
    advgan = _advgan(args)
    load_before = os.getloadavg()
    fit_wall, fit_cpu = _fit_timed(advgan, model, (x_train, y_train))
    load_after = os.getloadavg()
    if args.save_generator:
        advgan.save(args.save_generator)
    rows: dict[str, dict] = {}
    res, t = _timed(lambda: advgan(model, x, y), repeats=3)
    rows["advgan attack()"] = {"success": float(res.success.float().mean()), "seconds": t}
    _, t = _timed(lambda: advgan.generate(x), repeats=3)
    rows["advgan.generate"] = {"success": rows["advgan attack()"]["success"], "seconds": t}
    n_slow = min(len(x), args.pgd_all_steps_n)
    for label, early in (("pgd-40", True), ("pgd-40 no early stop", False)):
        pgd = PGD(args.eps, "linf", steps=40, early_stop=early, seed=0)
        xs, ys = (x, y) if early else (x[:n_slow], y[:n_slow])
        res, t = _timed(lambda pgd=pgd, xs=xs, ys=ys: pgd(model, xs, ys))
        rows[label] = {"success": float(res.success.float().mean()), "seconds": t, "n": len(xs)}
    # the generator again, right after PGD (the machine's load changes over minutes)
    _, t = _timed(lambda: advgan.generate(x), repeats=3)
    rows["advgan.generate"]["seconds"] = min(rows["advgan.generate"]["seconds"], t)
    n = len(x)
    for r in rows.values():
        r["images_per_s"] = r.get("n", n) / r["seconds"]

    def ratio(a, b):
        return rows[a]["images_per_s"] / rows[b]["images_per_s"]

    summary = {
        "section": "main",
        "eps": args.eps,
        "norm": "linf",
        "n_train": len(x_train),
        "train_data": args.train_data,
        "test_data": "mnist5k test (1,000 digits, never trained on)",
        "load_average_before_fit": load_before,
        "load_average_after_fit": load_after,
        "cpu_budget_seconds": 600,
        "fit_within_budget": fit_cpu <= 600,
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
        f"{len(x_train)} digits; load average {load_before[0]:.1f} -> {load_after[0]:.1f})"
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


def _at_model(method: str, train, args, eps: float) -> tuple[nn.Module, str, float]:
    torch.manual_seed(3)
    net = smallcnn()
    t = time.process_time()
    kw = {"attack_steps": args.at_steps} if method == "pgd" else {}
    AdversarialTrainer(
        net,
        method,
        eps,
        epochs=args.at_epochs,
        batch_size=64,
        eval_n=200,
        eval_steps=10,
        final_eval_steps=10,
        select_best=False,
        progress=False,
        seed=3,
        **kw,
    ).fit(train)
    cpu = time.process_time() - t
    for p in net.parameters():
        p.requires_grad_(False)
    inner = {
        "pgd": f"PGD-{args.at_steps}, step 2.5 eps/{args.at_steps}, random start",
        "generator": "online AdvGAN (width 8, alpha 0.1), 1 generator step per batch",
    }.get(method, "none")
    recipe = (
        f"smallcnn, {method} eps={eps} (inner: {inner}), Adam onecycle 1e-3, "
        f"{args.at_epochs} epochs, batch 64, seed 3, {len(train[0])} digits, {cpu:.0f} s CPU"
    )
    return net.eval(), recipe, cpu


def _row(name, m, recipe, x, y, eps, generators: dict) -> dict:
    row = {"model": name, "recipe": recipe, "clean_accuracy": _accuracy(m, x, y)}
    row["noise_success"] = _noise_success(m, x, y, eps)
    row["pgd40_success"] = float(PGD(eps, steps=40, seed=0)(m, x, y).success.float().mean())
    for label, g in generators.items():
        row[f"{label}_success"] = float(g(m, x, y).success.float().mean())
    print(json.dumps(row), flush=True)
    return row


def transfer_section(args, train, test, x_all) -> dict:
    x, y = test
    eps = args.eps
    parts = set(args.parts.split(","))
    out: dict = {"section": "transfer", "eps": eps, "n_test": len(x), "n_train": len(train[0])}
    a = zoo.load("mnist-smallcnn", progress=False)
    if "table" in parts:
        models = {"A: zoo mnist-smallcnn": (a, "zoo recipe (12 epochs, shift augmentation)")}
        ep = args.plain_epochs
        torch.manual_seed(1)
        models["B: smallcnn seed 1"] = (
            _train_plain(smallcnn(), train, ep, 1),
            f"smallcnn, Adam 1e-3, {ep} epochs, batch 64, seed 1",
        )
        torch.manual_seed(2)
        mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
        models["C: MLP 784-256-10 seed 2"] = (
            _train_plain(mlp, train, 2 * ep, 2),
            f"MLP, Adam 1e-3, {2 * ep} epochs, batch 64, seed 2",
        )
        if not args.skip_at_model:
            d_net, d_recipe, _ = _at_model("pgd", train, args, eps)
            models["D: PGD-AT"] = (d_net, d_recipe)
        if args.generator:  # a generator trained on A by --section main --save-generator
            g_a = AdvGAN.load(args.generator, input_shape=tuple(x.shape[1:]))
            g_a_cpu = None
        else:
            g_a = _advgan(args)
            t = time.process_time()
            g_a.fit(a, train)
            g_a_cpu = time.process_time() - t
        g_d, g_d_cpu = None, None
        if not args.skip_at_model:
            g_d = _advgan(args)
            t = time.process_time()
            g_d.fit(d_net, train)
            g_d_cpu = time.process_time() - t
        table = []
        for name, (m, recipe) in models.items():
            gens = {"advgan_trained_on_A": g_a}
            if name.startswith("D") and g_d is not None:
                gens["advgan_trained_on_D"] = g_d
            table.append(_row(name, m, recipe, x, y, eps, gens))
        out.update(
            table=table,
            generator_recipe=g_a.params(),
            generator_fit_cpu_seconds={"A": g_a_cpu, "D": g_d_cpu},
        )
    if "distilled" in parts:
        box = LabelBlackBox(a, num_classes=10)
        t = time.process_time()
        d = distill_surrogate(
            box,
            train[0],
            args.distill_queries,
            augment="jacobian",
            rounds=2,
            epochs=args.distill_epochs,
        )
        g_s = _advgan(args)
        gen_x = train[0]
        if args.train_data == "mnist-full" and not args.quick:
            # the attacker's unlabeled digits: all of MNIST minus the reported test digits
            gen_x = _full_mnist_train(_mnist_root(args), x_all)[0][: args.gen_n_train]
        with torch.no_grad():  # the attacker's labels: the surrogate's (no further query of A)
            y_s = torch.cat([d.model(c).argmax(1) for c in gen_x.split(4096)])
        g_fit_cpu = time.process_time()
        g_s.fit(d.model, (gen_x, y_s))
        g_fit_cpu = time.process_time() - g_fit_cpu
        queries = box.queries
        out["distilled"] = {
            "queries": d.queries,
            "black_box_counter": queries,
            "rounds": d.rounds,
            "surrogate_agreement_on_test": d.agreement(a, x),
            "success_on_A": float(g_s(a, x, y).success.float().mean()),
            "success_on_surrogate": float(g_s(d.model, x, y).success.float().mean()),
            "noise_success_on_A": _noise_success(a, x, y, eps),
            "cpu_seconds": time.process_time() - t,
            "generator_fit_cpu_seconds": g_fit_cpu,
            "generator_train_digits": len(gen_x),
            "generator_history": g_s.history_,
            "generator_recipe": g_s.params(),
        }
        print(json.dumps(out["distilled"]), flush=True)
    if "at" in parts:
        rows = []
        for method in ("standard", "generator", "pgd"):
            net, recipe, cpu = _at_model(method, train, args, eps)
            row = _row(method, net, recipe, x, y, eps, {})
            row["train_cpu_seconds"] = cpu
            rows.append(row)
        out["adversarial_training"] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--section", choices=["main", "transfer"], default="main")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--sampling", default="conv")
    ap.add_argument("--alpha", type=float, default=0.01, help="weight of the GAN loss")
    ap.add_argument("--beta", type=float, default=1.0, help="weight of the hinge loss")
    ap.add_argument("--kappa", type=float, default=5.0, help="margin confidence")
    ap.add_argument("--saturation", type=float, default=1.0, help="L-inf saturation penalty")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--edge-gradient", action="store_true", help="straight-through at edges")
    ap.add_argument(
        "--train-data",
        choices=["mnist5k", "mnist-full"],
        default="mnist-full",
        help="generator training digits: mnist5k train (the zoo CNN's own 4,000) or all of "
        "MNIST (--mnist-root) minus the reported test digits",
    )
    ap.add_argument("--mnist-root", default=os.environ.get("ADVEX_DATASETS", "../shared/datasets"))
    ap.add_argument(
        "--gen-n-train", type=int, default=None, help="distilled: generator digits (all)"
    )
    ap.add_argument(
        "--pgd-all-steps-n", type=int, default=200, help="digits timed, PGD-40 all steps"
    )
    ap.add_argument("--schedule", default="cosine")
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--at-epochs", type=int, default=5)
    ap.add_argument("--plain-epochs", type=int, default=3)
    ap.add_argument("--distill-epochs", type=int, default=5)
    ap.add_argument("--parts", default="table,distilled,at")
    ap.add_argument("--skip-at-model", action="store_true", help="table without model D")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--at-steps", type=int, default=10)
    ap.add_argument("--distill-queries", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-generator", default=None)
    ap.add_argument("--generator", default=None, help="table: G_A from this directory")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x_train, y_train = data.mnist5k("train").tensors()
    x, y = data.mnist5k("test").tensors()
    x_all = x
    if args.train_data == "mnist-full" and args.section == "main" and not args.quick:
        x_train, y_train = _full_mnist_train(_mnist_root(args), x)
    if args.quick:
        args.epochs, args.at_epochs, args.at_steps, args.plain_epochs = 1, 1, 2, 1
        args.distill_queries, args.distill_epochs = 400, 1
        x_train, y_train, x, y = x_train[:500], y_train[:500], x[:100], y[:100]
    if args.n_train:
        x_train, y_train = x_train[: args.n_train], y_train[: args.n_train]
    if args.n_test:
        x, y = x[: args.n_test], y[: args.n_test]
    train, test = (x_train, y_train), (x, y)
    if args.section == "main":
        summary = main_section(args, train, test)
    else:
        summary = transfer_section(args, train, test, x_all)
    summary["quick"] = bool(args.quick)
    if args.out:
        write_json(args.out, summary)


if __name__ == "__main__":
    main()
