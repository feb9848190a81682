"""Input checks of the API: one error type, image decoding with a decompression-bomb guard,
MNIST-style normalisation of drawn digits, text checks, and images back to PNG data URLs.

Every problem raises :class:`ApiError` (status, ``snake_case`` code, a sentence naming the
problem, the request field), which the app turns into
``{"error": {"code", "message", "field"}}``.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings

import numpy as np
import torch

__all__ = [
    "ApiError",
    "decode_image",
    "image_to_tensor",
    "mnist_normalise",
    "check_text",
    "to_data_url",
    "perturbation_data_url",
    "IMAGE_FORMATS",
]

#: data URL media types accepted for images, with the Pillow format that must match
IMAGE_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG"}


class ApiError(Exception):
    """An error answered as JSON: HTTP ``status``, ``code``, ``message``, ``field``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = int(status)
        self.code = code
        self.message = message
        self.field = field

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


def decode_image(data_url: str, *, max_side: int, field: str = "input.image"):
    """A PIL image from a ``data:image/png;base64,...`` (or ``image/jpeg``) URL.

    The header is read first and the size checked against ``max_side`` (each side, and the
    pixel count against ``max_side²``) *before* any pixel is decoded, so a small file that
    decodes to a huge image (a decompression bomb) is refused cheaply. Raises
    :class:`ApiError` (422) for a malformed URL, bad base64, a file that is not a PNG/JPEG or
    is truncated, and 413 for an image over the limit.
    """
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data_url, str):
        raise ApiError(422, "invalid_image", "the image must be a data URL string", field)
    head, sep, payload = data_url.partition(",")
    if not sep or not head.startswith("data:"):
        raise ApiError(
            422,
            "invalid_image",
            "the image must be a data URL: data:image/png;base64,<base64 PNG>",
            field,
        )
    parts = head[5:].split(";")
    media = parts[0].strip().lower()
    if media not in IMAGE_FORMATS:
        raise ApiError(
            415,
            "unsupported_image_type",
            f"image type {media or '(none)'!r} is not accepted; send image/png or image/jpeg",
            field,
        )
    if "base64" not in [p.strip().lower() for p in parts[1:]]:
        raise ApiError(422, "invalid_image", "the image data URL must be base64 (;base64,)", field)
    try:
        raw = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ApiError(
            422, "malformed_base64", f"the image is not valid base64: {err}", field
        ) from err
    if not raw:
        raise ApiError(422, "invalid_image", "the image is empty", field)
    fmt = IMAGE_FORMATS[media]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw), formats=[fmt])  # reads the header only
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ApiError(
            422, "invalid_image", f"the image is not a readable {fmt} file ({err})", field
        ) from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ApiError(413, "image_too_large", f"the image is too large: {err}", field) from err
    w, h = img.size
    if w < 1 or h < 1:
        raise ApiError(422, "invalid_image", f"the image has no pixels ({w}×{h})", field)
    if w > max_side or h > max_side or w * h > max_side * max_side:
        raise ApiError(
            413,
            "image_too_large",
            f"the image is {w}×{h} pixels; the limit is {max_side}×{max_side} "
            "(checked before decoding)",
            field,
        )
    try:
        img.load()  # now decode the pixels
    except (OSError, SyntaxError, ValueError) as err:
        raise ApiError(
            422, "invalid_image", f"the {fmt} file is corrupt or truncated ({err})", field
        ) from err
    except Image.DecompressionBombError as err:  # pragma: no cover - size checked above
        raise ApiError(413, "image_too_large", f"the image is too large: {err}", field) from err
    return img


def _flatten_alpha(img):
    """An RGBA/LA/P image as RGB over a background that contrasts with its strokes (a canvas
    drawing with a transparent background keeps its strokes visible)."""
    from PIL import Image

    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode not in ("RGBA", "LA"):
        return img.convert("RGB")
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    alpha = rgba[..., 3]
    if alpha.min() >= 1.0:
        return img.convert("RGB")
    opaque = alpha > 0.5
    lum = rgba[..., :3].mean(-1)
    ink = float(lum[opaque].mean()) if opaque.any() else 0.0
    bg = 255 if ink < 0.5 else 0
    base = Image.new("RGBA", img.size, (bg, bg, bg, 255))
    return Image.alpha_composite(base, img.convert("RGBA")).convert("RGB")


