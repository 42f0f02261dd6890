"""Torch pickle files (``.ckpt``, ``pytorch_model.bin``) read without running code from them, and
the dict-like views of what they hold.

By default a file goes through :mod:`mdlm_fast.models.inert_pickle`: tensors are rebuilt, and every
other object the file names becomes an inert record of its class name and stored state.
``trusted=True`` unpickles fully.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from mdlm_fast.models import inert_pickle
from mdlm_fast.models.checkpoints.errors import CheckpointError, first_line, listing


def torch_load(file: Path, trusted: bool) -> Any:
    """torch.load on CPU: through the inert unpickler unless the caller trusts the file."""
    if trusted:
        try:
            return torch.load(file, map_location="cpu", weights_only=False)
        except ModuleNotFoundError as e:
            raise CheckpointError(
                f"cannot unpickle {file}: it needs the module '{e.name}' "
                f"(install it, e.g. omegaconf for MDLM checkpoints)"
            ) from e
        except Exception as e:
            raise CheckpointError(f"corrupted checkpoint {file}: {e}") from e
    with open(file, "rb") as f:
        head = f.read(4)
    is_zip = head == b"PK\x03\x04"  # torch.save's format since 1.6 (even if truncated)
    if not head:
        raise CheckpointError(f"{file} is empty (0 bytes): not a checkpoint")
    if not is_zip and head[:1] != b"\x80":
        # Not a zip archive and not a pickle (whose first byte is the PROTO opcode): no torch
        # file at all, so trusting it could not help.
        raise CheckpointError(
            f"{file} is not a torch checkpoint (neither a zip archive nor a pickle; it starts with {head!r})"
        )
    if not is_zip:
        # The legacy format reads storages through its own pickle hooks: only torch's
        # weights-only unpickler reads it without trusting the file.
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(
                f"corrupted checkpoint {file}, or a legacy-format torch file holding Python "
                f"objects: torch.load(weights_only=True) refuses it ({first_line(e)}); pass "
                f"trust_checkpoint=True (--trust-checkpoint) only if you trust the file"
            ) from e
    try:
        return inert_pickle.load(file)
    except Exception as e:
        raise CheckpointError(f"corrupted checkpoint {file}: {e}") from e


def mapping(obj: Any) -> dict | None:
    """A dict (or a record of a dict subclass, e.g. Lightning's AttributeDict) as a dict."""
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, inert_pickle.InertRecord) and obj.dict_items:
        return dict(obj.dict_items)
    return None


def get_field(obj: Any, key: str) -> Any:
    # Works for dicts and OmegaConf DictConfigs alike (both are mappings with .get).
    if obj is None or isinstance(obj, inert_pickle.InertRecord):
        return None
    try:
        return obj.get(key) if hasattr(obj, "get") else getattr(obj, key, None)
    except Exception:  # OmegaConf raises on missing/interpolation errors: treat as absent
        return None


def tensor_dict(state: Any, file: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping):
        raise CheckpointError(f"corrupted checkpoint {file}: state dict is a {type(state).__name__}, not a mapping")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        objects = sorted({v.qualname for v in state.values() if isinstance(v, inert_pickle.InertRecord)})
        hint = (
            f" (objects of {', '.join(objects)}, which are not rebuilt without trust_checkpoint=True)"
            if objects
            else ""
        )
        raise CheckpointError(f"corrupted checkpoint {file}: non-tensor entries {listing([str(k) for k in bad])}{hint}")
    return dict(state)
