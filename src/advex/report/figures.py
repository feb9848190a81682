"""PNG figures with matplotlib (Agg backend: no display needed).

- :func:`save_triptych`: rows of *original (class, confidence) | perturbation (amplified, grey =
  no change) | adversarial (class, confidence)*;
- :func:`save_curve`: robust accuracy against ε, one line per attack plus the worst case;
- :func:`save_query_curve`: distance (and success within ε) against queries per point, for
  decision-based attacks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: figures are written to files, never shown

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .examples import Examples  # noqa: E402

__all__ = ["save_triptych", "save_curve", "save_query_curve", "query_curve_figure", "auto_amplify"]

_GREEN = "#1a7f37"
_RED = "#cf222e"
_NORM_SYMBOL = {"linf": "∞", "l2": "2", "l1": "1"}
_NICE = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)


def auto_amplify(max_abs: float) -> float:
    """A round factor ``a`` with ``a · max_abs <= 0.5`` (so ±max_abs stays within [0, 1] around
    grey), at least 1."""
    if not max_abs > 0 or not math.isfinite(max_abs):
        return 1.0
    raw = 0.5 / max_abs
    if raw <= 1.0:
        return 1.0
    k = 10.0 ** math.floor(math.log10(raw))
    best = k
    for m in _NICE:
        if m * k <= raw + 1e-12:
            best = m * k
    return float(best)


def _fmt_factor(a: float) -> str:
    return f"{a:g}" if a < 1e4 else f"{a:.0e}"


def _as_examples(examples: Any, x: torch.Tensor | None, class_names, max_rows: int):
    """Accept Examples, an EvaluationResult (its worst-case examples) or AttackResult + x."""
    if hasattr(examples, "examples") and not hasattr(examples, "x_adv"):
        ex = examples.examples
        if ex is None:
            raise ValueError("the evaluation kept no examples (keep_examples=0?)")
        examples = ex
    if hasattr(examples, "x_adv") and not hasattr(examples, "x"):
        if x is None:
            raise ValueError(
                "an AttackResult needs the clean batch: save_triptych(result, path, x=x)"
            )
        examples = Examples.from_result(examples, x, n=max_rows, class_names=class_names)
    for attr in ("x", "x_adv", "y", "clean_pred", "adv_pred"):
        if not hasattr(examples, attr):
            raise TypeError(
                "save_triptych needs advex Examples (e.g. EvaluationResult.examples), an "
                f"EvaluationResult, or an AttackResult with x=; got {type(examples).__name__}"
            )
    if len(examples) == 0:
        raise ValueError("no examples to draw")
    return examples


def _to_image(t: torch.Tensor, lo: float, hi: float) -> tuple[np.ndarray, bool]:
    """Scale one sample to [0, 1] for imshow; returns (array, is_gray)."""
    a = ((t.detach().float().cpu() - lo) / (hi - lo)).numpy()
    return _layout(a)


def _layout(a: np.ndarray) -> tuple[np.ndarray, bool]:
    if a.ndim == 1:  # tabular: a 1×D strip
        return a[None, :], True
    if a.ndim == 3 and a.shape[0] == 1:
        return a[0], True
    if a.ndim == 3 and a.shape[0] == 3:
        return np.transpose(a, (1, 2, 0)), False
    if a.ndim == 2:
        return a, True
    if a.ndim == 3:  # other channel counts: show the channel mean
        return a.mean(0), True
    raise ValueError(f"cannot draw a sample of shape {a.shape}")


def save_triptych(
    examples: Any,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    amplify: float | str = "auto",
    *,
    max_rows: int = 8,
    x: torch.Tensor | None = None,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Draw *original | perturbation | adversarial* for a few samples and save a PNG.

    Each row is one sample: the clean input titled with its predicted class and confidence
    (green if correct), the perturbation ``x_adv - x`` amplified ``×N`` and centred at grey (grey
    = unchanged, lighter = increased, darker = decreased) titled with its norm, and the
    adversarial input titled with its predicted class and confidence (red when the attack
    succeeded, green when the model held).

    Args:
        examples: :class:`advex.report.Examples`, an ``EvaluationResult`` (its worst-case
            examples) or an :class:`~advex.core.result.AttackResult` (then pass ``x=``).
        path: output PNG path (parent directories are created).
        class_names: names of the classes (default: the examples' own, else the indices).
        amplify: ``"auto"`` (largest change maps to almost black/white), or a factor >= 1.
        max_rows: draw at most this many samples.
        title: figure title (default: the attack, norm and ε).
    """
    if isinstance(max_rows, bool) or int(max_rows) < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    ex = _as_examples(examples, x, class_names, int(max_rows))
    ex = ex[: int(max_rows)]
    names = list(class_names) if class_names is not None else getattr(ex, "class_names", None)
    lo, hi = (float(b) for b in getattr(ex, "bounds", (0.0, 1.0)))
    delta = (ex.x_adv.detach().float().cpu() - ex.x.detach().float().cpu()) / (hi - lo)
    max_abs = float(delta.abs().max()) if delta.numel() else 0.0
    if amplify == "auto":
        factor = auto_amplify(max_abs)
    else:
        try:
            factor = float(amplify)
        except (TypeError, ValueError) as err:
            raise ValueError(f"amplify must be 'auto' or a number >= 1, got {amplify!r}") from err
        if not factor >= 1 or not math.isfinite(factor):
            raise ValueError(f"amplify must be 'auto' or a number >= 1, got {amplify!r}")
    norm = getattr(ex, "norm", "linf")
    sym = _NORM_SYMBOL.get(norm, norm)
    targets = getattr(ex, "target", None)

    def cname(k: int) -> str:
        return names[k] if names is not None and 0 <= k < len(names) else str(k)

    rows = len(ex)
    first_img, _ = _to_image(ex.x[0], lo, hi)
    h, w = first_img.shape[:2]
    aspect = max(0.25, min(4.0, w / max(h, 1)))
    if title is None:
        title = _default_title(ex, sym)
    # fixed layout in inches (much faster than tight_layout / bbox_inches="tight")
    img_h, title_h, gap, left, right, bottom = 1.6, 0.32, 0.25, 0.5, 0.1, 0.1
    img_w = img_h * aspect
    header_h, top_h = 0.3, (0.38 if title else 0.05)
    fig_w = left + 3 * img_w + 2 * gap + right
    fig_h = top_h + header_h + rows * (title_h + img_h) + bottom
    fig = plt.figure(figsize=(fig_w, fig_h))
    axes = np.empty((rows, 3), dtype=object)
    for i in range(rows):
        y0 = fig_h - top_h - header_h - (i + 1) * (title_h + img_h) + 0.0
        for j in range(3):
            x0 = left + j * (img_w + gap)
            axes[i, j] = fig.add_axes((x0 / fig_w, y0 / fig_h, img_w / fig_w, img_h / fig_h))
    headers = ("original", f"perturbation ×{_fmt_factor(factor)}", "adversarial")
    for i in range(rows):
        img, gray = _to_image(ex.x[i], lo, hi)
        adv, _ = _to_image(ex.x_adv[i], lo, hi)
        pert, _ = _layout(np.clip(0.5 + factor * delta[i].numpy(), 0.0, 1.0))
        kw = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0} if gray else {}
        y_i, cp, ap = int(ex.y[i]), int(ex.clean_pred[i]), int(ex.adv_pred[i])
        success = bool(ex.success[i]) if hasattr(ex, "success") else ap != y_i
        ax0, ax1, ax2 = axes[i]
        kw["aspect"] = "auto"
        ax0.imshow(np.clip(img, 0, 1), interpolation="nearest", **kw)
        ax0.set_title(
            f"{cname(cp)} ({float(ex.clean_conf[i]):.1%})",
            color=_GREEN if cp == y_i else _RED,
            fontsize=10,
        )
        ax1.imshow(pert, interpolation="nearest", **kw)
        n_i = float(ex.norms[i]) if hasattr(ex, "norms") else float("nan")
        ax1.set_title(f"‖δ‖{sym} = {n_i:.3g}", fontsize=10, color="#333333")
        tgt = ""
        if targets is not None:
            tgt = f" · target {cname(int(targets[i]))}"
        ax2.imshow(np.clip(adv, 0, 1), interpolation="nearest", **kw)
        ax2.set_title(
            f"{cname(ap)} ({float(ex.adv_conf[i]):.1%})",
            color=_RED if success else _GREEN,
            fontsize=10,
        )
        attack = ex.attack[i] if hasattr(ex, "attack") else ""
        ax0.set_ylabel(f"label {cname(y_i)}{tgt}\n{attack}", fontsize=9)
        for ax in (ax0, ax1, ax2):
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_color("#bbbbbb")
    for j, head in enumerate(headers):
        fig.text(
            (left + j * (img_w + gap) + img_w / 2) / fig_w,
            (fig_h - top_h - header_h / 2) / fig_h,
            head,
            ha="center",
            va="center",
            fontsize=11,
            fontweight="bold",
        )
    if title:
        fig.text(0.5, (fig_h - 0.2) / fig_h, title, ha="center", va="center", fontsize=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)
    return path


