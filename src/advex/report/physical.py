"""Reports of a physical attack: the sign with its sticker under several views (with the
model's top-3 predictions), success curves by viewing condition, a print-ready PNG of the
sticker at a physical size and resolution, and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write

__all__ = ["save_views_figure", "save_breakdown_figure", "save_print_png", "save_physical_html"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _img(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy()


def _short(name: str, n: int = 22) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


@torch.no_grad()
def save_views_figure(
    path: str | os.PathLike,
    model,
    x: torch.Tensor,
    sticker: torch.Tensor,
    threat,
    views,
    class_names: list[str],
    *,
    n_views: int = 4,
    seed: int = 7,
) -> Path:
    """One row per image of ``x`` (a few): the photo, then ``n_views`` held-out views of it
    with the sticker on, each titled with the model's top-3 predictions."""
    plt = _plt()
    g = torch.Generator().manual_seed(int(seed))
    rows = x.shape[0]
    fig, axes = plt.subplots(rows, n_views + 1, figsize=(2.1 * (n_views + 1), 2.4 * rows))
    axes = np.atleast_2d(axes)
    model_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        for r in range(rows):
            xi = x[r : r + 1]
            p0 = model(xi).softmax(1)[0]
            c0 = int(p0.argmax())
            axes[r, 0].imshow(_img(xi[0]), interpolation="nearest")
            axes[r, 0].set_title(f"photo\n{_short(class_names[c0])} {p0[c0]:.2f}", fontsize=7)
            params = views.sample(n_views, g)
            xr = xi.expand(n_views, -1, -1, -1)
            pl = threat.sample_placement(n_views, g) if threat.placement == "random" else None
            seen = views.apply(threat.apply(xr, sticker.to(xr), pl), params)
            probs = model(seen).softmax(1)
            for j in range(n_views):
                top = probs[j].topk(3)
                lines = [
                    f"{_short(class_names[int(c)])} {float(p):.2f}"
                    for p, c in zip(top.values, top.indices, strict=True)
                ]
                yaw = float(params.yaw[j]) * 57.2958
                head = f"yaw {yaw:+.0f}°, size {float(params.scale[j]):.2f}"
                axes[r, j + 1].imshow(_img(seen[j]), interpolation="nearest")
                axes[r, j + 1].set_title(head + "\n" + "\n".join(lines), fontsize=6.5)
        for ax in axes.ravel():
            ax.set_axis_off()
        fig.tight_layout()
        path = Path(path)
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
        if model_training and hasattr(model, "train"):
            model.train()
    return path


def save_breakdown_figure(path: str | os.PathLike, ev: dict[str, Any]) -> Path:
    """Success of the sticker, of the random control and the clean accuracy per bin of each
    viewing condition in ``ev["breakdown"]`` (from :func:`advex.evaluate.physical_evaluation`)."""
    plt = _plt()
    parts = ev["breakdown"]
    fig, axes = plt.subplots(1, len(parts), figsize=(3.4 * len(parts), 3.0), sharey=True)
    for ax, (name, part) in zip(np.atleast_1d(axes), parts.items(), strict=True):
        rows = [b for b in part["bins"] if b["n"]]
        mid = [(b["low"] + b["high"]) / 2 for b in rows]
        for key, label, style in (
            ("success", "sticker", "o-"),
            ("control_success", "random sticker", "s--"),
            ("clean_accuracy", "clean accuracy", "^:"),
        ):
            ax.plot(mid, [b[key] for b in rows], style, label=label, markersize=4)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(part["label"], fontsize=7)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("rate")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path


def save_print_png(
    path: str | os.PathLike,
    sticker: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    width_cm: float = 30.0,
    dpi: int = 300,
) -> dict[str, Any]:
    """A print-ready RGBA PNG of ``sticker`` ``(3, h, w)``: upscaled (nearest neighbour, so
    every model pixel is a crisp square) to ``width_cm`` at ``dpi`` (the DPI is stored in the
    file), transparent outside ``mask`` ``(1, h, w)``. For a sticker on a sign, ``width_cm``
    is the width the image spans on the real sign. Returns the pixel size and the physical
    size of one model pixel."""
    import matplotlib.image as mpimg

    if not (width_cm > 0 and dpi > 0):
        raise ValueError(f"width_cm and dpi must be > 0, got {width_cm}, {dpi}")
    s = sticker.detach().cpu().float().clamp(0, 1)
    h, w = s.shape[-2:]
    px_w = max(w, int(round(width_cm / 2.54 * dpi)))
    factor = max(1, px_w // w)
    alpha = torch.ones(1, h, w) if mask is None else (mask.detach().cpu().float() > 0.5).float()
    rgba = torch.cat([s, alpha]).repeat_interleave(factor, 1).repeat_interleave(factor, 2)
    arr = rgba.permute(1, 2, 0).numpy()
    path = Path(path)
    atomic_write(path, lambda tmp: mpimg.imsave(tmp, arr, dpi=int(dpi), format="png"))
    return {
        "pixels": [int(arr.shape[1]), int(arr.shape[0])],
        "dpi": int(dpi),
        "width_cm": arr.shape[1] / dpi * 2.54,
        "model_pixel_mm": factor / dpi * 25.4,
    }


def _embed(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def save_physical_html(
    path: str | os.PathLike, results: dict[str, Any], figures: dict[str, Path], title: str
) -> Path:
    """A self-contained HTML page: the headline rates, the figures (embedded) and the
    results as JSON."""
    ev = results.get("evaluation", {})
    rates = ev.get("rates", {})
    rows = "".join(
        f"<tr><td>{html.escape(k.replace('_', ' '))}</td><td>{v['rate']:.1%}</td>"
        f"<td>{v['k']}/{v['n']}</td><td>[{v['ci95'][0]:.1%}, {v['ci95'][1]:.1%}]</td></tr>"
        for k, v in rates.items()
    )
    figs = "".join(f"<h2>{html.escape(name)}</h2>{_embed(p)}" for name, p in figures.items() if p)
    body = json.dumps(
        {k: v for k, v in results.items() if k != "evaluation"}, indent=2, default=str
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}pre{{background:#f6f6f6;padding:1em}}</style>
</head><body><h1>{html.escape(title)}</h1>
<table><tr><th>rate</th><th>value</th><th>k/n</th><th>95% CI</th></tr>{rows}</table>
{figs}<h2>Run</h2><pre>{html.escape(body)}</pre></body></html>"""
    path = Path(path)
    atomic_write(path, page)
    return path
