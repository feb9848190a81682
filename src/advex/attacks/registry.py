"""The one attack registry: attacks by name, their declarations, and building them from strings.

Every attack declares itself with class attributes (see :class:`~advex.attacks.base.Attack`):
``name``, ``aliases``, ``norms``, ``black_box``, ``minimum_norm``, ``targeted_only``. The
registry holds the attack classes exported by :mod:`advex.attacks` (its ``__all__``: the
explicit list of built-in attacks, read at each lookup so that an export added later counts)
plus those passed to :func:`register` (attacks defined outside the package). Base classes are
left out: a class is an attack when it implements ``_attack``.

The CLI, the evaluation presets and ``advex list`` all read this module:

- lookups: :func:`find_attack` (name, alias or class name; case, ``-`` and ``_`` ignored),
  :func:`available_attacks`, :func:`supported_norms`, :func:`is_black_box`;
- parameters: :func:`settable_params` (the hyperparameters a string can set, with defaults),
  :func:`parse_params` (``"steps=20"`` → ``{"steps": 20}``, converted with the constructor's
  annotations), :func:`build_attack` (``name`` + ``eps``/``norm``/``seed`` + parameters).

Errors are ``ValueError`` (unknown names, bad values) or ``TypeError``.

>>> from advex.attacks.registry import build_attack, find_attack
>>> find_attack("fab-t").__name__
'FABT'
>>> pgd = build_attack("pgd", eps=0.3, norm="linf", params=["steps=20"])
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Iterable
from typing import Any

from .base import Attack

__all__ = [
    "RESERVED",
    "attack_key",
    "available_attacks",
    "build_attack",
    "convert_param",
    "declaration",
    "find_attack",
    "init_params",
    "instance_defaults",
    "is_black_box",
    "param_kinds",
    "parse_params",
    "register",
    "registry_name",
    "settable_params",
    "supported_norms",
]

#: constructor arguments set by :func:`build_attack`'s own arguments (or not settable from a
#: string), with the command-line option that sets them
RESERVED: dict[str, str] = {
    "eps": "--eps",
    "norm": "--norm",
    "seed": "--seed",
    "threat": "--eps/--norm",
    "bounds": "the dataset's bounds",
    "mask": "(not settable from the command line)",
}

_EXTRA: list[type[Attack]] = []


def attack_key(name: str) -> str:
    """The lookup form of a name: lower case, letters and digits only (``"FAB-T"`` → ``"fabt"``)."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def _is_attack(obj: Any) -> bool:
    return (
        isinstance(obj, type)
        and issubclass(obj, Attack)
        and obj is not Attack
        and not inspect.isabstract(obj)
        and getattr(obj, "_attack", None) is not Attack._attack
    )


def registry_name(cls: type) -> str:
    """The name an attack class is listed under: its ``name`` declaration, or the lower-case
    class name when ``name`` is computed per instance (APGD: ``apgd-ce``, ``apgd-t``)."""
    name = inspect.getattr_static(cls, "name", None)
    return name if isinstance(name, str) and name != Attack.name else cls.__name__.lower()


def register(cls: type[Attack]) -> type[Attack]:
    """Add an attack class defined outside :mod:`advex.attacks` to the registry (a class
    decorator). Raises ``ValueError`` when one of its names is already taken.

    >>> @register
    ... class MyAttack(Attack):
    ...     name = "my-attack"
    ...     def _attack(self, caller, x, goal, done, clean_logits): ...
    """
    if not _is_attack(cls):
        raise TypeError(f"register expects an Attack subclass implementing _attack, got {cls!r}")
    if cls in _classes():
        return cls
    taken = _names()
    clash = [n for n in _keys(cls) if n in taken]
    if clash:
        raise ValueError(
            f"cannot register {cls.__name__}: name {clash[0]!r} is taken by "
            f"{taken[clash[0]].__name__}"
        )
    _EXTRA.append(cls)
    return cls


def _classes() -> list[type[Attack]]:
    import advex.attacks as pkg

    out: list[type[Attack]] = []
    for export in getattr(pkg, "__all__", []):
        obj = getattr(pkg, export, None)
        if _is_attack(obj) and obj not in out:
            out.append(obj)
    out += [c for c in _EXTRA if c not in out]
    return out


def _keys(cls: type) -> list[str]:
    names = [registry_name(cls), cls.__name__, *getattr(cls, "aliases", ())]
    keys: list[str] = []
    for n in names:
        k = attack_key(n)
        if k and k not in keys:
            keys.append(k)
    return keys