def _default_title(ex, sym: str) -> str | None:
    attacks = sorted(set(getattr(ex, "attack", []) or []))
    eps = getattr(ex, "eps", None)
    parts = [", ".join(attacks)] if attacks else []
    if eps is not None:
        parts.append(f"L{sym} ε = {eps:g}")
    return " · ".join(parts) if parts else None


def _curve_dict(curve: Any) -> dict[str, Any]:
    d = curve.to_dict() if hasattr(curve, "to_dict") else curve
    if not isinstance(d, Mapping) or "eps" not in d or "robust_accuracy" not in d:
        raise TypeError(
            "save_curve needs a RobustnessCurve (or its to_dict()) with 'eps' and "
            f"'robust_accuracy'; got {type(curve).__name__}"
        )
    return dict(d)


def save_curve(
    curve: Any,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    worst_case: bool | None = None,
    dpi: int = 120,
) -> Path:
    """Plot robust accuracy (%) against ε, one line per attack, and save a PNG.

    ``curve`` is a :class:`advex.evaluate.RobustnessCurve` or its ``to_dict()``. The worst case
    over the attacks is drawn as a dashed black line when there is more than one attack
    (``worst_case=`` forces it on or off).
    """
    d = _curve_dict(curve)
    eps = [float(e) for e in d["eps"]]
    lines: Mapping[str, Sequence[float]] = d["robust_accuracy"]
    if not eps or not lines:
        raise ValueError("the curve has no points to draw")
    norm = d.get("norm")
    sym = _NORM_SYMBOL.get(norm, norm) if norm else None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = "osD^vP*X"
    for k, (name, vals) in enumerate(lines.items()):
        ys = [np.nan if v is None else 100.0 * float(v) for v in vals]
        ax.plot(eps, ys, marker=markers[k % len(markers)], lw=2, ms=5, label=name)
    if worst_case is None:
        worst_case = len(lines) > 1
    if worst_case and d.get("worst_case") is not None:
        ys = [np.nan if v is None else 100.0 * float(v) for v in d["worst_case"]]
        ax.plot(eps, ys, "k--", lw=1.6, label="worst case")
    clean = d.get("clean_accuracy")
    if clean is not None:
        ax.axhline(100.0 * float(clean), color="#888888", lw=1, ls=":", label="clean accuracy")
    ax.set_xlabel(f"ε (L{sym})" if sym else "ε")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    lo, hi = min(eps), max(eps)
    pad = 0.03 * (hi - lo) if hi > lo else 0.05
    ax.set_xlim(lo - pad, hi + pad)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9, frameon=False)
    if title is None:
        bits = ["Robust accuracy vs ε"]
        info = []
        if d.get("data"):
            info.append(str(d["data"]))
        if d.get("n"):
            info.append(f"n = {d['n']}")
        if d.get("targeted"):
            info.append("targeted")
        if info:
            bits.append(f"({', '.join(info)})")
        title = " ".join(bits)
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)
    return path


