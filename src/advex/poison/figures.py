"""Figures and the HTML report of a poisoning run: the trigger, triggered examples, detector
score histograms with the poisoned samples marked, the per-class anomaly index."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from advex._io import atomic_write  # noqa: E402
from advex.report import render_page  # noqa: E402

from .attacks import PoisonAttack  # noqa: E402

__all__ = [
    "trigger_figure",
    "examples_figure",
    "histogram_figure",
    "anomaly_figure",
    "save_figure",
    "save_report",
]


def _img(t: torch.Tensor, bounds) -> tuple[np.ndarray, str | None]:
    lo, hi = bounds
    a = ((t.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1).numpy()
    if a.shape[0] == 1:
        return a[0], "gray"
    return np.transpose(a[:3], (1, 2, 0)), None


def trigger_figure(attack: PoisonAttack, image: torch.Tensor, bounds=(0.0, 1.0)):
    """The trigger alone (on a blank image of the data's shape) and stamped on ``image``."""
    blank = torch.full_like(image, float(bounds[0])).unsqueeze(0)
    fig, axes = plt.subplots(1, 2, figsize=(4.4, 2.4))
    for ax, t, title in (
        (axes[0], attack.apply_trigger(blank, bounds)[0], "trigger"),
        (axes[1], attack.apply_trigger(image.unsqueeze(0), bounds)[0], "on an image"),
    ):
        a, cmap = _img(t, bounds)
        ax.imshow(a, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def examples_figure(
    attack: PoisonAttack,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    class_names,
    bounds=(0.0, 1.0),
    n: int = 8,
):
    """Clean test images (top) and the same with the trigger (bottom), with predictions."""
    x, y = x[:n], y[:n]
    xt = attack.apply_trigger(x, bounds)
    with torch.no_grad():
        was = model.training
        model.eval()
        pc, pt = model(x).argmax(1), model(xt).argmax(1)
        model.train(was)
    n = len(x)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 3.0), squeeze=False)
    for j in range(n):
        for i, (img, pred) in enumerate(((x[j], pc[j]), (xt[j], pt[j]))):
            a, cmap = _img(img, bounds)
            ax = axes[i][j]
            ax.imshow(a, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(
                f"{'label' if i == 0 else 'trig.'} {class_names[int(y[j])]}\n"
                f"pred {class_names[int(pred)]}",
                fontsize=7,
            )
            ax.axis("off")
    fig.tight_layout()
    return fig


def histogram_figure(
    scores: torch.Tensor,
    poisoned: torch.Tensor | None,
    *,
    title: str,
    xlabel: str,
    threshold: float | None = None,
    labels: tuple[str, str] = ("clean", "poisoned"),
):
    """Histogram of detector scores, the poisoned ones in red (``poisoned`` bool mask)."""
    s = torch.as_tensor(scores).float().numpy()
    fig, ax = plt.subplots(figsize=(5.6, 3.0))
    finite = s[np.isfinite(s)]
    bins = np.linspace(finite.min(), finite.max() + 1e-9, 60) if finite.size else 10
    if poisoned is None:
        ax.hist(s, bins=bins, color="#0969da", alpha=0.8, label=labels[0])
    else:
        m = torch.as_tensor(poisoned, dtype=torch.bool).numpy()
        ax.hist(s[~m], bins=bins, color="#0969da", alpha=0.7, label=f"{labels[0]} ({(~m).sum()})")
        ax.hist(s[m], bins=bins, color="#cf222e", alpha=0.8, label=f"{labels[1]} ({m.sum()})")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="black", ls="--", lw=1, label="threshold")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count (log)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def anomaly_figure(anomaly: list[float], l1: list[float], classes, threshold: float, names):
    """Per-class anomaly index of Neural Cleanse (bars) with the mask L1 norms annotated."""
    fig, ax = plt.subplots(figsize=(5.6, 3.0))
    med = float(np.median(l1))
    colours = [
        "#cf222e" if a > threshold and n < med else "#0969da"
        for a, n in zip(anomaly, l1, strict=True)
    ]
    xs = np.arange(len(classes))
    ax.bar(xs, anomaly, color=colours)
    ax.axhline(threshold, color="black", ls="--", lw=1)
    for i, v in enumerate(l1):
        ax.text(i, anomaly[i], f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, [str(names[c]) for c in classes], fontsize=8)
    ax.set_xlabel("class (numbers: L1 norm of the reversed mask)")
    ax.set_ylabel("anomaly index")
    ax.set_title("Neural Cleanse: anomaly index per class", fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, facecolor="white"))
    plt.close(fig)
    return path


def _table(rows: dict[str, Any]) -> str:
    out = ["<table>"]
    for k, v in rows.items():
        if isinstance(v, float):
            v = f"{v:.4f}"
        out.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>")
    out.append("</table>")
    return "".join(out)


def save_report(
    path: str | os.PathLike,
    title: str,
    *,
    cards: list[tuple[str, str, str]],
    tables: dict[str, dict[str, Any]],
    figures: dict[str, Path],
    meta: dict[str, Any] | None = None,
) -> Path:
    """A self-contained HTML report: summary cards, key/value tables, the PNG figures
    inlined (read back from ``figures``: caption → PNG path)."""
    import base64

    sections = [(name, _table(rows)) for name, rows in tables.items()]
    if figures:
        body = ["<div class='figs'>"]
        for caption, p in figures.items():
            uri = "data:image/png;base64," + base64.b64encode(Path(p).read_bytes()).decode()
            body.append(
                f"<figure><img src='{uri}' alt='{html.escape(caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        body.append("</div>")
        sections.append(("Figures", "".join(body)))
    text = render_page(title, sections, cards=cards, meta=meta)
    path = Path(path)
    atomic_write(path, text)
    return path
