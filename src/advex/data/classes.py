"""Class names: turn what a person types (``"stop"``, ``"Speed limit (30 km/h)"``, ``"14"``) into
a class index, forgiving of case and spaces, strict about names that do not exist."""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Sequence
from typing import Any

__all__ = ["class_index", "name_key"]


def name_key(name: str) -> str:
    """The lookup form of a class name: lower case, without whitespace
    (``"Speed limit (30 km/h)"`` → ``"speedlimit(30km/h)"``)."""
    return "".join(str(name).lower().split())


def class_index(classes: Any, value: Any, *, what: str = "class") -> int:
    """The index of class ``value`` among ``classes``.

    Args:
        classes: a dataset with ``class_names`` (an :class:`~advex.data.ArrayDataset`) or the
            list of class names itself.
        value: an index (int, or a string of digits) or a class name; names are matched
            ignoring case and whitespace.
        what: what the value is, for the error message (``"--target"``, ``"source class"``).

    Raises ``ValueError`` for an index out of range or an unknown name (listing the closest
    names), ``TypeError`` for a value that is neither.

    >>> class_index(ds, "Stop"), class_index(ds, "speed limit (30 km/h)"), class_index(ds, 14)
    (14, 1, 14)
    """
    names: Sequence[str] = list(getattr(classes, "class_names", classes))
    n = len(names)
    if isinstance(value, bool):
        raise TypeError(f"{what}: a class is an index or a name, got the bool {value!r}")
    if isinstance(value, numbers.Integral):
        i = int(value)
        if not 0 <= i < n:
            raise ValueError(f"{what}: class {i} is out of range (valid classes: 0..{n - 1})")
        return i
    if not isinstance(value, str):
        raise TypeError(f"{what}: a class is an index or a name, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ValueError(f"{what}: empty class name")
    if text.lstrip("-").isdigit():
        return class_index(names, int(text), what=what)
    keys = [name_key(c) for c in names]
    key = name_key(text)
    hits = [i for i, k in enumerate(keys) if k == key]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:  # pragma: no cover - datasets have distinct names
        raise ValueError(f"{what}: {value!r} names several classes: {hits}")
    close = difflib.get_close_matches(key, keys, n=5, cutoff=0.5)
    close += [k for k in keys if key in k and k not in close][: max(0, 5 - len(close))]
    hint = (
        "closest: " + ", ".join(repr(names[keys.index(k)]) for k in close)
        if close
        else f"classes: {', '.join(repr(c) for c in names[:12])}{', ...' if n > 12 else ''}"
    )
    raise ValueError(f"{what}: unknown class name {value!r}; {hint}")