def _names() -> dict[str, type[Attack]]:
    """Every accepted key → class (the first class to claim a key keeps it)."""
    table: dict[str, type[Attack]] = {}
    for cls in _classes():
        for k in _keys(cls):
            table.setdefault(k, cls)
    return table


def available_attacks() -> dict[str, type[Attack]]:
    """The registered attack classes by registry name, in registration order."""
    return {registry_name(cls): cls for cls in _classes()}


def find_attack(name: str | type) -> type[Attack]:
    """The attack class called ``name``: its registry name, an alias or its class name, with
    case, ``-`` and ``_`` ignored. An attack class is returned as it is.

    Raises ``ValueError`` listing the available attacks (and the closest match) when there is
    no such attack."""
    if isinstance(name, type):
        if not _is_attack(name):
            raise TypeError(f"{name.__name__} is not an attack class")
        return name
    table = _names()
    want = attack_key(name)
    if want in table:
        return table[want]
    names = sorted(available_attacks())
    close = difflib.get_close_matches(want, list(table), n=1, cutoff=0.6)
    hint = f" (did you mean {registry_name(table[close[0]])!r}?)" if close else ""
    raise ValueError(f"unknown attack {name!r}{hint}; available attacks: {', '.join(names)}")


def supported_norms(attack: str | type | Attack) -> tuple[str, ...]:
    """The norms an attack (name, class or instance) declares it supports."""
    cls = type(attack) if isinstance(attack, Attack) else find_attack(attack)
    return tuple(cls.norms)


def declaration(cls: type, attr: str) -> Any:
    """The class-level value of the declaration ``attr`` (``"minimum_norm"``, ...), or None when
    the attack computes it per instance (FAB is minimum-norm only when built without eps)."""
    value = inspect.getattr_static(cls, attr)
    return None if isinstance(value, property) else value


def is_black_box(attack: Any) -> bool:
    """Whether an attack (name, class or instance) declares that it needs no gradients. Objects
    that are not attacks (callables, wrappers) count as white-box unless they say otherwise."""
    if isinstance(attack, str):
        attack = find_attack(attack)
    return bool(getattr(attack, "black_box", False))


# ----------------------------------------------------------------------------------------------
# Constructor parameters from strings
# ----------------------------------------------------------------------------------------------


def init_params(cls: type) -> dict[str, tuple[inspect.Parameter, Any]]:
    """Keyword parameters of ``cls(...)`` with their resolved type hints, following
    ``**kwargs`` up the class hierarchy (e.g. BIM passes them on to PGD)."""
    params: dict[str, tuple[inspect.Parameter, Any]] = {}
    for klass in cls.__mro__:
        if klass in (Attack, object):
            break
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            hints = typing.get_type_hints(init)
        except Exception:
            hints = {}
        var_kw = False
        for p in list(inspect.signature(init).parameters.values())[1:]:
            if p.kind is p.VAR_KEYWORD:
                var_kw = True
            elif p.kind is not p.VAR_POSITIONAL and p.name not in params:
                params[p.name] = (p, hints.get(p.name, p.annotation))
        if not var_kw:
            break
    return params


def param_kinds(hint: Any, default: Any) -> set | None:
    """The scalar types a parameter accepts: a subset of {bool, int, float, str, None}.

    ``None`` when the parameter takes something that cannot be given as a string.
    """
    scalar = {bool, int, float, str}
    if isinstance(hint, str):  # an unresolved annotation such as "float | None"
        parts = {s.strip() for s in hint.replace("Optional[", "").rstrip("]").split("|")}
        names = {"bool": bool, "int": int, "float": float, "str": str, "None": None}
        if parts and parts <= set(names):
            return {names[s] for s in parts}
        hint = inspect.Parameter.empty
    if hint is not inspect.Parameter.empty and hint is not Any:
        origin = typing.get_origin(hint)
        if origin is typing.Union or isinstance(hint, types.UnionType):
            members = set()
            for a in typing.get_args(hint):
                if a is type(None):
                    members.add(None)
                elif a in scalar:
                    members.add(a)
                elif typing.get_origin(a) is typing.Literal:
                    members |= {type(v) for v in typing.get_args(a)}
                else:
                    return None
            return members
        if typing.get_origin(hint) is typing.Literal:
            return {type(v) for v in typing.get_args(hint)}
        if hint in scalar:
            return {hint}
        return None
    if default is inspect.Parameter.empty or default is None:
        return {int, float, bool, str, None}
    if type(default) in scalar:
        return {type(default)}
    return None


