"""Training, tokenizer, data and judge tests (tiny sizes; the whole file runs in well under 30 s)."""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mdlm_fast.analysis.judge import CausalLM, CausalLMConfig, load_judge, nll, save_judge
from mdlm_fast.cli.train import add_tokenizer_arguments, add_train_arguments, run_train, run_train_tokenizer
from mdlm_fast.cli.validate import CliError
from mdlm_fast.models.checkpoint import CheckpointError, load_denoiser
from mdlm_fast.models.dit import DiT, DiTConfig, subs_log_probs
from mdlm_fast.schedules.noise import LogLinearNoise
from mdlm_fast.text.data import derive_seed, load_corpus, read_text, split_documents, split_train_val
from mdlm_fast.text.tokenizer import TokenizerError, check_compatible, load_tokenizer
from mdlm_fast.training.bpe import train_bpe_tokenizer
from mdlm_fast.training.config import TrainConfig, TrainError
from mdlm_fast.training.export import export
from mdlm_fast.training.loop import train
from mdlm_fast.training.objectives import mdlm_loss, sample_noise

SAMPLE = "embedded:sample"  # shipped: 100k characters of the corpus around a play boundary
TIMING_FIELDS = ("tokens_per_s", "wall_time_s")


# --------------------------------------------------------------------------------------------
# Fixtures: the shipped slice of the corpus spanning a document boundary, a tiny BPE
# --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and the runs here must be reproducible)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    text = read_text(SAMPLE)
    assert text.find("ANTONY AND CLEOPATRA\n\nby") == 50_000
    path = tmp_path_factory.mktemp("data") / "slice.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok_file(text_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_bpe_tokenizer(text_file, vocab_size=300, out_path=out)
    return out


@pytest.fixture(scope="module")
def tok(tok_file):
    return load_tokenizer(tok_file)


def tiny_config(text_file, tok_file, **kw) -> TrainConfig:
    base = dict(
        data=str(text_file),
        tokenizer=str(tok_file),
        n_blocks=1,
        hidden_dim=32,
        n_heads=2,
        cond_dim=16,
        length=32,
        batch_size=4,
        lr=3e-3,
        warmup_steps=2,
        lr_schedule="constant",
        max_steps=10,
        eval_every=5,
        eval_batches=2,
        save_every=3,
        log_every=2,
        export_val_passes=1,
        seed=1,
        dropout=0.1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _drop_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


def _metrics(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_state(a: Path, b: Path) -> None:
    sa = torch.load(a / "state.pt", weights_only=True)
    sb = torch.load(b / "state.pt", weights_only=True)
    assert sa["step"] == sb["step"] and sa["tokens_seen"] == sb["tokens_seen"]
    for key in ("model", "ema"):
        assert sa[key].keys() == sb[key].keys()
        for name in sa[key]:
            assert torch.equal(sa[key][name], sb[key][name]), f"{key}.{name} differs"
    oa, ob = sa["optimizer"]["state"], sb["optimizer"]["state"]
    for i in oa:
        for k in oa[i]:
            assert torch.equal(oa[i][k], ob[i][k]), f"optimizer state {i}.{k} differs"


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def test_tokenizer_round_trip_and_layout(tok, text_file, tmp_path):
    assert tok.vocab_size == 301
    assert tok.mask_id == tok.vocab_size - 1 and tok.eos_id == 0
    passage = read_text(text_file)[1000:3000]
    ids = tok.encode(passage)
    assert max(ids) < tok.mask_id and tok.decode(ids) == passage
    assert tok.decode(tok.encode("Oh, Romeo!\n")) == "Oh, Romeo!\n"
    # the mask is dropped, or rendered
    with_mask = ids[:5] + [tok.mask_id] + ids[5:10]
    assert tok.decode(with_mask) == tok.decode(ids[:10])
    assert tok.decode(with_mask, mask_text="_") == tok.decode(ids[:5]) + "_" + tok.decode(ids[5:10])
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size + 3])
    # deterministic: training again gives the same tokenizer
    again = train_bpe_tokenizer(text_file, vocab_size=300, out_path=tmp_path / "t.json")
    assert again.fingerprint == tok.fingerprint


