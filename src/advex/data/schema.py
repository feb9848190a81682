"""Feature schemas for tabular data: what each column is, the range it lives in, and the relations
that tie columns together.

A :class:`Schema` lists :class:`Feature` objects (continuous with a range, integer, binary, one
column of a categorical one-hot group; mutable or immutable; with a name, a label for people and
a unit) and :class:`Constraint` objects (``low <= g(x) <= high`` for an expression or a
differentiable function ``g`` of some features; linear ones are recognised and projected
exactly). It checks data (:meth:`Schema.check_data`: errors name the feature, the row and the
value), reports per-row, per-constraint verdicts (:meth:`Schema.verdicts`) and reads/writes
YAML or JSON (:meth:`Schema.from_file`).

Expressions are parsed with :mod:`ast` into torch operations, never evaluated as Python: only
numbers, feature names, ``pi``, ``e``, ``+ - * / **`` and ``sqrt exp log abs min max`` are
accepted.

>>> schema = Schema.from_dict({
...     "features": [
...         {"name": "age", "type": "integer", "range": [18, 100], "mutable": False},
...         {"name": "weight", "range": [30, 250], "unit": "kg"},
...         {"name": "height", "range": [1.2, 2.2], "unit": "m"},
...     ],
...     "constraints": [{"name": "bmi", "expr": "weight / height**2", "range": [12, 60]}],
... })
>>> schema.verdicts(x).all(1)          # (B,) every row valid
"""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Constraint",
    "Expression",
    "Feature",
    "FEATURE_TYPES",
    "Schema",
    "SchemaError",
    "Verdicts",
]

FEATURE_TYPES = ("continuous", "integer", "binary", "categorical")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONSTS = {"pi": math.pi, "e": math.e}
_FUNCS: dict[str, tuple[int, Callable]] = {
    "sqrt": (1, torch.sqrt),
    "exp": (1, torch.exp),
    "log": (1, torch.log),
    "abs": (1, torch.abs),
    "min": (2, torch.minimum),
    "max": (2, torch.maximum),
}


class SchemaError(ValueError):
    """A schema is malformed, infeasible, or contradicts the data (the message names the
    feature or constraint)."""


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ------------------------------------------------------------------------------------------------
# Features
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Feature:
    """One column of a table.

    Args:
        name: identifier used in expressions and files (letters, digits, ``_``).
        type: ``"continuous"`` (default), ``"integer"``, ``"binary"`` (0/1) or
            ``"categorical"`` (one column of the one-hot group ``group``; values 0/1).
        low, high: the physical range (binary and categorical: 0 and 1).
        unit: unit for people (``"mm"``, ``"years"``; ``""`` for dimensionless).
        label: name for people (default: ``name`` with ``_`` as spaces).
        mutable: False for immutable features (sex, an already-recorded value).
        group: the one-hot group of a categorical column.
        scale: the feature's natural scale (usually its standard deviation on training data):
            the unit of the standardised budget.
    """

    name: str
    type: str = "continuous"
    low: float = -math.inf
    high: float = math.inf
    unit: str = ""
    label: str = ""
    mutable: bool = True
    group: str | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SchemaError(
                f"feature name {self.name!r} must be an identifier (letters, digits and _, not "
                "starting with a digit) so that constraints can name it; put the readable name "
                "in 'label'"
            )
        if self.name in _CONSTS or self.name in _FUNCS:
            raise SchemaError(f"feature name {self.name!r} is reserved (a constant or function)")
        if self.type not in FEATURE_TYPES:
            raise SchemaError(
                f"feature {self.name!r}: unknown type {self.type!r}; valid types: "
                f"{', '.join(FEATURE_TYPES)}"
            )
        lo, hi = float(self.low), float(self.high)
        if self.type in ("binary", "categorical"):
            if (lo, hi) not in ((0.0, 1.0), (-math.inf, math.inf)):
                raise SchemaError(f"feature {self.name!r} ({self.type}) takes values 0 and 1 only")
            lo, hi = 0.0, 1.0
        if math.isnan(lo) or math.isnan(hi) or not lo <= hi:
            raise SchemaError(
                f"feature {self.name!r}: range [{self.low}, {self.high}] is empty (low > high)"
            )
        if self.type == "integer" and math.ceil(lo) > math.floor(hi):
            raise SchemaError(f"feature {self.name!r}: integer range [{lo}, {hi}] holds no integer")
        if self.type == "categorical" and not self.group:
            raise SchemaError(f"feature {self.name!r}: a categorical column needs its 'group'")
        if self.type != "categorical" and self.group:
            raise SchemaError(f"feature {self.name!r}: only categorical columns have a group")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise SchemaError(f"feature {self.name!r}: scale must be > 0, got {self.scale}")
        object.__setattr__(self, "low", lo)
        object.__setattr__(self, "high", hi)
        object.__setattr__(self, "mutable", bool(self.mutable))
        if not self.label:
            object.__setattr__(self, "label", self.name.replace("_", " "))

    @property
    def discrete(self) -> bool:
        return self.type != "continuous"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.type in ("continuous", "integer"):
            d["range"] = [_num(self.low), _num(self.high)]
        if self.unit:
            d["unit"] = self.unit
        if self.label != self.name.replace("_", " "):
            d["label"] = self.label
        if not self.mutable:
            d["mutable"] = False
        if self.group:
            d["group"] = self.group
        if self.scale is not None:
            d["scale"] = self.scale
        return d


