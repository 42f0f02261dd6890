"""``--infill TEMPLATE`` on the command line: the syntax, its one-line errors, and filled samples."""

import json

import pytest

from mdlm_fast.cli.app import main
from mdlm_fast.text.infill import InfillError, parse_template, template_tokens
from mdlm_fast.text.tokenizer import load_tokenizer

TEMPLATE = "ROMEO: [MASK:6] JULIET: [MASK:4]"
QUICK = ["--steps", "6", "--batch-size", "2", "--judge", "none", "--no-progress"]


def test_parse_template():
    assert parse_template("a [MASK:2] b [MASK:10]") == ["a ", 2, " b ", 10]
    assert parse_template("[MASK:1]x") == [1, "x"]
    assert parse_template("[MASKED] [MASK:3]") == ["[MASKED] ", 3]  # another word is text


@pytest.mark.parametrize(
    "template,match",
    [
        ("a [MASK] b", "unknown marker '[MASK]' at character 2"),
        ("a [mask:3]", "unknown marker '[mask:3]'"),
        ("a [MASK:0]", "unknown marker '[MASK:0]'"),
        ("a [ MASK:2]", "unknown marker"),
        ("a [MASK:2", "unknown marker '[MASK:2'"),
        ("no spans here", "nothing to fill"),
    ],
)
def test_bad_templates(template, match):
    with pytest.raises(InfillError, match=match.replace("[", r"\[").replace("]", r"\]")):
        parse_template(template)


@pytest.fixture
def no_sampling(monkeypatch):
    """A refused case must end before sampling starts."""
    from mdlm_fast.sampling import api

    def refuse(*args, **kwargs):
        raise AssertionError("sampling started before the arguments were refused")

    monkeypatch.setattr(api, "sample", refuse)


@pytest.mark.parametrize(
    "argv,match",
    [
        (["generate", "--infill", "ROMEO: [MASK] and"], "--infill: unknown marker '[MASK]' at character 7"),
        (["generate", "--infill", "ROMEO: [MASK:x]"], "--infill: unknown marker"),
        (["generate", "--infill", "just a prefix"], "--infill: the template has nothing to fill"),
        (["generate", "--infill", TEMPLATE, "--length", "8"], "--infill: the template is"),
        (["generate", "--infill", "[MASK:300]"], "but the models' model_length is 256"),
        (["generate", "--infill", TEMPLATE, "--prefix", "ROMEO:"], "give --prefix or --infill, not both"),
        (["generate", "--infill", TEMPLATE, "--heavy", "embedded:heavy"], "--infill needs a tokenizer"),
        (["evaluate", "--infill", "a [MASK] b", "--out", "{tmp}"], "--infill: unknown marker"),
        (["evaluate", "--infill", TEMPLATE, "--length", "8", "--out", "{tmp}"], "--infill: the template is"),
    ],
)
def test_bad_infill_is_one_line_and_exit_2_before_sampling(argv, match, tmp_path, capsys, no_sampling):
    argv = [a.replace("{tmp}", str(tmp_path / "out")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mdlm-fast: error: ") and match in err[0], err
    assert not (tmp_path / "out").exists()


def template_ids():
    tokenizer = load_tokenizer("embedded")
    return template_tokens(parse_template(TEMPLATE), tokenizer, mask_id=None), tokenizer


@pytest.mark.parametrize("extra", [[], ["--length", "40"]])
def test_generate_fills_the_spans_and_keeps_the_text(extra, capsys):
    assert main(["generate", "--infill", TEMPLATE, *QUICK, "--json", *extra]) == 0
    report = json.loads(capsys.readouterr().out)
    ids, _ = template_ids()
    length = int(extra[1]) if extra else len(ids)
    for sample in report["samples"]:
        tokens = sample["tokens"]
        assert len(tokens) == length
        kept = [(i, t) for i, t in enumerate(ids) if t is not None]
        assert all(tokens[i] == t for i, t in kept)  # the template's text, token for token
        assert sample["text"].startswith("ROMEO:") and " JULIET:" in sample["text"]
    assert report["stats"]["head_positions"] == 2 * (length - sum(t is not None for t in ids))


def test_evaluate_takes_a_template(tmp_path, capsys):
    out = tmp_path / "ev"
    argv = [
        "evaluate",
        "--infill",
        TEMPLATE,
        "--steps",
        "4",
        "--samples",
        "2",
        "--batch-size",
        "2",
        "--schedule",
        "heavy",
        "--judge",
        "none",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    result = json.loads((out / "evaluate.json").read_text())
    ids, _ = template_ids()
    assert result["settings"]["infill"] == TEMPLATE and result["settings"]["length"] == len(ids)
