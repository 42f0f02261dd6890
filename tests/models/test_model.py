"""The DiT denoiser against an independent plain-tensor implementation of MDLM's math.

The reference below shares no code with mdlm_fast.models.dit: its own layer norm, rotary (complex
multiplication), attention (explicit softmax), GELU(tanh) and timestep embedding, in float64.
test_checkpoint.py reuses it (and the published key list) to check loaded checkpoints.
"""

from __future__ import annotations

import math

import pytest
import torch

from mdlm_fast.models.dit import DiT, DiTConfig, subs_log_probs

TINY = dict(hidden_dim=32, n_heads=4, n_blocks=2, cond_dim=16, vocab_size=37, model_length=16)


@pytest.fixture(params=["cpu", "cuda"])
def dev(request) -> str:
    """Devices to run on; CUDA is probed at run time, never at import."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device visible")
    return request.param


def tiny_config(**overrides) -> DiTConfig:
    return DiTConfig(**{**TINY, **overrides})


def random_model(seed: int = 0, std: float = 0.2, **overrides) -> DiT:
    # std 0.2 rather than 0.02: tiny widths need large weights for every path to matter.
    return DiT(tiny_config(**overrides)).init_random_(seed, std=std).eval()


# --------------------------------------------------------------------------------------------
# The published parameter layout and an independent forward
# --------------------------------------------------------------------------------------------


def published_shapes(hidden_dim, n_blocks, cond_dim, vocab_size, **_) -> dict[str, tuple]:
    """Backbone parameter names (no ``backbone.`` prefix) and shapes, in MDLM's parameters() order
    (design §10); the buffer ``rotary_emb.inv_freq`` is not a parameter."""
    d, c, v = hidden_dim, cond_dim, vocab_size
    shapes = {
        "vocab_embed.embedding": (v, d),
        "sigma_map.mlp.0.weight": (c, 256),
        "sigma_map.mlp.0.bias": (c,),
        "sigma_map.mlp.2.weight": (c, c),
        "sigma_map.mlp.2.bias": (c,),
    }
    for i in range(n_blocks):
        p = f"blocks.{i}."
        shapes.update(
            {
                p + "norm1.weight": (d,),
                p + "attn_qkv.weight": (3 * d, d),
                p + "attn_out.weight": (d, d),
                p + "norm2.weight": (d,),
                p + "mlp.0.weight": (4 * d, d),
                p + "mlp.0.bias": (4 * d,),
                p + "mlp.2.weight": (d, 4 * d),
                p + "mlp.2.bias": (d,),
                p + "adaLN_modulation.weight": (6 * d, c),
                p + "adaLN_modulation.bias": (6 * d,),
            }
        )
    shapes.update(
        {
            "output_layer.norm_final.weight": (d,),
            "output_layer.linear.weight": (v, d),
            "output_layer.linear.bias": (v,),
            "output_layer.adaLN_modulation.weight": (2 * d, c),
            "output_layer.adaLN_modulation.bias": (2 * d,),
        }
    )
    return shapes


def random_published_state(cfg: dict, seed: int, std: float = 0.2) -> dict[str, torch.Tensor]:
    """Random weights under the published names (bare), norms around 1, plus inv_freq."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in published_shapes(**cfg).items():
        value = torch.randn(shape, generator=gen) * std
        state[name] = value + 1 if "norm" in name else value
    dh = cfg["hidden_dim"] // cfg["n_heads"]
    state["rotary_emb.inv_freq"] = 10000.0 ** (-torch.arange(0, dh, 2).double() / dh)
    return {k: v.float() for k, v in state.items()}


def _layer_norm(x, w):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * w


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _silu(x):
    return x * torch.sigmoid(x)


def _rotary_complex(x, pos_angles):
    """x [B, L, H, dh]; rotate pairs (j, j + dh/2) by complex multiplication."""
    half = x.shape[-1] // 2
    z = (
        torch.complex(x[..., :half], x[..., half:])
        * torch.polar(torch.ones_like(pos_angles), pos_angles)[None, :, None, :]
    )
    return torch.cat([z.real, z.imag], dim=-1)


