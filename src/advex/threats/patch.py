"""Physical threats: a sticker or patch on an object seen by a camera.

Three parts, as in the physical-attack papers:

- **where** the attacker may paint: a mask — the RP2 ``"two-bars"`` and ``"graffiti"``
  layouts (Eykholt et al. 2018), a ``"square"`` of a given area fraction, or a user PNG
  (:func:`make_mask`); fixed on the object, or a universal patch pasted at a random location,
  scale and rotation (Brown et al. 2017; :class:`PatchThreat` with ``placement="random"``);
- **how it is seen**: :class:`ViewDistribution`, a seedable, differentiable distribution of
  viewing conditions for Expectation over Transformation (Athalye et al. 2018) — rotation,
  scale (distance), perspective (viewing angle), translation, brightness, contrast, colour
  cast, blur and sensor noise — written with ``affine_grid`` / ``grid_sample``-style sampling
  grids and per-sample parameters;
- **what can be printed**: a printer palette, its non-printability score
  (:func:`non_printability`, Sharif et al. 2016, the NPS term of RP2) and a projection of
  colours into the printable gamut (the palette's per-channel range).

Shapes: images ``(B, C, H, W)`` in ``[0, 1]``; a mask ``(1, H, W)`` with values in {0, 1}; a
sticker ``(C, H, W)`` (fixed placement, image-sized) or ``(C, k, k)`` (a random-placement patch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from .base import Threat, check_float_batch

__all__ = [
    "MASK_SHAPES",
    "PRINTER_PALETTE",
    "PatchThreat",
    "ViewDistribution",
    "ViewParams",
    "make_mask",
    "non_printability",
    "project_gamut",
    "read_mask_png",
]

MASK_SHAPES = ("two-bars", "graffiti", "square")

# A stand-in printer palette: the 27 colours {0.1, 0.5, 0.9}³ plus three greys, i.e. what an
# ordinary colour printer reproduces on paper as seen by a camera (no pure black or white). RP2
# measured 30 printed colours; pass your own measured palette for a real printer.
_LEVELS = (0.1, 0.5, 0.9)
PRINTER_PALETTE = torch.tensor(
    [[r, g, b] for r in _LEVELS for g in _LEVELS for b in _LEVELS]
    + [[0.3, 0.3, 0.3], [0.7, 0.7, 0.7], [0.2, 0.2, 0.2]]
)


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------

# 3×5 pixel font for the graffiti layout ("LOVE" above the sign's text, "HATE" below)
_FONT = {
    "L": ["100", "100", "100", "100", "111"],
    "O": ["111", "101", "101", "101", "111"],
    "V": ["101", "101", "101", "101", "010"],
    "E": ["111", "100", "110", "100", "111"],
    "H": ["101", "101", "111", "101", "101"],
    "A": ["010", "101", "111", "101", "101"],
    "T": ["111", "010", "010", "010", "010"],
}


def _word(mask: torch.Tensor, word: str, top: float, h: int, w: int) -> None:
    # letters 3×5 font cells scaled to the image: each letter ≈ 12% of the width
    lw = max(3, round(w * 0.09))
    lh = max(5, round(h * 0.15))
    gap = max(1, round(w * 0.03))
    total = len(word) * lw + (len(word) - 1) * gap
    x0 = (w - total) // 2
    y0 = round(top * h)
    for i, ch in enumerate(word):
        glyph = torch.tensor([[c == "1" for c in row] for row in _FONT[ch]], dtype=torch.float32)
        cell = F.interpolate(glyph[None, None], size=(lh, lw), mode="nearest")[0, 0]
        xs = x0 + i * (lw + gap)
        mask[0, y0 : y0 + lh, xs : xs + lw] = torch.maximum(
            mask[0, y0 : y0 + lh, xs : xs + lw], cell[: h - y0, : w - xs]
        )


def make_mask(
    shape: str | Path | torch.Tensor,
    size: int | tuple[int, int] = 32,
    *,
    area: float = 0.05,
    center: tuple[float, float] = (0.5, 0.5),
) -> torch.Tensor:
    """A sticker mask ``(1, H, W)`` (float, values 0 or 1).

    Args:
        shape: ``"two-bars"`` (RP2's two horizontal bars above and below the sign's text, about
            9% of a 32×32 image), ``"graffiti"`` (RP2's "LOVE"/"HATE" letters), ``"square"``
            (a square of ``area`` × the image area, centred at ``center``), the path of a PNG
            (white / opaque = sticker; resized to ``size`` by nearest neighbour), or a tensor
            ``(H, W)`` / ``(1, H, W)`` of 0/1 values.
        size: the image side ``H = W`` or ``(H, W)``.
        area: the square's share of the image area, in (0, 1].
        center: the square's centre ``(x, y)`` as fractions of the width and height.

    Raises ``ValueError`` for an unknown shape, an empty mask or a wrong size.

    >>> make_mask("two-bars", 32).mean()      # area fraction
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 4 or w < 4:
        raise ValueError(f"mask size must be at least 4×4, got {h}×{w}")
    if isinstance(shape, torch.Tensor):
        m = shape.detach().float()
        if m.dim() == 2:
            m = m[None]
        if m.dim() != 3 or m.shape[0] != 1:
            raise ValueError(f"a mask tensor must be (H, W) or (1, H, W), got {tuple(shape.shape)}")
        if tuple(m.shape[1:]) != (h, w):
            raise ValueError(
                f"mask is {m.shape[1]}×{m.shape[2]} but the images are {h}×{w}: "
                "a mask must have the image size"
            )
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("a mask must hold 0/1 values only")
        m = m.clone()
    elif isinstance(shape, Path) or (isinstance(shape, str) and shape.lower().endswith(".png")):
        m = read_mask_png(shape, (h, w))
    elif isinstance(shape, str):
        key = shape.strip().lower().replace("_", "-")
        m = torch.zeros(1, h, w)
        if key in ("two-bars", "twobars", "bars"):
            bh = max(1, round(0.094 * h))
            x0, x1 = round(0.25 * w), round(0.75 * w)
            for top in (0.28, 0.62):
                y0 = round(top * h)
                m[0, y0 : y0 + bh, x0:x1] = 1
        elif key in ("graffiti", "love-hate"):
            _word(m, "LOVE", 0.16, h, w)
            _word(m, "HATE", 0.66, h, w)
        elif key == "square":
            if not 0 < float(area) <= 1:
                raise ValueError(f"area must be in (0, 1], got {area}")
            side = max(1, round(math.sqrt(float(area) * h * w)))
            side = min(side, h, w)
            cx, cy = (float(c) for c in center)
            if not (0 <= cx <= 1 and 0 <= cy <= 1):
                raise ValueError(f"center must be fractions in [0, 1], got {center}")
            x0 = min(max(0, round(cx * w - side / 2)), w - side)
            y0 = min(max(0, round(cy * h - side / 2)), h - side)
            m[0, y0 : y0 + side, x0 : x0 + side] = 1
        else:
            raise ValueError(
                f"unknown mask shape {shape!r}; built-in shapes: {', '.join(MASK_SHAPES)}, "
                "or the path of a PNG file"
            )
    else:
        raise TypeError(f"mask shape must be a name, a PNG path or a tensor, got {type(shape)}")
    if not bool(m.any()):
        raise ValueError("the mask is empty: it allows no pixel to change")
    return m


def read_mask_png(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """A mask ``(1, H, W)`` from a PNG: opaque, bright pixels (alpha and luminance > 0.5) are
    sticker; resized to ``size`` by nearest neighbour."""
    import matplotlib.image as mpimg

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"mask PNG not found: {p}")
    try:
        a = mpimg.imread(str(p), format="png")
    except Exception as e:  # matplotlib/Pillow raise many kinds for a bad file
        raise ValueError(f"{p}: not a readable PNG ({type(e).__name__}: {e})") from e
    t = torch.as_tensor(a, dtype=torch.float32)
    if t.dtype != torch.float32 or t.max() > 1.0:
        t = t / 255.0
    if t.dim() == 2:
        on = t > 0.5
    else:
        lum = t[..., :3].mean(-1) if t.shape[-1] >= 3 else t[..., 0]
        on = lum > 0.5
        if t.shape[-1] in (2, 4):
            on &= t[..., -1] > 0.5
    m = on.float()[None, None]
    m = F.interpolate(m, size=size, mode="nearest")[0]
    if not bool(m.any()):
        raise ValueError(f"{p}: the mask is empty (no bright, opaque pixel)")
    return m


# ---------------------------------------------------------------------------------------------
# Printability
# ---------------------------------------------------------------------------------------------


def _palette(palette: Any) -> torch.Tensor:
    p = torch.as_tensor(PRINTER_PALETTE if palette is None else palette, dtype=torch.float32)
    if p.dim() != 2 or p.shape[1] != 3 or p.shape[0] < 1:
        raise ValueError(f"palette must be (colours, 3) RGB values, got {tuple(p.shape)}")
    if not bool(((p >= 0) & (p <= 1)).all()):
        raise ValueError("palette colours must lie in [0, 1]")
    return p


def non_printability(sticker: torch.Tensor, mask: torch.Tensor, palette: Any = None):
    """The non-printability score of RP2 / Sharif et al. 2016: for every sticker pixel the
    product of its distances to the palette's colours, averaged over the mask's pixels (0 when
    every pixel is a palette colour). Differentiable; ``sticker`` ``(3, H, W)`` or
    ``(B, 3, H, W)``, ``mask`` broadcastable to it."""
    p = _palette(palette).to(sticker)
    s = sticker if sticker.dim() == 4 else sticker[None]
    d = (s.permute(0, 2, 3, 1)[..., None, :] - p).norm(dim=-1).clamp_min(1e-12)  # (B,H,W,K)
    score = d.prod(-1)
    m = mask.to(s).expand(s.shape[0], 1, *s.shape[2:])[:, 0]
    return (score * m).sum() / m.sum().clamp_min(1.0)


def project_gamut(sticker: torch.Tensor, palette: Any = None) -> torch.Tensor:
    """Clip colours into the printable gamut: the per-channel range of the palette."""
    p = _palette(palette).to(sticker)
    lo, hi = p.min(0).values, p.max(0).values
    shape = (3, 1, 1) if sticker.dim() == 3 else (1, 3, 1, 1)
    return torch.maximum(torch.minimum(sticker, hi.view(shape)), lo.view(shape))


# ---------------------------------------------------------------------------------------------
# Viewing conditions (EOT)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewParams:
    """Per-sample viewing parameters (each a ``(B,)`` tensor, ``color`` ``(B, 3)``).

    ``rotation`` (radians, in the image plane), ``scale`` (1 = as photographed; < 1 = farther
    away), ``yaw`` / ``pitch`` (viewing angle of the sign's plane, radians), ``tx`` / ``ty``
    (shift, fractions of the half-width), ``brightness`` (added), ``contrast`` (gain about
    mid-grey), ``color`` (per-channel gain − 1), ``blur`` (Gaussian σ in pixels), ``noise``
    (σ of Gaussian sensor noise)."""

    rotation: torch.Tensor
    scale: torch.Tensor
    yaw: torch.Tensor
    pitch: torch.Tensor
    tx: torch.Tensor
    ty: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    color: torch.Tensor
    blur: torch.Tensor
    noise: torch.Tensor
    noise_seed: int = 0

    def __len__(self) -> int:
        return int(self.scale.shape[0])

    def index(self, idx) -> ViewParams:
        return replace(
            self,
            **{f.name: getattr(self, f.name)[idx] for f in fields(self) if f.name != "noise_seed"},
        )

    def to_dict(self) -> dict[str, list]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.tolist() if isinstance(v, torch.Tensor) else v
        return out


def _range(v: Any, name: str, symmetric: bool) -> tuple[float, float]:
    if isinstance(v, int | float) and not isinstance(v, bool):
        lo, hi = (-float(v), float(v)) if symmetric else (float(v), float(v))
    else:
        try:
            lo, hi = (float(a) for a in v)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a number or a (low, high) pair, got {v!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"{name} must be a finite range with low <= high, got {v!r}")
    return lo, hi


@dataclass(frozen=True)
class ViewDistribution:
    """A seedable, differentiable distribution of viewing conditions (EOT transforms).

    Every range is a ``(low, high)`` pair (a number ``v`` means ``(-v, v)``, for ``scale`` a
    number means that fixed scale) and parameters are drawn uniformly and independently per
    sample from a ``torch.Generator`` seeded with ``seed`` (the same seed gives the same
    views). :meth:`apply` warps and relights a batch with those parameters; it is
    differentiable with respect to the images (a sampling grid per sample, bilinear
    interpolation, a per-sample Gaussian blur). All ranges zero (:meth:`identity`) returns the
    input unchanged.

    Args:
        rotation: in-plane rotation, degrees (±15).
        scale: size relative to the photo, i.e. distance (0.75, 1.05).
        yaw, pitch: viewing angle of the sign's plane, degrees (±35, ±15): a perspective
            foreshortening (pinhole camera at distance ``camera_distance`` half-widths).
        translate: shift as a fraction of the image side (±0.08).
        brightness: added to every pixel (±0.2). contrast: gain about 0.5 is ``1 + c`` (±0.25).
        color: per-channel gain ``1 + c`` (±0.06), a colour cast of the light.
        blur: Gaussian blur σ in pixels (0, 0.8). noise: sensor noise σ (0, 0.02).
        seed: seed of :meth:`sample`.

    >>> views = ViewDistribution(seed=0)
    >>> params = views.sample(16)            # 16 viewing conditions
    >>> x_seen = views.apply(x[:1].expand(16, -1, -1, -1), params)
    """

    rotation: Any = 15.0
    scale: Any = (0.75, 1.05)
    yaw: Any = 35.0
    pitch: Any = 15.0
    translate: Any = 0.08
    brightness: Any = 0.2
    contrast: Any = 0.25
    color: Any = 0.06
    blur: Any = (0.0, 0.8)
    noise: Any = (0.0, 0.02)
    seed: int = 0
    camera_distance: float = 3.0
    _ranges: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        r = {}
        for name in ("rotation", "yaw", "pitch", "translate", "brightness", "contrast", "color"):
            r[name] = _range(getattr(self, name), name, symmetric=True)
        r["scale"] = _range(self.scale, "scale", symmetric=False)
        r["blur"] = _range(self.blur, "blur", symmetric=False)
        r["noise"] = _range(self.noise, "noise", symmetric=False)
        if r["scale"][0] <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale!r}")
        if r["blur"][0] < 0 or r["noise"][0] < 0:
            raise ValueError("blur and noise must be >= 0")
        if r["contrast"][0] <= -1 or r["color"][0] <= -1:
            raise ValueError("contrast and color gains must stay > -1")
        for name in ("yaw", "pitch"):
            if max(abs(v) for v in r[name]) > 60:
                raise ValueError(f"{name} must stay within ±60 degrees, got {getattr(self, name)}")
        if not self.camera_distance > 1:
            raise ValueError(f"camera_distance must be > 1, got {self.camera_distance}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        object.__setattr__(self, "_ranges", r)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def identity(cls) -> ViewDistribution:
        """No change at all: :meth:`apply` returns its input unchanged."""
        return cls(0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, (0.0, 0.0), (0.0, 0.0))

    def held_out(self, seed: int, widen: float = 1.0) -> ViewDistribution:
        """The evaluation distribution: another ``seed`` (it must differ), every range widened
        by ``widen`` ≥ 1 about its centre (scale: its low end lowered)."""
        if seed == self.seed:
            raise ValueError(f"the held-out distribution needs another seed than {self.seed}")
        if not widen >= 1:
            raise ValueError(f"widen must be >= 1, got {widen}")
        r = self._ranges
        kw: dict[str, Any] = {}
        for name in ("rotation", "yaw", "pitch", "translate", "brightness", "contrast", "color"):
            lo, hi = r[name]
            kw[name] = (lo * widen, hi * widen)
        for name in ("yaw", "pitch"):
            kw[name] = tuple(max(-60.0, min(60.0, v)) for v in kw[name])
        kw["contrast"] = tuple(max(-0.9, v) for v in kw["contrast"])
        kw["color"] = tuple(max(-0.9, v) for v in kw["color"])
        lo, hi = r["scale"]
        kw["scale"] = (lo / widen, hi)
        kw["blur"] = (r["blur"][0], r["blur"][1] * widen)
        kw["noise"] = (r["noise"][0], r["noise"][1] * widen)
        return replace(self, seed=int(seed), **kw)

    @property
    def is_identity(self) -> bool:
        r = self._ranges
        zero = ("rotation", "yaw", "pitch", "translate", "brightness", "contrast", "color")
        return (
            all(r[n] == (0.0, 0.0) for n in zero)
            and r["scale"] == (1.0, 1.0)
            and r["blur"] == (0.0, 0.0)
            and r["noise"] == (0.0, 0.0)
        )

    def to_dict(self) -> dict[str, Any]:
        d = {k: list(v) for k, v in self._ranges.items()}
        d.update(seed=self.seed, camera_distance=self.camera_distance)
        return d

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> ViewParams:
        """``n`` viewing conditions, drawn from ``generator`` (default: a fresh one seeded with
        :attr:`seed`, so the same distribution gives the same views)."""
        if isinstance(n, bool) or int(n) < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        n = int(n)
        g = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        r = self._ranges

        def u(name: str, *shape: int) -> torch.Tensor:
            lo, hi = r[name]
            return lo + (hi - lo) * torch.rand(n, *shape, generator=g, dtype=torch.float64)

        deg = math.pi / 180
        return ViewParams(
            rotation=(u("rotation") * deg).float(),
            scale=u("scale").float(),
            yaw=(u("yaw") * deg).float(),
            pitch=(u("pitch") * deg).float(),
            tx=u("translate").float() * 2,  # fraction of the side -> normalised coordinates
            ty=u("translate").float() * 2,
            brightness=u("brightness").float(),
            contrast=u("contrast").float(),
            color=u("color", 3).float(),
            blur=u("blur").float(),
            noise=u("noise").float(),
            noise_seed=int(torch.randint(0, 2**62, (1,), generator=g)),
        )

    # -- applying ------------------------------------------------------------------------------
    def grid(self, params: ViewParams, h: int, w: int, *, dtype=torch.float32, device=None):
        """The sampling grid ``(B, H, W, 2)`` (``grid_sample`` convention, align_corners=False)
        that shows the sign under ``params``: for each output pixel, where it comes from."""
        p = params
        ys = (torch.arange(h, dtype=dtype, device=device) * 2 + 1) / h - 1
        xs = (torch.arange(w, dtype=dtype, device=device) * 2 + 1) / w - 1
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        u, v = gx[None], gy[None]

        def col(t):
            return t.to(dtype=dtype, device=device).view(-1, 1, 1)

        # undo: shift, scale, in-plane rotation (output -> sign plane seen head-on)
        u, v = (u - col(p.tx)) / col(p.scale), (v - col(p.ty)) / col(p.scale)
        c, s = torch.cos(col(p.rotation)), torch.sin(col(p.rotation))
        u, v = c * u + s * v, -s * u + c * v
        # undo the perspective of a plane turned by yaw (about the vertical axis) then pitch:
        # a point (x, y) of the sign is seen at (x cos / (1 + x sin / d), y / (1 + x sin / d))
        d = self.camera_distance
        cy_, sy_ = torch.cos(col(p.yaw)), torch.sin(col(p.yaw))
        cp_, sp_ = torch.cos(col(p.pitch)), torch.sin(col(p.pitch))
        # pitch (about the horizontal axis), applied last in the forward model: undo it first
        v1 = v / (cp_ - v * sp_ / d)
        u1 = u * (1 + v1 * sp_ / d)
        # yaw
        x = u1 / (cy_ - u1 * sy_ / d)
        y = v1 * (1 + x * sy_ / d)
        return torch.stack([x, y], dim=-1)

    def apply(self, x: torch.Tensor, params: ViewParams, *, check: bool = True) -> torch.Tensor:
        """``x`` ``(B, C, H, W)`` seen under ``params`` (``B`` conditions, or one for all);
        differentiable in ``x``; values clamped to ``[0, 1]``. The identity distribution
        returns ``x`` itself. ``check=False`` skips validating ``x`` (for an inner loop whose
        images were validated once)."""
        if check:
            check_float_batch(x)
        if self.is_identity:
            return x
        n = len(params)
        if n != x.shape[0]:
            if x.shape[0] != 1:
                raise ValueError(f"{n} viewing conditions for a batch of {x.shape[0]} images")
            x = x.expand(n, *x.shape[1:])
        b, ch, h, w = x.shape
        grid = self.grid(params, h, w, dtype=x.dtype, device=x.device)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = _gaussian_blur(out, params.blur.to(x))
        shape = (b, 1, 1, 1)
        color = params.color.to(x)
        gain = 1 + (color if ch == 3 else color.mean(1, keepdim=True))
        out = out * gain.view(b, -1, 1, 1)
        out = (out - 0.5) * (1 + params.contrast.to(x).view(shape)) + 0.5
        out = out + params.brightness.to(x).view(shape)
        if bool((params.noise > 0).any()):
            g = torch.Generator(device=x.device).manual_seed(params.noise_seed)
            eps = torch.randn(out.shape, generator=g, device=x.device, dtype=x.dtype)
            out = out + eps * params.noise.to(x).view(shape)
        return out.clamp(0.0, 1.0)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur (σ in pixels, 5×5 kernel; σ = 0 leaves a sample unchanged)."""
    if not bool((sigma > 0).any()):
        return x
    b, c, h, w = x.shape
    r = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    s = sigma.clamp_min(1e-3).view(b, 1)
    k1 = torch.exp(-(r[None] ** 2) / (2 * s**2))
    k1 = torch.where(sigma.view(b, 1) > 0, k1, (r[None] == 0).to(x.dtype))
    k1 = k1 / k1.sum(1, keepdim=True)
    k2 = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(c, 0)[:, None]  # (b*c,1,5,5)
    xp = F.pad(x.reshape(1, b * c, h, w), (2, 2, 2, 2), mode="replicate")
    return F.conv2d(xp, k2, groups=b * c).reshape(b, c, h, w)


# ---------------------------------------------------------------------------------------------
# The threat
# ---------------------------------------------------------------------------------------------


class PatchThreat(Threat):
    """A sticker inside a mask (fixed placement) or a universal patch at a random place.

    Fixed placement (RP2): the attacker chooses the pixels of ``sticker`` ``(C, H, W)`` under
    ``mask`` ``(1, H, W)``; the image becomes ``x·(1−mask) + sticker·mask``. Random placement
    (adversarial patch): a square patch ``(C, k, k)`` covering ``area`` of the image is pasted
    at a random location, scale (``patch_scale``) and rotation (``patch_rotation`` degrees),
    drawn per sample (:meth:`place`).

    As a :class:`~advex.threats.Threat` on image batches: pixels outside the mask never change,
    every value stays in ``bounds`` and every sticker pixel in the printable gamut (the
    palette's per-channel range; ``gamut=False`` to allow all of ``bounds``).
    ``distance`` is the L2 norm of the change (RP2's regulariser), ``budget`` the area
    fraction.

    Args:
        mask: a mask tensor or a :func:`make_mask` shape name / PNG path (fixed placement).
        size: image side (or ``(H, W)``) when ``mask`` is a name. area: the square's area.
        placement: ``"fixed"`` or ``"random"``.
        views: the :class:`ViewDistribution` used for EOT (default ``ViewDistribution()``).
        palette: printer palette ``(K, 3)`` (default :data:`PRINTER_PALETTE`).
        patch_scale: random placement: patch side × this factor, drawn in the range (0.8, 1.2).
        patch_rotation: random placement: rotation range in degrees (±20).
        patch_region: random placement: the whole (rotated) patch lies inside the central
            square of ``patch_region`` × the image side (1: anywhere in the image; GTSRB crops
            have a 10% border around the sign, so 0.8 keeps the patch on the sign's face).

    >>> threat = PatchThreat("two-bars", size=32)
    >>> x_stickered = threat.apply(x, sticker)         # x·(1−mask) + sticker·mask
    """

    def __init__(
        self,
        mask: Any = "two-bars",
        *,
        size: int | tuple[int, int] = 32,
        area: float = 0.05,
        placement: str = "fixed",
        views: ViewDistribution | None = None,
        palette: Any = None,
        gamut: bool = True,
        patch_scale: tuple[float, float] = (0.8, 1.2),
        patch_rotation: float = 20.0,
        patch_region: float = 1.0,
        channels: int = 3,
    ) -> None:
        if placement not in ("fixed", "random"):
            raise ValueError(f"placement must be 'fixed' or 'random', got {placement!r}")
        self.placement = placement
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.channels = int(channels)
        if placement == "fixed":
            self.mask = make_mask(mask, self.size, area=area)
            self.area = float(self.mask.mean())
            self.patch_side = None
        else:
            if not 0 < float(area) < 1:
                raise ValueError(f"area must be in (0, 1), got {area}")
            self.area = float(area)
            h, w = self.size
            self.patch_side = max(2, round(math.sqrt(self.area * h * w)))
            self.mask = None
        self.mask_name = mask if isinstance(mask, str) else "custom"
        self.views = views if views is not None else ViewDistribution()
        if not isinstance(self.views, ViewDistribution):
            raise TypeError(f"views must be a ViewDistribution, got {type(views).__name__}")
        self.palette = _palette(palette)
        self.gamut = bool(gamut)
        self.patch_scale = _range(patch_scale, "patch_scale", symmetric=False)
        if self.patch_scale[0] <= 0:
            raise ValueError("patch_scale must be > 0")
        self.patch_rotation = _range(patch_rotation, "patch_rotation", symmetric=True)
        region = patch_region
        if isinstance(region, bool) or not isinstance(region, int | float):
            raise TypeError(f"patch_region must be a number in (0, 1], got {region!r}")
        if not 0 < float(region) <= 1:
            raise ValueError(f"patch_region must be in (0, 1], got {region!r}")
        self.patch_region = float(region)
        if self.placement == "random" and self.patch_region < 1:
            h, w = self.size
            side = self.patch_side * self.patch_scale[1] * math.sqrt(2)  # largest rotated extent
            if side > self.patch_region * min(h, w) + 1e-9:
                raise ValueError(
                    f"the patch ({self.patch_side} px × scale up to {self.patch_scale[1]:g}, "
                    f"{side:.1f} px across when rotated) does not fit in the central "
                    f"{self.patch_region:g} of a {h}×{w} image: use a larger patch_region or "
                    "a smaller area"
                )
        self.bounds = (0.0, 1.0)

    # -- the sticker itself ----------------------------------------------------------------
    @property
    def sticker_shape(self) -> tuple[int, int, int]:
        if self.placement == "fixed":
            return (self.channels, *self.size)
        return (self.channels, self.patch_side, self.patch_side)

    def project_sticker(self, sticker: torch.Tensor) -> torch.Tensor:
        """The sticker clipped to ``[0, 1]`` and (``gamut``) into the printable gamut."""
        s = sticker.clamp(0.0, 1.0)
        return project_gamut(s, self.palette) if self.gamut and s.shape[-3] == 3 else s

    def check_sticker(self, sticker: torch.Tensor) -> torch.Tensor:
        if not isinstance(sticker, torch.Tensor) or not sticker.is_floating_point():
            raise TypeError("sticker must be a floating-point tensor")
        if tuple(sticker.shape) != self.sticker_shape:
            raise ValueError(
                f"sticker has shape {tuple(sticker.shape)}, expected {self.sticker_shape}"
            )
        if not bool(torch.isfinite(sticker).all()):
            raise ValueError("sticker contains NaN or inf values")
        return sticker

    def random_sticker(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A uniformly random printable sticker (the control of the physical evaluation)."""
        s = torch.rand(self.sticker_shape, generator=generator)
        lo, hi = self.palette.min(0).values, self.palette.max(0).values
        if self.gamut and self.channels == 3:
            return lo.view(3, 1, 1) + (hi - lo).view(3, 1, 1) * s
        return s

    def _check_images(self, x: torch.Tensor) -> None:
        check_float_batch(x)
        if x.dim() != 4 or x.shape[1] != self.channels or tuple(x.shape[2:]) != self.size:
            raise ValueError(
                f"images must be (B, {self.channels}, {self.size[0]}, {self.size[1]}) for this "
                f"patch threat (mask of size {self.size[0]}×{self.size[1]}), got {tuple(x.shape)}"
            )

    def mask_for(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            raise ValueError("a random-placement patch has no fixed mask: use place()")
        return self.mask.to(device=x.device, dtype=x.dtype)

    def apply(
        self, x: torch.Tensor, sticker: torch.Tensor, placement=None, *, check: bool = True
    ) -> torch.Tensor:
        """``x`` with the sticker on: ``x·(1−mask) + sticker·mask`` (fixed) or the patch pasted
        with ``placement`` (random; drawn from a generator seeded 0 when None). Differentiable
        in ``sticker``. ``check=False`` skips validating ``x`` and ``sticker`` (for an inner
        loop whose inputs were validated once)."""
        if check:
            self._check_images(x)
            self.check_sticker(sticker)
        sticker = sticker.to(x)
        if self.placement == "fixed":
            m = self.mask_for(x)
            return x * (1 - m) + sticker * m
        if placement is None:
            placement = self.sample_placement(x.shape[0], torch.Generator().manual_seed(0))
        canvas, m = self.place(sticker, placement, x)
        return x * (1 - m) + canvas * m

    # -- random placement ------------------------------------------------------------------
    def sample_placement(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random placements ``(n, 4)``: centre x, centre y (normalised, the patch kept
        inside the image), scale, rotation (radians)."""
        g = generator
        u = [torch.rand(n, generator=g) for _ in range(4)]
        return self.placement_from_uniform(torch.stack(u, -1))

    def placement_from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        """Placements ``(..., 4)`` (as :meth:`sample_placement`) from uniform numbers
        ``(..., 4)`` in ``[0, 1)``: scale, rotation, centre x, centre y — for per-point random
        streams (:class:`~advex.threats.PointRandom`). The centre is uniform over the
        positions that keep the whole rotated patch (its half-diagonal) inside the central
        ``patch_region`` of the image."""
        lo, hi = self.patch_scale
        scale = lo + (hi - lo) * u[..., 0]
        rl, rh = self.patch_rotation
        rot = (rl + (rh - rl) * u[..., 1]) * math.pi / 180
        h, w = self.size
        half = self.patch_side * scale / 2 * math.sqrt(2)  # the rotated patch's half-diagonal
        room_x = (self.patch_region - (2 * half / w)).clamp_min(0.0)
        room_y = (self.patch_region - (2 * half / h)).clamp_min(0.0)
        cx = (2 * u[..., 2] - 1) * room_x
        cy = (2 * u[..., 3] - 1) * room_y
        return torch.stack([cx, cy, scale, rot], -1)

    def place(self, patch: torch.Tensor, placement: torch.Tensor, like: torch.Tensor):
        """The patch ``(C, k, k)`` — or one patch per placement, ``(B, C, k, k)`` — drawn on
        image-sized canvases: ``(canvas, mask)``, both ``(B, ·, H, W)``, for placements
        ``(B, 4)`` (:meth:`sample_placement`)."""
        b = placement.shape[0]
        h, w = self.size
        k = patch.shape[-1]
        pl = placement.to(like)
        cx, cy, sc, rot = pl[:, 0], pl[:, 1], pl[:, 2], pl[:, 3]
        # output (image) normalised coords -> patch normalised coords
        sx = w / (k * sc)
        sy = h / (k * sc)
        c, s = torch.cos(rot), torch.sin(rot)
        theta = torch.zeros(b, 2, 3, dtype=like.dtype, device=like.device)
        theta[:, 0, 0] = c * sx
        theta[:, 0, 1] = s * sx * h / w
        theta[:, 1, 0] = -s * sy * w / h
        theta[:, 1, 1] = c * sy
        theta[:, 0, 2] = -(theta[:, 0, 0] * cx + theta[:, 0, 1] * cy)
        theta[:, 1, 2] = -(theta[:, 1, 0] * cx + theta[:, 1, 1] * cy)
        patch = patch.to(like)
        src = patch[None].expand(b, -1, -1, -1) if patch.dim() == 3 else patch
        if src.shape[0] != b:
            raise ValueError(f"{src.shape[0]} patches for {b} placements")
        ones = torch.ones(b, 1, k, k, dtype=like.dtype, device=like.device)
        src = torch.cat([src, ones], 1)
        grid = F.affine_grid(theta, [b, src.shape[1], h, w], align_corners=False)
        out = F.grid_sample(
            src,
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        return out[:, :-1], out[:, -1:]

    # -- the Threat interface (image batches) ----------------------------------------------
    def check_inputs(self, x: torch.Tensor, *, name: str = "x") -> None:
        check_float_batch(x, name=name)
        if x.dim() != 4 or tuple(x.shape[2:]) != self.size or x.shape[1] != self.channels:
            raise ValueError(
                f"{name} must be images (B, {self.channels}, {self.size[0]}, {self.size[1]}) "
                f"for this patch threat (its mask is {self.size[0]}×{self.size[1]}), got "
                f"{tuple(x.shape)}"
            )
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f"{name} must lie in [0, 1] (got values in [{lo:.4g}, {hi:.4g}])")

    def random_start(self, x, rng=None, eps=None, *, idx=None, stream="start"):
        g = rng if isinstance(rng, torch.Generator) else None
        if self.placement != "fixed":
            return x.clone()
        return self.apply(x, self.random_sticker(g).to(x))

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: Any = None) -> torch.Tensor:
        if self.placement != "fixed":
            return x_adv.clamp(0.0, 1.0)
        m = self.mask_for(x)
        return x * (1 - m) + self.project_sticker(x_adv) * m

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        g = grad.sign()
        return g * self.mask_for(grad) if self.mask is not None else g

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x_adv - x).reshape(x.shape[0], -1).norm(dim=1)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        """Per sample: inside ``[0, 1]``; for fixed placement also unchanged outside the mask and
        every changed in-mask pixel inside the printable gamut."""
        b = x.shape[0]
        ok = ((x_adv >= -tol) & (x_adv <= 1 + tol)).reshape(b, -1).all(1)
        if self.placement != "fixed":
            return ok
        m = self.mask_for(x) > 0.5
        outside = ((x_adv - x).abs() > tol) & ~m
        ok &= ~outside.reshape(b, -1).any(1)
        if self.gamut and self.channels == 3:
            lo = self.palette.min(0).values.to(x).view(1, 3, 1, 1)
            hi = self.palette.max(0).values.to(x).view(1, 3, 1, 1)
            bad = ((x_adv < lo - tol) | (x_adv > hi + tol)) & m
            ok &= ~bad.reshape(b, -1).any(1)
        return ok

    #: the name reports and evaluations show for this threat's "norm"
    norm = "patch"

    @property
    def budget(self) -> float:
        return self.area

    @property
    def eps(self) -> float:
        """The budget as evaluations report it: the area fraction."""
        return self.area

    def with_budget(self, eps: float | None) -> PatchThreat:
        if eps is None or not 0 < float(eps) < 1:
            raise ValueError(f"a patch budget is an area fraction in (0, 1), got {eps!r}")
        if self.placement == "fixed" and self.mask_name != "square":
            raise ValueError("only a 'square' or random-placement patch can change its area")
        return PatchThreat(
            "square" if self.placement == "fixed" else None,
            size=self.size,
            area=float(eps),
            placement=self.placement,
            views=self.views,
            palette=self.palette,
            gamut=self.gamut,
            patch_scale=self.patch_scale,
            patch_rotation=self.patch_rotation,
            patch_region=self.patch_region,
            channels=self.channels,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "threat": "patch",
            "placement": self.placement,
            "mask": self.mask_name if self.placement == "fixed" else None,
            "area": round(self.area, 6),
            "size": list(self.size),
            "gamut": self.gamut,
            "views": self.views.to_dict(),
            **(
                {
                    "patch_scale": list(self.patch_scale),
                    "patch_rotation_deg": list(self.patch_rotation),
                    "patch_region": self.patch_region,
                    "patch_side_px": self.patch_side,
                }
                if self.placement == "random"
                else {}
            ),
        }

    def describe(self) -> str:
        if self.placement == "fixed":
            return f"sticker '{self.mask_name}' ({self.area:.1%} of the image), printable colours"
        return f"universal patch of {self.area:.1%} of the image, random placement"
