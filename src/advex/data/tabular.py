"""Tabular datasets: rows of named, typed features with a :class:`~advex.data.schema.Schema`.

- :func:`breast_cancer`: scikit-learn's Wisconsin diagnostic breast cancer set (569 tumours, 30
  measurements; ``malignant`` / ``benign``), with a shipped schema stating its real relations
  (each ``worst`` value ≥ its ``mean``, area and perimeter consistent with the radius within
  the tolerance measured on the data, non-negative values);
- :func:`read_csv`: your own CSV file, described by a schema file (YAML or JSON).

Both return a :class:`TabularDataset`: an :class:`~advex.data.ArrayDataset` of ``(N, D)`` float32
rows in original units, carrying its ``schema`` (with each feature's scale set to its standard
deviation on the training split, the unit of standardised budgets). The split is stratified and
seeded, the same for the same seed.

>>> ds = advex.data.breast_cancer("test")
>>> ds.schema.names[:2], ds.class_names           # ['mean_radius', 'mean_texture'], [...]
>>> x, y = ds.tensors()                           # (143, 30) float32, original units
"""

from __future__ import annotations

import csv as _csv
import functools
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .core import ArrayDataset, DatasetError
from .schema import Schema, SchemaError
from .small import stratified_split

__all__ = ["TabularDataset", "breast_cancer", "breast_cancer_schema", "read_csv"]

_SPLITS = ("train", "test", "all")


class TabularDataset(ArrayDataset):
    """An :class:`ArrayDataset` of ``(N, D)`` rows with a :class:`Schema` (``schema``), the row
    indices in the source table (``index``) and its feature names and units."""

    def __init__(self, x, y, *, schema: Schema, index=None, **kw) -> None:
        super().__init__(x, y, **kw)
        if self.x.dim() != 2 or self.x.shape[1] != len(schema):
            raise ValueError(
                f"TabularDataset: x has shape {tuple(self.x.shape)} for a schema of "
                f"{len(schema)} features"
            )
        self.schema = schema
        n = self.x.shape[0]
        self.index = torch.arange(n) if index is None else torch.as_tensor(index).long()

    @property
    def feature_names(self) -> list[str]:
        return self.schema.names

    @property
    def units(self) -> list[str]:
        return [f.unit for f in self.schema.features]

    def subset(self, n_or_indices) -> TabularDataset:
        base = super().subset(n_or_indices)
        if isinstance(n_or_indices, int | np.integer) and not isinstance(n_or_indices, bool):
            idx = torch.arange(len(base))
        else:
            idx = torch.as_tensor(np.asarray(n_or_indices), dtype=torch.int64).reshape(-1)
        return TabularDataset(
            base.x,
            base.y,
            schema=self.schema,
            index=self.index[idx],
            name=self.name,
            num_classes=self.num_classes,
            class_names=self.class_names,
            bounds=self.bounds,
        )

    def __repr__(self) -> str:
        return (
            f"TabularDataset(name={self.name!r}, n={len(self)}, features={len(self.schema)}, "
            f"classes={self.class_names})"
        )


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")


def _bounds(schema: Schema, x: np.ndarray) -> tuple[float, float]:
    lo = min(float(x.min()), min(f.low for f in schema.features))
    hi = max(float(x.max()), max(f.high for f in schema.features))
    lo = lo if np.isfinite(lo) else float(x.min())
    hi = hi if np.isfinite(hi) else float(x.max())
    return (lo, hi if hi > lo else lo + 1.0)


def _make(
    x: np.ndarray, y: np.ndarray, schema: Schema, split: str, seed: int, test_size, name: str
) -> TabularDataset:
    train = stratified_split(y, "train", test_size, seed)
    schema = schema.fit_scales(torch.from_numpy(x[train]).double())
    sel = stratified_split(y, split, test_size, seed)
    return TabularDataset(
        x[sel].astype(np.float32),
        y[sel].astype(np.int64),
        schema=schema,
        index=torch.from_numpy(sel.astype(np.int64)),
        name=f"{name}-{split}",
        num_classes=len(schema.classes) if schema.classes else None,
        class_names=schema.classes,
        bounds=_bounds(schema, x),
    )


@functools.lru_cache(maxsize=1)
def breast_cancer_schema() -> Schema:
    """The shipped schema of :func:`breast_cancer` (``schemas/breast_cancer.json``), without
    scales (those come from a training split)."""
    text = resources.files(__package__).joinpath("schemas/breast_cancer.json").read_text("utf-8")
    import json

    return Schema.from_dict(json.loads(text), source="advex/data/schemas/breast_cancer.json")