def query_curve_figure(
    curves: Mapping[str, Mapping[str, Any]], *, norm: str | None = None, title: str | None = None
):
    """The matplotlib figure of :func:`save_query_curve` (the caller saves and closes it)."""
    if not curves:
        raise ValueError("no query curve to draw")
    sym = _NORM_SYMBOL.get(norm, norm) if norm else None
    with_eps = any(c.get("within_eps") is not None for c in curves.values())
    fig, axes = plt.subplots(1, 2 if with_eps else 1, figsize=(10.4 if with_eps else 6.0, 3.8))
    axes = np.atleast_1d(axes)
    eps = None
    for name, c in curves.items():
        q = [int(v) for v in c["queries"]]
        med = [np.nan if v is None else float(v) for v in c["median_distance"]]
        label = f"{name} ({c.get('points', '?')} points)"
        axes[0].plot(q, med, lw=2, label=label)
        if with_eps and c.get("within_eps") is not None:
            axes[1].plot(q, [100.0 * float(v) for v in c["within_eps"]], lw=2, label=label)
            eps = c.get("eps", eps)
    axes[0].set_ylabel(f"median L{sym} distance" if sym else "median distance")
    if eps is not None:
        axes[0].axhline(float(eps), color=_RED, ls="--", lw=1, label=f"ε = {float(eps):g}")
        axes[1].set_ylabel(f"adversarial within ε = {float(eps):g} (% of points)")
        axes[1].set_ylim(-2, 102)
    from matplotlib.ticker import NullFormatter

    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decades only: no crowded labels
        ax.set_xlabel("queries per point (the clean pass included)")
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle(title or "Decision-based attacks: distance vs queries", fontsize=11)
    fig.tight_layout()
    return fig


def save_query_curve(
    curves: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    norm: str | None = None,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Plot the median distance (and, when the curves carry ``within_eps``, the share of points
    with an adversarial within ε) against the queries spent per point, one line per attack,
    and save a PNG.

    ``curves`` maps an attack name to :func:`advex.attacks.decision.summarise_curve`'s dict
    (``queries``, ``median_distance``, optional ``within_eps``/``eps``, ``points``), e.g. from a
    :class:`~advex.attacks.decision.QueryCurve` passed to a decision-based attack.

    >>> curve = QueryCurve(); HopSkipJump(max_queries=5000, curve=curve)(model, x, y)
    >>> grid = QueryCurve.grid(5000)
    >>> save_query_curve({"hsja": summarise_curve(curve.table(grid), grid)}, "queries.png")
    """
    fig = query_curve_figure(curves, norm=norm, title=title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)
    return path
