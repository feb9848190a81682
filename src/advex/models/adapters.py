"""Adapters: any classifier seen as an ``nn.Module`` that counts its queries and declares what
it lets an attack see.

Every adapter returns a ``(batch, classes)`` tensor that attacks read like logits, counts every
sample it evaluates (``queries``; ``calls`` counts batches; ``reset_queries()`` sets both to 0),
and declares in ``exposes`` what an attack can use:

- ``"gradients"``: scores with a gradient graph (:class:`TorchAdapter`, any plain PyTorch model);
- ``"scores"``: per-class scores, no gradient (score-based attacks: Square);
- ``"labels"``: the predicted label only, returned as one-hot rows (decision-based attacks:
  HopSkipJump, BoundaryAttack, RayS).

Adapters:

- :class:`TorchAdapter` — a PyTorch module (gradients pass through; queries counted);
- :class:`SklearnAdapter` — a scikit-learn estimator or pipeline: ``predict_proba`` or
  ``decision_function`` → scores, ``predict`` only → labels;
- :class:`OnnxAdapter` — an ONNX Runtime session or ``.onnx`` file (float scores → scores,
  integer labels → labels); :func:`export_onnx` writes one from an advex torch model and
  :func:`export_sklearn_onnx` from a scikit-learn model (``skl2onnx``);
- :class:`CallableAdapter` — any function ``f(x) -> scores | labels`` on numpy arrays or torch
  tensors (``output="auto"`` decides from the first answer).

:func:`as_adapter` picks the adapter for an object; :func:`capability` says what any model
(adapter, black box, plain module, or a module containing one) exposes. Loading from files goes
through :func:`load_onnx` and :func:`load_sklearn` (skops, with an explicit trusted-types check;
pickle and joblib files are refused), which :func:`advex.models.load` calls for ``*.onnx``,
``sklearn:model.skops`` and ``*.skops``.

The ONNX and scikit-learn parts need the ``[onnx]`` extra (onnx, onnxruntime, skl2onnx, skops).

>>> clf = SklearnAdapter(pipeline)                 # flat (B, d) inputs; exposes == "scores"
>>> Square(eps=0.1, n_queries=1000)(clf, x, y); clf.queries
>>> box = OnnxAdapter("cnn.onnx"); capability(box)   # "scores"
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .blackbox import LabelBlackBox, ScoreBlackBox, output_tensor

__all__ = [
    "CAPABILITIES",
    "CallableAdapter",
    "OnnxAdapter",
    "PICKLE_SUFFIXES",
    "SklearnAdapter",
    "TorchAdapter",
    "as_adapter",
    "capability",
    "export_onnx",
    "export_sklearn_onnx",
    "load_onnx",
    "load_sklearn",
    "sklearn_trusted_types",
]

#: what a model can expose, from most to least: an attack needing a capability runs on models
#: exposing it or more
CAPABILITIES = ("gradients", "scores", "labels")

#: files refused by :func:`load_sklearn` (unpickling runs arbitrary code)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pck", ".sav")

# module prefixes whose types a skops file may hold without the caller trusting them by name
_TRUSTED_MODULES = ("sklearn.", "numpy.", "scipy.sparse.", "builtins.")
# builtins a skops file may name (types only: functions such as eval/exec/getattr are refused)
_TRUSTED_BUILTINS = frozenset(
    "builtins." + n
    for n in "int float str bool complex tuple list dict set frozenset slice bytes NoneType "
    "type range".split()
)


def _error(cls_name: str, msg: str) -> Exception:
    from .loading import ModelLoadError, ModelSpecError

    return {"load": ModelLoadError, "spec": ModelSpecError}[cls_name](msg)


def _need(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{what} needs {module.split('.')[0]}: pip install 'advex[onnx]' ({err})"
        ) from err


# ----------------------------------------------------------------------------------------------
# What a model exposes
# ----------------------------------------------------------------------------------------------


def capability(model: Any) -> str:
    """What ``model`` lets an attack see: ``"gradients"``, ``"scores"`` or ``"labels"``.

    The declared ``exposes`` of the model or of any module inside it (an adapter behind a
    :class:`~advex.models.Normalize`) — the least of them; a plain ``nn.Module`` or callable
    without a declaration is taken to expose ``"gradients"`` (whether its gradients are usable
    is what :func:`advex.evaluate.probe_capability` measures).

    >>> capability(LabelBlackBox(api.predict, num_classes=10))   # "labels"
    """
    found = []
    mods = model.modules() if isinstance(model, nn.Module) else [model]
    for m in mods:
        e = getattr(m, "exposes", None)
        if isinstance(e, str) and e in CAPABILITIES:
            found.append(CAPABILITIES.index(e))
    return CAPABILITIES[max(found)] if found else "gradients"


class TorchAdapter(nn.Module):
    """A PyTorch classifier with a query counter; gradients pass through (``exposes ==
    "gradients"``). The wrapped module is used as is (not copied); its mode follows the adapter.

    >>> model = TorchAdapter(zoo.load("mnist-smallcnn")); PGD(eps=0.3)(model, x, y)
    >>> model.queries   # samples evaluated (forward passes, gradient passes included)
    """

    exposes = "gradients"

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"TorchAdapter wraps an nn.Module, got {type(module).__name__}")
        self.module = module
        self.queries = 0
        self.calls = 0
        self.training = module.training

    def reset_queries(self) -> None:
        """Set the query and call counters back to zero."""
        self.queries = 0
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        self.queries += int(x.shape[0])
        self.calls += 1
        return out


def _flat_numpy(x: torch.Tensor, dtype: Any) -> np.ndarray:
    return x.detach().reshape(x.shape[0], -1).cpu().numpy().astype(dtype, copy=False)


class CallableAdapter(ScoreBlackBox):
    """Any prediction function ``f(x) -> scores | labels`` as a counting module.

    Args:
        fn: the function; gets the batch as a torch tensor, or as a numpy array with
            ``as_numpy=True`` (flattened to ``(B, d)`` with ``flatten=True``).
        output: ``"scores"`` (``(B, K)`` scores or probabilities), ``"labels"`` (``(B,)``
            integer labels, or scores of which only the argmax is kept), or ``"auto"``
            (default): decided at the first call — integer ``(B,)`` labels or one-hot rows are
            labels, anything else scores. ``exposes`` is ``"unknown"`` until then.
        num_classes: number of classes (required for label outputs; checked on every call).
        as_numpy, flatten: how ``fn`` receives the batch.
        scores: ``"auto"``/``"logits"``/``"probs"``, as in :class:`ScoreBlackBox`.

    >>> box = CallableAdapter(lambda a: api.predict(a), output="labels", num_classes=10,
    ...                       as_numpy=True)
    """

    kind = "black box"

    def __init__(
        self,
        fn: Callable,
        output: str = "auto",
        *,
        num_classes: int | None = None,
        as_numpy: bool = False,
        flatten: bool = False,
        scores: str = "auto",
    ) -> None:
        super().__init__(fn, num_classes, scores=scores, as_numpy=as_numpy)
        if output not in ("auto", "scores", "labels"):
            raise ValueError(f"output must be 'auto', 'scores' or 'labels', got {output!r}")
        self.output = output
        self.flatten = bool(flatten)
        self.exposes = output if output != "auto" else "unknown"
        self._set_kind()

    def _set_kind(self) -> None:
        self.kind = {
            "labels": "hard-label black box",
            "scores": "score-only black box",
        }.get(self.exposes, "black box")

    def _call_fn(self, x: torch.Tensor) -> Any:
        if self.flatten:
            x = x.reshape(x.shape[0], -1)
        return super()._call_fn(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self._call_fn(x)
        if self.exposes == "unknown":
            self.exposes = (
                "labels" if _looks_like_labels(output_tensor(raw, x, "output")) else "scores"
            )
            self._set_kind()
        if self.exposes == "labels":
            return self._block(x, self._onehot(raw, x))
        return self._block(x, self._scores(raw, x))


def _looks_like_labels(t: torch.Tensor) -> bool:
    if t.dim() == 1:
        return not t.is_floating_point()
    if t.dim() != 2 or t.shape[1] < 2 or t.numel() == 0:
        return False
    binary = bool(((t == 0) | (t == 1)).all())
    return binary and bool((t.sum(1) == 1).all())


# ----------------------------------------------------------------------------------------------
# scikit-learn
# ----------------------------------------------------------------------------------------------


class SklearnAdapter(ScoreBlackBox):
    """A scikit-learn estimator or pipeline as a counting module.

    Inputs ``(B, ...)`` are flattened to ``(B, d)`` numpy rows (``dtype``, float64 by default)
    for the estimator. Output column ``k`` is class ``estimator.classes_[k]``: labels ``y``
    given to attacks are *indices* into ``classes_`` (``adapter.class_index(labels)`` converts).

    Args:
        estimator: a fitted classifier or pipeline.
        output: ``"auto"`` (default): ``predict_proba`` if the estimator has it, else
            ``decision_function``, else ``predict``; or ``"proba"``, ``"decision"``,
            ``"labels"`` to choose. ``predict_proba`` / ``decision_function`` expose
            ``"scores"`` (probabilities become log-probabilities; a binary decision function
            ``s`` becomes logits ``(0, s)``), ``predict`` exposes ``"labels"`` (one-hot rows).
        dtype: numpy dtype of the rows given to the estimator.

    >>> clf = SklearnAdapter(make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y))
    >>> clf.exposes, clf.num_classes     # ("scores", 2)
    """

    def __init__(self, estimator: Any, output: str = "auto", *, dtype: Any = np.float64) -> None:
        if not hasattr(estimator, "predict"):
            raise TypeError(
                f"SklearnAdapter needs a fitted scikit-learn classifier (with predict), got "
                f"{type(estimator).__name__}"
            )
        if output not in ("auto", "proba", "decision", "labels"):
            raise ValueError(
                f"output must be 'auto', 'proba', 'decision' or 'labels', got {output!r}"
            )
        classes = getattr(estimator, "classes_", None)
        if classes is None:
            raise ValueError(
                f"{type(estimator).__name__} has no classes_: fit it first (a classifier "
                "is needed, not a regressor)"
            )
        if output == "auto":
            if hasattr(estimator, "predict_proba"):
                output = "proba"
            elif hasattr(estimator, "decision_function"):
                output = "decision"
            else:
                output = "labels"
        method = {"proba": "predict_proba", "decision": "decision_function"}.get(output, "predict")
        if not hasattr(estimator, method):
            raise ValueError(f"{type(estimator).__name__} has no {method}")
        self.classes = np.asarray(classes)
        super().__init__(
            getattr(estimator, method),
            num_classes=len(self.classes),
            scores="probs" if output == "proba" else "logits",
            as_numpy=True,
        )
        self.estimator = estimator
        self.output = output
        self.dtype = np.dtype(dtype)
        self.exposes = "labels" if output == "labels" else "scores"
        self.kind = "hard-label black box" if output == "labels" else "score-only black box"

    def class_index(self, labels: Any) -> torch.Tensor:
        """Indices into ``classes_`` of the estimator's class labels (what attacks take as
        ``y``); raises ``ValueError`` for a label the estimator does not know."""
        labels = np.asarray(labels)
        idx = np.searchsorted(self.classes, labels)
        idx = np.clip(idx, 0, len(self.classes) - 1)
        if not np.all(self.classes[idx] == labels):
            bad = labels[self.classes[idx] != labels][:3]
            raise ValueError(f"labels {bad.tolist()} are not among classes_ {self.classes[:10]}")
        return torch.as_tensor(idx, dtype=torch.long)

    def _call_fn(self, x: torch.Tensor) -> Any:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"SklearnAdapter expects a torch.Tensor batch, got {type(x)}")
        rows = _flat_numpy(x, self.dtype)
        with torch.no_grad():
            out = self.fn(rows)
        self.queries += int(x.shape[0])
        self.calls += 1
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self._call_fn(x)
        if self.output == "labels":
            return self._block(x, self._onehot(self.class_index(raw), x))
        if self.output == "decision":
            s = np.asarray(raw)
            if s.ndim == 1:  # binary: positive = classes_[1]
                s = np.stack([np.zeros_like(s), s], axis=1)
            raw = s
        return self._block(x, self._scores(raw, x))

    def extra_repr(self) -> str:
        return f"{type(self.estimator).__name__}, output={self.output}, queries={self.queries}"


def sklearn_trusted_types(path: str | os.PathLike, trusted: Sequence[str] = ()) -> list[str]:
    """The types of the skops file ``path`` that :func:`load_sklearn` will trust: those of
    scikit-learn, numpy, scipy.sparse and plain builtin types, plus the names in ``trusted``.
    Raises :class:`~advex.models.ModelLoadError` listing any other type the file would create."""
    sio = _need("skops.io", "loading a .skops model")
    p = Path(path)
    try:
        untrusted = list(sio.get_untrusted_types(file=str(p)))
    except Exception as err:
        raise _error(
            "load", f"cannot read the skops file {p}: {type(err).__name__}: {err}"
        ) from err
    extra = set(trusted)
    ok, refused = [], []
    for t in untrusted:
        plain_builtin = not t.startswith("builtins.") or t in _TRUSTED_BUILTINS
        if t in extra or (t.startswith(_TRUSTED_MODULES) and plain_builtin):
            ok.append(t)
        else:
            refused.append(t)
    if refused:
        raise _error(
            "load",
            f"refused the skops file {p}: it would create types outside scikit-learn/numpy/"
            f"scipy: {refused[:5]}; if you trust them, load it in Python with "
            "advex.models.load_sklearn(path, trusted=[...])",
        )
    return ok


def load_sklearn(
    path: str | os.PathLike, *, trusted: Sequence[str] = (), output: str = "auto"
) -> SklearnAdapter:
    """A scikit-learn model saved with ``skops.io.dump``, loaded without unpickling, as a
    :class:`SklearnAdapter`.

    skops rebuilds the objects from a declarative file and refuses types it does not trust;
    advex first lists the types the file would create (:func:`sklearn_trusted_types`) and
    accepts only scikit-learn, numpy, scipy.sparse and plain builtin types, plus those named in
    ``trusted``. Pickle and joblib files (``.pkl``, ``.joblib``, ...) are refused: unpickling can
    run any code. Raises :class:`~advex.models.ModelLoadError` naming the file.

    >>> skops.io.dump(pipeline, "clf.skops"); clf = load_sklearn("clf.skops")
    """
    p = Path(path).expanduser()
    _check_path(p, "scikit-learn model")
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise _error(
            "load",
            f"refused {p.name}: {p.suffix} files are pickles, and unpickling an untrusted file "
            "can run any code; save the model with skops (skops.io.dump(model, "
            "'model.skops')) and load that",
        )
    if p.suffix.lower() != ".skops":
        raise _error(
            "spec",
            f"cannot load scikit-learn model {p.name}: expected a .skops file "
            "(skops.io.dump(model, 'model.skops'))",
        )
    sio = _need("skops.io", "loading a .skops model")
    ok = sklearn_trusted_types(p, trusted)
    try:
        estimator = sio.load(str(p), trusted=ok)
    except Exception as err:
        raise _error(
            "load", f"cannot load the skops file {p}: {type(err).__name__}: {err}"
        ) from err
    try:
        return SklearnAdapter(estimator, output=output)
    except (TypeError, ValueError) as err:
        raise _error("load", f"{p}: {err}") from err


# ----------------------------------------------------------------------------------------------
# ONNX Runtime
# ----------------------------------------------------------------------------------------------

_ORT_FLOATS = {"tensor(float)": np.float32, "tensor(double)": np.float64}
_ORT_INTS = ("tensor(int64)", "tensor(int32)", "tensor(int16)", "tensor(int8)", "tensor(uint8)")


class OnnxAdapter(ScoreBlackBox):
    """An ONNX Runtime session (or ``.onnx`` file) as a counting module.

    The first input gets the batch (cast to its float type; flattened to ``(B, d)`` when the
    graph's input has rank 2). The output used is ``output`` (a name), else the first float
    output of rank 2 (scores, ``exposes == "scores"``), else the first integer output of rank 1
    (labels, ``exposes == "labels"``; ``num_classes`` required). Scikit-learn models converted
    by :func:`export_sklearn_onnx` expose their ``probabilities`` output.

    Args:
        session: an ``onnxruntime.InferenceSession``, or the path of an ``.onnx`` file (read
            with :func:`load_onnx`'s checks).
        output: the name of the output to use (default: chosen as above).
        num_classes: number of classes (required for a labels output).

    >>> export_onnx(zoo.load("mnist-smallcnn"), "cnn.onnx", x[:1])
    >>> box = OnnxAdapter("cnn.onnx"); box(x).argmax(1)
    """

    def __init__(
        self, session: Any, output: str | None = None, *, num_classes: int | None = None
    ) -> None:
        if isinstance(session, str | os.PathLike):
            session = _ort_session(Path(session).expanduser())
        if not hasattr(session, "run") or not hasattr(session, "get_outputs"):
            raise TypeError(
                f"OnnxAdapter needs an onnxruntime.InferenceSession or an .onnx path, got "
                f"{type(session).__name__}"
            )
        inputs = session.get_inputs()
        if len(inputs) != 1:
            names = [i.name for i in inputs]
            raise ValueError(f"the ONNX model must take one input, it takes {names}")
        inp = inputs[0]
        if inp.type not in _ORT_FLOATS:
            raise ValueError(f"the ONNX model's input {inp.name!r} is {inp.type}, not float")
        outs = {o.name: o for o in session.get_outputs()}
        if output is None:
            scores = [o for o in outs.values() if o.type in _ORT_FLOATS and len(o.shape) == 2]
            labels = [o for o in outs.values() if o.type in _ORT_INTS and len(o.shape) == 1]
            if scores:
                output = scores[0].name
            elif labels:
                output = labels[0].name
            else:
                desc = [(o.name, o.type, o.shape) for o in outs.values()]
                raise ValueError(
                    f"the ONNX model has no (batch, classes) float output nor (batch,) integer "
                    f"labels output: {desc}"
                )
        elif output not in outs:
            raise ValueError(f"the ONNX model has no output {output!r}: {sorted(outs)}")
        is_labels = outs[output].type in _ORT_INTS
        super().__init__(self._run, num_classes=num_classes, scores="auto", as_numpy=True)
        self.session = session
        self.input_name = inp.name
        self.input_rank = len(inp.shape) if inp.shape is not None else None
        self.input_dtype = _ORT_FLOATS[inp.type]
        self.output = output
        self.exposes = "labels" if is_labels else "scores"
        self.kind = "hard-label black box" if is_labels else "score-only black box"
        if is_labels and num_classes is None:
            raise ValueError(
                f"the ONNX model's output {output!r} holds labels: pass num_classes= to OnnxAdapter"
            )

    def _run(self, a: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(a, dtype=self.input_dtype)
        if self.input_rank == 2 and a.ndim != 2:
            a = a.reshape(a.shape[0], -1)
        (out,) = self.session.run([self.output], {self.input_name: a})
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self._call_fn(x)
        if self.exposes == "labels":
            return self._block(x, self._onehot(raw, x))
        return self._block(x, self._scores(raw, x))

    def extra_repr(self) -> str:
        return f"output={self.output!r}, exposes={self.exposes}, queries={self.queries}"


def _check_path(p: Path, what: str) -> None:
    if not p.exists():
        raise _error("spec", f"{what} not found: {p}")
    if not p.is_file():
        raise _error("spec", f"{what} {p} is not a file")
    if p.stat().st_size == 0:
        raise _error("load", f"cannot read {what} {p.name}: the file is empty ({p})")


def _ort_session(p: Path) -> Any:
    ort = _need("onnxruntime", "loading an .onnx model")
    _check_path(p, "ONNX model")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = max(1, int(os.environ.get("OMP_NUM_THREADS", "0") or 0))
    try:
        return ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as err:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise _error(
            "load",
            f"cannot read the ONNX model {p}: not a valid ONNX file ({type(err).__name__}: "
            f"{first})",
        ) from err


def load_onnx(
    path: str | os.PathLike, output: str | None = None, *, num_classes: int | None = None
) -> OnnxAdapter:
    """An ``.onnx`` file as an :class:`OnnxAdapter` (ONNX Runtime, CPU). A missing, empty or
    malformed file raises :class:`~advex.models.ModelLoadError` naming it. ONNX Runtime runs
    only the graph's operators: no Python code is read from the file."""
    p = Path(path).expanduser()
    session = _ort_session(p)
    try:
        return OnnxAdapter(session, output, num_classes=num_classes)
    except (TypeError, ValueError) as err:
        raise _error("load", f"cannot use the ONNX model {p}: {err}") from err


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example: torch.Tensor,
    *,
    opset: int = 17,
) -> Path:
    """Write ``model`` (a torch classifier) to ``path`` as ONNX with a dynamic batch dimension.

    Uses torch's TorchScript-based exporter (``dynamo=False``: no extra dependency); the model is
    exported in eval mode and restored to its mode afterwards. ``example`` is one input batch
    ``(B, ...)``. Returns the path; check it with ``OnnxAdapter(path)``.

    >>> export_onnx(zoo.load("mnist-smallcnn"), "cnn.onnx", torch.rand(1, 1, 28, 28))
    """
    import warnings

    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx needs an nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor) or example.dim() < 1:
        raise TypeError("example must be a torch.Tensor batch (B, ...)")
    p = Path(path)
    was = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example.detach(),),
                str(p),
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
            )
    finally:
        model.train(was)
    return p


