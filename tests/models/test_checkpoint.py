"""Checkpoint loading and saving: HF-style directories, Lightning .ckpt (+EMA), errors, atomicity.

Checkpoints are written by hand under the published key names (design §10), never by
mdlm_fast itself (except for the save/load round trip), and loaded models are compared with the
independent float64 reference from test_model.py.
"""

from __future__ import annotations

import fractions
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mdlm_fast.models import checkpoint
from mdlm_fast.models.checkpoint import CheckpointError, load_denoiser, save_denoiser
from mdlm_fast.models.checkpoints import hf
from mdlm_fast.models.dit import DiT, DiTConfig
from tests.helpers.model_reference import load_test_model

ref = load_test_model("_mdlm_test_model_reference")
TINY = ref.TINY

# mdlm-owt's config.json, shrunk: the extra keys must be ignored.
OWT_CONFIG = {
    "architectures": ["MDLM"],
    "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
    "cond_dim": TINY["cond_dim"],
    "dropout": 0.1,
    "hidden_dim": TINY["hidden_dim"],
    "model_length": TINY["model_length"],
    "model_type": "mdlm",
    "n_blocks": TINY["n_blocks"],
    "n_heads": TINY["n_heads"],
    "return_dict": False,
    "time_conditioning": False,
    "torch_dtype": "float32",
    "transformers_version": "4.38.2",
    "var_min": True,
    "vocab_size": TINY["vocab_size"],
}
# MDLM's Hydra config as Lightning saves it (hyper_parameters['config']), as plain dicts.
MDLM_HPARAMS = {
    "config": {
        "model": {
            "name": "tiny",
            "type": "ddit",
            "hidden_size": TINY["hidden_dim"],
            "cond_dim": TINY["cond_dim"],
            "length": TINY["model_length"],
            "n_blocks": TINY["n_blocks"],
            "n_heads": TINY["n_heads"],
            "scale_by_sigma": True,
            "dropout": 0.1,
        },
        "time_conditioning": False,
    }
}


def prefixed(state: dict) -> dict:
    return {"backbone." + k: v for k, v in state.items()}


def write_hf_dir(directory: Path, state: dict, config: dict = OWT_CONFIG, fmt: str = "safetensors") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    if fmt == "safetensors":
        save_file(state, str(directory / "model.safetensors"))
    else:
        torch.save(state, directory / "pytorch_model.bin")
    return directory


def write_ckpt(
    file: Path, state: dict, shadow: list | None = None, hparams: dict | None = MDLM_HPARAMS, extra: dict | None = None
) -> Path:
    ckpt = {"state_dict": {**prefixed(state), "noise.dummy": torch.zeros(1)}, "epoch": 3, "global_step": 100}
    if shadow is not None:
        ckpt["ema"] = {"decay": 0.9999, "num_updates": 100, "shadow_params": shadow}
    if hparams is not None:
        ckpt["hyper_parameters"] = hparams
    ckpt.update(extra or {})
    torch.save(ckpt, file)
    return file


@pytest.fixture
def state() -> dict:
    return ref.random_published_state(TINY, seed=21)


@pytest.fixture
def hf_dir(tmp_path, state) -> Path:
    return write_hf_dir(tmp_path / "mdlm-tiny", prefixed(state))


def assert_matches_reference(model: DiT, state: dict, time_conditioning: bool = False):
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, TINY["vocab_size"], (2, 7), generator=gen)
    sigma = torch.rand(2, generator=gen)
    device = model.head_weight.device
    with torch.no_grad():
        out = model(x.to(device), sigma.to(device))
    expected = ref.reference_forward(state, {**TINY, "time_conditioning": time_conditioning}, x, sigma)
    torch.testing.assert_close(out.cpu().double(), expected, atol=2e-4, rtol=1e-4)


def non_ema_params(state: dict) -> list:
    return [state[k] for k in ref.published_shapes(**TINY)]


