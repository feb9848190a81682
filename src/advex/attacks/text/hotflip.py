"""HotFlip (Ebrahimi, Rao, Lowd and Dou, "HotFlip: White-Box Adversarial Examples for Text
Classification", ACL 2018).

A white-box attack on a character-level model: the gradient of the objective with respect to
the one-hot encoding of the characters ranks every flip (character ``a`` at position ``i``
becomes ``b``) by its first-order gain ``∂J/∂x[i, b] − ∂J/∂x[i, a]`` in one backward pass. The
attack flips greedily — or keeps a beam of the best partial edits, scoring each expansion with
a real forward pass — until the model reaches the goal or the edit budget (flips) is spent.
"""

from __future__ import annotations

import torch

from ...models.text import TorchTextClassifier
from ...threats.text import EditBudget
from .base import TextAttack, make_budget, register_text_attack

__all__ = ["HotFlip"]


class HotFlip(TextAttack):
    """HotFlip (Ebrahimi et al. 2018): character flips chosen by one-hot input gradients.

    Args:
        max_char_edits: most character edits per message (a character-level flip costs one;
            None: no limit, the default).
        max_words: most words changed per message (default 5; a flip changes one word).
        max_word_fraction: most words changed as a share of the message's words.
        budget: an :class:`~advex.threats.text.EditBudget` instead of the limits.
        beam_width: 1 (default) flips greedily by the gradient estimate (one forward and one
            backward pass per flip); ``b > 1`` keeps the ``b`` best partial edits, expands each
            by its ``b`` best flips by gradient and keeps the ``b`` best by a real forward pass
            (the paper's beam search).
        letters_only: flip only to letters and digits (no punctuation or spaces), and never a
            space (words keep their boundaries).

    The model must be a :class:`~advex.models.text.TorchTextClassifier` whose tokenizer gives
    token spans: character-level (:class:`~advex.models.text.CharTokenizer`, the paper's
    setting, ``sms-spam-charcnn``) flips characters; word-level
    (:class:`~advex.models.text.WordTokenizer`, ``sms-spam-cnn``) flips whole words to other
    words of the vocabulary (budget them with ``max_words``). Text past the tokenizer's
    ``max_length`` is kept as it is (the model does not see it).

    >>> res = HotFlip(max_words=5)(advex.zoo.load("sms-spam-cnn"), spam, "spam", target="ham")
    """

    name = "hotflip"
    aliases = ("hot-flip",)
    black_box = False
    needs = frozenset({"gradients", "scores"})

    def __init__(
        self,
        max_char_edits: int | None = None,
        max_words: int | None = 5,
        max_word_fraction: float | None = None,
        *,
        budget: EditBudget | None = None,
        beam_width: int = 1,
        letters_only: bool = True,
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
        if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1:
            raise ValueError(f"beam_width must be an integer >= 1, got {beam_width!r}")
        self.max_char_edits = self.threat.max_char_edits
        self.max_words = self.threat.max_words
        self.max_word_fraction = self.threat.max_word_fraction
        self.beam_width = beam_width
        self.letters_only = bool(letters_only)

    def _check_model(self, model) -> None:
        tok = getattr(model, "tokenizer", None)
        if not isinstance(model, TorchTextClassifier) or not callable(getattr(tok, "spans", None)):
            raise TypeError(
                "HotFlip needs a TorchTextClassifier whose tokenizer maps tokens to spans of "
                "the text (CharTokenizer, WordTokenizer), such as advex.zoo.load('sms-spam-cnn')"
            )

    def _allowed(self, tok) -> torch.Tensor:
        """(V,) bool: the ids a token may be flipped to."""
        ok = torch.zeros(tok.vocab_size, dtype=torch.bool)
        word = getattr(tok, "level", "char") == "word"
        for v in range(tok.vocab_size):
            if v in (tok.PAD, tok.UNK):
                continue
            c = tok.token(v)
            # a word is replaced by a word (never by a punctuation mark: tokens stay apart)
            ok[v] = c.isalnum() if (self.letters_only or word) else not c.isspace()
        return ok

    def _attack(self, caller, texts, goal, done, clean_scores):
        model = caller.model
        self._check_model(model)
        tok = model.tokenizer
        word = getattr(tok, "level", "char") == "word"
        allowed = self._allowed(tok)
        adv = list(texts)
        active = [i for i in range(len(texts)) if not bool(done[i]) and texts[i]]
        if not active:
            return adv
        # per example: the token ids the model sees, their spans, which positions may flip
        spans = {i: tok.spans(texts[i]) for i in active}
        base = {i: tok.encode([texts[i]])[0, : max(1, len(spans[i]))] for i in active}
        flippable = {}
        for i in active:
            f = []
            for a, b in spans[i]:
                piece = texts[i][a:b]
                f.append(
                    not piece.isspace()
                    and (piece.isalnum() if (self.letters_only or word) else True)
                )
            flippable[i] = torch.tensor(f + [False] * (base[i].shape[0] - len(f)), dtype=torch.bool)
        limit = {i: self._flip_limit(texts[i]) for i in active}
        beams = {i: [((), 0.0)] for i in active}  # (flips ((pos, id), ...), objective)
        finished: dict[int, tuple] = {}
        running = [i for i in active if limit[i] > 0 and bool(flippable[i].any())]

        def rows_of(pairs):
            L = max(int(base[i].shape[0]) for i, _ in pairs)
            ids = torch.zeros(len(pairs), L, dtype=torch.int64)
            for r, (i, flips) in enumerate(pairs):
                row = base[i].clone()
                for pos, v in flips:
                    row[pos] = v
                ids[r, : row.shape[0]] = row
            return ids

        while running:
            # one gradient pass for every beam entry of every running example
            pairs = [(i, flips) for i in running for flips, _ in beams[i]]
            owner = [i for i, _ in pairs]
            ids = rows_of(pairs)
            sub = goal[torch.tensor(owner)]
            logits, grad = caller.one_hot_gradient(
                ids, lambda out, sub=sub: self.objective(out, sub), owner
            )
            gain = grad - grad.gather(2, ids[:, :, None])  # first-order gain of each flip
            gain[:, :, ~allowed] = -torch.inf
            gain[ids == tok.PAD] = -torch.inf
            won = sub.is_success(logits)
            cands: dict[int, list[tuple]] = {i: [] for i in running}
            for k, (i, flips) in enumerate(pairs):
                if self.beam_width == 1 and bool(won[k]):
                    finished[i] = flips  # the gradient pass saw the goal reached
                    continue
                g = gain[k]
                n = flippable[i].shape[0]
                g[:n][~flippable[i]] = -torch.inf
                for pos, _v in flips:  # a position flips once
                    g[pos] = -torch.inf
                top = torch.topk(g.reshape(-1), min(4 * self.beam_width, g.numel()))
                for value, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                    if value == -float("inf") or len(cands[i]) >= self.beam_width * len(beams[i]):
                        break
                    pos, v = divmod(flat, g.shape[1])
                    new = flips + ((pos, v),)
                    if self.threat.allows(texts[i], self._full(texts[i], spans[i], new, tok)):
                        cands[i].append((new, value))
            if self.beam_width == 1:
                # greedy: take the best flip; the next gradient pass sees its effect
                nxt = []
                for i in running:
                    if i in finished:
                        continue
                    if not cands[i]:
                        finished[i] = beams[i][0][0]
                        continue
                    beams[i] = [cands[i][0]]
                    if len(beams[i][0][0]) >= limit[i]:
                        finished[i] = beams[i][0][0]
                    else:
                        nxt.append(i)
                running = nxt
                continue
            # beam search: score all expansions with a real forward pass
            flat, own = [], []
            for i in running:
                for flips in dict.fromkeys(c[0] for c in cands[i]):
                    flat.append(flips)
                    own.append(i)
            if not flat:
                for i in running:
                    finished[i] = beams[i][0][0]
                break
            out = caller.logits_from_ids(rows_of(list(zip(own, flat, strict=True))), own)
            sub = goal[torch.tensor(own)]
            obj = self.objective(out, sub).tolist()
            win = sub.is_success(out).tolist()
            running_next = []
            for i in running:
                scored = [(win[k], obj[k], flat[k]) for k in range(len(flat)) if own[k] == i]
                if not scored:
                    finished[i] = beams[i][0][0]
                    continue
                scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
                if scored[0][0] or len(scored[0][2]) >= limit[i]:
                    finished[i] = scored[0][2]
                    continue
                beams[i] = [(f, o) for _, o, f in scored[: self.beam_width]]
                running_next.append(i)
            running = running_next
        for i in active:
            flips = finished.get(i, beams[i][0][0])
            adv[i] = self._full(texts[i], spans[i], flips, tok)
        return adv

    def _flip_limit(self, text: str) -> int:
        lim = [len(text)]
        if self.threat.max_char_edits is not None:
            lim.append(self.threat.max_char_edits)
        wl = self.threat.word_limit(text)
        if wl is not None:
            lim.append(wl)  # a flip changes at most one word
        return min(lim)

    @staticmethod
    def _full(text: str, spans, flips: tuple, tok) -> str:
        """``text`` with the tokens at ``flips`` replaced (every other character kept as it
        was, including ones the tokenizer does not know and the part it does not see)."""
        if not flips:
            return text
        out = text
        for pos, v in sorted(flips, key=lambda f: spans[f[0]][0], reverse=True):
            a, b = spans[pos]
            out = out[:a] + tok.token(v) + out[b:]
        return out


register_text_attack(HotFlip)
