"""Thread settings under contention: the main job and the `cpu` config with the default thread
setting, 1 thread and 2 threads, on a quiet machine, beside one busy process pinned to one core, and
at a load of about 4 (a 2-thread torch matmul loop plus two busy loops).

Every measurement is a fresh process (the OpenMP wait policy is read when torch loads), timed from
start to exit; the sampling time inside it is recorded too. Repeats are interleaved (every repeat
walks all variants, odd repeats in reverse order) and reported as medians. Competitors are started
and stopped by this script, each also ends on its own after --competitor-limit seconds, so none
outlives an interrupted run. The load average is recorded before and after every measurement: on a
shared machine "quiet" means "no competitor of ours", not an idle machine.

  python benchmarks/bench_threads.py                      # all conditions, both jobs (~30 min at load 10)
  python benchmarks/bench_threads.py --jobs main --repeats 2   # the committed run (19 min at load 10)
  python benchmarks/bench_threads.py --conditions quiet --jobs main --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# The variants: the command line's default (passive wait, torch's thread count), explicit 1 and 2
# threads, and the default before the passive wait (libgomp's spin count, 300000, set explicitly
# so that mdlm-fast leaves it alone).
VARIANTS = {
    "default": ({}, None),
    "threads-1": ({}, 1),
    "threads-2": ({}, 2),
    "spin-default": ({"GOMP_SPINCOUNT": "300000"}, None),
}
MAIN_JOB = ["generate", "--batch-size", "2", "--length", "64", "--steps", "64", "--judge", "none", "--json"]

BUSY_LOOP = "import time\nend = time.time() + {limit}\nwhile time.time() < end: pass\n"
MATMUL_LOOP = (
    "import time, torch\ntorch.set_num_threads(2)\na = torch.randn(512, 512)\n"
    "end = time.time() + {limit}\nwhile time.time() < end: a @ a\n"
)


CPU_STEPS, CPU_BATCH = 4, 1


def _cpu_config():
    import dataclasses

    sys.path.insert(0, str(HERE))
    from common import CONFIGS

    return dataclasses.replace(CONFIGS["cpu"], steps=CPU_STEPS, batch_size=CPU_BATCH)


def _save_cpu_model(directory: Path) -> Path:
    """The `cpu` config's heavy model, made once and loaded by every measurement (a random init of
    its size takes longer than the sampling measured)."""
    from common import random_model

    import mdlm_fast as mf

    config = _cpu_config()
    return mf.save_denoiser(random_model(config, config.heavy_blocks, seed=0), directory / "cpu-heavy")


def _worker_cpu_config(model_dir: str, threads: int | None) -> None:
    """The `cpu` config of bench_sampler.py at a reduced size (heavy only, CPU_STEPS steps, batch
    CPU_BATCH); prints the sampling time as JSON."""
    import torch

    import mdlm_fast as mf

    if threads:
        torch.set_num_threads(threads)
    config = _cpu_config()
    model = mf.load_denoiser(model_dir)
    result = mf.sample(
        [model],
        steps=config.steps,
        batch_size=config.batch_size,
        length=config.length,
        schedule="heavy",
        seed=0,
        dtype="auto",
        progress=False,
    )
    print(json.dumps({"sampling_s": result.stats.wall_time_s, "threads": torch.get_num_threads()}))


def _job_command(job: str, threads: int | None, cpu_model: Path | None) -> list[str]:
    if job == "main":
        return [sys.executable, "-m", "mdlm_fast.cli", *MAIN_JOB, *(["--threads", str(threads)] if threads else [])]
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker-cpu-config",
        str(cpu_model),
        *(["--worker-threads", str(threads)] if threads else []),
    ]


def _environment(extra: dict) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return {**env, **extra}


def _library_environment(job: str, variant: str, extra: dict) -> dict:
    # The cpu-config worker is a library user: it follows the README's advice (the passive policy
    # in the environment) except in the variant that measures the old default.
    if job == "cpu" and variant != "spin-default":
        return {"OMP_WAIT_POLICY": "PASSIVE", **extra}
    return extra


def measure(job: str, variant: str, timeout_s: float, cpu_model: Path | None = None) -> dict:
    extra, threads = VARIANTS[variant]
    env = _environment(_library_environment(job, variant, extra))
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    try:
        out = subprocess.run(
            _job_command(job, threads, cpu_model), env=env, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT
        )
        wall = time.perf_counter() - start
        if out.returncode != 0:
            raise RuntimeError(f"{job}/{variant} failed: {out.stderr.strip().splitlines()[-1:]}")
        report = json.loads(out.stdout.strip().splitlines()[-1])
        sampling = report["stats"]["wall_time_s"] if job == "main" else report["sampling_s"]
        timed_out = False
    except subprocess.TimeoutExpired:
        wall, sampling, timed_out = timeout_s, None, True
    return {
        "wall_s": wall,
        "sampling_s": sampling,
        "timed_out": timed_out,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


@contextlib.contextmanager
def competitors(condition: str, limit_s: float):
    """Start the condition's competitor processes; always stop them."""
    procs = []
    try:
        if condition == "busy-core":
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", BUSY_LOOP.format(limit=limit_s)],
                    preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
                )
            )
        elif condition == "load-4":
            env = _environment({})
            procs.append(subprocess.Popen([sys.executable, "-c", MATMUL_LOOP.format(limit=limit_s)], env=env))
            procs += [subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(limit=limit_s)]) for _ in range(2)]
        time.sleep(2.0 if procs else 0.0)  # let the competitors reach their loops
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGKILL)
            p.wait()


