"""Transfer attacks: attack local surrogates, measure success on a model you can only query.

:func:`distill_surrogate` trains a surrogate from a black box's answers with an exact query
budget (Papernot et al. 2017, optionally with their Jacobian-based data augmentation);
:class:`TransferAttack` crafts adversarial examples on one surrogate or an ensemble of them
(MI-FGSM, Dong et al. 2018; input diversity, Xie et al. 2019; logit ensemble, Liu et al. 2017)
and re-predicts them on the target, which is queried only for the clean and the final
prediction.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import derive_seed64
from ..models import LabelBlackBox
from ..models.guards import attack_mode
from ..threats import ThreatModel
from ..training import Trainer, as_xy
from .base import Attack, ModelCaller, make_threat
from .gradient import MIFGSM

__all__ = [
    "Distillation",
    "InputDiversity",
    "SurrogateEnsemble",
    "TransferAttack",
    "distill_surrogate",
    "surrogate_cnn",
]


# ------------------------------------------------------------------------------------------------
# Surrogates distilled from queries
# ------------------------------------------------------------------------------------------------


def surrogate_cnn(input_shape: Sequence[int], num_classes: int, width: int = 32) -> nn.Sequential:
    """A small CNN for any ``(C, H, W)`` input: Conv3×3(C→w)-ReLU-MaxPool →
    Conv3×3(w→2w)-ReLU-MaxPool → AdaptiveAvgPool(4) → FC(16·2w→128)-ReLU → FC(classes)."""
    c = int(input_shape[0])
    w = int(width)
    return nn.Sequential(
        nn.Conv2d(c, w, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(16 * 2 * w, 128),
        nn.ReLU(),
        nn.Linear(128, int(num_classes)),
    )


@dataclass
class Distillation:
    """What :func:`distill_surrogate` returns.

    Attributes:
        model: the trained surrogate (eval mode, frozen parameters).
        queries: inputs sent to the black box (exactly the budget).
        rounds: per round of Jacobian augmentation, the points added (and queried).
        labels: ``"soft"`` (the black box's probabilities) or ``"hard"`` (its labels).
        log: the Trainer's per-epoch logs, one list per round.
        x, y: the labelled set the final surrogate was trained on (``y``: labels or
            probabilities).
    """

    model: nn.Module
    queries: int
    rounds: list[int]
    labels: str
    log: list[list[dict]] = field(default_factory=list)
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None

    def agreement(self, black_box: nn.Module, x: torch.Tensor, batch_size: int = 500) -> float:
        """Share of ``x`` on which the surrogate and ``black_box`` predict the same label
        (these queries are counted by the black box, not by this distillation)."""
        same = 0
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size]
                same += int((self.model(xb).argmax(1) == black_box(xb).argmax(1)).sum())
        return same / max(1, len(x))


def _soft_loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, generator) -> tuple:
    logits = model(xb)
    if yb.dim() == 2:  # probabilities: cross-entropy to the soft labels
        return -(yb * F.log_softmax(logits, 1)).sum(1).mean(), None
    return F.cross_entropy(logits, yb), logits


def _query(black_box: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(black_box(x[i : i + batch_size]).detach())
    return torch.cat(outs)


def distill_surrogate(
    black_box: nn.Module,
    data: Any,
    queries: int,
    *,
    surrogate: nn.Module | None = None,
    augment: str | None = None,
    rounds: int = 4,
    lam: float = 0.1,
    labels: str = "auto",
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    bounds: tuple[float, float] = (0.0, 1.0),
    query_batch_size: int = 500,
    seed: int = 0,
    progress: bool = False,
) -> Distillation:
    """Train a surrogate of ``black_box`` from its answers, spending exactly ``queries`` queries.

    Papernot, McDaniel, Goodfellow, Jha, Celik and Swami, *Practical Black-Box Attacks against
    Machine Learning* (AsiaCCS 2017). Without augmentation the first ``queries`` inputs of
    ``data`` (its labels, if any, are ignored: the attacker labels them with the black box) are
    sent once each and a surrogate is trained on the answers. With ``augment="jacobian"``, a
    seed set of ``⌈queries / 2**rounds⌉`` inputs is labelled, and each round trains the surrogate
    and adds ``x + λ·sign(∇ₓ F_ŷ(x))`` for every point (``F`` the surrogate, ``ŷ`` the black
    box's label of ``x``), doubling the set; the last round is cut so that the total is exactly
    ``queries``.

    Args:
        black_box: the model to copy: a :class:`~advex.models.ScoreBlackBox`,
            :class:`~advex.models.LabelBlackBox` (hard labels only) or any ``nn.Module``
            returning scores (queried without gradients). Its own ``queries`` counter (if any)
            moves by exactly ``queries``.
        data: unlabelled inputs ``x`` ``(N, C, H, W)``, or ``(x, y)`` / an ``ArrayDataset``
            (``y`` unused), within ``bounds``.
        queries: the budget: inputs sent to the black box (≥ 2; without augmentation at most
            ``len(x)``).
        surrogate: an untrained ``nn.Module`` to train (copied, the caller's is untouched);
            default :func:`surrogate_cnn` for the data's shape.
        augment: None or ``"jacobian"``. rounds: augmentation rounds (Papernot: 6).
        lam: λ, the step of the augmentation (Papernot: 0.1), clipped to ``bounds``.
        labels: ``"soft"`` (train on the black box's probabilities; needs scores), ``"hard"``
            (its labels) or ``"auto"`` (soft unless the black box is a ``LabelBlackBox``).
        epochs, batch_size, lr: training of every round by :class:`~advex.training.Trainer`
            (Adam). query_batch_size: inputs per call to the black box. seed: initialisation and
            training order. progress: progress bars.

    Returns:
        a :class:`Distillation` (``.model`` the surrogate, ``.queries`` == ``queries``).

    >>> box = LabelBlackBox(lambda x: api.predict(x), num_classes=10)
    >>> d = distill_surrogate(box, x_unlabelled, queries=2000, augment="jacobian")
    >>> TransferAttack(d.model, eps=0.3, distill_queries=d.queries)(box, x, y)
    """
    if not isinstance(black_box, nn.Module):
        raise TypeError(f"black_box must be an nn.Module (see advex.models), got {type(black_box)}")
    if isinstance(data, torch.Tensor):
        x_all = data
    else:
        x_all, _ = as_xy(data, "data")
    if not isinstance(x_all, torch.Tensor) or x_all.dim() != 4 or not x_all.is_floating_point():
        raise ValueError("distill_surrogate needs float images x of shape (N, C, H, W)")
    if len(x_all) == 0:
        raise ValueError("distill_surrogate: data is empty")
    if not bool(torch.isfinite(x_all).all()):
        raise ValueError("distill_surrogate: data holds NaN or infinite values")
    lo, hi = float(bounds[0]), float(bounds[1])
    if float(x_all.min()) < lo or float(x_all.max()) > hi:
        raise ValueError(f"distill_surrogate: data lies outside the bounds [{lo}, {hi}]")
    if isinstance(queries, bool) or int(queries) != queries or int(queries) < 2:
        raise ValueError(f"queries must be an integer >= 2, got {queries!r}")
    queries = int(queries)
    if augment not in (None, "jacobian"):
        raise ValueError(f"augment must be None or 'jacobian', got {augment!r}")
    if isinstance(rounds, bool) or int(rounds) != rounds or int(rounds) < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    if not (math.isfinite(float(lam)) and float(lam) > 0):
        raise ValueError(f"lam must be a finite number > 0, got {lam}")
    if labels not in ("auto", "soft", "hard"):
        raise ValueError(f"labels must be 'auto', 'soft' or 'hard', got {labels!r}")
    if labels == "soft" and isinstance(black_box, LabelBlackBox):
        raise ValueError("labels='soft' needs scores, but the black box returns labels only")
    soft = labels == "soft" or (labels == "auto" and not isinstance(black_box, LabelBlackBox))
    rounds = int(rounds) if augment == "jacobian" else 0
    n0 = queries if not rounds else -(-queries // (2**rounds))  # ceil: the last round fills up
    if rounds and queries < 2**rounds:
        raise ValueError(
            f"queries={queries} is too small for {rounds} rounds of augmentation "
            f"(each round doubles the set): use queries >= {2**rounds} or fewer rounds"
        )
    if n0 > len(x_all):
        raise ValueError(
            f"the budget needs {n0} seed inputs but data holds only {len(x_all)}: give more "
            "data, a smaller queries=, or augment='jacobian'"
        )
    x_all = x_all.detach()
    gen = torch.Generator().manual_seed(derive_seed64(int(seed), 0xD15))
    x = x_all[torch.randperm(len(x_all), generator=gen)[:n0]].clone()

    def ask(xq: torch.Tensor) -> torch.Tensor:
        before = getattr(black_box, "queries", None)
        with attack_mode(black_box, warn=False):
            out = _query(black_box, xq, int(query_batch_size))
        after = getattr(black_box, "queries", None)
        if isinstance(before, int) and isinstance(after, int) and after - before != len(xq):
            raise RuntimeError(  # pragma: no cover - a black box that miscounts
                f"the black box counted {after - before} queries for {len(xq)} inputs"
            )
        if out.dim() != 2 or out.shape[0] != len(xq):
            raise ValueError(
                f"the black box must return scores (batch, classes), got {tuple(out.shape)}"
            )
        return out.float().softmax(1) if soft else out.argmax(1)

    spent = 0
    answers = ask(x)
    spent += len(x)
    k = int(answers.shape[1]) if soft else _num_classes(black_box, answers)
    if surrogate is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed64(int(seed), 0x5C))
            net = surrogate_cnn(x.shape[1:], k)
    else:
        if not isinstance(surrogate, nn.Module):
            raise TypeError(f"surrogate must be an nn.Module, got {type(surrogate)}")
        net = copy.deepcopy(surrogate)
    net = net.to(x.dtype)
    logs: list[list[dict]] = []
    added: list[int] = [len(x)]
    for r in range(rounds + 1):
        trainer = Trainer(
            net,
            _soft_loss,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            schedule="constant",
            seeds=derive_seed64(int(seed), r),
            progress=progress,
            desc=f"distill round {r}",
            name="distillation",
        )
        logs.append(trainer.fit((x, answers)).log)
        if r == rounds:
            break
        # Jacobian-based augmentation: step along the sign of the surrogate's gradient of the
        # black box's label; the last round only as far as the budget goes
        room = queries - spent
        take = len(x) if r < rounds - 1 else room
        take = min(take, room, len(x))
        if take <= 0:
            break
        src = x[:take]
        lab = answers[:take].argmax(1) if soft else answers[:take]
        net.eval()
        src_leaf = src.clone().requires_grad_(True)
        with torch.enable_grad():
            out = net(src_leaf).gather(1, lab[:, None]).sum()
            (grad,) = torch.autograd.grad(out, src_leaf)
        x_new = (src + float(lam) * grad.sign()).clamp(lo, hi).detach()
        a_new = ask(x_new)
        spent += len(x_new)
        added.append(len(x_new))
        x = torch.cat([x, x_new])
        answers = torch.cat([answers, a_new])
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return Distillation(
        model=net,
        queries=spent,
        rounds=added,
        labels="soft" if soft else "hard",
        log=logs,
        x=x,
        y=answers,
    )


def _num_classes(black_box: nn.Module, labels: torch.Tensor) -> int:
    k = getattr(black_box, "num_classes", None)
    if isinstance(k, int) and k >= 2:
        return k
    return max(2, int(labels.max()) + 1)


# ------------------------------------------------------------------------------------------------
# Input diversity and ensembles
# ------------------------------------------------------------------------------------------------


class InputDiversity(nn.Module):
    """Input diversity (Xie et al. 2019, "Improving Transferability of Adversarial Examples with
    Input Diversity"): with probability ``prob``, resize each image to a random size in
    ``[⌊resize_rate·H⌋, H)`` and pad it back to ``H × W`` at a random offset, then call
    ``model``. A fresh draw at every forward (``stochastic``), from ``generator``.

    Shapes: ``(B, C, H, W) → model's output``.
    """

    stochastic = True

    def __init__(
        self,
        model: nn.Module,
        prob: float = 0.5,
        resize_rate: float = 0.9,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"diversity probability must lie in [0, 1], got {prob}")
        if not 0.0 < float(resize_rate) < 1.0:
            raise ValueError(f"resize_rate must lie in (0, 1), got {resize_rate}")
        self.model = model
        self.prob = float(prob)
        self.resize_rate = float(resize_rate)
        self.generator = generator if generator is not None else torch.Generator()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prob == 0.0 or x.shape[0] == 0:
            return self.model(x)
        b, _, h, w = x.shape
        g = self.generator
        lo = max(1, int(math.floor(self.resize_rate * h)))
        if lo >= h:
            return self.model(x)
        apply = torch.rand(b, generator=g) < self.prob
        size = torch.randint(lo, h, (b,), generator=g)
        top = (torch.rand(b, generator=g) * (h - size + 1)).long()
        left = (torch.rand(b, generator=g) * (w - size + 1)).long()
        out = x
        rows = []
        for s in torch.unique(size[apply]).tolist():
            idx = (apply & (size == s)).nonzero().squeeze(1)
            sw = max(1, round(s * w / h))
            small = F.interpolate(x[idx], size=(s, sw), mode="nearest")
            padded = x.new_zeros((len(idx),) + tuple(x.shape[1:]))
            for j, i in enumerate(idx.tolist()):
                t, l0 = int(top[i]), min(int(left[i]), w - sw)
                padded[j, :, t : t + s, l0 : l0 + sw] = small[j]
            rows.append((idx, padded))
        if rows:
            out = x.clone()
            for idx, padded in rows:
                out[idx] = padded
        return self.model(out)


class SurrogateEnsemble(nn.Module):
    """The mean of several models' logits (Liu et al. 2017; Dong et al. 2018's logit
    ensemble). Shapes: ``(B, ...) → (B, classes)``; all members must agree on the classes."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in self.members]
        k = {int(o.shape[1]) for o in outs}
        if len(k) != 1:
            raise ValueError(f"the surrogates disagree on the number of classes: {sorted(k)}")
        return torch.stack(outs).mean(0)


# ------------------------------------------------------------------------------------------------
# The attack
# ------------------------------------------------------------------------------------------------


class TransferAttack(Attack):
    """Transfer attack: craft on local surrogates, re-predict on the target.

    MI-FGSM (Dong et al. 2018, "Boosting Adversarial Attacks with Momentum") on the mean logits
    of one or several surrogates (Liu et al. 2017, ensembles), optionally with input diversity
    (Xie et al. 2019, DI²-FGSM / M-DI²-FGSM with ``diversity=0.5``). The target model is never
    differentiated: it is queried once for the clean prediction and once on the final
    ``x_adv`` (``result.queries`` = 2 per point, ``result.gradients`` = 0), so it may be a
    :class:`~advex.models.LabelBlackBox` or :class:`~advex.models.ScoreBlackBox`. Points the
    target already misclassifies are left unchanged. The surrogates run every step (no early
    exit on the surrogate by default: stopping as soon as the surrogate is fooled transfers
    worse).

    Norm: L∞, L2 (MI-FGSM's).

    Args:
        surrogates: one ``nn.Module`` or a sequence of them (logits, same classes as the
            target), or zoo names (``"mnist-smallcnn"``, or comma-separated in one string, the
            CLI's ``--param surrogates=a,b``), loaded on first use.
        eps: budget ε. norm: ``"linf"`` (default) | ``"l2"``.
        steps: MI-FGSM iterations (10). step_size: (ε / steps). decay: momentum μ (1.0).
        diversity: probability of the input-diversity transform per step (0 = plain MI-FGSM;
            0.5 in the paper). resize_rate: smallest resize of DI as a share of the size (0.9).
        loss: ``"ce"`` (default) | ``"margin"`` | ``"dlr"`` on the ensemble's logits.
        surrogate_early_stop: stop a point once the surrogates are fooled (False).
        distill_queries: queries already spent on the black box to distil the surrogates
            (reported in ``params()`` / results; see :func:`distill_surrogate`).
        bounds, threat, seed: as for every attack (``seed`` drives the diversity draws).

    >>> d = distill_surrogate(box, x_pool, queries=4000, augment="jacobian")
    >>> atk = TransferAttack([d.model, other], eps=0.3, diversity=0.5,
    ...                      distill_queries=d.queries)
    >>> atk(box, x, y).success.float().mean()
    """

    name = "transfer"
    aliases = ("transfer-mifgsm",)
    norms = ("linf", "l2")
    black_box = True

    def __init__(
        self,
        surrogates: Any = None,
        eps: float | None = None,
        norm: str = "linf",
        *,
        steps: int = 10,
        step_size: float | None = None,
        decay: float = 1.0,
        diversity: float = 0.0,
        resize_rate: float = 0.9,
        loss: str = "ce",
        surrogate_early_stop: bool = False,
        distill_queries: int = 0,
        bounds: tuple[float, float] = (0.0, 1.0),
        threat: ThreatModel | None = None,
        seed: int | None = 0,
        eot_samples: int = 1,
    ) -> None:
        t = make_threat(eps, norm, bounds, None, threat, attack="TransferAttack")
        super().__init__(t, seed=seed, eot_samples=eot_samples)
        if surrogates is None:
            raise ValueError(
                "TransferAttack needs surrogates: a model, a zoo name, or a list of them "
                "(e.g. --param surrogates=mnist-smallcnn on the command line)"
            )
        if isinstance(surrogates, str):  # zoo names, comma-separated (the CLI's form)
            surrogates = [n.strip() for n in surrogates.split(",") if n.strip()]
        items = [surrogates] if isinstance(surrogates, nn.Module) else list(surrogates)
        if not items:
            raise ValueError("TransferAttack needs at least one surrogate")
        for s in items:
            if not isinstance(s, nn.Module | str):
                raise TypeError(f"a surrogate must be an nn.Module or a zoo name, got {type(s)}")
        if not 0.0 <= float(diversity) <= 1.0:
            raise ValueError(f"diversity must lie in [0, 1], got {diversity}")
        if not 0.0 < float(resize_rate) < 1.0:
            raise ValueError(f"resize_rate must lie in (0, 1), got {resize_rate}")
        if isinstance(distill_queries, bool) or int(distill_queries) < 0:
            raise ValueError(f"distill_queries must be an integer >= 0, got {distill_queries!r}")
        self._surrogates = items
        self.surrogate_names = ",".join(
            s if isinstance(s, str) else type(s).__name__ for s in items
        )
        self.distill_queries = int(distill_queries)
        self.diversity = float(diversity)
        self.resize_rate = float(resize_rate)
        self.surrogate_early_stop = bool(surrogate_early_stop)
        # validated once here (steps, step size, decay, loss) by the inner attack's constructor
        self._inner = MIFGSM(
            threat=t,
            steps=steps,
            step_size=step_size,
            decay=decay,
            loss=loss,
            early_stop=surrogate_early_stop,
            seed=seed,
        )
        self.steps, self.decay, self.loss = self._inner.steps, self._inner.decay, self._inner.loss
        self.step_size = self._inner.step_size

    def _prologue(self, model, x, y, target):
        """The base prologue, after checking that the target is not one of the surrogates."""
        if any(s is model for s in self._surrogates):
            raise ValueError(
                "the target is one of the surrogates: that is a white-box attack, not a "
                "transfer (use MIFGSM on it)"
            )
        return super()._prologue(model, x, y, target)

    def _rebudget(self, old: float, new: float) -> None:
        self._inner = self._inner.with_budget(new)
        self.step_size = self._inner.step_size

    def surrogate_models(self) -> list[nn.Module]:
        """The surrogates as modules (zoo names loaded, once)."""
        if any(isinstance(s, str) for s in self._surrogates):
            from .. import zoo

            self._surrogates = [
                zoo.load(s, progress=False) if isinstance(s, str) else s for s in self._surrogates
            ]
        return list(self._surrogates)

    def _attack(self, caller: ModelCaller, x, goal, done, clean_logits):
        rows = (~done).nonzero().squeeze(1)
        x_adv = x.clone()
        if rows.numel() == 0:
            return x_adv
        models = self.surrogate_models()
        ens: nn.Module = models[0] if len(models) == 1 else SurrogateEnsemble(models)
        if self.diversity > 0:
            seed = 0 if self.seed is None else int(self.seed)
            g = torch.Generator().manual_seed(derive_seed64(seed, 0xD1))
            ens = InputDiversity(ens, self.diversity, self.resize_rate, g)
        with _frozen(models):
            with torch.no_grad():
                k = int(ens(x[rows[:1]]).shape[1])
            if k != clean_logits.shape[1]:
                raise ValueError(
                    f"the surrogates have {k} classes but the target has {clean_logits.shape[1]}"
                )
            # the inner MI-FGSM runs on the surrogates from the target's view of the points:
            # every point the target still classifies right is attacked (also those the
            # surrogates already get wrong), the target's goal, no query of the target
            sub = ModelCaller(ens, int(rows.numel()), x.device)
            xs = x[rows]
            start = sub.logits(xs)
            none_done = torch.zeros(len(rows), dtype=torch.bool, device=x.device)
            xa = self._inner._attack(sub, xs, goal[rows], none_done, start)
        x_adv[rows] = self.threat.project(xa.detach(), xs).to(x.dtype)
        return x_adv


class _frozen:
    """Surrogates in eval mode with frozen parameters for the attack, restored afterwards."""

    def __init__(self, models: list[nn.Module]) -> None:
        self.ctx = [attack_mode(m, warn=False) for m in models]

    def __enter__(self):
        for c in self.ctx:
            c.__enter__()
        return self

    def __exit__(self, *exc):
        for c in reversed(self.ctx):
            c.__exit__(*exc)
        return False