def settable_params(cls: type) -> dict[str, Any]:
    """``name -> default`` of the hyperparameters :func:`parse_params` can set for ``cls``."""
    return {
        k: p.default
        for k, (p, hint) in init_params(cls).items()
        if k not in RESERVED and param_kinds(hint, p.default) is not None
    }


_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}


def convert_param(name: str, raw: str, kinds: set) -> Any:
    """``raw`` converted to the first of ``kinds`` (see :func:`param_kinds`) it parses as:
    None (``none``/``null``), bool (``yes``/``no``/``true``/...), int, float, then str."""
    low = raw.strip().lower()
    if None in kinds and low in ("none", "null"):
        return None
    if bool in kinds and low in _TRUE | _FALSE:
        return low in _TRUE
    if int in kinds:
        try:
            return int(raw)
        except ValueError:
            pass
    if float in kinds:
        try:
            return float(raw)
        except ValueError:
            pass
    if str in kinds:
        return raw
    want = " or ".join(sorted("None" if k is None else k.__name__ for k in kinds))
    raise ValueError(f"--param {name}={raw}: expected {want}")


def parse_params(cls: str | type, items: Iterable[str]) -> dict[str, Any]:
    """Turn ``KEY=VALUE`` strings into constructor keyword arguments for ``cls``, converted with
    the constructor's annotations/defaults (int, float, bool, str, None).

    >>> parse_params("pgd", ["steps=20", "random_start=no"])
    {'steps': 20, 'random_start': False}
    """
    cls = find_attack(cls)
    params = init_params(cls)
    valid = settable_params(cls)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--param expects KEY=VALUE, got {item!r}")
        if key in RESERVED:
            raise ValueError(f"--param {key}: set it with {RESERVED[key]}, not --param")
        if key not in params:
            raise ValueError(
                f"{cls.__name__} has no parameter {key!r}; valid parameters: "
                f"{', '.join(sorted(valid)) or '(none)'}"
            )
        kinds = param_kinds(params[key][1], params[key][0].default)
        if kinds is None:
            raise ValueError(f"{cls.__name__} parameter {key!r} cannot be set from a string")
        out[key] = convert_param(key, raw, kinds)
    return out


def build_attack(
    name: str | type,
    *,
    eps: float | None = None,
    norm: str = "linf",
    seed: int | None = 0,
    params: Iterable[str] = (),
    bounds: tuple[float, float] | None = None,
) -> Attack:
    """The attack called ``name``, built with ``eps``, ``norm``, ``seed``, ``bounds`` (each
    passed only when the constructor takes it) and ``KEY=VALUE`` ``params``.

    An attack without a ``norm`` argument (EAD, L-BFGS, JSMA) keeps the one norm it measures
    in; an attack refuses a norm it does not declare (``cls.norms``). ``eps`` is an error for an
    attack without a budget: a minimum-norm attack is scored at a budget by the caller
    (``advex.evaluate.BudgetedAttack``). Raises ``ValueError`` / ``TypeError`` naming the
    attack.
    """
    cls = find_attack(name)
    kwargs = parse_params(cls, params)
    accepted = init_params(cls)
    if eps is not None and "eps" not in accepted:
        kind = "a minimum-norm attack" if cls.minimum_norm else "an attack"
        raise ValueError(f"{cls.__name__} is {kind} without a perturbation budget: drop eps")
    if eps is not None:
        kwargs["eps"] = eps
    if "norm" in accepted:
        kwargs["norm"] = norm
    if "seed" in accepted:
        kwargs["seed"] = seed
    if bounds is not None and "bounds" in accepted:
        kwargs["bounds"] = tuple(bounds)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        kind = TypeError if isinstance(err, TypeError) else ValueError
        raise kind(f"cannot build {cls.__name__}: {err}") from err


def instance_defaults(cls: type) -> dict[str, Any]:
    """:func:`settable_params` with the values an instance really uses (e.g. BIM's
    ``random_start=False``), when the attack can be built with a small eps."""
    shown = settable_params(cls)
    try:
        inst = cls(eps=0.1) if "eps" in init_params(cls) else cls()
    except Exception:
        return shown
    for k, default in shown.items():
        v = getattr(inst, k, None)
        if default is not None and isinstance(v, bool | int | float | str):
            shown[k] = v
    return shown