def summarize(runs: list[dict]) -> dict:
    walls = [r["wall_s"] for r in runs]
    sampling = [r["sampling_s"] for r in runs if r["sampling_s"] is not None]
    return {
        "median_wall_s": statistics.median(walls),
        "min_wall_s": min(walls),
        "max_wall_s": max(walls),
        "median_sampling_s": statistics.median(sampling) if sampling else None,
        "timed_out": sum(r["timed_out"] for r in runs),
        "repeats": len(runs),
        "load_before": [r["load_before"] for r in runs],
        "load_after": [r["load_after"] for r in runs],
        "wall_s": walls,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", default="quiet,busy-core,load-4")
    parser.add_argument("--jobs", default="main,cpu", help="main (mdlm-fast generate, small) and/or cpu")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--cpu-variants",
        default="default,threads-1,spin-default",
        help="of the cpu-config job (default: threads-2 left out, the default's own count on 2 cores)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="of the main job")
    parser.add_argument("--cpu-repeats", type=int, default=2, help="of the cpu-config job")
    parser.add_argument("--timeout", type=float, default=90.0, help="per measurement; a run past it counts as it")
    parser.add_argument(
        "--competitor-limit", type=float, default=900.0, help="seconds after which a competitor ends on its own"
    )
    parser.add_argument("--name", default="threads_cpu")
    parser.add_argument("--worker-cpu-config", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_cpu_config:
        _worker_cpu_config(args.worker_cpu_config, args.worker_threads)
        return

    # SIGTERM unwinds like Ctrl-C, so that the competitors' finally block runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.path.insert(0, str(HERE))
    from common import machine_profile  # noqa: E402  (imports torch: the parent's policy does not matter)

    rows, started = [], time.time()
    variants, jobs = args.variants.split(","), args.jobs.split(",")
    scratch = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    from common import write_results  # noqa: E402

    def save(rows, complete):
        # After every condition and job, so that a stopped run keeps what it measured.
        payload = {
            "benchmark": "bench_threads",
            "main_job": ["mdlm-fast", *MAIN_JOB],
            "complete": complete,
            "cpu_job": f"bench_sampler cpu config, heavy only, {CPU_STEPS} steps, batch {CPU_BATCH}, dtype auto",
            "variants": {k: {"env": v[0], "threads": v[1]} for k, v in VARIANTS.items()},
            "total_s": time.time() - started,
            "command": sys.argv[1:],
            "note": "shared machine: 'quiet' has no competitor of ours; other users' load is in load_before/after",
            "machine": profile,
        }
        return write_results(args.name, payload, rows)

    # Measured once before the conditions, with no competitor of ours running: the yardsticks of this run.
    profile = machine_profile()
    try:
        cpu_model = _save_cpu_model(scratch) if "cpu" in jobs else None
        rows = _run_conditions(args, variants, jobs, cpu_model, lambda rows: save(rows, False))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"results: {save(rows, True)}")


def _run_conditions(args, all_variants, jobs, cpu_model, save) -> list[dict]:
    rows = []
    for condition in args.conditions.split(","):
        for job in jobs:
            variants = all_variants if job == "main" else args.cpu_variants.split(",")
            runs = {v: [] for v in variants}
            with competitors(condition, args.competitor_limit) as pids:
                for repeat in range(args.repeats if job == "main" else args.cpu_repeats):
                    for variant in variants if repeat % 2 == 0 else variants[::-1]:
                        runs[variant].append(measure(job, variant, args.timeout, cpu_model))
            explicit = [v for v in variants if v.startswith("threads-")]
            best = min((statistics.median([r["wall_s"] for r in runs[v]]) for v in explicit), default=float("nan"))
            best_sampling = min(
                (statistics.median([r["sampling_s"] or float("inf") for r in runs[v]]) for v in explicit),
                default=float("nan"),
            )
            for variant in variants:
                row = {
                    "condition": condition,
                    "job": job,
                    "variant": variant,
                    "competitors": len(pids),
                    **summarize(runs[variant]),
                }
                row["vs_best_explicit"] = row["median_wall_s"] / best
                row["sampling_vs_best_explicit"] = (
                    row["median_sampling_s"] / best_sampling if row["median_sampling_s"] else None
                )
                rows.append(row)
                print(
                    f"{condition:10s} {job:5s} {variant:13s} {row['median_wall_s']:7.2f} s "
                    f"(sampling {row['median_sampling_s'] or float('nan'):6.2f} s) {row['vs_best_explicit']:5.2f}x best"
                    f"  load {row['load_before'][0]:.1f}->{row['load_after'][-1]:.1f}",
                    flush=True,
                )
            save(rows)
    return rows


if __name__ == "__main__":
    main()
