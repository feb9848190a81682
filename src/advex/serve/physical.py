"""The stop-sign panel: an RP2 sticker (Eykholt et al. 2018) that turns ``stop`` into ``speed
limit (30km/h)`` for ``gtsrb-cnn``, fitted once (a few hundred Adam steps over stop signs of
the GTSRB training set under random viewing conditions, EOT) and cached as safetensors under
the advex cache, then shown on a held-out stop sign under held-out viewing conditions.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import warnings
from pathlib import Path

import torch

from .limits import ApiError, to_data_url
from .runner import top_k

__all__ = ["StickerPanel", "SOURCE", "TARGET"]

SOURCE = 14  # GTSRB "stop"
TARGET = 1  # GTSRB "speed limit (30km/h)"
MASK = "two-bars"


class StickerPanel:
    """Fits (or reads from the cache) the sticker once; :meth:`views` shows it."""

    def __init__(self, config, catalog) -> None:
        self.config = config
        self.catalog = catalog
        self._lock = threading.Lock()
        self._state: dict | None = None

    def recipe(self) -> dict:
        return {
            "attack": "rp2",
            "mask": MASK,
            "source": SOURCE,
            "target": TARGET,
            "steps": self.config.physical_steps,
            "batch_size": 32,
            "lr": 0.1,
            "fit_images": self.config.physical_fit_images,
            "seed": 0,
        }

    def _path(self, model_card: dict) -> Path:
        key = dict(self.recipe(), model=model_card.get("recipe_id", "?"))
        fp = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.config.cache_path / "serve" / f"rp2-stop-to-30-{fp}.safetensors"

    def ready(self) -> bool:
        return self._state is not None

    def state(self) -> dict:
        """Sticker, mask, threat, display image, model (fitting on first call)."""
        if self._state is not None:
            return self._state
        with self._lock:
            if self._state is None:
                self._state = self._prepare()
            return self._state

    def _prepare(self) -> dict:
        from safetensors import safe_open
        from safetensors.torch import save_file

        from advex import data as D
        from advex._io import atomic_write
        from advex.attacks.physical import RP2
        from advex.threats.patch import PatchThreat

        info = self.catalog.info("gtsrb-cnn")
        model = self.catalog.model("gtsrb-cnn")
        threat = PatchThreat(MASK, size=32)
        path = self._path(getattr(model, "card", {}))
        meta: dict = {}
        sticker = None
        if path.is_file():
            try:
                with safe_open(str(path), framework="pt") as f:
                    sticker = f.get_tensor("sticker")
                    meta = dict(f.metadata() or {})
                threat.check_sticker(sticker)
            except Exception:  # a corrupt cache file is refitted
                sticker = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if sticker is None:
                fit = D.gtsrb(info.data_root, "train", classes=[SOURCE])
                n = min(len(fit), self.config.physical_fit_images)
                g = torch.Generator().manual_seed(0)
                idx = torch.randperm(len(fit), generator=g)[:n]
                r = self.recipe()
                rp2 = RP2(
                    MASK,
                    target=TARGET,
                    size=32,
                    steps=r["steps"],
                    batch_size=r["batch_size"],
                    lr=r["lr"],
                    seed=r["seed"],
                )
                t0 = time.perf_counter()
                rp2.fit(model, (fit.x[idx], fit.y[idx]))
                sticker = rp2.sticker_.detach().float().contiguous()
                meta = {
                    "recipe": json.dumps(r, sort_keys=True),
                    "fit_seconds": f"{time.perf_counter() - t0:.2f}",
                    "fit_success": f"{rp2.fit_success_:.4f}",
                    "fit_images": str(n),
                }
                path.parent.mkdir(parents=True, exist_ok=True)
                tensors = {"sticker": sticker, "mask": threat.mask.float().contiguous()}
                atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
            test = D.gtsrb(info.data_root, "test", classes=[SOURCE])
        x = test.x[:32]
        with torch.no_grad():
            p = torch.softmax(model(x), 1)[:, SOURCE]
        shown = x[int(p.argmax())][None].clone()  # the clearest held-out stop sign
        return {
            "model": model,
            "classes": info.classes,
            "threat": threat,
            "sticker": sticker,
            "image": shown,
            "meta": meta,
            "path": str(path),
        }

    def views(self, n: int, seed: int) -> dict:
        """``n`` held-out viewing conditions (drawn from ``seed``) of the clean and the
        stickered stop sign, with the model's top-5 on each."""
        s = self.state()
        model, threat, sticker, x = s["model"], s["threat"], s["sticker"], s["image"]
        held = threat.views.held_out(1000 + seed) if seed + 1000 != threat.views.seed else None
        if held is None:  # pragma: no cover - seed 1000 + seed never equals the fit seed 0
            raise ApiError(422, "invalid_field", "choose another seed", "seed")
        params = held.sample(n, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            stickered = threat.apply(x, sticker)
            clean_v = held.apply(x.expand(n, -1, -1, -1), params)
            stick_v = held.apply(stickered.expand(n, -1, -1, -1), params)
            p_clean = torch.softmax(model(clean_v), 1)
            p_stick = torch.softmax(model(stick_v), 1)
        classes = s["classes"]
        deg = 180.0 / math.pi
        out = []
        for i in range(n):
            out.append(
                {
                    "condition": {
                        "angle": round(float(params.yaw[i]) * deg, 2),
                        "scale": round(float(params.scale[i]), 3),
                        "brightness": round(float(params.brightness[i]), 3),
                        "rotation": round(float(params.rotation[i]) * deg, 2),
                        "pitch": round(float(params.pitch[i]) * deg, 2),
                    },
                    "clean": {"image": to_data_url(clean_v[i]), "top": top_k(p_clean[i], classes)},
                    "stickered": {
                        "image": to_data_url(stick_v[i]),
                        "top": top_k(p_stick[i], classes),
                    },
                }
            )
        mask = threat.mask.float()
        rgba = torch.cat([sticker * mask, mask], 0)  # transparent outside the sticker
        fooled = sum(int(v["stickered"]["top"][0]["label"] == TARGET) for v in out)
        return {
            "available": True,
            "reason": None,
            "source": classes[SOURCE],
            "target": classes[TARGET],
            "sticker": {
                "image": to_data_url(rgba),
                "mask": to_data_url(mask),
                "on_sign": to_data_url(stickered),
            },
            "views": out,
            "fooled": fooled,
            "fit": {
                "seconds": float(s["meta"].get("fit_seconds", "nan")),
                "success_on_fit_views": float(s["meta"].get("fit_success", "nan")),
                "images": int(s["meta"].get("fit_images", "0") or 0),
                "steps": self.config.physical_steps,
            },
        }
