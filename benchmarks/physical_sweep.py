"""One RP2 or universal-patch configuration on gtsrb-cnn, for tuning (the numbers quoted in
docs/physical.md under "Tuning"): fits with the given keyword arguments, then measures
targeted success on held-out images × held-out views next to the random-sticker control.

    OMP_NUM_THREADS=1 python benchmarks/physical_sweep.py rp2 '{"steps": 1500}'
    OMP_NUM_THREADS=1 python benchmarks/physical_sweep.py patch '{"lr": 0.03}'
    OMP_NUM_THREADS=1 python benchmarks/physical_sweep.py rp2 '{"mask": "square", "area": 0.1}'

rp2: the 390 training stop signs → the 270 test stop signs × 20 views (as benchmarks/physical.py).
patch: 2,000 random training images of all classes → 300 test images of all classes but the
target × 3 views. Prints one JSON line (fit CPU seconds: process CPU time).
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import torch

from advex import data as D
from advex import zoo
from advex.attacks.physical import RP2, AdversarialPatch
from advex.evaluate.physical import physical_evaluation
from advex.zoo.traffic import traffic_data_root

SPEED30 = 1


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("rp2", "patch"):
        raise SystemExit("usage: physical_sweep.py rp2|patch ['{json keyword arguments}']")
    mode = sys.argv[1]
    kw = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    root = traffic_data_root()
    model = zoo.load("gtsrb-cnn", data_root=root, progress=False)
    g = torch.Generator().manual_seed(0)
    classes = None if mode == "patch" else ["stop"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.GTSRBWarning)
        fit = D.gtsrb(root, "train", classes=classes)
    test = D.gtsrb(root, "test", classes=classes)
    if mode == "patch":
        fit = fit.subset(torch.randperm(len(fit), generator=g)[:2000])
        keep = (test.y != SPEED30).nonzero().squeeze(1)
        test = test.subset(keep[torch.randperm(len(keep), generator=g)[:300]])
        attack, n_views = AdversarialPatch(target=SPEED30, area=0.05, seed=0, **kw), 3
    else:
        mask = kw.pop("mask", "two-bars")  # e.g. {"mask": "square", "area": 0.1}
        attack, n_views = RP2(mask, target=SPEED30, seed=0, **kw), 20
    c0 = time.process_time()
    attack.fit(model, *fit.tensors())
    cpu = time.process_time() - c0
    ev = physical_evaluation(
        model,
        attack.sticker_,
        attack.threat,
        *test.tensors(),
        target=SPEED30,
        n_views=n_views,
        seed=1000,
    )
    print(
        json.dumps(
            {
                "mode": mode,
                "kwargs": json.loads(sys.argv[2]) if len(sys.argv) > 2 else {},
                "model_accuracy": model.card["accuracy"],
                "success": ev["success"],
                "control_success": ev["control_success"],
                "clean_view_accuracy": ev["clean_view_accuracy"],
                "fit_success_on_training_views": attack.fit_success_,
                "fit_cpu_s": round(cpu, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
