"""The text threat: an edit budget over characters and words.

A text attack may change a message only so much: at most ``max_char_edits`` character edits
(insertions, deletions, substitutions and swaps of two neighbouring characters, each costing
one: the optimal-string-alignment distance), at most ``max_words`` words or a fraction
``max_word_fraction`` of the words (a word is a maximal run of non-space characters; words
changed = the word-level edit distance), and, optionally, a similarity to the original of at
least ``min_similarity`` under a similarity function the caller supplies (e.g. the cosine of
sentence embeddings).

>>> budget = EditBudget(max_char_edits=30, max_word_fraction=0.25)
>>> budget.contains(["free cash now"], ["fr3e cash now"])
tensor([True])
>>> char_edits("free", "fere"), words_changed("free cash now", "fr3e cash now")
(1, 1)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

try:  # optional: the compiled edit distance of the [text] extra
    from rapidfuzz.distance import OSA as _RF_OSA
except ImportError:  # pragma: no cover - without the [text] extra: the Python band below
    _RF_OSA = None

__all__ = [
    "EditBudget",
    "SimilarityFn",
    "char_edits",
    "check_texts",
    "split_words",
    "word_count",
    "words_changed",
]

#: ``similarity(originals, adversarials) -> scores`` (one float per pair, higher = closer)
SimilarityFn = Callable[[Sequence[str], Sequence[str]], Any]

_WORD = re.compile(r"\S+")


def split_words(text: str) -> list[str]:
    """The words of ``text``: maximal runs of non-space characters."""
    return _WORD.findall(text)


def word_count(text: str) -> int:
    """The number of words of ``text`` (see :func:`split_words`)."""
    return len(split_words(text))


def check_texts(texts: Any, what: str = "texts") -> list[str]:
    """``texts`` as a new list of ``str``; ``TypeError`` naming the first bad entry (a bare
    string, bytes that need decoding, None, numbers)."""
    if isinstance(texts, str | bytes):
        raise TypeError(f"{what} must be a list of str, not a single {type(texts).__name__}")
    try:
        out = list(texts)
    except TypeError as e:
        raise TypeError(f"{what} must be a list of str, got {type(texts).__name__}") from e
    for i, t in enumerate(out):
        if isinstance(t, bytes):
            raise TypeError(
                f"{what}[{i}] is bytes; decode it first (e.g. b.decode('utf-8', 'replace'))"
            )
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] is {type(t).__name__}, expected str")
    return out


def _trim(a: Sequence, b: Sequence) -> tuple[Sequence, Sequence]:
    """``a`` and ``b`` without their common prefix and suffix (edits are local)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    j = 0
    while j < n - i and a[len(a) - 1 - j] == b[len(b) - 1 - j]:
        j += 1
    return a[i : len(a) - j], b[i : len(b) - j]


def _osa(a: Sequence, b: Sequence, limit: int | None) -> int:
    """Optimal-string-alignment distance (Levenshtein + adjacent transpositions); with
    ``limit`` the answer is ``min(distance, limit + 1)``. Uses rapidfuzz's compiled OSA when it
    is installed (the ``[text]`` extra; the same distance, ~100x faster: it dominated
    DeepWordBug's CPU time), else the pure-Python band below."""
    if _RF_OSA is not None:
        if limit is None:
            return int(_RF_OSA.distance(a, b))
        return int(_RF_OSA.distance(a, b, score_cutoff=limit))
    return _osa_python(a, b, limit)


def _osa_python(a: Sequence, b: Sequence, limit: int | None) -> int:
    """:func:`_osa` in pure Python, computed in a band of width ``limit`` when given."""
    a, b = _trim(a, b)
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        d = max(n, m)
        return d if limit is None else min(d, limit + 1)
    if limit is not None and abs(n - m) > limit:
        return limit + 1
    big = n + m + 1
    band = max(n, m) if limit is None else limit
    prev2: list[int] = []
    prev = list(range(m + 1))
    for i in range(1, n + 1):
        cur = [big] * (m + 1)
        cur[0] = i
        lo = max(1, i - band)
        hi = min(m, i + band)
        ai = a[i - 1]
        for j in range(lo, hi + 1):
            cost = 0 if ai == b[j - 1] else 1
            v = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and ai == b[j - 2] and a[i - 2] == b[j - 1]:
                v = min(v, prev2[j - 2] + 1)
            cur[j] = v
        if limit is not None and min(cur[max(0, lo - 1) : hi + 1]) > limit:
            return limit + 1
        prev2, prev = prev, cur
    d = prev[m]
    return d if limit is None else min(d, limit + 1)