def mnist_normalise(gray: np.ndarray) -> np.ndarray:
    """A drawing ``(H, W)`` in [0, 1] as an MNIST digit ``(28, 28)``: white digit on black
    (inverted when the border is light), cropped to the ink, scaled to fit 20×20 and centred
    by its centre of mass in 28×28 (how MNIST was made). A blank drawing stays blank."""
    from PIL import Image

    g = np.asarray(gray, dtype=np.float32)
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    if float(border.mean()) > 0.5:
        g = 1.0 - g
    ink = g > 0.15
    if not ink.any():
        return np.zeros((28, 28), dtype=np.float32)
    rows, cols = np.where(ink.any(1))[0], np.where(ink.any(0))[0]
    crop = g[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    s = 20.0 / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    pil = Image.fromarray((crop * 255).clip(0, 255).astype(np.uint8), mode="L")
    small = np.asarray(pil.resize((nw, nh), Image.Resampling.LANCZOS), dtype=np.float32) / 255
    out = np.zeros((28, 28), dtype=np.float32)
    top, left = (28 - nh) // 2, (28 - nw) // 2
    out[top : top + nh, left : left + nw] = small
    mass = out.sum()
    if mass > 0:
        yy, xx = np.mgrid[0:28, 0:28]
        cy, cx = float((out * yy).sum() / mass), float((out * xx).sum() / mass)
        dy, dx = int(round(13.5 - cy)), int(round(13.5 - cx))
        dy = max(-top, min(28 - nh - top, dy))
        dx = max(-left, min(28 - nw - left, dx))
        out = np.roll(out, (dy, dx), axis=(0, 1))
    return out.clip(0.0, 1.0)


def image_to_tensor(img, channels: int, height: int, width: int, *, digits: bool) -> torch.Tensor:
    """A PIL image as a model input ``(1, channels, height, width)`` in [0, 1].

    ``digits``: MNIST-style input (grey, white on black, centred; an image already of the
    model's size is only inverted if needed). Other images are converted to RGB (or grey)
    and resized to the model's input."""
    from PIL import Image

    rgb = _flatten_alpha(img)
    if digits:
        gray = np.asarray(rgb.convert("L"), dtype=np.float32) / 255.0
        if gray.shape == (height, width):
            border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
            arr = 1.0 - gray if float(border.mean()) > 0.5 else gray
        else:
            arr = mnist_normalise(gray)
            if (height, width) != (28, 28):  # pragma: no cover - digit models are 28×28
                pil = Image.fromarray((arr * 255).astype(np.uint8), mode="L")
                pil = pil.resize((width, height), Image.Resampling.BILINEAR)
                arr = np.asarray(pil, dtype=np.float32) / 255.0
        t = torch.from_numpy(np.ascontiguousarray(arr)).float()[None, None]
        return t.expand(1, channels, height, width).clone()
    pil = rgb.convert("L" if channels == 1 else "RGB")
    if pil.size != (width, height):
        pil = pil.resize((width, height), Image.Resampling.LANCZOS)
    arr = np.asarray(pil, dtype=np.float32) / 255.0
    t = torch.from_numpy(np.ascontiguousarray(arr)).float()
    t = t[None, None] if channels == 1 else t.permute(2, 0, 1)[None]
    return t.clamp(0.0, 1.0)


def check_text(text, *, max_chars: int, field: str = "input.text") -> str:
    """``text`` if it is a non-empty string of at most ``max_chars`` characters without NUL
    bytes (422 / 413 otherwise)."""
    if not isinstance(text, str):
        raise ApiError(422, "invalid_text", "the text must be a string", field)
    if len(text) > max_chars:
        raise ApiError(
            413,
            "text_too_long",
            f"the text has {len(text)} characters; the limit is {max_chars}",
            field,
        )
    if not text.strip():
        raise ApiError(422, "empty_text", "the text is empty", field)
    if "\x00" in text:
        raise ApiError(422, "invalid_text", "the text contains a NUL character", field)
    return text


def _png(arr: np.ndarray) -> str:
    from PIL import Image

    a = (np.asarray(arr, dtype=np.float32).clip(0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4):
        a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    mode = "L" if a.ndim == 2 else {3: "RGB", 4: "RGBA"}[a.shape[-1]]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a), mode=mode).save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def to_data_url(x: torch.Tensor) -> str:
    """An image ``(C, H, W)`` or ``(1, C, H, W)`` in [0, 1] as a PNG data URL."""
    t = x.detach().float().cpu()
    if t.dim() == 4:
        t = t[0]
    return _png(t.numpy())


def perturbation_data_url(delta: torch.Tensor) -> str:
    """The perturbation ``(C, H, W)`` amplified to the full range: 0 is mid-grey, the largest
    change in either direction is black or white."""
    d = delta.detach().float().cpu()
    if d.dim() == 4:
        d = d[0]
    m = float(d.abs().max())
    scale = 0.5 / m if m > 0 and math.isfinite(m) else 0.0
    return _png((d * scale + 0.5).numpy())
