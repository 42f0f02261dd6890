"""What a newcomer meets first: errors that say what to do, output files that respect the user,
the command's own --version and --help, and the thread wait policy of the command line."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.cli.app import main
from mdlm_fast.util import threads
from mdlm_fast.util.atomic import ReadOnlyFileError, atomic_file, write_text
from tests.helpers.paths import REPO_ROOT

TINY = ["--length", "16", "--steps", "8", "--batch-size", "2", "--judge", "none", "--no-progress"]


@pytest.fixture(scope="module")
def light():
    return mf.load_denoiser("embedded:light")


def _bare_dit_ckpt(path: Path, model) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


# --------------------------------------------------------------------------------------------
# The Python API
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_sample_on_cuda_without_cuda_names_the_argument(light):
    with pytest.raises(ValueError, match=r"^device cuda: no CUDA device is visible"):
        mf.sample([light], steps=2, batch_size=1, length=4, device="cuda")


def test_a_ragged_prefix_names_prefix_and_the_shape_expected(light):
    with pytest.raises(ValueError, match=r"prefix must be token ids of shape \[P\] or \[batch_size=2, P\]"):
        mf.sample([light], steps=2, batch_size=2, length=8, prefix=[[1, 2], [3]])


def test_embedded_names_offer_denoisers_only_and_the_judge_points_to_load_judge():
    with pytest.raises(mf.CheckpointError) as err:
        mf.load_denoiser("embedded:nonsense")
    assert "the embedded models are embedded:heavy, embedded:light" in str(err.value) and "judge" not in str(err.value)
    with pytest.raises(mf.CheckpointError, match=r"embedded:judge is the gen-PPL judge .* load_judge\('embedded'\)"):
        mf.load_denoiser("embedded:judge")


@pytest.mark.parametrize(
    "content,match", [(b"", r"is empty \(0 bytes\)"), (b"hello, world\n", "is not a torch checkpoint")]
)
def test_a_file_that_is_no_checkpoint_does_not_suggest_trusting_it(tmp_path, content, match):
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(mf.CheckpointError, match=match) as err:
        mf.load_denoiser(path)
    assert "trust" not in str(err.value)


def test_a_ckpt_without_dit_weights_says_so(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(mf.CheckpointError, match="holds no MDLM DiT weights.*encoder.weight") as err:
        mf.load_denoiser(path)
    assert "hidden_dim" not in str(err.value)


def test_the_n_heads_hint_fits_whether_a_config_json_is_there(tmp_path, light):
    alone = _bare_dit_ckpt(tmp_path / "alone" / "m.ckpt", light)
    with pytest.raises(mf.CheckpointError, match=r'put a config.json with "n_heads" next to the checkpoint'):
        mf.load_denoiser(alone)
    beside = _bare_dit_ckpt(tmp_path / "beside" / "m.ckpt", light)
    (beside.parent / "config.json").write_text(json.dumps({"model_length": 256}))
    with pytest.raises(mf.CheckpointError) as err:
        mf.load_denoiser(beside)
    assert f'add "n_heads" to {beside.parent / "config.json"}' in str(err.value)
    assert "put a config.json" not in str(err.value)
    assert mf.load_denoiser(beside, n_heads=light.config.n_heads).config.n_heads == light.config.n_heads


def test_a_mask_index_outside_the_vocabulary_names_the_argument():
    with pytest.raises(mf.CheckpointError, match=r"^mask_index=999999 is not a token id of .*vocab_size is 8193"):
        mf.load_denoiser("embedded:heavy", mask_index=999999)


def test_segments_beyond_the_steps_name_the_segment_count_it_came_from():
    with pytest.raises(mf.ScheduleError, match="the default 10 segments need at least 10 steps, got steps=8"):
        mf.ModelSchedule.parse("segments:11", 8)
    with pytest.raises(mf.ScheduleError, match="segments/9 need at least 9 steps"):
        mf.ModelSchedule.parse("segments/9:1", 8)
    assert mf.ModelSchedule.parse("segments/4:1", 8).to_spec() == "H2-L2-H4"


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


def test_version_and_a_help_written_for_users(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mdlm-fast {mf.__version__}"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Fast sampling for masked diffusion language models" in out and "mdlm-fast generate" in out
    assert "``" not in out and "one error policy" not in out  # not the module's docstring


def test_the_report_shows_precision_only_for_the_mdlm_sampler(capsys):
    assert main(["generate", *TINY]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("models "))
    assert "sampler fast, dtype" in line and "fp64" not in line
    assert main(["generate", *TINY, "--sampler", "mdlm", "--batch-size", "1"]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("models "))
    assert "sampler mdlm (fp64), dtype" in line


def test_calibrate_prints_its_error_alone_without_matplotlib(tmp_path, capsys, monkeypatch):
    from mdlm_fast.cli import analysis

    monkeypatch.setattr(analysis, "_matplotlib_installed", lambda: False)
    code = main(["calibrate", "--saving", "0.1", "--n-light", "2", "--out", str(tmp_path / "cal")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not both" in err[0], err


# --------------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------------


def test_out_rows_carry_the_seed_and_row_that_reproduce_them(tmp_path, capsys):
    two, three = tmp_path / "two.jsonl", tmp_path / "three.jsonl"
    assert main(["generate", *TINY, "--seed", "5", "--out", str(two)]) == 0
    assert main(["generate", *TINY, "--seed", "5", "--batch-size", "3", "--out", str(three)]) == 0
    rows2 = [json.loads(line) for line in two.read_text().splitlines()]
    rows3 = [json.loads(line) for line in three.read_text().splitlines()]
    assert [(r["seed"], r["row"]) for r in rows2] == [(5, 0), (5, 1)]
    assert [r["tokens"] for r in rows3[:2]] == [r["tokens"] for r in rows2]  # the same row, whatever the batch


def test_out_refuses_a_read_only_file_and_keeps_it(tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    out.write_text("keep me\n")
    out.chmod(0o444)
    assert main(["generate", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is read-only (mode 0444)" in err[0] and "--out" in err[0]
    assert out.read_text() == "keep me\n" and stat.S_IMODE(out.stat().st_mode) == 0o444


def test_rewritten_files_keep_their_mode_and_new_ones_follow_the_umask(tmp_path):
    kept = write_text(tmp_path / "kept.txt", "v1")
    kept.chmod(0o640)
    write_text(kept, "v2")
    assert kept.read_text() == "v2" and stat.S_IMODE(kept.stat().st_mode) == 0o640
    old = os.umask(0o077)
    try:
        private = write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    locked = write_text(tmp_path / "locked.txt", "v1")
    locked.chmod(0o444)
    with pytest.raises(ReadOnlyFileError, match="read-only"):
        write_text(locked, "v2")
    assert locked.read_text() == "v1" and sorted(os.listdir(tmp_path)) == ["kept.txt", "locked.txt", "private.txt"]


def test_a_missing_parent_directory_is_an_error_naming_it_when_asked(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no directory {tmp_path / 'none'}"):
        with atomic_file(tmp_path / "none" / "x.jsonl", make_parents=False) as f:
            f.write("x")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Threads: the command line sleeps idle OpenMP workers
# --------------------------------------------------------------------------------------------


def test_only_the_command_line_counts_as_the_command():
    assert threads.launched_as_command(["/venv/bin/mdlm-fast", "generate"], [])
    assert threads.launched_as_command(["-m"], ["python", "-m", "mdlm_fast.cli", "generate"])
    assert not threads.launched_as_command(["script.py"], ["python", "script.py"])
    assert not threads.launched_as_command(["-m"], ["python", "-m", "pytest", "-q"])


def test_a_user_wait_policy_is_kept():
    env = {"GOMP_SPINCOUNT": "1000"}
    assert not threads.set_passive_wait(env) and env == {"GOMP_SPINCOUNT": "1000"}
    env = {}
    assert threads.set_passive_wait(env) and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert threads.wait_policy(env) == "passive" and threads.wait_policy({}).startswith("default")


@pytest.mark.parametrize("user_env,expected", [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE")])
def test_the_command_sets_a_passive_wait_before_torch_loads(tmp_path, user_env, expected):
    """``python -m mdlm_fast.cli`` in a fresh process: the policy is in the environment by the time
    torch (and with it libgomp, which reads it once) is imported; a library import sets nothing."""
    # A sitecustomize on the path reports the variable at the moment torch's import begins.
    (tmp_path / "sitecustomize.py").write_text(
        "import os, sys\n"
        "class Probe:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' and not getattr(Probe, 'seen', False):\n"
        "            Probe.seen = True\n"
        "            print('at torch import:', os.environ.get('OMP_WAIT_POLICY'), file=sys.stderr, flush=True)\n"
        "sys.meta_path.insert(0, Probe())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in threads.WAIT_VARIABLES}
    env.update(user_env, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO_ROOT)]))
    cli = subprocess.run(
        [sys.executable, "-m", "mdlm_fast.cli", "info"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert cli.returncode == 0, cli.stderr
    assert f"at torch import: {expected}" in cli.stderr.splitlines()
    library = subprocess.run(
        [sys.executable, "-c", "import mdlm_fast, os; print(os.environ.get('OMP_WAIT_POLICY'))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert library.stdout.strip() == user_env.get("OMP_WAIT_POLICY", "None")
