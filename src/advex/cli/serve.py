"""``advex serve``: the adversarial-examples playground (a JSON API and a single page) on a
local port. Needs the ``web`` extra (``pip install -e ".[web]"``)."""

from __future__ import annotations

import os
import sys

import click

__all__ = ["serve", "check_bind"]

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def check_bind(host: str, expose: bool) -> str | None:
    """Refuse a non-loopback ``host`` without ``expose``; returns the warning to print when
    exposed (None on loopback)."""
    h = host.strip().lower()
    if h in _LOOPBACK or h.startswith("127."):
        return None
    if not expose:
        raise click.UsageError(
            f"--host {host} would serve the playground to other machines; it runs attacks on "
            "request and has no authentication. Add --expose if you mean it (default: 127.0.0.1)."
        )
    return (
        f"WARNING: serving on {host}: anyone who can reach this port can run attacks on this "
        "machine (no authentication; request, job and time limits still apply)."
    )


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--gtsrb",
    "gtsrb",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="GTSRB folder (GTSRB/Final_Training + Final_Test): traffic signs and the stop-sign "
    "sticker. Without it that model is listed as unavailable.",
)
@click.option(
    "--sms",
    "sms",
    type=click.Path(exists=True),
    default=None,
    help="Folder holding SMSSpamCollection (default: $ADVEX_DATASETS or ../shared/datasets).",
)
@click.option(
    "--expose",
    is_flag=True,
    help="Allow a non-loopback --host (e.g. 0.0.0.0): the page and API become reachable "
    "from other machines.",
)
@click.option(
    "--max-jobs",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Attack jobs run at the same time.",
)
@click.option(
    "--max-queue",
    default=2,
    show_default=True,
    type=click.IntRange(0, 1000),
    help="Attack jobs waiting for a slot; beyond, requests get 429 busy.",
)
@click.option(
    "--time-budget",
    default=20.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="Seconds one attack request may run.",
)
@click.option(
    "--threads",
    default=None,
    type=click.IntRange(1, 256),
    help="torch threads (default: CPU cores / max jobs).",
)
@click.option("--no-preload", is_flag=True, help="Load models on first use, not at start.")
def serve(host, port, gtsrb, sms, expose, max_jobs, max_queue, time_budget, threads, no_preload):
    """Start the playground at http://127.0.0.1:8000: pick a model and an input, drag ε and
    watch the prediction flip.

    Binds to 127.0.0.1 unless --host and --expose say otherwise. At start it loads every
    available model (training the zoo ones not cached yet, once) and fits the stop-sign
    sticker when --gtsrb is given (cached too).
    """
    from advex.serve import web_missing

    msg = web_missing()
    if msg:
        raise click.ClickException(msg)
    warning = check_bind(host, expose)
    if warning:
        click.secho(warning, fg="yellow", err=True)
    import uvicorn

    from advex.serve import LOOPBACK_HOSTS, ServeConfig, create_app

    cores = os.cpu_count() or 1
    config = ServeConfig(
        gtsrb_root=gtsrb,
        sms_root=sms,
        max_jobs=max_jobs,
        max_queue=max_queue,
        time_budget_s=time_budget,
        torch_threads=threads or max(1, cores // max_jobs),
        allowed_hosts=None if warning else LOOPBACK_HOSTS,
        preload=not no_preload,
    )
    if config.preload:
        click.echo("advex serve: loading models (the first start trains them once)...", err=True)
    app = create_app(config)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"advex playground: http://{shown}:{port}/  (Ctrl+C to stop)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    sys.exit(0)
