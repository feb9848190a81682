"""Physical evaluation of a sticker or patch: success over held-out viewing conditions of
held-out images, against a random sticker of the same shape and area.

>>> rp2 = RP2("two-bars", target=1).fit(model, x_fit)
>>> ev = physical_evaluation(model, rp2.sticker_, rp2.threat, x_held, y_held, target=1)
>>> ev["success"], ev["control_success"], ev["breakdown"]["angle"]
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._stats import clopper_pearson
from ..data import ArrayDataset, class_index
from ..models.guards import attack_mode
from ..threats.patch import PatchThreat, ViewDistribution

__all__ = [
    "physical_evaluation",
    "source_images",
    "held_out_views",
    "patch_robust_accuracy",
    "BREAKDOWNS",
]

#: the viewing conditions the success is broken down by: name -> (parameter, label)
BREAKDOWNS = {
    "angle": ("yaw", "viewing angle |yaw| (degrees)"),
    "distance": ("scale", "relative size (1 = as photographed; smaller = farther)"),
    "lighting": ("brightness", "brightness shift"),
    "rotation": ("rotation", "|in-plane rotation| (degrees)"),
}


def source_images(ds: ArrayDataset, source: Any, *, what: str = "source class") -> ArrayDataset:
    """The images of class ``source`` (an index or a name such as ``"stop"``) in ``ds``;
    raises ``ValueError`` when the class does not exist or has no image in the data."""
    c = class_index(ds, source, what=what)
    idx = (ds.y == c).nonzero().squeeze(1)
    if idx.numel() == 0:
        raise ValueError(
            f"{what} {source!r} ({c}: {ds.class_names[c]!r}) has no images in {ds.name} "
            f"({len(ds)} images)"
        )
    return ds.subset(idx)


def held_out_views(views: ViewDistribution, seed: int, widen: float = 1.0) -> ViewDistribution:
    """The evaluation distribution: ``views`` with another seed, optionally widened."""
    return views.held_out(seed, widen)


def _rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = clopper_pearson(int(k), int(n)) if n else (float("nan"), float("nan"))
    return {"rate": k / n if n else float("nan"), "k": int(k), "n": int(n), "ci95": [lo, hi]}


@torch.no_grad()
def physical_evaluation(
    model: nn.Module,
    sticker: torch.Tensor,
    threat: PatchThreat,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    target: int | None,
    n_views: int = 20,
    seed: int = 1,
    widen: float = 1.0,
    views: ViewDistribution | None = None,
    control_seed: int = 12345,
    bins: int = 5,
    batch_size: int = 1000,
) -> dict[str, Any]:
    """Success of ``sticker`` over ``n_views`` held-out views of each image of ``x``.

    Every image ``i`` is seen under ``n_views`` viewing conditions drawn from the held-out
    distribution (``views``, default the threat's views with ``seed`` and ``widen``; its seed
    must differ from the fitting one) — and, for a random-placement patch, at as many random
    placements. Under the very same conditions the evaluation also sees the image with a
    random printable sticker of the same shape and area (the control) and with no sticker.

    Success: the prediction is ``target`` (targeted) or differs from ``y`` (untargeted);
    images whose label is the target are left out. Returns a JSON-ready dict: ``success``,
    ``control_success``, ``clean_view_accuracy`` and ``clean_view_target`` (the no-sticker
    views), each with a Clopper–Pearson 95% interval under ``rates``; ``per_image`` success;
    ``breakdown`` per viewing condition (angle, distance, lighting, rotation): ``bins`` equal
    bins with the success of the sticker, the control and the clean accuracy in each.
    """
    if not isinstance(threat, PatchThreat):
        raise TypeError(f"threat must be a PatchThreat, got {type(threat).__name__}")
    threat.check_inputs(x)
    threat.check_sticker(sticker)
    if isinstance(n_views, bool) or int(n_views) < 1:
        raise ValueError(f"n_views must be an integer >= 1, got {n_views!r}")
    y = torch.as_tensor(y).long()
    if target is not None:
        keep = y != target
        if not bool(keep.any()):
            raise ValueError(f"every evaluation image is of the target class {target}")
        x, y = x[keep], y[keep]
    ev_views = views if views is not None else threat.views.held_out(seed, widen)
    n, v = x.shape[0], int(n_views)
    g = torch.Generator().manual_seed(int(ev_views.seed))
    params = ev_views.sample(n * v, g)
    placement = threat.sample_placement(n * v, g) if threat.placement == "random" else None
    control = threat.random_sticker(torch.Generator().manual_seed(int(control_seed)))
    img = torch.arange(n).repeat_interleave(v)
    preds = {"adv": [], "control": [], "clean": []}
    with attack_mode(model, warn=False) if isinstance(model, nn.Module) else _null():
        for s in range(0, n * v, batch_size):
            sl = slice(s, min(s + batch_size, n * v))
            xb = x[img[sl]]
            pv = params.index(sl)
            pl = placement[sl] if placement is not None else None
            for key, st in (("adv", sticker), ("control", control), ("clean", None)):
                xs = xb if st is None else threat.apply(xb, st.to(xb), pl)
                logits = model(ev_views.apply(xs, pv))
                preds[key].append(logits.argmax(1))
    pred = {k: torch.cat(p) for k, p in preds.items()}
    yy = y[img]

    def hit(p: torch.Tensor) -> torch.Tensor:
        return p == target if target is not None else p != yy

    h_adv, h_ctl = hit(pred["adv"]), hit(pred["control"])
    clean_ok = pred["clean"] == yy
    rates = {
        "success": _rate(int(h_adv.sum()), n * v),
        "control_success": _rate(int(h_ctl.sum()), n * v),
        "clean_view_accuracy": _rate(int(clean_ok.sum()), n * v),
    }
    if target is not None:
        rates["clean_view_target"] = _rate(int((pred["clean"] == target).sum()), n * v)
    per_image = h_adv.view(n, v).float().mean(1)
    breakdown = {}
    for name, (attr, label) in BREAKDOWNS.items():
        val = getattr(params, attr).double()
        if attr in ("yaw", "rotation"):
            val = val.abs() * 180 / math.pi
        lo, hi = float(val.min()), float(val.max())
        edges = torch.linspace(lo, hi + 1e-9, bins + 1, dtype=torch.float64)
        which = torch.bucketize(val, edges[1:-1], right=True)
        rows = []
        for b in range(bins):
            sel = which == b
            k = int(sel.sum())
            rows.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "n": k,
                    "success": float(h_adv[sel].float().mean()) if k else None,
                    "control_success": float(h_ctl[sel].float().mean()) if k else None,
                    "clean_accuracy": float(clean_ok[sel].float().mean()) if k else None,
                }
            )
        breakdown[name] = {"label": label, "bins": rows}
    return {
        "success": rates["success"]["rate"],
        "control_success": rates["control_success"]["rate"],
        "clean_view_accuracy": rates["clean_view_accuracy"]["rate"],
        "rates": rates,
        "target": target,
        "n_images": n,
        "n_views": v,
        "area": threat.area,
        "views": ev_views.to_dict(),
        "per_image": {
            "mean": float(per_image.mean()),
            "min": float(per_image.min()),
            "fraction_above_half": float((per_image > 0.5).float().mean()),
        },
        "breakdown": breakdown,
    }


def _null():
    import contextlib

    return contextlib.nullcontext()


def patch_robust_accuracy(
    model: nn.Module,
    data: Any,
    *,
    area: float = 0.05,
    steps: int = 100,
    eot_placements: int = 8,
    step_size: float = 0.1,
    target: Any = None,
    views: ViewDistribution | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
):
    """Robust accuracy of ``model`` on ``data`` under a per-image adversarial patch of ``area``
    of the image at a random placement (the threat of ``advex evaluate --threat patch``).

    Runs :class:`~advex.attacks.PatchPGD` (one patch per image, optimised by signed-gradient
    EOT over ``eot_placements`` random placements per step, ``steps`` steps, untargeted unless
    ``target``) through :func:`~advex.evaluate.robust_accuracy`, so the result has the usual
    shape (clean accuracy, robust accuracy with its interval, per-point passes, examples). A
    point counts as robust when the model still classifies it correctly with its patch pasted
    at one more random placement that the optimisation never saw.

    >>> res = patch_robust_accuracy(model, (x, y), area=0.05)
    >>> res.clean_accuracy, res.robust_accuracy
    """
    from ..attacks.physical import PatchPGD
    from .robust import robust_accuracy

    x0 = data[0] if isinstance(data, tuple | list) else getattr(data, "x", None)
    size = tuple(x0.shape[-2:]) if isinstance(x0, torch.Tensor) and x0.dim() == 4 else 32
    attack = PatchPGD(
        area=area,
        size=size,
        steps=steps,
        eot_placements=eot_placements,
        step_size=step_size,
        views=views,
        seed=seed,
    )
    return robust_accuracy(
        model,
        data,
        {attack.name: attack},
        batch_size=batch_size,
        target=target,
        progress=progress,
    )