@functools.lru_cache(maxsize=1)
def _breast_cancer_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)  # 0 = malignant, 1 = benign
    if list(bunch.target_names) != ["malignant", "benign"]:  # pragma: no cover - sklearn change
        raise DatasetError(f"unexpected breast cancer classes {list(bunch.target_names)}")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def breast_cancer(
    split: str = "test", *, test_size: float | int = 0.25, seed: int = 0
) -> TabularDataset:
    """scikit-learn's Wisconsin diagnostic breast cancer data (569 tumours: 212 malignant, 357
    benign; 30 measurements of cell nuclei from a fine-needle aspirate image).

    Classes by name: ``class_names == ["malignant", "benign"]`` (label 0 is malignant). The
    split is stratified and seeded (default: 426 train / 143 test). Rows are ``(N, 30)`` float32
    in original units; ``ds.schema`` states the ranges (non-negative), ``worst ≥ mean`` for the
    ten measurements and area ≈ π·radius², perimeter ≈ 2π·radius (tolerances measured on the
    data), with each feature's scale = its standard deviation on the training split.

    >>> ds = breast_cancer("test"); ds.schema.feature("mean_radius").unit   # 'image units'
    """
    _check_split(split)
    x, y = _breast_cancer_arrays()
    schema = breast_cancer_schema()
    schema.check_data(torch.tensor(x), what="breast cancer data")
    return _make(x, y, schema, split, seed, test_size, "breast-cancer")


def read_csv(
    path: str | Path,
    schema: Schema | str | Path,
    split: str = "all",
    *,
    test_size: float | int = 0.25,
    seed: int = 0,
) -> TabularDataset:
    """A labelled table from a CSV file with a header row, described by ``schema`` (a
    :class:`Schema` or a YAML / JSON schema file).

    Every feature of the schema must be a column (matched by name; extra columns are ignored);
    the label column is the schema's ``target`` and holds class names from ``classes`` or
    integer labels. The data is checked against the schema: a value outside its stated range,
    an unknown or missing column, a non-numeric cell raise errors naming the feature and row.
    ``split``: ``"all"`` (default), or ``"train"`` / ``"test"`` of a stratified, seeded split.
    """
    _check_split(split)
    if not isinstance(schema, Schema):
        schema = Schema.from_file(schema)
    if schema.target is None or schema.classes is None:
        raise SchemaError(
            "a schema for a labelled CSV needs 'target' (the label column) and 'classes' "
            "(the class names in label order)"
        )
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"CSV file not found: {p}")
    with open(p, newline="", encoding="utf-8") as f:
        rows = list(_csv.reader(f))
    if not rows:
        raise DatasetError(f"{p}: empty file (expected a header row)")
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    if not body:
        raise DatasetError(f"{p}: no data rows after the header")
    col = {h: i for i, h in enumerate(header)}
    missing = [n for n in schema.names if n not in col]
    if missing:
        raise SchemaError(
            f"{p}: feature {missing[0]!r} of the schema is not a column of the CSV "
            f"({len(missing)} missing); columns: {', '.join(header)}"
        )
    if schema.target not in col:
        raise SchemaError(
            f"{p}: the label column {schema.target!r} is missing; columns: {', '.join(header)}"
        )
    x = np.empty((len(body), len(schema)), dtype=np.float64)
    for j, name in enumerate(schema.names):
        c = col[name]
        for r, row in enumerate(body):
            cell = row[c].strip() if c < len(row) else ""
            try:
                x[r, j] = float(cell)
            except ValueError:
                raise SchemaError(
                    f"{p}: feature {name!r} has a non-numeric value {cell!r} in data row {r} "
                    f"(line {r + 2})"
                ) from None
    y = np.empty(len(body), dtype=np.int64)
    names = {c: i for i, c in enumerate(schema.classes)}
    t = col[schema.target]
    for r, row in enumerate(body):
        cell = row[t].strip() if t < len(row) else ""
        if cell in names:
            y[r] = names[cell]
        elif cell.lstrip("-").isdigit() and 0 <= int(cell) < len(names):
            y[r] = int(cell)
        else:
            raise SchemaError(
                f"{p}: label {cell!r} in data row {r} (line {r + 2}) is not one of the classes "
                f"{schema.classes} nor a label 0..{len(names) - 1}"
            )
    schema.check_data(torch.from_numpy(x), what=str(p))
    return _make(x, y, schema, split, seed, test_size, schema.name or p.stem)


def resolve_schema(schema: Any) -> Schema | None:
    """``schema`` as a :class:`Schema` (a Schema, a YAML/JSON file path, or None)."""
    if schema is None or isinstance(schema, Schema):
        return schema
    return Schema.from_file(schema)
