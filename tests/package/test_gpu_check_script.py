"""scripts/gpu_check.sh as far as a CPU machine allows: argument parsing, the dry run, and the
summary it writes from result files."""

import json
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"


def _run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)


def test_help():
    result = _run("--help")
    assert result.returncode == 0 and "--dry-run" in result.stdout and "--out DIR" in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--bogus"], "unknown argument '--bogus'"),
        (["--repeats", "0"], "--repeats must be a positive integer, got '0'"),
        (["--repeats", "x"], "--repeats must be a positive integer, got 'x'"),
        (["--out"], "--out needs a folder"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args, message):
    result = _run("--dry-run", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"gpu_check: error: {message}" + (" (see --help)" if "unknown" in message else "")
    ]


def test_out_naming_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    result = _run("--dry-run", "--out", str(f))
    assert result.returncode == 2 and "exists and is not a folder" in result.stderr


def test_dry_run_prints_every_step_and_writes_nothing(tmp_path):
    out = tmp_path / "results"
    result = _run("--dry-run", "--out", str(out), "--repeats", "2")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for needle in [
        "TORCH_CUDA_ARCH_LIST='9.0+PTX'",
        "pytest -q -m cuda",
        "bench_head.py --device cuda --ns 1,2,4",
        ",1024",
        "bench_sampler.py --config paper --fractions 0,0.25,0.5,1 --repeats 2",
        "bench_breakdown.py --config paper --repeats 2",
        "gpu_check_report.py copy",
        f"{out}/head_cuda",
        f"bench_engine.py --config paper --repeats 2 --curve-repeats 3 --name '{out}/engine_paper'",
        "kernel_report --archs 90 --dtypes bf16 --ds 768 --ns 1,2,4,8,16,32,64,128,256,512,1024",
    ]:
        assert needle in text, needle
    assert not out.exists()
    skip = _run("--dry-run", "--skip-build", "--out", str(out))
    assert "pip install" not in skip.stdout and "[cuda_tests]" in skip.stdout


def test_summary_from_result_files(tmp_path):
    (tmp_path / "device.json").write_text(
        json.dumps({"name": "NVIDIA H200", "capability": "9.0", "torch": "2.13.0", "cuda": "13.0"})
    )
    (tmp_path / "copy_bandwidth.json").write_text(
        json.dumps({"median_gb_per_s": 4000.0, "min_gb_per_s": 3900.0, "max_gb_per_s": 4100.0})
    )
    (tmp_path / "head_cuda.json").write_text(
        json.dumps(
            {
                "rows": [
                    {
                        "n": 1,
                        "fused_ms": 0.05,
                        "fused_over_matmul": 1.1,
                        "fused_over_matmul_min": 1.0,
                        "fused_over_matmul_max": 1.2,
                        "fused_gb_per_s": 3000.0,
                    }
                ]
            }
        )
    )
    (tmp_path / "cuda_tests.xml").write_text(
        '<testsuites><testsuite tests="10" failures="1" errors="0" skipped="2"></testsuite></testsuites>'
    )
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gpu_check_report.py"), "summary", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert "NVIDIA H200 (sm_90)" in summary and "10 run, 1 failed" in summary
    assert "| 1 | 0.050 | 1.10 [1.00, 1.20] | 3000 | 75 |" in summary
    assert "sampler_paper: missing" in summary
    # With the kernel_report model's JSON beside the results: its estimate per N.
    (tmp_path / "model.json").write_text(
        json.dumps(
            {
                "shapes": [
                    {"n": 1, "d": 768, "dtype": "bf16", "estimated_s": 23.2e-6, "estimated_fraction_of_peak": 0.99},
                    {"n": 1, "d": 4096, "dtype": "bf16", "estimated_s": 1.0, "estimated_fraction_of_peak": 0.5},
                ]
            }
        )
    )
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gpu_check_report.py"), "summary", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "| 1 | 0.050 | 1.10 [1.00, 1.20] | 3000 | 75 | 0.023 | 99 |" in (tmp_path / "summary.md").read_text()