# --------------------------------------------------------------------------------------------
# HF-style directories
# --------------------------------------------------------------------------------------------


def test_load_hf_safetensors_matches_reference(hf_dir, state):
    model = load_denoiser(hf_dir)
    assert not model.training
    assert model.config == DiTConfig(**TINY, mask_index=TINY["vocab_size"] - 1)
    assert_matches_reference(model, state)


def test_load_hf_bin(tmp_path, state):
    model = load_denoiser(write_hf_dir(tmp_path / "m", prefixed(state), fmt="bin"))
    assert_matches_reference(model, state)


def test_load_weights_file_path_and_bare_keys(tmp_path, state):
    directory = write_hf_dir(tmp_path / "m", state)  # no backbone. prefix
    assert_matches_reference(load_denoiser(directory / "model.safetensors"), state)


def test_inv_freq_may_be_absent(tmp_path, state):
    state = {k: v for k, v in state.items() if k != "rotary_emb.inv_freq"}
    assert_matches_reference(load_denoiser(write_hf_dir(tmp_path / "m", prefixed(state))), state)


def test_config_fields_from_file(tmp_path, state):
    config = {**OWT_CONFIG, "time_conditioning": True, "mask_index": 0}
    model = load_denoiser(write_hf_dir(tmp_path / "m", prefixed(state), config))
    assert model.config.time_conditioning and model.mask_index == 0
    assert_matches_reference(model, state, time_conditioning=True)


def test_device_dtype_and_overrides(hf_dir):
    model = load_denoiser(hf_dir, dtype=torch.bfloat16, device="cpu", mask_index=3)
    assert model.head_weight.dtype == torch.bfloat16 and model.mask_index == 3
    assert model.rotary_emb.inv_freq.dtype == torch.float32
    with pytest.raises(TypeError, match="n_head"):
        load_denoiser(hf_dir, n_head=4)


# --------------------------------------------------------------------------------------------
# Lightning checkpoints
# --------------------------------------------------------------------------------------------


@pytest.fixture
def ema_state() -> dict:
    return ref.random_published_state(TINY, seed=22)


def test_lightning_ckpt_with_and_without_ema(tmp_path, state, ema_state):
    file = write_ckpt(tmp_path / "last.ckpt", state, shadow=non_ema_params(ema_state))
    assert_matches_reference(load_denoiser(file, ema=True), ema_state)
    assert_matches_reference(load_denoiser(file, ema=False), state)


def test_lightning_ckpt_without_ema_uses_state_dict(tmp_path, state):
    assert_matches_reference(load_denoiser(write_ckpt(tmp_path / "a.ckpt", state)), state)


def test_lightning_config_from_hparams(tmp_path, state):
    hparams = {"config": {**MDLM_HPARAMS["config"], "time_conditioning": True}}
    model = load_denoiser(write_ckpt(tmp_path / "a.ckpt", state, hparams=hparams))
    assert model.config.time_conditioning and model.config.model_length == TINY["model_length"]
    assert_matches_reference(model, state, time_conditioning=True)


def test_lightning_without_config_needs_n_heads(tmp_path, state):
    file = write_ckpt(tmp_path / "a.ckpt", state, hparams=None)
    with pytest.raises(CheckpointError, match="n_heads"):
        load_denoiser(file)
    assert_matches_reference(load_denoiser(file, n_heads=TINY["n_heads"]), state)
    (tmp_path / "config.json").write_text(json.dumps(OWT_CONFIG))  # or a sibling config.json
    assert_matches_reference(load_denoiser(file), state)


def test_lightning_pickled_objects_load_inertly(tmp_path, state, recwarn):
    # MDLM's .ckpt pickles non-tensor objects (OmegaConf config, tokenizer); a Fraction stands in.
    file = write_ckpt(tmp_path / "a.ckpt", state, extra={"tokenizer": fractions.Fraction(1, 3)})
    assert_matches_reference(load_denoiser(file), state)
    assert not [w for w in recwarn if "weights_only" in str(w.message)]
    assert_matches_reference(load_denoiser(file, trust_checkpoint=True), state)