def test_load_tokenizer_errors(tok_file, tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer at"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot read"):
        load_tokenizer(bad)
    empty = tmp_path / "emptydir"
    empty.mkdir()
    with pytest.raises(TokenizerError):
        load_tokenizer(empty)
    d = tmp_path / "hfdir"
    d.mkdir()
    (d / "tokenizer.json").write_bytes(tok_file.read_bytes())
    try:
        import transformers  # noqa: F401
    except ImportError:  # without transformers a dir with tokenizer.json is read directly
        assert load_tokenizer(d).vocab_size == 301


def test_check_compatible(tok):
    check_compatible(tok, 301, 300)
    check_compatible(tok, 320, 300)  # a padded model vocabulary is fine
    with pytest.raises(TokenizerError, match="has 301 ids but the model's vocabulary has only 200"):
        check_compatible(tok, 200, 199)
    with pytest.raises(TokenizerError, match="mask token at id 300 but the model's mask_index"):
        check_compatible(tok, 301, 299)
    with pytest.raises(TokenizerError, match="outside its vocabulary"):
        check_compatible(tok, 301, 301)
    gpt2_like = copy.copy(tok)  # a tokenizer without a mask token (GPT-2 style)
    gpt2_like.mask_id, gpt2_like.vocab_size = None, 300
    check_compatible(gpt2_like, 301, 300)  # mask appended after the vocabulary
    with pytest.raises(TokenizerError, match="is a real token"):
        check_compatible(gpt2_like, 301, 7)
    for err_fn in (lambda: check_compatible(tok, 200, 199),):
        with pytest.raises(TokenizerError) as e:
            err_fn()
        assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def test_split_is_contiguous_and_disjoint():
    text = read_text(SAMPLE)
    train_text, val_text = split_train_val(text, 0.05)
    assert text.startswith(train_text) and text.endswith(val_text)
    gap = text[len(train_text) : len(text) - len(val_text)]
    assert gap.strip("\n") == ""  # only the separating newlines are dropped
    assert 0.04 < len(val_text) / len(text) < 0.06
    assert text[len(train_text) :].startswith("\n\n")  # the cut lies on a paragraph boundary
    assert len(split_documents(text)) == 2
    assert split_train_val(text, 1.0) == ("", text) and split_train_val(text, 0.0) == (text, "")
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(text, 1.5)


def test_shipped_held_out_text_is_the_split_the_models_were_validated_on():
    """The held-out text reproduces the embedded models' validation set: its token count gives the
    cards' window count, and its checksum is the one the data README records."""
    import hashlib

    from mdlm_fast.text.data import EMBEDDED_TEXTS, held_out_fraction

    heldout = EMBEDDED_TEXTS["embedded:heldout"]
    readme = (heldout.parent / "README.md").read_text()
    for name, path in EMBEDDED_TEXTS.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() in readme, name
    corpus = load_corpus("embedded:heldout", "embedded", val_fraction=held_out_fraction("embedded:heldout"))
    assert corpus.train.numel() == 0 and corpus.n_val_docs == 2  # Two Gentlemen's end, The Winter's Tale
    card = json.loads((Path(heldout).parents[1] / "heavy" / "training.json").read_text())
    windows = corpus.val_windows(card["config"]["length"])
    assert windows.shape[0] == card["val_windows"] == 265
    assert windows.numel() == card["val_tokens"]
    assert read_text("embedded:heldout").startswith("[Enter PANTHINO.]")
    with pytest.raises(FileNotFoundError, match="embedded:heldout"):
        read_text("embedded:nonesuch")


