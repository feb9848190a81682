"""Black-box model adapters: a prediction function seen as an ``nn.Module`` that counts queries.

:class:`ScoreBlackBox` exposes only scores (score-based attacks such as
:class:`~advex.attacks.square.Square` work through it); :class:`LabelBlackBox` exposes only the
predicted label (for decision-based attacks). Neither lets a gradient through: a gradient attack
run on them fails at its first backward pass with a :class:`BlackBoxError` that says so.

>>> box = ScoreBlackBox(lambda x: api.predict_proba(x), num_classes=10)
>>> result = Square(eps=0.3, n_queries=1000)(box, x, y)
>>> box.queries   # total inputs sent to the black box
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["BlackBoxError", "ScoreBlackBox", "LabelBlackBox", "output_tensor"]


class BlackBoxError(RuntimeError):
    """A gradient was requested through a black-box model."""


class _NoGradient(torch.autograd.Function):
    """Identity on the scores whose backward raises :class:`BlackBoxError`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scores: torch.Tensor, message: str) -> torch.Tensor:
        ctx.message = message
        return scores.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        raise BlackBoxError(ctx.message)


def output_tensor(out: Any, like: torch.Tensor, what: str) -> torch.Tensor:
    """A black-box function's output as a detached tensor on ``like``'s device."""
    if isinstance(out, torch.Tensor):
        t = out.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(out))
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"the black-box function must return a numpy array or a torch tensor of {what}, "
                f"got {type(out).__name__}"
            ) from err
    return t.to(like.device)


