"""HF-style checkpoint directories: ``config.json`` beside ``model.safetensors`` or
``pytorch_model.bin``, read and (atomically, by the caller) written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from mdlm_fast.models.checkpoints.backbone import PREFIX, BackboneState, backbone_state
from mdlm_fast.models.checkpoints.errors import CheckpointError
from mdlm_fast.models.checkpoints.pickles import tensor_dict, torch_load
from mdlm_fast.models.dit import DiT, DiTConfig

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
BIN_NAME = "pytorch_model.bin"


def read_hf_dir(directory: Path, trusted: bool) -> tuple["BackboneState", dict]:
    config = read_config_json(directory)
    for name in (SAFETENSORS_NAME, BIN_NAME):
        if (directory / name).is_file():
            return read_hf_weights(directory / name, trusted), config
    raise CheckpointError(f"no {SAFETENSORS_NAME} or {BIN_NAME} in {directory}")


def read_config_json(directory: Path) -> dict:
    file = directory / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"no {CONFIG_NAME} in {directory}")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupted checkpoint {file}: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"corrupted checkpoint {file}: expected a JSON object, got {type(config).__name__}")
    if "mask_index" not in config and isinstance(config.get("mask_token_id"), int):
        config["mask_index"] = config["mask_token_id"]  # the Hugging Face name for the same id
    return config


def read_hf_weights(file: Path, trusted: bool) -> "BackboneState":
    state: Any
    if file.suffix == ".safetensors":
        state = _read_safetensors(file)
    else:
        state = torch_load(file, trusted)
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
    return backbone_state(tensor_dict(state, file), ignore_other_prefixes=False)


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file), device="cpu")
    except Exception as e:  # SafetensorError, OSError, ... all mean the same to the caller
        raise CheckpointError(f"corrupted checkpoint {file}: {e}") from e


def state_for_saving(model: DiT) -> dict[str, torch.Tensor]:
    # safetensors wants contiguous CPU tensors that share no storage: clone each one.
    return {PREFIX + k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def write_config(config: DiTConfig, file: Path) -> None:
    with open(file, "w", encoding="utf-8") as f:
        json.dump(config.to_dict(), f, indent=2, sort_keys=True)
        f.write("\n")


def write_safetensors(tensors: dict[str, torch.Tensor], file: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(file), metadata={"format": "pt"})


def check_replaceable(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise CheckpointError(f"refusing to replace {path}: it exists and is not a directory")
    if any(path.iterdir()) and not (path / CONFIG_NAME).is_file():
        raise CheckpointError(
            f"refusing to replace {path}: it is a non-empty directory "
            f"without {CONFIG_NAME}, so it does not look like a checkpoint"
        )
