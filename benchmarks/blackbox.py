"""Decision-based (label-only) attacks: advex against Foolbox 3.3.4 and ART, one run.

Part 1, untargeted L2 HopSkipJump on the zoo's MNIST ``mnist-smallcnn``: the median L2 distance
of the adversarial examples at each query budget (default 1k / 5k / 10k queries per point) and
the wall time of the whole run, for advex's :class:`~advex.attacks.HopSkipJump`, Foolbox's
``HopSkipJumpAttack`` and ART's ``HopSkipJump``, on the same points.

Queries are counted at the model, by a wrapper around the CNN that every tool calls:

- for Foolbox (which attacks the batch in lockstep: every model call holds one row per point,
  in order) and ART (which attacks one point at a time: the script hands it one point per
  ``generate`` call), the wrapper knows which point each row belongs to; it counts rows per
  point, stops the attack (an exception) at the call that would exceed the budget, and records
  the best adversarial distance among all the rows it has answered for that point. That is
  generous to the peers: any queried adversarial row counts, not only what the attack returns;
- for advex the wrapper counts the rows (the total must equal the sum of ``result.queries``,
  checked) and the per-point curve is advex's own :class:`~advex.attacks.decision.QueryCurve`
  (the attack's boundary points, not every queried row).

Part 2, L∞ ε = 0.3 against a label-only (one-hot output) wrapper of the same CNN: robust
accuracy of :class:`~advex.attacks.RayS` and of L∞ HopSkipJump within 10k queries per point.

The model's forward passes dominate every run; the script also reports the time spent inside
the model (wall and CPU), so the attack's own overhead (total − model) is visible, and the
1-minute load average at the start and end of each tool. On a shared, loaded machine wall times
follow the load: compare CPU times, and wall times only within one run.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/blackbox.py   # 100 points, 10k queries
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/blackbox.py --points 20 --linf-points 0
    PYTHONPATH=src python benchmarks/blackbox.py --quick   # smoke test (seconds)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

RESULT = Path(__file__).resolve().parent / "results" / "2026-11-29-blackbox.json"


class OverBudget(Exception):
    """Raised by :class:`Tracker` at the call that would exceed a point's budget."""