def char_edits(original: str, adversarial: str, limit: int | None = None) -> int:
    """Character edits between two strings: insertions, deletions, substitutions and swaps of
    neighbouring characters, one each (optimal string alignment). With ``limit``, the work is
    bounded by ``len × limit`` and any distance above ``limit`` is reported as ``limit + 1``."""
    return _osa(original, adversarial, limit)


def words_changed(original: str, adversarial: str) -> int:
    """Words changed: the word-level edit distance (a word replaced, inserted or deleted
    counts one)."""
    return _osa(split_words(original), split_words(adversarial), None)


def _positive(name: str, value, kind) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"EditBudget: {name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"EditBudget: {name} must be > 0, got {value!r}")
    if kind is int:
        if value != int(value):
            raise ValueError(f"EditBudget: {name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


@dataclass(frozen=True)
class EditBudget:
    """What a text attack may change in a message.

    Args:
        max_char_edits: most character edits per message (insert, delete, substitute, swap of
            two neighbours; see :func:`char_edits`); None = no limit.
        max_words: most words changed per message (see :func:`words_changed`); None = none.
        max_word_fraction: most words changed as a share of the original's words, in (0, 1];
            a message of ``w`` words may change ``floor(fraction × w)`` words, and at least
            one; None = no limit.
        min_similarity: least similarity between original and adversarial under
            ``similarity`` (required with it); None = no constraint.
        similarity: ``similarity(originals, adversarials) -> scores`` (a sequence or tensor
            of one float per pair), e.g. the cosine of sentence embeddings.

    At least one limit must be set; every limit must be > 0.

    >>> EditBudget(max_char_edits=30).contains(["win"], ["w1n"])
    tensor([True])
    """

    max_char_edits: int | None = None
    max_words: int | None = None
    max_word_fraction: float | None = None
    min_similarity: float | None = None
    similarity: SimilarityFn | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "max_char_edits", _positive("max_char_edits", self.max_char_edits, int)
        )
        object.__setattr__(self, "max_words", _positive("max_words", self.max_words, int))
        frac = _positive("max_word_fraction", self.max_word_fraction, float)
        if frac is not None and frac > 1:
            raise ValueError(f"EditBudget: max_word_fraction must be <= 1, got {frac}")
        object.__setattr__(self, "max_word_fraction", frac)
        sim = self.min_similarity
        if sim is not None:
            if isinstance(sim, bool) or not isinstance(sim, int | float) or not math.isfinite(sim):
                raise ValueError(f"EditBudget: min_similarity must be a number, got {sim!r}")
            if self.similarity is None:
                raise ValueError("EditBudget: min_similarity needs a similarity= function")
            object.__setattr__(self, "min_similarity", float(sim))
        if self.similarity is not None and not callable(self.similarity):
            raise TypeError("EditBudget: similarity must be callable(originals, adversarials)")
        if (
            self.max_char_edits is None
            and self.max_words is None
            and self.max_word_fraction is None
            and self.min_similarity is None
        ):
            raise ValueError(
                "EditBudget: set at least one limit (max_char_edits, max_words, "
                "max_word_fraction or min_similarity)"
            )

    # -- budgets per message -----------------------------------------------------------------
    def word_limit(self, original: str) -> int | None:
        """The most words that may change in ``original`` (None = no word limit)."""
        limits = []
        if self.max_words is not None:
            limits.append(self.max_words)
        if self.max_word_fraction is not None:
            limits.append(max(1, int(math.floor(self.max_word_fraction * word_count(original)))))
        return min(limits) if limits else None

    def char_limit(self, original: str) -> int | None:
        """The most character edits in ``original`` (None = no character limit)."""
        return self.max_char_edits

    def measure(self, originals: Sequence[str], adversarials: Sequence[str]) -> dict:
        """Per pair: ``char_edits``, ``words_changed``, ``word_fraction`` (int64 / float
        tensors) and ``similarity`` (float tensor, or None without a similarity function)."""
        originals = check_texts(originals, "originals")
        adversarials = check_texts(adversarials, "adversarials")
        if len(originals) != len(adversarials):
            raise ValueError(f"{len(originals)} originals but {len(adversarials)} adversarials")
        chars = torch.tensor(
            [char_edits(a, b) for a, b in zip(originals, adversarials, strict=True)],
            dtype=torch.int64,
        )
        words = torch.tensor(
            [words_changed(a, b) for a, b in zip(originals, adversarials, strict=True)],
            dtype=torch.int64,
        )
        n_words = torch.tensor([max(1, word_count(a)) for a in originals], dtype=torch.float64)
        return {
            "char_edits": chars,
            "words_changed": words,
            "word_fraction": (words.double() / n_words).float(),
            "similarity": self.similarities(originals, adversarials),
        }

    def similarities(self, originals: Sequence[str], adversarials: Sequence[str]):
        """The similarity of each pair (float tensor), or None without a function."""
        if self.similarity is None:
            return None
        if len(originals) == 0:
            return torch.zeros(0)
        s = torch.as_tensor(self.similarity(list(originals), list(adversarials)))
        s = s.detach().to(torch.float32).reshape(-1).cpu()
        if s.numel() != len(originals):
            raise ValueError(f"similarity returned {s.numel()} scores for {len(originals)} pairs")
        if not bool(torch.isfinite(s).all()):
            raise ValueError("similarity returned non-finite scores")
        return s

    def allows(self, original: str, adversarial: str) -> bool:
        """Whether one pair is within the character and word limits (not the similarity:
        that is checked batched, by :meth:`contains`); cheap, for use inside searches."""
        lim = self.max_char_edits
        if lim is not None and char_edits(original, adversarial, limit=lim) > lim:
            return False
        wl = self.word_limit(original)
        return wl is None or words_changed(original, adversarial) <= wl

    def contains(self, originals: Sequence[str], adversarials: Sequence[str]) -> torch.Tensor:
        """Per pair: whether ``adversarial`` is within the budget around ``original``
        (bool tensor)."""
        originals = check_texts(originals, "originals")
        adversarials = check_texts(adversarials, "adversarials")
        if len(originals) != len(adversarials):
            raise ValueError(f"{len(originals)} originals but {len(adversarials)} adversarials")
        ok = torch.tensor(
            [self.allows(a, b) for a, b in zip(originals, adversarials, strict=True)],
            dtype=torch.bool,
        )
        if self.min_similarity is not None and len(originals):
            pairs = enumerate(zip(originals, adversarials, strict=True))
            changed = [i for i, (a, b) in pairs if a != b]
            if changed:
                s = self.similarities(
                    [originals[i] for i in changed], [adversarials[i] for i in changed]
                )
                for k, i in enumerate(changed):
                    if float(s[k]) < self.min_similarity - 1e-6:
                        ok[i] = False
        return ok

    def with_budget(self, **limits) -> EditBudget:
        """A copy with some limits replaced (``budget.with_budget(max_char_edits=10)``)."""
        return replace(self, **limits)

    def budget(self) -> dict:
        """The limits, as a JSON-ready dict."""
        return {
            "max_char_edits": self.max_char_edits,
            "max_words": self.max_words,
            "max_word_fraction": self.max_word_fraction,
            "min_similarity": self.min_similarity,
        }

    def describe(self) -> str:
        parts = []
        if self.max_char_edits is not None:
            parts.append(f"<= {self.max_char_edits} char edits")
        if self.max_words is not None:
            parts.append(f"<= {self.max_words} words")
        if self.max_word_fraction is not None:
            parts.append(f"<= {self.max_word_fraction:.0%} of words")
        if self.min_similarity is not None:
            parts.append(f"similarity >= {self.min_similarity:g}")
        return "edit budget: " + ", ".join(parts)
