"""STRIP side by side: advex.poison STRIP and ART's STRIP (softmax-wrapped model) on the same
mnist5k BadNets victim and inputs (the numbers of docs/poisoning.md).

    python benchmarks/poison_strip_compare.py
"""

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
warnings.filterwarnings("ignore")
from advex import data as D  # noqa: E402
from advex.poison import (  # noqa: E402
    BadNets,
    VictimRecipe,
    accuracy,
    attack_success_rate,
    train_victim,
    victim_arch_kwargs,
)
from advex.poison import defenses as P  # noqa: E402

torch.set_num_threads(1)
tr, te = D.mnist5k("train"), D.mnist5k("test")
recipe = VictimRecipe(epochs=2, seed=1)
atk = BadNets(0.03, 0)
p, idx = atk(tr)
m = train_victim(p, recipe, arch_kwargs=victim_arch_kwargs(recipe, tr))
print("asr", attack_success_rate(m, atk, te), "acc", accuracy(m, te), flush=True)
s = P.strip_evaluate(m, atk, te, frr=0.01, n_overlays=20, n=300)
print("advex", s.to_dict(), flush=True)
from art.defences.transformer.poisoning import STRIP as ArtSTRIP  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402

g = torch.Generator().manual_seed(0)
perm = torch.randperm(len(te), generator=g)
third = len(te) // 3
cal = te.x[perm[third : third + 300]].numpy()
ev = perm[2 * third : 2 * third + 300]
xe, ye = te.x[ev], te.y[ev]
keep = ye != 0
xt = atk.apply_trigger(xe[keep]).numpy()
np.random.seed(0)
probs = torch.nn.Sequential(m, torch.nn.Softmax(dim=1)).eval()
clf = PyTorchClassifier(
    model=probs,
    loss=torch.nn.CrossEntropyLoss(),
    input_shape=(1, 28, 28),
    nb_classes=10,
    clip_values=(0.0, 1.0),
)
t = time.time()
d = ArtSTRIP(clf)(num_samples=20, false_acceptance_rate=0.01)
d.mitigate(cal)
pc = d.predict(xe.numpy())
pt = d.predict(xt)
r = {
    "false_rejection_rate": float(np.mean(np.all(pc == 0, axis=1))),
    "miss_rate": 1 - float(np.mean(np.all(pt == 0, axis=1))),
    "n_clean": len(xe),
    "n_triggered": len(xt),
    "wall_s": time.time() - t,
}
print("ART", r, flush=True)
json.dump(
    {"advex": s.to_dict(), "ART": r},
    open(ROOT / "benchmarks" / "results" / "2026-11-29-poison-strip-art.json", "w"),
)