def test_corpus_windows(text_file, tok, tmp_path):
    corpus = load_corpus(text_file, tok, cache_dir=tmp_path)
    again = load_corpus(text_file, tok, cache_dir=tmp_path)  # from the cache
    assert len(list(tmp_path.glob("tokens-*.npz"))) == 1
    assert torch.equal(corpus.train, again.train) and torch.equal(corpus.val, again.val)
    assert corpus.n_train_docs == 2  # the slice spans a play boundary
    assert int((corpus.train == tok.eos_id).sum()) == 2 and int(corpus.train[-1]) == tok.eos_id
    # streams are the tokenized split texts
    train_text, val_text = split_train_val(read_text(text_file), 0.05)
    assert tok.decode(corpus.val.tolist()) == val_text.strip("\n") + "<|endoftext|>"
    assert tok.decode(corpus.train.tolist()).startswith(train_text.strip("\n")[:500])
    # validation: non-overlapping tiling; training: contiguous windows keyed by (seed, step)
    win = corpus.val_windows(32)
    assert torch.equal(win.reshape(-1), corpus.val[: win.numel()])
    b1 = corpus.train_batch(7, 4, 32, seed=3)
    assert torch.equal(b1, corpus.train_batch(7, 4, 32, seed=3))
    assert not torch.equal(b1, corpus.train_batch(8, 4, 32, seed=3))
    all_windows = corpus.train.unfold(0, 32, 1)
    for row in b1:
        assert (all_windows == row).all(dim=1).any()  # a contiguous window of the stream
    assert derive_seed(0, "data", 1) != derive_seed(0, "data", 2)


# --------------------------------------------------------------------------------------------
# MDLM loss
# --------------------------------------------------------------------------------------------


def test_mdlm_loss_matches_hand_computation():
    torch.manual_seed(0)
    cfg = DiTConfig(hidden_dim=16, n_heads=2, n_blocks=1, cond_dim=8, vocab_size=11, model_length=6, dropout=0.0)
    model = DiT(cfg).init_random_(3).eval()
    x0 = torch.tensor([[1, 4, 2, 9, 0, 3], [5, 5, 7, 8, 6, 2]])
    t = torch.tensor([0.3, 0.8])
    masked = torch.tensor([[True, False, True, False, False, True], [False, True, True, True, True, False]])
    noise = LogLinearNoise()
    got = mdlm_loss(model, x0, t, masked, noise)

    xt = torch.where(masked, torch.tensor(10), x0)
    with torch.no_grad():
        logits = model(xt, noise.sigma(t))
    log_p = subs_log_probs(logits, xt, 10)
    total = 0.0
    for b in range(2):
        tb = float(t[b])
        sigma = -math.log1p(-(1 - 1e-3) * tb)
        weight = (1 - 1e-3) / (1 - (1 - 1e-3) * tb) / math.expm1(sigma)
        assert weight == pytest.approx(1 / tb, rel=1e-9)
        for pos in range(6):
            if masked[b, pos]:
                row = logits[b, pos, :10].double()  # mask logit excluded (SUBS)
                lp = float(row[x0[b, pos]] - torch.logsumexp(row, 0))
                assert lp == pytest.approx(float(log_p[b, pos, x0[b, pos]]), abs=1e-5)
                total += -lp * weight
            else:
                assert float(log_p[b, pos, x0[b, pos]]) == 0.0  # carried over: no loss
    assert float(got.detach()) == pytest.approx(total / 12, rel=1e-5)


