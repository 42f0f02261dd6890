"""The mdlm-fast command line on the embedded models: output, exit codes, one-line errors."""
import json
import subprocess
import sys

import pytest

from mdlm_fast.cli import main

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


@pytest.mark.parametrize("argv,match", [
    (["--schedule", "sandwich:2"], "sandwich:2"),
    (["--schedule", "H3-L3"], "12"),
    (["--prefix", "To be, or not to be, that is the question " * 4], "--prefix is"),
    (["--heavy", "/nonexistent/model"], "/nonexistent/model"),
    (["--tokenizer", "/nonexistent/tok.json"], "/nonexistent/tok.json"),
    (["--sampler", "fast", "--precision", "fp32-mdlm"], "fp32-mdlm"),
])
def test_bad_arguments_end_with_one_line_error(argv, match):
    proc = subprocess.run([sys.executable, "-m", "mdlm_fast.cli", "generate", *SMALL, *argv],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mdlm-fast: error:") and match in err[0]
    assert "Traceback" not in proc.stderr


def test_tokenizer_vocabulary_mismatch_is_refused(tmp_path):
    from mdlm_fast.tokenizer import train_bpe_tokenizer
    from pathlib import Path
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be that is the question " * 50)
    small = train_bpe_tokenizer(text, vocab_size=300, out_path=tmp_path / "small.json")
    assert Path(tmp_path / "small.json").exists() and small.vocab_size < 8193
    proc = subprocess.run([sys.executable, "-m", "mdlm_fast.cli", "generate", *SMALL, "--tokenizer",
                           str(tmp_path / "small.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "vocab" in proc.stderr


def test_info(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cpu"] is True and "cuda" in info
