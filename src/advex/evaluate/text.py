"""Robustness of a text classifier: clean accuracy, robust accuracy under an ensemble of text
attacks (per-example worst case, each attack run only on the examples still robust),
per-attack success, words changed and queries, examples side by side (HTML) and JSON.

>>> from advex.evaluate.text import evaluate_text
>>> model = advex.zoo.load("sms-spam-cnn")
>>> spam = advex.data.sms_spam(split="test").of_class("spam")
>>> ev = evaluate_text(model, spam.texts, "spam", target="ham", out_dir="run/")
>>> ev.clean_accuracy, ev.robust_accuracy, ev.attacks["textfooler"]["success_rate"]

The default ensemble is the text attacks of the registry that fit the model: the black-box
ones (TextFooler, DeepWordBug) always, HotFlip when the model exposes gradients. Each is
built with its own default budget unless given as an instance (or ``params``). A defended
model (e.g. :class:`advex.defenses.text.SpellingCorrection`) is attacked *through* its
defense: the attacks query the defended pipeline, so the evaluation is adaptive.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import write_json
from .._stats import clopper_pearson
from ..attacks.text.base import TextAttack, build_text_attack, labels_of
from ..models.text import as_text_classifier
from ..report.text import save_text_html
from ..threats.text import check_texts

__all__ = ["TextEvaluation", "default_text_attacks", "evaluate_text"]


def default_text_attacks(model: Any, seed: int | None = 0) -> list[TextAttack]:
    """TextFooler and DeepWordBug (black box), plus HotFlip for a model exposing gradients."""
    clf = as_text_classifier(model)
    names = ["textfooler", "deepwordbug"]
    if "gradients" in clf.exposes:
        names.append("hotflip")
    return [build_text_attack(n, seed=seed) for n in names]


@dataclass
class TextEvaluation:
    """The outcome of :func:`evaluate_text`.

    Attributes:
        n: examples evaluated; clean_accuracy / robust_accuracy over all of them (robust =
            correct before and after every attack); robust_accuracy_ci its 95 %
            Clopper–Pearson interval.
        attacks: per attack (in the order run): ``attacked`` (examples it was run on),
            ``successes``, ``success_rate``, ``mean_words_changed``, ``mean_char_edits``,
            ``mean_similarity`` (over its successes), ``mean_queries`` (over the examples it
            attacked), ``seconds``, ``threat``.
        records: one dict per example (``original``, ``adversarial`` — the first successful
            one, else the original — ``label``, ``clean_prediction``,
            ``adversarial_prediction``, ``success``, ``attack``, ``queries`` summed over the
            attacks, ``words_changed``, ``char_edits``, ``similarity``).
    """

    model: str
    n: int
    clean_accuracy: float
    robust_accuracy: float
    robust_accuracy_ci: tuple[float, float]
    target: str | None
    attacks: dict[str, dict[str, Any]]
    records: list[dict[str, Any]]
    seconds: float
    class_names: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (everything but the records)."""
        return {
            "model": self.model,
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "robust_accuracy_ci": list(self.robust_accuracy_ci),
            "target": self.target,
            "attacks": self.attacks,
            "seconds": round(self.seconds, 3),
            "class_names": list(self.class_names),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "examples": self.records}

    def save(self, out_dir: str | Path, *, max_html_examples: int = 50) -> dict[str, str]:
        """Write ``results.json`` (summary + every example) and ``report.html`` (the successful
        examples first, at most ``max_html_examples``) to ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", self.to_dict())
        shown = [r for r in self.records if r["success"] and r["original"] != r["adversarial"]]
        shown += [r for r in self.records if r not in shown]
        save_text_html(out / "report.html", self.summary(), shown[:max_html_examples])
        self.files = {"json": str(out / "results.json"), "html": str(out / "report.html")}
        return self.files


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def evaluate_text(
    model: Any,
    texts: Sequence[str],
    y: Any,
    attacks: Sequence[TextAttack | str] | None = None,
    *,
    target: Any = None,
    seed: int | None = 0,
    model_name: str | None = None,
    out_dir: str | Path | None = None,
) -> TextEvaluation:
    """Clean and robust accuracy of a text classifier under an ensemble of text attacks.

    Args:
        model: a :class:`~advex.models.text.TextClassifier` (or anything
            :func:`~advex.models.text.as_text_classifier` adapts); left as found.
        texts: the messages (a list of str; never modified).
        y: true labels, one class (index or name) for all or one per text.
        attacks: text attacks (instances, or registry names built with ``seed``); default
            :func:`default_text_attacks`. They run in this order, each only on the examples
            that are still robust (correct and not yet fooled).
        target: None (untargeted) or the class to push towards (``"ham"``).
        seed: seed of attacks built from names.
        model_name: shown in the report (default: the model's card name or its type).
        out_dir: when given, ``results.json`` and ``report.html`` are written there.
    """
    t_start = time.perf_counter()
    clf = as_text_classifier(model)
    texts = check_texts(texts)
    n = len(texts)
    if n == 0:
        raise ValueError("evaluate_text needs at least one text")
    y_t = labels_of(y, clf.class_names, n, "y")
    tgt = None if target is None else labels_of(target, clf.class_names, n, "target")
    if attacks is None:
        attacks = default_text_attacks(clf, seed)
    attacks = [build_text_attack(a, seed=seed) if isinstance(a, str) else a for a in attacks]
    if not attacks:
        raise ValueError("evaluate_text needs at least one attack")
    for a in attacks:
        if not isinstance(a, TextAttack):
            raise TypeError(f"attacks must be TextAttack instances or names, got {a!r}")

    names = clf.class_names
    clean_pred = clf(texts).argmax(1)
    correct = clean_pred == y_t
    if tgt is not None:
        correct &= y_t != tgt  # a target equal to the label is not attacked
    robust = correct.clone()
    records: list[dict[str, Any]] = [
        {
            "index": i,
            "original": texts[i],
            "adversarial": texts[i],
            "label": names[int(y_t[i])],
            "target": None if tgt is None else names[int(tgt[i])],
            "clean_prediction": names[int(clean_pred[i])],
            "adversarial_prediction": names[int(clean_pred[i])],
            "success": False,
            "attack": None,
            "queries": 1,
            "words_changed": 0,
            "char_edits": 0,
            "similarity": None,
        }
        for i in range(n)
    ]
    per_attack: dict[str, dict[str, Any]] = {}
    for attack in attacks:
        idx = robust.nonzero().squeeze(1).tolist()
        key = attack.name
        k = 2
        while key in per_attack:
            key = f"{attack.name}-{k}"
            k += 1
        t0 = time.perf_counter()
        if idx:
            res = attack(
                clf,
                [texts[i] for i in idx],
                y_t[idx],
                None if tgt is None else tgt[idx],
            )
        secs = time.perf_counter() - t0
        if not idx:
            per_attack[key] = {
                "attacked": 0,
                "successes": 0,
                "success_rate": None,
                "threat": attack.threat.describe(),
                "seconds": round(secs, 3),
            }
            continue
        won = res.success & res.changed
        for j, i in enumerate(idx):
            rec = records[i]
            rec["queries"] += int(res.queries[j])
            if bool(won[j]):
                robust[i] = False
                rec.update(
                    adversarial=res.adversarial[j],
                    adversarial_prediction=names[int(res.adv_pred[j])],
                    success=True,
                    attack=key,
                    words_changed=int(res.words_changed[j]),
                    char_edits=int(res.char_edits[j]),
                    similarity=None
                    if res.similarity is None
                    else round(float(res.similarity[j]), 4),
                )
        wins = won.nonzero().squeeze(1).tolist()
        per_attack[key] = {
            "attacked": len(idx),
            "successes": len(wins),
            "success_rate": len(wins) / len(idx),
            "mean_words_changed": _mean([float(res.words_changed[j]) for j in wins]),
            "mean_char_edits": _mean([float(res.char_edits[j]) for j in wins]),
            "mean_similarity": None
            if res.similarity is None
            else _mean([float(res.similarity[j]) for j in wins]),
            "mean_queries": float(res.queries.double().mean()),
            "median_queries": float(res.queries.double().median()),
            "seconds": round(secs, 3),
            "threat": attack.threat.describe(),
            "params": attack.params(),
        }
    n_robust = int(robust.sum())
    lo, hi = clopper_pearson(n_robust, n)
    card = getattr(model, "card", None) or getattr(clf, "card", None)
    name = model_name or (card.get("name") if isinstance(card, dict) else None)
    return_value = TextEvaluation(
        model=name or type(model).__name__,
        n=n,
        clean_accuracy=float((clean_pred == y_t).float().mean()),
        robust_accuracy=n_robust / n,
        robust_accuracy_ci=(float(lo), float(hi)),
        target=None
        if target is None
        else (names[int(tgt[0])] if bool((tgt == tgt[0]).all()) else "per-example"),  # fmt: skip
        attacks=per_attack,
        records=records,
        seconds=time.perf_counter() - t_start,
        class_names=tuple(names),
    )
    if out_dir is not None:
        return_value.save(out_dir)
    return return_value
