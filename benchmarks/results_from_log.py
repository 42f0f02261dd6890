"""Results of a bench_sampler run that was stopped early, from the per-run lines it logged.

bench_sampler writes its results file only at the end; each finished run is logged on stderr as
`rep R VARIANT L<blocks> SCHEDULE SECONDS s  forwards [...]`. This turns those lines into a results
file marked `partial`, with every ratio that the finished runs support: against the MDLM-speed
row of the same schedule (its one repeat), against the fast fp32 row of the same repeat and
schedule, and against the same variant's all-heavy row of the same repeat.

  python benchmarks/results_from_log.py run.log --name sampler_cpu_partial --config cpu
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import get_config, machine_info, write_results  # noqa: E402

LINE = re.compile(r"^rep (\d+) (\S+)\s+L(\d+)\s+(\S+)\s+([\d.]+) s\s+forwards \[([\d, ]*)\]")


def parse(text: str) -> list[dict]:
    runs = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            runs.append(
                {
                    "rep": int(m[1]),
                    "variant": m[2],
                    "light_blocks": int(m[3]),
                    "schedule": m[4],
                    "seconds": float(m[5]),
                    "forwards": [int(v) for v in m[6].split(",") if v.strip()],
                }
            )
    return runs


def rows_from_runs(runs: list[dict], all_heavy: str) -> list[dict]:
    by = {}
    for r in runs:
        by.setdefault((r["variant"], r["schedule"]), {})[r["rep"]] = r
    rows = []
    for (variant, schedule), reps in by.items():
        times = [reps[k]["seconds"] for k in sorted(reps)]
        row = {
            "variant": variant,
            "schedule": schedule,
            "repeats": len(times),
            "times_s": times,
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "forwards": sum(next(iter(reps.values()))["forwards"]),
        }

        def ratios(base_variant, base_schedule, pair_by_repeat, variant=variant, schedule=schedule, reps=reps):
            base = by.get((base_variant, base_schedule))
            if not base or (base_variant, base_schedule) == (variant, schedule):
                return None
            if pair_by_repeat:
                values = [base[k]["seconds"] / reps[k]["seconds"] for k in reps if k in base]
            else:
                ref = statistics.median(b["seconds"] for b in base.values())
                values = [ref / reps[k]["seconds"] for k in reps]
            return (statistics.median(values), min(values), max(values)) if values else None

        for stem, args in (
            ("vs_mdlm_speed", ("mdlm-speed", schedule, False)),
            ("vs_fast_float32", ("fast-float32", schedule, True)),
            ("vs_own_all_heavy", (variant, all_heavy, True)),
        ):
            got = ratios(*args) if not (stem == "vs_fast_float32" and not variant.startswith("fast")) else None
            row[f"speedup_{stem}"], row[f"speedup_{stem}_min"], row[f"speedup_{stem}_max"] = got or (None,) * 3
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--all-heavy", default="H128", help="the all-heavy schedule spec (default H128, T = 128)")
    parser.add_argument("--command", default="", help="the stopped run's command line, recorded")
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    runs = parse(args.log.read_text())
    rows = rows_from_runs(runs, args.all_heavy)
    path = write_results(
        args.name,
        {
            "benchmark": "bench_sampler_partial",
            "partial": True,
            "command": args.command,
            "config": args.config,
            "machine": machine_info(get_config(args.config)),
            "runs": runs,
        },
        rows,
    )
    for r in rows:
        print(r)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
