"""The mdlm-fast command line on the embedded models: output, exit codes, one-line errors."""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mdlm_fast.cli.app import main
from tests.helpers.paths import REPO_ROOT

SMALL = ["--steps", "12", "--length", "24", "--batch-size", "2"]


def test_generate_json_reports_text_flops_and_quality(capsys):
    assert main(["generate", *SMALL, "--json", "--prefix", "ROMEO:"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["models"] == ["embedded:heavy", "embedded:light"]
    assert len(report["samples"]) == 2 and len(report["samples"][0]["tokens"]) == 24
    assert all(s["text"].startswith("ROMEO:") for s in report["samples"])
    stats = report["stats"]
    assert stats["steps"] == 12 and stats["sampler"] == "fast" and sum(stats["forwards"]) <= 12
    assert report["flops"]["predicted_block_saving"] == pytest.approx(stats["predicted_saving"])
    assert 0 < report["flops"]["executed_saving_vs_reference_all_heavy"] < 1
    quality = report["quality"]
    assert quality["gen_ppl"] > 1 and quality["samples"] == 2 and quality["unigram_entropy"] > 0


def test_generate_prints_a_readable_report(tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    assert main(["generate", *SMALL, "--sampler", "reference", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "--- sample 0 ---" in printed and "gen-PPL" in printed and "predicted block saving" in printed
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and "text" in json.loads(lines[0])


def test_tokenizer_vocabulary_mismatch_is_refused(tmp_path):

    from mdlm_fast.training.bpe import train_bpe_tokenizer

    text = tmp_path / "t.txt"
    text.write_text("to be or not to be that is the question " * 50)
    small = train_bpe_tokenizer(text, vocab_size=300, out_path=tmp_path / "small.json")
    assert Path(tmp_path / "small.json").exists() and small.vocab_size < 8193
    proc = subprocess.run(
        [sys.executable, "-m", "mdlm_fast.cli", "generate", *SMALL, "--tokenizer", str(tmp_path / "small.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "vocab" in proc.stderr


def test_info(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cpu"] is True and "cuda" in info


# --------------------------------------------------------------------------------------------
# Bad arguments: one line, exit 2, before any sampling, nothing left on disk
# --------------------------------------------------------------------------------------------

TINY = ["--length", "16", "--steps", "8", "--batch-size", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# (id, argv after the subcommand, text the error line must hold). "{tmp}" is the case's own empty
# directory; "{file}" a regular file in another one. Every generate case also passes --out
# {tmp}/samples.jsonl unless it sets --out itself, so a file written late would show.
ERROR_CASES = [
    ("out-is-dir", ["generate", *TINY, "--out", "{tmp}"], "is a directory"),
    ("out-under-file", ["generate", *TINY, "--out", "{file}/samples.jsonl"], "is not a directory"),
    ("out-read-only", ["generate", *TINY, "--out", "/sys/samples.jsonl"], "cannot write in /sys"),
    (
        "judge-typo",
        ["generate", *TINY, "--judge", "/nonexistent/judge"],
        "--judge: no judge directory at /nonexistent/judge",
    ),
    (
        "judge-tokenizer-typo",
        ["generate", *TINY, "--judge-tokenizer", "/nonexistent/tok.json"],
        "--judge-tokenizer: no tokenizer at /nonexistent/tok.json",
    ),
    ("steps-0", ["generate", *TINY, "--steps", "0"], "argument --steps: must be a positive integer, got 0"),
    ("steps-negative", ["generate", *TINY, "--steps", "-5"], "argument --steps: must be a positive integer, got -5"),
    ("length-0", ["generate", *TINY, "--length", "0"], "argument --length: must be a positive integer, got 0"),
    ("length-too-long", ["generate", *TINY, "--length", "257"], "--length 257 exceeds the models' model_length 256"),
    ("batch-0", ["generate", *TINY, "--batch-size", "0"], "argument --batch-size"),
    ("seed-negative", ["generate", *TINY, "--seed", "-1"], "argument --seed"),
    ("threads-0", ["generate", *TINY, "--threads", "0"], "argument --threads"),
    ("temperature-negative", ["generate", *TINY, "--temperature", "-1"], "argument --temperature"),
    ("temperature-nan", ["generate", *TINY, "--temperature", "nan"], "argument --temperature"),
    (
        "temperature-reference",
        ["generate", *TINY, "--sampler", "reference", "--temperature", "0.5"],
        "--temperature 0.5",
    ),
    (
        "schedule-one-model",
        ["generate", *TINY, "--heavy", "embedded:heavy", "--schedule", "foo"],
        "--schedule foo needs two models",
    ),
    ("schedule-unknown", ["generate", *TINY, "--schedule", "foo"], "--schedule foo: invalid model schedule spec"),
    ("schedule-time-bad", ["generate", *TINY, "--schedule", "time:0.5-0.2=L"], "lo < hi"),
    (
        "schedule-file-missing",
        ["generate", *TINY, "--schedule-file", "{tmp}/none.json"],
        "--schedule-file: cannot read time schedule file",
    ),
    ("schedule-file-not-json", ["generate", *TINY, "--schedule-file", "{file}"], "is not valid JSON"),
    ("schedule-file-and-spec", ["generate", *TINY, "--schedule-file", "{file}", "--schedule", "heavy"], "not both"),
    ("light-without-heavy", ["generate", *TINY, "--light", "embedded:light"], "--light needs --heavy"),
    ("embedded-typo", ["generate", *TINY, "--heavy", "embedded:heavvy"], "--heavy embedded:heavvy"),
    ("device-bogus", ["generate", *TINY, "--device", "bogus"], "--device 'bogus' is not a device"),
    ("device-absent", ["generate", *TINY, "--device", "cuda:99"], "--device cuda:99"),
    ("device-other", ["generate", *TINY, "--device", "meta"], "cpu and cuda only"),
    ("prefix-empty", ["generate", *TINY, "--prefix", ""], "--prefix is empty"),
    (
        "prefix-bytes",
        ["generate", *TINY, "--prefix", b"ROMEO\xff"],
        "--prefix is not UTF-8 text (byte 0xff at position 5)",
    ),
    ("prefix-mask", ["generate", *TINY, "--prefix", "ROMEO [MASK]"], "--prefix holds the mask token"),
    ("sampler-unknown", ["generate", *TINY, "--sampler", "bogus"], "argument --sampler: invalid choice"),
    ("out-of-memory", ["generate", *TINY, "--batch-size", str(10**12)], "out of memory at --batch-size 1000000000000"),
    ("train-data", ["train", "--data", "/nonexistent.txt", "--run-dir", "{tmp}/run"], "--data: no text file"),
    ("train-run-dir-file", ["train", "--data", "embedded:sample", "--run-dir", "{file}"], "--run-dir"),
    (
        "train-device",
        ["train", "--data", "embedded:sample", "--run-dir", "{tmp}/run", "--device", "bogus"],
        "--device 'bogus'",
    ),
    (
        "train-size",
        ["train", "--data", "embedded:sample", "--run-dir", "{tmp}/run", "--batch-size", "0"],
        "argument --batch-size",
    ),
    (
        "train-tokenizer",
        ["train", "--data", "embedded:sample", "--run-dir", "{tmp}/run", "--tokenizer", "/nope.json"],
        "--tokenizer: no tokenizer at /nope.json",
    ),
    ("tokenizer-out-dir", ["tokenizer", "--data", "embedded:sample", "--out", "{tmp}"], "is a directory"),
    (
        "tokenizer-vocab",
        ["tokenizer", "--data", "embedded:sample", "--out", "{tmp}/t.json", "--vocab-size", "10"],
        "--vocab-size must be at least 258",
    ),
    ("importance-out-file", ["importance", "--out", "{file}"], "--out {file} is a file"),
    ("importance-data", ["importance", "--data", "embedded:nonesuch", "--out", "{tmp}"], "embedded:nonesuch"),
    ("evaluate-judge", ["evaluate", "--judge", "/nonexistent/judge", "--out", "{tmp}"], "/nonexistent/judge"),
    ("search-budget", ["search", "--time-budget", "0", "--out", "{tmp}"], "argument --time-budget"),
    ("calibrate-both", ["calibrate", "--saving", "0.1", "--n-light", "2", "--out", "{tmp}"], "not both"),
    ("unknown-option", ["generate", "--stepz", "3"], "unrecognized arguments: --stepz"),
    (
        "light-vocabulary",
        ["generate", *TINY, "--heavy", "embedded:heavy", "--light", "{small}"],
        "--light has vocab_size 300",
    ),
    ("schedule-fraction", ["generate", *SMALL, "--schedule", "sandwich:2"], "sandwich:2"),
    ("schedule-steps", ["generate", *SMALL, "--schedule", "H3-L3"], "12"),
    (
        "prefix-too-long",
        ["generate", *SMALL, "--prefix", "To be, or not to be, that is the question " * 4],
        "--prefix is",
    ),
    ("heavy-missing", ["generate", *SMALL, "--heavy", "/nonexistent/model"], "/nonexistent/model"),
    ("tokenizer-missing", ["generate", *SMALL, "--tokenizer", "/nonexistent/tok.json"], "/nonexistent/tok.json"),
    ("precision-fast", ["generate", *SMALL, "--sampler", "fast", "--precision", "fp32-mdlm"], "fp32-mdlm"),
    ("num-samples-sampler", ["generate", *SMALL, "--num-samples", "3", "--sampler", "mdlm"], "--num-samples"),
    ("max-rows-alone", ["generate", *SMALL, "--max-rows", "4"], "--max-rows is the engine's row budget"),
    ("mask-index-range", ["generate", *TINY, "--mask-index", "999999"], "--mask-index 999999 is not a token id of"),
    (
        "segments-default-count",
        ["generate", *TINY, "--schedule", "segments:11"],
        "the default 10 segments need at least 10 steps, got steps=8",
    ),
    ("out-missing-parent", ["generate", *TINY, "--out", "{tmp}/no/such/samples.jsonl"], "/no/such (create it first)"),
    (
        "heavy-is-the-judge",
        ["generate", *TINY, "--heavy", "embedded:judge"],
        "the embedded models are embedded:heavy, embedded:light",
    ),
]


def _expand(argv, tmp, file):
    small = file.parent / "small-vocabulary"
    return [
        a.replace("{tmp}", str(tmp)).replace("{file}", str(file)).replace("{small}", str(small))
        if isinstance(a, str)
        else a
        for a in argv
    ]


def _with_out(argv, tmp):
    return argv + ["--out", str(tmp / "samples.jsonl")] if argv[0] == "generate" and "--out" not in argv else argv


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory):
    """Every error case in its own process (forked from one interpreter, see forked_cli.py), with
    sampling refused in all but the out-of-memory case."""
    root = tmp_path_factory.mktemp("errors")
    file = root / "a-file.txt"
    file.write_text("not a directory\n")
    import mdlm_fast as mf

    config = mf.DiTConfig(hidden_dim=32, n_heads=2, n_blocks=1, cond_dim=8, vocab_size=300, model_length=32)
    mf.save_denoiser(mf.DiT(config).init_random_(0), root / "small-vocabulary")
    cases, dirs = [], {}
    for name, argv, _ in ERROR_CASES:
        tmp, logs = root / name, root / f"{name}.logs"
        tmp.mkdir()
        logs.mkdir()
        argv = _with_out(_expand(argv, tmp, file), tmp)
        argv = [{"hex": a.hex()} if isinstance(a, bytes) else a for a in argv]
        cases.append(
            {"name": name, "argv": argv, "cwd": str(tmp), "logs": str(logs), "refuse_sampling": name != "out-of-memory"}
        )
        dirs[name] = tmp
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "helpers" / "forked_cli.py")],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    return {name: (results[name], dirs[name]) for name in dirs}, file


@pytest.mark.parametrize("name,argv,match", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_every_bad_argument_is_one_line_and_exit_2_before_sampling(error_runs, name, argv, match):
    runs, file = error_runs
    result, tmp = runs[name]
    err = result["stderr"]
    lines = err.strip().splitlines()
    assert result["status"] == 2, err  # 99: sampling started before the arguments were refused
    assert len(lines) == 1 and lines[0].startswith("mdlm-fast: error: "), err
    assert match.replace("{file}", str(file)) in lines[0], lines[0]
    assert result["stdout"] == ""
    assert list(tmp.iterdir()) == [], "a bad argument left files behind"
    assert file.read_text() == "not a directory\n"


# --------------------------------------------------------------------------------------------
# Process behaviour: closed pipes, Ctrl-C, valid JSON from any folder
# --------------------------------------------------------------------------------------------


def test_a_closed_stdout_ends_quietly(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mdlm_fast.cli", "generate", *TINY, "--no-progress", "--judge", "none"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        cwd=tmp_path,
    )
    proc.stdout.close()  # like `| head` that has already exited
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and err == ""


def test_ctrl_c_exits_130_without_traceback_or_output_file(tmp_path):
    out = tmp_path / "samples.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mdlm_fast.cli", "generate", "--steps", "2000", "--batch-size", "2", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        cwd=tmp_path,
    )
    seen = bytearray()

    def read():
        while chunk := proc.stderr.read1(4096):
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while b"fast" not in seen and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)  # the progress bar: sampling has started
    assert b"fast" in seen, bytes(seen)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    reader.join(timeout=10)
    err = bytes(seen).decode()
    assert "Traceback" not in err and err.rstrip().endswith("mdlm-fast: interrupted")
    assert list(tmp_path.iterdir()) == []


def test_json_is_strict_json_from_any_folder(tmp_path):
    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mdlm_fast.cli",
            "generate",
            *TINY,
            "--json",
            "--sampler",
            "confidence",
            "--out",
            "s.jsonl",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout, parse_constant=no_constants)
    assert report["quality"]["samples"] == 1 and report["quality"]["gen_ppl_se"] is None  # one sample: no SE
    assert report["stats"]["sampler"] == "confidence"
    [line] = (tmp_path / "s.jsonl").read_text().splitlines()
    assert json.loads(line, parse_constant=no_constants)["tokens"] == report["samples"][0]["tokens"]
    assert proc.stderr == ""  # --json: no progress bar


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def test_every_option_has_help_with_its_default():
    from mdlm_fast.cli.app import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, p in sub.choices.items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = f"{command} {action.option_strings[0]}"
            assert action.help, f"{flag} has no help"
            if action.nargs != 0 and not action.required:  # flags are off unless given
                assert "default" in action.help, f"{flag}: help does not state the default"


def test_temperature_sampler_threads_and_progress_reach_the_run(capsys):
    before = torch.get_num_threads()
    try:
        runs = []
        for seed in ("0", "1"):
            assert (
                main(
                    [
                        "generate",
                        *TINY,
                        "--sampler",
                        "confidence",
                        "--temperature",
                        "0",
                        "--seed",
                        seed,
                        "--judge",
                        "none",
                        "--threads",
                        "1",
                        "--json",
                    ]
                )
                == 0
            )
            runs.append(json.loads(capsys.readouterr().out))
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    # temperature 0 is argmax: the seed no longer matters
    assert runs[0]["samples"][0]["tokens"] == runs[1]["samples"][0]["tokens"]
    assert main(["generate", *TINY, "--temperature", "1", "--seed", "1", "--judge", "none", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"][0]["tokens"] != runs[0]["samples"][0]["tokens"]

    assert main(["generate", *TINY, "--judge", "none", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["generate", *TINY, "--judge", "none"]) == 0
    assert "fast" in capsys.readouterr().err  # the progress bar


def test_one_model_runs_all_heavy_and_steps_default_to_the_length(capsys):
    assert (
        main(
            [
                "generate",
                "--heavy",
                "embedded:heavy",
                "--tokenizer",
                "embedded",
                "--length",
                "16",
                "--batch-size",
                "1",
                "--json",
                "--judge",
                "none",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["models"] == ["embedded:heavy"] and report["stats"]["steps"] == 16
    assert report["stats"]["schedule"] == "H16"


def test_a_time_schedule_file_runs_at_any_number_of_steps(tmp_path, capsys):
    from mdlm_fast.schedules.time_schedule import TimeSchedule

    path = tmp_path / "schedule.json"
    TimeSchedule.parse("time:0.8-1=L").save(path)
    for steps, expected in ((8, "L2-H6"), (32, "L7-H25")):  # steps run at t = ts[i] > 0.8
        assert (
            main(
                [
                    "generate",
                    "--length",
                    "16",
                    "--steps",
                    str(steps),
                    "--batch-size",
                    "1",
                    "--judge",
                    "none",
                    "--schedule-file",
                    str(path),
                    "--json",
                ]
            )
            == 0
        )
        assert json.loads(capsys.readouterr().out)["stats"]["schedule"] == expected
