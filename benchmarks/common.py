"""Shared pieces of the benchmark scripts: configs, random-weight models, timing, result files.

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""
from __future__ import annotations

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
        raise SystemExit(f"the {name!r} config runs on a CUDA GPU (L {config.length}, T {config.steps}, "
                         f"{config.dtype}); none is visible on this machine")
    return config


def random_model(config: BenchConfig, n_blocks: int, seed: int) -> mf.DiT:
    """A random-weight DiT of the config's widths: timing does not depend on the weights.

    The `embedded` config takes the embedded heavy / light models instead (by block count)."""
    if config.name == "embedded" and n_blocks in (config.heavy_blocks, config.light_blocks):
        which = "heavy" if n_blocks == config.heavy_blocks else "light"
        return mf.load_denoiser(f"embedded:{which}").to(device=config.device, dtype=config.dtype).eval()
    model = mf.DiT(mf.DiTConfig(hidden_dim=config.hidden_dim, n_heads=config.n_heads, n_blocks=n_blocks,
                                cond_dim=128, vocab_size=config.vocab_size, model_length=config.length))
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
        self._handles = [model.blocks[0].register_forward_pre_hook(self._enter),
                         model.blocks[-1].register_forward_hook(self._leave)]

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
    return {"median_s": med, "min_s": min(times), "max_s": max(times),
            "spread": (max(times) - min(times)) / (2 * med) if med else 0.0, "repeats": len(times)}


def machine_info(config: BenchConfig) -> dict:
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        revision = ""
    info = {
        "machine": platform.node(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "mdlm_fast": mf.__version__, "git_revision": revision, "dtype": str(config.dtype).replace("torch.", ""),
        "device": config.device, "build": mf.build_info(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
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
