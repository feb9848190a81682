"""The text model seam: a classifier from a list of strings to class scores.

Every text attack talks to a :class:`TextClassifier`: ``model(texts) -> scores (N, C)`` (a
float tensor on the CPU, one column per name in ``model.class_names``), with a declaration of
what it exposes (``"gradients"``, ``"scores"``, ``"labels"``) and a running count of the texts
it scored (``model.queries``). Adapters:

- :class:`TorchTextClassifier`: a tokenizer + an ``nn.Module``; white box (the embedding
  matrix and gradients with respect to one-hot inputs, for HotFlip).
- :class:`CallableTextClassifier`: any callable ``list[str] -> scores or labels`` (numpy,
  torch, lists; class names as labels too); a black box.
- :class:`SklearnTextClassifier`: a scikit-learn pipeline with ``predict_proba`` (load one with
  :func:`load_skops`, which refuses untrusted types; never pickle); a black box.

:func:`as_text_classifier` picks the adapter; :class:`TextModelCaller` counts queries and
gradients per example during an attack. :class:`CharTokenizer` is a deterministic
character-level tokenizer saved as JSON.

>>> model = CallableTextClassifier(lambda t: [[0.0, 1.0] if "win" in s else [1.0, 0.0] for s in t],
...                                class_names=("ham", "spam"))
>>> model(["win a prize", "hi"]).argmax(1)
tensor([1, 0])
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..threats.text import check_texts
from .guards import attack_mode, model_device
from .loading import ModelLoadError

__all__ = [
    "CallableTextClassifier",
    "CharTokenizer",
    "SklearnTextClassifier",
    "TextClassifier",
    "TextModelCaller",
    "TorchTextClassifier",
    "WordTokenizer",
    "as_text_classifier",
    "load_skops",
    "load_tokenizer",
]

EXPOSES = ("gradients", "scores", "labels")


def _class_names(names: Any) -> tuple[str, ...]:
    if names is None:
        raise ValueError("a text classifier needs class_names, e.g. ('ham', 'spam')")
    if isinstance(names, str):
        raise TypeError("class_names must be a sequence of names, not one string")
    names = tuple(str(c) for c in names)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"class_names must hold >= 2 distinct names, got {names}")
    return names


class TextClassifier(abc.ABC):
    """A text classifier: ``model(texts) -> scores``, a float tensor ``(N, C)`` on the CPU
    whose argmax is the predicted class; ``class_names`` name the ``C`` columns.

    Subclasses implement :meth:`_scores` (a list of ``str`` in, ``(N, C)`` scores out). The
    base validates the input (a list of ``str``; an empty list gives ``(0, C)``), scores it in
    chunks of ``batch_size``, checks the output (shape, finite values) and counts queries.

    Attributes:
        class_names: the class names, in column order.
        exposes: what an attacker can get: a subset of ``{"gradients", "scores", "labels"}``
            (labels only = a decision-based black box; the scores are then one-hot).
        queries: texts scored so far (every text in every call counts one).
        batch_size: texts per call of the underlying model.
    """

    exposes: frozenset[str] = frozenset({"scores", "labels"})

    def __init__(self, class_names: Sequence[str], *, batch_size: int = 256) -> None:
        self.class_names = _class_names(class_names)
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.queries = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abc.abstractmethod
    def _scores(self, texts: list[str]) -> Any:
        """Raw scores or labels for ``texts`` in the subclass's native form."""

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        texts = check_texts(texts)
        c = self.num_classes
        if not texts:
            return torch.zeros(0, c)
        out = []
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i : i + self.batch_size]
            s = self._scores(list(chunk))
            out.append(self._check_scores(s, len(chunk)))
        self.queries += len(texts)
        return torch.cat(out)

    def _check_scores(self, s: Any, n: int) -> torch.Tensor:
        name = type(self).__name__
        t = _as_float_tensor(s, name)
        if t.dim() != 2 or t.shape != (n, self.num_classes):
            raise ValueError(
                f"{name}: expected scores of shape ({n}, {self.num_classes}) for {n} texts and "
                f"classes {list(self.class_names)}, got {tuple(t.shape)}"
            )
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: the model returned non-finite scores (NaN or inf)")
        return t

    def predict(self, texts: Sequence[str]) -> torch.Tensor:
        """Predicted class per text (int64 tensor)."""
        return self(texts).argmax(1)

    def reset_queries(self) -> None:
        self.queries = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(classes={list(self.class_names)}, "
            f"exposes={sorted(self.exposes)})"
        )


