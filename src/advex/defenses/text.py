"""Defenses of text classifiers, to be evaluated by attacking them *through* the defense.

- :class:`SpellingCorrection` — a normalisation and spelling-correction front end (a model
  wrapper): Unicode NFKC, homoglyphs mapped back to Latin letters, zero-width characters
  removed, then every unknown word replaced by its closest dictionary word (SymSpell, Garbe
  2012, via ``symspellpy``; edit distance ≤ 2), the dictionary built from the training texts
  (offline). It answers the character edits of DeepWordBug/HotFlip (Pruthi et al., "Combating
  Adversarial Misspellings with Robust Word Recognition", ACL 2019); it is itself a
  :class:`~advex.models.text.TextClassifier`, so attacks query the whole pipeline (an adaptive
  attack sees what the defense does).
- :func:`adversarial_augmentation` — adversarial training by data augmentation (Goodfellow et
  al. 2015; for text, e.g. Jin et al. 2020 §5 and Gao et al. 2018): attack the training
  messages of the undefended model, add the successful adversarial texts with their true
  labels to the training set, and retrain the word-level CNN of ``sms-spam-cnn``.

>>> from advex.defenses.text import SpellingCorrection
>>> train = advex.data.sms_spam(split="train")
>>> defended = SpellingCorrection(advex.zoo.load("sms-spam-cnn"), train.texts)
>>> defended(["FR33 pr1ze!! cаll now"]).argmax(1)     # corrected, then classified
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from ..attacks.text.base import TextAttack
from ..attacks.text.deepwordbug import HOMOGLYPHS
from ..models.text import TextClassifier, as_text_classifier
from ..threats.text import check_texts

__all__ = ["SpellingCorrection", "adversarial_augmentation", "normalise_text"]

#: look-alike characters -> the Latin letter (DeepWordBug's table reversed, plus a few more)
_CONFUSABLES = {v: k for k, v in HOMOGLYPHS.items()}
_CONFUSABLES.update(
    {"ԁ": "d", "ɡ": "g", "һ": "h", "ⅼ": "l", "ո": "n", "ο": "o", "ν": "v", "А": "A", "В": "B",
     "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "Т": "T", "Х": "X", "α": "a",
     "ε": "e", "ι": "i", "κ": "k", "τ": "t", "υ": "u"}
)  # fmt: skip
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_TOKEN = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)
_WORDISH = re.compile(r"[A-Za-z0-9']+")


def normalise_text(text: str) -> str:
    """NFKC, look-alike letters to Latin, zero-width and soft-hyphen characters removed."""
    t = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)
    return "".join(_CONFUSABLES.get(c, c) for c in t)


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


class SpellingCorrection(TextClassifier):
    """Normalisation + spelling correction in front of a text classifier.

    Args:
        model: the classifier to protect (any :func:`~advex.models.text.as_text_classifier`
            input); not modified.
        vocabulary: texts whose words form the dictionary (the training split), or a
            ``{word: count}`` mapping.
        max_edit_distance: the farthest correction (SymSpell's damerau distance; ≤ 3).
        min_count: words seen fewer times are not in the dictionary.
        min_length: shorter words are never corrected (``u``, ``ur``, ``2``: SMS shorthand).

    A word is corrected when it is not in the dictionary, has at least one letter, and a
    dictionary word lies within ``max_edit_distance`` (the most frequent of the closest
    ones); digits inside a word are kept when no correction is found. Capitalisation and
    punctuation around words are kept. Queries are counted on this wrapper (what an attacker
    pays); the inner model counts its own.

    Shapes: ``defended(texts)`` → scores (N, C) of the inner model on the corrected texts.
    """

    def __init__(
        self,
        model: Any,
        vocabulary: Sequence[str] | dict[str, int],
        *,
        max_edit_distance: int = 2,
        min_count: int = 2,
        min_length: int = 3,
        batch_size: int = 256,
    ) -> None:
        try:
            from symspellpy import SymSpell, Verbosity
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError(
                'SpellingCorrection needs symspellpy: pip install -e ".[text]"'
            ) from e
        inner = as_text_classifier(model)
        super().__init__(inner.class_names, batch_size=batch_size)
        for name, v, lo in (
            ("max_edit_distance", max_edit_distance, 1),
            ("min_count", min_count, 1),
            ("min_length", min_length, 1),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if max_edit_distance > 3:
            raise ValueError(f"max_edit_distance must be <= 3, got {max_edit_distance}")
        self.model = inner
        self.max_edit_distance = max_edit_distance
        self.min_count = min_count
        self.min_length = min_length
        if isinstance(vocabulary, dict):
            counts = Counter({str(k).lower(): int(v) for k, v in vocabulary.items()})
        else:
            counts = Counter()
            for t in check_texts(vocabulary, "vocabulary"):
                counts.update(w.lower() for w in _WORDISH.findall(normalise_text(t)))
        self.dictionary = {w: c for w, c in counts.items() if c >= min_count}
        if not self.dictionary:
            raise ValueError("SpellingCorrection: the dictionary is empty (no word seen enough)")
        self._verbosity = Verbosity.TOP
        self._sym = SymSpell(max_dictionary_edit_distance=max_edit_distance, prefix_length=7)
        for w, c in sorted(self.dictionary.items()):
            self._sym.create_dictionary_entry(w, c)
        self._cache: dict[str, str] = {}
        self.exposes = frozenset({"scores", "labels"})  # the correction is not differentiable

    def correct_word(self, word: str) -> str:
        """The dictionary word for ``word`` (lower case in, lower case out; itself if none)."""
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        out = word
        if (
            len(word) >= self.min_length
            and word not in self.dictionary
            and any(c.isalpha() for c in word)
        ):
            sugg = self._sym.lookup(word, self._verbosity, max_edit_distance=self.max_edit_distance)
            if sugg:
                out = sugg[0].term
        self._cache[word] = out
        return out

    def correct(self, texts: Sequence[str]) -> list[str]:
        """The texts as the inner model sees them (normalised, words corrected)."""
        out = []
        for t in check_texts(texts):
            words = []
            for tok in normalise_text(t).split():
                pre, core, post = _TOKEN.match(tok).groups()
                if core:
                    fixed = self.correct_word(core.lower())
                    core = core if fixed == core.lower() else _match_case(core, fixed)
                words.append(pre + core + post)
            out.append(" ".join(words))
        return out

    def _scores(self, texts: list[str]) -> torch.Tensor:
        return self.model(self.correct(texts))

    def __repr__(self) -> str:
        return (
            f"SpellingCorrection({self.model!r}, words={len(self.dictionary)}, "
            f"max_edit_distance={self.max_edit_distance})"
        )


def adversarial_augmentation(
    model: Any,
    train_texts: Sequence[str],
    train_y: torch.Tensor,
    attacks: Sequence[TextAttack],
    *,
    retrain,
    target: Any = None,
    attack_class: Any = None,
    max_examples: int | None = None,
    rounds: int = 1,
) -> tuple[Any, dict[str, Any]]:
    """Adversarial training by augmentation: attack, add the adversarial texts, retrain.

    Args:
        model: the undefended classifier the attacks are run against in the first round.
        train_texts, train_y: the training set (labels as an int64 tensor).
        attacks: text attacks; each runs on the examples the previous ones did not fool.
        retrain: ``retrain(texts, y) -> model``: trains a fresh model on the augmented set
            (for ``sms-spam-cnn``: the zoo's recipe, see ``benchmarks/text_robustness.py``).
        target: the attacks' target class (``"ham"`` to harden spam → ham), or None.
        attack_class: attack only training examples of this class (``"spam"``), or all.
        max_examples: attack at most this many training examples per round (the first ones).
        rounds: attack-and-retrain rounds (each round attacks the model of the previous one).

    Returns:
        (the retrained model, a log: examples attacked, adversarial texts added, seconds).
    """
    texts = check_texts(train_texts, "train_texts")
    y = torch.as_tensor(train_y, dtype=torch.int64)
    if y.shape != (len(texts),):
        raise ValueError(f"train_y must have shape ({len(texts)},), got {tuple(y.shape)}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    if not attacks:
        raise ValueError("adversarial_augmentation needs at least one attack")
    clf = as_text_classifier(model)
    log: dict[str, Any] = {"rounds": []}
    aug_texts, aug_y = list(texts), y.clone()
    current = clf
    for r in range(rounds):
        t0 = time.perf_counter()
        idx = list(range(len(texts)))
        if attack_class is not None:
            k = (
                clf.class_names.index(attack_class)
                if isinstance(attack_class, str)
                else int(attack_class)
            )
            idx = [i for i in idx if int(y[i]) == k]
        if max_examples is not None:
            idx = idx[:max_examples]
        added: list[str] = []
        added_y: list[int] = []
        pending = idx
        for attack in attacks:
            if not pending:
                break
            res = attack(current, [texts[i] for i in pending], y[pending], target)
            won = (res.success & res.changed).tolist()
            for j, i in enumerate(pending):
                if won[j]:
                    added.append(res.adversarial[j])
                    added_y.append(int(y[i]))
            pending = [i for j, i in enumerate(pending) if not won[j]]
        aug_texts += added
        aug_y = torch.cat([aug_y, torch.tensor(added_y, dtype=torch.int64)])
        current = as_text_classifier(retrain(list(aug_texts), aug_y.clone()))
        log["rounds"].append(
            {
                "round": r + 1,
                "attacked": len(idx),
                "added": len(added),
                "train_size": len(aug_texts),
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
    return current, log
