"""Analytic FLOPs: formulas against hand-computed numbers, schedule totals, the executed accumulator.

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

import pytest
import torch

from mdlm_fast.schedules.flops import (
    ExecutedFlops,
    ModelShape,
    block_flops,
    forward_flops,
    head_flops,
    schedule_flops,
)
from mdlm_fast.schedules.model_schedule import ModelSchedule, ScheduleError

# d = 4, V = 10: per token per block 24*16 = 384 linear + 4*L*d attention.
HEAVY = ModelShape(hidden_dim=4, n_blocks=3, vocab_size=10)
LIGHT = ModelShape(hidden_dim=4, n_blocks=1, vocab_size=10)
PAPER_HEAVY = ModelShape(hidden_dim=768, n_blocks=12, vocab_size=50258)
PAPER_LIGHT = ModelShape(hidden_dim=768, n_blocks=4, vocab_size=50258)


def test_block_flops_by_hand():
    # rows 2, L 3: per token per block 384 + 4*3*4 = 432; 2 rows * 3 tokens * 3 blocks.
    assert block_flops(HEAVY, rows=2, length=3) == 2 * 3 * 3 * 432 == 7776
    assert block_flops(LIGHT, rows=2, length=3) == 2592
    assert block_flops(HEAVY, rows=0, length=3) == 0
    # MLP ratio 2: linear 2*(3 + 1 + 4) d^2 = 16 d^2 = 256, attention 48.
    assert block_flops(ModelShape(4, 1, 10, mlp_ratio=2), 1, 3) == 3 * (256 + 48)


def test_block_flops_with_the_last_block_at_a_few_queries_by_hand():
    # rows 2, L 3, d 4: full blocks 432 per token; the last block's key/value projections
    # 2 * 2 d^2 = 64 per token, and per query 2 * (d^2 + d^2 + 8 d^2) + 4 L d = 320 + 48 = 368.
    assert block_flops(HEAVY, rows=2, length=3, last_block_queries=2) == 6 * (2 * 432 + 64) + 2 * 368
    # queries at every token cost exactly the full block
    assert block_flops(HEAVY, 2, 3, last_block_queries=6) == block_flops(HEAVY, 2, 3)
    with pytest.raises(ValueError, match="last_block_queries"):
        block_flops(HEAVY, 2, 3, last_block_queries=-1)


def test_paper_block_flops_per_token():
    # d = 768, L = 1024: 24 d^2 + 4 L d per token per block.
    per_token = 24 * 768**2 + 4 * 1024 * 768
    assert block_flops(PAPER_HEAVY, 1, 1024) == 1024 * 12 * per_token


def test_head_and_forward_flops_by_hand():
    assert head_flops(HEAVY, 5) == 2 * 4 * 10 * 5 == 400
    assert head_flops(HEAVY, 0) == 0
    assert forward_flops(HEAVY, 2, 3) == 7776 + 2 * 4 * 10 * 6  # head over all 6 positions
    assert forward_flops(HEAVY, 2, 3, head_positions=1) == 7776 + 80


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_counts_are_validated(bad):
    with pytest.raises(ValueError, match="rows"):
        block_flops(HEAVY, bad, 3)


def test_schedule_flops_by_hand():
    s = ModelSchedule.parse("L1-H2")
    r = schedule_flops(s, [HEAVY, LIGHT], batch=2, length=3)
    assert r["per_model_forwards"] == (2, 1)
    assert r["blocks"] == 2 * 7776 + 2592
    assert r["head"] == 3 * 480
    assert r["total"] == r["blocks"] + r["head"] == 19584
    assert r["head_fraction"] == pytest.approx(1440 / 19584)
    assert r["predicted_saving"] == pytest.approx((1 / 3) * (1 - 1 / 3))
    assert r["analytic_saving"] == pytest.approx(1 - 19584 / (3 * 7776 + 3 * 480))


def test_noise_removal_adds_one_forward():
    s = ModelSchedule.parse("L1-H2")
    plain = schedule_flops(s, [HEAVY, LIGHT], 2, 3)
    extra = schedule_flops(s, [HEAVY, LIGHT], 2, 3, noise_removal_model=0)
    assert extra["per_model_forwards"] == (3, 1)
    assert extra["total"] - plain["total"] == forward_flops(HEAVY, 2, 3)
    with pytest.raises(ScheduleError, match="noise_removal"):
        schedule_flops(s, [HEAVY, LIGHT], 2, 3, noise_removal_model=2)


def test_head_dilutes_the_saving():
    """Same widths: block-only saving equals eq. 3; with the paper's head the analytic saving is smaller."""
    s = ModelSchedule.from_fraction(128, 0.25)
    r = schedule_flops(s, [PAPER_HEAVY, PAPER_LIGHT], batch=1, length=128)
    base = schedule_flops(ModelSchedule.all_heavy(128), [PAPER_HEAVY, PAPER_LIGHT], 1, 128)
    assert r["predicted_saving"] == pytest.approx(1 / 6)
    assert 1 - r["blocks"] / base["blocks"] == pytest.approx(r["predicted_saving"])
    assert r["analytic_saving"] < r["predicted_saving"]
    assert r["analytic_saving"] == pytest.approx(r["predicted_saving"] * (1 - base["head_fraction"]))
    assert base["analytic_saving"] == 0.0
    # All light: eq. 3 predicts 2/3, the head keeps the analytic number well below it.
    all_light = schedule_flops("L128", [PAPER_HEAVY, PAPER_LIGHT], 1, 128)
    assert all_light["predicted_saving"] == pytest.approx(2 / 3)
    assert all_light["analytic_saving"] < 0.5