def _num(v: float) -> float | str:
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def _float(v: Any, what: str) -> float:
    if isinstance(v, bool):
        raise SchemaError(f"{what} must be a number, got {v!r}")
    if isinstance(v, str) and v.strip().lower() in ("inf", "+inf", "-inf", "infinity", "-infinity"):
        return float(v.strip().lower().replace("infinity", "inf"))
    try:
        f = float(v)
    except (TypeError, ValueError) as err:
        raise SchemaError(f"{what} must be a number, got {v!r}") from err
    if math.isnan(f):
        raise SchemaError(f"{what} is NaN")
    return f


# ------------------------------------------------------------------------------------------------
# Expressions
# ------------------------------------------------------------------------------------------------


class Expression:
    """A formula over feature names, compiled to torch operations (differentiable).

    ``Expression("area_mean / (pi * radius_mean**2)", names)`` evaluates on a ``(B, D)``
    tensor whose columns are ``names`` and returns ``(B,)``. :attr:`linear` is
    ``(coefficients, constant)`` when the formula is affine in the features, else ``None``.
    """

    def __init__(self, text: str, names: Sequence[str], *, owner: str = "constraint") -> None:
        if not isinstance(text, str) or not text.strip():
            raise SchemaError(f"{owner}: expression must be a non-empty string, got {text!r}")
        self.text = text.strip()
        self._index = {n: i for i, n in enumerate(names)}
        self._owner = owner
        try:
            tree = ast.parse(self.text, mode="eval")
        except SyntaxError as err:
            raise SchemaError(f"{owner}: cannot parse expression {self.text!r}: {err.msg}") from err
        self.features: tuple[str, ...] = ()
        used: list[str] = []
        self._fn = self._compile(tree.body, used)
        self.features = tuple(dict.fromkeys(used))
        self.linear = _linear(tree.body, self._index)

    def _compile(self, node: ast.AST, used: list[str]) -> Callable[[torch.Tensor], Any]:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            if isinstance(node.value, bool):
                raise SchemaError(f"{self._owner}: booleans are not numbers in {self.text!r}")
            v = float(node.value)
            return lambda X: v
        if isinstance(node, ast.Name):
            if node.id in self._index:
                i = self._index[node.id]
                used.append(node.id)
                return lambda X: X[:, i]
            if node.id in _CONSTS:
                v = _CONSTS[node.id]
                return lambda X: v
            raise SchemaError(
                f"{self._owner}: unknown feature {node.id!r} in {self.text!r}"
                f"{_suggest(node.id, self._index)}; known features: {', '.join(self._index)}"
            )
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            f = self._compile(node.operand, used)
            if isinstance(node.op, ast.USub):
                return lambda X: -f(X)
            return f
        if isinstance(node, ast.BinOp):
            a, b = self._compile(node.left, used), self._compile(node.right, used)
            op = node.op
            if isinstance(op, ast.Add):
                return lambda X: a(X) + b(X)
            if isinstance(op, ast.Sub):
                return lambda X: a(X) - b(X)
            if isinstance(op, ast.Mult):
                return lambda X: a(X) * b(X)
            if isinstance(op, ast.Div):
                return lambda X: a(X) / b(X)
            if isinstance(op, ast.Pow):
                return lambda X: a(X) ** b(X)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            name = node.func.id
            if name in _FUNCS:
                arity, fn = _FUNCS[name]
                if len(node.args) != arity:
                    raise SchemaError(
                        f"{self._owner}: {name}() takes {arity} argument(s) in {self.text!r}"
                    )
                args = [self._compile(a, used) for a in node.args]

                def call(X, fn=fn, args=args):
                    vals = [a(X) for a in args]
                    ref = next((v for v in vals if isinstance(v, torch.Tensor)), None)
                    vals = [torch.as_tensor(v, dtype=X.dtype, device=X.device) for v in vals]
                    out = fn(*vals)
                    return out if ref is not None else float(out)

                return call
            raise SchemaError(
                f"{self._owner}: unknown function {name!r} in {self.text!r}; allowed: "
                f"{', '.join(_FUNCS)}"
            )
        raise SchemaError(
            f"{self._owner}: {type(node).__name__} is not allowed in {self.text!r} (numbers, "
            f"feature names, + - * / ** and {', '.join(_FUNCS)} only)"
        )

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        out = self._fn(X)
        if not isinstance(out, torch.Tensor):
            return torch.full((X.shape[0],), float(out), dtype=X.dtype, device=X.device)
        return out

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