def reference_forward(state: dict, cfg: dict, x: torch.Tensor, sigma: torch.Tensor):
    """MDLM DiT forward in float64 from a bare-named state dict; returns logits [B, L, V]."""
    w = {k: v.detach().double().cpu() for k, v in state.items()}
    d, nh = cfg["hidden_dim"], cfg["n_heads"]
    dh = d // nh
    x = x.cpu()
    b, seq = x.shape
    sigma = sigma.double().cpu().expand(b)
    if not cfg.get("time_conditioning", False):
        sigma = torch.zeros(b, dtype=torch.float64)
    # timestep embedding: 128 frequencies exp(-ln(1e4) j / 128), [cos, sin]
    j = torch.arange(128, dtype=torch.float64)
    args = sigma[:, None] * torch.exp(-math.log(10000) * j / 128)[None]
    temb = torch.cat([args.cos(), args.sin()], -1)
    hid = _silu(temb @ w["sigma_map.mlp.0.weight"].T + w["sigma_map.mlp.0.bias"])
    c = _silu(hid @ w["sigma_map.mlp.2.weight"].T + w["sigma_map.mlp.2.bias"])
    inv_freq = 10000.0 ** (-torch.arange(0, dh, 2, dtype=torch.float64) / dh)
    angles = torch.arange(seq, dtype=torch.float64)[:, None] * inv_freq[None]
    h = w["vocab_embed.embedding"][x]
    for i in range(cfg["n_blocks"]):
        p = f"blocks.{i}."
        mod = c @ w[p + "adaLN_modulation.weight"].T + w[p + "adaLN_modulation.bias"]
        sh1, sc1, g1, sh2, sc2, g2 = [m[:, None, :] for m in mod.split(d, dim=-1)]
        a = _layer_norm(h, w[p + "norm1.weight"]) * (1 + sc1) + sh1
        qkv = (a @ w[p + "attn_qkv.weight"].T).view(b, seq, 3, nh, dh)
        q = _rotary_complex(qkv[:, :, 0], angles)
        k = _rotary_complex(qkv[:, :, 1], angles)
        v = qkv[:, :, 2]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh)
        att = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, -1), v).reshape(b, seq, d)
        h = h + g1 * (att @ w[p + "attn_out.weight"].T)
        a = _layer_norm(h, w[p + "norm2.weight"]) * (1 + sc2) + sh2
        m = _gelu_tanh(a @ w[p + "mlp.0.weight"].T + w[p + "mlp.0.bias"])
        h = h + g2 * (m @ w[p + "mlp.2.weight"].T + w[p + "mlp.2.bias"])
    mod = c @ w["output_layer.adaLN_modulation.weight"].T + w["output_layer.adaLN_modulation.bias"]
    shift, scale = [m[:, None, :] for m in mod.split(d, dim=-1)]
    a = _layer_norm(h, w["output_layer.norm_final.weight"]) * (1 + scale) + shift
    return a @ w["output_layer.linear.weight"].T + w["output_layer.linear.bias"]


def model_state(model: DiT) -> dict[str, torch.Tensor]:
    return dict(model.state_dict())


# --------------------------------------------------------------------------------------------
# Layout and configuration
# --------------------------------------------------------------------------------------------


def test_parameter_names_and_order_match_mdlm():
    model = DiT(tiny_config())
    names = [n for n, _ in model.named_parameters()]
    assert names == list(published_shapes(**TINY))
    assert [tuple(p.shape) for p in model.parameters()] == list(published_shapes(**TINY).values())
    assert list(dict(model.named_buffers())) == ["rotary_emb.inv_freq"]
    assert "rotary_emb.inv_freq" in model.state_dict()  # persistent, as in MDLM


def test_mdlm_initialization_gives_zero_logits():
    model = DiT(tiny_config()).eval()
    for block in model.blocks:
        assert not block.adaLN_modulation.weight.any() and not block.adaLN_modulation.bias.any()
    assert not model.head_weight.any() and not model.head_bias.any()
    with torch.no_grad():
        out = model(torch.randint(0, 37, (2, 5)), torch.rand(2))
    assert out.shape == (2, 5, 37) and not out.any()


def test_config_defaults_match_mdlm_owt():
    cfg = DiTConfig()
    assert (cfg.hidden_dim, cfg.n_heads, cfg.n_blocks, cfg.cond_dim) == (768, 12, 12, 128)
    assert (cfg.vocab_size, cfg.model_length, cfg.time_conditioning) == (50258, 1024, False)
    assert cfg.mask_index == 50257 and cfg.head_dim == 64


