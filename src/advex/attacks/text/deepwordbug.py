"""DeepWordBug (Gao, Lanchantin, Soffa and Qi, "Black-box Generation of Adversarial Text
Sequences to Evade Deep Learning Classifiers", IEEE S&P Workshops 2018).

A black-box attack in two steps:

Words are runs of letters and digits, and single symbols (``£``, ``!``): a URL or a price is
several words. A symbol can only be deleted or swapped with a letter inserted next to it.

1. **Word scoring** — how much each word matters to the model, from queries only: the
   *replace-1* score (the change of the objective when the word is removed), the *temporal
   head* score (the change when the prefix ending at the word grows by it), the *temporal
   tail* score (the same for suffixes), or *combined* = head + λ·tail.
2. **Character edits** — the words are edited in order of importance, one character edit per
   word: swap two neighbouring characters, substitute a letter, delete a character, insert a
   letter (and, as an option, replace a letter by a look-alike Unicode character, a
   *homoglyph*). An edit is kept when it raises the objective (the margin toward the goal), and
   the attack stops at the first success or when the edit budget is spent.

All candidate texts of a step, for all examples still running, go to the model in one batch.
"""

from __future__ import annotations

import random
import re
from typing import Literal

import torch

from ...core.goals import Goal
from ...models.text import TextModelCaller
from ...threats.text import EditBudget
from .base import TextAttack, make_budget, register_text_attack

__all__ = ["DeepWordBug", "HOMOGLYPHS"]

#: Latin letters and their look-alikes (Cyrillic / Greek), for ``homoglyphs=True``
HOMOGLYPHS = {
    "a": "а",
    "c": "с",
    "e": "е",
    "i": "і",
    "j": "ј",
    "o": "о",
    "p": "р",
    "s": "ѕ",
    "x": "х",
    "y": "у",
    "A": "Α",
    "B": "Β",
    "C": "С",
    "E": "Ε",
    "H": "Η",
    "I": "Ι",
    "K": "Κ",
    "M": "Μ",
    "N": "Ν",
    "O": "Ο",
    "P": "Ρ",
    "T": "Τ",
    "X": "Χ",
    "Y": "Υ",
    "Z": "Ζ",
}
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
#: the units DeepWordBug scores and edits: runs of letters and digits, and single symbols
_WORD = re.compile(r"[^\W_]+|[^\w\s]")
_SCORINGS = ("replace-1", "temporal-head", "temporal-tail", "combined")
_OPS = ("swap", "substitute", "delete", "insert", "homoglyph")


