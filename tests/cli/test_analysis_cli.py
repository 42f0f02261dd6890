"""The analysis subcommands end to end on tiny checkpoints (embedded tokenizer and judge): outputs,
resuming, torchrun data parallelism (gloo, 2 processes) and one-line errors.

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mdlm_fast as mf
from mdlm_fast.cli.app import main

VOCAB = 8193  # the embedded tokenizer's ids + [MASK]: the tiny models share its vocabulary
TINY = ["--steps", "10", "--length", "16", "--samples", "2", "--batch-size", "2", "--no-progress", "--threads", "1"]
SEARCH = [*TINY, "--segments", "5", "--n-light", "2", "--top", "3"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny heavy (2 blocks) and light (1 block) checkpoints with the embedded vocabulary."""
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name, blocks, seed in (("heavy", 2, 0), ("light", 1, 1), ("heavy2", 2, 2)):
        config = mf.DiTConfig(hidden_dim=32, n_heads=2, n_blocks=blocks, cond_dim=8, vocab_size=VOCAB, model_length=32)
        mf.save_denoiser(mf.DiT(config).init_random_(seed, std=0.1), root / name)
        paths[name] = str(root / name)
    text = root / "text.txt"
    text.write_text(
        "\n\n".join(
            f"ROMEO: Is the day so young? Line {i} of the play, good night, good night." * 3 for i in range(120)
        )
    )
    paths["data"] = str(text)
    return paths


def _pair(models):
    return ["--heavy", models["heavy"], "--light", models["light"]]


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _strip_timing(rows):
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]


def test_evaluate_writes_json_and_csv_with_a_record(models, tmp_path, capsys):
    code, out, _ = _run(
        [
            "evaluate",
            *_pair(models),
            *TINY,
            "--out",
            str(tmp_path),
            "--json",
            "--schedule",
            "heavy",
            "--schedule",
            "L5-H5",
        ],
        capsys,
    )
    assert code == 0
    report = json.loads(out)
    assert [r["key"] for r in report["rows"]] == ["heavy", "L5-H5"]
    row = report["rows"][1]
    assert row["predicted_saving"] == pytest.approx(0.5 * 0.5) and row["gen_ppl"] > 1 and row["unigram_entropy"] > 0
    record = row["record"]
    assert (
        record["judge"] == "embedded" and record["judge_tokenizer"] == "embedded" and record["tokenizer"] == "embedded"
    )
    assert record["seeds"] == [0] and record["samples"] == 2 and record["precision"] == "fp64" and record["steps"] == 10
    assert json.loads((tmp_path / "evaluate.json").read_text())["rows"][0]["key"] == "heavy"
    assert (tmp_path / "evaluate.csv").read_text().splitlines()[0].startswith("key,")
    # paired against the baseline (same seeds), beside the unpaired numbers
    assert row["paired_baseline"] == "H10"
    assert row["paired_gen_ppl_ratio"] == pytest.approx(row["gen_ppl"] / report["rows"][0]["gen_ppl"])
    assert row["paired_nll_diff_ci_low"] <= row["paired_nll_diff_estimate"] <= row["paired_nll_diff_ci_high"]
    assert "paired_gen_ppl_ratio" not in report["rows"][0]


def test_evaluate_adds_its_baseline_and_reads_time_specs(models, tmp_path, capsys):
    code, out, _ = _run(
        [
            "evaluate",
            *_pair(models),
            *TINY,
            "--out",
            str(tmp_path),
            "--json",
            "--schedule",
            "time:0.55-1=L",
            "--schedule",
            "L5-H5",
            "--baseline",
            "light",
        ],
        capsys,
    )
    assert code == 0
    rows = json.loads(out)["rows"]
    assert [r["key"] for r in rows] == ["light", "time:0.55-1=L", "L5-H5"]
    assert rows[1]["schedule"] == "L5-H5" and rows[1]["gen_ppl"] == rows[2]["gen_ppl"]  # 5 of 10 steps at t > 0.55
    assert rows[1]["paired_baseline"] == "L10" and "paired_gen_ppl_ratio" not in rows[0]


