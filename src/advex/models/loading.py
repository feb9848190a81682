"""Loading models from files without ever running code from them.

:func:`load` builds a model from ``package.module:factory`` (your code, imported by name) plus
optional weights, or reads a ``torch.export`` program (``.pt2``). :func:`load_weights` fills a
model from ``.safetensors`` or from ``.pt``/``.pth``/``.bin``/``.ckpt`` read with
``torch.load(weights_only=True)``. Nothing read from a file is ever unpickled as arbitrary Python
objects or executed: a ``.pt2`` archive is checked entry by entry before torch reads it, every
pickle inside it is read weights-only, and its graph may call only torch operators.

Every failure is a :class:`ModelLoadError` (a ``ValueError``) whose message names the file and
the problem; :class:`ModelSpecError` (a subclass) means the request itself is wrong (no such
file, unknown suffix, malformed ``module:factory``).

Example::

    import advex

    model = advex.models.load("mypkg.nets:make_cnn", weights="cnn.safetensors")
    model = advex.models.load("cnn.pt2", normalize=([0.1307], [0.3081]))
    model = advex.models.load("cnn.onnx")              # ONNX Runtime, counts queries
    model = advex.models.load("sklearn:clf.skops")     # scikit-learn via skops, no pickle
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import json
import os
import pickle
import re
import threading
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "ExportedModel",
    "ModelLoadError",
    "ModelSpecError",
    "WEIGHT_SUFFIXES",
    "load",
    "load_exported",
    "load_weights",
    "read_state_dict",
]

#: File suffixes :func:`load_weights` reads (``.safetensors``, or weights-only ``torch.load``).
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_STATE_KEYS = ("state_dict", "model_state_dict", "model")


class ModelLoadError(ValueError):
    """A model or weights file cannot be used: corrupt, truncated, of the wrong architecture, or
    refused because it holds something other than tensors. The message names the file."""


class ModelSpecError(ModelLoadError):
    """The request is wrong: no such file, unknown suffix, malformed ``module:factory``."""


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------


def load(
    spec: str | os.PathLike | nn.Module,
    weights: str | os.PathLike | None = None,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
) -> nn.Module:
    """An eval-mode model from ``package.module:factory`` (+ ``weights``) or a ``.pt2`` program.

    Arguments:
        spec: ``"package.module:factory"`` (the module is imported and ``factory()`` called:
            that is your code, by name), the path of a ``torch.export`` program saved with
            ``torch.export.save`` (``*.pt2``), or an ``nn.Module`` used as is (so that
            ``normalize`` can be applied to a model obtained elsewhere, e.g. from the zoo).
        weights: a state dict for the factory's model, see :func:`load_weights`. Not allowed
            with a ``.pt2`` program (it carries its weights).
        normalize: ``(mean, std)`` sequences (one value per channel, or one for all); the model
            becomes ``nn.Sequential(Normalize(mean, std), model)`` so attacks work in input space.

    Returns:
        The model in eval mode. Zoo names are not handled here: use :func:`advex.zoo.load`.

    Raises:
        ModelSpecError: malformed spec, missing file, unknown suffix, bad ``normalize``.
        ModelLoadError: the file cannot be used (corrupt, wrong architecture, refused content).

    Example::

        model = advex.models.load("mypkg.nets:make_cnn", weights="cnn.safetensors")
    """
    if isinstance(spec, nn.Module):
        model = spec
        if weights is not None:
            load_weights(model, weights)
    elif not isinstance(spec, (str, os.PathLike)):
        raise ModelSpecError(
            f"model spec must be 'package.module:factory', a .pt2 path or an nn.Module, "
            f"got {type(spec).__name__}"
        )
    elif (adapter_path := _adapter_path(spec)) is not None:
        # ONNX Runtime / scikit-learn (skops) files: adapters that count queries
        if weights is not None:
            raise ModelSpecError(
                f"weights go with a package.module:factory model, not with {adapter_path.name} "
                "(it carries its own weights)"
            )
        from .adapters import load_onnx, load_sklearn

        if adapter_path.suffix.lower() == ".onnx":
            model = load_onnx(adapter_path)
        else:
            model = load_sklearn(adapter_path)
    elif str(spec).lower().endswith(".pt2"):
        if weights is not None:
            raise ModelSpecError(
                "weights go with a package.module:factory model, not with a .pt2 program "
                "(it carries its own weights)"
            )
        model = load_exported(spec)
    elif isinstance(spec, str) and ":" in spec and not Path(spec).exists():
        model = _from_factory(spec)
        if weights is not None:
            load_weights(model, weights)
    else:
        raise ModelSpecError(
            f"cannot load model {str(spec)!r}: expected 'package.module:factory', a "
            "torch.export program '*.pt2', an ONNX model '*.onnx' or a scikit-learn model "
            "'sklearn:model.skops' (zoo names and model directories: advex.zoo.load)"
        )
    if normalize is not None:
        model = _normalized(model, normalize)
    return model.eval()


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Fill ``model`` with the state dict in ``path`` (strict: every key and shape must match).

    ``.safetensors`` is read with safetensors; ``.pt``/``.pth``/``.bin``/``.ckpt`` with
    ``torch.load(weights_only=True)``, which refuses any pickled Python object other than
    tensors and plain containers. A checkpoint dict holding the weights under ``state_dict``,
    ``model_state_dict`` or ``model`` is unwrapped.

    Returns ``model``. Raises :class:`ModelLoadError` naming the file (and, for a wrong
    architecture, the first missing/unexpected keys and mismatching shapes).
    """
    p = Path(path).expanduser()
    state = read_state_dict(p)
    _check_matches(model, state, p)
    model.load_state_dict(state, strict=True)
    return model


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict stored in a weights file (see :func:`load_weights`), on the CPU."""
    p = Path(path).expanduser()
    _check_file(p, "weights file")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        state = _read_safetensors(p)
    elif suffix in _TORCH_SUFFIXES:
        state = _read_torch_weights(p)
    else:
        raise ModelSpecError(
            f"cannot read weights {p.name}: unknown file type {suffix or '(none)'!r}; use "
            ".safetensors, or .pt/.pth/.bin/.ckpt (read with torch.load(weights_only=True))"
        )
    if isinstance(state, dict):
        for key in _STATE_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        what = "an empty dict" if isinstance(state, dict) else type(state).__name__
        raise ModelLoadError(f"{p} does not hold a state dict (found {what})")
    bad = [k for k, v in state.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise ModelLoadError(
            f"{p} does not hold a state dict: entries {bad[:3]} are not name -> tensor"
        )
    return state


# ----------------------------------------------------------------------------------------------
# module:factory
# ----------------------------------------------------------------------------------------------


def _from_factory(spec: str) -> nn.Module:
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise ModelSpecError(f"model {spec!r}: expected package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelSpecError(f"model {spec!r}: cannot import {module_name!r}: {err}") from err
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ModelSpecError(f"model {spec!r}: {module_name} has no callable {factory_name!r}")
    try:
        model = factory()
    except Exception as err:
        raise ModelLoadError(
            f"model {spec!r}: calling {factory_name}() failed: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(model, nn.Module):
        # a scikit-learn estimator, an ONNX Runtime session or a prediction function
        from .adapters import as_adapter

        try:
            return as_adapter(model)
        except TypeError as err:
            raise ModelSpecError(
                f"model {spec!r}: the factory returned {type(model).__name__}, not an "
                "nn.Module, scikit-learn estimator, ONNX Runtime session or callable"
            ) from err
    return model


#: suffixes :func:`load` hands to the adapters (ONNX Runtime, skops; pickles are refused there)
_ADAPTER_SUFFIXES = (".onnx", ".skops", ".pkl", ".pickle", ".joblib", ".pck", ".sav")


def _adapter_path(spec: Any) -> Path | None:
    """The file of an ``*.onnx`` / ``[sklearn:]*.skops`` (or pickle) spec, else None."""
    text = str(spec)
    if text.startswith(("sklearn:", "onnx:")):
        kind, _, rest = text.partition(":")
        p = Path(rest).expanduser()
        if kind == "onnx" and p.suffix.lower() != ".onnx":
            raise ModelSpecError(f"onnx:{rest}: expected an .onnx file")
        if kind == "sklearn" and p.suffix.lower() == ".onnx":
            raise ModelSpecError(f"sklearn:{rest}: an .onnx file loads as {rest} (no prefix)")
        if kind == "sklearn" and p.suffix.lower() not in _ADAPTER_SUFFIXES:
            raise ModelSpecError(
                f"sklearn:{rest}: expected a .skops file (skops.io.dump(model, 'model.skops'))"
            )
        return p
    if text.lower().endswith(_ADAPTER_SUFFIXES):
        return Path(text).expanduser()
    return None


def _normalized(model: nn.Module, normalize) -> nn.Module:
    from .wrappers import Normalize

    try:
        mean, std = normalize
        return nn.Sequential(Normalize(mean, std), model)
    except (TypeError, ValueError) as err:
        raise ModelSpecError(f"normalize must be (mean, std) sequences: {err}") from err


# ----------------------------------------------------------------------------------------------
# Weights files
# ----------------------------------------------------------------------------------------------


def _check_file(p: Path, what: str) -> int:
    if not p.exists():
        raise ModelSpecError(f"{what} not found: {p}")
    if not p.is_file():
        raise ModelSpecError(f"{what} {p} is not a file")
    size = p.stat().st_size
    if size == 0:
        kind = "weights" if what.startswith("weights") else "model"
        where = f" ({p})" if str(p) != p.name else ""
        raise ModelLoadError(f"cannot read {kind} {p.name}: the file is empty{where}")
    return size


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise ModelLoadError(
            f"cannot read weights {p.name}: truncated safetensors file ({size} bytes, "
            "shorter than its 8-byte header length)"
        )
    header_len = int.from_bytes(head, "little")
    if header_len > size - 8:
        raise ModelLoadError(
            f"cannot read weights {p.name}: truncated or not a safetensors file (its header "
            f"claims {header_len} bytes but only {size - 8} follow)"
        )
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except Exception as err:
        raise ModelLoadError(
            f"cannot read weights {p.name}: corrupt safetensors file ({type(err).__name__}: {err})"
        ) from err


def _read_torch_weights(p: Path) -> Any:
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickler_reason(err)
        if _refused_object(reason):
            raise ModelLoadError(
                f"refused weights {p.name}: the file holds Python objects other than tensors "
                f"({reason}); advex reads .pt/.pth/.bin/.ckpt with torch.load(weights_only=True) "
                "only: save a plain state dict, or use .safetensors"
            ) from err
        raise ModelLoadError(
            f"cannot read weights {p.name}: corrupt or not a PyTorch checkpoint ({reason})"
        ) from err
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"cannot read weights {p.name}: corrupt or not a PyTorch checkpoint ({reason})"
        ) from err


def _unpickler_reason(err: BaseException) -> str:
    """The reason in torch's weights-only error, without its advice to unpickle anyway."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
        text = text.split("Check the documentation", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else type(err).__name__
    return reason.split(" Please use", 1)[0][:300]


def _refused_object(reason: str) -> bool:
    return any(word in reason for word in ("GLOBAL", "global", "Unsupported class", "REDUCE"))


def _check_matches(model: nn.Module, state: dict[str, torch.Tensor], p: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {missing[:3]}" + (" ..." if len(missing) > 3 else ""))
    if unexpected:
        more = " ..." if len(unexpected) > 3 else ""
        parts.append(f"unexpected keys {unexpected[:3]}{more}")
    if shapes:
        parts.append(
            "shape mismatch " + "; ".join(shapes[:3]) + (" ..." if len(shapes) > 3 else "")
        )
    if parts:
        raise ModelLoadError(
            f"weights {p.name} do not match the model (wrong architecture?): " + "; ".join(parts)
        )


# ----------------------------------------------------------------------------------------------
# torch.export programs (.pt2)
# ----------------------------------------------------------------------------------------------


class ExportedModel(nn.Module):
    """A ``torch.export`` program as a module: ``train()``/``eval()`` only set the flag
    (exported graphs are frozen in the mode they were exported in, and refuse ``.eval()``)."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program
        self.training = False

    def train(self, mode: bool = True) -> ExportedModel:
        self.training = bool(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


def load_exported(path: str | os.PathLike) -> ExportedModel:
    """A ``torch.export`` program saved with ``torch.export.save``, never running code from it.

    Before torch reads the archive, advex checks that it holds only the entries of a
    ``torch.export`` program (no compiled AOTInductor libraries, no legacy pickled state, no
    pickled Python constants), that every symbolic-shape expression is a plain sympy expression
    and that the graph names only torch operators. During the read, every ``torch.load`` is forced
    to ``weights_only=True`` (torch's own loader would fall back to full unpickling). The graph's
    input guards are checked by torch's pre-hook, not by code generated from the file.

    Raises :class:`ModelLoadError` naming the file and the refused content.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelSpecError(f"no such .pt2 file: {p}")
    _check_file(p, "model file")
    _check_archive(p)
    try:
        with _weights_only_loads(p):
            from torch.export.pt2_archive._package import load_pt2

            contents = load_pt2(str(p))
    except ModelLoadError:
        raise
    except Exception as err:
        raise ModelLoadError(
            f"cannot read the torch.export program {p}: {type(err).__name__}: "
            f"{str(err).strip()[:500]}"
        ) from err
    program = contents.exported_programs.get("model")
    if program is None:
        raise ModelLoadError(f"cannot read the torch.export program {p}: it holds no 'model'")
    _check_graph(program, p)
    try:
        module = program.module(check_guards=False)
    except Exception as err:
        raise ModelLoadError(
            f"cannot use the torch.export program {p}: {type(err).__name__}: {err}"
        ) from err
    return ExportedModel(module)


_TORCH_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def _weights_only_loads(p: Path) -> Iterator[None]:
    """Within the block, ``torch.load`` reads weights-only whatever its caller asks, and the
    archive reader's plain ``pickle`` is unavailable. One load at a time holds the patch; other
    threads calling ``torch.load`` meanwhile are also held to weights-only (the safe side)."""
    import torch.export.pt2_archive._package as package

    original = None  # torch.load as found once the lock is held

    def weights_only_load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return original(f, *args, **kwargs)
        except pickle.UnpicklingError as err:
            reason = _unpickler_reason(err)
            if not _refused_object(reason):
                raise
            raise ModelLoadError(
                f"refused the torch.export program {p}: a pickle inside it holds Python objects "
                f"other than tensors ({reason}); advex never unpickles those"
            ) from err

    class _NoPickle:
        def __getattr__(self, name: str):
            raise ModelLoadError(
                f"refused the torch.export program {p}: it asks to unpickle a Python object"
            )

    with _TORCH_LOAD_LOCK:
        original = torch.load
        saved_pickle = package.__dict__.get("pickle")
        torch.load = weights_only_load
        if saved_pickle is not None:
            package.pickle = _NoPickle()
        try:
            yield
        finally:
            torch.load = original
            if saved_pickle is not None:
                package.pickle = saved_pickle


# what an archive written by torch.export.save holds, relative to its root folder
_ENTRY_PATTERNS = [
    re.compile(p)
    for p in (
        r"archive_format",
        r"archive_version",
        r"byteorder",
        r"\.data/[A-Za-z0-9_.]+",
        r"models/[A-Za-z0-9_.-]+\.json",
        r"data/weights/[A-Za-z0-9_.-]+",
        r"data/constants/[A-Za-z0-9_.-]+",
        r"data/sample_inputs/[A-Za-z0-9_.-]+\.pt",
        r"extra/[^\x00]+",
    )
]
_MAX_RATIO = 64  # uncompressed / compressed size beyond which an entry is a zip bomb


def _refuse(p: Path, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"refused the torch.export program {p}: {why}; advex loads only "
        "torch.export programs saved by torch.export.save"
    )


def _check_archive(p: Path) -> None:
    """Validate a ``.pt2`` zip before torch reads anything from it."""
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as err:
        raise ModelLoadError(
            f"cannot read the torch.export program {p}: not a .pt2 archive ({err})"
        ) from err
    with zf:
        infos = zf.infolist()
        roots = {info.filename.split("/", 1)[0] for info in infos}
        if not infos or len(roots) != 1 or any("/" not in i.filename for i in infos):
            raise _refuse(p, "its entries do not share one root folder")
        entries: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            rel = info.filename.split("/", 1)[1]
            if info.is_dir() or rel == "":
                continue
            if ".." in rel.split("/") or not any(pat.fullmatch(rel) for pat in _ENTRY_PATTERNS):
                raise _refuse(
                    p,
                    f"unexpected entry {rel!r} (compiled AOTInductor code and legacy pickled "
                    "state are not accepted)",
                )
            if info.file_size > _MAX_RATIO * max(info.compress_size, 1) + (1 << 20):
                raise _refuse(p, f"entry {rel!r} expands {info.file_size} bytes (zip bomb)")
            entries[rel] = info

        def read(rel: str) -> bytes:
            return zf.read(entries[rel])

        if "archive_format" not in entries or read("archive_format").strip() != b"pt2":
            raise _refuse(p, "no 'archive_format' entry saying pt2")
        if "models/model.json" not in entries:
            raise _refuse(p, "no models/model.json")
        for rel in entries:
            if rel.startswith("models/"):
                _check_program_json(p, rel, _read_json(p, rel, read(rel)))
            elif rel.endswith("_config.json") and rel.startswith(
                ("data/weights/", "data/constants/")
            ):
                _check_payload_config(p, rel, _read_json(p, rel, read(rel)), entries)


def _read_json(p: Path, rel: str, raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ModelLoadError(
            f"cannot read the torch.export program {p}: corrupt {rel} ({err})"
        ) from err


def _check_payload_config(p: Path, rel: str, config: Any, entries: dict) -> None:
    folder = rel.rsplit("/", 1)[0]
    items = config.get("config") if isinstance(config, dict) else None
    if not isinstance(items, dict):
        raise _refuse(p, f"{rel} is not a payload config")
    for name, meta in items.items():
        path_name = meta.get("path_name") if isinstance(meta, dict) else None
        if not isinstance(path_name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", path_name):
            raise _refuse(p, f"{rel}: bad file name for {name!r}")
        if folder == "data/constants" and not path_name.startswith("tensor_"):
            raise _refuse(
                p, f"constant {name!r} is a pickled Python object ({path_name}), not a tensor"
            )
        record = entries.get(f"{folder}/{path_name}")
        if record is None:
            raise _refuse(p, f"{rel}: {name!r} points at a missing entry {path_name!r}")
        sizes = (meta.get("tensor_meta") or {}).get("sizes") or []
        numel = 1
        for s in sizes:
            numel *= s.get("as_int", 1) if isinstance(s, dict) else 1
        if not meta.get("use_pickle") and numel > 0 and record.file_size == 0:
            raise _refuse(p, f"tensor {name!r} claims {numel} values but its entry is empty")


# names a sympy expression in a torch.export program may use (sympy's srepr + torch's functions)
_SYMPY_NAMES = frozenset(
    "Symbol Dummy Integer Float Rational Mul Add Pow Mod Max Min Abs floor ceiling sqrt Eq Ne Lt "
    "Le Gt Ge StrictLessThan LessThan StrictGreaterThan GreaterThan Equality Unequality And Or "
    "Not true false True False oo Infinity NegativeInfinity nan zoo S Piecewise ITE BooleanTrue "
    "BooleanFalse Tuple One Zero NegativeOne Half pi E FloorDiv ModularIndexing Where PythonMod "
    "CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift PowByNatural FloatPow FloatTrueDiv "
    "IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt "
    "RoundDecimal ToFloat Identity".split()
)
_SYMBOL_NAME = re.compile(r"[a-z]{1,4}[0-9]+")
_SYMPY_NODES = (
    ast.Expression, ast.Call, ast.Name, ast.Load, ast.Constant, ast.keyword, ast.BinOp,
    ast.UnaryOp, ast.Compare, ast.BoolOp, ast.operator, ast.unaryop, ast.cmpop, ast.boolop,
)  # fmt: skip


def _safe_sympy(text: str) -> bool:
    """Whether ``text`` is a plain sympy expression (what ``sympify`` may evaluate safely)."""
    if not isinstance(text, str) or len(text) > 4000:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, _SYMPY_NODES):
            return False
        if isinstance(node, ast.Name):
            if node.id not in _SYMPY_NAMES and not _SYMBOL_NAME.fullmatch(node.id):
                return False
        elif isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _SYMPY_NAMES):
                return False
        elif isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, str) and not re.fullmatch(r"[A-Za-z0-9_]{0,64}", v):
                return False
            if isinstance(v, int | float) and not isinstance(v, bool) and abs(v) > 2**63:
                return False
    return True


# torch.ops.<namespace>.<op>.<overload>, or a higher-order operator (cond, map, ...)
_TARGET = re.compile(
    r"torch\.ops\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z0-9_]+"
    r"|torch\.ops\.higher_order\.[A-Za-z][A-Za-z0-9_]*"
)
_BUILTIN_TARGETS = frozenset(
    "_operator.getitem _operator.eq _operator.ne _operator.le _operator.ge _operator.lt "
    "_operator.gt _operator.neg _operator.pos _operator.mul _operator.add _operator.sub "
    "_operator.floordiv _operator.mod _operator.pow _operator.truediv _operator.and_ "
    "_operator.or_ _operator.lshift _operator.rshift math.trunc torch.sym_not torch.sym_int "
    "torch.sym_float torch.sym_ite torch.sym_max torch.sym_min torch.sym_sqrt".split()
)


def _check_program_json(p: Path, rel: str, doc: Any) -> None:
    """Refuse strings that torch would evaluate or turn into code: sympy expressions that are not
    plain expressions, graph targets that are not torch operators, argument names that are not
    identifiers."""

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            expr = obj.get("expr_str")
            if expr is not None and not _safe_sympy(expr):
                raise _refuse(
                    p, f"{rel}: symbolic expression {str(expr)[:80]!r} is not plain sympy"
                )
            if {"target", "inputs", "outputs"} <= obj.keys():
                target = obj["target"]
                if not isinstance(target, str) or not (
                    target in _BUILTIN_TARGETS or (_TARGET.fullmatch(target) and "__" not in target)
                ):
                    raise _refuse(
                        p, f"{rel}: graph calls {str(target)[:80]!r}, not a torch operator"
                    )
            for key in ("in_spec", "out_spec"):
                if isinstance(obj.get(key), str):
                    _check_treespec(p, rel, obj[key])
            names = obj.get("forward_arg_names")
            if names is not None and not (
                isinstance(names, list) and all(_identifier(n) for n in names)
            ):
                raise _refuse(p, f"{rel}: argument names {str(names)[:80]} are not identifiers")
            for value in obj.values():
                walk(value)
        elif isinstance(obj, list):
            for value in obj:
                walk(value)

    try:
        walk(doc)
        fields = doc.get("graph_module", {}).get("treespec_namedtuple_fields", {}) or {}
    except RecursionError as err:
        raise _refuse(p, f"{rel} is nested too deeply") from err
    for spec in fields.values() if isinstance(fields, dict) else [None]:
        names = spec.get("field_names") if isinstance(spec, dict) else None
        if not (isinstance(names, list) and all(_identifier(n) for n in names)):
            raise _refuse(p, f"{rel}: named-tuple fields {str(names)[:80]} are not identifiers")


# pytree node types a program's input/output structure may use; ``collections.defaultdict``
# (whose context names a module to import) and enum contexts (likewise) are refused
_TREESPEC_TYPES = frozenset(
    {
        None,
        "builtins.tuple",
        "builtins.list",
        "builtins.dict",
        "collections.OrderedDict",
        "collections.namedtuple",
        "collections.deque",
        "torch.Size",
        "torch.fx.immutable_collections.immutable_list",
        "torch.fx.immutable_collections.immutable_dict",
    }
)


def _check_treespec(p: Path, rel: str, text: str) -> None:
    """Refuse input/output structures whose decoding would import a module named in the file."""
    if "__enum__" in text:
        raise _refuse(p, f"{rel}: its input/output structure names an enum class to import")
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise _refuse(p, f"{rel}: corrupt input/output structure ({err})") from err
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if "type" in node and node["type"] not in _TREESPEC_TYPES:
                raise _refuse(
                    p, f"{rel}: input/output structure of type {str(node['type'])[:80]!r}"
                )
            stack.extend(node.get("children_spec") or [])


def _identifier(name: Any) -> bool:
    import keyword

    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


def _check_graph(program: Any, p: Path) -> None:
    """After deserialisation, before anything runs: every node calls a torch operator."""
    import math
    import operator

    allowed = {
        operator.getitem, operator.eq, operator.ne, operator.le, operator.ge, operator.lt,
        operator.gt, operator.neg, operator.pos, operator.mul, operator.add, operator.sub,
        operator.floordiv, operator.mod, operator.pow, operator.truediv, operator.and_,
        operator.or_, operator.lshift, operator.rshift, math.trunc, torch.sym_not, torch.sym_int,
        torch.sym_float, torch.sym_ite, torch.sym_max, torch.sym_min, torch.sym_sqrt,
    }  # fmt: skip
    op_types = (torch._ops.OpOverload, torch._ops.HigherOrderOperator)
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            if node.op != "call_function" or not (
                isinstance(node.target, op_types) or node.target in allowed
            ):
                raise _refuse(
                    p, f"its graph calls {node.target!r} ({node.op}), not a torch operator"
                )