def _linear(node: ast.AST, index: dict[str, int]) -> tuple[dict[str, float], float] | None:
    """``(coefficients, constant)`` when ``node`` is affine in the features, else None."""
    if isinstance(node, ast.Constant):
        return {}, float(node.value)
    if isinstance(node, ast.Name):
        if node.id in index:
            return {node.id: 1.0}, 0.0
        return {}, _CONSTS[node.id]
    if isinstance(node, ast.UnaryOp):
        r = _linear(node.operand, index)
        if r is None:
            return None
        s = -1.0 if isinstance(node.op, ast.USub) else 1.0
        return {k: s * v for k, v in r[0].items()}, s * r[1]
    if isinstance(node, ast.BinOp):
        a, b = _linear(node.left, index), _linear(node.right, index)
        if a is None or b is None:
            return None
        if isinstance(node.op, ast.Add | ast.Sub):
            s = 1.0 if isinstance(node.op, ast.Add) else -1.0
            coef = dict(a[0])
            for k, v in b[0].items():
                coef[k] = coef.get(k, 0.0) + s * v
            return coef, a[1] + s * b[1]
        if isinstance(node.op, ast.Mult):
            if not a[0]:
                return {k: a[1] * v for k, v in b[0].items()}, a[1] * b[1]
            if not b[0]:
                return {k: b[1] * v for k, v in a[0].items()}, b[1] * a[1]
            return None
        if isinstance(node.op, ast.Div) and not b[0] and b[1] != 0:
            return {k: v / b[1] for k, v in a[0].items()}, a[1] / b[1]
        if isinstance(node.op, ast.Pow) and not a[0] and not b[0]:
            return {}, a[1] ** b[1]
        return None
    if isinstance(node, ast.Call):
        args = [_linear(a, index) for a in node.args]
        if all(r is not None and not r[0] for r in args):
            vals = [torch.tensor(r[1], dtype=torch.float64) for r in args]  # type: ignore[index]
            return {}, float(_FUNCS[node.func.id][1](*vals))  # type: ignore[attr-defined]
        return None
    return None


# ------------------------------------------------------------------------------------------------
# Constraints
# ------------------------------------------------------------------------------------------------