def export_sklearn_onnx(
    estimator: Any, path: str | os.PathLike, n_features: int, *, dtype: Any = np.float32
) -> Path:
    """Write a fitted scikit-learn classifier or pipeline to ``path`` as ONNX with ``skl2onnx``
    (probabilities as a plain ``(batch, classes)`` tensor, no ZipMap). ``n_features`` is the
    row width; ``dtype`` float32 (default) or float64.

    >>> export_sklearn_onnx(pipeline, "clf.onnx", n_features=X.shape[1])
    """
    skl2onnx = _need("skl2onnx", "export_sklearn_onnx")
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    kind = DoubleTensorType if np.dtype(dtype) == np.float64 else FloatTensorType
    try:
        onx = skl2onnx.to_onnx(
            estimator,
            initial_types=[("input", kind([None, int(n_features)]))],
            options={id(estimator): {"zipmap": False}},
            target_opset=17,
        )
    except Exception:
        # pipelines take the option on their last step
        onx = skl2onnx.convert_sklearn(
            estimator,
            initial_types=[("input", kind([None, int(n_features)]))],
            options={"zipmap": False},
            target_opset=17,
        )
    p = Path(path)
    p.write_bytes(onx.SerializeToString())
    return p


# ----------------------------------------------------------------------------------------------
# One entry point
# ----------------------------------------------------------------------------------------------