def test_config_from_dict_ignores_unknown_keys_and_round_trips():
    d = {
        **TINY,
        "cond_dim": 7,
        "model_type": "mdlm",
        "architectures": ["MDLM"],
        "auto_map": {"AutoConfig": "x"},
        "return_dict": False,
        "var_min": True,
    }
    cfg = DiTConfig.from_dict(d)
    assert cfg.cond_dim == 7 and cfg.mask_index == 36 and cfg.time_conditioning is False
    assert DiTConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("drop", [["n_heads"], ["cond_dim", "vocab_size"]])
def test_config_from_dict_names_missing_fields(drop):
    d = {k: v for k, v in TINY.items() if k not in drop}
    with pytest.raises(ValueError, match="missing required field") as info:
        DiTConfig.from_dict(d)
    for name in drop:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(hidden_dim=30), "divisible by n_heads"),
        (dict(hidden_dim=36, n_heads=12), "even"),
        (dict(n_blocks=0), "n_blocks must be a positive integer"),
        (dict(vocab_size=2.5), "vocab_size must be an int"),
        (dict(mask_index=37), "mask_index"),
        (dict(mask_index=-1), "mask_index"),
        (dict(time_conditioning="no"), "time_conditioning"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)


# --------------------------------------------------------------------------------------------
# Forward against the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_forward_matches_reference(dev, time_conditioning):
    model = random_model(seed=1, time_conditioning=time_conditioning).to(dev)
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 37, (3, 9), generator=gen)
    sigma = torch.rand(3, generator=gen) * 3
    with torch.no_grad():
        out = model(x.to(dev), sigma.to(dev))
    ref = reference_forward(model_state(model), model.config.to_dict(), x, sigma)
    assert out.dtype == torch.float32 and out.shape == (3, 9, 37)
    assert ref.abs().max() > 1  # the weights make a non-trivial function
    torch.testing.assert_close(out.cpu().double(), ref, atol=2e-4, rtol=1e-4)


def test_sigma_ignored_without_time_conditioning_and_used_with_it():
    x = torch.randint(0, 37, (2, 7))
    off, on = random_model(time_conditioning=False), random_model(time_conditioning=True)
    with torch.no_grad():
        assert torch.equal(off(x, torch.tensor([0.1, 5.0])), off(x, torch.tensor([3.0, 0.0])))
        a, b = on(x, torch.tensor([0.1, 5.0])), on(x, torch.tensor([3.0, 0.0]))
    assert (a - b).abs().amax(dim=(1, 2)).min() > 1e-3  # every row depends on its sigma


@pytest.mark.parametrize("shape", [(), (1,), (3,), (3, 1)])
def test_sigma_shapes_broadcast(shape):
    model = random_model(time_conditioning=True)
    x = torch.randint(0, 37, (3, 5))
    with torch.no_grad():
        expected = model(x, torch.full((3,), 0.7))
        torch.testing.assert_close(model(x, torch.full(shape, 0.7)), expected)
        torch.testing.assert_close(model(x, 0.7), expected)


def test_sequences_longer_than_model_length_are_allowed():
    model = random_model()
    with torch.no_grad():
        assert model(torch.randint(0, 37, (1, 2 * TINY["model_length"] + 3)), 0.0).shape[1] == 35


