"""The text attack interface: text in, text out.

``attack(model, texts, y, target=None) -> TextAttackResult``, the text counterpart of
:class:`advex.attacks.base.Attack`: :class:`TextAttack` runs the shared prologue (the model as
a :class:`~advex.models.text.TextClassifier`, what it exposes checked against what the attack
needs, the texts and labels validated — labels and targets by index or by class name — the
clean pass, the :class:`~advex.core.goals.Goal`, early exit for examples already successful),
calls the subclass's search :meth:`TextAttack._attack`, enforces the
:class:`~advex.threats.text.EditBudget` (an adversarial past the similarity threshold is
replaced by the original; one past the edit limits is a bug and raises), re-predicts every
returned text and measures it. Queries and gradients are counted per example.

The text attacks have their own registry (:func:`find_text_attack`,
:func:`available_text_attacks`, :func:`build_text_attack`), with the declarations of the image
attacks: ``name``, ``aliases``, ``black_box``, ``targeted_only``, plus ``needs`` (what the
model must expose).

>>> from advex.attacks.text import DeepWordBug
>>> result = DeepWordBug(max_char_edits=30)(model, spam_texts, "spam", target="ham")
>>> result.success_rate, result.adversarial[0]
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ...core.goals import Goal
from ...core.validate import check_target
from ...models.text import TextModelCaller, as_text_classifier
from ...threats.text import EditBudget, SimilarityFn, check_texts
from ..registry import attack_key, convert_param, param_kinds

__all__ = [
    "TextAttack",
    "TextAttackResult",
    "available_text_attacks",
    "build_text_attack",
    "find_text_attack",
    "labels_of",
    "make_budget",
    "register_text_attack",
    "text_attack_params",
]


@dataclass
class TextAttackResult:
    """Adversarial texts and what was measured about them, one entry per example.

    ``success`` comes from the model's prediction on ``adversarial`` (re-predicted, never
    guessed): untargeted — prediction ≠ ``y``; targeted — prediction == ``target``. Examples
    the model already gets wrong (or already puts in the target class) come back unchanged
    and count as successes with no edit.

    Attributes:
        original, adversarial: the texts (lists of str; ``original`` is a copy of the input).
        success: bool per example.
        y, target: labels and targets (int64; ``target`` None when untargeted).
        clean_pred, clean_conf, adv_pred, adv_conf: predicted class and its score (softmax of
            the model's scores) before and after.
        queries: texts scored per example (clean pass, search, re-prediction).
        gradients: gradient evaluations per example (white-box attacks).
        char_edits, words_changed: edit distances per example (int64); word_fraction the
            share of the original's words changed.
        similarity: per example, when the budget has a similarity function; else None.
        threat: the :class:`EditBudget`; attack, params: the attack's name and settings;
        class_names: the model's classes.
    """

    original: list[str]
    adversarial: list[str]
    success: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    clean_pred: torch.Tensor
    clean_conf: torch.Tensor
    adv_pred: torch.Tensor
    adv_conf: torch.Tensor
    queries: torch.Tensor
    gradients: torch.Tensor
    char_edits: torch.Tensor
    words_changed: torch.Tensor
    word_fraction: torch.Tensor
    similarity: torch.Tensor | None
    threat: EditBudget
    attack: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.original)

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def clean_correct(self) -> torch.Tensor:
        return self.clean_pred == self.y

    @property
    def robust(self) -> torch.Tensor:
        """Per example: classified correctly both before and after the attack."""
        return self.clean_correct & (self.adv_pred == self.y)

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean()) if len(self) else float("nan")

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean()) if len(self) else float("nan")

    @property
    def success_rate(self) -> float:
        """Share of successes among examples the model classified correctly before."""
        cc = self.clean_correct
        return float(self.success[cc].float().mean()) if bool(cc.any()) else float("nan")

    @property
    def changed(self) -> torch.Tensor:
        """Per example: whether the adversarial differs from the original."""
        return torch.tensor(
            [a != b for a, b in zip(self.original, self.adversarial, strict=True)],
            dtype=torch.bool,
        )

    def __getitem__(self, idx) -> TextAttackResult:
        index = torch.arange(len(self))[idx].reshape(-1)
        rows = index.tolist()
        kw = {}
        for f in self.__dataclass_fields__:
            v = getattr(self, f)
            if isinstance(v, torch.Tensor):
                kw[f] = v[index]
            elif f in ("original", "adversarial"):
                kw[f] = [v[i] for i in rows]
            else:
                kw[f] = v
        return TextAttackResult(**kw)

    @staticmethod
    def cat(results: list[TextAttackResult]) -> TextAttackResult:
        """Concatenate results of the same attack (e.g. per batch)."""
        if not results:
            raise ValueError("no results to concatenate")
        first = results[0]
        kw: dict[str, Any] = {}
        for f in first.__dataclass_fields__:
            vals = [getattr(r, f) for r in results]
            if f in ("original", "adversarial"):
                kw[f] = [t for v in vals for t in v]
            elif isinstance(vals[0], torch.Tensor):
                kw[f] = torch.cat(vals)
            else:
                kw[f] = vals[0]
        return TextAttackResult(**kw)

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per example: ``index``, ``original``, ``adversarial``,
        ``label``, ``target``, ``clean_prediction``, ``adversarial_prediction`` (class names),
        ``success``, ``queries``, ``gradients``, ``char_edits``, ``words_changed``,
        ``word_fraction``, ``similarity``."""
        names = self.class_names or tuple(str(i) for i in range(int(self.y.max()) + 2))
        out = []
        for i in range(len(self)):
            out.append(
                {
                    "index": i,
                    "original": self.original[i],
                    "adversarial": self.adversarial[i],
                    "label": names[int(self.y[i])],
                    "target": None if self.target is None else names[int(self.target[i])],
                    "clean_prediction": names[int(self.clean_pred[i])],
                    "adversarial_prediction": names[int(self.adv_pred[i])],
                    "success": bool(self.success[i]),
                    "queries": int(self.queries[i]),
                    "gradients": int(self.gradients[i]),
                    "char_edits": int(self.char_edits[i]),
                    "words_changed": int(self.words_changed[i]),
                    "word_fraction": round(float(self.word_fraction[i]), 4),
                    "similarity": None
                    if self.similarity is None
                    else round(float(self.similarity[i]), 4),
                }
            )
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers over the examples the model classified correctly before the
        attack; edits, words and queries are over the successful ones (means and medians)."""
        ok = self.success & self.clean_correct & self.changed

        def stats(t: torch.Tensor | None) -> dict | None:
            if t is None or not bool(ok.any()):
                return None
            v = t[ok].double()
            return {"mean": float(v.mean()), "median": float(v.median()), "max": float(v.max())}

        att = self.clean_correct
        return {
            "attack": self.attack,
            "params": self.params,
            "threat": self.threat.budget(),
            "targeted": self.targeted,
            "n": len(self),
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "success_rate": self.success_rate,
            "char_edits": stats(self.char_edits),
            "words_changed": stats(self.words_changed),
            "word_fraction": stats(self.word_fraction),
            "similarity": stats(self.similarity),
            "queries": {
                "total": int(self.queries.sum()),
                "mean": float(self.queries[att].double().mean()) if bool(att.any()) else None,
                "median": float(self.queries[att].double().median()) if bool(att.any()) else None,
            },
            "gradients_total": int(self.gradients.sum()),
        }


def make_budget(
    budget: EditBudget | None = None,
    *,
    max_char_edits: int | None = None,
    max_words: int | None = None,
    max_word_fraction: float | None = None,
    min_similarity: float | None = None,
    similarity: SimilarityFn | None = None,
) -> EditBudget:
    """The :class:`EditBudget` of an attack: ``budget`` as given, or one built from the
    limits (not both)."""
    limits = {
        "max_char_edits": max_char_edits,
        "max_words": max_words,
        "max_word_fraction": max_word_fraction,
        "min_similarity": min_similarity,
        "similarity": similarity,
    }
    if budget is not None:
        if not isinstance(budget, EditBudget):
            raise TypeError(f"budget must be an EditBudget, got {type(budget).__name__}")
        if any(v is not None for v in limits.values()):
            raise ValueError("pass either budget= or the separate limits, not both")
        return budget
    return EditBudget(**limits)


def labels_of(values: Any, class_names: Sequence[str], n: int, what: str = "y") -> torch.Tensor:
    """Labels as an int64 tensor ``(n,)``: one class (index or name) for every example, or a
    sequence / tensor of indices or names. ``ValueError`` names an unknown class."""
    names = tuple(class_names)

    def one(v: Any) -> int:
        if isinstance(v, str):
            if v not in names:
                raise ValueError(f"{what}: unknown class {v!r}; classes: {list(names)}")
            return names.index(v)
        if isinstance(v, bool):
            raise TypeError(f"{what}: a bool is not a class; pass an index or a class name")
        if isinstance(v, int | float) and float(v) == int(v):
            k = int(v)
            if not 0 <= k < len(names):
                raise ValueError(f"{what}: class {k} out of range for classes {list(names)}")
            return k
        raise ValueError(f"{what}: cannot read {v!r} as a class")

    if isinstance(values, str | int) or (isinstance(values, torch.Tensor) and values.dim() == 0):
        v = values.item() if isinstance(values, torch.Tensor) else values
        return torch.full((n,), one(v), dtype=torch.int64)
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.bool:
            raise TypeError(f"{what}: a bool tensor is not a class; pass class indices")
        values = values.reshape(-1).tolist()
    vals = list(values)
    if len(vals) != n:
        raise ValueError(f"{what}: {len(vals)} labels for {n} texts")
    return torch.tensor([one(v) for v in vals], dtype=torch.int64)


class TextAttack(ABC):
    """Base class of the text attacks: text in, text out, within an :class:`EditBudget`.

    Subclasses set the declarations, keep their hyperparameters as attributes and implement
    :meth:`_attack`. Every model call goes through the :class:`TextModelCaller` handed to it,
    which counts queries (and gradients) per example.

    Args (of the base):
        budget: the :class:`EditBudget` every adversarial must satisfy.
        seed: seed of the attack's random choices (the same seed gives the same texts).
    """

    #: the registry name (``advex attack --attack NAME``)
    name: str = "text-attack"
    aliases: tuple[str, ...] = ()
    #: whether the attack uses the model's outputs only (scores or labels)
    black_box: bool = True
    targeted_only: bool = False
    #: what the model must expose: a subset of {"gradients", "scores", "labels"}
    needs: frozenset[str] = frozenset({"scores"})

    def __init__(self, budget: EditBudget, *, seed: int | None = 0) -> None:
        if not isinstance(budget, EditBudget):
            raise TypeError(f"budget must be an EditBudget, got {type(budget).__name__}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        self.threat = budget
        self.seed = seed

    @property
    def budget(self) -> EditBudget:
        return self.threat

    def params(self) -> dict[str, Any]:
        """The attack's settable hyperparameters and their values (for results)."""
        out = {}
        for k in text_attack_params(type(self)):
            v = getattr(self, k, None)
            if isinstance(v, bool | int | float | str) or v is None:
                out[k] = v
        return out

    def __repr__(self) -> str:
        kw = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({kw})"

    def fit(self, model: Any, data: Any = None) -> TextAttack:
        """Learn what the attack needs from data; a no-op by default. Returns ``self``."""
        return self

    # -- the prologue ------------------------------------------------------------------------
    def attack(
        self,
        model: Any,
        texts: Sequence[str],
        y: Any,
        target: Any = None,
    ) -> TextAttackResult:
        """Attack ``model`` on ``texts`` with labels ``y`` (and optional ``target``).

        Args:
            model: a :class:`~advex.models.text.TextClassifier` or anything
                :func:`~advex.models.text.as_text_classifier` adapts (a callable with
                ``class_names``, a scikit-learn pipeline); left as found.
            texts: a list of str; never modified (the result holds copies).
            y: true labels: one class for all (index or name, e.g. ``"spam"``) or one per text.
            target: None (untargeted), one class for all (``"ham"``) or one per text.

        Returns:
            a :class:`TextAttackResult`, success re-predicted on the adversarial texts.
        """
        clf = as_text_classifier(model)
        self._check_exposes(clf)
        texts = check_texts(texts)
        n = len(texts)
        y_t = labels_of(y, clf.class_names, n, "y")
        if target is not None:
            target = labels_of(target, clf.class_names, n, "target")
            target = check_target(target, y_t, clf.num_classes)
        if target is None and self.targeted_only:
            raise ValueError(f"{self.name} is a targeted attack: pass target=")
        caller = TextModelCaller(clf, n)
        clean = caller.scores(texts) if n else torch.zeros(0, clf.num_classes)
        self._check_exposes(clf)  # again: a callable in "auto" mode knows after one answer
        goal = Goal(y_t, target)
        done = goal.is_success(clean) if n else torch.zeros(0, dtype=torch.bool)
        adv = list(texts)
        if n and not bool(done.all()):
            adv = self._attack(caller, list(texts), goal, done.clone(), clean)
            adv = self._checked_output(adv, n)
            for i in done.nonzero().squeeze(1).tolist():
                adv[i] = texts[i]  # early exit: an example already successful stays as is
            adv = self._enforce_budget(texts, adv)
        adv_scores = caller.scores(adv) if n else torch.zeros(0, clf.num_classes)
        return self._result(texts, adv, goal, clean, adv_scores, caller, clf)

    __call__ = attack

    def _check_exposes(self, clf) -> None:
        missing = set(self.needs) - set(clf.exposes)
        if missing:
            raise TypeError(
                f"{type(self).__name__} needs a model exposing {sorted(self.needs)}; "
                f"{type(clf).__name__} exposes {sorted(clf.exposes)}"
            )

    def _checked_output(self, adv: Any, n: int) -> list[str]:
        adv = check_texts(adv, f"{self.name} output")
        if len(adv) != n:  # pragma: no cover - programming error guard
            raise RuntimeError(f"{self.name} returned {len(adv)} texts for {n}")
        return adv

    def _enforce_budget(self, texts: list[str], adv: list[str]) -> list[str]:
        """Edit limits are the attack's job (a violation is a bug: RuntimeError); an
        adversarial below the similarity threshold is replaced by the original."""
        for i, (a, b) in enumerate(zip(texts, adv, strict=True)):
            if a != b and not self.threat.allows(a, b):
                raise RuntimeError(
                    f"{self.name} returned an adversarial outside its budget for example {i} "
                    f"({self.threat.describe()})"
                )
        if self.threat.min_similarity is not None:
            ok = self.threat.contains(texts, adv)
            adv = [b if bool(ok[i]) else texts[i] for i, b in enumerate(adv)]
        return adv

    def _result(self, texts, adv, goal, clean, adv_scores, caller, clf) -> TextAttackResult:
        measured = self.threat.measure(texts, adv)
        cp, cpred = clean.float().softmax(1).max(1)
        ap, apred = adv_scores.float().softmax(1).max(1)
        return TextAttackResult(
            original=list(texts),
            adversarial=list(adv),
            success=goal.is_success(adv_scores),
            y=goal.y,
            target=goal.target,
            clean_pred=cpred,
            clean_conf=cp,
            adv_pred=apred,
            adv_conf=ap,
            queries=caller.queries.clone(),
            gradients=caller.gradients.clone(),
            char_edits=measured["char_edits"],
            words_changed=measured["words_changed"],
            word_fraction=measured["word_fraction"],
            similarity=measured["similarity"],
            threat=self.threat,
            attack=self.name,
            params=self.params(),
            class_names=clf.class_names,
        )

    @abstractmethod
    def _attack(
        self,
        caller: TextModelCaller,
        texts: list[str],
        goal: Goal,
        done: torch.Tensor,
        clean_scores: torch.Tensor,
    ) -> list[str]:
        """Return one adversarial text per input (an example in ``done`` is left as is)."""

    # -- helpers for subclasses --------------------------------------------------------------
    @staticmethod
    def objective(scores: torch.Tensor, goal: Goal) -> torch.Tensor:
        """Per row, what the search maximises: the margin toward the goal (targeted:
        ``s[target] − max other``; untargeted: ``max other − s[y]``), > 0 iff successful."""
        s = scores.float()
        lab = goal.labels.to(s.device)
        own = s.gather(1, lab[:, None]).squeeze(1)
        other = s.clone()
        other.scatter_(1, lab[:, None], -math.inf)
        best_other = other.max(1).values
        return own - best_other if goal.targeted else best_other - own


# --------------------------------------------------------------------------------------------
# The registry of text attacks
# --------------------------------------------------------------------------------------------

_TEXT_ATTACKS: list[type[TextAttack]] = []
#: constructor arguments not settable from a string
_RESERVED = {"budget", "similarity", "seed"}


def register_text_attack(cls: type[TextAttack]) -> type[TextAttack]:
    """Add a text attack class to the registry (a class decorator); ``ValueError`` when one of
    its names is taken."""
    if not (isinstance(cls, type) and issubclass(cls, TextAttack) and not inspect.isabstract(cls)):
        raise TypeError(f"register_text_attack expects a TextAttack subclass, got {cls!r}")
    if cls in _TEXT_ATTACKS:
        return cls
    taken = {k: c for c in _TEXT_ATTACKS for k in _keys(c)}
    clash = [k for k in _keys(cls) if k in taken]
    if clash:
        raise ValueError(
            f"cannot register {cls.__name__}: name {clash[0]!r} is taken by "
            f"{taken[clash[0]].__name__}"
        )
    _TEXT_ATTACKS.append(cls)
    return cls


def _keys(cls: type) -> list[str]:
    return [attack_key(n) for n in (cls.name, cls.__name__, *cls.aliases)]


def _load_builtins() -> None:
    from . import deepwordbug, hotflip  # noqa: F401  (they register themselves)

    __import__(f"{__package__}.textfooler")  # advex.attacks.text.textfooler (engineer B)
    __import__(f"{__package__}.wordsub")  # the unconstrained word-substitution search


def available_text_attacks() -> list[str]:
    """Registry names of the text attacks."""
    _load_builtins()
    return sorted(c.name for c in _TEXT_ATTACKS)


def find_text_attack(name: str | type) -> type[TextAttack]:
    """The text attack class called ``name`` (name, alias or class name; case, ``-`` and
    ``_`` ignored)."""
    if isinstance(name, type) and issubclass(name, TextAttack):
        return name
    _load_builtins()
    key = attack_key(str(name))
    for c in _TEXT_ATTACKS:
        if key in _keys(c):
            return c
    raise ValueError(
        f"unknown text attack {name!r}; available text attacks: {available_text_attacks()}"
    )


def text_attack_params(cls: type) -> dict[str, Any]:
    """``name -> default`` of the hyperparameters a string can set for a text attack."""
    sig = inspect.signature(cls.__init__)
    try:
        hints = inspect.get_annotations(cls.__init__, eval_str=True)
    except Exception:
        hints = {}
    out = {}
    for p in list(sig.parameters.values())[1:]:
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in _RESERVED:
            continue
        if param_kinds(hints.get(p.name, p.annotation), p.default) is not None:
            out[p.name] = p.default
    return out


def build_text_attack(
    name: str | type, *, seed: int | None = 0, params: Sequence[str] = (), **kwargs: Any
) -> TextAttack:
    """The text attack ``name`` built with ``seed``, ``KEY=VALUE`` ``params`` (converted with
    the constructor's annotations) and keyword arguments (e.g. ``similarity=``)."""
    cls = find_text_attack(name)
    sig = inspect.signature(cls.__init__)
    try:
        hints = inspect.get_annotations(cls.__init__, eval_str=True)
    except Exception:
        hints = {}
    valid = text_attack_params(cls)
    out: dict[str, Any] = {}
    for item in params:
        key, sep, raw = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--param expects KEY=VALUE, got {item!r}")
        if key not in valid:
            raise ValueError(
                f"{cls.__name__} has no parameter {key!r}; valid parameters: "
                f"{', '.join(sorted(valid))}"
            )
        p = sig.parameters[key]
        out[key] = convert_param(key, raw, param_kinds(hints.get(key, p.annotation), p.default))
    out.update(kwargs)
    if "seed" in sig.parameters:
        out["seed"] = seed
    try:
        return cls(**out)
    except (ValueError, TypeError) as err:
        kind = TypeError if isinstance(err, TypeError) else ValueError
        raise kind(f"cannot build {cls.__name__}: {err}") from err
