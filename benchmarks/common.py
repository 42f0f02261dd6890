"""Shared pieces of the benchmark scripts: configs, random-weight models, timing, result files.

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import mdlm_fast as mf
from mdlm_fast.util.atomic import write_csv, write_json

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class BenchConfig:
    name: str
    hidden_dim: int
    n_heads: int
    heavy_blocks: int
    light_blocks: int
    vocab_size: int
    length: int
    steps: int
    batch_size: int
    dtype: torch.dtype
    device: str


CONFIGS = {
    # design §12: the paper's widths and vocabulary, so the head-vs-blocks balance is the paper's
    "cpu": BenchConfig("cpu", 768, 12, 12, 4, 50258, 128, 128, 4, torch.float32, "cpu"),
    "paper": BenchConfig("paper", 768, 12, 12, 4, 50258, 1024, 1000, 8, torch.bfloat16, "cuda"),
    # the main job's size: `mdlm-fast generate` defaults, on the embedded (trained) models
    "embedded": BenchConfig("embedded", 256, 4, 8, 2, 8193, 256, 256, 4, torch.float32, "cpu"),
    # a seconds-long smoke configuration for tests of the scripts themselves
    "tiny": BenchConfig("tiny", 64, 4, 3, 1, 503, 32, 32, 2, torch.float32, "cpu"),
}


def get_config(name: str) -> BenchConfig:
    if name not in CONFIGS:
        raise SystemExit(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
    config = CONFIGS[name]
    if config.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"the {name!r} config runs on a CUDA GPU (L {config.length}, T {config.steps}, "
            f"{config.dtype}); none is visible on this machine"
        )
    return config


def random_model(config: BenchConfig, n_blocks: int, seed: int) -> mf.DiT:
    """A random-weight DiT of the config's widths: timing does not depend on the weights.

    The `embedded` config takes the embedded heavy / light models instead (by block count)."""
    if config.name == "embedded" and n_blocks in (config.heavy_blocks, config.light_blocks):
        which = "heavy" if n_blocks == config.heavy_blocks else "light"
        return mf.load_denoiser(f"embedded:{which}").to(device=config.device, dtype=config.dtype).eval()
    model = mf.DiT(
        mf.DiTConfig(
            hidden_dim=config.hidden_dim,
            n_heads=config.n_heads,
            n_blocks=n_blocks,
            cond_dim=128,
            vocab_size=config.vocab_size,
            model_length=config.length,
        )
    )
    model.init_random_(seed)
    return model.to(device=config.device, dtype=config.dtype).eval()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


class BlockTimer:
    """Accumulates the wall time from entering a DiT's first block to leaving its last (eq. 4).

    On a GPU each hook synchronizes, which perturbs the timing it measures: use it in runs that
    report the breakdown, not in the runs that report speed.
    """

    def __init__(self, model: mf.DiT, device: str):
        self.device, self.total_s, self._start = device, 0.0, 0.0
        self._handles = [
            model.blocks[0].register_forward_pre_hook(self._enter),
            model.blocks[-1].register_forward_hook(self._leave),
        ]

    def _enter(self, module, args):
        synchronize(self.device)
        self._start = time.perf_counter()

    def _leave(self, module, args, output):
        synchronize(self.device)
        self.total_s += time.perf_counter() - self._start

    def remove(self):
        for handle in self._handles:
            handle.remove()


def summary(times: list[float]) -> dict:
    """Median and spread (min, max, relative half-range) of repeated timings."""
    med = statistics.median(times)
    return {
        "median_s": med,
        "min_s": min(times),
        "max_s": max(times),
        "spread": (max(times) - min(times)) / (2 * med) if med else 0.0,
        "repeats": len(times),
    }


def cpu_model_and_flags() -> dict:
    """The CPU's model name and feature flags (from /proc/cpuinfo where there is one)."""
    model, flags = platform.processor() or platform.machine(), []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags" and value.strip():
                flags = value.split()
                break
    return {"cpu_model": model, "cpu_flags": flags}


def _best_rate(fn, work: float, device: str, min_s: float = 0.4, max_repeats: int = 20) -> float:
    """``work`` units per second of the fastest of repeated calls; a first call slower than
    ``min_s`` (a dtype the CPU only emulates) is the measurement, to keep the run short."""
    best = timed(fn, device)  # also the warm-up
    spent, n = best, 0
    while spent < min_s and n < max_repeats:
        t = timed(fn, device)
        best, spent, n = min(best, t), spent + t, n + 1
    return work / best


def measure_peaks(device: str = "cpu", gemm_n: int = 1024, read_mb: int = 256) -> dict:
    """The machine's own yardsticks, measured in this run at this run's thread count: the GFLOP/s
    of a large bf16 and fp32 GEMM and the read bandwidth (GB/s, a sum over a buffer far larger than
    the caches). Seconds do not travel between machines; fractions of these do."""
    peaks = {"gemm_n": gemm_n, "threads": torch.get_num_threads()}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(gemm_n, gemm_n, device=device).to(dtype)
        b = torch.randn(gemm_n, gemm_n, device=device).to(dtype)
        name = str(dtype).replace("torch.", "")
        peaks[f"gemm_{name}_gflop_per_s"] = _best_rate(lambda a=a, b=b: a @ b, 2 * gemm_n**3 / 1e9, device)
    buf = torch.ones(read_mb * 2**20 // 4, device=device)
    peaks["read_gb_per_s"] = _best_rate(lambda: buf.sum(), buf.numel() * 4 / 1e9, device)
    return peaks


def machine_profile(device: str = "cpu", *, with_peaks: bool = True) -> dict:
    """CPU model and flags, threads, load average and (unless turned off) the measured peaks."""
    info = {
        **cpu_model_and_flags(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
    }
    if with_peaks:
        info["peaks"] = measure_peaks(device)
    return info


def add_throughput(rows: list[dict], peaks: dict) -> None:
    """Each row's executed GFLOP/s (executed GFLOPs over its median seconds) and its fraction of the
    measured GEMM peak of the row's dtype."""
    for row in rows:
        if not row.get("executed_gflops") or not row.get("median_s"):
            continue
        rate = row["executed_gflops"] / row["median_s"]
        peak = peaks.get(f"gemm_{row.get('dtype', 'float32')}_gflop_per_s")
        row["executed_gflop_per_s"] = rate
        row["fraction_of_gemm_peak"] = rate / peak if peak else None


def machine_info(config: BenchConfig) -> dict:
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        revision = ""
    info = {
        "machine": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "mdlm_fast": mf.__version__,
        "git_revision": revision,
        "dtype": str(config.dtype).replace("torch.", ""),
        "device": config.device,
        "build": mf.build_info(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        **machine_profile(config.device),
    }
    if config.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def parse_run_arguments(parser, argv):
    """Adds the flags every config-driven benchmark shares (--threads, --name), parses, applies
    --threads, and returns ``(args, config)``."""
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--name", default=None, help="results file stem")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, get_config(args.config)


def write_results(name: str, payload: dict, rows: list[dict]) -> Path:
    """Results as JSON (everything) and CSV (the rows), each written atomically."""
    json_path = RESULTS / f"{name}.json"  # an absolute `name` puts the files elsewhere
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(json_path, {**payload, "rows": rows}, indent=1)
    if rows:
        write_csv(json_path.with_suffix(".csv"), rows, cell=_fmt)
    return json_path


def _fmt(value) -> str:
    if isinstance(value, (list, tuple)):  # one CSV cell: per-repeat values separated by ';'
        return ";".join(_fmt(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)
