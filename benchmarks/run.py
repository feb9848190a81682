"""advex benchmarks: advex's attacks vs the raw forward+backward cost and vs other libraries.

One command, every ratio measured in one run, on the same model and the same batch::

    python benchmarks/run.py                      # full configuration (a few minutes)
    python benchmarks/run.py --quick              # tiny smoke configuration (seconds)
    python benchmarks/run.py --only pgd,cw --batch 256 --repeats 3 --json out.json

For every case (see ``benchmarks/cases.py``) each implementation first runs once as a warm-up
through a counting wrapper (forward rows and input-gradient rows per image) and is judged on
what it returns (robust accuracy, or success rate and median norm); then the implementations are
timed ``--repeats`` times, interleaved (advex, reference, advex, ...) so that a change of load
on the machine hits all of them alike, and the median is reported. Speed is never checked by
unit tests: this script only measures and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

try:  # run from a checkout without installing: use the package next to this script
    import advex  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the script is launched
    sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("ADVEX_CACHE", str(ROOT / ".advex-cache"))  # shared with the test suite

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(HERE))
from cases import CASES, IMPLEMENTATIONS, PEERS, Case, Skip  # noqa: E402

PEER_DISTRIBUTIONS = {
    "torchattacks": ("torchattacks",),
    "art": ("adversarial-robustness-toolbox",),
    "foolbox": ("foolbox", "eagerpy"),
}
LABELS = {"raw": "raw fwd+bwd", "art": "ART"}


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


class Counter(nn.Module):
    """Wraps the model and counts rows of forward passes and of gradients w.r.t. the input
    (a hook on the input fires once per backward that reaches it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forward_rows = 0
        self.gradient_rows = 0
        self.train(model.training)

    def _hook(self, grad: torch.Tensor) -> None:
        self.gradient_rows += grad.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_rows += x.shape[0]
        if x.requires_grad and torch.is_grad_enabled():
            x = x.view_as(x)  # a fresh node per call: hooks on a reused leaf would pile up
            x.register_hook(self._hook)
        return self.model(x)


class RunTimeout(Exception):
    """An implementation ran past --timeout-s."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`RunTimeout` in the main thread after ``seconds`` (POSIX; no-op elsewhere).
    Torch kernels are not interrupted: the limit is checked when control is back in Python."""
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def _expire(signum, frame):
        raise RunTimeout

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def seed_everything(seed: int = 0) -> None:
    """Peers draw random starts from the global generators: seed them before every run."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _x_adv(out) -> torch.Tensor | None:
    if out is None:
        return None
    if hasattr(out, "x_adv"):  # an advex AttackResult
        return out.x_adv
    return torch.as_tensor(out)


def distance(delta: torch.Tensor, norm: str) -> torch.Tensor:
    d = delta.flatten(1).double()
    if norm == "linf":
        return d.abs().amax(1)
    if norm == "l2":
        return d.norm(dim=1)
    if norm == "l1":
        return d.abs().sum(1)
    if norm == "l0":
        return (d.abs() > 1e-6).sum(1).double()
    raise ValueError(f"unknown norm {norm!r}")


@torch.no_grad()
def judge(kind: str, p, model, x, y, x_adv) -> dict:
    """Strength of what an implementation returned, computed the same way for all of them."""
    if x_adv is None:
        return {}
    x_adv = x_adv.to(x.device, x.dtype)
    if x_adv.shape != x.shape:
        return {"error": f"returned shape {tuple(x_adv.shape)} for input {tuple(x.shape)}"}
    pred = model(x_adv).argmax(1)
    dist = distance(x_adv - x, p.norm)
    flat = x_adv.flatten(1)
    in_bounds = (flat >= -1e-6).all(1) & (flat <= 1 + 1e-6).all(1)
    out = {"out_of_bounds": int((~in_bounds).sum())}
    if kind == "budget":
        in_ball = dist <= p.eps * (1 + 1e-5) + 1e-6
        valid = in_ball & in_bounds
        robust = (pred == y) | ~valid  # an invalid adversarial does not count as a success
        out.update(
            robust_accuracy=float(robust.double().mean()),
            outside_ball=int((~in_ball).sum()),
            max_distance=float(dist.max()),
        )
    else:
        shift = getattr(p, "target_shift", None)  # a targeted case: success = the target
        goal = pred == (y + shift) % p.num_classes if shift else pred != y
        success = goal & in_bounds
        out.update(
            success_rate=float(success.double().mean()),
            median_norm=float(dist[success].median()) if bool(success.any()) else None,
            mean_norm=float(dist[success].mean()) if bool(success.any()) else None,
        )
    return out


def strength_text(kind: str, s: dict) -> str:
    if not s:
        return "-"
    if "error" in s:
        return "error"
    flag = "!" if s.get("out_of_bounds") or s.get("outside_ball") else ""
    if kind == "budget":
        return f"{100 * s['robust_accuracy']:.1f}%{flag}"
    med = s["median_norm"]
    return f"{100 * s['success_rate']:.0f}% {med:.3f}{flag}" if med is not None else "0%"


def measure_case(c: Case, model, x, y, args, num_classes: int) -> dict:
    p = c.settings(args.quick, num_classes)
    params = {k: v for k, v in vars(p).items() if k != "num_classes"}
    record: dict = {"case": c.key, "kind": c.kind, "cost": c.cost, "title": c.title}
    record["params"] = params
    record["notes"] = list(c.notes)
    record["repeats"] = args.repeats
    factories = c.build(p)
    runners, skipped = {}, {}
    for name in IMPLEMENTATIONS:
        if name not in factories:
            continue
        if name in PEERS and name not in args.peers:
            skipped[name] = "not selected (--peers)"
            continue
        try:
            runners[name] = factories[name]()
        except Skip as e:
            skipped[name] = str(e)
    record["skipped"] = skipped
    if "advex" not in runners:
        record["skipped_case"] = skipped.get("advex", "no advex implementation")
        return record

    n = x.shape[0]
    impls: dict[str, dict] = {}
    x_copy, y_copy = x.clone(), y.clone()
    for name, run in runners.items():
        _log(f"  {c.key}: warm-up {name}")
        counter = Counter(model)
        params = list(model.parameters())
        for q in params:
            q.grad = None
        before = [(q.detach().clone(), q.requires_grad) for q in params]
        seed_everything(0)
        t0 = time.perf_counter()
        try:
            with time_limit(args.timeout_s):
                out = run(counter, x, y)
        except RunTimeout:
            _log(f"  {c.key}: {name} did not finish within --timeout-s {args.timeout_s:g}")
            impls[name] = {"timed_out": True, "warmup_s": args.timeout_s, "times_s": []}
            x.copy_(x_copy)
            y.copy_(y_copy)
            continue
        except Exception as e:  # a peer failing must not kill the whole benchmark
            skipped[name] = f"failed: {type(e).__name__}: {e}"
            _log(f"  {c.key}: {name} failed: {type(e).__name__}: {e}")
            x.copy_(x_copy)
            y.copy_(y_copy)
            continue
        warm = time.perf_counter() - t0
        info = {
            "timed_out": False,
            "warmup_s": warm,
            "gradients_per_image": counter.gradient_rows / n,
            "forwards_per_image": counter.forward_rows / n,
            "strength": judge(c.kind, p, model, x, y, _x_adv(out)),
            "mutated_input": not (torch.equal(x, x_copy) and torch.equal(y, y_copy)),
            # side effects on the caller's model: weight gradients computed and left in .grad
            # (a full backward, more work than the input gradient alone), weights or
            # requires_grad flags changed
            "left_parameter_grads": any(q.grad is not None for q in params),
            "changed_model": any(
                not torch.equal(v, q.detach()) or flag != q.requires_grad
                for (v, flag), q in zip(before, params, strict=True)
            ),
            "times_s": [],
        }
        for q in params:
            q.grad = None
        if info["mutated_input"]:  # restore so the next implementation gets the same batch
            x.copy_(x_copy)
            y.copy_(y_copy)
        if name == "advex":
            info["reported_gradients_per_image"] = float(out.gradients.double().mean())
            info["reported_queries_per_image"] = float(out.queries.double().mean())
        impls[name] = info
    runners = {k: v for k, v in runners.items() if k in impls and not impls[k]["timed_out"]}
    if "advex" not in runners:
        late = impls.get("advex", {}).get("timed_out")
        record["skipped_case"] = (
            f"advex did not finish within --timeout-s {args.timeout_s:g}"
            if late
            else skipped.get("advex", "advex failed")
        )
        return record

    for r in range(args.repeats):
        for name, run in runners.items():
            info = impls[name]
            if info["warmup_s"] > args.max_run_s or (r > 0 and info["warmup_s"] > args.slow_s):
                continue
            _log(f"  {c.key}: run {r + 1}/{args.repeats} {name}")
            seed_everything(0)
            t0 = time.perf_counter()
            run(model, x, y)
            info["times_s"].append(time.perf_counter() - t0)
    for info in impls.values():
        times = info["times_s"] or [info["warmup_s"]]
        if info["timed_out"]:
            info["timing"] = f"did not finish within {args.timeout_s:g} s (lower bound)"
        elif info["times_s"]:
            info["timing"] = "median" if len(info["times_s"]) > 1 else "single run"
        else:
            info["timing"] = "warm-up only (slower than --max-run-s)"
        info["seconds"] = statistics.median(times)
        info["images_per_s"] = n / info["seconds"]
    record["implementations"] = impls
    adv = impls["advex"]
    record["rows"] = [
        {
            "reference": name,
            "advex_s": adv["seconds"],
            "reference_s": info["seconds"],
            "ratio": adv["seconds"] / info["seconds"],
            "reference_timed_out": info["timed_out"],
        }
        for name, info in impls.items()
        if name != "advex"
    ]
    return record


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        usable = os.cpu_count()
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    import advex as _advex

    peers = {}
    for dists in PEER_DISTRIBUTIONS.values():
        for d in dists:
            peers[d] = _version(d)
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "load_average_start": _loadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "numpy": np.__version__,
        "advex": getattr(_advex, "__version__", "?"),
        "advex_commit": commit or None,
        "peers": peers,
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def _label(name: str, machine: dict) -> str:
    return LABELS.get(name, name)


def _rate(images_per_s: float) -> str:
    return f"{images_per_s:.1f}" if images_per_s < 10 else f"{images_per_s:.0f}"


def _cost(info: dict, cost: str) -> str:
    g = info["gradients_per_image"] if cost == "gradients" else info["forwards_per_image"]
    text = f"{g:.1f}" if g < 100 else f"{g:.0f}"
    return text if cost == "gradients" else f"{text}q"


def format_table(records: list[dict], machine: dict, markdown: bool = False) -> str:
    head = (
        "case",
        "vs",
        "advex s",
        "ref s",
        "advex/ref",
        "advex img/s",
        "ref img/s",
        "advex strength",
        "ref strength",
        "grads/img advex / ref",
    )
    rows = []
    for rec in records:
        if "rows" not in rec:
            continue
        impls = rec["implementations"]
        adv = impls["advex"]
        for row in rec["rows"]:
            ref = impls[row["reference"]]
            late = row["reference_timed_out"]
            rows.append(
                (
                    rec["case"],
                    _label(row["reference"], machine),
                    f"{row['advex_s']:.3f}",
                    (">" if late else "") + f"{row['reference_s']:.3f}",
                    ("<" if late else "") + f"{row['ratio']:.2f}",
                    _rate(adv["images_per_s"]),
                    ("<" if late else "") + _rate(ref["images_per_s"]),
                    strength_text(rec["kind"], adv["strength"]),
                    "timed out" if late else strength_text(rec["kind"], ref["strength"]),
                    f"{_cost(adv, rec['cost'])} / " + ("?" if late else _cost(ref, rec["cost"])),
                )
            )
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    edge = ("| ", " |") if markdown else ("", "")

    def line(values) -> str:
        cells = " | ".join(str(v).ljust(w) for v, w in zip(values, widths, strict=True))
        return (edge[0] + cells + edge[1]).rstrip()

    rule = (
        ("|-" + "-|-".join("-" * w for w in widths) + "-|")
        if markdown
        else ("-+-".join("-" * w for w in widths))
    )
    return "\n".join([line(head), rule, *(line(r) for r in rows)])


def format_header(machine: dict, config: dict) -> str:
    peers = ", ".join(
        f"{k} {v}" if v else f"{k} (not installed)" for k, v in machine["peers"].items()
    )
    return "\n".join(
        [
            f"advex {machine['advex']} ({machine['advex_commit'] or 'no git'}) | "
            f"torch {machine['torch']} | numpy {machine['numpy']} | python {machine['python']}",
            f"CPU: {machine['cpu']} | {machine['cpu_count']} logical CPUs "
            f"({machine['usable_cpus']} usable) | torch threads {machine['torch_threads']} | "
            f"load average at start {machine['load_average_start']}",
            f"peers: {peers}",
            f"model {config['model']} | batch {config['batch']} correctly classified "
            f"mnist5k test digits | repeats {config['repeats']} (median, interleaved) "
            f"{'| QUICK configuration' if config['quick'] else ''}",
        ]
    )


def format_case_notes(records: list[dict]) -> str:
    out = []
    for rec in records:
        if "skipped_case" in rec:
            out.append(f"- {rec['case']}: skipped: {rec['skipped_case']}")
            continue
        out.append(f"- {rec['case']}: {rec['title']}")
        for name, why in rec["skipped"].items():
            if name != "advex":
                out.append(f"    {name} skipped: {why}")
        for name, info in rec["implementations"].items():
            s = info.get("strength", {})
            flags = []
            if info.get("mutated_input"):
                flags.append("MUTATED the input batch")
            if info.get("changed_model"):
                flags.append("CHANGED the model's weights or requires_grad flags")
            if info.get("left_parameter_grads"):
                flags.append("computed weight gradients (left in the model's .grad)")
            if s.get("out_of_bounds"):
                flags.append(f"{s['out_of_bounds']} points out of bounds")
            if s.get("outside_ball"):
                flags.append(f"{s['outside_ball']} points outside the ε-ball")
            if len(info["times_s"]) < rec["repeats"]:
                flags.append(f"timing: {info['timing']}")
            if flags:
                out.append(f"    {name}: " + "; ".join(flags))
        for note in rec["notes"]:
            out.append(f"    note: {note}")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def select_cases(only: str | None) -> list[Case]:
    if not only:
        return list(CASES)
    names = [s.strip() for s in only.split(",") if s.strip()]
    chosen, unknown = [], []
    for name in names:
        hit = [c for c in CASES if c.key == name or c.key.startswith(name + "-")]
        if not hit:
            unknown.append(name)
        chosen.extend(c for c in hit if c not in chosen)
    if unknown:
        raise SystemExit(f"--only: unknown case(s) {unknown}; available: {[c.key for c in CASES]}")
    return chosen


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="advex attacks vs raw forward+backward passes and vs peer libraries, "
        "measured in one run on the same model and batch.",
    )
    ap.add_argument("--quick", action="store_true", help="tiny configuration (smoke test)")
    ap.add_argument("--batch", type=int, default=None, help="images per batch (256; quick: 16)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per case (3; quick: 1)")
    ap.add_argument("--only", default=None, help="comma-separated cases, e.g. pgd,cw")
    ap.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated peers to compare with ({','.join(PEERS)}) or 'none'",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (torch's default)")
    ap.add_argument("--model", default="mnist-smallcnn", help="advex.zoo name or model directory")
    ap.add_argument("--json", default=None, help="also write every measurement to this file")
    ap.add_argument(
        "--slow-s",
        type=float,
        default=60.0,
        help="an implementation whose warm-up takes longer is timed once, not --repeats times",
    )
    ap.add_argument(
        "--max-run-s",
        type=float,
        default=300.0,
        help="an implementation whose warm-up takes longer is not run again (warm-up time used)",
    )
    ap.add_argument(
        "--timeout-s",
        type=float,
        default=180.0,
        help="stop an implementation's first run after this long and report '>' that time "
        "(0: no limit)",
    )
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)
    if args.batch is None:
        args.batch = 16 if args.quick else 256
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.batch < 1:
        ap.error(f"--batch must be >= 1, got {args.batch}")
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    peers = {s.strip() for s in args.peers.split(",") if s.strip()} - {"none"}
    bad = peers - set(PEERS)
    if bad:
        ap.error(f"--peers: unknown {sorted(bad)}; choose from {list(PEERS)} or 'none'")
    args.peers = peers
    return args


def load_batch(model_name: str, batch: int):
    from advex import data, zoo

    model = zoo.load(model_name, progress=False)
    model.eval()
    x, y = data.mnist5k("test").tensors()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    keep = (pred == y).nonzero().squeeze(1)
    if len(keep) < batch:
        raise SystemExit(f"--batch {batch}: only {len(keep)} correctly classified test digits")
    keep = keep[:batch]
    num_classes = int(model(x[:1]).shape[1])
    return model, x[keep].contiguous(), y[keep].contiguous(), num_classes


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for c in CASES:
            print(f"{c.key:22s} {c.kind:8s} {c.title}")
        return 0
    cases = select_cases(args.only)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    machine = machine_info(threads)
    config = {
        "model": args.model,
        "batch": args.batch,
        "repeats": args.repeats,
        "quick": args.quick,
        "peers": sorted(args.peers),
        "cases": [c.key for c in cases],
        "slow_s": args.slow_s,
        "max_run_s": args.max_run_s,
        "timeout_s": args.timeout_s,
        "command": " ".join(["python", "benchmarks/run.py", *(argv or sys.argv[1:])]),
    }
    print(format_header(machine, config), flush=True)
    model, x, y, num_classes = load_batch(args.model, args.batch)
    records = []
    t0 = time.perf_counter()
    for c in cases:
        _log(f"case {c.key}")
        records.append(measure_case(c, model, x, y, args, num_classes))
    machine["load_average_end"] = _loadavg()
    machine["total_s"] = round(time.perf_counter() - t0, 1)
    print()
    print(format_table(records, machine, markdown=args.markdown))
    print()
    print(format_case_notes(records))
    print(
        f"\nadvex/ref < 1: advex is faster. Strength: budget cases show robust accuracy "
        f"(lower = stronger), minimum-norm cases success rate and median norm (lower = "
        f"stronger); '!' marks outputs outside the bounds or the ε-ball. "
        f"Load average at end {machine['load_average_end']}; total {machine['total_s']} s."
    )
    if args.json:
        payload = {"machine": machine, "config": config, "cases": records}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        _log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
