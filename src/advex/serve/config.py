"""The server's settings: where the data is, and every limit (body size, image size, text
length, steps, concurrent jobs, time budget). Tests build small ones; ``advex serve`` builds
one from its options."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServeConfig", "LOOPBACK_HOSTS"]

#: Host header values accepted when the server is not exposed (DNS-rebinding guard)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass
class ServeConfig:
    """Settings of :func:`advex.serve.create_app`.

    Args:
        gtsrb_root: GTSRB folder (``GTSRB/Final_Training`` + ``Final_Test``); without it
            ``gtsrb-cnn`` and the stop-sign panel are listed as unavailable.
        gtsrb_model: the zoo model behind ``gtsrb-cnn`` (the API name stays ``gtsrb-cnn``);
            the tests use the cheaper ``gtsrb-cnn-small``.
        sms_root: folder holding ``SMSSpamCollection`` (default: the usual search of
            :func:`advex.data.text.sms_spam_root`); without it ``sms-spam-cnn`` is unavailable.
        max_body_bytes: largest request body (413 above).
        max_image_side: largest side of a decoded image, checked from the header before any
            pixel is decoded (decompression-bomb guard).
        max_text_chars: longest text. max_steps: most steps of an iterative attack.
        max_curve_points: most ε values in one ``/api/curve`` request.
        max_samples: most samples in one ``/api/samples`` answer.
        max_eval: most test samples attacked by one ``/api/evaluate`` request.
        max_jobs: attack jobs run at the same time; max_queue: jobs waiting for a slot (429
            ``busy`` beyond). queue_timeout_s: longest wait for a slot.
        time_budget_s: longest run of one attack job (503 ``time_budget`` beyond: the attack
            is stopped at its next model call).
        torch_threads: ``torch.set_num_threads`` at start (None: leave as is).
        allowed_hosts: Host header values accepted (None: any; ``advex serve --expose``).
        physical_steps, physical_fit_images: size of the RP2 sticker fitted for
            ``/api/physical`` (cached under ``cache_dir/serve``).
        cache_dir: advex cache (default :func:`advex.zoo.cache_dir`).
        static_dir: the page's files (default: the package's ``static/``).
        preload: load (and train on first use) every available model when the app starts.
    """

    gtsrb_root: str | os.PathLike | None = None
    gtsrb_model: str = "gtsrb-cnn"
    sms_root: str | os.PathLike | None = None
    max_body_bytes: int = 2_000_000
    max_image_side: int = 1024
    max_text_chars: int = 2000
    max_steps: int = 200
    max_curve_points: int = 16
    max_samples: int = 48
    max_eval: int = 100
    max_jobs: int = 2
    max_queue: int = 2
    queue_timeout_s: float = 30.0
    time_budget_s: float = 20.0
    torch_threads: int | None = None
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS
    physical_steps: int = 300
    physical_fit_images: int = 256
    cache_dir: str | os.PathLike | None = None
    static_dir: str | os.PathLike | None = None
    preload: bool = False

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_image_side",
            "max_text_chars",
            "max_steps",
            "max_curve_points",
            "max_samples",
            "max_eval",
            "max_jobs",
            "physical_steps",
            "physical_fit_images",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ServeConfig.{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.max_queue, bool) or not isinstance(self.max_queue, int):
            raise ValueError(
                f"ServeConfig.max_queue must be an integer >= 0, got {self.max_queue!r}"
            )
        if self.max_queue < 0:
            raise ValueError(f"ServeConfig.max_queue must be >= 0, got {self.max_queue}")
        for name in ("queue_timeout_s", "time_budget_s"):
            v = float(getattr(self, name))
            if not v > 0:
                raise ValueError(f"ServeConfig.{name} must be > 0, got {v}")
        if self.allowed_hosts is not None:
            self.allowed_hosts = tuple(str(h).lower() for h in self.allowed_hosts)

    @property
    def static_path(self) -> Path:
        if self.static_dir is not None:
            return Path(self.static_dir)
        return Path(__file__).resolve().parent / "static"

    @property
    def cache_path(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        from advex.zoo import cache_dir

        return cache_dir()