def _as_float_tensor(s: Any, name: str) -> torch.Tensor:
    if isinstance(s, torch.Tensor):
        t = s.detach()
    else:
        try:
            t = torch.from_numpy(np.asarray(s, dtype=np.float64))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: cannot read the model's scores as numbers: {e}") from e
    if not (t.is_floating_point() or t.dtype in (torch.int64, torch.int32, torch.uint8)):
        raise ValueError(f"{name}: scores have unsupported dtype {t.dtype}")
    return t.to(device="cpu", dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Any callable
# --------------------------------------------------------------------------------------------


class CallableTextClassifier(TextClassifier):
    """Any callable ``fn(list[str])`` returning scores ``(N, C)`` or labels ``(N,)`` (numpy,
    torch or lists; labels as integers or as class names).

    Args:
        fn: the model.
        class_names: the class names in column / label order.
        output: ``"scores"``, ``"labels"`` or ``"auto"`` (decided from the first answer: 2-D is
            scores, 1-D is labels). Labels become one-hot scores and ``exposes`` is
            ``{"labels"}`` (a decision-based black box).
        batch_size: texts per call of ``fn``.

    >>> clf = CallableTextClassifier(my_filter, class_names=("ham", "spam"), output="labels")
    """

    def __init__(
        self,
        fn: Callable[[list[str]], Any],
        class_names: Sequence[str],
        *,
        output: str = "auto",
        batch_size: int = 256,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"CallableTextClassifier: fn must be callable, got {fn!r}")
        if output not in ("auto", "scores", "labels"):
            raise ValueError(f"output must be 'auto', 'scores' or 'labels', got {output!r}")
        super().__init__(class_names, batch_size=batch_size)
        self.fn = fn
        self.output = output
        self.exposes = self._exposes()

    def _exposes(self) -> frozenset[str]:
        if self.output == "labels":
            return frozenset({"labels"})
        return frozenset({"scores", "labels"})

    def _scores(self, texts: list[str]) -> torch.Tensor:
        out = self.fn(texts)
        if isinstance(out, torch.Tensor):
            out = out.detach().cpu().numpy()
        arr = np.asarray(out)
        if self.output == "auto":
            self.output = "scores" if arr.ndim == 2 else "labels"
            self.exposes = self._exposes()
        if self.output == "scores":
            return torch.as_tensor(np.asarray(arr, dtype=np.float64))
        return self._one_hot(arr, len(texts))

    def _one_hot(self, arr: np.ndarray, n: int) -> torch.Tensor:
        name = type(self).__name__
        arr = arr.reshape(-1) if arr.ndim == 2 and 1 in arr.shape else arr
        if arr.ndim != 1 or arr.shape[0] != n:
            raise ValueError(f"{name}: expected {n} labels, got an array of shape {arr.shape}")
        labels = []
        for v in arr.tolist():
            if isinstance(v, str):
                if v not in self.class_names:
                    raise ValueError(
                        f"{name}: the model answered {v!r}, not one of {list(self.class_names)}"
                    )
                labels.append(self.class_names.index(v))
            elif isinstance(v, int | float) and float(v) == int(v):
                if not 0 <= int(v) < self.num_classes:
                    raise ValueError(f"{name}: label {v} out of range [0, {self.num_classes})")
                labels.append(int(v))
            else:
                raise ValueError(f"{name}: cannot read {v!r} as a class label")
        return torch.nn.functional.one_hot(
            torch.tensor(labels, dtype=torch.int64), self.num_classes
        ).float()


# --------------------------------------------------------------------------------------------
# scikit-learn
# --------------------------------------------------------------------------------------------


class SklearnTextClassifier(TextClassifier):
    """A scikit-learn text pipeline (raw strings in) with ``predict_proba``; a black box.

    ``class_names`` default to ``estimator.classes_`` when those are strings; when given, the
    probability columns are reordered to match them (the estimator may have learnt
    ``["spam", "ham"]``). Integer ``classes_`` are read as indices of ``class_names``.
    """

    def __init__(
        self, estimator: Any, class_names: Sequence[str] | None = None, *, batch_size: int = 512
    ) -> None:
        if not hasattr(estimator, "predict_proba"):
            raise TypeError(
                f"SklearnTextClassifier needs an estimator with predict_proba, got "
                f"{type(estimator).__name__}"
            )
        classes = list(getattr(estimator, "classes_", []))
        if class_names is None:
            if not classes or not all(isinstance(c, str) for c in classes):
                raise ValueError("pass class_names: the estimator's classes_ are not names")
            class_names = classes
        super().__init__(class_names, batch_size=batch_size)
        self.estimator = estimator
        if classes and all(isinstance(c, str) for c in classes):
            missing = [c for c in self.class_names if c not in classes]
            if missing or len(classes) != self.num_classes:
                raise ValueError(
                    f"estimator classes {classes} do not match class_names {list(self.class_names)}"
                )
            self._order = [classes.index(c) for c in self.class_names]
        else:
            n = len(classes) or self.num_classes
            if n != self.num_classes:
                raise ValueError(
                    f"estimator has {n} classes but class_names has {self.num_classes}"
                )
            self._order = list(range(n))

    def _scores(self, texts: list[str]) -> torch.Tensor:
        p = np.asarray(self.estimator.predict_proba(texts), dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != len(self._order):
            raise ValueError(f"predict_proba returned shape {p.shape}")
        return torch.from_numpy(p[:, self._order])


#: the types a scikit-learn text pipeline of advex is made of (read by :func:`load_skops`)
SKOPS_TEXT_TYPES = (
    "builtins.dict",
    "builtins.list",
    "numpy.dtype",
    "numpy.float64",
    "numpy.int64",
    "numpy.ndarray",
    "sklearn.feature_extraction.text.TfidfTransformer",
    "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.feature_extraction.text.CountVectorizer",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.pipeline.FeatureUnion",
    "sklearn.pipeline.Pipeline",
    "scipy.sparse._csr.csr_matrix",
)


def load_skops(path: str | os.PathLike, trusted: Sequence[str] = ()) -> Any:
    """Load a scikit-learn object saved with ``skops.io.dump`` — never with pickle.

    skops lists the types in the file it does not trust by default; each must be in
    ``trusted`` (extra type names you vouch for), or the file is refused with a
    :class:`~advex.models.ModelLoadError` naming them. Needs the ``skops`` package (extra
    ``[text]``).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"skops file not found: {p}")
    try:
        import skops.io as sio
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "loading a scikit-learn model needs skops: pip install 'advex[text]'"
        ) from e
    try:
        untrusted = sio.get_untrusted_types(file=str(p))
    except Exception as e:
        raise ModelLoadError(f"{p} is not a readable skops file: {e}") from e
    refused = sorted(set(untrusted) - set(trusted))
    if refused:
        raise ModelLoadError(
            f"{p} holds types that are not trusted: {refused}; pass trusted=[...] only if "
            "you know where the file came from"
        )
    try:
        return sio.load(str(p), trusted=list(untrusted))
    except Exception as e:
        raise ModelLoadError(f"cannot load {p}: {e}") from e


# --------------------------------------------------------------------------------------------
# torch: tokenizer + module (white box)
# --------------------------------------------------------------------------------------------


class CharTokenizer:
    """A deterministic character-level tokenizer: id 0 = padding, 1 = unknown, then one id per
    character of ``alphabet`` (in its order). Saved as JSON (:meth:`save` / :meth:`load`).

    Args:
        alphabet: the characters with their own id (a str or a sequence of single characters;
            duplicates are refused).
        max_length: texts longer than this are cut (the first ``max_length`` characters).
        lowercase: map text to lower case before encoding.

    >>> tok = CharTokenizer.fit(["win cash", "hello"], min_count=1, max_length=64)
    >>> tok.decode(tok.encode(["win"])[0])
    'win'
    """

    PAD, UNK = 0, 1

    def __init__(self, alphabet: Sequence[str], max_length: int = 256, lowercase: bool = False):
        chars = list(alphabet)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer: alphabet entries must be single characters")
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: alphabet has duplicate characters")
        if isinstance(max_length, bool) or int(max_length) < 1:
            raise ValueError(f"CharTokenizer: max_length must be >= 1, got {max_length!r}")
        self.alphabet = "".join(chars)
        self.max_length = int(max_length)
        self.lowercase = bool(lowercase)
        self._index = {c: i + 2 for i, c in enumerate(chars)}
        self.level = "char"

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        *,
        min_count: int = 2,
        max_length: int = 256,
        lowercase: bool = False,
    ) -> CharTokenizer:
        """The characters seen at least ``min_count`` times in ``texts``, most frequent first
        (ties by code point: deterministic)."""
        counts: dict[str, int] = {}
        for t in check_texts(texts):
            for c in t.lower() if lowercase else t:
                counts[c] = counts.get(c, 0) + 1
        frequent = (c for c, k in counts.items() if k >= min_count)
        chars = sorted(frequent, key=lambda c: (-counts[c], c))
        return cls(chars, max_length=max_length, lowercase=lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 2

    def token(self, i: int) -> str:
        """The character of id ``i`` ("" for padding, "\\ufffd" for unknown)."""
        if i == self.PAD:
            return ""
        if i == self.UNK:
            return "\ufffd"
        return self.alphabet[i - 2]

    def encode(self, texts: Sequence[str], length: int | None = None) -> torch.Tensor:
        """Ids ``(N, L)`` (int64), padded with 0 to the longest text (at most ``max_length``;
        at least 1) or to ``length``."""
        texts = check_texts(texts)
        cut = [t[: self.max_length] for t in texts]
        L = length if length is not None else max([len(t) for t in cut] + [1])
        ids = torch.zeros(len(cut), L, dtype=torch.int64)
        low = self.lowercase
        for r, t in enumerate(cut):
            row = [self._index.get(c.lower() if low else c, self.UNK) for c in t[:L]]
            if row:
                ids[r, : len(row)] = torch.tensor(row, dtype=torch.int64)
        return ids

    def decode(self, ids: torch.Tensor) -> str:
        """The text of one row of ids (padding dropped)."""
        return "".join(self.token(int(i)) for i in ids.tolist())

    def spans(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` in ``text`` of each token the model sees (one per character, up to
        ``max_length``)."""
        return [(i, i + 1) for i in range(min(len(text), self.max_length))]

    def to_dict(self) -> dict:
        return {
            "type": "advex.CharTokenizer",
            "alphabet": list(self.alphabet),
            "max_length": self.max_length,
            "lowercase": self.lowercase,
        }

    def save(self, path: str | os.PathLike) -> Path:
        from advex._io import atomic_write

        p = Path(path)
        atomic_write(p, json.dumps(self.to_dict(), ensure_ascii=True, indent=1) + "\n")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        return load_tokenizer(path, cls)


class WordTokenizer:
    """A deterministic word-level tokenizer: tokens are runs of letters and digits or single
    punctuation marks / symbols (emoji included), lower-cased; id 0 = padding, 1 = unknown,
    then one id per word of ``vocab``. Saved as JSON (:meth:`save` / :meth:`load`).

    Args:
        vocab: the tokens with their own id (no duplicates).
        max_length: tokens per text kept (the first ``max_length``).
        lowercase: lower-case tokens before lookup (default True).

    >>> tok = WordTokenizer.fit(["Win cash now!", "win a prize"], min_count=1)
    >>> tok.decode(tok.encode(["WIN cash"])[0])
    'win cash'
    """

    PAD, UNK = 0, 1
    PATTERN = r"[^\W_]+|[^\w\s]"

    def __init__(self, vocab: Sequence[str], max_length: int = 128, lowercase: bool = True):
        import re

        words = list(vocab)
        if any(not isinstance(w, str) or not w or w != w.strip() for w in words):
            raise ValueError("WordTokenizer: vocab entries must be non-empty strings")
        if len(set(words)) != len(words):
            raise ValueError("WordTokenizer: vocab has duplicate tokens")
        if isinstance(max_length, bool) or int(max_length) < 1:
            raise ValueError(f"WordTokenizer: max_length must be >= 1, got {max_length!r}")
        self.vocab = tuple(words)
        self.max_length = int(max_length)
        self.lowercase = bool(lowercase)
        self._index = {w: i + 2 for i, w in enumerate(words)}
        self._re = re.compile(self.PATTERN)
        self.level = "word"

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        *,
        min_count: int = 2,
        max_length: int = 128,
        lowercase: bool = True,
    ) -> WordTokenizer:
        """The tokens seen at least ``min_count`` times, most frequent first (ties
        alphabetical: deterministic)."""
        import re

        pat = re.compile(cls.PATTERN)
        counts: dict[str, int] = {}
        for t in check_texts(texts):
            for w in pat.findall(t):
                w = w.lower() if lowercase else w
                counts[w] = counts.get(w, 0) + 1
        frequent = (w for w, k in counts.items() if k >= min_count)
        return cls(sorted(frequent, key=lambda w: (-counts[w], w)), max_length, lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + 2

    def token(self, i: int) -> str:
        if i == self.PAD:
            return ""
        if i == self.UNK:
            return "\ufffd"
        return self.vocab[i - 2]

    def spans(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` in ``text`` of each token the model sees (up to ``max_length``)."""
        return [m.span() for m in self._re.finditer(text)][: self.max_length]

    def tokens(self, text: str) -> list[str]:
        out = self._re.findall(text)[: self.max_length]
        return [w.lower() for w in out] if self.lowercase else out

    def encode(self, texts: Sequence[str], length: int | None = None) -> torch.Tensor:
        """Ids ``(N, L)`` (int64), padded with 0 to the longest text (at least 1)."""
        rows = [[self._index.get(w, self.UNK) for w in self.tokens(t)] for t in check_texts(texts)]
        L = length if length is not None else max([len(r) for r in rows] + [1])
        ids = torch.zeros(len(rows), L, dtype=torch.int64)
        for r, row in enumerate(rows):
            if row:
                ids[r, : min(L, len(row))] = torch.tensor(row[:L], dtype=torch.int64)
        return ids

    def decode(self, ids: torch.Tensor) -> str:
        return " ".join(self.token(int(i)) for i in ids.tolist() if int(i) != self.PAD)

    def to_dict(self) -> dict:
        return {
            "type": "advex.WordTokenizer",
            "vocab": list(self.vocab),
            "max_length": self.max_length,
            "lowercase": self.lowercase,
        }

    def save(self, path: str | os.PathLike) -> Path:
        from advex._io import atomic_write

        p = Path(path)
        atomic_write(p, json.dumps(self.to_dict(), ensure_ascii=True, indent=0) + "\n")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordTokenizer:
        return load_tokenizer(path, cls)


def load_tokenizer(path: str | os.PathLike, kind: type | None = None):
    """A :class:`CharTokenizer` or :class:`WordTokenizer` from its JSON file (the file says
    which); ``ModelLoadError`` for anything else."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read tokenizer {p}: {e}") from e
    kinds = {"advex.CharTokenizer": CharTokenizer, "advex.WordTokenizer": WordTokenizer}
    cls = kinds.get(d.get("type")) if isinstance(d, dict) else None
    if cls is None or (kind is not None and cls is not kind):
        raise ModelLoadError(f"{p} is not an advex {getattr(kind, '__name__', 'tokenizer')} file")
    try:
        if cls is CharTokenizer:
            return cls(d["alphabet"], max_length=d["max_length"], lowercase=d["lowercase"])
        return cls(d["vocab"], max_length=d["max_length"], lowercase=d["lowercase"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{p}: bad tokenizer file: {e}") from e


class TorchTextClassifier(TextClassifier):
    """A torch text model: ``tokenizer.encode(texts) -> ids (N, L)`` then ``module(ids) ->
    logits (N, C)``.

    White box when the module exposes ``embedding`` (an ``nn.Embedding``) and
    ``forward_embedded(embedded (N, L, D), ids (N, L)) -> logits``: then
    :meth:`one_hot_gradient` gives the gradient with respect to one-hot token inputs (HotFlip)
    and :attr:`embedding_matrix` the matrix. The module is run in eval mode with frozen weights
    (:func:`~advex.models.attack_mode`), and left as found.

    Args:
        module: the ``nn.Module``.
        tokenizer: an object with ``encode(texts) -> LongTensor (N, L)``; for token flips also
            ``decode(ids_row) -> str``, ``token(id) -> str``, ``vocab_size``, ``PAD``/``UNK``
            and ``level`` (``"char"`` or ``"word"``), like :class:`CharTokenizer`.
        class_names: the class names, in logit order.
    """

    def __init__(
        self,
        module: nn.Module,
        tokenizer: Any,
        class_names: Sequence[str],
        *,
        batch_size: int = 256,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"TorchTextClassifier needs an nn.Module, got {type(module).__name__}")
        if not callable(getattr(tokenizer, "encode", None)):
            raise TypeError("TorchTextClassifier: tokenizer needs encode(texts) -> ids (N, L)")
        super().__init__(class_names, batch_size=batch_size)
        self.module = module
        self.tokenizer = tokenizer
        white = isinstance(getattr(module, "embedding", None), nn.Embedding) and callable(
            getattr(module, "forward_embedded", None)
        )
        self.exposes = frozenset(EXPOSES if white else ("scores", "labels"))

    @property
    def device(self) -> torch.device:
        return model_device(self.module)

    @property
    def embedding_matrix(self) -> torch.Tensor:
        """The token embedding matrix ``(V, D)`` (a detached view; do not modify)."""
        if "gradients" not in self.exposes:
            raise TypeError(f"{type(self.module).__name__} exposes no embedding")
        return self.module.embedding.weight.detach()

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer.encode(check_texts(texts)).to(self.device)

    def logits_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits of token ids ``(N, L)`` (no gradient; counts ``N`` queries)."""
        with attack_mode(self.module, warn=False), torch.no_grad():
            out = self.module(ids.to(self.device))
        self.queries += int(ids.shape[0])
        return self._check_scores(out, int(ids.shape[0]))

    def _scores(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer.encode(texts).to(self.device)
        with attack_mode(self.module, warn=False), torch.no_grad():
            return self.module(ids)

    def one_hot_gradient(
        self, ids: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (N, C), gradient (N, L, V))``: the gradient of ``objective(logits)`` (one
        value per row, summed) with respect to the one-hot encoding of ``ids``. Entry
        ``[n, i, v] - [n, i, ids[n, i]]`` is the first-order change of the objective when token
        ``i`` of row ``n`` becomes ``v`` (Ebrahimi et al. 2018). Counts ``N`` queries."""
        if "gradients" not in self.exposes:
            raise TypeError(
                f"{type(self.module).__name__} is not white-box: it needs an `embedding` "
                "(nn.Embedding) and forward_embedded(embedded, ids)"
            )
        ids = ids.to(self.device)
        with attack_mode(self.module, warn=False):
            weight = self.module.embedding.weight.detach()
            emb = torch.nn.functional.embedding(ids, weight).requires_grad_(True)
            with torch.enable_grad():
                logits = self.module.forward_embedded(emb, ids)
                obj = objective(logits)
                (g,) = torch.autograd.grad(obj.sum(), emb)
        self.queries += int(ids.shape[0])
        return logits.detach().float().cpu(), (g @ weight.T).detach().float().cpu()


def as_text_classifier(
    model: Any, class_names: Sequence[str] | None = None, **kwargs: Any
) -> TextClassifier:
    """``model`` as a :class:`TextClassifier`: returned as is when it already is one; a
    scikit-learn estimator with ``predict_proba`` becomes a :class:`SklearnTextClassifier`;
    any other callable a :class:`CallableTextClassifier` (``class_names`` required, or the
    callable's own ``class_names`` attribute)."""
    if isinstance(model, TextClassifier):
        if class_names is not None and tuple(class_names) != model.class_names:
            raise ValueError(
                f"model classes {list(model.class_names)} differ from {list(class_names)}"
            )
        return model
    if isinstance(model, nn.Module):
        raise TypeError(
            "a torch text model needs its tokenizer: wrap it as "
            "TorchTextClassifier(module, tokenizer, class_names)"
        )
    if hasattr(model, "predict_proba") and hasattr(model, "fit"):
        return SklearnTextClassifier(model, class_names, **kwargs)
    if callable(model):
        names = class_names if class_names is not None else getattr(model, "class_names", None)
        return CallableTextClassifier(model, _class_names(names), **kwargs)
    raise TypeError(f"cannot use {type(model).__name__} as a text classifier (not callable)")


class TextModelCaller:
    """Runs a :class:`TextClassifier` during one attack and counts, per example, the texts
    scored (``queries``) and the gradient evaluations (``gradients``).

    ``scores(texts, idx)`` scores ``texts``, the ``k``-th belonging to example ``idx[k]``.
    """

    def __init__(self, model: TextClassifier, n: int) -> None:
        self.model = model
        self.queries = torch.zeros(n, dtype=torch.int64)
        self.gradients = torch.zeros(n, dtype=torch.int64)

    def _count(self, counter: torch.Tensor, idx: Sequence[int] | torch.Tensor | None) -> None:
        if idx is None:
            counter += 1
            return
        idx = torch.as_tensor(idx, dtype=torch.int64).reshape(-1)
        if idx.numel():
            counter.index_add_(0, idx, torch.ones_like(idx))

    def scores(
        self, texts: Sequence[str], idx: Sequence[int] | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores ``(len(texts), C)``; example ``idx[k]`` is charged one query for text ``k``
        (``idx=None``: one text per example, in order)."""
        texts = list(texts)
        if idx is not None and len(idx) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(idx)} indices")
        if not texts:
            return torch.zeros(0, self.model.num_classes)
        out = self.model(texts)
        self._count(self.queries, idx)
        return out

    def one_hot_gradient(self, ids, objective, idx=None):
        """:meth:`TorchTextClassifier.one_hot_gradient`, counted (a query and a gradient for
        each row)."""
        out = self.model.one_hot_gradient(ids, objective)
        self._count(self.queries, idx)
        self._count(self.gradients, idx)
        return out

    def logits_from_ids(self, ids, idx=None) -> torch.Tensor:
        out = self.model.logits_from_ids(ids)
        self._count(self.queries, idx)
        return out
