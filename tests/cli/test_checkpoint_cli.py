"""``--trust-checkpoint`` and ``--mask-index`` on ``generate`` and the analysis commands (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.model_reference import load_test_model

ref = load_test_model("_mdlm_test_model_reference_cli")
TINY = ref.TINY


class OpensFile:
    """Unpickling this creates the file (``open(path, "w")``)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def evil_ckpt(tmp_path) -> tuple[Path, Path]:
    """A Lightning checkpoint of a tiny DiT whose pickle also creates ``created``."""
    state = ref.random_published_state(TINY, seed=41)
    created = tmp_path / "created"
    hparams = {
        "config": {
            "model": {
                "hidden_size": TINY["hidden_dim"],
                "cond_dim": TINY["cond_dim"],
                "length": TINY["model_length"],
                "n_blocks": TINY["n_blocks"],
                "n_heads": TINY["n_heads"],
            },
            "time_conditioning": False,
        }
    }
    file = tmp_path / "evil.ckpt"
    torch.save(
        {
            "state_dict": {"backbone." + k: v for k, v in state.items()},
            "hyper_parameters": hparams,
            "payload": OpensFile(created),
        },
        file,
    )
    return file, created


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mdlm_fast.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mdlm-fast: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_generate_does_not_run_the_payload_unless_trusted(tmp_path, evil_ckpt):
    file, created = evil_ckpt
    common = ["generate", "--heavy", str(file), "--steps", "2", "--length", "4", "--batch-size", "1", "--json"]
    proc = run_cli(*common, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not created.exists()
    report = json.loads(proc.stdout)
    assert len(report["samples"]) == 1 and TINY["vocab_size"] - 1 not in report["samples"][0]["tokens"]
    proc = run_cli(*common, "--trust-checkpoint", "--mask-index", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert created.exists()
    assert 0 not in json.loads(proc.stdout)["samples"][0]["tokens"]


def test_generate_refuses_a_mask_index_outside_the_vocabulary(tmp_path, evil_ckpt):
    file, created = evil_ckpt
    proc = run_cli(
        "generate", "--heavy", str(file), "--mask-index", "37", "--steps", "2", "--length", "4", cwd=tmp_path
    )
    assert_one_line_error(proc, "--mask-index 37 is not a token id of", "its vocab_size is 37")
    assert not created.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["evil.ckpt"]


def test_analysis_commands_take_both_flags(tmp_path, evil_ckpt):
    file, created = evil_ckpt
    out = tmp_path / "results"
    proc = run_cli("evaluate", "--heavy", str(file), "--mask-index", "-1", "--out", str(out), cwd=tmp_path)
    assert_one_line_error(proc, "--mask-index", "got -1")
    assert not created.exists() and not out.exists()
    # trusted, the heavy model loads (running the payload) and the embedded light one does not match it
    proc = run_cli("evaluate", "--heavy", str(file), "--trust-checkpoint", "--out", str(out), cwd=tmp_path)
    assert_one_line_error(proc, "vocab_size")
    assert created.exists()
