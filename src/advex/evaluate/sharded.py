"""Sharded evaluation under a ``torch.distributed`` process group (``torchrun``).

:func:`advex.evaluate.evaluate` calls :func:`run_sharded` instead of its batch loop when a
process group of more than one rank is initialised. The unit of work is the **batch** of the
one-process run (the same ``batch_size`` boundaries): the attacks draw their random numbers per
point (:class:`~advex.threats.PointRandom`), but the ``standard`` preset's scheduling rules
(``restart_keep``, ``target_keep``, ``screen_keep``) pick shares *of a batch's survivors*
(:mod:`.schedule`), so a batch is the smallest piece whose results do not depend on what else
runs beside it. Keeping the one-process batches whole makes every point's result identical to
the one-process run, with no change to how seeds are drawn.

The run, on every rank:

1. **Phase A (cheap stage)**: the batches are split in contiguous blocks
   (:func:`advex.distributed.shard_indices`); each rank runs the clean pass and the first stage
   (APGD-CE for ``standard``) on its block and keeps, per batch, the per-point state and the
   :class:`~.schedule.Ledger` (what the later stages read).
2. **Re-split**: the phase-A states are all-gathered; the batches' remaining stages (APGD-T,
   FAB-T, Square: the expensive part, paid by the points still robust) are assigned by the
   number of survivors per batch, longest first to the least loaded rank (deterministic: the
   same on every rank, no scheduler process).
3. **Phase B**: each rank finishes its assigned batches from the gathered state (the ledger
   restored, the later stages run on the survivors, the kept examples merged in the order the
   one-process run keeps them).
4. The finished batches are all-gathered (every rank returns the same
   :class:`~.ensemble.Evaluation`; the CLI writes files on rank 0 only), and the per-rank
   compute and idle times with them.

Resume: each rank keeps its own state in ``out_dir/rank<r>-of-<W>/state/``: a phase-A file per
batch of its block (``mid_<k>.json`` + ``.safetensors``) and a finished-batch file per batch it
finished (``batch_<k>.json``, the same format as the one-process state). A rerun with the same
world size gathers what every rank has and computes only the missing phases; a state from
another world size (or a one-process state) is refused unless ``restart``.

With ``rebalance=False`` (or a one-stage preset) each rank runs whole batches of its block
(no phase split, no re-split): the baseline of ``benchmarks/distributed_eval.py``.

>>> # torchrun --nproc_per_node 2 -m advex evaluate --model ... --out run/
>>> # or, in a script launched by torchrun:
>>> from advex import distributed
>>> distributed.init_from_env()
>>> ev = evaluate(model, (x, y), eps=0.3, out_dir="run/")  # the same Evaluation on every rank
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import distributed as dist
from .._io import atomic_write
from ..models.guards import match_input_dtype
from .amp import AmpSpec, amp_counts, wrap_amp_stages
from .presets import derive_seed
from .robust import robust_accuracy
from .schedule import Ledger, share_ledger
from .state import (
    CorruptState,
    FingerprintMismatch,
    RunState,
    batch_record,
    stage_stats,
    tensor_hash,
)

__all__ = ["ShardedOutcome", "run_sharded", "assign_longest_first", "WorldSizeMismatch"]

#: test hook: called with the number of units (phase-A or phase-B batch) this rank computed so
#: far, after each one is saved (the resume tests exit the process from it); None in normal use
_after_unit_hook: Callable[[int], None] | None = None


class WorldSizeMismatch(FingerprintMismatch):
    """The output directory holds the resumable state of a run with another world size."""


@dataclass
class ShardedOutcome:
    """What :func:`run_sharded` hands back to :func:`~advex.evaluate.evaluate`: every batch's
    finished record (data order) with its example tensors, the probe points, the number of
    batches resumed from disk, and the ``distributed`` block of ``results.json``."""

    records: list[dict[str, Any]]
    ex_parts: list[tuple[dict[str, Any], dict[str, torch.Tensor]]]
    probe_x: list[torch.Tensor]
    probe_y: list[torch.Tensor]
    resumed: int
    info: dict[str, Any] = field(default_factory=dict)
    state: RunState | None = None


def assign_longest_first(costs: dict[int, float], world: int) -> dict[int, int]:
    """Batch -> rank: the most expensive batch first, each to the least loaded rank (ties: the
    lower batch index first, the lower rank). Deterministic; a 4/3-approximation of the best
    makespan (Graham's LPT rule)."""
    load = [0.0] * world
    out: dict[int, int] = {}
    for k in sorted(costs, key=lambda k: (-costs[k], k)):
        r = min(range(world), key=lambda i: (load[i], i))
        out[k] = r
        load[r] += costs[k]
    return out


def _config_hash(fingerprint: dict[str, Any], batch_hashes: list[str]) -> str:
    blob = json.dumps({"fp": fingerprint, "batches": batch_hashes}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_world(out_dir: Path, world: int, restart: bool) -> None:
    """Refuse (or, with restart, remove) the state of a run with another world size. Every rank
    looks at its own file system (nodes may not share one); the verdict is gathered so every
    rank raises, or goes on, together."""
    mine = f"-of-{world}"
    foreign = [
        p for p in sorted(out_dir.glob("rank*-of-*")) if p.is_dir() and not p.name.endswith(mine)
    ]
    single = out_dir / "state" / "fingerprint.json"
    if single.exists():
        foreign.append(single.parent)
    seen = dist.all_gather_object(
        sorted({p.name.split("-of-")[1] if "-of-" in p.name else "1" for p in foreign})
    )
    other = sorted({s for part in seen for s in part}, key=int)
    if not other:
        return
    if restart:
        dist.barrier()  # every rank has looked before anything is removed
        if dist.local_rank() == 0:
            for p in foreign:
                shutil.rmtree(p, ignore_errors=True)
        dist.barrier()
        return
    raise WorldSizeMismatch(
        f"{out_dir} holds the state of a run with world size {', '.join(other)}, not {world}: "
        f"rerun with that many processes to resume it, use another output directory, or "
        "restart=True (CLI: --restart) to discard it"
    )


def _own_state(out_dir: Path, fingerprint: dict[str, Any], restart: bool, split: bool) -> RunState:
    r, w = dist.rank(), dist.world_size()
    fp = dict(fingerprint, world_size=w, rank=r, rebalance=split)
    return RunState(out_dir / f"rank{r}-of-{w}", fp, restart=restart)


def _mid_paths(state: RunState, k: int) -> tuple[Path, Path]:
    return state.dir / f"mid_{k:05d}.json", state.dir / f"mid_{k:05d}.safetensors"


def _save_mid(state: RunState, k: int, mid: dict[str, Any], tensors: dict) -> None:
    js, st = _mid_paths(state, k)
    if tensors:
        from safetensors.torch import save

        atomic_write(st, save({n: t.contiguous() for n, t in tensors.items()}))
    atomic_write(js, json.dumps(dict(mid, has_examples=bool(tensors)), allow_nan=True).encode())


def _load_mid(state: RunState, k: int) -> tuple[dict[str, Any], dict] | None:
    js, st = _mid_paths(state, k)
    if not js.exists():
        return None
    try:
        mid = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CorruptState(js, f"{type(err).__name__}: {err}") from err
    tensors: dict[str, torch.Tensor] = {}
    if mid.get("has_examples"):
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(st))
        except Exception as err:  # safetensors raises its own error type
            raise CorruptState(st, f"{type(err).__name__}: {err}") from err
    return mid, tensors


def _build(stages, spec, thr, seed, adaptations) -> dict[str, Any]:
    """The batch's attacks, exactly as the one-process run builds them (ensemble._run_batch)."""
    attacks = {
        s.name: s.build(thr, derive_seed(seed, j), spec.budget_scale) for j, s in enumerate(stages)
    }
    for a in attacks.values():
        if adaptations["eot_samples"] > 1:
            a.eot_samples = int(adaptations["eot_samples"])
    return attacks


def _example_tensors(ex, keep: int, index_map: torch.Tensor | None, offset: int, only=None):
    """The kept examples of a :func:`robust_accuracy` result as the state's tensors (rows
    ``only`` when given), their index mapped back into the batch, plus the attack names."""
    if ex is None or keep <= 0:
        return {}, []
    rows = torch.arange(len(ex.y)) if only is None else only
    if rows.numel() == 0:
        return {}, []
    t = {f: getattr(ex, f).detach().cpu()[rows] for f in ("x", "x_adv", "y")}
    for f in ("clean_pred", "clean_conf", "adv_pred", "adv_conf"):
        t[f] = getattr(ex, f).detach().cpu()[rows]
    t["success"] = ex.success.cpu()[rows].to(torch.uint8)
    t["norms"] = ex.norms.detach().cpu().float()[rows]
    idx = ex.index.cpu().long()[rows]
    if index_map is not None:
        idx = index_map[idx]
    t["index"] = idx + offset
    return t, [ex.attack[i] for i in rows.tolist()]


def _phase_a(view, xb, yb, k, offset, ctx) -> tuple[dict[str, Any], dict]:
    attacks = _build(ctx["stages"], ctx["spec"], ctx["thr"], ctx["seed"], ctx["adaptations"])
    ledger = share_ledger(attacks.values())
    first = list(attacks)[:1]
    low = wrap_amp_stages({n: attacks[n] for n in first}, ctx["amp"])  # the cheap stage
    keep = ctx["keep"]
    res = robust_accuracy(
        view,
        (xb, yb),
        low,
        batch_size=max(1, int(xb.shape[0])),
        device=ctx["dev"],
        keep_examples=keep,
        keep_results=False,
    )
    bb = res.broken_by
    worst = torch.full((len(bb),), float("nan"))
    worst[bb == 0] = res.norms[first[0]][bb == 0].float()
    ex = res.examples
    # the one-process run keeps the first stage's successes in this order; its failures only
    # come with the last stage (phase B)
    only = None if ex is None else ex.success.cpu().nonzero().squeeze(1)
    tensors, ex_attacks = _example_tensors(ex, keep, None, offset, only)
    mid = batch_record(k, offset, res, worst, first)
    for name, counts in amp_counts(low).items():
        mid["stages"][name].update(counts)
    mid["ledger"] = ledger.to_state()
    mid["example_attacks"] = ex_attacks
    return mid, tensors


def _phase_b(view, xb, yb, mid, mid_tensors, ctx) -> tuple[dict[str, Any], dict]:
    """Finish a batch from its phase-A state: the record the one-process run writes."""
    attacks = _build(ctx["stages"], ctx["spec"], ctx["thr"], ctx["seed"], ctx["adaptations"])
    share_ledger(attacks.values(), Ledger.from_state(mid["ledger"]))
    names = list(attacks)
    later = {n: attacks[n] for n in names[1:]}
    keep, offset = ctx["keep"], int(mid["offset"])
    y = torch.tensor(mid["y"])
    clean_pred = torch.tensor(mid["clean_pred"])
    broken_by = torch.tensor(mid["broken_by"])
    surv = ((clean_pred == y) & (broken_by < 0)).nonzero().squeeze(1)
    record = {key: list(mid[key]) for key in ("y", "clean_pred", "clean_conf", "broken_by")}
    record.update(
        batch=int(mid["batch"]),
        offset=offset,
        adv_pred=list(mid["adv_pred"]),
        adv_conf=list(mid["adv_conf"]),
        norm=list(mid["norm"]),
        stages=dict(mid["stages"]),
    )
    for n in later:
        record["stages"][n] = {"attacked": 0, "gradients": 0, "queries": 0, "time_s": 0.0}
    parts_t = [mid_tensors] if mid_tensors else []
    parts_a = [list(mid.get("example_attacks", []))] if mid_tensors else []
    if surv.numel():
        res = robust_accuracy(
            view,
            (xb[surv], yb[surv]),
            later,
            batch_size=int(surv.numel()),
            device=ctx["dev"],
            keep_examples=keep,
            keep_results=False,
        )
        if not bool((res.clean_pred == res.y).all()):
            raise RuntimeError(
                f"batch {mid['batch']}: the clean pass on the points still robust disagrees with "
                "the batch's clean pass (the model's outputs depend on the batch it is in); "
                "run with rebalance=False (CLI: --no-rebalance)"
            )
        for j, n in enumerate(later, start=1):
            record["stages"][n] = stage_stats(res, n)
            sel = (res.broken_by == j - 1).nonzero().squeeze(1)
            for i in sel.tolist():
                p = int(surv[i])
                record["broken_by"][p] = j
                record["adv_pred"][p] = int(res.adv_pred[i])
                record["adv_conf"][p] = float(res.adv_conf[i])
                record["norm"][p] = float(res.norms[n][i])
        t, a = _example_tensors(res.examples, keep, surv, offset)
        if t:
            parts_t.append(t)
            parts_a.append(a)
    tensors: dict[str, torch.Tensor] = {}
    if parts_t and keep > 0:
        tensors = {f: torch.cat([p[f] for p in parts_t])[:keep] for f in parts_t[0]}
        record["example_attacks"] = [a for part in parts_a for a in part][:keep]
    return record, tensors


def run_sharded(
    view: Any,
    batches: Any,
    *,
    spec: Any,
    thr: Any,
    seed: int,
    stages: list,
    adaptations: dict[str, Any],
    dev: torch.device,
    keep: int,
    fingerprint: dict[str, Any],
    out_dir: str | Path | None,
    restart: bool,
    checks: bool,
    probe: int,
    rebalance: bool = True,
    run_batch: Callable[..., tuple[dict[str, Any], dict]],
    amp: AmpSpec | None = None,
) -> ShardedOutcome:
    """The batch loop of :func:`~advex.evaluate.evaluate` over the ranks of the process group
    (module docstring). ``run_batch`` is the one-process loop's batch function (whole batches
    when not rebalancing). Raises ValueError (same message on every rank) for a world size
    larger than the number of points or batches, and for ranks whose configuration (model,
    data, threat, preset, seed, options) differs; :class:`WorldSizeMismatch` for an output
    directory from another world size. ``amp``: the first stage under autocast, as in the
    one-process run (:mod:`.amp`; phase A is that stage)."""
    t_start = time.perf_counter()
    r, w = dist.rank(), dist.world_size()
    data = list(batches)
    if data:
        view = match_input_dtype(view, data[0][0])
    n_points = sum(int(x.shape[0]) for x, _ in data)
    n_batches = len(data)
    hashes = [tensor_hash(x, y) for x, y in data]
    # first of all: the same configuration on every rank (else the checks below could raise
    # on some ranks and leave the others waiting in a collective)
    mine = _config_hash(dict(fingerprint, rebalance=bool(rebalance)), hashes)
    every = dist.all_gather_object(mine)
    if len(set(every)) > 1:
        groups: dict[str, list[int]] = {}
        for i, h in enumerate(every):
            groups.setdefault(h, []).append(i)
        desc = "; ".join(f"ranks {g} have configuration {h}" for h, g in groups.items())
        raise ValueError(
            "the ranks were started with different arguments (model, data, threat, preset, "
            f"seed or options differ): {desc}; launch every rank with the same command"
        )
    if w > n_points:
        raise ValueError(
            f"world size {w} is larger than the number of points {n_points}: some ranks would "
            f"get no points; launch at most {n_points} processes"
        )
    if w > n_batches:
        raise ValueError(
            f"world size {w} is larger than the number of batches {n_batches} ({n_points} points "
            f"in batches of {batches.batch_size}): use a smaller batch size (at most "
            f"{max(1, n_points // w)}) or at most {n_batches} processes"
        )
    ctx = dict(
        stages=stages, spec=spec, thr=thr, seed=seed, adaptations=adaptations, dev=dev, keep=keep,
        amp=amp,
    )  # fmt: skip
    split = bool(rebalance) and len(stages) > 1
    offsets = [0]
    for x, _ in data[:-1]:
        offsets.append(offsets[-1] + int(x.shape[0]))

    state = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _check_world(out, w, restart)
        state = _own_state(out, fingerprint, restart, split)

    finals: dict[int, tuple[dict, dict]] = {}
    mids: dict[int, tuple[dict, dict]] = {}
    if state is not None:
        for k in range(n_batches):
            got = state.load_batch(k)
            if got is not None:
                _check_hash(got[0], hashes[k], offsets[k], k, state)
                finals[k] = got
            elif split:
                m = _load_mid(state, k)
                if m is not None:
                    _check_hash(m[0], hashes[k], offsets[k], k, state)
                    mids[k] = m
    known = dist.all_gather_object((sorted(finals), sorted(mids)))
    final_any = {k for f, _ in known for k in f}
    mid_any = {k for _, m in known for k in m}
    resumed_final = sum(len(f) for f, _ in known)  # counted once: a batch has one owner

    units = 0
    busy = 0.0
    computed_points = {"phase_a": 0, "phase_b": 0, "whole": 0}

    def _done_unit():
        nonlocal units
        units += 1
        if _after_unit_hook is not None:
            _after_unit_hook(units)

    block = dist.shard_indices(n_batches, r, w)
    for k in block:
        if k in final_any or k in mid_any:
            continue
        xb, yb = data[k]
        t0 = time.perf_counter()
        if split:
            mid, tens = _phase_a(view, xb, yb, k, offsets[k], ctx)
            mid["hash"] = hashes[k]
            if state is not None:
                _save_mid(state, k, mid, tens)
            mids[k] = (mid, tens)
            computed_points["phase_a"] += int(xb.shape[0])
        else:
            rec, tens = run_batch(view, xb, yb, k, offsets[k])
            rec["hash"] = hashes[k]
            if state is not None:
                state.save_batch(k, rec, tens)
            finals[k] = (rec, tens)
            computed_points["whole"] += int(xb.shape[0])
        busy += time.perf_counter() - t0
        _done_unit()

    idle_a = 0.0
    assignment: dict[int, int] = {}
    if split:
        t0 = time.perf_counter()
        pending_mine = {k: v for k, v in mids.items() if k not in final_any}
        gathered = dist.all_gather_object(pending_mine)
        idle_a = time.perf_counter() - t0
        all_mids: dict[int, tuple[dict, dict]] = {}
        for part in gathered:
            for k, v in part.items():
                all_mids.setdefault(k, v)
        # cost of a batch's phase B: its points still robust (plus one for the batch itself)
        costs = {k: 1.0 + _survivors(m[0]) for k, m in all_mids.items()}
        assignment = assign_longest_first(costs, w)
        for k in sorted(k for k, owner in assignment.items() if owner == r):
            xb, yb = data[k]
            t0 = time.perf_counter()
            rec, tens = _phase_b(view, xb, yb, *all_mids[k], ctx)
            rec["hash"] = hashes[k]
            if state is not None:
                state.save_batch(k, rec, tens)
            finals[k] = (rec, tens)
            computed_points["phase_b"] += int(costs[k]) - 1
            busy += time.perf_counter() - t0
            _done_unit()

    t_work = time.perf_counter()
    gathered = dist.all_gather_object(finals)
    t_gathered = time.perf_counter()
    by_batch: dict[int, tuple[dict, dict]] = {}
    for part in gathered:
        for k, v in part.items():
            by_batch.setdefault(k, v)
    missing = [k for k in range(n_batches) if k not in by_batch]
    if missing:
        raise RuntimeError(f"batches {missing} were finished by no rank (internal error)")
    mine_info = {
        "rank": r,
        "batches_phase_a": [k for k in block if k not in final_any and k not in mid_any],
        "batches_phase_b": sorted(k for k, owner in assignment.items() if owner == r),
        "units_computed": units,
        "points_computed": computed_points,
        "busy_s": busy,
        "idle_s": idle_a + (t_gathered - t_work),
        "wall_s": t_gathered - t_start,
    }
    ranks = dist.all_gather_object(mine_info)
    records = [by_batch[k][0] for k in range(n_batches)]
    ex_parts = [(by_batch[k][0], by_batch[k][1]) for k in range(n_batches) if by_batch[k][1]]
    probe_x: list[torch.Tensor] = []
    probe_y: list[torch.Tensor] = []
    if checks:
        got = 0
        for xb, yb in data:
            if got >= probe:
                break
            take = min(probe - got, int(xb.shape[0]))
            probe_x.append(xb[:take])
            probe_y.append(yb[:take])
            got += take
    info = {
        "world_size": w,
        "backend": torch.distributed.get_backend() if dist.is_distributed() else None,
        "unit": "batch",
        "batches": n_batches,
        "rebalance": split,
        "resumed": {
            "batches_finished": resumed_final,
            "batches_phase_a": len(mid_any - final_any),
            "points_finished": sum(int(len(by_batch[k][0]["y"])) for k in final_any),
        },
        "ranks": ranks,
    }
    return ShardedOutcome(records, ex_parts, probe_x, probe_y, resumed_final, info, state)


def _survivors(mid: dict[str, Any]) -> int:
    return sum(
        1
        for p, t, b in zip(mid["clean_pred"], mid["y"], mid["broken_by"], strict=True)
        if p == t and b < 0
    )


def _check_hash(record: dict, bhash: str, offset: int, k: int, state: RunState) -> None:
    if record.get("hash") != bhash or record.get("offset") != offset:
        raise ValueError(
            f"batch {k} of the data differs from the one recorded in {state.dir}: the data "
            "changed since the interrupted run; use restart=True"
        )
