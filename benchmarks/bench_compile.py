"""Does a torch.compile'd trunk pay on this machine? Compile time included, with the changing row
counts of reveal-first sampling.

The fast sampler calls the trunk with 1..B active rows and a last-block query width that changes
every step; the trunk is compiled with dynamic shapes (`dynamic=True`), so those changes do not
recompile per step (the number of graphs compiled is reported). Three timings of the whole fast
sampler, same seed: eager; the first compiled run (compilation included); a second compiled run
(steady state). The compiled trunk pays for a process that samples at least `break_even_runs`
times (compile cost / steady-state saving per run).

  python benchmarks/bench_compile.py --config embedded      # the main job's size
  python benchmarks/bench_compile.py --config cpu           # d 768, 12 blocks
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


from common import machine_info, parse_run_arguments, random_model, write_results  # noqa: E402

import mdlm_fast as mf  # noqa: E402
from mdlm_fast.models.compute_dtype import cast_module, resolve_dtype  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="embedded")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--schedule", default="heavy")
    args, config = parse_run_arguments(parser, argv)
    choice = resolve_dtype(args.dtype, config.device)
    heavy = cast_module(random_model(config, config.heavy_blocks, seed=0), choice.dtype)
    light = cast_module(random_model(config, config.light_blocks, seed=1), choice.dtype)
    kw = dict(
        steps=config.steps,
        batch_size=config.batch_size,
        length=config.length,
        schedule=args.schedule,
        sampler="fast",
        seed=0,
        device=config.device,
    )
    mf.sample([heavy, light], **{**kw, "steps": 4})  # warm-up
    eager = mf.sample([heavy, light], **kw)
    import torch._dynamo

    torch._dynamo.reset()
    for model in (heavy, light):
        model.trunk = torch.compile(model.trunk, dynamic=True)
    start = time.perf_counter()
    mf.sample([heavy, light], **kw)  # the first call compiles
    first_s = time.perf_counter() - start
    steady = mf.sample([heavy, light], **kw)
    graphs = torch._dynamo.utils.counters["stats"].get("unique_graphs", None)
    saving = eager.stats.wall_time_s - steady.stats.wall_time_s
    compile_s = first_s - steady.stats.wall_time_s
    row = {
        "config": config.name,
        "dtype": choice.name,
        "schedule": args.schedule,
        "eager_s": eager.stats.wall_time_s,
        "first_compiled_s": first_s,
        "steady_compiled_s": steady.stats.wall_time_s,
        "compile_overhead_s": compile_s,
        "steady_speedup": eager.stats.wall_time_s / steady.stats.wall_time_s,
        "first_run_speedup": eager.stats.wall_time_s / first_s,
        "graphs_compiled": graphs,
        "break_even_runs": compile_s / saving if saving > 0 else None,
        "tokens_equal_eager": bool(torch.equal(eager.tokens, steady.tokens)),
    }
    path = write_results(
        args.name or f"compile_{config.name}", {"benchmark": "bench_compile", "machine": machine_info(config)}, [row]
    )
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
