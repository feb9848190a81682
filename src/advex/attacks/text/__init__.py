"""Text attacks: text in, text out, within an edit budget (:class:`~advex.threats.text.EditBudget`).

- :class:`DeepWordBug` (Gao et al. 2018): black box; scores words by replacing or dropping them,
  then edits characters (swap, substitute, delete, insert; homoglyphs optional).
- :class:`HotFlip` (Ebrahimi et al. 2018): white box; character flips chosen by gradients with
  respect to one-hot inputs, with an optional beam search.
- :class:`TextFooler` (Jin et al. 2020): black box; synonym substitutions under a MiniLM
  similarity constraint.
- :class:`WordSubstitutionSearch`: white box; any vocabulary word, an unknown word or nothing
  in place of each of up to ``k`` words, exhaustive for one word, a beam beyond: the upper bound
  a synonym attack with the same word budget obeys (word CNN only).

Every attack is called as ``attack(model, texts, y, target=None) -> TextAttackResult``; they
have their own registry (:func:`find_text_attack`, :func:`build_text_attack`).
"""

from __future__ import annotations

from .base import (
    TextAttack,
    TextAttackResult,
    available_text_attacks,
    build_text_attack,
    find_text_attack,
    labels_of,
    make_budget,
    register_text_attack,
    text_attack_params,
)

__all__ = [
    "DeepWordBug",
    "HotFlip",
    "TextAttack",
    "TextAttackResult",
    "TextFooler",
    "WordSubstitutionSearch",
    "available_text_attacks",
    "build_text_attack",
    "find_text_attack",
    "labels_of",
    "make_budget",
    "register_text_attack",
    "text_attack_params",
]


def __getattr__(name: str):
    if name == "DeepWordBug":
        from .deepwordbug import DeepWordBug

        return DeepWordBug
    if name == "HotFlip":
        from .hotflip import HotFlip

        return HotFlip
    if name in ("TextFooler", "minilm_similarity"):
        from . import textfooler

        return getattr(textfooler, name)
    if name == "WordSubstitutionSearch":
        from .wordsub import WordSubstitutionSearch

        return WordSubstitutionSearch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
