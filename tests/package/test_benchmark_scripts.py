"""The benchmark scripts run end to end on the seconds-long `tiny` config and write sound results."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks"


def _run(script, tmp_path, *args):
    out = tmp_path / "result"
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--name", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.with_suffix(".json").read_text()), proc


def test_bench_sampler_reports_savings_against_each_variants_all_heavy_row(tmp_path):
    data, _ = _run(
        "bench_sampler.py",
        tmp_path,
        "--config",
        "tiny",
        "--fractions",
        "0,0.5,1",
        "--repeats",
        "1",
        "--dtypes",
        "bfloat16,float32",
    )
    rows = {(r["variant"], r["light_fraction"]): r for r in data["rows"]}
    variants = ("mdlm-speed", "reference-fp64", "fast-bfloat16", "fast-float32")
    assert set(rows) == {(v, f) for v in variants for f in (0.0, 0.5, 1.0)}
    # MDLM speed leads the table: the reference in MDLM's float32 precision with fp32 weights
    assert data["rows"][0]["variant"] == "mdlm-speed"
    assert (rows[("mdlm-speed", 0.0)]["precision"], rows[("mdlm-speed", 0.0)]["dtype"]) == ("fp32-mdlm", "float32")
    assert rows[("reference-fp64", 0.0)]["precision"] == "fp64"
    assert rows[("fast-bfloat16", 0.0)]["dtype"] == "bfloat16" and rows[("fast-float32", 0.0)]["dtype"] == "float32"
    for v in variants:
        assert rows[(v, 0.0)]["speedup_vs_own_all_heavy"] == 1.0
        assert rows[(v, 1.0)]["predicted_saving"] == pytest.approx(1 - 1 / 3)
    for v in variants[1:]:  # every other row against MDLM speed, from the times of the same schedule
        r = rows[(v, 0.5)]
        assert r["speedup_vs_mdlm_speed"] == pytest.approx(rows[("mdlm-speed", 0.5)]["median_s"] / r["median_s"])
    assert rows[("mdlm-speed", 0.0)]["speedup_vs_mdlm_speed"] is None
    bf16 = rows[("fast-bfloat16", 1.0)]
    assert bf16["speedup_vs_fast_float32"] == pytest.approx(rows[("fast-float32", 1.0)]["median_s"] / bf16["median_s"])
    assert rows[("reference-fp64", 1.0)]["speedup_vs_fast_float32"] is None
    # the fast sampler projects far fewer head rows than the mdlm sampler at the same schedule
    assert rows[("fast-float32", 0.0)]["head_positions"] < rows[("mdlm-speed", 0.0)]["head_positions"] / 4
    assert data["machine"]["torch"] and data["machine"]["git_revision"] is not None
    assert (tmp_path / "result.csv").exists()


def test_ablation_switches_mechanisms_on_one_at_a_time_from_mdlm_speed(tmp_path):
    pytest.importorskip("matplotlib", reason="checks the PNG plots: pip install -e .[test]")
    data, _ = _run(
        "bench_sampler.py", tmp_path, "--config", "tiny", "--ablation", "--repeats", "2", "--reference-repeats", "1"
    )
    rows = data["rows"]
    assert data["benchmark"] == "bench_ablation"
    assert [r["variant"] for r in rows[:6]] == [
        "mdlm-speed",
        "fast-nothing",
        "+skip-noop-steps",
        "+skip-rows",
        "+fused-head",
        "+pruned-last-block",
    ]
    assert rows[0]["repeats"] == 1 and all(r["repeats"] == 2 for r in rows[1:])
    switched = [sum(r["options"].values()) for r in rows[1:6]]
    assert switched == [0, 1, 2, 3, 4]
    # each mechanism removes work: rows, then head positions, then the last block's queries
    rows_run = [r["rows_run"] for r in rows[1:]]
    heads = [r["head_positions"] for r in rows[1:]]
    flops = [r["executed_gflops"] for r in rows[1:]]
    assert rows_run[0] > rows_run[1] > rows_run[2] and heads[2] > heads[3]
    assert all(a > b for a, b in zip(flops[:4], flops[1:5])) and flops[4] == flops[5]
    assert rows[-1]["dtype"] == rows[-1]["variant"].lstrip("+")
    for r in rows[1:]:
        assert r["speedup_vs_previous"] > 0 and r["speedup_vs_mdlm_speed"] > 0
    proc = subprocess.run(
        [sys.executable, str(BENCH / "plot_results.py"), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "result.png").stat().st_size > 1000
    proc = subprocess.run(
        [sys.executable, str(BENCH / "report.py"), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.count("| + ") == 5


def test_light_sweep_shares_one_all_heavy_row(tmp_path):
    data, _ = _run(
        "bench_sampler.py",
        tmp_path,
        "--config",
        "tiny",
        "--light-sweep",
        "--repeats",
        "1",
        "--samplers",
        "fast",
        "--dtypes",
        "float32",
    )
    rows = data["rows"]
    assert [(r["light_blocks"], r["light_fraction"]) for r in rows] == [(0, 0.0), (1, 0.25)]
    assert rows[1]["predicted_saving"] == pytest.approx(0.25 * (1 - 1 / 3), abs=0.02)
    assert (
        0 < rows[0]["block_fraction"] < 1 and rows[0]["eq4_bound_realized_over_predicted"] == rows[0]["block_fraction"]
    )


def test_bench_breakdown_reports_block_fractions_and_the_eq4_bound(tmp_path):
    data, _ = _run("bench_breakdown.py", tmp_path, "--config", "tiny", "--repeats", "1")
    for row in data["rows"]:
        assert 0 < row["heavy_block_fraction"] < 1 and 0 < row["light_block_fraction"] < 1
        assert row["bound_saving_all_light"] == pytest.approx(row["heavy_block_fraction"] * (1 - 1 / 3))


def test_bench_head_compares_fused_matmul_and_reference_path(tmp_path):
    data, _ = _run(
        "bench_head.py", tmp_path, "--ns", "1,5", "--hidden-dim", "32", "--vocab-size", "1009", "--repeats", "2"
    )
    assert [r["n"] for r in data["rows"]] == [1, 5]
    assert all(r["fused_ms"] > 0 and r["matmul_ms"] > 0 and r["matmul+gumbel_ms"] > 0 for r in data["rows"])


def test_paper_config_refuses_clearly_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the paper config would run")
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_sampler.py"), "--config", "paper"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_plot_script_draws_every_results_file(tmp_path):
    pytest.importorskip("matplotlib", reason="checks the PNG plots: pip install -e .[test]")
    data, _ = _run(
        "bench_sampler.py", tmp_path, "--config", "tiny", "--fractions", "0,1", "--repeats", "1", "--samplers", "fast"
    )
    proc = subprocess.run(
        [sys.executable, str(BENCH / "plot_results.py"), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "result.png").stat().st_size > 1000


def test_odd_repeats_walk_the_rows_in_reverse_so_drift_within_a_repeat_cancels(tmp_path):
    _, proc = _run(
        "bench_sampler.py",
        tmp_path,
        "--config",
        "tiny",
        "--fractions",
        "0,0.5,1",
        "--repeats",
        "2",
        "--samplers",
        "fast",
        "--dtypes",
        "float32",
    )
    order = {"rep 0": [], "rep 1": []}
    for line in proc.stderr.splitlines():
        if line[:5] in order:
            order[line[:5]].append(line.split()[4])  # the schedule spec
    assert len(order["rep 0"]) == 3 and len(set(order["rep 0"])) == 3
    assert order["rep 1"] == order["rep 0"][::-1]


def test_speedups_pair_repeats_so_a_slow_spell_cancels():
    sys.path.insert(0, str(BENCH))
    try:
        from bench_sampler import paired_speedup
    finally:
        sys.path.remove(str(BENCH))
    # repeat 1 ran while the machine was twice as slow for both rows: the paired ratio stays 2
    paired = paired_speedup([10.0, 20.0, 10.0], [5.0, 10.0, 5.0])
    assert paired == {"speedup": 2.0, "speedup_min": 2.0, "speedup_max": 2.0, "paired": True}
    # the ratio of medians would not: base median 10, row median 10 after an unlucky spell
    assert paired_speedup([10.0, 20.0, 10.0], [5.0, 10.0, 10.0])["speedup"] == 2.0
    # different repeat counts cannot be paired: ratio of medians
    assert paired_speedup([10.0, 12.0, 14.0], [6.0]) == {
        "speedup": 2.0,
        "speedup_min": 2.0,
        "speedup_max": 2.0,
        "paired": False,
    }


def test_report_prints_a_table_per_results_file(tmp_path):
    _run(
        "bench_sampler.py",
        tmp_path,
        "--config",
        "tiny",
        "--fractions",
        "0,1",
        "--repeats",
        "2",
        "--samplers",
        "fast",
        "--dtypes",
        "float32",
    )
    proc = subprocess.run(
        [sys.executable, str(BENCH / "report.py"), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("| fast-float32 |")]
    assert len(lines) == 2
    cells = [line.split("|") for line in lines]
    assert all(float(c[7]) > 0 and c[8].strip().endswith("%") for c in cells)  # GFLOP/s and its share of the peak
    speedup_column = [c[10] for c in cells]
    assert speedup_column[0].strip() == "1.000"  # all-heavy against itself, every repeat
    assert "–" in speedup_column[1]  # the all-light row shows its per-repeat range


def test_results_from_the_log_of_a_stopped_run_pair_what_finished():
    sys.path.insert(0, str(BENCH))
    try:
        from results_from_log import parse, rows_from_runs
    finally:
        sys.path.remove(str(BENCH))
    log = "\n".join(
        [
            "rep 0 mdlm-speed         L4  H128                 200.00 s  forwards [127]",
            "rep 0 fast-bfloat16      L4  H128                  20.00 s  forwards [97]  blocks 95.0%",
            "rep 0 fast-float32       L4  H128                  40.00 s  forwards [97]  blocks 96.0%",
            "rep 0 fast-bfloat16      L4  H32-L64-H32           10.00 s  forwards [31, 66]",
            "noise line",
            "rep 1 fast-bfloat16      L4  H128                  25.00 s  forwards [97]",
            "rep 1 fast-float32       L4  H128                  45.00 s  forwards [97]",
        ]
    )
    rows = {(r["variant"], r["schedule"]): r for r in rows_from_runs(parse(log), "H128")}
    bf16 = rows[("fast-bfloat16", "H128")]
    assert bf16["times_s"] == [20.0, 25.0] and bf16["forwards"] == 97
    assert bf16["speedup_vs_mdlm_speed"] == pytest.approx(statistics_median([10.0, 8.0]))
    assert bf16["speedup_vs_fast_float32"] == pytest.approx(statistics_median([2.0, 1.8]))
    assert rows[("fast-bfloat16", "H32-L64-H32")]["speedup_vs_own_all_heavy"] == 2.0
    assert rows[("fast-bfloat16", "H32-L64-H32")]["speedup_vs_fast_float32"] is None  # no fp32 run there
    assert rows[("mdlm-speed", "H128")]["speedup_vs_fast_float32"] is None


def statistics_median(values):
    import statistics

    return statistics.median(values)