class _BlackBox(nn.Module):
    kind = "black box"
    #: what the model lets an attack see: "gradients", "scores" or "labels"
    exposes = "scores"

    def __init__(self, fn: Callable, num_classes: int | None, as_numpy: bool) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 2):
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}")
        self.fn = fn
        self.num_classes = None if num_classes is None else int(num_classes)
        self.as_numpy = bool(as_numpy)
        #: total number of inputs evaluated (one per sample of every call)
        self.queries = 0
        #: number of calls to ``fn`` (batches)
        self.calls = 0
        # a black box has no training mode of its own (this does not touch a wrapped module)
        self.training = False

    def reset_queries(self) -> None:
        """Set the query and call counters back to zero."""
        self.queries = 0
        self.calls = 0

    def _call_fn(self, x: torch.Tensor) -> Any:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a torch.Tensor batch, got {type(x)}")
        inp = x.detach()
        if self.as_numpy:
            inp = inp.cpu().numpy()
        with torch.no_grad():
            out = self.fn(inp)
        self.queries += int(x.shape[0])
        self.calls += 1
        return out

    def _check_scores(self, s: torch.Tensor, x: torch.Tensor) -> None:
        if s.dim() != 2 or s.shape[0] != x.shape[0]:
            raise ValueError(
                f"the black-box function must return scores of shape (batch, classes) = "
                f"({x.shape[0]}, K), got {tuple(s.shape)}"
            )
        if self.num_classes is not None and s.shape[1] != self.num_classes:
            raise ValueError(
                f"the black-box function returned {s.shape[1]} scores per sample but "
                f"num_classes={self.num_classes}"
            )

    def _block(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            if self.exposes == "labels":
                use = "a decision-based attack (advex.attacks.HopSkipJump, BoundaryAttack or RayS)"
            else:
                use = "a black-box attack such as Square (advex.attacks.Square)"
            msg = (
                f"this model is a {self.kind}: it has no gradient. Use {use} instead of a "
                "gradient-based attack"
            )
            return _NoGradient.apply(x, out, msg)
        return out

    def _scores(self, raw: Any, x: torch.Tensor) -> torch.Tensor:
        """The function's output ``raw`` as logits (probabilities become log-probabilities)."""
        out = output_tensor(raw, x, "scores")
        if not out.is_floating_point():
            out = out.float()
        if x.is_floating_point():
            out = out.to(x.dtype)
        self._check_scores(out, x)
        mode = getattr(self, "scores", "auto")
        if mode == "probs" or (mode == "auto" and _looks_like_probs(out)):
            tiny = torch.finfo(out.dtype).tiny
            out = out.clamp_min(tiny).log()
        return out

    def _onehot(self, raw: Any, x: torch.Tensor) -> torch.Tensor:
        """The function's output ``raw`` (labels or scores) as one-hot rows of the label."""
        out = output_tensor(raw, x, "labels or scores")
        if out.dim() == 1:
            if out.is_floating_point() or out.dtype == torch.bool:
                raise TypeError(
                    f"the black-box function returned a 1-D tensor of dtype {out.dtype}; labels "
                    "must be integers (or return scores of shape (batch, classes))"
                )
            if out.shape[0] != x.shape[0]:
                raise ValueError(
                    f"the black-box function returned {out.shape[0]} labels for a batch of "
                    f"{x.shape[0]}"
                )
            if self.num_classes is None:
                raise ValueError(
                    "the black-box function returns labels: pass num_classes= to LabelBlackBox"
                )
            labels = out.long()
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(
                    f"the black-box function returned a label outside 0..{self.num_classes - 1}"
                )
            k = self.num_classes
        else:
            self._check_scores(out, x)
            labels = out.argmax(1)
            k = out.shape[1]
        dtype = x.dtype if x.is_floating_point() else torch.float32
        onehot = torch.zeros(x.shape[0], k, dtype=dtype, device=x.device)
        onehot.scatter_(1, labels[:, None], 1.0)
        return onehot

    def extra_repr(self) -> str:
        fn = getattr(self.fn, "__name__", type(self.fn).__name__)
        return f"fn={fn}, num_classes={self.num_classes}, queries={self.queries}"


class ScoreBlackBox(_BlackBox):
    """Score-only access to a classifier, as an ``nn.Module`` that counts queries.

    Wraps ``fn`` (a batch of inputs → per-class scores, as a torch tensor or numpy array) so that
    any advex attack can be called on it; only score-based attacks such as
    :class:`~advex.attacks.square.Square` succeed: a gradient-based attack raises
    :class:`BlackBoxError` ("this model is a score-only black box ...") at its first backward.

    Args:
        fn: the prediction function; called under ``torch.no_grad()`` on a detached batch.
        num_classes: expected number of scores per sample (checked on every call), optional.
        scores: ``"logits"``, ``"probs"`` or ``"auto"`` (default). Probabilities are returned as
            log-probabilities, which are valid logits (same softmax, same argmax), so margin and
            cross-entropy losses mean what they should; ``"auto"`` treats an output as
            probabilities when every row lies in [0, 1] and sums to 1.
        as_numpy: pass the batch to ``fn`` as a numpy array (for non-torch models).

    Attributes:
        queries: total number of inputs evaluated (``reset_queries()`` sets it back to 0).
        calls: number of batches sent to ``fn``.

    >>> box = ScoreBlackBox(sklearn_clf.predict_proba, as_numpy=True)   # flat inputs
    >>> result = Square(eps=0.3, n_queries=1000)(box, x, y); box.queries
    """

    kind = "score-only black box"
    exposes = "scores"

    def __init__(
        self,
        fn: Callable,
        num_classes: int | None = None,
        *,
        scores: str = "auto",
        as_numpy: bool = False,
    ) -> None:
        super().__init__(fn, num_classes, as_numpy)
        if scores not in ("auto", "logits", "probs"):
            raise ValueError(f"scores must be 'auto', 'logits' or 'probs', got {scores!r}")
        self.scores = scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._block(x, self._scores(self._call_fn(x), x))


def _looks_like_probs(s: torch.Tensor) -> bool:
    if s.shape[1] < 2 or s.shape[0] == 0:
        return False
    if not bool(((s >= 0) & (s <= 1)).all()):
        return False
    return bool(torch.allclose(s.sum(1), torch.ones_like(s[:, 0]), atol=1e-4))


class LabelBlackBox(_BlackBox):
    """Hard-label access to a classifier (for decision-based attacks), counting queries.

    ``fn`` returns either predicted labels ``(batch,)`` (then ``num_classes`` is required) or
    scores ``(batch, K)`` of which only the argmax is kept. The module outputs the one-hot
    encoding of the predicted label (1 for the label, 0 elsewhere), so ``argmax`` gives the label
    and nothing else leaks. Gradients are blocked as for :class:`ScoreBlackBox`.

    Args:
        fn: prediction function (labels or scores). num_classes: number of classes (required
            when ``fn`` returns labels). as_numpy: pass the batch to ``fn`` as a numpy array.

    Attributes: ``queries`` and ``calls`` as for :class:`ScoreBlackBox`.

    >>> box = LabelBlackBox(lambda x: api.predict(x), num_classes=10)
    >>> box(x).argmax(1)   # the labels; box.queries == len(x)
    """

    kind = "hard-label black box"
    exposes = "labels"

    def __init__(
        self, fn: Callable, num_classes: int | None = None, *, as_numpy: bool = False
    ) -> None:
        super().__init__(fn, num_classes, as_numpy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._block(x, self._onehot(self._call_fn(x), x))