def test_legacy_format_needs_trust_for_objects(tmp_path, state):
    plain = tmp_path / "plain.ckpt"
    torch.save(
        {"state_dict": prefixed(state), "hyper_parameters": MDLM_HPARAMS}, plain, _use_new_zipfile_serialization=False
    )
    assert_matches_reference(load_denoiser(plain), state)
    objects = tmp_path / "objects.ckpt"
    torch.save(
        {"state_dict": prefixed(state), "hyper_parameters": MDLM_HPARAMS, "extra": fractions.Fraction(1, 3)},
        objects,
        _use_new_zipfile_serialization=False,
    )
    with pytest.raises(CheckpointError, match="legacy-format.*trust_checkpoint=True"):
        load_denoiser(objects)
    assert_matches_reference(load_denoiser(objects, trust_checkpoint=True), state)


def test_wrong_ema_count_and_shape(tmp_path, state):
    params = non_ema_params(state)
    file = write_ckpt(tmp_path / "a.ckpt", state, shadow=params[:-1])
    with pytest.raises(CheckpointError, match=f"{len(params) - 1} tensors.*{len(params)} param"):
        load_denoiser(file)
    load_denoiser(file, ema=False)  # the raw weights are still usable
    bad = params[:1] + [params[1][:3]] + params[2:]
    with pytest.raises(CheckpointError, match=r"#1 sigma_map.mlp.0.weight: expected \(16, 256\)"):
        load_denoiser(write_ckpt(tmp_path / "b.ckpt", state, shadow=bad))


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip(tmp_path, dtype):
    model = ref.random_model(seed=23, time_conditioning=True, mask_index=5).to(dtype)
    out = save_denoiser(model, tmp_path / "saved")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text()) == model.config.to_dict()
    loaded = load_denoiser(out, dtype=dtype)
    assert loaded.config == model.config
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    x = torch.randint(0, TINY["vocab_size"], (2, 5))
    sigma = torch.rand(2)
    with torch.no_grad():
        assert torch.equal(model(x, sigma), loaded(x, sigma))


def test_saved_keys_are_published_names(tmp_path):
    from safetensors.torch import load_file

    save_denoiser(ref.random_model(), tmp_path / "s")
    keys = set(load_file(str(tmp_path / "s" / "model.safetensors")))
    expected = {"backbone." + k for k in ref.published_shapes(**TINY)}
    assert keys == expected | {"backbone.rotary_emb.inv_freq"}


def test_save_replaces_existing_checkpoint_and_refuses_other_paths(tmp_path):
    target = tmp_path / "ckpt"
    save_denoiser(ref.random_model(seed=1), target)
    second = ref.random_model(seed=2)
    save_denoiser(second, target)
    loaded = load_denoiser(target)
    assert torch.equal(loaded.head_weight, second.head_weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp/backup left
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="does not look like a checkpoint"):
        save_denoiser(second, tmp_path / "notes")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        save_denoiser(second, tmp_path / "file")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def _failing_write(tensors, file):
    Path(file).write_bytes(b"partial")
    raise OSError("disk full")


