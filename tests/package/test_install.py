"""A plain ``pip install .`` (build isolation on, pip's default) in a fresh venv stops within
seconds with one line saying to install torch first and use --no-build-isolation -- with torch
absent and with torch installed -- and installs no torch of its own. (The --no-build-isolation
path, which compiles for minutes, is what .ci/run's wheel build and fresh install exercise.)

pip is pointed at an index that cannot answer, so a regression (torch back among the build
requirements) fails the test on the message instead of downloading gigabytes; the message and the
time are what the test asserts, not the absence of an index.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.paths import REPO_ROOT

LIMIT_S = 30


def _base_python() -> str:
    """The interpreter this test's venv was made from: a venv made from a venv's python is fine
    too, but the base one is what a user has."""
    return os.path.join(sys.base_prefix, "bin", "python3") if sys.prefix != sys.base_prefix else sys.executable


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("install") / "venv"
    subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True, timeout=300, capture_output=True)
    return venv


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _plain_pip_install(venv: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(
        PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0", PIP_TIMEOUT="2", PIP_DISABLE_PIP_VERSION_CHECK="1"
    )
    start = time.monotonic()
    proc = subprocess.run(
        [str(venv / "bin" / "pip"), "install", str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=venv.parent,
    )
    return proc, time.monotonic() - start


def _assert_fast_clear_failure(proc, seconds):
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert seconds < LIMIT_S, f"took {seconds:.0f} s"
    lines = [line.strip() for line in out.splitlines() if "install torch first" in line]
    assert lines and "--no-build-isolation" in lines[0], out
    assert "Collecting torch" not in out and "Downloading" not in out, out


def test_without_torch_it_stops_at_once_with_one_line(fresh_venv):
    proc, seconds = _plain_pip_install(fresh_venv)
    _assert_fast_clear_failure(proc, seconds)
    assert not list(_site_packages(fresh_venv).glob("torch*")) and not list(_site_packages(fresh_venv).glob("mdlm*"))


def test_with_torch_installed_it_stops_the_same_way_and_keeps_that_torch(fresh_venv):
    """torch is made importable in the venv through a .pth entry to this environment's torch (no
    download); pip's isolated build environment hides it, as it hides a pip-installed one."""
    site = _site_packages(fresh_venv)
    (site / "outer-torch.pth").write_text(str(Path(torch.__file__).resolve().parents[1]) + "\n")
    probe = [str(fresh_venv / "bin" / "python"), "-c", "import torch; print(torch.__version__, torch.__file__)"]
    before = subprocess.run(probe, capture_output=True, text=True, timeout=120, check=True).stdout
    assert before.startswith(torch.__version__)
    proc, seconds = _plain_pip_install(fresh_venv)
    _assert_fast_clear_failure(proc, seconds)
    assert subprocess.run(probe, capture_output=True, text=True, timeout=120, check=True).stdout == before
    assert not list(site.glob("torch*")) and not list(site.glob("mdlm*"))
