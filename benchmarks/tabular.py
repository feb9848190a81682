"""Breast cancer, malignant → benign, under the real constraints: advex's tabular attacks on five
zoo models, ART's LowProFool side by side, constraint satisfaction checked independently.

    OMP_NUM_THREADS=1 python benchmarks/tabular.py [--quick] [--eps 0.5,1.0,1.5]
        [--models lr,svc,mlp,rf,gbt] [--rows N] [--out benchmarks/results/2026-11-29-tabular.json]

Data: ``advex.data.breast_cancer("test")`` (143 rows, 53 malignant); the attacked rows are the
malignant rows each model classifies correctly. Threat: L∞ in standard deviations per feature
(training-split std), inside the shipped schema (ranges, worst ≥ mean ×10, area ≈ π r² and
perimeter ≈ 2π r for mean and worst). Models (``advex.zoo``):

- ``breast-cancer-lr`` and ``-mlp`` (torch; gradients): ``ConstrainedPGD``, ``LowProFool``;
- ``breast-cancer-svc``, ``-rf``, ``-gbt`` (scikit-learn through ``SklearnAdapter``, scores
  only): ``ConstrainedEvolution`` (query-counted), then ``ConstrainedPGD`` with NES gradients on
  the rows still robust.

ART's LowProFool (``art.attacks.evasion.LowProFool``, defaults: 100 steps, λ = 1.5, η = 0.2)
runs on the same torch models, fed standardised rows (the paper's setting) with the schema's
ranges as clip values, the same Pearson importance and a summed cross-entropy (ART
differentiates the batch loss: a mean would divide every row's step by the batch size). It has
no budget and knows no relations: we report its raw success, its success after clipping its
output to the same budget (then re-predicted), and the constraint satisfaction of both, checked
by a schema read afresh from its dict. ART's LowProFool needs loss gradients, so it cannot run
on the tree models or the SVC through an adapter: those rows say so.

Columns: ``valid`` = every check including the budget, ``schema`` = the schema's checks alone
(ranges and relations), ``valid+`` = successful *and* valid (an adversarial example under the
threat), ``w-pert`` = mean LowProFool-weighted perturbation ‖v ⊙ Δ/s‖₂ of the
successful rows.

For the logistic regression the exact best success of *any* L∞ attack at ε (no constraints) is
computed in closed form (the logit gap moves by at most ε Σ|w_i| s_i): the ceiling.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from advex import zoo
from advex._io import write_json
from advex.attacks import ConstrainedEvolution, ConstrainedPGD, LowProFool
from advex.attacks.tabular import pearson_importance
from advex.data import breast_cancer
from advex.report.tabular import constraint_report
from advex.threats import TabularThreat

MALIGNANT, BENIGN = 0, 1
MODELS = ("breast-cancer-lr", "breast-cancer-svc", "breast-cancer-mlp", "breast-cancer-rf",
          "breast-cancer-gbt")  # fmt: skip


class FromStandardised(nn.Module):
    """``model(z · s + m)``: the same model, fed standardised rows (what ART's LowProFool
    expects)."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, z):
        return self.model(z * self.std + self.mean)


def _rows(model, ds):
    x, y = ds.tensors()
    with torch.no_grad():
        pred = model(x).argmax(1)
    keep = (y == MALIGNANT) & (pred == MALIGNANT)
    return x[keep], y[keep]


def _valid_rows(source, x, x_adv, eps) -> torch.Tensor:
    """Per row: every check of a freshly read schema passes, budget included."""
    from advex.data import Schema

    fresh = Schema.from_dict(source)
    s = torch.tensor(fresh.scales(), dtype=torch.float64)
    xa, x0 = x_adv.double(), x.double()
    ok = fresh.verdicts(xa).all()
    return ok & (((xa - x0) / s).abs().amax(1) <= eps * (1 + 1e-6) + 1e-6)


def _weighted(v, x, x_adv, s):
    return (v * (x_adv.double() - x.double()) / s).norm(dim=1)


def _lr_ceiling(lr, x, s, eps) -> float:
    w = (lr[1].weight[BENIGN] - lr[1].weight[MALIGNANT]).detach().double() / lr[0].std.double()
    with torch.no_grad():
        z = lr(x).double()
    gap = z[:, BENIGN] - z[:, MALIGNANT]
    return float(((gap + eps * (w.abs() * s).sum()) > 0).float().mean())


