"""Plain-text tables of evaluation results (what the CLI prints)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["format_table", "format_curve"]

HEADERS = (
    "attack",
    "clean acc",
    "robust acc",
    "success rate",
    "median norm",
    "grad/point",
    "queries/point",
    "time",
)


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _num(v: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f} s" if v < 10 else f"{v:.1f} s"


def _render(rows: list[Sequence[str]], headers: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells):
        out = [str(cells[0]).ljust(widths[0])]
        out += [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


#: what each machine value of ``Evaluation.verdict`` says, for people: the verdict judges the
#: *evaluation* (did the attacks work as intended), never the model
VERDICT_TEXT = {
    "PASS": "evaluation: trustworthy (no gradient-masking check fired)",
    "SUSPECT": "evaluation: suspect — see checks (robust accuracy may be overestimated)",
    "UNCHECKED": "evaluation: unchecked (masking checks disabled)",
    "UPPER-BOUND": "evaluation: an upper bound from black-box attacks only (the model exposes "
    "no usable gradients)",
}


def verdict_text(verdict: str) -> str:
    """The sentence shown to people for a verdict (``"PASS"`` → "evaluation: trustworthy …")."""
    return VERDICT_TEXT.get(str(verdict), f"evaluation: {verdict}")


def target_label(res: Any) -> str:
    """``" -> 3"`` for a run targeting class 3 everywhere, ``" -> random targets"`` for a run
    with per-point targets, ``""`` for an untargeted run."""
    target = getattr(res, "target", None)
    if not getattr(res, "targeted", False) or target is None or not len(target):
        return ""
    classes = target.unique()
    return f" -> {int(classes[0])}" if classes.numel() == 1 else " -> random targets"


def _rows(res: Any, label: str | None) -> list[list[str]]:
    rows = []
    prefix = f"{label}: " if label else ""
    suffix = target_label(res)
    for name, s in res.attacks.items():
        rows.append(
            [
                prefix + name + (suffix if "->" not in name else ""),
                _pct(res.clean_accuracy),
                _pct(s.robust_accuracy),
                _pct(s.success_rate),
                _num(s.norm_median),
                _num(s.gradients_per_point, "{:.1f}"),
                _num(s.queries_per_point, "{:.1f}"),
                _secs(s.time_s),
            ]
        )
    if len(res.attacks) > 1:
        grads = res.gradients_total / res.n_correct if res.n_correct else float("nan")
        queries = sum(s.queries_total for s in res.attacks.values())
        queries = queries / res.n_correct if res.n_correct else float("nan")
        rows.append(
            [
                prefix + "worst case",
                _pct(res.clean_accuracy),
                _pct(res.robust_accuracy),
                _pct(res.success_rate),
                "-",
                _num(grads, "{:.1f}"),
                _num(queries, "{:.1f}"),
                _secs(sum(s.time_s for s in res.attacks.values())),
            ]
        )
    return rows


def format_table(results: Any) -> str:
    """One row per attack (and a worst-case row when there are several):
    attack | clean acc | robust acc | success rate | median norm | grad/point | queries/point |
    time.

    ``results``: an ``EvaluationResult``, a list of them, or a dict ``label -> result``.
    Robust accuracy is the attack's own when measured (``independent=True``), else cumulative
    (after the attacks listed before it); success rate is among the points it was run on;
    grad/point and queries/point are input gradients and model evaluations per attacked point
    (for the worst-case row: per correctly classified point).
    """
    if isinstance(results, Mapping):
        items = [(str(k), v) for k, v in results.items()]
    elif isinstance(results, Sequence) and not isinstance(results, str):
        items = [(None, r) for r in results]
    else:
        items = [(None, results)]
    rows: list[list[str]] = []
    for label, res in items:
        if not hasattr(res, "attacks"):
            raise TypeError(
                f"format_table needs EvaluationResult objects, got {type(res).__name__}"
            )
        rows.extend(_rows(res, label))
    return _render(rows, HEADERS)


def format_curve(curve: Any) -> str:
    """Robust accuracy per ε as a table: one row per ε, one column per attack (+ worst case)."""
    d = curve.to_dict() if hasattr(curve, "to_dict") else dict(curve)
    names = list(d["robust_accuracy"])
    several = len(names) > 1
    headers = ["eps", *names] + (["worst case"] if several else [])
    rows = []
    for j, e in enumerate(d["eps"]):
        row = [f"{e:g}"] + [_pct(d["robust_accuracy"][n][j]) for n in names]
        if several:
            row.append(_pct(d["worst_case"][j]))
        rows.append(row)
    return _render(rows, headers)
