"""Where the universal patch's fit spends its time: cProfile (process CPU time) of an
``AdversarialPatch`` fit on the benchmark's fitting data (2,000 random training images of all
classes), after a warm-up fit — the profile behind the "fit time against ART" notes in
docs/physical.md.

    OMP_NUM_THREADS=1 python benchmarks/physical_profile.py [MODEL] [--steps 100]

Prints the 35 most expensive calls by cumulative and the 25 by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
import warnings

import torch

from advex import data as D
from advex import zoo
from advex.attacks.physical import AdversarialPatch
from advex.zoo.traffic import traffic_data_root

SPEED30 = 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="gtsrb-cnn")
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = traffic_data_root()
    model = zoo.load(args.model, data_root=root, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.GTSRBWarning)
        train = D.gtsrb(root, "train")
    g = torch.Generator().manual_seed(0)  # the benchmark's draw of 2,000 fitting images
    train = train.subset(torch.randperm(len(train), generator=g)[:2000])
    AdversarialPatch(target=SPEED30, area=0.05, steps=10, batch_size=32, seed=0).fit(
        model, *train.tensors()
    )  # warm-up
    attack = AdversarialPatch(target=SPEED30, area=0.05, steps=args.steps, batch_size=32, seed=0)
    prof = cProfile.Profile(timer=time.process_time)
    prof.enable()
    attack.fit(model, *train.tensors())
    prof.disable()
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative").print_stats(35)
    stats.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
