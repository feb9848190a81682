"""Modules that sit around a classifier so attacks can work in input space.

Attacks work in *input space* (e.g. pixels in [0, 1]); any normalisation belongs to the model, as
a module such as :class:`Normalize`. :class:`EOT` averages a randomised model over draws;
:class:`BPDA` gives a non-differentiable transform a usable backward pass. :class:`SelectOutput`
makes a model that returns a tuple, list or dict return the logits; :class:`CastInput` feeds a
model inputs in its own dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["BPDA", "EOT", "CastInput", "Normalize", "SelectOutput"]


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as the first layer of a model.

    Putting normalisation inside the model lets every attack work in the natural input space
    (pixels in ``[0, 1]``), where ε and bounds have their usual meaning.

    >>> model = nn.Sequential(Normalize([0.1307], [0.3081]), my_cnn)
    """

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean_t.numel() != std_t.numel():
            raise ValueError(
                f"Normalize: mean has {mean_t.numel()} values but std has {std_t.numel()}"
            )
        if not torch.all(std_t > 0):
            raise ValueError(f"Normalize: std must be > 0, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2) if x.dim() > 2 else (1, -1)
        mean = self.mean.to(x.dtype).reshape(shape)
        std = self.std.to(x.dtype).reshape(shape)
        return (x - mean) / std

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class EOT(nn.Module):
    """Expectation over Transformation (Athalye et al. 2018) for a randomised model.

    ``EOT(model, samples=k)(x)`` runs ``model`` on ``k`` copies of the batch in one call and
    returns the mean logits, so a gradient attack on it follows the averaged gradient of the
    random draws instead of one noisy draw ("expectation over logits"). Every advex attack
    takes this as a constructor option, ``eot_samples=k`` (e.g. ``PGD(eps=0.3,
    eot_samples=16)``), which attacks ``EOT(model, k)``; wrapping the model by hand is
    equivalent.

    Args:
        model: the randomised model (random transforms marked ``stochastic``, noise layers).
        samples: draws averaged per call (16); 1 calls ``model`` once.

    >>> result = PGD(eps=0.3)(EOT(noisy_model, samples=16), x, y)
    """

    def __init__(self, model: nn.Module, samples: int = 16) -> None:
        super().__init__()
        if int(samples) < 1:
            raise ValueError(f"EOT samples must be >= 1, got {samples}")
        self.model = model
        self.samples = int(samples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b = self.samples, x.shape[0]
        if k == 1:
            return self.model(x)
        out = self.model(x.repeat((k,) + (1,) * (x.dim() - 1)))
        return out.reshape(k, b, *out.shape[1:]).mean(0)


class BPDA(nn.Module):
    """Backward Pass Differentiable Approximation (Athalye et al. 2018).

    Forward applies ``transform`` (e.g. bit-depth reduction, JPEG, quantisation — anything with
    zero or useless gradients); backward uses the gradient of ``approximation`` instead
    (identity by default, the usual choice for transforms with ``transform(x) ≈ x``)::

        defended = nn.Sequential(BPDA(quantize), classifier)   # attackable by any gradient attack

    The output value is exactly ``transform(x)``.
    """

    differentiable = True  # as seen by attacks after the wrapping

    def __init__(self, transform, approximation=None) -> None:
        super().__init__()
        self.transform = transform
        self.approximation = approximation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        approx = x if self.approximation is None else self.approximation(x)
        with torch.no_grad():
            exact = self.transform(x)
        return approx + (exact - approx).detach()


class SelectOutput(nn.Module):
    """A model that returns a tuple, list or dict, seen as one that returns the logits.

    ``SelectOutput(model, key)(x)`` is ``model(x)[key]`` for a tuple, list or dict output, and
    ``getattr(model(x), key)`` for an object with the logits as an attribute (e.g. a Hugging
    Face ``ModelOutput``: ``key="logits"``). advex needs ``model(x)`` to be a
    ``(batch, classes)`` tensor, and says so when it is not; wrap the model with this::

        model = SelectOutput(net, 0)          # net(x) returns (logits, features)
        model = SelectOutput(net, "logits")   # net(x) returns {"logits": ..., "aux": ...}

    Gradients flow through the selected output; the rest is discarded.
    """

    def __init__(self, model: nn.Module, key: int | str) -> None:
        super().__init__()
        if isinstance(key, bool) or not isinstance(key, int | str):
            raise TypeError(f"SelectOutput: key must be an int or a str, got {key!r}")
        self.model = model
        self.key = key
        self.training = getattr(model, "training", False)

    def forward(self, x: torch.Tensor) -> Any:
        out = self.model(x)
        if isinstance(out, Mapping) or (
            isinstance(out, Sequence) and not isinstance(out, str) and isinstance(self.key, int)
        ):
            try:
                return out[self.key]
            except (KeyError, IndexError) as err:
                have = list(out) if isinstance(out, Mapping) else f"{len(out)} items"
                raise TypeError(
                    f"SelectOutput: the model's output has no {self.key!r} (it has {have})"
                ) from err
        if isinstance(self.key, str) and hasattr(out, self.key):
            return getattr(out, self.key)
        raise TypeError(
            f"SelectOutput: cannot select {self.key!r} from a {type(out).__name__} output"
        )

    def extra_repr(self) -> str:
        return f"key={self.key!r}"


class CastInput(nn.Module):
    """Feed ``model`` its inputs in ``dtype`` (its weights' floating dtype), and return its
    logits in the inputs' dtype.

    Attacks and evaluations wrap a model in this when the data's floating dtype differs from
    the model's (float64 / float16 / bfloat16 data for a float32 model, float32 data for a
    float64 model), with an :class:`~advex.models.InputDtypeWarning`. Both casts are
    differentiable, so the attack runs in the data's dtype from start to end: ``x_adv`` comes
    back in that dtype, and ``success`` is the prediction of ``CastInput(model, dtype)`` on it.
    Logits of float16 / bfloat16 inputs stay in the model's dtype (attacks run those inputs in
    the model's dtype, see :func:`~advex.models.attack_dtype`).

    >>> logits = CastInput(model, torch.float32)(x.double())   # float64 logits
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        if not dtype.is_floating_point:
            raise TypeError(f"CastInput: dtype must be a floating dtype, got {dtype}")
        self.model = model
        self.dtype = dtype
        self.training = getattr(model, "training", False)

    def forward(self, x: torch.Tensor) -> Any:
        out = self.model(x.to(self.dtype))
        if (
            isinstance(out, torch.Tensor)
            and out.is_floating_point()
            and out.dtype != x.dtype
            and x.dtype not in (torch.float16, torch.bfloat16)
        ):
            out = out.to(x.dtype)
        return out

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"
