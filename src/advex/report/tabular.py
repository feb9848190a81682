"""Reports for tabular attacks: what changed, in original units, and whether every adversarial row
is a row that could exist.

- :func:`feature_changes`: per feature, how many successful adversarials changed it and by how
  much (original units and standard deviations);
- :func:`example_lines`: one line per changed feature of one example, for people
  (``"mean radius 17.2 → 15.9 image units (−0.37 std)"``);
- :func:`constraint_report`: the constraint satisfaction of adversarial rows, checked by a
  schema loaded *independently* of the attack (from its file or its dict) on the values as
  written to disk;
- :func:`write_adversarial_csv` / :func:`read_adversarial_csv`: one row per attacked example
  (``index``, ``original_label``, ``adversarial_prediction``, ``success``, then every feature as
  ``"label (unit)"`` columns);
- :func:`tabular_summary`: the JSON block of a run (success rate, robust accuracy, changes,
  constraint satisfaction).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import torch

from advex._io import atomic_write
from advex.data.schema import Schema

__all__ = [
    "column_names",
    "constraint_report",
    "example_lines",
    "feature_changes",
    "format_changes",
    "read_adversarial_csv",
    "tabular_summary",
    "write_adversarial_csv",
]

_META = ("index", "original_label", "adversarial_prediction", "success")


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.1f}"


def column_names(schema: Schema) -> list[str]:
    """CSV headers of the features: ``"mean radius (image units)"`` (the label, and the unit
    when there is one)."""
    return [f"{f.label} ({f.unit})" if f.unit else f.label for f in schema.features]


def feature_changes(
    schema: Schema, x: torch.Tensor, x_adv: torch.Tensor, success: torch.Tensor
) -> list[dict[str, Any]]:
    """Per feature, over the successful rows: how often it changed, the mean absolute and
    largest change in original units and in standard deviations (the feature's scale), and the
    mean signed change. Sorted by the mean absolute change in standard deviations."""
    ok = success.bool().cpu()
    x, xa = x.detach().double().cpu()[ok], x_adv.detach().double().cpu()[ok]
    d = xa - x
    out = []
    for j, f in enumerate(schema.features):
        col = d[:, j]
        moved = col.abs() > 1e-9 * (1 + x[:, j].abs()) if col.numel() else col.bool()
        s = f.scale or 1.0
        out.append(
            {
                "feature": f.name,
                "label": f.label,
                "unit": f.unit,
                "changed": int(moved.sum()),
                "changed_share": float(moved.float().mean()) if col.numel() else 0.0,
                "mean_abs_change": float(col.abs().mean()) if col.numel() else 0.0,
                "max_abs_change": float(col.abs().max()) if col.numel() else 0.0,
                "mean_change": float(col.mean()) if col.numel() else 0.0,
                "mean_abs_change_std": float(col.abs().mean() / s) if col.numel() else 0.0,
                "scale": f.scale,
                "mutable": f.mutable,
            }
        )
    out.sort(key=lambda r: -r["mean_abs_change_std"])
    return out


def format_changes(changes: list[dict[str, Any]], top: int = 10) -> str:
    """A plain-text table of :func:`feature_changes` (the ``top`` most changed features)."""
    head = (
        f"{'feature (unit)':44s} {'changed':>8s} {'mean |Δ|':>10s} {'max |Δ|':>10s} {'|Δ|/std':>8s}"
    )
    lines = [head, "-" * len(head)]
    for r in changes[:top]:
        name = f"{r['label']} ({r['unit']})" if r["unit"] else r["label"]
        lines.append(
            f"{name[:44]:44s} {r['changed_share']:>8.0%} {_fmt(r['mean_abs_change']):>10s} "
            f"{_fmt(r['max_abs_change']):>10s} {r['mean_abs_change_std']:>8.2f}"
        )
    return "\n".join(lines)


def example_lines(
    schema: Schema, x_row: torch.Tensor, adv_row: torch.Tensor, top: int | None = 8
) -> list[str]:
    """What changed in one example, for people, largest change (in standard deviations)
    first: ``"mean radius 17.2 → 15.9 image units (−0.37 std)"``."""
    x_row, adv_row = x_row.detach().double().cpu(), adv_row.detach().double().cpu()
    items = []
    for j, f in enumerate(schema.features):
        a, b = float(x_row[j]), float(adv_row[j])
        if abs(b - a) <= 1e-9 * (1 + abs(a)):
            continue
        z = (b - a) / (f.scale or 1.0)
        unit = f" {f.unit}" if f.unit else ""
        items.append((abs(z), f"{f.label} {_fmt(a)} → {_fmt(b)}{unit} ({z:+.2f} std)"))
    items.sort(key=lambda t: -t[0])
    return [s for _, s in items[:top]]


def constraint_report(
    schema: Schema | dict | str | Path,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    *,
    eps: float | None = None,
    norm: str = "linf",
    tol: float = 1e-6,
) -> dict[str, Any]:
    """Constraint satisfaction of the rows ``x_adv`` (around ``x``), checked by a schema built
    afresh from ``schema`` (a file, its dict, or a Schema, whose dict is re-read), so that the
    check shares nothing with the attack's threat object: ranges, integrality, one-hot groups,
    every constraint, immutable features unchanged and (with ``eps``) the budget, in float64.

    Returns ``{"rows", "rows_valid", "rate", "failing_checks", "checks"}``."""
    if isinstance(schema, Schema):
        fresh = Schema.from_dict(schema.to_dict())
    elif isinstance(schema, dict):
        fresh = Schema.from_dict(schema)
    else:
        fresh = Schema.from_file(schema)
    xa, x0 = x_adv.detach().double().cpu(), x.detach().double().cpu()
    v = fresh.verdicts(xa, tol)
    names, cols = list(v.names), [v.ok]
    for j, f in enumerate(fresh.features):
        if not f.mutable:
            names.append(f"immutable:{f.name}")
            cols.append((xa[:, j] == x0[:, j])[:, None])
    if eps is not None:
        s = torch.tensor([f.scale or math.nan for f in fresh.features], dtype=torch.float64)
        if bool(torch.isnan(s).any()):
            s = torch.tensor([f.scale or 1.0 for f in schema.features], dtype=torch.float64)
        z = (xa - x0) / s
        size = z.abs().amax(1) if norm == "linf" else z.norm(dim=1)
        names.append("budget")
        cols.append((size <= eps * (1 + tol) + tol)[:, None])
    ok = torch.cat(cols, 1)
    n = int(ok.shape[0])
    rates = ok.float().mean(0).tolist() if n else [1.0] * len(names)
    return {
        "rows": n,
        "rows_valid": int(ok.all(1).sum()),
        "rate": float(ok.all(1).float().mean()) if n else 1.0,
        "failing_checks": {k: r for k, r in zip(names, rates, strict=True) if r < 1.0},
        "checks": len(names),
    }


def write_adversarial_csv(
    path: str | Path,
    schema: Schema,
    x_adv: torch.Tensor,
    *,
    index: torch.Tensor,
    original_label: list[str],
    adversarial_prediction: list[str],
    success: torch.Tensor,
) -> Path:
    """One row per attacked example: ``index`` (row in the data), ``original_label``,
    ``adversarial_prediction`` (class names), ``success`` (0/1), then every feature of the
    adversarial row in original units under ``"label (unit)"`` headers (``repr`` precision:
    the values read back are exactly the float32 values)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*_META, *column_names(schema)])
    xa = x_adv.detach().float().cpu()
    for i in range(xa.shape[0]):
        w.writerow(
            [
                int(index[i]),
                original_label[i],
                adversarial_prediction[i],
                int(bool(success[i])),
                *[repr(float(v)) for v in xa[i].tolist()],
            ]
        )
    atomic_write(Path(path), buf.getvalue())
    return Path(path)


