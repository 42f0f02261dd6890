"""The trained models shipped in the package: they load, agree with each other, and their cards hold."""

import json
from pathlib import Path

import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.models.embedded import ASSETS as EMBEDDED_DIR

ASSETS = Path(mf.__file__).parent / "assets"


def _training(name):
    return json.loads((ASSETS / name / "training.json").read_text())


def test_embedded_pair_loads_and_shares_vocabulary_and_mask():
    heavy, light = mf.load_denoiser("embedded:heavy"), mf.load_denoiser("embedded:light")
    tokenizer = mf.load_tokenizer("embedded")
    assert heavy.config.n_blocks == 8 and light.config.n_blocks == 2
    assert heavy.config.hidden_dim == light.config.hidden_dim == 256
    assert heavy.config.vocab_size == light.config.vocab_size == tokenizer.vocab_size
    assert heavy.config.mask_index == light.config.mask_index == tokenizer.mask_id == tokenizer.vocab_size - 1
    x = torch.full((1, 16), heavy.config.mask_index)
    with torch.no_grad():
        assert torch.isfinite(heavy(x, torch.zeros(1))).all() and torch.isfinite(light(x, torch.zeros(1))).all()


def test_embedded_judge_scores_shakespeare_better_than_noise():
    judge, tokenizer = mf.load_judge("embedded"), mf.load_tokenizer("embedded")
    verse = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun."
    scrambled = " ".join(sorted(verse.split(), key=lambda w: (len(w), w)))
    good = mf.generative_perplexity([verse], judge, tokenizer)["gen_ppl"]
    bad = mf.generative_perplexity([scrambled], judge, tokenizer)["gen_ppl"]
    assert good < bad


def test_model_cards_record_the_run_and_heavy_beats_light():
    for name in ("heavy", "light", "judge"):
        card = (ASSETS / name / "MODEL_CARD.md").read_text()
        assert "mdlm-fast train" in card and "shakespeare.txt" in card
    heavy, light = _training("heavy"), _training("light")
    assert heavy["val_loss"] < light["val_loss"] - 0.05
    assert heavy["max_steps"] == light["max_steps"] == heavy["step"]


def test_embedded_assets_fit_the_wheel_budget():
    total = sum(p.stat().st_size for p in EMBEDDED_DIR.rglob("*") if p.is_file())
    assert total <= 40e6


def test_unknown_embedded_name_is_a_clear_error():
    with pytest.raises(
        mf.CheckpointError, match="no embedded model .huge.; the embedded models are embedded:heavy, embedded:light"
    ):
        mf.load_denoiser("embedded:huge")
