"""The fast sampler's ablation switches: each mechanism off redoes the work it skips and discards it."""

import itertools

import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.sampling.fast import FastOptions

KW = dict(steps=48, batch_size=3, length=24, schedule="sandwich:0.5", sampler="fast", seed=5)


@pytest.fixture(scope="module")
def models():
    def tiny(blocks, seed):
        cfg = mf.DiTConfig(hidden_dim=32, n_heads=4, n_blocks=blocks, cond_dim=16, vocab_size=97, model_length=24)
        return mf.DiT(cfg).init_random_(seed).eval()

    return [tiny(3, 0), tiny(1, 1)]


def test_every_switch_setting_draws_the_same_tokens(models):
    full = mf.sample(models, **KW)
    for switches in itertools.product([True, False], repeat=4):
        got = mf.sample(models, **KW, _fast_options=FastOptions(*switches))
        # the same draws; only the rounding of differently shaped products could flip one
        assert (got.tokens != full.tokens).float().mean() <= 0.01, switches


def test_each_switch_off_costs_what_it_would_have_saved(models):
    def stats(**switches):
        return mf.sample(models, **KW, _fast_options=FastOptions(**switches)).stats

    on = stats()
    no_skip_steps = stats(skip_noop_steps=False, skip_rows=False)
    no_skip_rows = stats(skip_rows=False)
    assert sum(no_skip_steps.forwards) == KW["steps"]  # every step ran, none skipped
    assert sum(no_skip_steps.rows) == KW["steps"] * KW["batch_size"]
    assert sum(on.forwards) < KW["steps"] and sum(no_skip_rows.forwards) == sum(on.forwards)
    assert sum(no_skip_rows.rows) == sum(on.forwards) * KW["batch_size"] > sum(on.rows)
    unfused = stats(fused_head=False)
    assert (
        unfused.head_positions == sum(on.rows) * KW["length"] and on.head_positions == KW["batch_size"] * KW["length"]
    )
    unpruned = stats(pruned_last_block=False)
    assert unpruned.executed_flops["blocks"] > on.executed_flops["blocks"]
    assert unpruned.executed_flops["head"] == on.executed_flops["head"]
    # skipping no-op steps alone saves nothing once rows are skipped: an empty step has no rows
    assert stats(skip_noop_steps=False).executed_flops == on.executed_flops


def test_default_options_are_the_full_fast_sampler(models):
    a = mf.sample(models, **KW)
    b = mf.sample(models, **KW, _fast_options=FastOptions())
    assert torch.equal(a.tokens, b.tokens) and a.stats.executed_flops == b.stats.executed_flops
