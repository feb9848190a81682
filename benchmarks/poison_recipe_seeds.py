"""How the MNIST victim recipe and its seed move BadNets and STRIP (the victim only).

    OMP_NUM_THREADS=1 python benchmarks/poison_recipe_seeds.py --runs 4:plain:1,4:plain:2,8:plain:0
    OMP_NUM_THREADS=1 python benchmarks/poison_recipe_seeds.py --runs 6:cl:0,6:cl:1,6:cl:2

Each run ``EPOCHS:PATH:SEED`` trains one victim on full MNIST poisoned by BadNets (1 %, the 4x4
checkerboard bottom right, target 0, the attack's seed 0) with ``VictimRecipe(epochs=EPOCHS,
seed=SEED, channels_last=PATH == "cl")`` (``plain``: the :func:`advex.zoo.train` path, the
MNIST recipe before 2026-11-30), then measures clean accuracy, attack success and
``strip_evaluate`` (N = 100, ``frr=0.01``, ``n=1000``: the benchmark's STRIP stage) and the
miss rate at exactly 1 % false rejections on the ROC curve. No clean reference is trained, so
there is no accuracy drop here (``benchmarks/poison.py --seed`` gives the whole pair); the
victim is normalised with the poisoned training set's mean / std (``train_victim``'s default),
where ``measure`` uses the clean set's, so a run here is not bit-identical to the benchmark's
victim of the same recipe and seed. Each run is written into ``--out`` (under ``runs``, by its
name, next to the runs already there) as soon as it ends.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))

from advex import data as D  # noqa: E402
from advex._io import write_json  # noqa: E402
from advex.poison import (  # noqa: E402
    BadNets,
    Trigger,
    VictimRecipe,
    accuracy,
    attack_success_rate,
    train_victim,
)
from advex.poison import defenses as P  # noqa: E402


def parse_run(spec: str) -> tuple[int, bool, int]:
    try:
        epochs, path, seed = spec.split(":")
        if path not in ("plain", "cl"):
            raise ValueError
        return int(epochs), path == "cl", int(seed)
    except ValueError:
        raise SystemExit(f"--runs: {spec!r} is not EPOCHS:plain|cl:SEED") from None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="comma-separated EPOCHS:plain|cl:SEED")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "mnist"))
    ap.add_argument("--out", default=str(RESULTS / "2026-11-30-poison-recipe-seeds.json"))
    args = ap.parse_args()
    runs = [parse_run(r) for r in args.runs.split(",") if r.strip()]
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    train, test = D.load(f"mnist:{args.data}", "train"), D.load(f"mnist:{args.data}", "test")
    attack = BadNets(0.01, 0, trigger=Trigger("checkerboard", 4, "bottom-right"))
    poisoned = attack(train)
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {"benchmark": "poison-recipe-seeds"}
    doc.setdefault("runs", {})
    for epochs, cl, seed in runs:
        name = f"{'cl' if cl else 'plain'}-{epochs}ep-seed{seed}"
        recipe = VictimRecipe(epochs=epochs, seed=seed, channels_last=cl)
        c0 = time.process_time()
        model = train_victim(poisoned.dataset, recipe)
        train_cpu = time.process_time() - c0
        res = {
            "run": name,
            "recipe": recipe.__dict__,
            "train_cpu_s": round(train_cpu, 1),
            "clean_accuracy": accuracy(model, test),
            "attack_success_rate": attack_success_rate(model, attack, test),
        }
        c1 = time.process_time()
        s = P.strip_evaluate(model, attack, test, frr=0.01, n_overlays=100, n=1000)
        res["strip"] = {
            **s.to_dict(),
            "roc_miss_rate_at_1pct_frr": s.miss_rate_at(0.01),
            "cpu_s": round(time.process_time() - c1, 1),
        }
        print(name, json.dumps(res, default=str), flush=True)
        doc["runs"][name] = res
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