def test_trunk_then_head_equals_forward(dev):
    model = random_model(seed=3, time_conditioning=True).to(dev)
    x, sigma = torch.randint(0, 37, (2, 6), device=dev), torch.rand(2, device=dev)
    with torch.no_grad():
        hidden = model.trunk(x, sigma)
        logits = model(x, sigma)
    assert hidden.shape == (2, 6, TINY["hidden_dim"])
    assert model.head_weight.shape == (37, 32) and model.head_bias.shape == (37,)
    torch.testing.assert_close(hidden @ model.head_weight.T + model.head_bias, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_blocks", [1, 3])
@pytest.mark.parametrize("time_conditioning", [False, True])
def test_trunk_at_positions_equals_the_full_trunk_gathered(dev, n_blocks, time_conditioning):
    model = random_model(seed=5, n_blocks=n_blocks, time_conditioning=time_conditioning).to(dev)
    x, sigma = torch.randint(0, 37, (3, 10), device=dev), torch.rand(3, device=dev)
    # unsorted, repeated (padding) and edge positions
    positions = torch.tensor([[9, 0, 0], [4, 5, 4], [7, 7, 7]], device=dev)
    with torch.no_grad():
        full = model.trunk(x, sigma)
        at = model.trunk(x, sigma, positions=positions)
    assert at.shape == (3, 3, TINY["hidden_dim"])
    expected = full.gather(1, positions[..., None].expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(at, expected, atol=1e-5, rtol=1e-5)


def test_the_positions_path_goes_through_the_block_modules():
    # profilers and the benchmarks' block timers hook the block modules: the last one must fire too
    model = random_model(seed=5, n_blocks=2)
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        model.trunk(torch.zeros(2, 6, dtype=torch.int64), torch.zeros(2), positions=torch.tensor([[1], [4]]))
    assert seen == [(2, 6, TINY["hidden_dim"]), (2, 1, TINY["hidden_dim"])]


def test_trunk_at_positions_bf16_close_to_the_full_trunk(dev):
    model = random_model(seed=6).to(dev).to(torch.bfloat16)
    x, sigma = torch.randint(0, 37, (2, 8), device=dev), torch.rand(2, device=dev)
    positions = torch.tensor([[1, 6], [0, 3]], device=dev)
    with torch.no_grad():
        full = model.trunk(x, sigma).float()
        at = model.trunk(x, sigma, positions=positions).float()
    expected = full.gather(1, positions[..., None].expand(-1, -1, full.shape[-1]))
    assert (at - expected).abs().max() / expected.abs().max() < 0.02


@pytest.mark.parametrize(
    "positions,match",
    [
        (torch.zeros(2, 2), r"positions must be an int64 tensor"),
        (torch.zeros(3, 2, dtype=torch.int64), r"positions must have shape \[B=2, Q\]"),
        (torch.zeros(2, dtype=torch.int64), r"positions must have shape"),
        (torch.full((2, 1), 5, dtype=torch.int64), r"positions must lie in \[0, L=5\)"),
        (torch.full((2, 1), -1, dtype=torch.int64), r"positions must lie in"),
    ],
)
def test_bad_positions_raise(positions, match):
    with pytest.raises(ValueError, match=match):
        random_model().trunk(torch.zeros(2, 5, dtype=torch.int64), torch.zeros(2), positions=positions)


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_bf16_close_to_fp32(dev, time_conditioning):
    model = random_model(seed=4, time_conditioning=time_conditioning).to(dev)
    x, sigma = torch.randint(0, 37, (2, 8), device=dev), torch.rand(2, device=dev)
    with torch.no_grad():
        ref = model(x, sigma)
        model.to(torch.bfloat16)
        out = model(x, sigma)
        hidden = model.trunk(x, sigma)
    assert out.dtype == torch.bfloat16 and hidden.dtype == torch.bfloat16
    assert model.rotary_emb.inv_freq.dtype == torch.float32  # never rounded to bf16
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.05


def test_empty_batch():
    with torch.no_grad():
        assert random_model()(torch.zeros(0, 4, dtype=torch.int64), torch.zeros(0)).shape == (0, 4, 37)


# --------------------------------------------------------------------------------------------
# Constant cache
# --------------------------------------------------------------------------------------------


def test_constants_are_cached_without_time_conditioning():
    model = random_model()
    x = torch.randint(0, 37, (2, 5))
    with torch.no_grad():
        model(x, 0.0)
        first = model._const_mods
        model(x, 0.0)
    assert first is not None and model._const_mods is first  # reused, not recomputed


def test_cache_invalidated_by_load_state_dict(dev):
    a, b = random_model(seed=5).to(dev), random_model(seed=6).to(dev)
    x = torch.randint(0, 37, (2, 5), device=dev)
    with torch.no_grad():
        a(x, 0.0)  # fills a's cache
        expected = b(x, 0.0)
        a.load_state_dict(b.state_dict())
        torch.testing.assert_close(a(x, 0.0), expected)


def test_cache_invalidated_by_in_place_update_and_refresh():
    model, other = random_model(seed=7), random_model(seed=8)
    x = torch.randint(0, 37, (2, 5))
    with torch.no_grad():
        before = model(x, 0.0)
        # In-place through the parameter: noticed by its version counter.
        model.blocks[0].adaLN_modulation.bias.add_(0.5)
        changed = model(x, 0.0)
        assert not torch.allclose(changed, before)
        # Through .data (no version bump): refresh_constants() is the documented remedy.
        for p, q in zip(model.parameters(), other.parameters()):
            p.data.copy_(q.data)
        model.refresh_constants()
        torch.testing.assert_close(model(x, 0.0), other(x, 0.0))


def test_cache_invalidated_by_dtype_round_trip():
    model = random_model(seed=9)
    x = torch.randint(0, 37, (2, 5))
    with torch.no_grad():
        model(x, 0.0)
        model.to(torch.bfloat16)
        assert model(x, 0.0).dtype == torch.bfloat16
        model.to(torch.float32)
        out = model(x, 0.0)
        fresh = DiT(model.config).eval()
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(out, fresh(x, 0.0))


def test_training_gets_gradients_into_adaln_without_time_conditioning():
    model = random_model(seed=10, dropout=0.0).train()
    model(torch.randint(0, 37, (2, 5)), 0.0).square().mean().backward()
    assert model.blocks[0].adaLN_modulation.weight.grad.abs().sum() > 0
    assert model.sigma_map.mlp[0].bias.grad is not None


def test_init_random_is_deterministic_and_seeded():
    a, b, c = random_model(seed=1), random_model(seed=1), random_model(seed=2)
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), name
        assert not torch.equal(p, r), name


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x,match",
    [
        (torch.zeros(2, 5), r"x must be int64"),
        (torch.zeros(2, 5, dtype=torch.int32), r"x must be int64"),
        (torch.zeros(10, dtype=torch.int64), r"x must have shape \[B, L\]"),
        (torch.zeros(2, 0, dtype=torch.int64), r"x must have at least one position"),
        (torch.full((2, 5), 37, dtype=torch.int64), r"x holds token ids outside"),
        (torch.full((2, 5), -1, dtype=torch.int64), r"x holds token ids outside"),
    ],
)
def test_bad_x_raises(x, match):
    with pytest.raises(ValueError, match=match):
        random_model()(x, torch.zeros(2))


