"""benchmarks/bench_serve.py runs end to end on a seconds-long load and writes sound results."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO_ROOT

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

BENCH = REPO_ROOT / "benchmarks" / "bench_serve.py"


def test_bench_serve_measures_both_servers_and_the_offline_engine(tmp_path):
    out = tmp_path / "serve"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--engine",
            "sequential",
            "--clients",
            "1,2",
            "--requests",
            "3",
            "--length",
            "6",
            "--steps",
            "2",
            "--repeats",
            "1",
            "--name",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["server"], r["clients"]): r for r in data["rows"]}
    assert set(rows) == {(s, c) for s in ("engine", "baseline", "offline") for c in (1, 2)}
    for (server, _clients), row in rows.items():
        assert row["requests"] == 3 and row["errors"] == 0 and row["samples_per_s"] > 0
        if server != "offline":
            assert 0 < row["p50_s"] <= row["p95_s"] <= row["p99_s"]
    assert data["server_exit_codes"] == {"engine": 0, "baseline": 0}
    assert len(data["loadavg_before"]) == 3 and [r["clients"] for r in data["ratios"]] == [1, 2]
    ratio = data["ratios"][1]["throughput_engine_over_baseline"]
    assert ratio == pytest.approx(rows[("engine", 2)]["samples_per_s"] / rows[("baseline", 2)]["samples_per_s"])
