"""Load benchmark of the playground server (``advex serve``), over real HTTP on loopback.

Starts the server (``advex serve``, default host, models loaded at start) in a subprocess on a
free port, checks it listens on loopback only, then:

1. **Round trip**: PGD-40 (L∞) on one MNIST test digit, request to parsed JSON answer, one
   request at a time: median and p95 over ``--trips`` requests, at ε = 0.2 (the digit is
   fooled: PGD stops early) and at ε = 0.05 (not fooled: all 40 steps run). Target ≤ 1 s.
2. **Load**: ``--clients`` threads (20) for ``--duration`` seconds, each sending a mix of
   attacks (PGD-40 on random digits), predictions, listings and *bad* requests (oversized body,
   decompression bomb, malformed base64, wrong types, unknown names, text too long, malformed
   JSON). A monitor polls ``/api/health`` (running jobs) and the server's RSS (from /proc).
   Checked: running jobs never exceed the cap, RSS stays under ``--rss-bound-mb``, every bad
   request gets a 4xx with a JSON message, no 5xx other than 503 ``time_budget``, every good
   request an answer (200, or 429 ``busy`` when the job slots and queue are full).

There is no peer to run side by side (no other adversarial-examples library ships a server);
the numbers are absolute. The machine's load average is recorded (it is shared).

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "2026-11-29-serve-load.json"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, raw=None, headers=None, timeout=60.0):
    """(status, parsed JSON or None, seconds)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    h = {"Content-Type": "application/json"} if data is not None else {}
    h.update(headers or {})
    t0 = time.perf_counter()
    try:
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        payload = resp.read()
        dt = time.perf_counter() - t0
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = None
        return resp.status, parsed, dt
    finally:
        conn.close()


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def _bomb_png() -> str:
    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _real_big_png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buf, format="PNG")  # a few kB, 9 megapixels
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def bad_requests() -> list[tuple[str, str, str, dict | None, bytes | None]]:
    """(name, method, path, JSON body, raw body): each must get a 4xx with a message."""
    atk = {"model": "mnist-smallcnn", "input": {"sample": 1}, "attack": "pgd", "eps": 0.1}
    big = {
        "model": "mnist-smallcnn",
        "input": {"image": "data:image/png;base64," + "A" * 2_500_000},
    }
    return [
        ("oversized_body", "POST", "/api/predict", big, None),
        ("bomb_png", "POST", "/api/predict", {**atk, "input": {"image": _bomb_png()}}, None),
        (
            "huge_real_png",
            "POST",
            "/api/attack",
            {**atk, "input": {"image": _real_big_png()}},
            None,
        ),
        (
            "malformed_base64",
            "POST",
            "/api/predict",
            {"model": "mnist-smallcnn", "input": {"image": "data:image/png;base64,@@@"}},
            None,
        ),
        (
            "not_png",
            "POST",
            "/api/predict",
            {**atk, "input": {"image": "data:image/png;base64,R0lGODlhAQ=="}},
            None,
        ),
        ("eps_string", "POST", "/api/attack", {**atk, "eps": "0.1"}, None),
        ("eps_out_of_range", "POST", "/api/attack", {**atk, "eps": 3.0}, None),
        ("steps_too_many", "POST", "/api/attack", {**atk, "steps": 10_000}, None),
        ("unknown_model", "POST", "/api/attack", {**atk, "model": "../../etc/passwd"}, None),
        ("unknown_attack", "POST", "/api/attack", {**atk, "attack": "rm -rf"}, None),
        ("unknown_sample", "POST", "/api/attack", {**atk, "input": {"sample": 10**9}}, None),
        ("extra_field", "POST", "/api/attack", {**atk, "weights": "/tmp/x.pt"}, None),
        ("malformed_json", "POST", "/api/attack", None, b'{"model": '),
        ("json_array", "POST", "/api/predict", [1, 2, 3], None),
        (
            "text_too_long",
            "POST",
            "/api/attack",
            {"model": "sms-spam-cnn", "input": {"text": "x" * 5000}, "attack": "deepwordbug"},
            None,
        ),
        (
            "empty_text",
            "POST",
            "/api/predict",
            {"model": "sms-spam-cnn", "input": {"text": ""}},
            None,
        ),
        ("bad_query", "GET", "/api/samples?model=mnist-smallcnn&n=-5", None, None),
        ("no_route", "GET", "/api/../../etc/passwd", None, None),
    ]


