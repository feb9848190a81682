"""Train one ``gtsrb-cnn`` recipe variant and report its accuracy on the full official GTSRB
test set, its training cost (process CPU seconds and wall seconds) and the load average — the
recipe search behind the numbers in docs/physical.md.

    OMP_NUM_THREADS=1 python benchmarks/gtsrb_recipes.py '{"epochs": 12}' --save DIR

The JSON overrides keys of ``advex.zoo.traffic.GTSRB_RECIPE`` (``augment`` and ``arch_kwargs``
are merged key by key). ``--save DIR`` stores the model and its card (loadable with
``advex.zoo.load_dir``); ``--base small`` starts from the test model's recipe instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

from advex.zoo import load_dir, save
from advex.zoo.traffic import (
    GTSRB_RECIPE,
    GTSRB_SMALL_RECIPE,
    traffic_data_root,
    train_traffic,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="?", default="{}")
    ap.add_argument("--base", choices=["full", "small"], default="full")
    ap.add_argument("--save", default=None)
    ap.add_argument("--out", default=None, help="append the result as one JSON line")
    args = ap.parse_args()
    recipe = copy.deepcopy(GTSRB_RECIPE if args.base == "full" else GTSRB_SMALL_RECIPE)
    for k, v in json.loads(args.overrides).items():
        if isinstance(v, dict) and isinstance(recipe.get(k), dict):
            recipe[k].update(v)
        else:
            recipe[k] = v
    load0 = os.getloadavg()
    model, card = train_traffic("gtsrb-cnn", recipe, traffic_data_root(), progress=False)
    row = {
        "recipe": recipe,
        "accuracy": card["accuracy"],
        "train_cpu_s": card["train_cpu_s"],
        "train_time_s": card["train_time_s"],
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
    }
    print(json.dumps(row))
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    if args.save:
        save(model, args.save, card, recipe["arch"], recipe["arch_kwargs"])
        load_dir(Path(args.save))


if __name__ == "__main__":
    main()