def test_schedule_flops_checks_models():
    with pytest.raises(ScheduleError, match=r"model index 2.*2 model"):
        schedule_flops(ModelSchedule.parse("H1-M2x1"), [HEAVY, LIGHT], 1, 3)
    extra = schedule_flops(ModelSchedule.all_heavy(2), [HEAVY, LIGHT, LIGHT], 1, 3)
    assert extra["per_model_forwards"] == (2, 0, 0)


def test_model_shape_of_duck_typing():
    cfg = {"hidden_dim": 4, "n_blocks": 3, "vocab_size": 10, "n_heads": 2}
    assert ModelShape.of(cfg) == ModelShape(4, 3, 10, n_heads=2)

    class Config:
        hidden_dim, n_blocks, vocab_size, cond_dim = 4, 1, 10, 8

    class Model:
        config = Config()

    assert ModelShape.of(Model()) == ModelShape(4, 1, 10, cond_dim=8)
    assert ModelShape.of(Config()) == ModelShape(4, 1, 10, cond_dim=8)
    assert ModelShape.of(HEAVY) is HEAVY

    class Embed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Parameter(torch.zeros(10, 4))

    class Backbone(torch.nn.Module):  # MDLM parameter names, no config
        def __init__(self):
            super().__init__()
            self.vocab_embed = Embed()
            self.blocks = torch.nn.ModuleList(torch.nn.Identity() for _ in range(3))

    assert ModelShape.of(Backbone()) == HEAVY
    with pytest.raises(TypeError, match="object"):
        ModelShape.of(object())
    with pytest.raises(ValueError, match="hidden_dim"):
        ModelShape(0, 1, 10)


def test_executed_flops_sums():
    ex = ExecutedFlops()
    assert ex.total == 0 and ex.as_dict()["forwards"] == []
    ex.add_trunk(0, HEAVY, rows=2, length=3)
    ex.add_trunk(1, LIGHT, rows=1, length=3)
    ex.add_trunk(1, {"hidden_dim": 4, "n_blocks": 1, "vocab_size": 10}, rows=torch.tensor(2), length=3)
    ex.add_trunk(0, HEAVY, rows=0, length=3)  # nothing ran: not a forward
    assert ex.add_head(HEAVY, 3) == 240
    ex.add_head(LIGHT, 0)
    assert ex.blocks == 7776 + 3 * 1 * 3 * 432
    assert ex.head == 240 and ex.head_positions == 3
    assert ex.total == ex.blocks + ex.head
    assert ex.forwards == {0: 1, 1: 2} and ex.rows == {0: 2, 1: 3}
    d = ex.as_dict()
    assert d["forwards"] == [1, 2] and d["rows"] == [2, 3] and d["total"] == ex.total
    only_light = ExecutedFlops()
    only_light.add_trunk(1, LIGHT, 1, 3)
    assert only_light.as_dict()["forwards"] == [0, 1]
    assert "ExecutedFlops" in repr(ex)


def test_executed_full_batch_matches_schedule_flops():
    """A reference-style loop recorded step by step gives exactly the analytic schedule total."""
    s = ModelSchedule.from_fraction(12, 0.5, "q2")
    shapes = [HEAVY, LIGHT]
    ex = ExecutedFlops()
    for k in s:
        ex.add_trunk(k, shapes[k], rows=2, length=3)
        ex.add_head(shapes[k], 2 * 3)
    r = schedule_flops(s, shapes, 2, 3)
    assert (ex.blocks, ex.head, ex.total) == (r["blocks"], r["head"], r["total"])
    assert tuple(ex.as_dict()["forwards"]) == r["per_model_forwards"]