def listening_addresses(port: int) -> list[str]:
    """The local addresses listening on ``port`` (Linux /proc/net/tcp{,6}; [] elsewhere)."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            addr, p = f[1].rsplit(":", 1)
            if f[3] == "0A" and int(p, 16) == port:  # 0A = LISTEN
                if len(addr) == 8:
                    out.append(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]))
                else:
                    raw = b"".join(bytes.fromhex(addr[k : k + 8])[::-1] for k in range(0, 32, 8))
                    out.append(socket.inet_ntop(socket.AF_INET6, raw))
    return out


def client_leaves(port: int) -> dict:
    """A client starts a long job (a 16-point ε curve of PGD-200 at ε the digit resists, tens
    of seconds of work) and hangs up after 1 s: the server must stop the job at once."""
    body = {
        "model": "mnist-smallcnn",
        "input": {"sample": 2},
        "attack": "pgd",
        "eps_values": [0.001 * (k + 1) for k in range(16)],
        "steps": 200,
    }
    _, j0, _ = request(port, "GET", "/api/health")
    before = j0["jobs"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    t0 = time.perf_counter()
    try:
        conn.request(
            "POST",
            "/api/curve",
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        conn.getresponse().read()
        answered = True
    except OSError:  # the timeout: hang up
        answered = False
    finally:
        conn.close()
    left = time.perf_counter()
    stopped = None
    while time.perf_counter() - left < 30:
        _, j, _ = request(port, "GET", "/api/health")
        if j["jobs"]["running"] == 0 and j["jobs"]["cancelled"] > before["cancelled"]:
            stopped = time.perf_counter() - left
            break
        time.sleep(0.05)
    return {
        "answered_before_hangup": answered,
        "hung_up_after_s": round(left - t0, 2),
        "job_stopped_after_hangup_s": None if stopped is None else round(stopped, 2),
        "cancelled_jobs": j["jobs"]["cancelled"] - before["cancelled"],
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short smoke run")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--duration", type=float, default=None, help="seconds of load (30; quick 4)")
    ap.add_argument("--trips", type=int, default=None, help="round trips timed (30; quick 5)")
    ap.add_argument("--max-jobs", type=int, default=2)
    ap.add_argument("--max-queue", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--rss-bound-mb", type=float, default=1500.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    duration = args.duration or (4.0 if args.quick else 30.0)
    trips = args.trips or (5 if args.quick else 30)
    out_path = Path(args.out) if args.out else (None if args.quick else DEFAULT_OUT)

    port = free_port()
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [
        sys.executable, "-m", "advex", "serve", "--port", str(port),
        "--max-jobs", str(args.max_jobs), "--max-queue", str(args.max_queue),
        "--time-budget", "20", "--threads", str(args.threads),
    ]  # fmt: skip
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with code {proc.returncode}")
            try:
                st, _, _ = request(port, "GET", "/api/health", timeout=2)
                if st == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start within 600 s")
            time.sleep(0.2)
        startup_s = time.perf_counter() - t_start
        bound = listening_addresses(port)
        rss_idle = rss_mb(proc.pid)

        # -- 1. round trip ----------------------------------------------------------------------
        round_trip = {}
        for eps in (0.2, 0.05):
            body = {
                "model": "mnist-smallcnn",
                "input": {"sample": 2},
                "attack": "pgd",
                "eps": eps,
                "steps": 40,
            }
            for _ in range(2):  # warm up
                request(port, "POST", "/api/attack", body)
            walls, server, passes, success = [], [], [], []
            for _ in range(trips):
                st, j, dt = request(port, "POST", "/api/attack", body)
                assert st == 200, (st, j)
                walls.append(dt * 1000)
                server.append(j["elapsed_ms"])
                passes.append(j["passes"])
                success.append(j["success"])
            round_trip[f"eps_{eps:g}"] = {
                "eps": eps,
                "steps": 40,
                "fooled": all(success),
                "passes": statistics.median(passes),
                "median_ms": round(statistics.median(walls), 1),
                "p95_ms": round(pct(walls, 0.95), 1),
                "server_median_ms": round(statistics.median(server), 1),
                "n": trips,
                "target_ms": 1000,
                "meets_target": pct(walls, 0.95) <= 1000,
            }

        # -- 2. load ----------------------------------------------------------------------------
        bads = bad_requests()
        stop = threading.Event()
        lock = threading.Lock()
        results: dict[str, list] = defaultdict(list)  # kind -> [(status, seconds, ok_message)]
        bad_results: dict[str, list] = defaultdict(list)
        monitor = {"max_running": 0, "max_queued": 0, "max_rss_mb": 0.0, "health_polls": 0}

        def client(k: int):
            rng = random.Random(k)
            while not stop.is_set():
                u = rng.random()
                try:
                    if u < 0.45:
                        body = {
                            "model": "mnist-smallcnn",
                            "input": {"sample": rng.randrange(1000)},
                            "attack": "pgd",
                            "eps": rng.choice([0.05, 0.1, 0.2, 0.3]),
                            "steps": 40,
                            "seed": rng.randrange(1000),
                        }
                        st, j, dt = request(port, "POST", "/api/attack", body)
                        kind = "attack"
                    elif u < 0.65:
                        body = {"model": "mnist-smallcnn", "input": {"sample": rng.randrange(1000)}}
                        st, j, dt = request(port, "POST", "/api/predict", body)
                        kind = "predict"
                    elif u < 0.75:
                        path = rng.choice(
                            [
                                "/api/models",
                                "/api/attacks?domain=image",
                                "/api/samples?model=mnist-smallcnn&n=12",
                            ]
                        )
                        st, j, dt = request(port, "GET", path)
                        kind = "listing"
                    else:
                        name, method, path, body, raw = bads[rng.randrange(len(bads))]
                        st, j, dt = request(port, method, path, body, raw)
                        msg = isinstance(j, dict) and isinstance(
                            j.get("error", {}).get("message"), str
                        )
                        with lock:
                            bad_results[name].append(
                                (st, dt, msg, (j or {}).get("error", {}).get("code"))
                            )
                        continue
                    msg = st == 200 or (isinstance(j, dict) and "error" in j)
                    code_ = None if st == 200 else (j or {}).get("error", {}).get("code")
                    with lock:
                        results[kind].append((st, dt, msg, code_))
                except OSError as err:
                    with lock:
                        results["connection_error"].append((0, 0.0, False, type(err).__name__))

        def watch():
            while not stop.is_set():
                r = rss_mb(proc.pid)
                if r is not None:
                    monitor["max_rss_mb"] = max(monitor["max_rss_mb"], r)
                try:
                    st, j, _ = request(port, "GET", "/api/health", timeout=10)
                    if st == 200:
                        monitor["health_polls"] += 1
                        monitor["max_running"] = max(monitor["max_running"], j["jobs"]["running"])
                        monitor["max_queued"] = max(monitor["max_queued"], j["jobs"]["queued"])
                        monitor["peak_running_server"] = j["jobs"]["peak_running"]
                        monitor["server_stats"] = j["jobs"]
                except OSError:
                    pass
                time.sleep(0.2)

        threads = [
            threading.Thread(target=client, args=(k,), daemon=True) for k in range(args.clients)
        ]
        w = threading.Thread(target=watch, daemon=True)
        t_load = time.perf_counter()
        w.start()
        for t in threads:
            t.start()
        time.sleep(duration)
        stop.set()
        for t in threads:
            t.join(120)
        w.join(15)
        load_s = time.perf_counter() - t_load
        st, j, _ = request(port, "GET", "/api/health")
        final = j["jobs"]
        disconnect = client_leaves(port)
        monitor["max_rss_mb"] = max(monitor["max_rss_mb"], rss_mb(proc.pid) or 0.0)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    load_after = os.getloadavg()

    def summary(rows):
        st = Counter(r[0] for r in rows)
        lat = [r[1] * 1000 for r in rows if r[0] == 200]
        return {
            "requests": len(rows),
            "status": {str(k): v for k, v in sorted(st.items())},
            "codes": dict(Counter(r[3] for r in rows if r[3])),
            "median_ms_200": round(statistics.median(lat), 1) if lat else None,
            "p95_ms_200": round(pct(lat, 0.95), 1) if lat else None,
            "all_have_message": all(r[2] for r in rows),
        }

    good = {k: summary(v) for k, v in results.items()}
    bad = {k: summary(v) for k, v in bad_results.items()}
    all_good = [r for v in results.values() for r in v]
    all_bad = [r for v in bad_results.values() for r in v]
    checks = {
        "job_cap_held": max(final["peak_running"], monitor["max_running"]) <= args.max_jobs,
        "rss_under_bound": monitor["max_rss_mb"] <= args.rss_bound_mb,
        "bad_requests_all_4xx_with_message": bool(all_bad)
        and all(400 <= r[0] < 500 and r[2] for r in all_bad),
        "no_500": not any(r[0] >= 500 and r[3] != "time_budget" for r in all_good + all_bad),
        "good_requests_answered": bool(all_good)
        and all(r[0] in (200, 429, 503) and r[2] for r in all_good),
        "no_connection_errors": "connection_error" not in results,
        "bound_to_loopback_only": bool(bound) and all(a in ("127.0.0.1", "::1") for a in bound),
        "job_of_departed_client_stopped": disconnect["job_stopped_after_hangup_s"] is not None
        and disconnect["job_stopped_after_hangup_s"] < 5.0,
    }
    payload = {
        "benchmark": "serve_load",
        "config": {
            "quick": args.quick,
            "clients": args.clients,
            "duration_s": duration,
            "trips": trips,
            "max_jobs": args.max_jobs,
            "max_queue": args.max_queue,
            "server_torch_threads": args.threads,
            "rss_bound_mb": args.rss_bound_mb,
            "cpu_count": os.cpu_count(),
        },
        "machine": {
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in load_after],
            "note": "2 CPU cores shared with other engineers' jobs; load average = runnable "
            "processes (1, 5, 15 min)",
        },
        "server_command": f"advex serve --port PORT --max-jobs {args.max_jobs} "
        f"--max-queue {args.max_queue} --time-budget 20 --threads {args.threads}",
        "listening_on": bound,
        "startup_s": round(startup_s, 1),
        "rss_idle_mb": None if rss_idle is None else round(rss_idle, 1),
        "round_trip": round_trip,
        "load": {
            "seconds": round(load_s, 1),
            "good": good,
            "bad": bad,
            "monitor": {
                k: (round(v, 1) if isinstance(v, float) else v) for k, v in monitor.items()
            },
            "server_jobs_final": final,
            "requests_per_s": round((len(all_good) + len(all_bad)) / load_s, 1),
        },
        "client_leaves": disconnect,
        "checks": checks,
        "passed": all(checks.values()),
        "command": "OMP_NUM_THREADS=1 python benchmarks/serve_load.py"
        + (" --quick" if args.quick else ""),
    }
    print(f"server start (models loaded): {startup_s:.1f} s; idle RSS {payload['rss_idle_mb']} MB")
    print(f"listening on {bound}")
    print(f"load average before {load_before}, after {load_after} ({os.cpu_count()} cores)")
    for k, v in round_trip.items():
        print(
            f"PGD-40 round trip {k}: median {v['median_ms']} ms, p95 {v['p95_ms']} ms "
            f"(server {v['server_median_ms']} ms, {v['passes']} passes, fooled={v['fooled']})"
        )
    print(
        f"load: {args.clients} clients x {load_s:.1f} s, {payload['load']['requests_per_s']} req/s"
    )
    for k, v in good.items():
        print(
            f"  {k:10s} {v['requests']:5d} requests  status {v['status']}  p95 {v['p95_ms_200']} ms"
        )
    nbad = len(all_bad)
    st_bad = Counter(r[0] for r in all_bad)
    print(f"  bad        {nbad:5d} requests  status {dict(sorted(st_bad.items()))}")
    print(
        f"  max running jobs {monitor['max_running']} (peak {final['peak_running']}, cap "
        f"{args.max_jobs}); max RSS {monitor['max_rss_mb']:.0f} MB (bound {args.rss_bound_mb:.0f})"
    )
    print(f"client hangs up on a long job: {disconnect}")
    for k, v in checks.items():
        print(f"  check {k}: {'ok' if v else 'FAILED'}")
    if out_path is not None:
        sys.path.insert(0, src)
        from advex._io import write_json

        write_json(out_path, payload)
        print(f"wrote {out_path}")
    return payload


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["passed"] else 1)