def test_antithetic_t_is_stratified():
    x0 = torch.zeros(8, 64, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    t, masked = sample_noise(x0, LogLinearNoise(), gen, antithetic=True, sampling_eps=1e-3)
    u = (t - 1e-3) / (1 - 1e-3)
    strata = torch.floor(u * 8).long().sort().values
    assert torch.equal(strata, torch.arange(8))
    assert masked.dtype == torch.bool and masked.shape == x0.shape


# --------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mdlm", "judge"])
def test_loss_decreases(kind, text_file, tok_file, tmp_path):
    cfg = tiny_config(
        text_file,
        tok_file,
        kind=kind,
        max_steps=30,
        log_every=1,
        eval_every=30,
        save_every=30,
        n_blocks=2,
        lr=5e-3,
        dropout=0.0,
        batch_size=8,
    )
    result = train(cfg, tmp_path / "run", progress=False)
    losses = [r["loss"] for r in result.metrics]
    assert len(losses) == 30 and result.stopped == "max_steps"
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5, (first, last)
    assert result.val_loss is not None and math.isfinite(result.val_loss)


@pytest.fixture(scope="module")
def straight_runs(text_file, tok_file, tmp_path_factory):
    """Uninterrupted 10-step runs of each kind, the reference for the resume tests."""
    runs = {}
    for kind in ("mdlm", "judge"):
        rd = tmp_path_factory.mktemp(f"straight-{kind}")
        train(tiny_config(text_file, tok_file, kind=kind), rd, progress=False)
        runs[kind] = rd
    return runs


@pytest.mark.parametrize("kind", ["mdlm", "judge"])
@pytest.mark.parametrize("interrupt", ["max_steps", "sigterm", "time_budget"])
def test_resume_is_exact(kind, interrupt, straight_runs, text_file, tok_file, tmp_path):
    rd = tmp_path / "run"
    if interrupt == "max_steps":
        first = train(tiny_config(text_file, tok_file, kind=kind, max_steps=5), rd, progress=False)
        assert first.step == 5
    elif interrupt == "sigterm":
        old = signal.getsignal(signal.SIGTERM)

        def kill_at_3(step):
            if step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

        first = train(tiny_config(text_file, tok_file, kind=kind), rd, progress=False, callback=kill_at_3)
        assert first.stopped == "signal" and first.step == 3
        assert signal.getsignal(signal.SIGTERM) is old  # handler restored
    else:
        first = train(tiny_config(text_file, tok_file, kind=kind), rd, progress=False, time_budget_s=0.0)
        assert first.stopped == "time_budget" and first.step == 1
    saved = torch.load(rd / "state.pt", weights_only=True)
    assert saved["step"] == first.step  # stopped cleanly with its state on disk

    second = train(tiny_config(text_file, tok_file, kind=kind), rd, progress=False)
    assert second.step == 10 and second.stopped == "max_steps"
    _assert_same_state(rd, straight_runs[kind])
    assert _drop_timing(_metrics(rd)) == _drop_timing(_metrics(straight_runs[kind]))


def test_resume_refuses_other_settings(straight_runs, text_file, tok_file):
    with pytest.raises(TrainError, match="other settings.*lr"):
        train(tiny_config(text_file, tok_file, lr=1e-2, max_steps=12), straight_runs["mdlm"], progress=False)


@pytest.mark.parametrize("betas", [(0.9,), (0.9, 0.98, 0.5)])
def test_config_refuses_betas_that_are_not_a_pair(betas):
    with pytest.raises(TrainError, match="betas must be two numbers"):
        TrainConfig(data="", betas=betas)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def test_export_writes_loadable_models(straight_runs, tmp_path):
    out = tmp_path / "heavy"
    info = export(straight_runs["mdlm"], out)
    model = load_denoiser(out)
    state = torch.load(straight_runs["mdlm"] / "state.pt", weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state["ema"][name]), name
    card = (out / "MODEL_CARD.md").read_text()
    assert info["data_sha256"] in card and "perplexity bound" in card
    assert f"{info['val_loss']:.4f}" in card and "Tokens seen:** 1,280" in card
    tok = load_tokenizer(out / "tokenizer.json")
    check_compatible(tok, model.config.vocab_size, model.config.mask_index)
    half = export(straight_runs["mdlm"], out, dtype="bf16", include_tokenizer=False)
    assert not (out / "tokenizer.json").exists()  # replacing an export works
    model16 = load_denoiser(out)
    for name, value in model16.state_dict().items():
        if name != "rotary_emb.inv_freq":
            assert torch.equal(value, state["ema"][name].bfloat16().float()), name
    assert half["weights_dtype"] == "bf16" and "stored as bf16" in (out / "MODEL_CARD.md").read_text()
    assert half["val_loss"] == pytest.approx(info["val_loss"], abs=0.05)

    jout = tmp_path / "judge"
    jinfo = export(straight_runs["judge"], jout)
    judge = load_judge(jout)
    assert judge.config.vocab_size == tok.vocab_size and judge.config.eos_id == tok.eos_id
    assert "perplexity" in (jout / "MODEL_CARD.md").read_text()
    assert jinfo["val_ppl"] == pytest.approx(math.exp(jinfo["val_loss"]))
    with pytest.raises(CheckpointError):
        load_judge(tmp_path / "nothing")


# --------------------------------------------------------------------------------------------
# Judge
# --------------------------------------------------------------------------------------------


def test_judge_nll_on_a_constructed_unigram_model(tmp_path):
    cfg = CausalLMConfig(
        vocab_size=5, hidden_dim=4, n_heads=2, n_blocks=1, max_length=4, dropout=0.0, tie_embeddings=False
    )
    model = CausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        # ln_f's output is its bias b for any input; logits = W b, the same at every position
        model.ln_f.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        model.head.weight[:, 0] = torch.tensor([0.0, 1.0, 2.0, -1.0, 0.5])
    log_p = torch.log_softmax(torch.tensor([0.0, 1.0, 2.0, -1.0, 0.5]), 0)
    ids = torch.tensor([[0, 1, 2, 3, 4, 2, 2, 1, 0, 3, 4]])  # longer than max_length: slides
    got = nll(model, ids)
    assert got.shape == (1, 10)
    assert torch.allclose(got, -log_p[ids[:, 1:]], atol=1e-6)
    got_bos = nll(model, ids, bos_id=0)
    assert got_bos.shape == (1, 11) and torch.allclose(got_bos, -log_p[ids], atol=1e-6)
    # save / load round trip keeps it
    save_judge(model, tmp_path / "j")
    assert torch.allclose(nll(load_judge(tmp_path / "j"), ids), got)


def test_judge_nll_sliding_window_matches_direct():
    torch.manual_seed(0)
    model = CausalLM(
        CausalLMConfig(vocab_size=13, hidden_dim=8, n_heads=2, n_blocks=2, max_length=8, dropout=0.0)
    ).eval()
    ids = torch.randint(0, 13, (3, 8))
    direct = F.cross_entropy(model(ids[:, :-1]).transpose(1, 2), ids[:, 1:], reduction="none")
    assert torch.allclose(nll(model, ids), direct, atol=1e-6)
    long_ids = torch.randint(0, 13, (2, 21))
    out = nll(model, long_ids)
    assert out.shape == (2, 20)
    first = F.cross_entropy(model(long_ids[:, :8]).transpose(1, 2), long_ids[:, 1:9], reduction="none")
    assert torch.allclose(out[:, :8], first, atol=1e-6)
    # a later token is scored with the window that starts at the stride (4)
    later = F.cross_entropy(model(long_ids[:, 4:12]).transpose(1, 2), long_ids[:, 5:13], reduction="none")
    assert torch.allclose(out[:, 8:12], later[:, 4:], atol=1e-6)


# --------------------------------------------------------------------------------------------
# CLI helpers
# --------------------------------------------------------------------------------------------


def test_cli_train_tokenizer_and_export(text_file, tmp_path, capsys):
    parser = add_tokenizer_arguments(argparse.ArgumentParser())
    tok_out = tmp_path / "tok.json"
    args = parser.parse_args(["--data", str(text_file), "--vocab-size", "280", "--out", str(tok_out)])
    assert run_train_tokenizer(args) == 0
    assert json.loads(capsys.readouterr().out)["mask_id"] == 280

    parser = add_train_arguments(argparse.ArgumentParser())
    argv = [
        "--data",
        str(text_file),
        "--run-dir",
        str(tmp_path / "run"),
        "--tokenizer",
        str(tok_out),
        "--n-blocks",
        "1",
        "--hidden-dim",
        "32",
        "--n-heads",
        "2",
        "--cond-dim",
        "16",
        "--length",
        "32",
        "--batch-size",
        "2",
        "--max-steps",
        "3",
        "--eval-batches",
        "1",
        "--export-val-passes",
        "1",
        "--no-progress",
        "--export",
        str(tmp_path / "model"),
    ]
    assert run_train(parser.parse_args(argv), argv=["train", *argv]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 3 and summary["export"] == str(tmp_path / "model")
    card = (tmp_path / "model" / "MODEL_CARD.md").read_text()
    assert "mdlm-fast train --data" in card
    assert load_denoiser(tmp_path / "model").config.n_blocks == 1

    bad = parser.parse_args(["--data", str(tmp_path / "nope.txt"), "--run-dir", str(tmp_path / "r2")])
    with pytest.raises(CliError, match="--data: no text file at"):
        run_train(bad, argv=[])
