"""Lightning checkpoints as MDLM writes them: ``state_dict`` with ``backbone.*`` keys, the EMA
weights, and the model config and tokenizer pickled into ``hyper_parameters``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from mdlm_fast.models import inert_pickle
from mdlm_fast.models.checkpoints.backbone import BackboneState, backbone_state, infer_config
from mdlm_fast.models.checkpoints.errors import CheckpointError, listing
from mdlm_fast.models.checkpoints.hf import CONFIG_NAME, read_config_json
from mdlm_fast.models.checkpoints.mask_id import tokenizer_mask
from mdlm_fast.models.checkpoints.pickles import get_field, mapping, tensor_dict, torch_load
from mdlm_fast.models.dit import DiT


def read_lightning(file: Path, ema: bool, trusted: bool, mask_given: bool) -> tuple[BackboneState, dict, list | None]:
    ckpt = torch_load(file, trusted)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"corrupted checkpoint {file}: expected a dict, got {type(ckpt).__name__}")
    if "state_dict" in ckpt:
        raw_state, is_lightning = ckpt["state_dict"], True
    elif ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raw_state, is_lightning = ckpt, False  # a bare state dict saved with torch.save
    else:
        raise CheckpointError(f"{file} has no 'state_dict' (keys: {listing(list(ckpt))})")
    state = backbone_state(tensor_dict(raw_state, file), ignore_other_prefixes=is_lightning)
    if not any(k == "vocab_embed.embedding" or k.startswith("blocks.") for k in state):
        raise CheckpointError(
            f"{file} holds no MDLM DiT weights: no backbone.vocab_embed.embedding and no "
            f"backbone.blocks.* (its state_dict keys: {listing(list(raw_state))})"
        )
    config = infer_config(state)
    if (file.parent / CONFIG_NAME).is_file():
        config.update(read_config_json(file.parent))
    hparams = mapping(ckpt.get("hyper_parameters"))
    config.update(lightning_config(hparams))
    if not mask_given:  # the caller's id stands; a tokenizer this loader cannot read is no error then
        config.update(tokenizer_mask(hparams.get("tokenizer") if hparams else None, file))
    shadow = ema_shadow(ckpt, file) if ema else None
    return state, config, shadow


def lightning_config(hparams: Any) -> dict:
    """DiTConfig fields from MDLM's saved hyperparameters (an OmegaConf config or plain dicts)."""
    cfg = get_field(hparams, "config")
    if isinstance(cfg, inert_pickle.InertRecord):
        cfg = inert_pickle.plain(cfg)  # an OmegaConf DictConfig read from its stored content
    model = get_field(cfg, "model")
    out: dict[str, Any] = {}
    # MDLM's names -> DiTConfig's names.
    for src, dst in (
        ("hidden_size", "hidden_dim"),
        ("hidden_dim", "hidden_dim"),
        ("n_heads", "n_heads"),
        ("n_blocks", "n_blocks"),
        ("cond_dim", "cond_dim"),
        ("length", "model_length"),
        ("dropout", "dropout"),
    ):
        value = get_field(model, src)
        if value is not None and not _is_interpolation(value):
            out[dst] = value
    time_conditioning = get_field(cfg, "time_conditioning")
    if time_conditioning is not None and not _is_interpolation(time_conditioning):
        out["time_conditioning"] = bool(time_conditioning)
    return out


def _is_interpolation(value: Any) -> bool:
    # An OmegaConf "${...}" read from the stored content: resolving it could run a resolver
    # (MDLM registers an "eval" one), so it counts as not recorded.
    return isinstance(value, str) and "${" in value


def ema_shadow(ckpt: Mapping, file: Path) -> list | None:
    ema = ckpt.get("ema")
    shadow = get_field(ema, "shadow_params") if isinstance(ema, Mapping) else None
    if shadow is None:
        return None  # trained without EMA: the state_dict weights are the ones to use
    if not isinstance(shadow, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in shadow):
        raise CheckpointError(f"corrupted checkpoint {file}: ema.shadow_params must be a list of tensors")
    return list(shadow)


def apply_ema(model: DiT, shadow: list, file: Path) -> None:
    """Copy EMA weights into ``model.parameters()`` (their order is MDLM's backbone order)."""
    params = list(model.named_parameters())
    if len(shadow) != len(params):
        raise CheckpointError(
            f"{file}: ema.shadow_params has {len(shadow)} tensors but the model has "
            f"{len(params)} parameters (expected one per backbone parameter, in order; "
            f"a noise schedule with trainable parameters is not supported)"
        )
    bad = [
        f"#{i} {name}: expected {tuple(p.shape)}, got {tuple(s.shape)}"
        for i, ((name, p), s) in enumerate(zip(params, shadow))
        if s.shape != p.shape
    ]
    if bad:
        raise CheckpointError(f"{file}: ema.shadow_params shape mismatch: {listing(bad)}")
    with torch.no_grad():
        for (_, p), s in zip(params, shadow):
            p.copy_(s)
    model.refresh_constants()
