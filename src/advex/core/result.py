"""AttackResult: what an attack returns, with success recomputed from the model."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from ..threats import ThreatModel

__all__ = ["AttackResult"]


@dataclass
class AttackResult:
    """Adversarial examples and everything measured about them, one entry per sample.

    ``success`` is computed from the model's prediction on the returned ``x_adv`` (never taken
    from the attack's own bookkeeping): untargeted — prediction ≠ ``y``; targeted — prediction ==
    ``target``. Points the model already gets wrong (untargeted) are returned unchanged and count
    as successes with a zero-norm perturbation, so ``robust_accuracy`` is the usual number.

    Attributes
    ----------
    x_adv: adversarial inputs, same shape/dtype/device as the input batch.
    success: bool per sample.
    y, target: true labels and targets (``target`` is None for untargeted attacks).
    norms: perturbation size per sample, in the threat model's norm.
    clean_pred, clean_conf / adv_pred, adv_conf: predicted label and its softmax probability on
        the clean and adversarial inputs.
    gradients: per-sample number of input-gradient evaluations (forward+backward) spent.
    queries: per-sample number of forward evaluations spent (gradient passes included).
    threat: the :class:`ThreatModel` the result satisfies; attack: its name; params: its
        hyperparameters.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    norms: torch.Tensor
    clean_pred: torch.Tensor
    clean_conf: torch.Tensor
    adv_pred: torch.Tensor
    adv_conf: torch.Tensor
    gradients: torch.Tensor
    queries: torch.Tensor
    threat: ThreatModel
    attack: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    minimum_norm: bool = False

    # -- derived numbers ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def clean_correct(self) -> torch.Tensor:
        return self.clean_pred == self.y

    @property
    def robust(self) -> torch.Tensor:
        """Per sample: classified correctly both before and after the attack."""
        return self.clean_correct & (self.adv_pred == self.y)

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean())

    @property
    def success_rate(self) -> float:
        """Share of successes among points the model classified correctly before the attack."""
        cc = self.clean_correct
        return float(self.success[cc].float().mean()) if bool(cc.any()) else float("nan")

    @property
    def steps(self) -> torch.Tensor:
        """Alias of :attr:`gradients` (iterations of a gradient attack)."""
        return self.gradients

    # -- transformations ---------------------------------------------------------------------
    def _map(self, fn) -> AttackResult:
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = fn(v) if isinstance(v, torch.Tensor) and f.name != "params" else v
        return AttackResult(**kw)

    def __getitem__(self, idx) -> AttackResult:
        return self._map(lambda t: t[idx])

    def cpu(self) -> AttackResult:
        return self._map(lambda t: t.cpu())

    @staticmethod
    def cat(results: list[AttackResult]) -> AttackResult:
        """Concatenate per-batch results of the same attack."""
        if not results:
            raise ValueError("no results to concatenate")
        first = results[0]
        kw = {}
        for f in fields(first):
            vals = [getattr(r, f.name) for r in results]
            if isinstance(vals[0], torch.Tensor) and f.name != "params":
                kw[f.name] = torch.cat(vals)
            elif f.name == "target" and vals[0] is None:
                kw[f.name] = None
            else:
                kw[f.name] = vals[0]
        return AttackResult(**kw)

    def at_eps(self, eps: float, x: torch.Tensor | None = None) -> AttackResult:
        """Turn a minimum-norm result into a fixed-budget one: success iff norm ≤ ε.

        Samples whose adversarial needs more than ``eps`` are marked unsuccessful; when the clean
        batch ``x`` is given their ``x_adv`` is reset to it (and predictions to the clean ones).
        """
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        within = self.success & (self.norms <= eps + 1e-6)
        lost = self.success & ~within
        out = replace(self, success=within, threat=self.threat.with_budget(eps), minimum_norm=False)
        if x is not None:
            keep = lost.reshape((-1,) + (1,) * (x.dim() - 1))
            out.x_adv = torch.where(keep, x, self.x_adv)
            out.norms = torch.where(lost, torch.zeros_like(self.norms), self.norms)
            out.adv_pred = torch.where(lost, self.clean_pred, self.adv_pred)
            out.adv_conf = torch.where(lost, self.clean_conf, self.adv_conf)
        else:
            # without x we cannot reset x_adv; report predictions as if the point held
            out.adv_pred = torch.where(lost, self.y, self.adv_pred)
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (no tensors)."""
        succ_norms = self.norms[self.success & self.clean_correct]
        return {
            "attack": self.attack,
            "params": self.params,
            "threat": self.threat.to_dict(),
            "targeted": self.targeted,
            "n": len(self),
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "success_rate": self.success_rate,
            "norm_mean": float(succ_norms.mean()) if succ_norms.numel() else None,
            "norm_median": float(succ_norms.median()) if succ_norms.numel() else None,
            "norm_max": float(succ_norms.max()) if succ_norms.numel() else None,
            "gradients_total": int(self.gradients.sum()),
            "queries_total": int(self.queries.sum()),
            "gradients_mean": float(self.gradients.float().mean()),
        }
