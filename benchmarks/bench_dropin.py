"""Drop-in: MDLM's own sampler against the swap, and a live module's own forward against the fast path.

The module has MDLM's structure and forward (tests/helpers/mdlm_structure.py, the stand-in for MDLM's classes
that the tests use), with random weights. Four variants, in interleaved repeats, each timing one
call that makes ``batch`` samples:

* ``mdlm_own_sample``: the module's own ``_sample`` (MDLM's ddpm_cache loop, torch RNG);
* ``patched_sample``: the same call after ``mdlm_fast.patch(module)``;
* ``callable_path``: ``mdlm_fast.sample`` on the module's forward as a plain callable (every
  position through the head, what a live object got before);
* ``live_fast_path``: ``mdlm_fast.sample(module)`` (fused head at revealed positions, pruned last
  block, on the module's own tensors).

Speedups are ratios of medians inside one run; the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_profile, summary, write_results  # noqa: E402

import mdlm_fast as mf  # noqa: E402

STRUCTURE = Path(__file__).resolve().parent.parent / "tests" / "helpers" / "mdlm_structure.py"


def _structure():
    spec = importlib.util.spec_from_file_location("_mdlm_structure", STRUCTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--name", default="dropin_cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    s = _structure()
    config = s.hydra_config(
        hidden=args.hidden, heads=4, blocks=args.blocks, cond=64, length=args.length, batch=args.batch, steps=args.steps
    )
    module = s.Diffusion(config, args.vocab)
    s.randomize_(module.backbone, 0, std=0.05)
    module.eval()
    own_forward = mf.Denoiser(
        lambda x, sigma: module(x, sigma), vocab_size=args.vocab, mask_index=module.mask_index, time_conditioning=False
    )
    common = dict(steps=args.steps, batch_size=args.batch, length=args.length)

    def patched():
        with mf.patch(module, seed=0):
            module._sample()

    variants = {
        "mdlm_own_sample": lambda: module._sample(),
        "patched_sample": patched,
        "callable_path": lambda: mf.sample(own_forward, seed=0, **common),
        "live_fast_path": lambda: mf.sample(module, seed=0, **common),
    }
    for fn in variants.values():  # warm-up
        fn()
    times = {name: [] for name in variants}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        load.append(os.getloadavg()[0])
    live = mf.sample(module, seed=0, **common).stats
    unfused = mf.sample(own_forward, seed=0, **common).stats
    rows = [{"variant": name, **summary(t), "times_s": t} for name, t in times.items()]
    med = {r["variant"]: r["median_s"] for r in rows}
    payload = {
        "settings": vars(args),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "loadavg_1min": load,
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_profile(),  # CPU model, flags and the GEMM / read peaks, measured now
        "speedup_patched_vs_mdlm_own_sample": med["mdlm_own_sample"] / med["patched_sample"],
        "speedup_live_fast_path_vs_callable_path": med["callable_path"] / med["live_fast_path"],
        "head_positions": {"live_fast_path": live.head_positions, "callable_path": unfused.head_positions},
    }
    path = write_results(args.name, payload, rows)
    for r in rows:
        print(f"{r['variant']:>16}: median {r['median_s']:.3f} s (spread {r['spread']:.1%})")
    print(
        f"patched / MDLM's own _sample: {payload['speedup_patched_vs_mdlm_own_sample']:.2f}x; live fast path / "
        f"callable: {payload['speedup_live_fast_path_vs_callable_path']:.2f}x; load {load}; -> {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
