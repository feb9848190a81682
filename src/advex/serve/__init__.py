"""``advex serve``: the adversarial-examples playground, a JSON API over advex and a static page.

Needs the ``web`` extra (``pip install -e ".[web]"``: FastAPI, uvicorn). FastAPI is imported
only when the app is built, so ``import advex.serve`` stays light.

>>> from advex.serve import ServeConfig, create_app
>>> app = create_app(ServeConfig(gtsrb_root="../shared/datasets/gtsrb-32x32"))
"""

from __future__ import annotations

from .config import LOOPBACK_HOSTS, ServeConfig

__all__ = ["ServeConfig", "create_app", "LOOPBACK_HOSTS", "web_missing"]


def web_missing() -> str | None:
    """None when the ``web`` extra is installed, else a message saying what to install."""
    missing = []
    for mod in ("fastapi", "uvicorn"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if not missing:
        return None
    return (
        f"advex serve needs the 'web' extra ({', '.join(missing)} not installed): "
        'pip install -e ".[web]"  (or pip install "advex[web]")'
    )


def create_app(config: ServeConfig | None = None):
    """The FastAPI app of the playground (see :mod:`advex.serve.app`)."""
    msg = web_missing()
    if msg:
        raise ImportError(msg)
    from .app import create_app as _create

    return _create(config)