def test_importance_then_calibrate_against_the_search(models, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="checks the PNG plots: pip install -e .[test]")
    code, out, _ = _run(
        [
            "importance",
            *_pair(models),
            "--heavy-twin",
            models["heavy2"],
            "--data",
            models["data"],
            "--windows",
            "3",
            "--window-length",
            "16",
            "--t-points",
            "4",
            "--no-progress",
            "--out",
            str(tmp_path),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    profile = json.loads(out)
    assert profile["normalized"] and len(profile["points"]) == 4
    assert all(p["kl"] > 0 and p["kl_ref"] > 0 for p in profile["points"])
    assert {"importance.json", "importance.csv", "importance.png"} <= {p.name for p in tmp_path.iterdir()}

    assert main(["search", *_pair(models), *SEARCH, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    code, out, _ = _run(
        [
            "calibrate",
            *_pair(models),
            "--importance",
            str(tmp_path / "importance.json"),
            "--search",
            str(tmp_path),
            "--out",
            str(tmp_path),
            "--no-progress",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    result = json.loads(out)
    calib = result["calibration"]
    assert calib["metric"] == "kl_normalized" and len(calib["light_segments"]) == 2 and calib["n_segments"] == 5
    assert result["evaluation"]["record"]["steps"] == 10  # the search's settings were reused
    comparison = result["comparison"]
    assert comparison["searched_at_same_budget"] == 10 and comparison["calibrated_rank"] in range(1, 11)
    searched = {r["schedule"]: r for r in json.loads((tmp_path / "exhaustive.json").read_text())["rows"]}
    # same schedule, same seeds: the calibrated evaluation reproduces the search's number
    assert result["evaluation"]["gen_ppl"] == pytest.approx(searched[calib["schedule"]]["gen_ppl"])
    assert (tmp_path / "calibrate_divergence.png").is_file()
    from mdlm_fast.schedules.time_schedule import TimeSchedule

    carried = TimeSchedule.load(tmp_path / "calibrate_schedule.json")
    assert carried.at_steps(10).to_spec() == calib["schedule"] and carried.source["from"] == "mdlm-fast calibrate"
    assert (tmp_path / "exhaustive_best_schedule.json").is_file()


def test_search_resumes_and_matches_an_uninterrupted_run(models, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="checks the PNG plots: pip install -e .[test]")
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert main(["search", *_pair(models), *SEARCH, "--out", str(full)]) == 0
    assert main(["search", *_pair(models), *SEARCH, "--out", str(parts), "--max-schedules", "4"]) == 0
    first = json.loads((parts / "exhaustive.json").read_text())
    assert not first["complete"] and first["finished"] == 4
    assert main(["search", *_pair(models), *SEARCH, "--out", str(parts), "--json"]) == 0
    lines = (parts / "exhaustive.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 10  # the settings line and each schedule exactly once
    a, b = (json.loads((d / "exhaustive.json").read_text()) for d in (full, parts))
    assert b["complete"] and _strip_timing(a["rows"]) == _strip_timing(b["rows"])
    assert a["segment_scores"] == pytest.approx(b["segment_scores"])
    assert sum(a["segment_scores"]) == pytest.approx(0, abs=1e-9)  # complete design: eq. 8 sums to zero
    assert len(a["top5"]) == 5 and a["top5"][0]["gen_ppl"] <= a["bottom5"][0]["gen_ppl"]
    assert sum(a["segment_frequency_top"]) == 3 * 2
    for png in ("exhaustive_segment_scores.png", "exhaustive_segment_frequency.png"):
        assert (full / png).is_file()
    # other settings in the same directory are refused instead of mixed in
    code, _, err = _run(["search", *_pair(models), *SEARCH, "--out", str(full), "--seed", "1"], capsys)
    assert code == 2 and "different settings" in err and "seed" in err


def test_torchrun_two_processes_merge_to_the_single_process_result(models, tmp_path):
    single = tmp_path / "single"
    assert main(["search", *_pair(models), *SEARCH, "--out", str(single)]) == 0
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(mf.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "mdlm_fast.cli",
            "search",
            *_pair(models),
            *SEARCH,
            "--out",
            str(tmp_path / "dp"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"exhaustive.rank0.jsonl", "exhaustive.rank1.jsonl"} <= {p.name for p in (tmp_path / "dp").iterdir()}
    a, b = (json.loads((d / "exhaustive.json").read_text()) for d in (single, tmp_path / "dp"))
    assert b["complete"] and _strip_timing(a["rows"]) == _strip_timing(b["rows"])
    assert a["segment_scores"] == b["segment_scores"]
    # the merged data-parallel logs resume in one process: nothing is left to evaluate
    assert main(["search", *_pair(models), *SEARCH, "--out", str(tmp_path / "dp"), "--max-schedules", "1"]) == 0
    assert json.loads((tmp_path / "dp" / "exhaustive.json").read_text())["complete"]


@pytest.mark.parametrize(
    "study,extra,png",
    [
        ("placement", ["--fraction", "0.2"], "placement.png"),
        ("fraction", ["--fractions", "0,0.5,1"], "fraction.png"),
    ],
)
def test_placement_and_fraction_studies(models, tmp_path, capsys, study, extra, png):
    pytest.importorskip("matplotlib", reason="checks the PNG plots: pip install -e .[test]")
    code, out, _ = _run(
        ["search", *_pair(models), *TINY, "--study", study, *extra, "--out", str(tmp_path), "--json"], capsys
    )
    assert code == 0
    rows = json.loads(out)["rows"]
    if study == "placement":
        assert [r["key"] for r in rows] == ["heavy", "q1:0.2", "q2:0.2", "q3:0.2", "q4:0.2", "sandwich:0.2", "light"]
        assert rows[1]["schedule"] == "L2-H8" and rows[0]["predicted_saving"] == 0
    else:
        assert [r["predicted_saving"] for r in rows] == pytest.approx([0, 0.25, 0.5])
    assert all("gen_ppl" in r and "wall_time_s" in r and "unigram_entropy" in r for r in rows)
    heavy = rows[0]  # placement: all-heavy; fraction: fraction 0
    assert "paired_gen_ppl_ratio" not in heavy and all(r["paired_baseline"] == heavy["schedule"] for r in rows[1:])
    assert all("per_sample" not in r for r in rows)
    assert (tmp_path / f"{study}_best_schedule.json").is_file()
    assert (tmp_path / png).is_file() and (tmp_path / f"{study}.csv").is_file()


def test_light_size_study_takes_several_light_models(models, tmp_path, capsys):
    code, out, _ = _run(
        [
            "search",
            "--heavy",
            models["heavy"],
            "--light",
            models["light"],
            "--light",
            models["heavy2"],
            *TINY,
            "--study",
            "light-size",
            "--fractions",
            "0.5",
            "--out",
            str(tmp_path),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    rows = json.loads(out)["rows"]
    assert [r["light_model"] for r in rows] == [models["light"], models["heavy2"]]
    assert rows[0]["predicted_saving"] == pytest.approx(0.25) and rows[1]["predicted_saving"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    "argv,match",
    [
        (["evaluate", "--steps", "0"], "--steps"),
        (["evaluate", "--schedule", "sandwich:2"], "sandwich:2"),
        (["evaluate", "--length", "999"], "model_length"),
        (["evaluate", "--judge", "/nonexistent/judge"], "/nonexistent/judge"),
        (["search", "--segments", "50"], "--segments"),
        (["search", "--segments", "5", "--n-light", "7"], "--n-light"),
        (["search", "--study", "fraction", "--fractions", "0.5,2"], "--fractions"),
        (["search", "--study", "placement", "--placements", "q9"], "q9"),
        (["search", "--judge", "none"], "--judge none"),
        (["search", "--max-schedules", "0"], "--max-schedules"),
        (["importance", "--windows", "0"], "--windows"),
        (["importance", "--data", "/nonexistent.txt"], "/nonexistent.txt"),
        (["calibrate", "--importance", "/nonexistent.json", "--n-light", "2"], "/nonexistent.json"),
        (["calibrate", "--search", "/nonexistent"], "/nonexistent"),
        (["calibrate", "--saving", "0.1", "--n-light", "2", "--data", "/nonexistent.txt"], "--data"),
    ],
)
def test_bad_arguments_end_with_one_line_error(models, tmp_path, capsys, argv, match):
    sizes = [] if argv[0] == "importance" else ["--steps", "10", "--length", "16"]  # later flags win
    code, _, err = _run([*argv[:1], *_pair(models), *sizes, *argv[1:], "--out", str(tmp_path), "--no-progress"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("mdlm-fast: error:") and match in lines[0], err


def test_errors_are_one_line_when_run_as_a_module(models, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mdlm_fast.cli", "calibrate", "--light", "/nonexistent/light", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["mdlm-fast: error: --light: no checkpoint at /nonexistent/light"]


def test_torchrun_evaluate_shards_seeds_and_matches_one_process(models, tmp_path, capsys):
    argv = ["evaluate", *_pair(models), *TINY, "--samples", "6", "--schedule", "L5-H5"]
    assert main([*argv, "--out", str(tmp_path / "single")]) == 0
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(mf.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "mdlm_fast.cli",
            *argv,
            "--out",
            str(tmp_path / "dp"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "evaluate.json").read_text())["rows"][0] for d in ("single", "dp"))
    assert a["record"]["seeds"] == b["record"]["seeds"] == [0, 1, 2]
    # executed FLOPs are not compared: they count what the engine's packed forwards ran (the last
    # block at each forward's padded query width), which depends on how each rank's batches packed
    for key in ("gen_ppl", "gen_ppl_se", "unigram_entropy", "distinct_2", "tokens"):
        assert a[key] == b[key]


def test_importance_defaults_to_the_shipped_held_out_text(models, tmp_path, capsys):
    code, out, _ = _run(
        [
            "importance",
            *_pair(models),
            "--windows",
            "2",
            "--window-length",
            "16",
            "--t-points",
            "2",
            "--no-progress",
            "--out",
            str(tmp_path),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    record = json.loads(out)["record"]
    assert record["data"] == "embedded:heldout"
    from mdlm_fast.text.data import file_sha256, resolve_text

    assert record["data_sha256"] == file_sha256(resolve_text("embedded:heldout"))


def test_analysis_json_is_strict(models, tmp_path, capsys):
    """One sample per schedule has no standard error: null in the JSON, never NaN."""
    code, out, _ = _run(
        [
            "evaluate",
            *_pair(models),
            *TINY,
            "--samples",
            "1",
            "--batch-size",
            "1",
            "--schedule",
            "heavy",
            "--out",
            str(tmp_path),
            "--json",
        ],
        capsys,
    )
    assert code == 0

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    row = json.loads(out, parse_constant=no_constants)["rows"][0]
    assert row["gen_ppl_se"] is None
    json.loads((tmp_path / "evaluate.json").read_text(), parse_constant=no_constants)


def test_without_matplotlib_results_are_written_and_plots_skipped_with_a_note(models, tmp_path, capsys, monkeypatch):
    from mdlm_fast.cli import analysis as cli_analysis

    monkeypatch.setattr(cli_analysis, "_matplotlib_installed", lambda: False)
    code, _, err = _run(
        [
            "importance",
            *_pair(models),
            "--windows",
            "2",
            "--window-length",
            "16",
            "--t-points",
            "2",
            "--no-progress",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0 and "matplotlib is not installed" in err and len(err.strip().splitlines()) == 1
    assert {p.name for p in tmp_path.iterdir() if p.is_file()} == {"importance.json", "importance.csv"}
