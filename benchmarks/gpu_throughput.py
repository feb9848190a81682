"""Throughput of advex's workhorse passes on every device present: CPU always, CUDA and MPS when
there (the output says so when a device is absent).

Per device it measures, on the TRADES MNIST CNN (``trades-cnn``, 28×28 inputs):

- ``fwd_bwd_per_s``: forward + backward passes (input and weight gradients) per second, in
  points per second, at ``--batch`` points per pass (fp32; on CUDA also under bf16 autocast
  and with ``torch.compile``);
- ``pgd40_points_per_s``: :class:`advex.attacks.PGD` with 40 steps (L∞, ε = 0.3), points per
  second, and the input-gradient passes it spent per point. The network is untrained and the
  labels are its own predictions at ε ≈ 0 (ε = 1e-4), so no point is fooled and every point
  pays all 40 steps (an upper bound on PGD-40's cost per point; early exit makes real runs
  cheaper).
- ``train_step_per_s``: PGD-AT training steps per second (5 inner steps, batch ``--batch``),
  i.e. what one rank of ``advex train`` does per batch.

    PYTHONPATH=src python benchmarks/gpu_throughput.py --out benchmarks/results/...json
    PYTHONPATH=src python benchmarks/gpu_throughput.py --quick       # smoke test

Timings use ``torch.cuda.synchronize`` / ``torch.mps.synchronize`` around the timed region and
report the median of ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def devices_present() -> tuple[list[str], dict[str, str]]:
    """``(devices to measure, {absent device: why})``."""
    present, absent = ["cpu"], {}
    if torch.cuda.is_available():
        present.append("cuda")
    else:
        absent["cuda"] = "torch.cuda.is_available() is False (no CUDA device or a CPU-only torch)"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        present.append("mps")
    else:
        absent["mps"] = "torch.backends.mps.is_available() is False (not an Apple-silicon Mac)"
    return present, absent


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def _time(fn, device: str, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _model(device: str) -> torch.nn.Module:
    from advex import zoo

    torch.manual_seed(0)
    return zoo.build("trades-cnn").to(device)


def fwd_bwd(device: str, batch: int, repeats: int, *, amp=None, compile_=False) -> float:
    model = _model(device).train()
    net = torch.compile(model) if compile_ else model
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        xr = x.clone().requires_grad_(True)
        ctx = torch.autocast(device, dtype=amp) if amp is not None else _null()
        with ctx:
            loss = torch.nn.functional.cross_entropy(net(xr), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return batch / _time(step, device, repeats)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def pgd40(device: str, batch: int, repeats: int) -> tuple[float, float]:
    from advex.attacks import PGD

    model = _model(device).eval()
    x = torch.rand(batch, 1, 28, 28, device=device)
    with torch.no_grad():
        y = model(x).argmax(1)
    attack = PGD(eps=1e-4, steps=40, step_size=2.5e-6, seed=0)
    box = {}

    def run():
        box["r"] = attack(model, x, y)

    t = _time(run, device, repeats)
    grads = float(box["r"].gradients.float().mean())
    return batch / t, grads


def train_steps(device: str, batch: int, repeats: int, steps_per_run: int = 3) -> float:
    from advex.defenses import AdversarialTrainer

    x = torch.rand(batch * steps_per_run, 1, 28, 28)
    y = torch.randint(0, 10, (batch * steps_per_run,))

    def run():
        AdversarialTrainer(
            _model(device),
            "pgd",
            eps=0.3,
            epochs=1,
            batch_size=batch,
            attack_steps=5,
            progress=False,
        ).fit((x, y))

    return steps_per_run / _time(run, device, repeats)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="tiny batch, 1 repeat (smoke test)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--out", default=None, help="write the JSON here")
    a = p.parse_args(argv)
    if a.quick:
        a.batch, a.repeats, a.no_compile = 8, 1, True
    if a.threads:
        torch.set_num_threads(a.threads)
    present, absent = devices_present()
    report = {
        "command": " ".join(["python", *sys.argv]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "batch": a.batch,
        "repeats": a.repeats,
        "absent": absent,
        "devices": {},
    }
    for dev in present:
        row: dict = {}
        if dev == "cuda":
            row["name"] = torch.cuda.get_device_name()
        row["fwd_bwd_points_per_s"] = round(fwd_bwd(dev, a.batch, a.repeats), 1)
        if dev == "cuda":
            row["fwd_bwd_points_per_s_bf16"] = round(
                fwd_bwd(dev, a.batch, a.repeats, amp=torch.bfloat16), 1
            )
            if not a.no_compile:
                row["fwd_bwd_points_per_s_compiled"] = round(
                    fwd_bwd(dev, a.batch, a.repeats, compile_=True), 1
                )
        pts, grads = pgd40(dev, a.batch, a.repeats)
        row["pgd40_points_per_s"] = round(pts, 1)
        row["pgd40_gradient_passes_per_point"] = grads
        row["pgdat_train_steps_per_s"] = round(train_steps(dev, a.batch, max(1, a.repeats // 2)), 2)
        report["devices"][dev] = row
    for dev, why in absent.items():
        print(f"{dev}: absent — {why}")
    print(f"{'device':8s} {'fwd+bwd pts/s':>14s} {'PGD-40 pts/s':>13s} {'PGD-AT steps/s':>15s}")
    for dev, row in report["devices"].items():
        print(
            f"{dev:8s} {row['fwd_bwd_points_per_s']:14.1f} {row['pgd40_points_per_s']:13.1f} "
            f"{row['pgdat_train_steps_per_s']:15.2f}"
        )
        for k in ("fwd_bwd_points_per_s_bf16", "fwd_bwd_points_per_s_compiled"):
            if k in row:
                print(f"{'':8s} {k}: {row[k]}")
    if "cuda" in report["devices"] and "cpu" in report["devices"]:
        c, g = report["devices"]["cpu"], report["devices"]["cuda"]
        report["cuda_over_cpu"] = {
            "fwd_bwd": round(g["fwd_bwd_points_per_s"] / c["fwd_bwd_points_per_s"], 1),
            "pgd40": round(g["pgd40_points_per_s"] / c["pgd40_points_per_s"], 1),
        }
        print("CUDA / CPU:", report["cuda_over_cpu"])
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