def read_adversarial_csv(path: str | Path, schema: Schema) -> dict[str, Any]:
    """Read :func:`write_adversarial_csv`'s file back: ``{"index", "original_label",
    "adversarial_prediction", "success", "x_adv"}`` (``x_adv`` ``(N, D)`` float64)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    head = rows[0]
    want = [*_META, *column_names(schema)]
    if head != want:
        raise ValueError(f"{path}: unexpected columns {head[:6]}...; expected {want[:6]}...")
    body = rows[1:]
    k = len(_META)
    return {
        "index": torch.tensor([int(r[0]) for r in body], dtype=torch.long),
        "original_label": [r[1] for r in body],
        "adversarial_prediction": [r[2] for r in body],
        "success": torch.tensor([r[3] == "1" for r in body]),
        "x_adv": torch.tensor([[float(v) for v in r[k:]] for r in body], dtype=torch.float64)
        if body
        else torch.zeros(0, len(schema), dtype=torch.float64),
    }


def tabular_summary(
    schema: Schema,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    success: torch.Tensor,
    *,
    constraints: dict[str, Any],
    examples: int = 3,
) -> dict[str, Any]:
    """The tabular block of results.json: success rate, per-feature changes, a few examples in
    words, and the independent constraint check."""
    ok = success.bool().cpu()
    ex = []
    for i in ok.nonzero().squeeze(1)[:examples].tolist():
        ex.append({"row": i, "changes": example_lines(schema, x[i], x_adv[i])})
    return {
        "attacked": int(ok.numel()),
        "successful": int(ok.sum()),
        "success_rate": float(ok.float().mean()) if ok.numel() else 0.0,
        "feature_changes": feature_changes(schema, x, x_adv, ok),
        "examples": ex,
        "constraint_satisfaction": constraints,
    }
