"""A few (clean, adversarial) pairs kept for figures: :class:`Examples`, and
:class:`ExampleKeeper`, which collects them batch by batch during an evaluation."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

__all__ = ["Examples", "ExampleKeeper"]


@dataclass
class Examples:
    """Clean inputs, their adversarial versions and the model's predictions, one row per sample.

    What :func:`advex.report.save_triptych` draws. ``attack`` names, per row, the attack that
    produced ``x_adv`` (for worst-case examples it is the attack that broke the point).
    """

    x: torch.Tensor
    x_adv: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    clean_pred: torch.Tensor
    clean_conf: torch.Tensor
    adv_pred: torch.Tensor
    adv_conf: torch.Tensor
    success: torch.Tensor
    norms: torch.Tensor
    attack: list[str]
    index: torch.Tensor
    norm: str = "linf"
    eps: float | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, idx) -> Examples:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        rows = torch.arange(len(self))[idx].tolist()
        kw: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                kw[f.name] = v[rows]
            elif f.name == "attack":
                kw[f.name] = [v[i] for i in rows]
            else:
                kw[f.name] = v
        return Examples(**kw)

    @staticmethod
    def from_result(
        result,
        x: torch.Tensor,
        n: int | None = 8,
        *,
        class_names: list[str] | None = None,
        successful_first: bool = True,
    ) -> Examples:
        """Examples from an :class:`~advex.core.result.AttackResult` and its clean batch ``x``.

        Keeps up to ``n`` rows, successful attacks first (in batch order), then failures.
        """
        if x.shape != result.x_adv.shape:
            raise ValueError(
                f"x has shape {tuple(x.shape)} but the result's x_adv has "
                f"{tuple(result.x_adv.shape)}"
            )
        order = torch.arange(len(result))
        if successful_first:
            succ = result.success.cpu()
            order = torch.cat([order[succ], order[~succ]])
        if n is not None:
            order = order[: int(n)]
        dev = result.x_adv.device
        r = result[order.to(dev)]
        return Examples(
            x=x.detach()[order.to(x.device)].cpu(),
            x_adv=r.x_adv.detach().cpu(),
            y=r.y.cpu(),
            target=None if r.target is None else r.target.cpu(),
            clean_pred=r.clean_pred.cpu(),
            clean_conf=r.clean_conf.cpu(),
            adv_pred=r.adv_pred.cpu(),
            adv_conf=r.adv_conf.cpu(),
            success=r.success.cpu(),
            norms=r.norms.detach().cpu(),
            attack=[result.attack] * len(order),
            index=order,
            norm=result.threat.norm,
            eps=result.threat.eps,
            bounds=tuple(result.threat.bounds),
            class_names=class_names,
        )

    def to_dict(self) -> dict[str, Any]:
        """Predictions of each row (no pixels), JSON-ready."""
        names = self.class_names
        rows = []
        for i in range(len(self)):
            row = {
                "index": int(self.index[i]),
                "attack": self.attack[i],
                "label": int(self.y[i]),
                "clean_pred": int(self.clean_pred[i]),
                "clean_conf": float(self.clean_conf[i]),
                "adv_pred": int(self.adv_pred[i]),
                "adv_conf": float(self.adv_conf[i]),
                "success": bool(self.success[i]),
                "norm": float(self.norms[i]),
            }
            if self.target is not None:
                row["target"] = int(self.target[i])
            if names:
                row["label_name"] = names[int(self.y[i])]
                row["adv_pred_name"] = names[int(self.adv_pred[i])]
            rows.append(row)
        return {"norm": self.norm, "eps": self.eps, "rows": rows}


class ExampleKeeper:
    """Collects, across batches, the first ``k`` successful rows and the first ``k`` failures.

    >>> keeper = ExampleKeeper(8)
    >>> keeper.add(result.success, x=x, x_adv=result.x_adv, ...)  # once per batch
    >>> examples = keeper.build(norm="linf", eps=0.3)             # Examples or None
    """

    def __init__(self, k: int) -> None:
        self.k = int(k)
        self.parts: dict[bool, list[dict]] = {True: [], False: []}
        self.count = {True: 0, False: 0}

    def add(self, success: torch.Tensor, select: torch.Tensor | None = None, **cols) -> None:
        """Offer the rows of a batch (``select``: only those rows are candidates)."""
        if self.k <= 0:
            return
        for flag in (True, False):
            room = self.k - self.count[flag]
            if room <= 0:
                continue
            cand = success == flag
            if select is not None:
                cand = cand & select
            sel = cand.nonzero().squeeze(1)[:room]
            if sel.numel() == 0:
                continue
            part = {}
            for key, v in cols.items():
                if isinstance(v, torch.Tensor):
                    part[key] = v[sel.to(v.device)].detach().cpu()
                elif isinstance(v, list):
                    part[key] = [v[i] for i in sel.tolist()]
                else:
                    part[key] = v
            part["success"] = success[sel].cpu()
            self.parts[flag].append(part)
            self.count[flag] += int(sel.numel())

    def build(self, **meta) -> Examples | None:
        """The kept rows (successes first) as :class:`Examples`; None when nothing was kept."""
        parts = self.parts[True] + self.parts[False]
        if not parts:
            return None
        cols: dict[str, Any] = {}
        for key in parts[0]:
            vals = [p[key] for p in parts]
            if isinstance(vals[0], torch.Tensor):
                cols[key] = torch.cat(vals)
            elif isinstance(vals[0], list):
                cols[key] = [a for v in vals for a in v]
            else:
                cols[key] = vals[0]
        n = min(self.k, int(cols["y"].shape[0]))
        ex = Examples(**cols, **meta)
        return ex[:n]
