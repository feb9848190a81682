"""The ``advex`` command line: ``advex demo | attack | evaluate | train | list | physical |
generator | poison | scan | serve``.

A thin layer over the library: each command lives in its own module (:mod:`.demo`,
:mod:`.attack`, :mod:`.evaluate`, :mod:`.train`, :mod:`.list`); what they share (attacks by
name, model and data loading, the common options, output folders) is in :mod:`.common`.
"""

from __future__ import annotations

import click

from .attack import attack
from .common import (
    available_attacks,
    build_attack,
    find_attack,
    load_data,
    load_model,
    parse_params,
    version,
)
from .demo import demo
from .evaluate import evaluate
from .generator import generator
from .list import list_cmd
from .physical import physical
from .poison import poison, scan
from .serve import serve
from .train import train

__all__ = [
    "main",
    "available_attacks",
    "find_attack",
    "build_attack",
    "load_model",
    "load_data",
    "parse_params",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=version(), prog_name="advex")
def main() -> None:
    """advex: create adversarial examples, measure robustness, harden models.

    Start with `advex demo`: it trains a small MNIST model on first use (about a minute on a
    laptop CPU), attacks 200 test digits with FGSM, PGD and a targeted PGD, prints a table and
    writes results.json and figures to ./advex-demo/.
    """


for _command in (demo, attack, evaluate, train, list_cmd, physical, generator, poison, scan, serve):
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main()
