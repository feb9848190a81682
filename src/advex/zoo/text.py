"""Reference text models for the SMS Spam Collection, trained deterministically and cached.

- ``sms-spam-cnn``: a word-level CNN (:class:`TextCNN`, white box) with its own
  :class:`~advex.models.text.WordTokenizer`; ``model.safetensors`` + ``tokenizer.json`` +
  ``card.json``.
- ``sms-spam-charcnn``: the same CNN over characters (:class:`~advex.models.text.CharTokenizer`),
  white box; more robust to character edits.
- ``sms-spam-tfidf``: scikit-learn TF-IDF (word 1–2-grams) + logistic regression, stored with
  skops (``model.skops``, loaded with the trusted-types check, never pickle); a black box.

Both load with :func:`advex.zoo.load` as a :class:`~advex.models.text.TextClassifier`: a
callable from a list of strings to scores ``(N, 2)`` over ``("ham", "spam")``, with the card as
``model.card``. The data comes from ``data_root=`` (the folder holding ``SMSSpamCollection``),
else ``$ADVEX_DATASETS/sms-spam-collection``, else ``../shared/datasets/sms-spam-collection``
beside the repository (see :func:`advex.data.text.sms_spam_root`).

>>> import advex.zoo
>>> model = advex.zoo.load("sms-spam-cnn")
>>> model(["WINNER!! Claim your free prize now", "see you at 6"]).argmax(1)
tensor([1, 0])
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from advex._io import atomic_write
from advex.data.text import SMS_SPAM_CLASSES, TextDataset, sms_spam
from advex.models.loading import ModelLoadError
from advex.models.text import (
    CharTokenizer,
    SklearnTextClassifier,
    TorchTextClassifier,
    WordTokenizer,
    load_skops,
    load_tokenizer,
)

from . import file_lock, models_root

__all__ = [
    "CNN_RECIPE",
    "CHAR_CNN_RECIPE",
    "TextCNN",
    "TFIDF_RECIPE",
    "load_text_model",
    "text_accuracy",
    "train_text_cnn",
]

CARD_FILE = "card.json"

#: the recipe of ``sms-spam-cnn``: a word-level CNN (a change retrains the cached model)
CNN_RECIPE = {
    "level": "word",
    "ignore_unknown": True,
    "embed_dim": 64,
    "channels": 64,
    "kernel_sizes": [1, 2, 3],
    "dropout": 0.3,
    "spam_weight": 2.0,
    "max_length": 128,
    "min_count": 2,
    "epochs": 6,
    "batch_size": 32,
    "lr": 3e-3,
    "weight_decay": 0.0,
    "seed": 0,
    "split_seed": 0,
    "threads": 1,
}
#: the recipe of ``sms-spam-charcnn``: a character-level CNN
CHAR_CNN_RECIPE = {
    "level": "char",
    "ignore_unknown": False,
    "embed_dim": 24,
    "channels": 64,
    "kernel_sizes": [3, 5, 7],
    "dropout": 0.3,
    "spam_weight": 1.0,
    "max_length": 256,
    "min_count": 2,
    "epochs": 6,
    "batch_size": 32,
    "lr": 3e-3,
    "weight_decay": 0.0,
    "seed": 0,
    "split_seed": 0,
    "threads": 1,
}
#: the recipe of ``sms-spam-tfidf``
TFIDF_RECIPE = {
    "ngram_range": [1, 2],
    "sublinear_tf": True,
    "min_df": 1,
    "lowercase": True,
    "C": 20.0,
    "class_weight": "balanced",
    "max_iter": 2000,
    "split_seed": 0,
}


class TextCNN(nn.Module):
    """A token-level (characters or words) CNN text classifier (Kim 2014): embedding →
    parallel 1-D convolutions of several widths → ReLU → max over time → dropout → linear.

    Padding (id 0) has a zero embedding and its positions are masked before the max, so a
    text's logits do not depend on how much padding its batch has; with ``ignore_unknown`` the
    unknown token (id 1) is masked the same way (an out-of-vocabulary word carries no signal,
    as in a bag of known words). White box for HotFlip: it
    exposes ``embedding`` and :meth:`forward_embedded`.

    Shapes: ``ids`` (N, L) int64 → logits (N, num_classes).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 2,
        embed_dim: int = 32,
        channels: int = 64,
        kernel_sizes: tuple[int, ...] | list[int] = (3, 5, 7),
        dropout: float = 0.3,
        ignore_unknown: bool = False,
    ) -> None:
        super().__init__()
        self.ignore_unknown = bool(ignore_unknown)
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.convs = nn.ModuleList(
            nn.Conv1d(embed_dim, channels, int(k), padding=int(k) // 2) for k in kernel_sizes
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * len(kernel_sizes), num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(self.embedding(ids), ids)

    def forward_embedded(self, embedded: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits from embedded tokens ``(N, L, D)`` (``ids`` (N, L) marks the padding)."""
        # padding (0) never counts; unknown tokens (1) neither with ignore_unknown
        keep = (ids > (1 if self.ignore_unknown else 0)).unsqueeze(1)  # (N, 1, L)
        h = (embedded * keep.transpose(1, 2).to(embedded.dtype)).transpose(1, 2)
        feats = []
        for conv in self.convs:
            c = F.relu(conv(h))[..., : h.shape[-1]]
            feats.append(c.masked_fill(~keep, 0.0).max(dim=2).values)
        return self.fc(self.dropout(torch.cat(feats, dim=1)))


# --------------------------------------------------------------------------------------------
# Cache helpers
# --------------------------------------------------------------------------------------------


def _recipe_id(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _read_card(directory: Path) -> dict | None:
    p = directory / CARD_FILE
    if not p.is_file():
        return None
    try:
        card = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"corrupt model card {p}: {e}") from e
    return card if isinstance(card, dict) else None


def _write_card(directory: Path, card: dict) -> None:
    atomic_write(directory / CARD_FILE, json.dumps(card, indent=2, sort_keys=True) + "\n")


def text_accuracy(model, ds: TextDataset) -> dict:
    """Accuracy, spam recall and spam precision of ``model`` on ``ds`` (spam = class 1)."""
    pred = model(list(ds.texts)).argmax(1)
    y = ds.y
    spam = ds.class_names.index("spam") if "spam" in ds.class_names else 1
    tp = int(((pred == spam) & (y == spam)).sum())
    return {
        "accuracy": float((pred == y).float().mean()),
        "spam_recall": tp / max(1, int((y == spam).sum())),
        "spam_precision": tp / max(1, int((pred == spam).sum())),
    }


def _data_info(ds: TextDataset, split_seed: int) -> dict:
    return {
        "name": "sms-spam-collection",
        "source": "UCI SMS Spam Collection v.1 (SMSSpamCollection)",
        "split": "deduplicated, stratified, test_size=0.2",
        "split_seed": split_seed,
    }


# --------------------------------------------------------------------------------------------
# sms-spam-cnn
# --------------------------------------------------------------------------------------------


def _length_batches(texts: list[str], bs: int, gen: torch.Generator) -> list[list[int]]:
    """Batches of similar lengths (less padding): a seeded shuffle, cut into pools of 16
    batches sorted by length, then the batches in seeded order."""
    perm = torch.randperm(len(texts), generator=gen).tolist()
    batches = []
    pool = 16 * bs
    for p in range(0, len(perm), pool):
        chunk = sorted(perm[p : p + pool], key=lambda j: len(texts[j]))
        batches += [chunk[i : i + bs] for i in range(0, len(chunk), bs)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[k] for k in order]


def _train_cnn(train: TextDataset, recipe: dict, progress: bool) -> tuple[TextCNN, CharTokenizer]:
    kind = CharTokenizer if recipe["level"] == "char" else WordTokenizer
    tok = kind.fit(train.texts, min_count=recipe["min_count"], max_length=recipe["max_length"])
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe["threads"])
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe["seed"])
            model = TextCNN(
                tok.vocab_size,
                len(SMS_SPAM_CLASSES),
                recipe["embed_dim"],
                recipe["channels"],
                tuple(recipe["kernel_sizes"]),
                recipe["dropout"],
                recipe["ignore_unknown"],
            )
            gen = torch.Generator().manual_seed(recipe["seed"])
            opt = torch.optim.Adam(
                model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"]
            )
            n = len(train)
            bs = recipe["batch_size"]
            steps = recipe["epochs"] * math.ceil(n / bs)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / steps))
            )
            texts = list(train.texts)
            # class weights (ham, spam): a higher spam weight trades precision for recall
            weight = torch.tensor([1.0, float(recipe["spam_weight"])])
            model.train()
            for epoch in range(recipe["epochs"]):
                total = 0.0
                for idx in _length_batches(texts, bs, gen):
                    ids = tok.encode([texts[j] for j in idx])
                    loss = F.cross_entropy(model(ids), train.y[idx], weight=weight)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(idx)
                if progress:
                    print(
                        f"advex.zoo: {recipe['level']}-level CNN epoch {epoch + 1}: "
                        f"loss {total / n:.4f}"
                    )
            model.eval()
    finally:
        torch.set_num_threads(threads)
    return model, tok


def _load_cnn_dir(directory: Path, card: dict) -> TorchTextClassifier:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tok = load_tokenizer(directory / "tokenizer.json")
    arch = card.get("arch_kwargs", {})
    with torch.random.fork_rng(devices=[]):
        model = TextCNN(**arch)
    try:
        state = load_file(str(directory / "model.safetensors"))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ModelLoadError(f"cannot load {directory / 'model.safetensors'}: {e}") from e
    model.eval()
    clf = TorchTextClassifier(model, tok, card.get("class_names", SMS_SPAM_CLASSES))
    clf.card = card
    return clf


def _cnn(name, cache_dir, data_root, progress, retrain) -> TorchTextClassifier:
    from safetensors.torch import save_file

    recipe = CHAR_CNN_RECIPE if name == "sms-spam-charcnn" else CNN_RECIPE
    directory = models_root(cache_dir) / name
    rid = _recipe_id(recipe)
    with file_lock(directory.parent / f".{name}.lock"):
        card = _read_card(directory)
        if card is not None and card.get("recipe_id") == rid and not retrain:
            return _load_cnn_dir(directory, card)
        train = sms_spam(data_root, "train", seed=recipe["split_seed"])
        test = sms_spam(data_root, "test", seed=recipe["split_seed"])
        t0 = time.perf_counter()
        model, tok = _train_cnn(train, recipe, progress)
        wall = time.perf_counter() - t0
        clf = TorchTextClassifier(model, tok, SMS_SPAM_CLASSES)
        metrics = text_accuracy(clf, test)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write(directory / "model.safetensors", lambda tmp: save_file(state, tmp))
        tok.save(directory / "tokenizer.json")
        card = {
            "name": name,
            "format": "advex-zoo-text/1",
            "kind": "torch",
            "arch": "TextCNN",
            "level": recipe["level"],
            "arch_kwargs": {
                "vocab_size": tok.vocab_size,
                "num_classes": len(SMS_SPAM_CLASSES),
                "embed_dim": recipe["embed_dim"],
                "channels": recipe["channels"],
                "kernel_sizes": list(recipe["kernel_sizes"]),
                "dropout": recipe["dropout"],
                "ignore_unknown": recipe["ignore_unknown"],
            },
            "recipe": recipe,
            "recipe_id": rid,
            "data": _data_info(test, recipe["split_seed"]),
            **metrics,
            "accuracy_split": test.name,
            "n_train": len(train),
            "n_test": len(test),
            "class_names": list(SMS_SPAM_CLASSES),
            "train_time_s": round(wall, 3),
            "torch_version": torch.__version__,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        _write_card(directory, card)
        clf.card = card
        return clf


# --------------------------------------------------------------------------------------------
# sms-spam-tfidf
# --------------------------------------------------------------------------------------------


def _tfidf(name, cache_dir, data_root, progress, retrain) -> SklearnTextClassifier:
    recipe = TFIDF_RECIPE
    directory = models_root(cache_dir) / name
    rid = _recipe_id(recipe)
    path = directory / "model.skops"
    with file_lock(directory.parent / f".{name}.lock"):
        card = _read_card(directory)
        if card is not None and card.get("recipe_id") == rid and not retrain:
            clf = SklearnTextClassifier(load_skops(path), SMS_SPAM_CLASSES)
            clf.card = card
            return clf
        try:
            import skops.io as sio
            from sklearn.feature_extraction.text import TfidfVectorizer
            from sklearn.linear_model import LogisticRegression
            from sklearn.pipeline import Pipeline
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError(
                f"{name} needs scikit-learn and skops: pip install 'advex[text]'"
            ) from e
        train = sms_spam(data_root, "train", seed=recipe["split_seed"])
        test = sms_spam(data_root, "test", seed=recipe["split_seed"])
        t0 = time.perf_counter()
        pipe = Pipeline(
            [
                (
                    "tfidf",
                    TfidfVectorizer(
                        ngram_range=tuple(recipe["ngram_range"]),
                        sublinear_tf=recipe["sublinear_tf"],
                        min_df=recipe["min_df"],
                        lowercase=recipe["lowercase"],
                    ),
                ),
                (
                    "logreg",
                    LogisticRegression(
                        C=recipe["C"],
                        class_weight=recipe["class_weight"],
                        max_iter=recipe["max_iter"],
                    ),
                ),
            ]
        )
        pipe.fit(list(train.texts), [train.class_names[int(k)] for k in train.y])
        wall = time.perf_counter() - t0
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: sio.dump(pipe, tmp))
        clf = SklearnTextClassifier(load_skops(path), SMS_SPAM_CLASSES)
        metrics = text_accuracy(clf, test)
        card = {
            "name": name,
            "format": "advex-zoo-text/1",
            "kind": "sklearn",
            "arch": "TfidfVectorizer+LogisticRegression",
            "recipe": recipe,
            "recipe_id": rid,
            "data": _data_info(test, recipe["split_seed"]),
            **metrics,
            "accuracy_split": test.name,
            "n_train": len(train),
            "n_test": len(test),
            "class_names": list(SMS_SPAM_CLASSES),
            "train_time_s": round(wall, 3),
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        _write_card(directory, card)
        clf.card = card
        return clf


_BUILDERS = {"sms-spam-cnn": _cnn, "sms-spam-charcnn": _cnn, "sms-spam-tfidf": _tfidf}


def load_text_model(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
    retrain: bool = False,
):
    """Load (training and caching on first use) the text model ``name``; the entry point
    :func:`advex.zoo.load` calls for ``sms-spam-cnn`` and ``sms-spam-tfidf``."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown text model {name!r}; available: {sorted(_BUILDERS)}")
    return _BUILDERS[name](name, cache_dir, data_root, progress, retrain)


def train_text_cnn(train: TextDataset, recipe: dict | None = None, progress: bool = False):
    """Train a fresh :class:`TextCNN` + tokenizer with a zoo recipe (default ``CNN_RECIPE``,
    the recipe of ``sms-spam-cnn``) on ``train``; returns a :class:`TorchTextClassifier`.
    Public for the defenses (adversarial training by augmentation retrains with it)."""
    model, tok = _train_cnn(train, dict(recipe or CNN_RECIPE), progress)
    return TorchTextClassifier(model, tok, train.class_names)