class Constraint:
    """A relation ``low <= g(x) <= high`` between features.

    ``g`` is an expression (``expr="worst_radius - mean_radius"``, parsed safely; affine ones
    are *linear* constraints, projected exactly) or a differentiable Python function ``fn``
    whose parameters are feature names (``fn=lambda weight, height: weight / height**2``; or
    list them in ``features=``). One of ``low`` / ``high`` may be omitted. The interval is the
    tolerance of a non-linear relation: ``area ≈ π r²`` within 8% is ``expr="area / (pi *
    radius**2)", low=0.92, high=1.08``.

    >>> Constraint("worst >= mean", expr="worst_radius - mean_radius", low=0)
    >>> Constraint("bmi", fn=lambda weight, height: weight / height**2, low=12, high=60)
    """

    def __init__(
        self,
        name: str,
        expr: str | None = None,
        *,
        fn: Callable[..., torch.Tensor] | None = None,
        features: Sequence[str] | None = None,
        low: float | None = None,
        high: float | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise SchemaError(f"a constraint needs a non-empty name, got {name!r}")
        self.name = name.strip()
        if (expr is None) == (fn is None):
            raise SchemaError(f"constraint {self.name!r}: give exactly one of expr= or fn=")
        if fn is not None and not callable(fn):
            raise SchemaError(f"constraint {self.name!r}: fn must be callable")
        self.expr = expr
        self.fn = fn
        self._features = None if features is None else tuple(features)
        lo = -math.inf if low is None else _float(low, f"constraint {self.name!r}: low")
        hi = math.inf if high is None else _float(high, f"constraint {self.name!r}: high")
        if lo == -math.inf and hi == math.inf:
            raise SchemaError(f"constraint {self.name!r}: give low=, high= or both")
        if not lo <= hi:
            raise SchemaError(
                f"constraint {self.name!r}: infeasible on its own (low {lo} > high {hi})"
            )
        self.low, self.high = lo, hi
        self._bound: Callable | None = None
        self.features: tuple[str, ...] = ()
        self.linear: tuple[dict[str, float], float] | None = None

    def bind(self, names: Sequence[str]) -> Constraint:
        """A copy compiled against the columns ``names`` (checks every feature exists)."""
        new = Constraint.__new__(Constraint)
        new.__dict__.update(self.__dict__)
        owner = f"constraint {self.name!r}"
        if self.expr is not None:
            e = Expression(self.expr, names, owner=owner)
            new._bound, new.features, new.linear = e, e.features, e.linear
            return new
        feats = self._features
        if feats is None:
            try:
                feats = tuple(inspect.signature(self.fn).parameters)
            except (TypeError, ValueError) as err:
                raise SchemaError(f"{owner}: pass features= (fn has no signature)") from err
        index = {n: i for i, n in enumerate(names)}
        for f in feats:
            if f not in index:
                raise SchemaError(
                    f"{owner}: unknown feature {f!r}{_suggest(f, index)}; known features: "
                    f"{', '.join(names)}"
                )
        cols = [index[f] for f in feats]
        fn = self.fn

        def call(X: torch.Tensor) -> torch.Tensor:
            out = fn(*[X[:, i] for i in cols])
            return torch.as_tensor(out, dtype=X.dtype, device=X.device).expand(X.shape[0])

        new._bound, new.features = call, tuple(feats)
        return new

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        """``g(X)`` per row, shape ``(B,)`` (the constraint must be bound to a schema)."""
        if self._bound is None:
            raise RuntimeError(f"constraint {self.name!r} is not bound to a schema")
        return self._bound(X)

    def violation(self, X: torch.Tensor) -> torch.Tensor:
        """How far each row is outside ``[low, high]`` (0 inside), shape ``(B,)``."""
        g = self(X)
        return (self.low - g).clamp_min(0) + (g - self.high).clamp_min(0)

    def tolerance(self, X: torch.Tensor, tol: float) -> torch.Tensor:
        """The per-row slack of a check: ``tol`` relative to the size of the terms (so
        float32 rounding of values in the thousands does not count as a violation)."""
        if self.linear is not None:
            coef, const = self.linear
            mag = torch.zeros(X.shape[0], dtype=X.dtype, device=X.device) + abs(const)
            for _name, c in coef.items():
                mag = mag + abs(c) * X[:, self._col(_name)].abs()
        else:  # a relation that is inf or NaN (e.g. a ratio over 0) is a violation, not slack
            mag = self(X).abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        return tol * (1.0 + mag)

    def _col(self, name: str) -> int:
        return self._bound._index[name]  # type: ignore[union-attr]

    @property
    def kind(self) -> str:
        return "linear" if self.linear is not None else "relation"

    def to_dict(self) -> dict[str, Any]:
        if self.expr is None:
            raise SchemaError(
                f"constraint {self.name!r} is a Python function: only expression constraints "
                "can be written to a file"
            )
        d: dict[str, Any] = {"name": self.name, "expr": self.expr}
        if self.low > -math.inf:
            d["low"] = self.low
        if self.high < math.inf:
            d["high"] = self.high
        return d

    def __repr__(self) -> str:
        g = self.expr if self.expr is not None else getattr(self.fn, "__name__", "fn")
        return f"Constraint({self.name!r}: {self.low} <= {g} <= {self.high})"


# ------------------------------------------------------------------------------------------------
# Verdicts
# ------------------------------------------------------------------------------------------------


@dataclass
class Verdicts:
    """Per-row, per-check booleans: ``ok[i, j]`` is True when row ``i`` passes check
    ``names[j]`` (``range:<feature>``, ``integer:<feature>``, ``one-hot:<group>``, a constraint
    name, and for a threat ``budget`` and ``immutable:<feature>``)."""

    names: list[str]
    ok: torch.Tensor  # (B, C) bool

    def all(self) -> torch.Tensor:
        """``(B,)``: the row passes every check."""
        return self.ok.all(1)

    def failed(self, row: int) -> list[str]:
        """Names of the checks row ``row`` fails."""
        return [n for n, v in zip(self.names, self.ok[row].tolist(), strict=True) if not v]

    def rates(self) -> dict[str, float]:
        """Share of rows passing each check."""
        r = self.ok.float().mean(0).tolist() if self.ok.shape[0] else [1.0] * len(self.names)
        return dict(zip(self.names, r, strict=True))

    def summary(self) -> dict[str, Any]:
        """JSON-ready: rows, rows passing everything, and the checks some row fails."""
        n = int(self.ok.shape[0])
        return {
            "rows": n,
            "rows_valid": int(self.all().sum()),
            "rate": float(self.all().float().mean()) if n else 1.0,
            "failing_checks": {k: v for k, v in self.rates().items() if v < 1.0},
        }


# ------------------------------------------------------------------------------------------------
# The schema
# ------------------------------------------------------------------------------------------------


@dataclass
class Schema:
    """The columns of a table and the relations between them.

    Args:
        features: the columns, in order (a row is a ``(D,)`` vector in this order).
        constraints: :class:`Constraint` objects over the features' names.
        classes: names of the label's classes, in label order (``["malignant", "benign"]``).
        target: the label column's name in CSV files.
        name: a short name for reports.

    Raises :class:`SchemaError` when names repeat, a constraint names an unknown feature, or the
    linear constraints and ranges admit no point at all (naming the constraints in conflict).
    """

    features: list[Feature]
    constraints: list[Constraint] = field(default_factory=list)
    classes: list[str] | None = None
    target: str | None = None
    name: str = "table"

    def __post_init__(self) -> None:
        self.features = [f if isinstance(f, Feature) else _feature(f) for f in self.features]
        if not self.features:
            raise SchemaError("a schema needs at least one feature")
        seen: set[str] = set()
        for f in self.features:
            if f.name in seen:
                raise SchemaError(f"feature {f.name!r} is listed twice")
            seen.add(f.name)
        if self.target is not None and self.target in seen:
            raise SchemaError(f"the label column {self.target!r} is also listed as a feature")
        self.groups: dict[str, list[int]] = {}
        for i, f in enumerate(self.features):
            if f.group:
                self.groups.setdefault(f.group, []).append(i)
        for g, cols in self.groups.items():
            mut = {self.features[i].mutable for i in cols}
            if len(mut) > 1:
                raise SchemaError(
                    f"one-hot group {g!r}: its columns must be all mutable or all immutable"
                )
        names = self.names
        cons = []
        for c in self.constraints:
            if not isinstance(c, Constraint):
                c = _constraint(c)
            if c.name in {k.name for k in cons}:
                raise SchemaError(f"constraint {c.name!r} is listed twice")
            cons.append(c.bind(names))
        self.constraints = cons
        if self.classes is not None:
            self.classes = [str(c) for c in self.classes]
            if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
                raise SchemaError(f"classes must be >= 2 distinct names, got {self.classes}")
        self._check_feasible()

    # -- columns ----------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def __len__(self) -> int:
        return len(self.features)

    def index(self, name: str) -> int:
        """Column of feature ``name`` (an error naming close matches when unknown)."""
        for i, f in enumerate(self.features):
            if f.name == name:
                return i
        raise SchemaError(
            f"unknown feature {name!r}{_suggest(name, self.names)}; known features: "
            f"{', '.join(self.names)}"
        )

    def feature(self, name: str) -> Feature:
        return self.features[self.index(name)]

    def _vec(self, values: Iterable[float], like: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.tensor(list(values), dtype=torch.float64)
        if like is not None:
            t = t.to(device=like.device, dtype=like.dtype)
        return t

    def low(self, like: torch.Tensor | None = None) -> torch.Tensor:
        return self._vec((f.low for f in self.features), like)

    def high(self, like: torch.Tensor | None = None) -> torch.Tensor:
        return self._vec((f.high for f in self.features), like)

    def mutable(self, device=None) -> torch.Tensor:
        return torch.tensor([f.mutable for f in self.features], device=device)

    def integral(self, device=None) -> torch.Tensor:
        """Columns that must hold whole numbers (integer and binary)."""
        return torch.tensor([f.type in ("integer", "binary") for f in self.features], device=device)

    def continuous(self, device=None) -> torch.Tensor:
        return torch.tensor([f.type == "continuous" for f in self.features], device=device)

    def scales(self) -> list[float | None]:
        return [f.scale for f in self.features]

    def with_scales(self, scale: Sequence[float] | torch.Tensor) -> Schema:
        """A copy whose features carry ``scale`` (e.g. the training data's standard
        deviations, :meth:`fit_scales`)."""
        s = [float(v) for v in torch.as_tensor(scale).reshape(-1).tolist()]
        if len(s) != len(self):
            raise SchemaError(f"scale has {len(s)} values for {len(self)} features")
        feats = [_replace(f, scale=v) for f, v in zip(self.features, s, strict=True)]
        return self._copy(features=feats)

    def fit_scales(self, x: torch.Tensor) -> Schema:
        """A copy with each feature's scale set to its standard deviation in ``x`` (``(N, D)``;
        a constant column gets 1)."""
        x = self._as_rows(x)
        s = x.double().std(0, unbiased=False) if x.shape[0] > 1 else torch.ones(len(self))
        s = torch.where(s > 0, s, torch.ones_like(s))
        return self.with_scales(s)

    def _copy(self, **kw) -> Schema:
        d = {
            "features": self.features,
            "constraints": self.constraints,
            "classes": self.classes,
            "target": self.target,
            "name": self.name,
        }
        d.update(kw)
        return Schema(**d)

    # -- checks ---------------------------------------------------------------------------------
    def _as_rows(self, x: Any, what: str = "x") -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor of shape (N, {len(self)})")
        if x.dim() != 2 or x.shape[1] != len(self):
            raise SchemaError(
                f"{what} has shape {tuple(x.shape)} but the schema {self.name!r} has "
                f"{len(self)} features: expected (N, {len(self)})"
            )
        return x

    def verdicts(self, x: torch.Tensor, tol: float = 1e-6) -> Verdicts:
        """Every check of the schema on every row of ``x`` ``(N, D)``: ranges, integrality,
        one-hot groups and each constraint (evaluated in float64)."""
        x = self._as_rows(x).detach().double()
        names: list[str] = []
        cols: list[torch.Tensor] = []
        lo, hi = self.low(x), self.high(x)
        in_range = (x >= lo - tol * (1 + lo.abs().nan_to_num(posinf=0, neginf=0))) & (
            x <= hi + tol * (1 + hi.abs().nan_to_num(posinf=0, neginf=0))
        )
        for j, f in enumerate(self.features):
            names.append(f"range:{f.name}")
            cols.append(in_range[:, j])
            if f.type in ("integer", "binary"):
                names.append(f"integer:{f.name}")
                cols.append((x[:, j] - x[:, j].round()).abs() <= tol)
        for g, idx in self.groups.items():
            block = x[:, idx]
            names.append(f"one-hot:{g}")
            cols.append(
                ((block - block.round()).abs() <= tol).all(1)
                & ((block.sum(1) - 1).abs() <= tol)
                & ((block >= -tol) & (block <= 1 + tol)).all(1)
            )
        for c in self.constraints:
            names.append(c.name)
            with torch.no_grad():
                v = c.violation(x)
                cols.append(torch.nan_to_num(v, nan=math.inf) <= c.tolerance(x, tol))
        ok = torch.stack(cols, 1) if cols else torch.ones(x.shape[0], 0, dtype=torch.bool)
        return Verdicts(names, ok)

    def check_data(self, x: Any, what: str = "data", tol: float = 1e-6) -> None:
        """Raise :class:`SchemaError` when ``x`` contradicts the schema: the message names the
        feature (or constraint), the first offending row and its value."""
        x = self._as_rows(x, what)
        if not bool(torch.isfinite(x).all()):
            r, j = (~torch.isfinite(x)).nonzero()[0].tolist()
            raise SchemaError(
                f"{what}: feature {self.names[j]!r} is NaN or inf in row {r}: fill or drop "
                "missing values first"
            )
        v = self.verdicts(x, tol)
        bad = ~v.ok
        if not bool(bad.any()):
            return
        j = int(bad.any(0).nonzero()[0])
        rows = bad[:, j].nonzero().squeeze(1)
        r = int(rows[0])
        check = v.names[j]
        xd = x.detach().double()
        kind, _, name = check.partition(":")
        if kind == "range" and name:
            f = self.feature(name)
            col = xd[:, self.index(name)]
            raise SchemaError(
                f"{what} contradicts the schema: feature {name!r} has value {float(col[r]):.6g} "
                f"in row {r}, outside its stated range [{f.low:g}, {f.high:g}] "
                f"({int(rows.numel())} row(s); observed range [{float(col.min()):.6g}, "
                f"{float(col.max()):.6g}]): fix the data or widen the range in the schema"
            )
        if kind == "integer" and name:
            raise SchemaError(
                f"{what} contradicts the schema: feature {name!r} is declared "
                f"{self.feature(name).type} but row {r} holds {float(xd[r, self.index(name)]):.6g}"
            )
        if kind == "one-hot" and name:
            vals = xd[r, self.groups[name]].tolist()
            raise SchemaError(
                f"{what} contradicts the schema: one-hot group {name!r} (features "
                f"{', '.join(self.names[i] for i in self.groups[name])}) is not one-hot in row "
                f"{r}: {vals}"
            )
        c = next(c for c in self.constraints if c.name == check)
        g = float(c(xd[r : r + 1])[0])
        raise SchemaError(
            f"{what} contradicts the schema: constraint {c.name!r} (features "
            f"{', '.join(c.features)}) requires {c.low:g} <= g <= {c.high:g} but row {r} has "
            f"g = {g:.6g} ({int(rows.numel())} row(s))"
        )

    # -- feasibility ----------------------------------------------------------------------------
    def _check_feasible(self) -> None:
        """Raise when the ranges, one-hot groups and linear constraints admit no point (an LP);
        the message names a smallest conflicting set of constraints and their features."""
        lin = [c for c in self.constraints if c.linear is not None]
        for c in self.constraints:  # interval check of each constraint alone over the box
            if c.linear is None:
                continue
            lo, hi = _interval(c, self)
            if hi < c.low - 1e-9 * (1 + abs(c.low)) or lo > c.high + 1e-9 * (1 + abs(c.high)):
                raise SchemaError(
                    f"infeasible constraint set: constraint {c.name!r} needs {c.low:g} <= g <= "
                    f"{c.high:g} but g can only range over [{lo:g}, {hi:g}] given the ranges of "
                    f"features {', '.join(c.features)}"
                )
        if len(lin) < 2:
            return
        if _lp_feasible(self, lin):
            return
        core = list(lin)
        for c in list(lin):
            trial = [k for k in core if k is not c]
            if not _lp_feasible(self, trial):
                core = trial
        feats = sorted({f for c in core for f in c.features})
        raise SchemaError(
            "infeasible constraint set: constraints "
            + ", ".join(repr(c.name) for c in core)
            + f" cannot all hold within the ranges of features {', '.join(feats)}"
        )

    # -- files ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.target is not None:
            d["target"] = self.target
        if self.classes is not None:
            d["classes"] = list(self.classes)
        d["features"] = [f.to_dict() for f in self.features]
        d["constraints"] = [c.to_dict() for c in self.constraints]
        return d

    def save(self, path: str | Path) -> Path:
        """Write the schema as JSON (``.json``) or YAML (``.yaml`` / ``.yml``)."""
        p = Path(path)
        d = self.to_dict()
        if p.suffix.lower() in (".yaml", ".yml"):
            yaml = _yaml()
            text = yaml.safe_dump(d, sort_keys=False)
        else:
            text = json.dumps(d, indent=1) + "\n"
        p.write_text(text, encoding="utf-8")
        return p

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "schema") -> Schema:
        """A schema from a dict (the file format: ``features``, ``constraints``, ``classes``,
        ``target``, ``name``)."""
        if not isinstance(d, dict):
            raise SchemaError(f"{source}: a schema is a mapping, got {type(d).__name__}")
        unknown = set(d) - {"features", "constraints", "classes", "target", "name"}
        if unknown:
            raise SchemaError(
                f"{source}: unknown key(s) {sorted(unknown)}; valid keys: features, constraints, "
                "classes, target, name"
            )
        feats = d.get("features")
        if not isinstance(feats, list) or not feats:
            raise SchemaError(f"{source}: 'features' must be a non-empty list")
        classes = d.get("classes")
        if isinstance(classes, list) and any(isinstance(c, bool) for c in classes):
            raise SchemaError(
                f"{source}: classes {classes} hold booleans (YAML reads yes/no/true/false as "
                "booleans): quote the class names, e.g. ['no', 'yes']"
            )
        cons = d.get("constraints") or []
        if not isinstance(cons, list):
            raise SchemaError(f"{source}: 'constraints' must be a list")
        return cls(
            features=[_feature(f) for f in feats],
            constraints=[_constraint(c) for c in cons],
            classes=d.get("classes"),
            target=d.get("target"),
            name=str(d.get("name", "table")),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Schema:
        """Read a schema from a YAML (``.yaml`` / ``.yml``) or JSON file."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"schema file not found: {p}")
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() in (".yaml", ".yml"):
            yaml = _yaml()
            try:
                d = yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise SchemaError(f"{p}: not valid YAML: {err}") from err
        else:
            try:
                d = json.loads(text)
            except json.JSONDecodeError as err:
                raise SchemaError(f"{p}: not valid JSON: {err}") from err
        return cls.from_dict(d, source=str(p))


def _yaml():
    try:
        import yaml
    except ImportError as err:  # pragma: no cover - PyYAML is a dependency of the tabular extra
        raise ImportError("YAML schema files need PyYAML: pip install pyyaml") from err
    return yaml


def _replace(f: Feature, **kw) -> Feature:
    d = {k: getattr(f, k) for k in Feature.__dataclass_fields__}
    d.update(kw)
    return Feature(**d)


_FEATURE_KEYS = {
    "name",
    "type",
    "range",
    "low",
    "high",
    "unit",
    "label",
    "mutable",
    "group",
    "scale",
}


def _feature(d: Any) -> Feature:
    if isinstance(d, Feature):
        return d
    if not isinstance(d, dict) or "name" not in d:
        raise SchemaError(f"each feature is a mapping with a 'name', got {d!r}")
    name = d["name"]
    unknown = set(d) - _FEATURE_KEYS
    if unknown:
        raise SchemaError(
            f"feature {name!r}: unknown key(s) {sorted(unknown)}; valid keys: "
            f"{', '.join(sorted(_FEATURE_KEYS))}"
        )
    low, high = d.get("low", -math.inf), d.get("high", math.inf)
    if "range" in d:
        r = d["range"]
        if not isinstance(r, list | tuple) or len(r) != 2:
            raise SchemaError(f"feature {name!r}: range must be [low, high], got {r!r}")
        low, high = r
    mutable = d.get("mutable", True)
    if not isinstance(mutable, bool):
        raise SchemaError(f"feature {name!r}: mutable must be true or false, got {mutable!r}")
    scale = d.get("scale")
    return Feature(
        name=name,
        type=str(d.get("type", "continuous")),
        low=_float(low, f"feature {name!r}: low"),
        high=_float(high, f"feature {name!r}: high"),
        unit=str(d.get("unit", "")),
        label=str(d.get("label", "")),
        mutable=mutable,
        group=d.get("group"),
        scale=None if scale is None else _float(scale, f"feature {name!r}: scale"),
    )


def _constraint(d: Any) -> Constraint:
    if isinstance(d, Constraint):
        return d
    if not isinstance(d, dict) or "expr" not in d:
        raise SchemaError(f"each constraint is a mapping with 'name' and 'expr', got {d!r}")
    unknown = set(d) - {"name", "expr", "low", "high", "range"}
    if unknown:
        raise SchemaError(
            f"constraint {d.get('name')!r}: unknown key(s) {sorted(unknown)}; valid keys: name, "
            "expr, low, high, range"
        )
    low, high = d.get("low"), d.get("high")
    if "range" in d:
        r = d["range"]
        if not isinstance(r, list | tuple) or len(r) != 2:
            raise SchemaError(f"constraint {d.get('name')!r}: range must be [low, high]")
        low, high = r
    return Constraint(str(d.get("name", d["expr"])), str(d["expr"]), low=low, high=high)


def _interval(c: Constraint, schema: Schema) -> tuple[float, float]:
    """Range of a linear constraint's expression over the features' box."""
    coef, const = c.linear  # type: ignore[misc]
    lo = hi = const
    for name, a in coef.items():
        f = schema.feature(name)
        ends = (a * f.low, a * f.high) if a else (0.0, 0.0)
        ends = tuple(0.0 if math.isnan(e) else e for e in ends)
        lo += min(ends)
        hi += max(ends)
    return lo, hi


def _lp_feasible(schema: Schema, cons: list[Constraint]) -> bool:
    """Whether the box, one-hot sums and ``cons`` (linear) admit a point (scipy's HiGHS)."""
    import numpy as np
    from scipy.optimize import linprog

    n = len(schema)
    rows, rhs, eq_rows, eq_rhs = [], [], [], []
    for c in cons:
        coef, const = c.linear  # type: ignore[misc]
        a = np.zeros(n)
        for name, v in coef.items():
            a[schema.index(name)] += v
        if c.high < math.inf:
            rows.append(a)
            rhs.append(c.high - const)
        if c.low > -math.inf:
            rows.append(-a)
            rhs.append(const - c.low)
    for idx in schema.groups.values():
        a = np.zeros(n)
        a[idx] = 1.0
        eq_rows.append(a)
        eq_rhs.append(1.0)
    bounds = [
        (None if not math.isfinite(f.low) else f.low, None if not math.isfinite(f.high) else f.high)
        for f in schema.features
    ]
    res = linprog(
        np.zeros(n),
        A_ub=np.array(rows) if rows else None,
        b_ub=np.array(rhs) if rows else None,
        A_eq=np.array(eq_rows) if eq_rows else None,
        b_eq=np.array(eq_rhs) if eq_rows else None,
        bounds=bounds,
        method="highs",
    )
    return res.status != 2  # 2 = infeasible