def _art_lowprofool(model, x, schema, s, m, v, eps, steps):
    from art.attacks.evasion import LowProFool as ArtLPF
    from art.estimators.classification import PyTorchClassifier

    wrapped = FromStandardised(model, m.float(), s.float()).eval()
    lo = ((schema.low().double() - m) / s).numpy().astype(np.float32)
    hi = ((schema.high().double() - m) / s).numpy().astype(np.float32)
    clf = PyTorchClassifier(
        wrapped,
        # summed, not averaged: a batch-mean loss would shrink every row's gradient by the
        # batch size and cripple ART's steps (its loss_gradient differentiates the batch loss)
        loss=nn.CrossEntropyLoss(reduction="sum"),
        input_shape=(x.shape[1],),
        nb_classes=2,
        clip_values=(lo, hi),
    )
    atk = ArtLPF(classifier=clf, n_steps=steps, threshold=None, importance=lambda *_: v.numpy())
    atk.fit_importances(importance_array=v.numpy(), normalize=True)
    z = ((x.double() - m) / s).numpy().astype(np.float32)
    targets = np.zeros((len(z), 2), dtype=np.float32)
    targets[:, BENIGN] = 1
    t0 = time.perf_counter()
    z_adv = atk.generate(z, targets)
    wall = time.perf_counter() - t0
    x_adv = torch.from_numpy(z_adv).double() * s + m
    with torch.no_grad():
        success = model(x_adv.float()).argmax(1) == BENIGN
    # the same output clipped to the budget (per feature, eps std), re-predicted
    x_clip = torch.maximum(torch.minimum(x_adv, x.double() + eps * s), x.double() - eps * s)
    with torch.no_grad():
        success_clip = model(x_clip.float()).argmax(1) == BENIGN
    return x_adv, success, x_clip, success_clip, wall


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="eps 0.5 only, fewer steps/queries")
    ap.add_argument("--eps", default="0.5,1.0,1.5")
    ap.add_argument("--out", default="benchmarks/results/2026-11-29-tabular.json")
    ap.add_argument("--rows", type=int, default=None, help="attack only the first N rows")
    ap.add_argument("--models", default=",".join(m.replace("breast-cancer-", "") for m in MODELS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    eps_list = [0.5] if args.quick else [float(e) for e in args.eps.split(",")]
    steps = 30 if args.quick else 100
    queries = 500 if args.quick else 2000
    t_all, cpu_all = time.perf_counter(), time.process_time()
    ds, tr = breast_cancer("test"), breast_cancer("train")
    schema = ds.schema
    source = schema.to_dict()  # the independent check re-reads the schema from this
    s = torch.tensor(schema.scales(), dtype=torch.float64)
    m = tr.x.double().mean(0)
    v = pearson_importance(tr.x, tr.y).double()
    chosen = [f"breast-cancer-{m.strip()}" for m in args.models.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose among {MODELS}")
    models = {n: zoo.load(n, progress=False) for n in chosen}
    rows = []
    print(
        f"{'model':20s} {'eps':>4s} {'attack':28s} {'n':>3s} {'success':>8s} {'valid':>7s} "
        f"{'schema':>7s} {'valid+':>7s} "
        f"{'w-pert':>7s} {'q/pt':>6s} {'time':>6s}"
    )

    def report(name, eps, attack, x, x_adv, success, wall, queries=None, note=""):
        cons = constraint_report(source, x, x_adv, eps=eps)
        rel = constraint_report(source, x, x_adv)  # the schema alone, without the budget
        ok_rows = _valid_rows(source, x, x_adv, eps)
        wp = _weighted(v, x, x_adv, s)[success.bool()]
        row = {
            "model": name,
            "eps": eps,
            "attack": attack,
            "attacked": int(len(x)),
            "success_rate": float(success.float().mean()),
            # successful AND valid (every check, budget included): an adversarial example
            # under the threat
            "valid_success_rate": float((success.bool() & ok_rows).float().mean()),
            "constraint_satisfaction": cons["rate"],
            "schema_satisfaction": rel["rate"],
            "failing_checks": cons["failing_checks"],
            "weighted_perturbation_mean": float(wp.mean()) if wp.numel() else None,
            "queries_per_point": queries,
            "time_s": round(wall, 2),
            "note": note,
        }
        rows.append(row)
        wps = f"{row['weighted_perturbation_mean']:.3f}" if wp.numel() else "-"
        q = f"{queries:.0f}" if queries is not None else "-"
        print(
            f"{name:20s} {eps:>4.1f} {attack:28s} {len(x):>3d} {row['success_rate']:>8.1%} "
            f"{cons['rate']:>7.1%} {rel['rate']:>7.1%} {row['valid_success_rate']:>7.1%} "
            f"{wps:>7s} {q:>6s} {wall:>5.1f}s {note}"
        )
        return row

    for eps in eps_list:
        threat = TabularThreat(schema, eps=eps)
        for name, model in models.items():
            x, y = _rows(model, ds)
            x, y = x[: args.rows], y[: args.rows]
            gradients = name in ("breast-cancer-lr", "breast-cancer-mlp")
            if gradients:
                t = time.perf_counter()
                r = ConstrainedPGD(threat=threat, steps=steps)(model, x, y, target=BENIGN)
                note = ""
                if name == "breast-cancer-lr":
                    note = f"ceiling (any L∞ attack, exact): {_lr_ceiling(model, x, s, eps):.1%}"
                report(name, eps, "advex ConstrainedPGD", x, r.x_adv, r.success,
                       time.perf_counter() - t, float(r.queries.float().mean()), note)  # fmt: skip
                t = time.perf_counter()
                lpf = LowProFool(threat=threat, steps=100, weights=v)
                r2 = lpf(model, x, y, target=BENIGN)
                report(name, eps, "advex LowProFool", x, r2.x_adv, r2.success,
                       time.perf_counter() - t, float(r2.queries.float().mean()))  # fmt: skip
                xa, ok, xc, okc, wall = _art_lowprofool(model, x, schema, s, m, v, eps, 100)
                report(name, eps, "ART LowProFool (raw)", x, xa, ok, wall, None,
                       "no budget: raw outputs")  # fmt: skip
                report(name, eps, "ART LowProFool (clipped)", x, xc, okc, wall, None,
                       "clipped to the budget, re-predicted")  # fmt: skip
            else:
                model.reset_queries()
                t = time.perf_counter()
                r = ConstrainedEvolution(threat=threat, n_queries=queries)(
                    model, x, y, target=BENIGN
                )
                x_adv, success, q = r.x_adv.clone(), r.success.clone(), r.queries.clone()
                left = (~success).nonzero().squeeze(1)
                if left.numel():
                    r2 = ConstrainedPGD(threat=threat, steps=steps // 2, nes_samples=10)(
                        model, x[left], y[left], target=BENIGN
                    )
                    x_adv[left], success[left] = r2.x_adv, r2.success
                    q[left] += r2.queries
                report(name, eps, "advex Evolution+PGD(NES)", x, x_adv, success,
                       time.perf_counter() - t, float(q.float().mean()),
                       "black box (scores only)")  # fmt: skip
                rows.append({"model": name, "eps": eps, "attack": "ART LowProFool",
                             "note": "not run: needs loss gradients; the model exposes scores "
                             "only (scikit-learn through SklearnAdapter)"})  # fmt: skip
    total, cpu = time.perf_counter() - t_all, time.process_time() - cpu_all
    print(f"\nwhole benchmark: {total:.1f} s wall, {cpu:.1f} s CPU (this process)")
    doc = {
        "benchmark": "tabular",
        "quick": args.quick,
        "data": "breast_cancer test split (seed 0), malignant rows each model gets right",
        "threat": "L-inf in training-split standard deviations, shipped breast-cancer schema",
        "accuracy": {n: models[n].card["accuracy"] for n in models},
        "rows": rows,
        "total_time_s": round(total, 1),
        "total_cpu_s": round(cpu, 1),
        "machine": "2 CPU cores shared with other jobs, OMP_NUM_THREADS=1",
    }
    write_json(args.out, doc)
    print(f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    main()
