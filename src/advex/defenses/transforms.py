"""Input-transform defenses as model wrappers, and how to attack them adaptively.

Marker convention
-----------------
An *input transform* is an ``nn.Module`` mapping a batch of inputs to a batch of the same shape
(ideally ``t(x) ≈ x``) that sits in front of a classifier. It declares two class attributes:

- ``differentiable: bool``: False when its autograd gradient is zero or useless (rounding,
  quantisation, JPEG). Gradient attacks must then go through BPDA (Athalye et al. 2018):
  :func:`advex.models.adapt_for_attack` wraps every such module in :class:`advex.BPDA`, using
  the module's ``approximation`` (a callable, or None for the identity) on the backward pass.
- ``stochastic: bool``: True when two forward passes on the same input differ (random noise,
  random resizing). Attacks must then average over draws: set ``attack.eot_samples`` (EOT).

Modules without the attributes count as differentiable and deterministic. The model seam
(:mod:`advex.models`, re-exported here) reads them: :func:`is_stochastic` and
:func:`non_differentiable` for a whole model; :func:`adapt_for_attack` returns an attackable
view of a model without changing it.

>>> defended = nn.Sequential(JPEGCompression(quality=75), model)
>>> view = adapt_for_attack(defended)          # JPEG wrapped in BPDA, model shared
>>> attack = PGD(eps=0.3); attack.eot_samples = view.eot_samples
>>> result = attack(view, x, y)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models.adapt import AdaptedModel, adapt_for_attack, is_stochastic, non_differentiable

__all__ = [
    "InputTransform",
    "BitDepthReduction",
    "MedianSmoothing",
    "JPEGCompression",
    "RandomResizePad",
    "GaussianNoise",
    "FeatureSqueezing",
    "AdaptedModel",
    "adapt_for_attack",
    "is_stochastic",
    "non_differentiable",
    "quantization_table",
]


def _check_bounds(bounds: Sequence[float], name: str) -> tuple[float, float]:
    lo, hi = (float(b) for b in bounds)
    if not lo < hi:
        raise ValueError(f"{name}: bounds must satisfy lo < hi, got {tuple(bounds)}")
    return lo, hi


def _check_images(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} expects images of shape (N, C, H, W), got {tuple(x.shape)}")


class InputTransform(nn.Module):
    """Base class of input transforms (see the module docstring for the markers).

    ``approximation``: None (identity on the backward pass of BPDA) or a differentiable
    callable with ``approximation(x) ≈ transform(x)``.
    """

    differentiable: bool = True
    stochastic: bool = False
    approximation: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        #: random source of a stochastic transform (None: torch's global RNG)
        self.generator = generator


# --------------------------------------------------------------------------------------------
# Feature squeezers (Xu, Evans & Qi 2018)
# --------------------------------------------------------------------------------------------


class BitDepthReduction(InputTransform):
    """Reduce every value to ``bits`` bits: ``round(x' · (2^bits − 1)) / (2^bits − 1)`` with
    ``x'`` the input rescaled from ``bounds`` to [0, 1] (Xu et al. 2018, Section 3.1).

    ``bits=1`` binarises at the midpoint (the paper's best squeezer on MNIST). Rounding has a
    zero gradient almost everywhere: ``differentiable = False``.
    """

    differentiable = False

    def __init__(self, bits: int = 1, bounds: Sequence[float] = (0.0, 1.0)) -> None:
        super().__init__()
        if int(bits) != bits or not 1 <= int(bits) <= 16:
            raise ValueError(f"BitDepthReduction: bits must be an integer in 1..16, got {bits!r}")
        self.bits = int(bits)
        self.bounds = _check_bounds(bounds, "BitDepthReduction")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bounds
        levels = 2**self.bits - 1
        u = ((x - lo) / (hi - lo)).clamp(0, 1)
        return torch.round(u * levels) / levels * (hi - lo) + lo

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def _symmetric_index(n: int, before: int, after: int, device) -> torch.Tensor:
    """Indices of a length-``n`` axis padded by edge-inclusive reflection
    (``d c b a | a b c d | d c b a``, scipy's ``mode='reflect'``)."""
    i = torch.arange(-before, n + after, device=device)
    period = 2 * n
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - 1 - i, i)


class MedianSmoothing(InputTransform):
    """Median filter over ``kernel × kernel`` windows, channel by channel (Xu et al. 2018,
    Section 3.2), batched with ``unfold``.

    Matches ``scipy.ndimage.median_filter(size=kernel, mode="reflect")``, the paper's
    implementation: the window of pixel ``i`` spans ``i − kernel//2 … i + (kernel−1)//2``
    (for an even kernel the upper of the two middle values is taken), and the border is padded
    by edge-inclusive reflection. The median selects one input value per output value, so its
    gradient is exact almost everywhere: ``differentiable = True``.
    """

    def __init__(self, kernel: int = 2) -> None:
        super().__init__()
        if int(kernel) != kernel or int(kernel) < 1:
            raise ValueError(f"MedianSmoothing: kernel must be an integer >= 1, got {kernel!r}")
        self.kernel = int(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, "MedianSmoothing")
        k = self.kernel
        if k == 1:
            return x
        n, c, h, w = x.shape
        before, after = k // 2, (k - 1) // 2
        rows = _symmetric_index(h, before, after, x.device)
        cols = _symmetric_index(w, before, after, x.device)
        padded = x[:, :, rows][:, :, :, cols]
        patches = F.unfold(padded.reshape(n * c, 1, *padded.shape[-2:]), kernel_size=k)
        # scipy's rank for a window of k*k values is k*k // 2 (0-based): kthvalue is 1-based
        med = patches.kthvalue(k * k // 2 + 1, dim=1).values
        return med.reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


# --------------------------------------------------------------------------------------------
# JPEG compression
# --------------------------------------------------------------------------------------------

# ITU-T T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance), quality 50
_LUMA_Q50 = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_Q50 = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)


def quantization_table(quality: int, chroma: bool = False) -> torch.Tensor:
    """The 8×8 quantisation table at ``quality`` (1–100), scaled as libjpeg (IJG) does:
    ``scale = 5000/q`` below 50, ``200 − 2q`` from 50; ``Q = ⌊(Q₅₀·scale + 50)/100⌋`` in
    [1, 255]."""
    q = int(quality)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    base = torch.tensor(_CHROMA_Q50 if chroma else _LUMA_Q50, dtype=torch.float64)
    return torch.floor((base * scale + 50) / 100).clamp(1, 255)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (coefficients of a block ``X``: ``D X Dᵀ``)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos((2 * i + 1) * k * math.pi / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


class JPEGCompression(InputTransform):
    """JPEG compression and decompression in torch (the "JPEG defense", Dziugaite et al. 2016;
    Das et al. 2017; Guo et al. 2018): the lossy steps of baseline JPEG, batched.

    Per image: values scaled to 0–255 and rounded (an 8-bit image); for 3-channel inputs with
    ``color="ycbcr"`` converted to JFIF YCbCr (no chroma subsampling); each channel level-shifted
    by −128, padded to a multiple of 8 by edge replication, cut into 8×8 blocks, transformed by
    the 2-D DCT-II, quantised with the standard table (ITU-T T.81 Annex K; luminance table for
    Y and for grayscale, chrominance table for Cb/Cr; ``color="rgb"`` uses the luminance table
    on every channel) scaled by ``quality`` as in libjpeg, rounded, dequantised, inverse
    transformed, converted back, rounded to 8 bits and clipped. Entropy coding is lossless and
    skipped. Rounding makes it ``differentiable = False`` (attack it with BPDA).
    """

    differentiable = False

    def __init__(
        self, quality: int = 75, color: str = "ycbcr", bounds: Sequence[float] = (0.0, 1.0)
    ) -> None:
        super().__init__()
        if int(quality) != quality or not 1 <= int(quality) <= 100:
            raise ValueError(
                f"JPEGCompression: quality must be an integer in 1..100, got {quality!r}"
            )
        if color not in ("ycbcr", "rgb"):
            raise ValueError(f"JPEGCompression: color must be 'ycbcr' or 'rgb', got {color!r}")
        self.quality = int(quality)
        self.color = color
        self.bounds = _check_bounds(bounds, "JPEGCompression")
        self.register_buffer("dct", _dct_matrix(8).float(), persistent=False)
        self.register_buffer("q_luma", quantization_table(self.quality).float(), persistent=False)
        self.register_buffer(
            "q_chroma", quantization_table(self.quality, chroma=True).float(), persistent=False
        )

    def _tables(self, c: int) -> torch.Tensor:
        if c == 3 and self.color == "ycbcr":
            return torch.stack([self.q_luma, self.q_chroma, self.q_chroma])
        return self.q_luma.expand(c, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, "JPEGCompression")
        n, c, h, w = x.shape
        lo, hi = self.bounds
        dtype = x.dtype
        v = torch.round(((x.float() - lo) / (hi - lo)).clamp(0, 1) * 255)
        ycc = c == 3 and self.color == "ycbcr"
        if ycc:
            v = _rgb_to_ycbcr(v)
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            v = F.pad(v, (0, pw, 0, ph), mode="replicate")
        hb, wb = v.shape[-2] // 8, v.shape[-1] // 8
        blocks = v.reshape(n, c, hb, 8, wb, 8).permute(0, 1, 2, 4, 3, 5) - 128
        d = self.dct.to(v.device)
        coef = d @ blocks @ d.T
        table = self._tables(c).to(v.device)[None, :, None, None]
        coef = torch.round(coef / table) * table
        rec = (d.T @ coef @ d + 128).permute(0, 1, 2, 4, 3, 5).reshape(n, c, hb * 8, wb * 8)
        rec = rec[..., :h, :w]
        if ycc:
            rec = _ycbcr_to_rgb(rec)
        rec = torch.round(rec).clamp(0, 255)
        return (rec / 255 * (hi - lo) + lo).to(dtype)

    def extra_repr(self) -> str:
        return f"quality={self.quality}, color={self.color!r}"


def _rgb_to_ycbcr(v: torch.Tensor) -> torch.Tensor:
    r, g, b = v[:, 0], v[:, 1], v[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return torch.stack([y, cb, cr], 1)


def _ycbcr_to_rgb(v: torch.Tensor) -> torch.Tensor:
    y, cb, cr = v[:, 0], v[:, 1] - 128, v[:, 2] - 128
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return torch.stack([r, g, b], 1)


# --------------------------------------------------------------------------------------------
# Randomised transforms
# --------------------------------------------------------------------------------------------


class RandomResizePad(InputTransform):
    """Random resizing and padding (Xie et al. 2018, "Mitigating Adversarial Effects Through
    Randomization"), returned at the input size.

    The paper resizes a 299×299 image to ``rnd × rnd`` with ``rnd`` uniform in [299, 331), then
    pads it with zeros to 331×331 at a uniformly random offset. Here, for an ``H × W`` input, the
    canvas is ``round(H · ratio) × round(W · ratio)`` (``ratio = 331/299`` by default), the
    resized height is a uniform integer in [H, canvas height), the width keeps the aspect ratio,
    the offset is uniform, and the padded canvas is resized back to ``H × W`` so the classifier
    sees its usual input size. Each sample draws its own size and offset; the three resamplings
    are composed into one bilinear ``grid_sample`` per image (batched). The transform is
    differentiable for a fixed draw (``stochastic = True``: attack it with EOT).
    """

    stochastic = True

    def __init__(
        self,
        ratio: float = 331 / 299,
        pad_value: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        if not float(ratio) > 1:
            raise ValueError(f"RandomResizePad: ratio must be > 1, got {ratio!r}")
        self.ratio = float(ratio)
        self.pad_value = float(pad_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, "RandomResizePad")
        n, _, h, w = x.shape
        ch = max(round(h * self.ratio), h + 1)
        cw = max(round(w * self.ratio), w + 1)
        g = self.generator
        dev = x.device
        sh = torch.randint(h, ch, (n,), generator=g, device=dev).to(x.dtype)
        sw = torch.round(sh * (w / h)).clamp(max=cw - 1)
        top = torch.floor(torch.rand(n, generator=g, device=dev, dtype=x.dtype) * (ch - sh + 1))
        left = torch.floor(torch.rand(n, generator=g, device=dev, dtype=x.dtype) * (cw - sw + 1))
        # output coordinate u in [-1, 1] -> canvas pixel (u + 1)/2·C -> image coordinate
        theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=dev)
        theta[:, 0, 0] = cw / sw
        theta[:, 0, 2] = (cw - 2 * left) / sw - 1
        theta[:, 1, 1] = ch / sh
        theta[:, 1, 2] = (ch - 2 * top) / sh - 1
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        if self.pad_value == 0.0:
            return F.grid_sample(
                x, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        shifted = F.grid_sample(
            x - self.pad_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return shifted + self.pad_value

    def extra_repr(self) -> str:
        return f"ratio={self.ratio:.4f}"


class GaussianNoise(InputTransform):
    """Add fresh ``N(0, σ²)`` noise to every input value, then clip to ``bounds``
    (random noise injection at test time; ``stochastic = True``: attack it with EOT)."""

    stochastic = True

    def __init__(
        self,
        sigma: float = 0.25,
        clip: bool = True,
        bounds: Sequence[float] = (0.0, 1.0),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        if not float(sigma) >= 0 or math.isinf(float(sigma)):
            raise ValueError(f"GaussianNoise: sigma must be a finite number >= 0, got {sigma!r}")
        self.sigma = float(sigma)
        self.clip = bool(clip)
        self.bounds = _check_bounds(bounds, "GaussianNoise")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        out = x + self.sigma * noise
        return out.clamp(*self.bounds) if self.clip else out

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, clip={self.clip}"


# --------------------------------------------------------------------------------------------
# Feature squeezing: the defended model and its detector
# --------------------------------------------------------------------------------------------


class FeatureSqueezing(nn.Module):
    """Feature squeezing (Xu, Evans & Qi 2018, "Feature Squeezing: Detecting Adversarial
    Examples in Deep Neural Networks"): a classifier behind squeezers, with the paper's detector.

    ``forward(x)`` returns the logits the deployed system reports: on the first squeezer's
    output (``predict_on="squeezed"``, default: squeezing as a defense) or on ``x``
    (``predict_on="original"``, the detection-only deployment of the paper, where the classifier
    is unchanged and :meth:`detect` rejects inputs).

    Detector: ``score(x) = max_i ‖softmax(f(x)) − softmax(f(squeeze_i(x)))‖₁`` over the
    squeezers; ``x`` is flagged adversarial when ``score > threshold``. :meth:`fit_threshold`
    picks the threshold on clean inputs at a target false-positive rate (the paper uses 5 %).

    Args:
        model: the classifier (returns logits).
        squeezers: transforms to compare against (default: the paper's MNIST joint detector,
            1-bit depth reduction and 2×2 median smoothing).
        threshold: detection threshold (None until :meth:`fit_threshold` is called).
        predict_on: ``"squeezed"`` or ``"original"``.
        batch_size: inputs per forward pass of the detector.

    >>> fs = FeatureSqueezing(model); fs.fit_threshold(x_clean, fpr=0.05)
    >>> scores, flags = fs.detect(x_suspect)
    """

    def __init__(
        self,
        model: nn.Module,
        squeezers: Sequence[nn.Module] | None = None,
        threshold: float | None = None,
        predict_on: str = "squeezed",
        batch_size: int = 500,
    ) -> None:
        super().__init__()
        if squeezers is None:
            squeezers = (BitDepthReduction(1), MedianSmoothing(2))
        squeezers = list(squeezers)
        if not squeezers:
            raise ValueError("FeatureSqueezing: squeezers is empty; pass at least one")
        for s in squeezers:
            if not isinstance(s, nn.Module):
                raise TypeError(
                    f"FeatureSqueezing: squeezers must be nn.Modules, got {type(s).__name__}"
                )
        if predict_on not in ("squeezed", "original"):
            raise ValueError(
                f"FeatureSqueezing: predict_on must be 'squeezed' or 'original', got {predict_on!r}"
            )
        if int(batch_size) < 1:
            raise ValueError(f"FeatureSqueezing: batch_size must be >= 1, got {batch_size!r}")
        self.model = model
        self.squeezers = nn.ModuleList(squeezers)
        self.predict_on = predict_on
        self.batch_size = int(batch_size)
        self.threshold = None if threshold is None else float(threshold)
        self.fpr: float | None = None
        self.training = bool(getattr(model, "training", False))  # mirror the model's mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.predict_on == "squeezed":
            x = self.squeezers[0](x)
        return self.model(x)

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The detector's score per input: the largest L1 distance between the softmax on
        ``x`` and on a squeezed ``x`` (0 to 2)."""
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            xb = x[i : i + self.batch_size]
            variants = torch.cat([xb] + [s(xb) for s in self.squeezers])
            p = self.model(variants).float().softmax(1)
            p = p.reshape(1 + len(self.squeezers), xb.shape[0], -1)
            out.append((p[1:] - p[:1]).abs().sum(2).amax(0))
        if not out:
            return torch.zeros(0)
        return torch.cat(out)

    def detect(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, flags)``: the detector's scores and ``scores > threshold``."""
        if self.threshold is None:
            raise RuntimeError(
                "FeatureSqueezing.detect: no threshold; call fit_threshold(x_clean, fpr=...) "
                "or pass threshold= to the constructor"
            )
        s = self.score(x)
        return s, s > self.threshold

    def fit_threshold(self, x_clean: torch.Tensor, fpr: float = 0.05) -> float:
        """Set the threshold so that at most a share ``fpr`` of ``x_clean`` is flagged.

        The threshold is the ``(⌊fpr·n⌋ + 1)``-th largest clean score, so exactly the clean
        scores above it (at most ``fpr·n`` of them) are false positives. Returns it.
        """
        fpr = float(fpr)
        if not 0 <= fpr < 1:
            raise ValueError(f"fit_threshold: fpr must be in [0, 1), got {fpr!r}")
        s = self.score(x_clean)
        if s.numel() == 0:
            raise ValueError("fit_threshold: x_clean is empty")
        k = int(math.floor(fpr * s.numel()))
        self.threshold = float(torch.sort(s, descending=True).values[k])
        self.fpr = fpr
        return self.threshold
