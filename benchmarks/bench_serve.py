"""Serving benchmark: a bounded load generator on loopback against two live servers in one run.

The engine server (``--engine packed`` or ``sequential``) and the baseline server (one ``sample()``
per request in arrival order) run as subprocesses of ``mdlm-fast serve`` on the embedded models;
at each client count (default 1, 4, 16, 64; n = 1 per request) the same requests go to both,
interleaved over repeats (engine, baseline, baseline, engine, ...). Reported per server and client
count: samples/s (median and spread over repeats), p50/p95/p99 latency (over all repeats' requests)
and the engine/baseline ratios; beside them the offline engine (every request submitted at once,
``run_until_done()``, in this process) at the same row budget. The load average is recorded.

Usage: python benchmarks/bench_serve.py --engine packed [--clients 1,4,16,64] [--requests 16]
       [--length 32] [--steps T] [--repeats 2] [--max-rows R] [--threads 1] [--name serve_packed]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import torch  # noqa: E402
from common import machine_profile, summary, write_results  # noqa: E402

import mdlm_fast as mf  # noqa: E402
from mdlm_fast.sampling.engine import Request  # noqa: E402
from mdlm_fast.serve.engines import build_engine  # noqa: E402

START_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 600


class ServerProcess:
    """``mdlm-fast serve`` on a free loopback port, stopped with SIGTERM."""

    def __init__(self, engine: str, args) -> None:
        argv = [
            sys.executable,
            "-m",
            "mdlm_fast.cli",
            "serve",
            "--port",
            "0",
            "--engine",
            engine,
            "--max-n",
            "1",
            "--max-queue",
            "4096",
            "--threads",
            str(args.threads),
            "--dtype",
            args.dtype,
        ]
        if args.max_rows:
            argv += ["--max-rows", str(args.max_rows)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.engine = engine
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        line = ""
        while "listening on" not in line:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the {self.engine} server did not start: {line}{self.proc.stderr.read()}")
        self.url = line.split("listening on ")[1].split()[0]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def body(i: int, args) -> dict:
    out = {"model": "mdlm-fast", "prompt": "", "max_tokens": args.length, "n": 1, "seed": 1000 + i}
    if args.steps:
        out["steps"] = args.steps
    return out


async def load(url: str, clients: int, requests: int, args) -> dict:
    """``requests`` completions from ``clients`` concurrent clients; wall time and each latency."""
    latencies: list[float] = []
    errors = 0
    issued = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in issued:
            start = time.perf_counter()
            response = await http.post(url + "/v1/completions", json=body(i, args))
            if response.status_code != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    return {"wall_s": wall, "latencies_s": latencies, "errors": errors}


def offline(engine, requests: int, args) -> float:
    """Wall time of the offline engine: every request submitted at once, then run_until_done()."""
    start = time.perf_counter()
    for i in range(requests):
        engine.submit(
            Request(n=1, length=args.length, steps=args.steps or args.length, seed=1000 + i, schedule="sandwich:0.25")
        )
    done = engine.run_until_done()
    assert len(done) == requests and all(c.error is None for c in done), [c.error for c in done if c.error]
    return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)  # linear interpolation between closest ranks
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=["packed", "sequential"], default="packed")
    p.add_argument("--clients", default="1,4,16,64", help="concurrent clients per level (default 1,4,16,64)")
    p.add_argument("--requests", type=int, default=16, help="requests per level, at least the clients (default 16)")
    p.add_argument("--length", type=int, default=32, help="positions per sample (default 32)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the server's, = the length)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats (default 2)")
    p.add_argument("--max-rows", type=int, default=None, help="the engine's row budget (default: per device)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of each server and of the offline engine (default 1: on a busy machine, "
        "threads of one process spin waiting on each other)",
    )
    p.add_argument("--name", default=None, help="results file stem (default serve_<engine>)")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    servers = {"engine": ServerProcess(args.engine, args), "baseline": ServerProcess("sequential", args)}
    try:  # both servers start while this process loads its own models
        models = [mf.load_denoiser("embedded:heavy"), mf.load_denoiser("embedded:light")]
        offline_engine = build_engine(args.engine, models, dtype=args.dtype, max_rows=args.max_rows, max_queue=1 << 16)
        for server in servers.values():
            server.wait_ready()
        for server in servers.values():  # warm-up: first forwards of each model
            asyncio.run(load(server.url, 1, 1, args))
        offline(offline_engine, 1, args)
        runs: dict[tuple[str, int], list[dict]] = {}
        for repeat in range(args.repeats):
            order = ["engine", "baseline"] if repeat % 2 == 0 else ["baseline", "engine"]
            for clients in levels:
                requests = max(args.requests, clients)
                for which in order:
                    run = asyncio.run(load(servers[which].url, clients, requests, args))
                    runs.setdefault((which, clients), []).append(run)
                    print(
                        f"repeat {repeat} {which:8s} clients {clients:3d}: {requests / run['wall_s']:.3f} samples/s "
                        f"({run['errors']} errors), load {os.getloadavg()[0]:.1f}",
                        file=sys.stderr,
                    )
                runs.setdefault(("offline", clients), []).append(
                    {"wall_s": offline(offline_engine, requests, args), "latencies_s": [], "errors": 0}
                )
        exit_codes = {which: server.stop() for which, server in servers.items()}
    finally:
        for server in servers.values():
            if server.proc.poll() is None:
                server.proc.kill()

    rows = []
    for (which, clients), repeats in runs.items():
        requests = max(args.requests, clients)
        throughput = [requests / r["wall_s"] for r in repeats]
        latencies = [x for r in repeats for x in r["latencies_s"]]
        stats = summary(throughput)
        rows.append(
            {
                "server": which,
                "engine": args.engine if which != "baseline" else "sequential",
                "clients": clients,
                "requests": requests,
                "samples_per_s": stats["median_s"],
                "samples_per_s_repeats": throughput,
                "spread": stats["spread"],
                "p50_s": percentile(latencies, 0.50),
                "p95_s": percentile(latencies, 0.95),
                "p99_s": percentile(latencies, 0.99),
                "errors": sum(r["errors"] for r in repeats),
            }
        )
    by = {(r["server"], r["clients"]): r for r in rows}
    ratios = []
    for clients in levels:
        engine, baseline, off = by[("engine", clients)], by[("baseline", clients)], by[("offline", clients)]
        ratios.append(
            {
                "clients": clients,
                "throughput_engine_over_baseline": engine["samples_per_s"] / baseline["samples_per_s"],
                "throughput_engine_over_offline": engine["samples_per_s"] / off["samples_per_s"],
                "p50_engine_over_baseline": engine["p50_s"] / baseline["p50_s"],
                "p95_engine_over_baseline": engine["p95_s"] / baseline["p95_s"],
            }
        )
    payload = {
        "benchmark": "serve",
        "engine": args.engine,
        "models": "embedded heavy/light, sandwich:0.25",
        "length": args.length,
        "steps": args.steps or args.length,
        "repeats": args.repeats,
        "max_rows": offline_engine.max_rows,
        "threads": args.threads,
        "dtype": args.dtype,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "server_exit_codes": exit_codes,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_profile(),  # CPU model, flags and the GEMM / read peaks, measured now
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "ratios": ratios,
    }
    path = write_results(args.name or f"serve_{args.engine}", payload, rows)
    for r in ratios:
        print(
            f"clients {r['clients']:3d}: engine/baseline throughput {r['throughput_engine_over_baseline']:.3f}, "
            f"engine/offline {r['throughput_engine_over_offline']:.3f}, p50 ratio "
            f"{r['p50_engine_over_baseline']:.3f}, p95 ratio {r['p95_engine_over_baseline']:.3f}"
        )
    print(f"results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