class Tracker(nn.Module):
    """The CNN behind a query counter that knows which point each row belongs to.

    ``point`` set: every row belongs to that point (ART, one point per ``generate``). Unset:
    a call of ``len(x0)`` rows holds row ``i`` for point ``i`` (Foolbox's lockstep batches).
    With ``x0 = None`` it only counts rows (advex)."""

    def __init__(self, model: nn.Module, x0=None, y0=None, budget: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.x0, self.y0, self.budget = x0, y0, budget
        self.point: int | None = None
        self.rows = 0
        self.model_time = 0.0
        self.model_cpu = 0.0
        n = 0 if x0 is None else x0.shape[0]
        self.queries = np.zeros(n, dtype=np.int64)
        self.events: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        self.best = np.full(n, np.inf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()  # ART hands float64 arrays through
        m = int(x.shape[0])
        if self.x0 is not None:
            if self.point is not None:
                ids = torch.full((m,), self.point, dtype=torch.long)
            elif m == self.x0.shape[0]:
                ids = torch.arange(m)
            else:
                raise RuntimeError(f"a call of {m} rows cannot be mapped to {len(self.x0)} points")
            need = np.bincount(ids.numpy(), minlength=len(self.queries))
            if self.budget is not None and np.any(self.queries + need > self.budget):
                raise OverBudget
        t, c = time.perf_counter(), time.process_time()
        with torch.no_grad():
            out = self.model(x)
        self.model_time += time.perf_counter() - t
        self.model_cpu += time.process_time() - c
        self.rows += m
        if self.x0 is not None:
            adv = (out.argmax(1) != self.y0[ids]).numpy()
            dist = (x.detach() - self.x0[ids]).flatten(1).norm(dim=1).numpy()
            for r in range(m):  # in call order: the query number of each row
                i = int(ids[r])
                self.queries[i] += 1
                if adv[r] and dist[r] < self.best[i]:
                    self.best[i] = dist[r]
                    self.events[i].append((int(self.queries[i]), float(dist[r])))
        return out

    def distance_at(self, budget: int) -> np.ndarray:
        out = np.full(len(self.events), np.inf)
        for i, ev in enumerate(self.events):
            ok = [d for q, d in ev if q <= budget]
            if ok:
                out[i] = min(ok)
        return out


class Clock:
    """Wall and CPU time (this process) of a block, with the 1-minute load average at its
    start and end (the machine may be shared: CPU time is what the run itself cost)."""

    def __enter__(self):
        self.load0 = os.getloadavg()[0]
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w
        self.cpu = time.process_time() - self.c
        self.load = [round(self.load0, 2), round(os.getloadavg()[0], 2)]
        return False

    def fields(self, tracker) -> dict:
        return {
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "model_s": tracker.model_time,
            "model_cpu_s": tracker.model_cpu,
            "loadavg_1min_start_end": self.load,
        }


def _median(a) -> float:
    return float(np.median(np.asarray(a, dtype=np.float64)))


def run_advex(cnn, x, y, budgets):
    from advex.attacks import HopSkipJump
    from advex.attacks.decision import QueryCurve
    from advex.models import LabelBlackBox

    tracker = Tracker(cnn)
    box = LabelBlackBox(lambda t: tracker(t).argmax(1), num_classes=10)
    curve = QueryCurve()
    with Clock() as clock:
        r = HopSkipJump(norm="l2", max_queries=max(budgets), curve=curve)(box, x, y)
    assert tracker.rows == int(r.queries.sum()) == box.queries, "query counts disagree"
    assert int(r.queries.max()) <= max(budgets)
    grid = _grid(max(budgets))
    return {
        "median_l2": {str(b): curve.median_at([b])[0] for b in budgets},
        "curve": {"queries": grid, "median_l2": curve.median_at(grid)},
        "median_l2_returned": float(r.norms.median()),
        "success": float(r.success.float().mean()),
        "queries_at_model": tracker.rows,
        "max_queries_per_point": int(r.queries.max()),
        **clock.fields(tracker),
    }


def run_foolbox(cnn, x, y, budgets):
    try:
        import foolbox as fb
    except ImportError as err:  # pragma: no cover - depends on the machine
        return {"error": f"foolbox not installed: {err}"}
    tracker = Tracker(cnn, x, y, budget=max(budgets))
    fmodel = fb.PyTorchModel(tracker.eval(), bounds=(0.0, 1.0))
    attack = fb.attacks.HopSkipJumpAttack(
        steps=10_000, initial_gradient_eval_steps=100, max_gradient_eval_steps=10_000, gamma=1.0
    )
    torch.manual_seed(0)  # Foolbox draws from torch's global generator
    # Foolbox's own start (blended uniform noise) raises "init_attack failed" when noise never
    # fools the model for some point (the digits of the class noise is given): start every
    # point, as advex's fallback does, from the nearest other digit of another class (free: the
    # clean labels are known; generous to Foolbox, whose start then costs no queries)
    d = torch.cdist(x.flatten(1), x.flatten(1))
    d[y[:, None] == y[None, :]] = math.inf
    starts = x[d.argmin(1)]
    with Clock() as clock:
        try:
            attack.run(fmodel, x, fb.criteria.Misclassification(y), starting_points=starts)
            stopped = False
        except OverBudget:
            stopped = True
    return {
        "median_l2": {str(b): _median(tracker.distance_at(b)) for b in budgets},
        "queries_at_model": tracker.rows,
        "max_queries_per_point": int(tracker.queries.max()),
        "stopped_at_budget": stopped,
        "curve": _tracker_curve(tracker, max(budgets)),
        **clock.fields(tracker),
    }


def run_art(cnn, x, y, budgets):
    try:
        from art.attacks.evasion import HopSkipJump as ArtHSJ
        from art.estimators.classification import PyTorchClassifier
    except ImportError as err:  # pragma: no cover - depends on the machine
        return {"error": f"adversarial-robustness-toolbox not installed: {err}"}
    tracker = Tracker(cnn, x, y, budget=max(budgets))
    clf = PyTorchClassifier(
        model=tracker.eval(),
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    attack = ArtHSJ(
        clf, targeted=False, norm=2, max_iter=10_000, max_eval=10_000, init_eval=100, verbose=False
    )
    xn = x.numpy()
    np.random.seed(0)  # ART draws from numpy's global generator
    with Clock() as clock:
        for i in range(len(xn)):  # ART attacks one point at a time anyway (batch size 1)
            tracker.point = i
            try:
                attack.generate(x=xn[i : i + 1], y=np.eye(10)[y[i : i + 1].numpy()])
            except OverBudget:
                pass
    return {
        "median_l2": {str(b): _median(tracker.distance_at(b)) for b in budgets},
        "queries_at_model": tracker.rows,
        "max_queries_per_point": int(tracker.queries.max()),
        "curve": _tracker_curve(tracker, max(budgets)),
        **clock.fields(tracker),
    }


def _grid(top: int) -> list[int]:
    return sorted({int(round(v)) for v in np.geomspace(min(50, top), top, 40)})


def _tracker_curve(tracker: Tracker, top: int) -> dict:
    grid = _grid(top)
    return {"queries": grid, "median_l2": [_median(tracker.distance_at(b)) for b in grid]}


def save_figure(res: dict, path: Path) -> None:
    """Median L2 vs queries per point, one line per tool (docs/img/blackbox-hsja.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("advex", "foolbox", "art"):
        c = res.get(name, {}).get("curve")
        if c:
            ys = [v if math.isfinite(v) else np.nan for v in c["median_l2"]]
            ax.plot(c["queries"], ys, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("queries per point (counted at the model)")
    ax.set_ylabel("median L2 of the adversarial examples")
    ax.set_title(f"HopSkipJump, untargeted L2, MNIST CNN, {res['points']} points")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_linf(cnn, x, y, budget, eps):
    from advex.attacks import HopSkipJump, RayS
    from advex.models import CallableAdapter

    out = {}
    for name, attack in (
        ("rays", RayS(eps=eps, max_queries=budget)),
        ("hopskipjump-linf", HopSkipJump(eps=eps, norm="linf", max_queries=budget)),
    ):
        onehot = CallableAdapter(lambda t: nn.functional.one_hot(cnn(t).argmax(1), 10).float())
        with Clock() as clock:
            r = attack(onehot, x, y)
        out[name] = {
            "robust_accuracy": r.robust_accuracy,
            "median_queries": float(r.queries.float().median()),
            "max_queries": int(r.queries.max()),
            "queries_at_model": onehot.queries,
            "exposes": onehot.exposes,
            "wall_s": clock.wall,
            "cpu_s": clock.cpu,
            "loadavg_1min_start_end": clock.load,
        }
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--linf-points", type=int, default=None, help="default: --points; 0: skip")
    p.add_argument("--budgets", default="1000,5000,10000")
    p.add_argument("--peers", default="foolbox,art", help="comma list, or 'none'")
    p.add_argument("--quick", action="store_true", help="2 points, budgets 100,300 (smoke test)")
    p.add_argument("--out", default=str(RESULT))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from advex import data, zoo

    budgets = [int(b) for b in a.budgets.split(",")]
    n = a.points
    if a.quick:
        budgets, n = [100, 300], 2
    n_linf = n if a.linf_points is None else a.linf_points
    cnn = zoo.load("mnist-smallcnn").eval()
    x, y = data.mnist5k("test").tensors()
    with torch.no_grad():
        keep = (cnn(x[:500]).argmax(1) == y[:500]).nonzero().squeeze(1)
    xs, ys = x[keep[: max(n, n_linf)]], y[keep[: max(n, n_linf)]]
    assert len(xs) >= max(n, n_linf), "fewer correctly classified points than asked for"
    res: dict = {
        "machine": "shared CPU (2 cores, 7 engineers), torch threads = 1",
        "model": "zoo mnist-smallcnn",
        "points": n,
        "budgets": budgets,
        "command": " ".join(["python", "benchmarks/blackbox.py", *(argv or sys.argv[1:])]),
    }
    warnings.filterwarnings("ignore")

    def save() -> None:  # after every stage: a long run that is cut short keeps what it has
        if not a.quick:
            from advex._io import write_json

            write_json(a.out, res)

    res["advex"] = run_advex(cnn, xs[:n], ys[:n], budgets)
    print("advex", json.dumps(res["advex"]), flush=True)
    save()
    if n_linf > 0:
        res["linf"] = {
            "eps": 0.3,
            "points": n_linf,
            "budget": max(budgets),
            **run_linf(cnn, xs[:n_linf], ys[:n_linf], max(budgets), 0.3),
        }
        print("linf", json.dumps(res["linf"]), flush=True)
        save()
    peers = [] if a.peers == "none" else a.peers.split(",")
    for peer, run in (("foolbox", run_foolbox), ("art", run_art)):
        if peer in peers:
            try:
                res[peer] = run(cnn, xs[:n], ys[:n], budgets)
            except Exception as err:  # a peer's failure is a result, not a crash
                res[peer] = {"error": f"{type(err).__name__}: {err}"}
            print(peer, json.dumps(res[peer]), flush=True)
            save()
    res["ratios"] = {}
    for peer in ("foolbox", "art"):
        if peer in res and "wall_s" in res[peer]:
            res["ratios"][f"wall_advex/{peer}"] = res["advex"]["wall_s"] / res[peer]["wall_s"]
            res["ratios"][f"cpu_advex/{peer}"] = res["advex"]["cpu_s"] / res[peer]["cpu_s"]
            for b in budgets:
                mine, theirs = res["advex"]["median_l2"][str(b)], res[peer]["median_l2"][str(b)]
                ok = math.isfinite(theirs) and theirs > 0
                res["ratios"][f"median_l2_advex/{peer}@{b}"] = mine / theirs if ok else None
    print("ratios", json.dumps(res["ratios"], indent=1))
    if not a.quick:
        save()
        fig = Path(__file__).resolve().parents[1] / "docs" / "img" / "blackbox-hsja.png"
        save_figure(res, fig)
        print(f"wrote {a.out} and {fig}")
    return res


if __name__ == "__main__":
    main()
