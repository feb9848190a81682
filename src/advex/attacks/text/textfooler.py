"""TextFooler: word substitutions ranked by deletion importance, under a sentence-similarity
constraint.

Jin, Jin, Zhou & Szolovits, "Is BERT Really Robust? A Strong Baseline for Natural Language
Attack on Text Classification and Entailment", AAAI 2020.

For each example still to attack:

1. **word importance by deletion** — every word is deleted in turn (one query each) and
   ranked by how much the deletion moves the model toward the goal (paper, eq. 2);
2. **stop-word protection** — function words (:data:`~.synonyms.STOP_WORDS`), numbers and
   punctuation are never replaced;
3. for the words in that order, **synonym candidates** (:class:`~.synonyms.SynonymSource`:
   WordNet synonyms and GloVe neighbours with cosine ≥ δ = 0.5, up to N = 50, antonyms
   removed, sharing a WordNet part of speech with the word, capitalisation kept) are put in
   place, one query each — all candidates of all active examples in one batched call;
4. **the similarity constraint** — a candidate must keep the sentence embedding similarity
   (MiniLM cosine, :mod:`advex.models.minilm`) to the *original* text at or above
   ``min_similarity``; among candidates that reach the goal, the most similar is taken (of the
   first eight, in synonym order, that hold one passing the constraint) and the example stops
   (per-point early exit); otherwise the candidate that moves the goal score
   most (and passes the constraint) is kept and the next word is tried;
5. **the budget** — at most ``max_word_fraction`` of the words (and ``max_words``) change.

All active examples advance in lockstep, so every step is one batched model call. Queries are
counted per example through the attack's :class:`~advex.models.text.TextModelCaller`; the
similarity model is the attacker's own and costs no queries (it is evaluated lazily: only for
candidates that would be chosen).

Punctuation around a word stays where it is ("prize!" → "award!"), so a substitution changes
exactly one whitespace-separated word, as :class:`~advex.threats.text.EditBudget` counts them.

>>> from advex.attacks.text import TextFooler
>>> result = TextFooler(max_word_fraction=0.1, min_similarity=0.8)(model, spam, "spam",
...                                                                    target="ham")
>>> result.success_rate, result.words_changed, result.similarity
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import torch

from ...core.goals import Goal
from ...models.text import TextModelCaller
from ...threats.text import EditBudget, SimilarityFn, split_words
from .base import TextAttack, make_budget, register_text_attack
from .synonyms import STOP_WORDS, SynonymSource, is_substitutable

__all__ = ["TextFooler", "minilm_similarity"]

_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)


def minilm_similarity(originals: Sequence[str], adversarials: Sequence[str]) -> torch.Tensor:
    """Pairwise MiniLM cosine similarity (the default similarity of :class:`TextFooler`)."""
    from ...models.minilm import load_minilm

    if len(originals) != len(adversarials):
        raise ValueError(f"{len(originals)} originals but {len(adversarials)} adversarials")
    if not len(originals):
        return torch.zeros(0)
    return load_minilm().similarity(list(originals), list(adversarials))


def _split_core(word: str) -> tuple[str, str, str]:
    """(leading punctuation, core, trailing punctuation) of a whitespace word."""
    m = _CORE.match(word)
    return (m.group(1), m.group(2), m.group(3)) if m else ("", word, "")


def _goal_prob(scores: torch.Tensor, goal: Goal, rows: torch.Tensor) -> torch.Tensor:
    """Per row the probability of reaching the goal: targeted p(target); untargeted 1 − p(y)."""
    p = scores.float().softmax(1)
    lab = goal.labels[rows]
    own = p.gather(1, lab[:, None]).squeeze(1)
    return own if goal.targeted else 1.0 - own


class _State:
    """One example during the search."""

    __slots__ = ("i", "words", "order", "pos", "changed", "limit", "score", "done")

    def __init__(self, i: int, words: list[str], limit: int) -> None:
        self.i = i
        self.words = words
        self.order: list[int] = []
        self.pos = 0  # next entry of ``order`` to try
        self.changed = 0
        self.limit = limit
        self.score = 0.0
        self.done = False


@register_text_attack
class TextFooler(TextAttack):
    """TextFooler (Jin et al. 2020): deletion importance, synonym swaps, similarity constraint.

    Args:
        max_word_fraction: most words changed, as a share of the message's words (the
            evaluation's 10 % by default; at least one word).
        max_words: an absolute cap on the words changed (None = only the fraction).
        min_similarity: least MiniLM cosine similarity between the original and the
            adversarial (paper: 0.7 with USE on a window; 0.8 here on the whole message).
        max_candidates: synonym candidates tried per word (paper: N = 50).
        glove_k: GloVe neighbours considered per word.
        min_cosine: least GloVe cosine of a neighbour to the word (the paper's δ = 0.5;
            raw GloVe is less synonym-like than its counter-fitted vectors, so the WordNet
            part-of-speech check and the antonym filter prune what this lets through).
        synonyms: ``"wordnet+glove"`` (default), ``"wordnet"`` or ``"glove"``.
        positions: word positions tried per step, in importance order. 1 is the paper's
            greedy walk down the importance ranking (one position at a time, each tried once);
            ``p > 1`` puts the candidates of the next ``p`` untried important positions side
            by side and keeps the best substitution among them (more queries per step, better
            use of a small word budget); the positions not chosen stay in the queue.
        pos_filter: keep only candidates sharing a WordNet part of speech with the word (the
            paper's POS check, from the dictionary; see :class:`~.synonyms.SynonymSource`).
        max_text_words: a message with more words is left unchanged (with a warning): ranking
            its words costs one query per word.
        similarity: ``similarity(originals, adversarials) -> scores``; default
            :func:`minilm_similarity`. ``budget=`` replaces all the limits at once.
        seed: unused by the search (it is deterministic), kept for the interface.

    Shapes: ``texts`` a list of N str, ``y``/``target`` one class (index or name) or N; the
    result's ``adversarial`` a list of N str.

    >>> TextFooler()(advex.zoo.load("sms-spam-cnn"), spam_texts, "spam", target="ham")
    """

    name = "textfooler"
    aliases = ("text-fooler", "word-substitution")
    black_box = True
    needs = frozenset({"scores"})

    def __init__(
        self,
        max_word_fraction: float | None = 0.1,
        *,
        max_words: int | None = None,
        min_similarity: float | None = 0.8,
        max_candidates: int = 50,
        glove_k: int = 50,
        min_cosine: float = 0.5,
        synonyms: str = "wordnet+glove",
        positions: int = 1,
        pos_filter: bool = True,
        max_text_words: int = 2000,
        similarity: SimilarityFn | None = None,
        budget: EditBudget | None = None,
        seed: int | None = 0,
    ) -> None:
        if budget is None:
            if min_similarity is not None and similarity is None:
                similarity = minilm_similarity
            budget = make_budget(
                max_words=max_words,
                max_word_fraction=max_word_fraction,
                min_similarity=min_similarity,
                similarity=similarity,
            )
        super().__init__(budget, seed=seed)
        if budget.max_words is None and budget.max_word_fraction is None:
            raise ValueError("TextFooler needs a word budget (max_word_fraction or max_words)")
        for name, v in (("max_candidates", max_candidates), ("glove_k", glove_k)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        sources = tuple(s for s in str(synonyms).replace(",", "+").split("+") if s)
        if not sources or any(s not in ("wordnet", "glove") for s in sources):
            raise ValueError(
                f"synonyms must be 'wordnet+glove', 'wordnet' or 'glove', got {synonyms!r}"
            )
        self.max_word_fraction = budget.max_word_fraction
        self.max_words = budget.max_words
        self.min_similarity = budget.min_similarity
        self.max_candidates = max_candidates
        self.glove_k = glove_k
        self.min_cosine = float(min_cosine)
        self.synonyms = "+".join(sources)
        if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
            raise ValueError(f"positions must be an integer >= 1, got {positions!r}")
        self.positions = positions
        self.pos_filter = bool(pos_filter)
        if isinstance(max_text_words, bool) or not isinstance(max_text_words, int):
            raise ValueError(f"max_text_words must be an integer >= 1, got {max_text_words!r}")
        if max_text_words < 1:
            raise ValueError(f"max_text_words must be an integer >= 1, got {max_text_words!r}")
        self.max_text_words = max_text_words
        self._source: SynonymSource | None = None

    @property
    def source(self) -> SynonymSource:
        """The synonym source (built on first use: loads GloVe and WordNet once per process)."""
        if self._source is None:
            self._source = SynonymSource(
                tuple(self.synonyms.split("+")),
                k=self.glove_k,
                min_cosine=self.min_cosine,
                max_candidates=self.max_candidates,
                stop_words=STOP_WORDS,
                pos_filter=self.pos_filter,
            )
        return self._source

    # -- the search ---------------------------------------------------------------------------
    def _attack(
        self,
        caller: TextModelCaller,
        texts: list[str],
        goal: Goal,
        done: torch.Tensor,
        clean_scores: torch.Tensor,
    ) -> list[str]:
        adv = list(texts)
        todo = (~done).nonzero().squeeze(1).tolist()
        clean_g = _goal_prob(clean_scores, goal, torch.arange(len(texts)))
        states: list[_State] = []
        too_long = []
        for i in todo:
            words = split_words(texts[i])
            if len(words) > self.max_text_words:
                too_long.append(i)
                continue
            limit = self.threat.word_limit(texts[i])
            if not words or limit is None or limit < 1:
                continue
            st = _State(i, words, limit)
            st.score = float(clean_g[i])
            states.append(st)
        if too_long:
            warnings.warn(
                f"TextFooler: {len(too_long)} message(s) longer than max_text_words="
                f"{self.max_text_words} words left unchanged (first: example {too_long[0]})",
                stacklevel=3,
            )
        if not states:
            return adv
        self._rank_by_deletion(caller, states, goal)
        active = [s for s in states if s.order]
        while active:
            self._step(caller, active, goal, texts)
            active = [s for s in active if not s.done and s.pos < len(s.order)]
            active = [s for s in active if s.changed < s.limit]
        for s in states:
            adv[s.i] = " ".join(s.words) if s.changed else texts[s.i]
        return adv

    def _rank_by_deletion(self, caller: TextModelCaller, states: list[_State], goal) -> None:
        """Importance of each substitutable word: how much deleting it raises the goal
        probability (one batched call for all examples)."""
        batch, owner, where = [], [], []
        for s in states:
            for j, w in enumerate(s.words):
                if not is_substitutable(_split_core(w)[1]):
                    continue
                batch.append(" ".join(s.words[:j] + s.words[j + 1 :]))
                owner.append(s)
                where.append(j)
        if not batch:
            return
        scores = caller.scores(batch, [s.i for s in owner])
        g = _goal_prob(scores, goal, torch.tensor([s.i for s in owner])).tolist()
        imp: dict[int, list[tuple[float, int]]] = {}
        for s, j, v in zip(owner, where, g, strict=True):
            imp.setdefault(id(s), []).append((v - s.score, j))
        for s in states:
            ranked = sorted(imp.get(id(s), []), key=lambda t: (-t[0], t[1]))
            s.order = [j for _, j in ranked]

    def _next_candidates(self, s: _State) -> list[tuple[int, list[str]]]:
        """The next ``positions`` untried word positions of ``s`` that have candidates, with
        their candidate words (removed from the queue only when tried and not chosen in the
        one-position walk; with several, the chosen one leaves the queue)."""
        out = []
        k = s.pos
        while k < len(s.order) and len(out) < self.positions:
            j = s.order[k]
            k += 1
            pre, core, post = _split_core(s.words[j])
            cands = self.source(core)
            if cands:
                out.append((j, [pre + c + post for c in cands]))
            elif k == s.pos + 1:
                s.pos += 1  # nothing to try here, ever
        return out

    def _step(self, caller, active: list[_State], goal: Goal, texts: list[str]) -> None:
        batch, owner, meta = [], [], []
        for s in active:
            for j, cands in self._next_candidates(s):
                for c in cands:
                    words = list(s.words)
                    words[j] = c
                    batch.append(" ".join(words))
                    owner.append(s)
                    meta.append((j, c))
        if not batch:
            for s in active:
                s.pos = len(s.order)
            return
        rows = torch.tensor([s.i for s in owner])
        scores = caller.scores(batch, rows.tolist())
        g = _goal_prob(scores, goal, rows)
        hit = goal[rows].is_success(scores)
        groups: dict[int, list[int]] = {}
        for k, s in enumerate(owner):
            groups.setdefault(id(s), []).append(k)
        by_id = {id(s): s for s in owner}
        # similarity is checked lazily: the flipping candidates, then the best improvers;
        # the first chunk of every example is scored in one batched similarity call
        sim_cache: dict[int, float | None] = {}
        first_chunks: list[int] = []
        for sid, ks in groups.items():
            s = by_id[sid]
            flips = [k for k in ks if bool(hit[k])]
            if flips:
                first_chunks.extend(flips[:8])
            else:
                better = sorted(
                    (k for k in ks if float(g[k]) > s.score + 1e-7),
                    key=lambda k: (-float(g[k]), k),
                )
                first_chunks.extend(better[:4])
        if first_chunks:
            pre = self._similarities_batch(
                [texts[owner[k].i] for k in first_chunks], [batch[k] for k in first_chunks]
            )
            sim_cache.update(zip(first_chunks, pre, strict=True))

        def sims_of(i: int, chunk: list[int]) -> list[float | None]:
            missing = [k for k in chunk if k not in sim_cache]
            if missing:
                got = self._similarities(texts[i], [batch[k] for k in missing])
                sim_cache.update(zip(missing, got, strict=True))
            return [sim_cache[k] for k in chunk]

        for sid, ks in groups.items():
            s = by_id[sid]
            tried = list(dict.fromkeys(meta[k][0] for k in ks))
            flips = [k for k in ks if bool(hit[k])]
            chosen = None
            # flipping candidates in synonym order, eight at a time: the most similar of the
            # first eight that hold a passing one (the paper takes the most similar of all;
            # this bounds the similarity model's work when dozens of candidates flip)
            for start in range(0, len(flips), 8):
                chunk = flips[start : start + 8]
                sims = sims_of(s.i, chunk)
                ok = [(sims[t], -t, k) for t, k in enumerate(chunk) if self._passes(sims[t])]
                if ok:
                    chosen = max(ok, key=lambda v: (v[0] if v[0] is not None else 1.0, v[1]))[2]
                    s.done = True
                    break
            if chosen is None:
                better = sorted(
                    (k for k in ks if float(g[k]) > s.score + 1e-7 and not bool(hit[k])),
                    key=lambda k: (-float(g[k]), k),
                )
                for start in range(0, len(better), 4):  # four at a time, best first
                    chunk = better[start : start + 4]
                    sims = sims_of(s.i, chunk)
                    passing = [k for t, k in enumerate(chunk) if self._passes(sims[t])]
                    if passing:
                        chosen = passing[0]
                        break
            if chosen is not None:
                j, c = meta[chosen]
                s.words[j] = c
                s.changed += 1
                s.score = float(g[chosen])
            # the queue: the paper's walk drops every tried position; the wider search drops
            # the chosen one (or, when nothing helped, all tried ones)
            drop = set(tried) if (self.positions == 1 or chosen is None) else {meta[chosen][0]}
            rest = [j for j in s.order[s.pos :] if j not in drop]
            s.order = s.order[: s.pos] + rest

    def _passes(self, sim: float | None) -> bool:
        return self.min_similarity is None or sim is None or sim >= self.min_similarity

    def _similarities_batch(
        self, originals: list[str], candidates: list[str]
    ) -> list[float | None]:
        if self.threat.similarity is None or self.min_similarity is None:
            return [None] * len(candidates)
        return self.threat.similarities(originals, candidates).tolist()

    def _similarities(self, original: str, candidates: list[str]) -> list[float | None]:
        if self.threat.similarity is None or self.min_similarity is None:
            return [None] * len(candidates)
        return self.threat.similarities([original] * len(candidates), candidates).tolist()
