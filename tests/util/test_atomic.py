"""Atomic writes: the old version survives a failed write, and no temporary is left behind."""

import os

import pytest

from mdlm_fast.util.atomic import atomic_directory, atomic_file, write_text


def test_failed_file_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text(tmp_path / "results.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as f:
            f.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]
    write_text(path, "new")
    assert path.read_text() == "new" and oct(path.stat().st_mode & 0o777) == "0o644"


def test_failed_directory_write_keeps_the_old_directory(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "config.json").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "config.json").write_text("v2")
            raise RuntimeError("disk full")
    assert (target / "config.json").read_text() == "v1" and os.listdir(tmp_path) == ["model"]
    with atomic_directory(target) as tmp:
        (tmp / "config.json").write_text("v2")
    assert (target / "config.json").read_text() == "v2" and os.listdir(tmp_path) == ["model"]