@pytest.mark.parametrize(
    "sigma,exc",
    [
        (torch.zeros(3), ValueError),
        (torch.zeros(2, 2), ValueError),
        (torch.zeros(2, 1, 1), ValueError),
        ("high", TypeError),
    ],
)
def test_bad_sigma_raises(sigma, exc):
    with pytest.raises(exc, match="sigma"):
        random_model()(torch.zeros(2, 5, dtype=torch.int64), sigma)


# --------------------------------------------------------------------------------------------
# SUBS parameterization
# --------------------------------------------------------------------------------------------


def test_subs_log_probs_properties(dev):
    mask = 36
    gen = torch.Generator().manual_seed(11)
    logits = (torch.randn(3, 6, 37, generator=gen) * 3).to(dev)
    x = torch.randint(0, 36, (3, 6), generator=gen)
    x[:, ::2] = mask
    x = x.to(dev)
    original = logits.clone()
    out = subs_log_probs(logits, x, mask)
    assert torch.equal(logits, original)  # input untouched
    assert out.dtype == torch.float32
    assert torch.isneginf(out[..., mask]).all()  # the mask never has probability
    torch.testing.assert_close(out.logsumexp(-1), torch.zeros(3, 6, device=dev))
    masked = x == mask
    # masked rows: softmax over the non-mask ids
    expected = torch.log_softmax(logits[..., :mask], -1)
    torch.testing.assert_close(out[..., :mask][masked], expected[masked])
    # unmasked rows: 0 at the current token, -inf elsewhere
    unmasked = out[~masked]
    tokens = x[~masked]
    assert (unmasked.gather(-1, tokens[:, None]) == 0).all()
    assert torch.isneginf(unmasked).sum() == unmasked.numel() - tokens.numel()


def test_subs_log_probs_accepts_bf16_and_checks_arguments():
    x = torch.tensor([[0, 4, 2]])
    out = subs_log_probs(torch.randn(1, 3, 5, dtype=torch.bfloat16), x, 4)
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="mask_index"):
        subs_log_probs(torch.randn(1, 3, 5), x, 5)
    with pytest.raises(ValueError, match="disagree"):
        subs_log_probs(torch.randn(1, 4, 5), x, 4)
