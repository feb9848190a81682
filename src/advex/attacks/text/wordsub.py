"""An unconstrained word-substitution search on a word-level CNN: what *any* word-substitution
attack with the same word budget can reach, at most.

A synonym attack (TextFooler, Jin et al. 2020) replaces at most ``k`` words of a message, each
by a word from a synonym list, under a similarity constraint. Drop the synonym list and the
constraint, keep only the word budget: every word may become *any* word the model knows, an
unknown word, or nothing. The synonym attack's search space is a subset of this one, so the
success of a search over this larger space bounds the synonym attack's success from above —
exactly for ``k = 1`` (the search below is exhaustive), empirically for ``k ≥ 2`` (a beam
search: it finds a lower bound on the unconstrained attacker's success, which is an upper bound
on any synonym-constrained attack that only finds a subset of what it can find).

The options for one whitespace-separated word ``pre + core + post`` (``pre``/``post`` its
leading / trailing punctuation, as TextFooler splits it):

* ``core → v`` for every alphanumeric token ``v`` of the model's vocabulary (punctuation kept);
* ``word → v`` (the word's punctuation dropped as well);
* ``core → unknown word`` and ``word → unknown word`` (an out-of-vocabulary word: the model
  masks it; :attr:`WordSubstitutionSearch.unknown` is the word written);
* deletion of the word.

Every option changes exactly one word (the word-level edit distance the
:class:`~advex.threats.text.EditBudget` counts). A replacement the tokenizer reads as several
tokens (a hyphenated word, "don't") is outside this space.

Scoring every option exactly is cheap on :class:`advex.zoo.text.TextCNN` (embedding → 1-D
convolutions → ReLU → max over time → linear): a token at position ``s`` enters only the
convolution windows that cover ``s``, linearly, so the logits after putting each of the ``V``
vocabulary tokens at ``s`` come from the other windows' maximum plus ``E @ W_o`` (precomputed
per kernel offset ``o``) — the same numbers as ``V`` forward passes (float rounding aside;
``tests/test_wordsub_bound.py`` checks them against the model), for the cost of one.

The search: step 1 scores every option of every word (exhaustive: if a one-word substitution
reaches the goal, it is found); each further step expands each of the ``beam_width`` best
partial edits (lowest goal margin) by every option of every untouched word, keeps the
``beam_width`` best, and stops at the first edit that reaches the goal or at the word budget.

>>> from advex.attacks.text.wordsub import WordSubstitutionSearch
>>> res = WordSubstitutionSearch(max_word_fraction=0.1, beam_width=16)(
...     advex.zoo.load("sms-spam-cnn"), spam, "spam", target="ham")
>>> res.success_rate    # an upper bound for any synonym attack at this budget (k = 1: exact)
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ...core.goals import Goal
from ...models.text import TextModelCaller, TorchTextClassifier
from ...threats.text import EditBudget, split_words
from .base import TextAttack, make_budget, register_text_attack

__all__ = ["WordSubstitutionSearch", "ConvSlotScorer", "split_word"]

_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)


def split_word(word: str) -> tuple[str, str, str]:
    """``(leading punctuation, core, trailing punctuation)`` of a whitespace-separated word
    (the split TextFooler substitutes in: ``"prize!"`` → ``("", "prize", "!")``)."""
    m = _CORE.match(word)
    return (m.group(1), m.group(2), m.group(3)) if m else ("", word, "")


class ConvSlotScorer:
    """Exact logits of a word CNN (:class:`advex.zoo.text.TextCNN` layout) for every token put
    in one slot of a token sequence, without ``V`` forward passes.

    Args:
        module: a module with ``embedding`` (``nn.Embedding``), ``convs`` (``nn.Conv1d`` with
            stride 1, dilation 1, padding ``k // 2``), ``fc`` (``nn.Linear``) and
            ``ignore_unknown``, whose forward is embedding → conv → ReLU → masked max over
            time → (dropout) → fc, like :class:`~advex.zoo.text.TextCNN`.

    :meth:`slot_logits` ``(ids (L,), s, cands (M,)) -> (M, C)``: the logits of ``ids`` with
    ``ids[s]`` replaced by each of ``cands`` (token ids ≥ 2; ``ids[s]`` itself is ignored).
    """

    def __init__(self, module: nn.Module) -> None:
        emb = getattr(module, "embedding", None)
        convs = getattr(module, "convs", None)
        fc = getattr(module, "fc", None)
        if not isinstance(emb, nn.Embedding) or convs is None or not isinstance(fc, nn.Linear):
            raise TypeError(
                "ConvSlotScorer needs a TextCNN-like module (embedding, convs, fc), such as "
                "advex.zoo.load('sms-spam-cnn').module"
            )
        for c in convs:
            k = c.kernel_size[0]
            if (
                not isinstance(c, nn.Conv1d)
                or c.stride[0] != 1
                or c.dilation[0] != 1
                or c.padding[0] != k // 2
                or c.groups != 1
            ):
                raise TypeError(f"ConvSlotScorer: unsupported convolution {c}")
        with torch.no_grad():
            self.E = emb.weight.detach().float().cpu().clone()
            self.E[0] = 0.0
            self.convs = [
                (
                    c.kernel_size[0],
                    c.padding[0],
                    c.weight.detach().float().cpu().clone(),
                    None if c.bias is None else c.bias.detach().float().cpu().clone(),
                    # per kernel offset o: E @ W[:, :, o].T  -> (V, C)
                    [
                        self.E @ c.weight.detach().float().cpu()[:, :, o].T
                        for o in range(c.kernel_size[0])
                    ],
                )
                for c in convs
            ]
            self.W = fc.weight.detach().float().cpu().clone()
            self.b = fc.bias.detach().float().cpu().clone() if fc.bias is not None else None
        self.unknown_id = 1 if getattr(module, "ignore_unknown", False) else None
        self._cands: torch.Tensor | None = None
        self._projc: list | None = None

    def _keep(self, ids: torch.Tensor) -> torch.Tensor:
        return ids > (1 if self.unknown_id is not None else 0)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits of one sequence ``ids (L,)`` (the module's forward, for checks)."""
        feats = []
        keep = self._keep(ids)
        h = (self.E[ids] * keep[:, None].float()).T[None]  # (1, D, L)
        L = ids.shape[0]
        for _k, p, w, b, _ in self.convs:
            out = F.relu(F.conv1d(h, w, b, padding=p))[0, :, :L]
            feats.append(out.masked_fill(~keep[None], 0.0).max(1).values)
        f = torch.cat(feats)
        return f @ self.W.T + (self.b if self.b is not None else 0.0)

    def slot_logits(
        self, ids: torch.Tensor, s: int, cands: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``(M, C)`` of ``ids`` with ``ids[s]`` replaced by each token of ``cands``
        (ids ≥ 2; default: the set given to :meth:`prepare`)."""
        if cands is None:
            if self._cands is None:
                raise ValueError("slot_logits: pass cands or call prepare(cands) first")
            cands, projc = self._cands, self._projc
        else:
            projc = [[P[cands] for P in proj] for *_, proj in self.convs]
        ids = ids.clone()
        ids[s] = 0  # the slot contributes nothing to the base convolutions
        keep = self._keep(ids)
        L = ids.shape[0]
        h = (self.E[ids] * keep[:, None].float()).T[None]
        feats = []
        for (k, p, w, b, _), proj in zip(self.convs, projc, strict=True):
            pre = F.conv1d(h, w, b, padding=p)[0, :, :L]  # (C, L) before ReLU
            act = F.relu(pre).masked_fill(~keep[None], 0.0)
            affected = [t for t in range(s + p - k + 1, s + p + 1) if 0 <= t < L]
            rest = torch.ones(L, dtype=torch.bool)
            rest[affected] = False
            base = act[:, rest].max(1).values if bool(rest.any()) else torch.zeros(act.shape[0])
            # max(base, relu(a), relu(b), ...) = max(base, a, b, ...) since base >= 0
            new = base[None].expand(cands.shape[0], -1).clone()
            for t in affected:
                if t != s and not bool(keep[t]):
                    continue  # a masked position stays 0
                torch.maximum(new, proj[s + p - t] + pre[:, t][None], out=new)
            feats.append(new)
        f = torch.cat(feats, 1)
        return f @ self.W.T + (self.b if self.b is not None else 0.0)

    def prepare(self, cands: torch.Tensor) -> ConvSlotScorer:
        """Fix the candidate tokens of :meth:`slot_logits` (their projections gathered once)."""
        cands = torch.as_tensor(cands, dtype=torch.int64)
        if cands.ndim != 1 or not len(cands) or int(cands.min()) < 2:
            raise ValueError("cands must be a non-empty 1-D tensor of token ids >= 2")
        if int(cands.max()) >= self.E.shape[0]:
            raise ValueError(f"cands has ids >= the vocabulary size {self.E.shape[0]}")
        self._cands = cands
        self._projc = [[P[cands].contiguous() for P in proj] for *_, proj in self.convs]
        return self


class _Msg:
    """One message under search: its words split, their token ids, the beam."""

    __slots__ = ("i", "words", "parts", "limit", "beam", "found", "steps")

    def __init__(self, i, words, parts, limit):
        self.i = i
        self.words = words
        self.parts = parts
        self.limit = limit
        self.beam: list[tuple[float, tuple]] = [(0.0, ())]  # (margin, ((j, word or None), ...))
        self.found: tuple | None = None
        self.steps = 0


@register_text_attack
class WordSubstitutionSearch(TextAttack):
    """Unconstrained word substitution within a word budget, searched exactly (one word) or by
    a wide beam (more words) on a word-level CNN: an upper bound for synonym attacks.

    Args:
        max_word_fraction: most words changed, as a share of the message's words
            (``floor``, at least one; the :class:`~advex.threats.text.EditBudget` rule).
        max_words: an absolute cap on the words changed.
        beam_width: partial edits kept per step after the first (the first step is
            exhaustive whatever the width).
        unknown: the out-of-vocabulary word written for the "unknown word" options (must be
            unknown to the model's tokenizer).
        budget: an :class:`~advex.threats.text.EditBudget` instead of the limits (a similarity
            limit is refused: this search is the unconstrained attacker).

    Needs a :class:`~advex.models.text.TorchTextClassifier` with a word tokenizer over a
    TextCNN-like module (see :class:`ConvSlotScorer`). Per example the result's ``words_changed``
    is the number of words the successful edit needed; queries count every option scored.

    >>> WordSubstitutionSearch(max_word_fraction=0.1)(model, spam, "spam", target="ham")
    """

    name = "wordsub-search"
    aliases = ("unconstrained-word-substitution",)
    black_box = False
    needs = frozenset({"gradients", "scores"})

    def __init__(
        self,
        max_word_fraction: float | None = 0.1,
        *,
        max_words: int | None = None,
        beam_width: int = 16,
        unknown: str = "zqxjv",
        budget: EditBudget | None = None,
        seed: int | None = 0,
    ) -> None:
        if budget is not None:
            max_word_fraction = max_words = None
        budget = make_budget(budget, max_words=max_words, max_word_fraction=max_word_fraction)
        if budget.min_similarity is not None:
            raise ValueError("WordSubstitutionSearch is unconstrained: no min_similarity")
        if budget.max_words is None and budget.max_word_fraction is None:
            raise ValueError("WordSubstitutionSearch needs a word budget")
        super().__init__(budget, seed=seed)
        if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1:
            raise ValueError(f"beam_width must be an integer >= 1, got {beam_width!r}")
        if not isinstance(unknown, str) or not unknown.isalpha():
            raise ValueError(f"unknown must be an alphabetic word, got {unknown!r}")
        self.max_word_fraction = budget.max_word_fraction
        self.max_words = budget.max_words
        self.beam_width = beam_width
        self.unknown = unknown

    # -- helpers --------------------------------------------------------------------------
    def _ids(self, tok, word: str) -> list[int]:
        return [int(v) for v in tok.encode([word])[0].tolist() if int(v) != tok.PAD]

    def _seq(self, m: _Msg, edits: dict) -> tuple[list[int], list[int]]:
        """Token ids of the message under ``edits`` and each word's start offset."""
        ids, start = [], []
        for j, (_w, wid) in enumerate(m.parts):
            start.append(len(ids))
            if j in edits:
                r = edits[j]
                ids.extend(self._ids(self._tok, r) if r is not None else [])
            else:
                ids.extend(wid)
        return ids, start

    def _text(self, m: _Msg, edits: tuple) -> str:
        d = dict(edits)
        out = [d[j] if j in d else w for j, w in enumerate(m.words)]
        return " ".join(w for w in out if w is not None)

    # -- the search -----------------------------------------------------------------------
    def _attack(self, caller: TextModelCaller, texts, goal: Goal, done, clean_scores):
        model = caller.model
        tok = getattr(model, "tokenizer", None)
        if not isinstance(model, TorchTextClassifier) or getattr(tok, "level", None) != "word":
            raise TypeError(
                "WordSubstitutionSearch needs a word-level TorchTextClassifier, such as "
                "advex.zoo.load('sms-spam-cnn')"
            )
        self._tok = tok
        scorer = ConvSlotScorer(model.module)
        if self._ids(tok, self.unknown) != [tok.UNK]:
            raise ValueError(f"unknown={self.unknown!r} is in the model's vocabulary")
        vocab = torch.tensor(
            [v for v in range(2, tok.vocab_size) if tok.token(v).isalnum()], dtype=torch.int64
        )
        scorer.prepare(vocab)
        maxlen = int(getattr(tok, "max_length", 10**9))
        adv = list(texts)
        msgs = []
        for i in (~done).nonzero().squeeze(1).tolist():
            words = split_words(texts[i])
            limit = self.threat.word_limit(texts[i])
            if not words or not limit:
                continue
            parts = [(w, self._ids(tok, w)) for w in words]
            msgs.append(_Msg(i, words, parts, limit))
        for m in msgs:
            self._search(m, caller, goal, scorer, vocab, maxlen)
            if m.found is not None:
                adv[m.i] = self._text(m, m.found)
            elif m.beam and m.beam[0][1]:
                adv[m.i] = self._text(m, m.beam[0][1])
        return adv

    def _margin(self, logits: torch.Tensor, goal: Goal, i: int) -> torch.Tensor:
        """Goal margin (> 0 = success) per row of ``logits`` for example ``i``."""
        sub = goal[torch.full((logits.shape[0],), i, dtype=torch.int64)]
        return self.objective(logits, sub)

    def _search(self, m: _Msg, caller, goal, scorer, vocab, maxlen) -> None:
        B = self.beam_width
        tok = self._tok
        for step in range(m.limit):
            m.steps = step + 1
            cands: list[tuple[float, tuple]] = []
            real_rows, real_edits = [], []
            for _, edits in m.beam:
                d = dict(edits)
                for j, (w, _wid) in enumerate(m.parts):
                    if j in d:
                        continue
                    pre, core, post = split_word(w)
                    shapes = {(pre, post)}
                    if pre or post:
                        shapes.add(("", ""))
                    for p0, p1 in sorted(shapes):
                        # the unknown word in the slot (a real forward) ...
                        e = {**d, j: p0 + self.unknown + p1}
                        ids, start = self._seq(m, e)
                        real_rows.append(ids[:maxlen])
                        real_edits.append(tuple(sorted(e.items())))
                        # ... and every vocabulary word there (exact, one pass)
                        s = start[j] + len(self._ids(tok, p0)) if p0 else start[j]
                        if s >= min(len(ids), maxlen):
                            continue  # past what the model reads: changes nothing
                        x = torch.tensor(ids[:maxlen], dtype=torch.int64)
                        lg = scorer.slot_logits(x, s)
                        caller.queries[m.i] += int(vocab.shape[0])
                        mg = self._margin(lg, goal, m.i)
                        top = torch.topk(mg, min(B, mg.shape[0]))
                        for val, r in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                            word = p0 + tok.token(int(vocab[r])) + p1
                            cands.append((val, tuple(sorted({**d, j: word}.items()))))
                    e = {**d, j: None}  # deletion
                    ids, _ = self._seq(m, e)
                    real_rows.append(ids[:maxlen])
                    real_edits.append(tuple(sorted(e.items())))
            if real_rows:
                L = max(1, max(len(r) for r in real_rows))
                x = torch.zeros(len(real_rows), L, dtype=torch.int64)
                for r, row in enumerate(real_rows):
                    if row:
                        x[r, : len(row)] = torch.tensor(row)
                lg = caller.logits_from_ids(x, [m.i] * len(real_rows))
                mg = self._margin(lg, goal, m.i).tolist()
                cands.extend(zip(mg, real_edits, strict=True))
            if not cands:
                return
            cands.sort(key=lambda c: (-c[0], c[1].__repr__()))
            best = []
            seen = set()
            for val, edits in cands:
                if edits in seen:
                    continue
                seen.add(edits)
                best.append((val, edits))
                if len(best) >= B:
                    break
            m.beam = best
            if best[0][0] > 0:
                # verify on the real model (the slot scores are exact up to float rounding)
                for val, edits in best:
                    if val <= 0:
                        break
                    text = self._text(m, edits)
                    if bool(goal[torch.tensor([m.i])].is_success(caller.scores([text], [m.i]))):
                        m.found = edits
                        return
