"""The models the server offers, loaded lazily (each once, under a lock) and frozen, and their
test samples.

Only these server-side models exist: nothing in a request names a file or uploads a model.
A loaded image model is put in eval mode with ``requires_grad`` off on every parameter, so
concurrent attacks (whose :func:`~advex.models.attack_mode` sets exactly these flags and
restores them) never race on it; text models are wrapped afresh per job
(:meth:`Catalog.text_classifier`) so their query counters are per job too.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import ServeConfig
from .limits import ApiError

__all__ = ["Catalog", "ModelInfo", "GTSRB_SAMPLE_CLASSES"]

#: GTSRB classes shown as samples (read from the test set; loading all 43 is slower)
GTSRB_SAMPLE_CLASSES = (14, 1, 13, 17, 25, 33, 38, 12)


@dataclass
class ModelInfo:
    name: str
    domain: str  # "image" | "text"
    title: str
    classes: tuple[str, ...]
    input: dict | None
    defended: str | None = None
    digits: bool = False
    eps_default: float | None = None
    data_root: Path | None = None
    reason: str | None = None
    description: str = ""
    extra: dict = field(default_factory=dict)
    #: the zoo model loaded for this entry (default: ``name``)
    zoo: str | None = None

    @property
    def available(self) -> bool:
        return self.reason is None

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "domain": self.domain,
            "title": self.title,
            "classes": list(self.classes),
            "input": self.input,
            "defended": self.defended,
            "available": self.available,
            "reason": self.reason,
            "description": self.description,
            "eps_default": self.eps_default,
        }


def _gtsrb_classes() -> tuple[str, ...]:
    from advex.data.gtsrb import GTSRB_CLASSES

    return tuple(GTSRB_CLASSES)


def _find_gtsrb(root) -> tuple[Path | None, str | None]:
    if root is None:
        return None, "no GTSRB data: start the server with --gtsrb PATH"
    p = Path(root).expanduser()
    try:
        from advex.data.gtsrb import gtsrb_root

        return gtsrb_root(p), None
    except (FileNotFoundError, ValueError, OSError) as err:
        return None, f"GTSRB data not found at {p}: {err}"


def _find_sms(root) -> tuple[Path | None, str | None]:
    from advex.data.text import SMS_SPAM_FILE, sms_spam_root

    try:
        p = sms_spam_root(root)
    except FileNotFoundError as err:
        return None, f"SMS Spam Collection not found (start the server with --sms PATH): {err}"
    if p.is_dir() and not (p / SMS_SPAM_FILE).is_file():
        return None, f"no {SMS_SPAM_FILE} in {p} (start the server with --sms PATH)"
    if not p.exists():
        return None, f"SMS Spam Collection not found at {p}"
    return p, None


class Catalog:
    """Model descriptions, lazily loaded models and their samples."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        digits = tuple(str(i) for i in range(10))
        gtsrb_root, gtsrb_reason = _find_gtsrb(config.gtsrb_root)
        sms_root, sms_reason = _find_sms(config.sms_root)
        self.models: dict[str, ModelInfo] = {
            "mnist-smallcnn": ModelInfo(
                "mnist-smallcnn",
                "image",
                "Handwritten digits (MNIST, small CNN)",
                digits,
                {"channels": 1, "height": 28, "width": 28},
                defended="mnist-smallcnn-at",
                digits=True,
                eps_default=0.2,
                description="A small CNN trained on 4,000 MNIST digits (advex zoo).",
            ),
            "mnist-smallcnn-at": ModelInfo(
                "mnist-smallcnn-at",
                "image",
                "Handwritten digits (adversarially trained)",
                digits,
                {"channels": 1, "height": 28, "width": 28},
                digits=True,
                eps_default=0.2,
                description="The same CNN adversarially trained (FGSM with random start, "
                "ε = 0.3): the 'defend' twin of mnist-smallcnn.",
            ),
            "gtsrb-cnn": ModelInfo(
                "gtsrb-cnn",
                "image",
                "Traffic signs (GTSRB CNN)",
                _gtsrb_classes(),
                {"channels": 3, "height": 32, "width": 32},
                eps_default=0.03,
                data_root=gtsrb_root,
                reason=gtsrb_reason,
                description="A compact CNN trained on the German Traffic Sign benchmark.",
                zoo=config.gtsrb_model,
            ),
            "sms-spam-cnn": ModelInfo(
                "sms-spam-cnn",
                "text",
                "SMS spam filter (word CNN)",
                ("ham", "spam"),
                None,
                data_root=sms_root,
                reason=sms_reason,
                description="A word-level CNN spam filter trained on the SMS Spam Collection.",
            ),
        }
        self._loaded: dict[str, Any] = {}
        self._samples: dict[str, Any] = {}
        self._locks = {name: threading.Lock() for name in self.models}
        self._sample_locks = {name: threading.Lock() for name in self.models}

    # -- lookup ----------------------------------------------------------------------------------
    def info(self, name: Any, field_name: str = "model") -> ModelInfo:
        if not isinstance(name, str) or name not in self.models:
            raise ApiError(
                404,
                "unknown_model",
                f"unknown model {name!r}; available: {', '.join(self.models)}",
                field_name,
            )
        info = self.models[name]
        if not info.available:
            raise ApiError(
                409, "model_unavailable", f"{name} is unavailable: {info.reason}", field_name
            )
        return info

    # -- models ------------------------------------------------------------------------------------
    def model(self, name: str):
        """The loaded model (trained and cached by the zoo on first use), frozen."""
        info = self.info(name)
        got = self._loaded.get(name)
        if got is not None:
            return got
        with self._locks[name]:
            got = self._loaded.get(name)
            if got is not None:
                return got
            import advex.zoo

            kwargs: dict[str, Any] = {"progress": False}
            if info.data_root is not None:
                kwargs["data_root"] = info.data_root
            model = advex.zoo.load(info.zoo or name, **kwargs)
            module = model.module if info.domain == "text" else model
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
            self._loaded[name] = model
            return model

    def loaded(self) -> list[str]:
        return sorted(self._loaded)

    def text_classifier(self, name: str, module=None):
        """A fresh :class:`~advex.models.text.TorchTextClassifier` over the shared (frozen)
        module and tokenizer of text model ``name`` (``module`` replaces the module, e.g. with
        a budget-checked one)."""
        from advex.models.text import TorchTextClassifier

        base = self.model(name)
        return TorchTextClassifier(
            base.module if module is None else module, base.tokenizer, base.class_names
        )

    # -- samples ---------------------------------------------------------------------------------
    def _dataset(self, name: str):
        info = self.info(name)
        got = self._samples.get(name)
        if got is not None:
            return got
        with self._sample_locks[name]:
            got = self._samples.get(name)
            if got is not None:
                return got
            from advex import data as D

            if info.digits:
                ds = D.mnist5k("test")
            elif name == "gtsrb-cnn":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = D.gtsrb(info.data_root, "test", classes=list(GTSRB_SAMPLE_CLASSES))
            else:
                ds = D.sms_spam(info.data_root, "test")
            order = self._order(ds, GTSRB_SAMPLE_CLASSES if name == "gtsrb-cnn" else None)
            self._samples[name] = (ds, order)
            return ds, order

    @staticmethod
    def _order(ds, classes=None) -> list[int]:
        """Sample ids in display order: round-robin over the classes (first of each class,
        then the second, ...; ``classes`` gives the class order), so a prefix shows them all."""
        y = ds.y if isinstance(ds.y, torch.Tensor) else torch.as_tensor(ds.y)
        present = set(y.tolist())
        order = [c for c in (classes or sorted(present)) if c in present]
        by_class = [(y == c).nonzero().flatten().tolist() for c in order]
        out: list[int] = []
        k = 0
        while len(out) < len(y) and k < max(len(v) for v in by_class):
            for v in by_class:
                if k < len(v):
                    out.append(v[k])
            k += 1
        return out

    def samples(self, name: str, n: int) -> list[tuple[int, int, Any]]:
        """``n`` samples ``(id, label, image (C, H, W) or text)`` in display order."""
        ds, order = self._dataset(name)
        out = []
        for i in order[:n]:
            item = ds.texts[i] if hasattr(ds, "texts") else ds.x[i]
            out.append((i, int(ds.y[i]), item))
        return out

    def sample(self, name: str, sample_id: Any, field_name: str = "input.sample"):
        """``(label, image (1, C, H, W) or text)`` of sample ``sample_id``."""
        if isinstance(sample_id, bool) or not isinstance(sample_id, int):
            raise ApiError(422, "invalid_sample", "the sample id must be an integer", field_name)
        ds, _ = self._dataset(name)
        n = len(ds.y)
        if not 0 <= sample_id < n:
            raise ApiError(
                404,
                "unknown_sample",
                f"no sample {sample_id} for {name}: ids are 0..{n - 1}",
                field_name,
            )
        if hasattr(ds, "texts"):
            return int(ds.y[sample_id]), ds.texts[sample_id]
        return int(ds.y[sample_id]), ds.x[sample_id : sample_id + 1].clone()