@pytest.mark.parametrize("existing", [False, True])
def test_save_is_atomic_on_write_failure(tmp_path, monkeypatch, existing):
    target = tmp_path / "ckpt"
    old = ref.random_model(seed=1)
    if existing:
        save_denoiser(old, target)
    monkeypatch.setattr(hf, "write_safetensors", _failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_denoiser(ref.random_model(seed=2), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["ckpt"] if existing else [])
    if existing:
        assert torch.equal(load_denoiser(target).head_weight, old.head_weight)


def test_save_restores_old_checkpoint_if_final_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    old = ref.random_model(seed=1)
    save_denoiser(old, target)
    real_rename = os.rename

    def rename(src, dst):
        if Path(dst) == target and ".tmp-" in Path(src).name:
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(checkpoint.os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        save_denoiser(ref.random_model(seed=2), target)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert torch.equal(load_denoiser(target).head_weight, old.head_weight)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_denoiser(tmp_path / "nope")


def test_missing_config_json(hf_dir):
    (hf_dir / "config.json").unlink()
    with pytest.raises(CheckpointError, match=f"no config.json in {hf_dir}"):
        load_denoiser(hf_dir)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_denoiser(hf_dir / "model.safetensors")


def test_missing_weights_file(hf_dir):
    (hf_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors or pytorch_model.bin"):
        load_denoiser(hf_dir)


def test_missing_key(tmp_path, state):
    del state["blocks.1.mlp.2.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys: backbone\.blocks\.1\.mlp\.2\.bias"):
        load_denoiser(write_hf_dir(tmp_path / "m", prefixed(state)))


def test_unexpected_key(tmp_path, state):
    state["blocks.0.extra"] = torch.zeros(2)
    files = {**prefixed(state), "head.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="unexpected keys: ") as info:
        load_denoiser(write_hf_dir(tmp_path / "m", files))
    message = str(info.value)
    assert "backbone.blocks.0.extra" in message and "head.weight" in message
    assert "backbone.head.weight" not in message  # reported under the file's own name


def test_many_missing_keys_are_summarized(tmp_path, state):
    kept = {k: v for k, v in state.items() if not k.startswith("blocks.")}
    kept["vocab_embed.embedding"] = state["vocab_embed.embedding"]
    config = {**OWT_CONFIG, "n_blocks": 2}
    with pytest.raises(CheckpointError, match=r"\.\.\. and 10 more"):
        load_denoiser(write_hf_dir(tmp_path / "m", prefixed(kept), config))


def test_shape_mismatch(tmp_path, state):
    state["blocks.0.attn_out.weight"] = torch.zeros(32, 31)
    with pytest.raises(
        CheckpointError,
        match=r"backbone\.blocks\.0\.attn_out\.weight: expected \(32, 32\), "
        r"got \(32, 31\)",
    ):
        load_denoiser(write_hf_dir(tmp_path / "m", prefixed(state)))


def test_config_disagreeing_with_weights(tmp_path, state):
    config = {**OWT_CONFIG, "cond_dim": 128}  # the published class's wrong default
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_denoiser(write_hf_dir(tmp_path / "m", prefixed(state), config))


def test_corrupted_safetensors(hf_dir):
    file = hf_dir / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupted checkpoint .*model.safetensors"):
        load_denoiser(hf_dir)


def test_corrupted_json(hf_dir):
    (hf_dir / "config.json").write_text('{"hidden_dim": 32,')
    with pytest.raises(CheckpointError, match="corrupted checkpoint .*config.json"):
        load_denoiser(hf_dir)
    (hf_dir / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        load_denoiser(hf_dir)


def test_missing_config_field(hf_dir):
    config = {k: v for k, v in OWT_CONFIG.items() if k not in ("n_heads", "cond_dim")}
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing required field.*cond_dim.*n_heads"):
        load_denoiser(hf_dir)


def test_invalid_config_value(hf_dir):
    (hf_dir / "config.json").write_text(json.dumps({**OWT_CONFIG, "n_heads": 5}))
    with pytest.raises(CheckpointError, match="divisible by n_heads"):
        load_denoiser(hf_dir)


def test_corrupted_ckpt(tmp_path, state):
    file = write_ckpt(tmp_path / "a.ckpt", state)
    file.write_bytes(file.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupted checkpoint"):
        load_denoiser(file)


def test_ckpt_without_state_dict(tmp_path):
    torch.save({"epoch": 1}, tmp_path / "a.ckpt")
    with pytest.raises(CheckpointError, match="has no 'state_dict'"):
        load_denoiser(tmp_path / "a.ckpt")