class DeepWordBug(TextAttack):
    """DeepWordBug (Gao et al. 2018): black-box word scoring, then one character edit per
    important word, within an edit budget.

    Args:
        max_char_edits: most character edits per message (each edit costs one; default 30,
            the paper's largest budget).
        max_words: most words changed per message (None: no limit).
        max_word_fraction: most words changed as a share of the message's words.
        budget: an :class:`~advex.threats.text.EditBudget` instead of the three limits (for a
            similarity constraint, say).
        scoring: ``"replace-1"`` (default), ``"temporal-head"``, ``"temporal-tail"`` or
            ``"combined"`` (head + ``tail_weight`` × tail).
        transformations: comma-separated edits drawn from ``swap``, ``substitute``, ``delete``,
            ``insert`` (default: all four) and ``homoglyph``.
        homoglyphs: add ``homoglyph`` (a letter replaced by a look-alike Unicode character).
        candidates: candidate edits tried per word (one batched query each); the best one is
            kept. 1 (default) is the paper: one random edit per word.
        passes: times the ranked word list is gone through while the budget lasts (a word
            edited in pass 1 can get another edit in pass 2); 1 is the paper.
        tail_weight: λ of the combined score.
        max_scored_words: words scored per message (the first ones; longer messages keep the
            rest unchanged); bounds the queries spent on a huge input.
        seed: seed of the random edits (per example: the same text gets the same edits in any
            batch).

    Queries per example: the clean pass, one per scored word (two for ``combined``), one per
    candidate edit tried, and the final re-prediction.

    >>> atk = DeepWordBug(max_char_edits=30)
    >>> res = atk(model, spam_texts, "spam", target="ham")
    >>> res.success_rate, res.summary()["queries"]["median"]
    """

    name = "deepwordbug"
    aliases = ("dwb",)
    black_box = True
    needs = frozenset({"scores"})

    def __init__(
        self,
        max_char_edits: int | None = 30,
        max_words: int | None = None,
        max_word_fraction: float | None = None,
        *,
        budget: EditBudget | None = None,
        scoring: Literal["replace-1", "temporal-head", "temporal-tail", "combined"] = "replace-1",
        transformations: str = "swap,substitute,delete,insert",
        homoglyphs: bool = False,
        candidates: int = 1,
        passes: int = 1,
        tail_weight: float = 1.0,
        max_scored_words: int = 512,
        seed: int | None = 0,
    ) -> None:
        if budget is not None:
            max_char_edits = max_words = max_word_fraction = None
        super().__init__(
            make_budget(
                budget,
                max_char_edits=max_char_edits,
                max_words=max_words,
                max_word_fraction=max_word_fraction,
            ),
            seed=seed,
        )
        scoring = str(scoring).lower().replace("_", "-")
        if scoring == "replace1":
            scoring = "replace-1"
        if scoring not in _SCORINGS:
            raise ValueError(f"scoring must be one of {_SCORINGS}, got {scoring!r}")
        ops = [t.strip().lower() for t in str(transformations).split(",") if t.strip()]
        if homoglyphs and "homoglyph" not in ops:
            ops.append("homoglyph")
        bad = [t for t in ops if t not in _OPS]
        if bad or not ops:
            raise ValueError(f"transformations must be drawn from {_OPS}, got {transformations!r}")
        for name, v in (
            ("candidates", candidates),
            ("passes", passes),
            ("max_scored_words", max_scored_words),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not float(tail_weight) >= 0:
            raise ValueError(f"tail_weight must be >= 0, got {tail_weight!r}")
        self.max_char_edits = self.threat.max_char_edits
        self.max_words = self.threat.max_words
        self.max_word_fraction = self.threat.max_word_fraction
        self.scoring = scoring
        self.transformations = ",".join(ops)
        self.homoglyphs = "homoglyph" in ops
        self.candidates = candidates
        self.passes = passes
        self.tail_weight = float(tail_weight)
        self.max_scored_words = max_scored_words
        self._ops = tuple(ops)

    # -- word scoring ------------------------------------------------------------------------
    def _score_words(
        self, caller: TextModelCaller, texts, spans, active, goal: Goal, base: torch.Tensor
    ) -> dict[int, list[float]]:
        """Per active example: one importance score per scored word (higher = removing or
        adding the word moves the model more away from the goal's side)."""
        batch, owner, slot = [], [], []
        kinds = (
            ["replace-1"]
            if self.scoring == "replace-1"
            else ["head", "tail"]
            if self.scoring == "combined"
            else [self.scoring.split("-")[1]]
        )
        for i in active:
            text, sp = texts[i], spans[i]
            for kind in kinds:
                for w, (s, e) in enumerate(sp):
                    if kind == "replace-1":
                        variant = text[:s] + text[e:]
                    elif kind == "head":  # the prefix up to and including word w
                        variant = text[:e]
                    else:  # the suffix from word w on
                        variant = text[s:]
                    batch.append(variant)
                    owner.append(i)
                    slot.append((kind, w))
        scores: dict[int, list[float]] = {i: [0.0] * len(spans[i]) for i in active}
        if not batch:
            return scores
        out = caller.scores(batch, owner)
        obj = self.objective(out, goal[torch.tensor(owner)])
        # temporal scores need the objective of the previous prefix / next suffix
        table: dict[tuple[int, str, int], float] = {}
        for k, (i, (kind, w)) in enumerate(zip(owner, slot, strict=True)):
            table[(i, kind, w)] = float(obj[k])
        for i in active:
            n = len(spans[i])
            b = float(base[i])
            for w in range(n):
                if self.scoring == "replace-1":
                    # removing an important word moves the objective toward the goal
                    scores[i][w] = table[(i, "replace-1", w)] - b
                    continue
                head = tail = 0.0
                if "head" in kinds:  # F(x_1..x_w) - F(x_1..x_{w-1}), toward the true side
                    prev = table.get((i, "head", w - 1))
                    cur = table[(i, "head", w)]
                    head = (prev - cur) if prev is not None else -cur
                if "tail" in kinds:  # F(x_w..x_n) - F(x_{w+1}..x_n)
                    nxt = table.get((i, "tail", w + 1))
                    cur = table[(i, "tail", w)]
                    tail = (nxt - cur) if nxt is not None else -cur
                scores[i][w] = head + self.tail_weight * tail
        return scores

    # -- character edits ---------------------------------------------------------------------
    def _edit(self, word: str, rng: random.Random) -> str | None:
        """One random character edit of ``word`` (None when none applies)."""
        ops = list(self._ops)
        rng.shuffle(ops)
        for op in ops:
            n = len(word)
            if op == "swap" and n >= 2:
                pairs = [k for k in range(n - 1) if word[k] != word[k + 1]]
                if pairs:
                    k = rng.choice(pairs)
                    return word[:k] + word[k + 1] + word[k] + word[k + 2 :]
            elif op == "substitute" and n >= 1:
                k = rng.randrange(n)
                c = rng.choice([ch for ch in _LETTERS if ch != word[k].lower()])
                return word[:k] + (c.upper() if word[k].isupper() else c) + word[k + 1 :]
            elif op == "delete" and n >= 1:
                k = rng.randrange(n)
                return word[:k] + word[k + 1 :]
            elif op == "insert":
                k = rng.randrange(n + 1)
                return word[:k] + rng.choice(_LETTERS) + word[k:]
            elif op == "homoglyph":
                ks = [k for k in range(n) if word[k] in HOMOGLYPHS]
                if ks:
                    k = rng.choice(ks)
                    return word[:k] + HOMOGLYPHS[word[k]] + word[k + 1 :]
        return None

    def _rng(self, text: str) -> random.Random:
        """The example's own stream: the same text gets the same edits in any batch."""
        if self.seed is None:
            return random.Random()
        return random.Random(f"deepwordbug:{self.seed}:{text}")

    # -- the search --------------------------------------------------------------------------
    def _attack(self, caller, texts, goal, done, clean_scores):
        n = len(texts)
        adv = list(texts)
        spans = [[m.span() for m in _WORD.finditer(t)][: self.max_scored_words] for t in texts]
        active = [i for i in range(n) if not bool(done[i]) and spans[i]]
        if not active:
            return adv
        base = self.objective(clean_scores, goal)
        word_scores = self._score_words(caller, texts, spans, active, goal, base)
        order = {
            i: sorted(range(len(spans[i])), key=lambda w: (-word_scores[i][w], w)) * self.passes
            for i in active
        }
        rngs = {i: self._rng(texts[i]) for i in active}
        current = {i: float(base[i]) for i in active}
        # per example: the words of the current text, with their spans in it
        words = {i: [texts[i][s:e] for s, e in spans[i]] for i in active}
        tail = {i: texts[i][spans[i][-1][1] :] if spans[i] else "" for i in active}
        gaps = {
            i: [texts[i][: spans[i][0][0]]]
            + [texts[i][spans[i][k][1] : spans[i][k + 1][0]] for k in range(len(spans[i]) - 1)]
            for i in active
        }

        def join(i: int, ws: list[str]) -> str:
            return "".join(g + w for g, w in zip(gaps[i], ws, strict=True)) + tail[i]

        step = {i: 0 for i in active}
        running = list(active)
        while running:
            batch, owner, proposals = [], [], []
            still = []
            for i in running:
                found = False
                while step[i] < len(order[i]) and not found:
                    w = order[i][step[i]]
                    step[i] += 1
                    cands = []
                    for _ in range(self.candidates):
                        new = self._edit(words[i][w], rngs[i])
                        if new is None or new == words[i][w]:
                            continue
                        ws = list(words[i])
                        ws[w] = new
                        text = join(i, ws)
                        if self.threat.allows(texts[i], text) and text not in cands:
                            cands.append(text)
                            proposals.append((i, w, new))
                    if cands:
                        batch += cands
                        owner += [i] * len(cands)
                        found = True
                if found:
                    still.append(i)
            if not batch:
                break
            out = caller.scores(batch, owner)
            sub = goal[torch.tensor(owner)]
            obj = self.objective(out, sub)
            win = sub.is_success(out)
            best: dict[int, tuple[float, bool, int]] = {}
            for k, i in enumerate(owner):
                cand = (float(obj[k]), bool(win[k]), k)
                if i not in best or (cand[1], cand[0]) > (best[i][1], best[i][0]):
                    best[i] = cand
            running = []
            for i in still:
                value, success, k = best[i]
                if success or value > current[i]:
                    _, w, new = proposals[k]
                    words[i][w] = new
                    adv[i] = batch[k]
                    current[i] = value
                if not success:
                    running.append(i)
        return adv


register_text_attack(DeepWordBug)
