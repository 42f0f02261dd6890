"""dtype="auto": bf16 where the hardware does it natively, read from CPU flags / GPU capability."""

import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.models import compute_dtype as cd

ZEN4_FLAGS = "fpu sse2 avx2 fma avx512f avx512bw avx512vl avx512_bf16 avx512_vnni"
SAPPHIRE_RAPIDS_FLAGS = "avx2 avx512f avx512bw amx_tile amx_bf16 amx_int8"
SKYLAKE_FLAGS = "avx2 fma avx512f avx512bw avx512vl avx512_vnni"
CPUINFO = (
    f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: {ZEN4_FLAGS}\n\nprocessor\t: 1\nflags\t\t: {ZEN4_FLAGS}\n"
)


def test_flags_parsed_from_cpuinfo_text_x86_and_arm():
    assert cd.parse_cpu_flags(CPUINFO) == frozenset(ZEN4_FLAGS.split())
    arm = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"
    assert {"bf16", "sve"} <= cd.parse_cpu_flags(arm)
    assert cd.parse_cpu_flags("model name\t: no flags here\n") == frozenset()


@pytest.mark.parametrize(
    "flags, machine, native",
    [
        (ZEN4_FLAGS, "x86_64", True),  # AVX-512 BF16
        (SAPPHIRE_RAPIDS_FLAGS, "x86_64", True),  # AMX BF16 alone
        (SKYLAKE_FLAGS, "x86_64", False),  # AVX-512 without BF16: bf16 would be emulated
        ("avx2 fma", "x86_64", False),
        ("fp asimd sve bf16", "aarch64", True),
        ("fp asimd sve", "aarch64", False),
        ("bf16", "x86_64", False),  # an Arm flag name means nothing on x86
    ],
)
def test_auto_resolves_from_injected_cpu_flags(flags, machine, native):
    choice = cd.resolve_dtype("auto", "cpu", cpu_flags=flags.split(), machine=machine)
    assert choice.dtype == (torch.bfloat16 if native else torch.float32)
    assert choice.requested == "auto" and choice.reason.startswith("auto: this CPU")
    assert ("has" in choice.reason) == native


def test_auto_never_looks_at_anything_but_the_device():
    # same flags, different devices: the CPU flags do not decide for a GPU, its capability does
    assert cd.resolve_dtype("auto", "cuda", cuda_capability=(9, 0)).dtype == torch.bfloat16
    assert cd.resolve_dtype("auto", "cuda", cuda_capability=(8, 0)).dtype == torch.bfloat16
    volta = cd.resolve_dtype("auto", "cuda", cuda_capability=(7, 0))
    assert volta.dtype == torch.float32 and "7.0" in volta.reason
    assert cd.resolve_dtype("auto", "meta").dtype == torch.float32


def test_explicit_dtypes_are_taken_as_requested_and_bad_ones_refused():
    assert cd.resolve_dtype("float32", "cpu", cpu_flags=ZEN4_FLAGS.split()).dtype == torch.float32
    assert cd.resolve_dtype("bfloat16", "cpu", cpu_flags=[]).dtype == torch.bfloat16
    assert cd.resolve_dtype(torch.bfloat16).reason == "requested"
    with pytest.raises(ValueError, match="dtype must be one of"):
        cd.resolve_dtype("fp16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        cd.resolve_dtype(torch.int64)


def test_this_machine_resolves_to_what_its_flags_say():
    flags = cd.host_cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    native = any(f in flags for f in cd.X86_BF16_FLAGS + cd.ARM_BF16_FLAGS)
    assert cd.resolve_dtype("auto", "cpu").dtype == (torch.bfloat16 if native else torch.float32)


def _tiny(blocks=2, seed=0):
    cfg = mf.DiTConfig(hidden_dim=32, n_heads=4, n_blocks=blocks, cond_dim=16, vocab_size=61, model_length=16)
    return mf.DiT(cfg).init_random_(seed).eval()


def test_sample_casts_a_cached_copy_and_leaves_the_callers_model_alone():
    model = _tiny()
    kw = dict(steps=8, batch_size=2, length=16, sampler="fast", seed=1)
    first = mf.sample(model, dtype="bfloat16", **kw)
    assert next(model.parameters()).dtype == torch.float32
    assert first.stats.dtype == "bfloat16" and first.stats.dtype_reason == "requested"
    copy = cd.cast_module(model, torch.bfloat16)
    assert copy is not model and copy is cd.cast_module(model, torch.bfloat16)  # cast once
    assert next(copy.parameters()).dtype == torch.bfloat16
    assert copy.rotary_emb.inv_freq.dtype == torch.float32  # rotary angles stay fp32
    assert torch.equal(mf.sample(model, dtype="bfloat16", **kw).tokens, first.tokens)
    with torch.no_grad():  # a change to the weights is seen: a fresh copy
        model.blocks[0].attn_qkv.weight.add_(1.0)
    assert cd.cast_module(model, torch.bfloat16) is not copy
    same = mf.sample(model, dtype="float32", **kw)
    assert same.stats.dtype == "float32" and cd.cast_module(model, torch.float32) is model
    loaded = mf.sample(model, **kw)
    assert (loaded.stats.dtype, loaded.stats.dtype_reason) == ("float32", "as loaded")
    assert torch.equal(loaded.tokens, same.tokens)


def test_sample_auto_records_the_choice_and_its_reason():
    st = mf.sample(_tiny(), steps=4, batch_size=1, length=16, sampler="fast", dtype="auto").stats
    want = cd.resolve_dtype("auto", "cpu")
    assert (st.dtype, st.dtype_reason) == (want.name, want.reason)
    assert st.as_dict()["dtype"] == want.name


def test_a_plain_callable_cannot_be_cast():
    model = _tiny()
    fn = mf.Denoiser(lambda x, s: model(x, s), vocab_size=61, mask_index=60)
    with pytest.raises(ValueError, match="plain callable"):
        mf.sample(fn, steps=4, batch_size=1, length=16, sampler="fast", dtype="bfloat16")
    st = mf.sample(fn, steps=4, batch_size=1, length=16, sampler="fast", dtype="auto").stats
    assert st.wall_time_s > 0


def test_bf16_run_uses_fp32_layer_norms_and_stays_close_to_fp32():
    model = _tiny(blocks=2, seed=3)
    copy = cd.cast_module(model, torch.bfloat16)
    x = torch.randint(0, 60, (2, 16))
    with torch.no_grad():
        h32 = model.trunk(x, torch.zeros(2))
        h16 = copy.trunk(x, torch.zeros(2))
        assert copy.blocks[0].norm1(torch.randn(2, 16, 32, dtype=torch.bfloat16)).dtype == torch.float32
    assert h16.dtype == torch.bfloat16 and h32.dtype == torch.float32
    torch.testing.assert_close(h16.float(), h32, rtol=0.05, atol=0.05)


def test_generate_prints_and_records_the_dtype_choice(capsys):
    import json

    from mdlm_fast.cli.app import main

    small = ["--steps", "8", "--length", "16", "--batch-size", "1", "--judge", "none"]
    assert main(["generate", *small, "--dtype", "float32"]) == 0
    assert "dtype float32 (requested)" in capsys.readouterr().out
    assert main(["generate", *small, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    want = cd.resolve_dtype("auto", "cpu")
    assert (stats["dtype"], stats["dtype_reason"]) == (want.name, want.reason)


def test_generate_refuses_an_unknown_dtype(capsys):
    from mdlm_fast.cli.app import main

    assert main(["generate", "--dtype", "fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --dtype: invalid choice: 'fp16'" in err[0]
