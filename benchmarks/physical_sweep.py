"""One RP2 or universal-patch configuration on gtsrb-cnn, for tuning (the numbers quoted in
docs/physical.md under "Tuning"): fits with the given keyword arguments, then measures
targeted success on held-out images × held-out views next to the random-sticker control.

    OMP_NUM_THREADS=1 python benchmarks/physical_sweep.py rp2 '{"steps": 1500}'
    OMP_NUM_THREADS=1 python benchmarks/physical_sweep.py patch '{"lr": 0.03}'
    OMP_NUM_THREADS=1 python benchmarks/physical_sweep.py rp2 '{"mask": "square", "area": 0.1}'
    OMP_NUM_THREADS=1 python benchmarks/physical_sweep.py patch '{"loss": "margin"}' \
        '{"patch_region": 0.8}' --out results.json     # several configurations, one data load

rp2: the 390 training stop signs → the 270 test stop signs × 20 views (as benchmarks/physical.py).
patch: 2,000 random training images of all classes → 300 test images of all classes but the
target × 3 views. Prints one JSON line (fit CPU seconds: process CPU time).

Patch keys besides AdversarialPatch's own arguments: ``train_widen`` (fit under viewing
conditions widened by this factor — Athalye et al.'s wider training distribution; the
evaluation views stay the default held-out ones), ``n_fit`` (2000), ``n_eval`` (300),
``n_views`` (3), ``model`` (gtsrb-cnn).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

import torch

from advex import data as D
from advex import zoo
from advex._io import write_json
from advex.attacks.physical import RP2, AdversarialPatch
from advex.evaluate.physical import physical_evaluation
from advex.threats.patch import ViewDistribution
from advex.zoo.traffic import traffic_data_root

SPEED30 = 1


def _mean_area(threat) -> float:
    """The patch's mean area fraction over the placement scales (uniform scale s: E[s²])."""
    lo, hi = threat.patch_scale
    es2 = (hi**3 - lo**3) / (3 * (hi - lo)) if hi > lo else lo**2
    h, w = threat.size
    return round(threat.patch_side**2 * es2 / (h * w), 5)


def _one(mode, kw, data, models, root) -> dict:
    given = dict(kw)
    kw = dict(kw)
    opts = {k: kw.pop(k) for k in ("train_widen", "n_fit", "n_eval", "n_views", "model") if k in kw}
    name = opts.get("model", "gtsrb-cnn")
    if name not in models:
        models[name] = zoo.load(name, data_root=root, progress=False)
    model = models[name]
    fit, test = data
    g = torch.Generator().manual_seed(0)
    if mode == "patch":
        fit = fit.subset(torch.randperm(len(fit), generator=g)[: opts.get("n_fit", 2000)])
        keep = (test.y != SPEED30).nonzero().squeeze(1)
        pick = torch.randperm(len(keep), generator=g)[: opts.get("n_eval", 300)]
        test = test.subset(keep[pick])
        if "train_widen" in opts:  # seed 0 is the fitting seed; held_out() needs another first
            kw["views"] = ViewDistribution(seed=1).held_out(0, float(opts["train_widen"]))
        kw.setdefault("area", 0.05)
        attack, n_views = AdversarialPatch(target=SPEED30, seed=0, **kw), opts.get("n_views", 3)
    else:
        mask = kw.pop("mask", "two-bars")  # e.g. {"mask": "square", "area": 0.1}
        attack, n_views = RP2(mask, target=SPEED30, seed=0, **kw), 20
    c0, t0 = time.process_time(), time.perf_counter()
    attack.fit(model, *fit.tensors())
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    ev = physical_evaluation(
        model,
        attack.sticker_,
        attack.threat,
        *test.tensors(),
        target=SPEED30,
        n_views=n_views,
        seed=1000,
        views=ViewDistribution().held_out(1000),  # the default held-out views, whatever fitted
    )
    row = {
        "mode": mode,
        "kwargs": given,
        "model": name,
        "model_accuracy": model.card["accuracy"],
        "success": ev["success"],
        "success_ci95": ev["rates"]["success"]["ci95"],
        "control_success": ev["control_success"],
        "clean_view_accuracy": ev["clean_view_accuracy"],
        "n_images": ev["n_images"],
        "n_views": ev["n_views"],
        "fit_success_on_training_views": attack.fit_success_,
        "fit_cpu_s": round(cpu, 1),
        "fit_wall_s": round(wall, 1),
    }
    if mode == "patch":
        digital = physical_evaluation(
            model,
            attack.sticker_,
            attack.threat,
            *test.tensors(),
            target=SPEED30,
            n_views=n_views,
            seed=1000,
            views=ViewDistribution.identity(),  # Brown et al.'s digital setting: placement only
        )
        row.update(
            digital_success=digital["success"],
            digital_control_success=digital["control_success"],
            patch_side_px=attack.threat.patch_side,
            mean_area=_mean_area(attack.threat),
            placement=attack.threat.to_dict(),
            restart_scores=attack.restart_scores_,
        )
    return row


def main() -> None:
    args = sys.argv[1:]
    out = None
    if "--out" in args:
        i = args.index("--out")
        out = args[i + 1]
        del args[i : i + 2]
    if not args or args[0] not in ("rp2", "patch"):
        raise SystemExit(
            "usage: physical_sweep.py rp2|patch ['{json keyword arguments}' ...] [--out PATH]"
        )
    mode = args[0]
    configs = [json.loads(a) for a in args[1:]] or [{}]
    root = traffic_data_root()
    classes = None if mode == "patch" else ["stop"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.GTSRBWarning)
        fit = D.gtsrb(root, "train", classes=classes)
    test = D.gtsrb(root, "test", classes=classes)
    models: dict = {}
    rows = []
    for kw in configs:  # one data load for every configuration
        rows.append(_one(mode, kw, (fit, test), models, root))
        print(json.dumps(rows[-1]), flush=True)
        if out:
            write_json(out, {"machine": f"load average {os.getloadavg()}", "rows": rows})


if __name__ == "__main__":
    main()