def as_adapter(obj: Any, **kwargs: Any) -> nn.Module:
    """The adapter for ``obj``: an adapter or black box as is; an ``nn.Module`` →
    :class:`TorchAdapter`; an ONNX Runtime session or an ``.onnx`` path → :class:`OnnxAdapter`;
    a ``.skops`` path → :func:`load_sklearn`; a scikit-learn estimator → :class:`SklearnAdapter`;
    any other callable → :class:`CallableAdapter`. ``kwargs`` go to the adapter's constructor.

    >>> model = as_adapter(pipeline); model.exposes    # "scores"
    """
    if isinstance(obj, ScoreBlackBox | LabelBlackBox | TorchAdapter):
        return obj
    if isinstance(obj, nn.Module):
        return TorchAdapter(obj)
    if isinstance(obj, str | os.PathLike):
        suffix = Path(obj).suffix.lower()
        if suffix == ".onnx":
            return load_onnx(obj, **kwargs)
        if suffix == ".skops" or suffix in PICKLE_SUFFIXES:
            return load_sklearn(obj, **kwargs)
        raise _error("spec", f"cannot adapt {str(obj)!r}: expected an .onnx or .skops file")
    if hasattr(obj, "run") and hasattr(obj, "get_outputs") and hasattr(obj, "get_inputs"):
        return OnnxAdapter(obj, **kwargs)
    if hasattr(obj, "predict") and hasattr(obj, "classes_"):
        return SklearnAdapter(obj, **kwargs)
    if callable(obj):
        return CallableAdapter(obj, **kwargs)
    raise TypeError(f"cannot adapt {type(obj).__name__}: not a model, estimator or callable")
