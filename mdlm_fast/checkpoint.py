"""Load and save MDLM denoisers: HF-style directories and Lightning ``.ckpt`` files.

Formats read by :func:`load_denoiser`:

* **HF-style directory** (e.g. ``kuleshov-group/mdlm-owt``): ``config.json`` with the
  :class:`~mdlm_fast.model.DiTConfig` fields (unknown keys such as ``model_type``/``auto_map``
  are ignored; ``cond_dim`` is always taken from the file) and ``model.safetensors``
  (preferred) or ``pytorch_model.bin``. Keys are ``backbone.*``; bare keys are accepted too.
  A path to the weights file itself is accepted and reads ``config.json`` next to it.
* **Lightning checkpoint** (any other file, typically ``*.ckpt``): ``ckpt['state_dict']`` with
  ``backbone.*`` keys (other prefixes such as ``noise.*`` are ignored) and, with ``ema=True``,
  the EMA weights ``ckpt['ema']['shadow_params']`` in ``DiT.parameters()`` order. The config is
  resolved, later sources winning: shapes inferred from the state dict (hidden_dim, vocab_size,
  cond_dim, n_blocks) < ``config.json`` next to the file < MDLM's
  ``ckpt['hyper_parameters']['config']`` (``model.hidden_size/length/n_heads/...`` and the
  top-level ``time_conditioning``) < keyword overrides. ``n_heads`` cannot be inferred from
  shapes: without a config it must be passed (``load_denoiser(path, n_heads=12)``).

Loading is strict: missing and unexpected keys and shape mismatches are all reported in one
:class:`CheckpointError`. The one tolerated omission is ``rotary_emb.inv_freq``, a deterministic
function of the config, which is recomputed when absent.

:func:`save_denoiser` writes an HF-style directory atomically (temporary sibling, fsync, rename).
"""
from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from mdlm_fast.atomic import atomic_directory
from mdlm_fast.model import DiT, DiTConfig

__all__ = ["CheckpointError", "load_denoiser", "save_denoiser"]

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
BIN_NAME = "pytorch_model.bin"
_PREFIX = "backbone."
_OPTIONAL_KEYS = frozenset({"rotary_emb.inv_freq"})  # recomputed from the config when absent
_MAX_LISTED = 10
#: The trained models shipped inside the package: ``load_denoiser("embedded:heavy")``.
EMBEDDED_DIR = Path(__file__).resolve().parent / "assets"
EMBEDDED_MODELS = ("heavy", "light")


def resolve_embedded(path: str | os.PathLike) -> Path:
    """``"embedded:NAME"`` -> the package's assets/NAME directory; other paths unchanged."""
    text = str(path)
    if not text.startswith("embedded:"):
        return Path(path)
    name = text.split(":", 1)[1]
    target = EMBEDDED_DIR / name
    if not (target / CONFIG_NAME).is_file():
        shipped = sorted(p.name for p in EMBEDDED_DIR.glob("*") if (p / CONFIG_NAME).is_file()) if EMBEDDED_DIR.is_dir() else []
        raise CheckpointError(f"no embedded model {name!r} in this build (shipped: {', '.join(shipped) or 'none'})")
    return target


class CheckpointError(ValueError):
    """A checkpoint cannot be read: missing file, corrupted data, or keys/shapes that disagree."""


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def load_denoiser(path: str | os.PathLike, *, ema: bool = True,
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  weights_only: bool | None = None, **config_overrides: Any) -> DiT:
    """Load a :class:`DiT` from an HF-style directory or a Lightning ``.ckpt`` file.

    Args:
        path: ``"embedded:heavy"`` / ``"embedded:light"`` (the trained models shipped in the
            package), a directory with ``config.json`` + ``model.safetensors``/``pytorch_model.bin``, a
            weights file inside such a directory, or a Lightning checkpoint file.
        ema: for Lightning checkpoints, use the EMA weights when the file has them (ignored for
            HF directories, whose weights are the exported ones).
        device, dtype: applied after loading (the model is built in fp32 on the CPU first).
            ``dtype=None`` keeps fp32.
        weights_only: how to unpickle torch files. None: try ``torch.load(weights_only=True)``
            and, if the file holds other Python objects (MDLM's ``.ckpt`` stores an OmegaConf
            config and the tokenizer), warn and fall back to full unpickling, which can run
            arbitrary code -- only for trusted files. True: never fall back. False: full
            unpickling directly.
        **config_overrides: DiTConfig fields that override the stored config (e.g. ``n_heads``
            for a bare state dict, or ``mask_index``).

    Returns the model in eval mode. Raises :class:`CheckpointError` on any problem with the
    files, TypeError for an override that is not a DiTConfig field.
    """
    path = resolve_embedded(path)
    _check_overrides(config_overrides)
    state, config, shadow = _read_any(path, ema, weights_only)
    config = _make_config({**config, **config_overrides}, path)
    model = _build_and_load(config, state, path)
    if shadow is not None:
        _apply_ema(model, shadow, path)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


def save_denoiser(model: DiT, path: str | os.PathLike) -> Path:
    """Write ``model`` as an HF-style directory: ``config.json`` + ``model.safetensors``.

    Keys are ``backbone.``-prefixed (including the ``rotary_emb.inv_freq`` buffer), tensors are
    saved in their current dtype. The write is atomic: everything goes into a temporary sibling
    directory, is fsynced, and is renamed into place; an existing checkpoint directory at
    ``path`` is replaced only once the new one is complete (moved to a backup, the new one
    renamed in, the backup deleted). On failure nothing is left at ``path`` except the old
    checkpoint. To avoid clobbering unrelated data, an existing ``path`` must be an empty
    directory or one holding a ``config.json``.

    Returns the path written.
    """
    if not isinstance(model, DiT):
        raise TypeError(f"save_denoiser expects a DiT, got {type(model).__name__}")
    path = Path(path)
    _check_replaceable(path)
    with atomic_directory(path) as tmp:
        _write_config(model.config, tmp / CONFIG_NAME)
        _write_safetensors(_state_for_saving(model), tmp / SAFETENSORS_NAME)
    return path


def _read_any(path: Path, ema: bool,
              weights_only: bool | None) -> tuple["_BackboneState", dict, list | None]:
    """Dispatch on the kind of path: (backbone state, config fields, EMA params or None)."""
    if path.name == CONFIG_NAME and path.is_file():
        path = path.parent  # the config file of an HF-style directory stands for the directory
    if path.is_dir():
        state, config = _read_hf_dir(path, weights_only)
        return state, config, None
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint file or directory: {path}")
    if path.suffix == ".safetensors" or (
            path.suffix == ".bin" and (path.parent / CONFIG_NAME).is_file()):
        # A weights file of an HF-style directory: its config.json sits next to it.
        config = _read_config_json(path.parent)
        return _read_hf_weights(path, weights_only), config, None
    return _read_lightning(path, ema, weights_only)


# --------------------------------------------------------------------------------------------
# Reading: HF-style directories
# --------------------------------------------------------------------------------------------

def _read_hf_dir(directory: Path, weights_only: bool | None) -> tuple["_BackboneState", dict]:
    config = _read_config_json(directory)
    for name in (SAFETENSORS_NAME, BIN_NAME):
        if (directory / name).is_file():
            return _read_hf_weights(directory / name, weights_only), config
    raise CheckpointError(f"no {SAFETENSORS_NAME} or {BIN_NAME} in {directory}")


def _read_config_json(directory: Path) -> dict:
    file = directory / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"no {CONFIG_NAME} in {directory}")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupted checkpoint {file}: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"corrupted checkpoint {file}: expected a JSON object, "
                              f"got {type(config).__name__}")
    return config


def _read_hf_weights(file: Path, weights_only: bool | None) -> "_BackboneState":
    if file.suffix == ".safetensors":
        state = _read_safetensors(file)
    else:
        state = _torch_load(file, weights_only)
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
    return _backbone_state(_tensor_dict(state, file), ignore_other_prefixes=False)


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    try:
        return load_file(str(file), device="cpu")
    except Exception as e:  # SafetensorError, OSError, ... all mean the same to the caller
        raise CheckpointError(f"corrupted checkpoint {file}: {e}") from e


# --------------------------------------------------------------------------------------------
# Reading: Lightning checkpoints
# --------------------------------------------------------------------------------------------

def _read_lightning(file: Path, ema: bool,
                    weights_only: bool | None) -> tuple[dict, dict, list | None]:
    ckpt = _torch_load(file, weights_only)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"corrupted checkpoint {file}: expected a dict, "
                              f"got {type(ckpt).__name__}")
    if "state_dict" in ckpt:
        raw_state, is_lightning = ckpt["state_dict"], True
    elif ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raw_state, is_lightning = ckpt, False  # a bare state dict saved with torch.save
    else:
        raise CheckpointError(f"{file} has no 'state_dict' (keys: {_listing(list(ckpt))})")
    state = _backbone_state(_tensor_dict(raw_state, file), ignore_other_prefixes=is_lightning)
    config = _infer_config(state)
    if (file.parent / CONFIG_NAME).is_file():
        config.update(_read_config_json(file.parent))
    config.update(_lightning_config(ckpt.get("hyper_parameters")))
    shadow = _ema_shadow(ckpt, file) if ema else None
    return state, config, shadow


def _torch_load(file: Path, weights_only: bool | None) -> Any:
    """torch.load on CPU; the weights_only policy is documented in :func:`load_denoiser`."""
    if weights_only is not False:
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # torch raises UnpicklingError both for disallowed globals and for some corrupted
            # files; only the former is worth a retry.
            if weights_only or "weights only load failed" not in str(e).lower():
                raise CheckpointError(
                    f"corrupted checkpoint {file}, or it holds Python objects that "
                    f"torch.load(weights_only=True) refuses: {e}") from e
            warnings.warn(
                f"{file} holds Python objects besides tensors (MDLM's .ckpt stores its config "
                f"and tokenizer); loading it with torch.load(weights_only=False), which can run "
                f"arbitrary code. Only load files you trust; pass weights_only=True to refuse.",
                stacklevel=3)
        except Exception as e:
            raise CheckpointError(f"corrupted checkpoint {file}: {e}") from e
    try:
        return torch.load(file, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        raise CheckpointError(f"cannot unpickle {file}: it needs the module '{e.name}' "
                              f"(install it, e.g. omegaconf for MDLM checkpoints)") from e
    except Exception as e:
        raise CheckpointError(f"corrupted checkpoint {file}: {e}") from e


def _lightning_config(hparams: Any) -> dict:
    """DiTConfig fields from MDLM's saved hyperparameters (an OmegaConf config or plain dicts)."""
    cfg = _get(hparams, "config")
    model = _get(cfg, "model")
    out: dict[str, Any] = {}
    # MDLM's names -> DiTConfig's names.
    for src, dst in (("hidden_size", "hidden_dim"), ("hidden_dim", "hidden_dim"),
                     ("n_heads", "n_heads"), ("n_blocks", "n_blocks"), ("cond_dim", "cond_dim"),
                     ("length", "model_length"), ("dropout", "dropout")):
        value = _get(model, src)
        if value is not None:
            out[dst] = value
    time_conditioning = _get(cfg, "time_conditioning")
    if time_conditioning is not None:
        out["time_conditioning"] = bool(time_conditioning)
    return out


def _get(obj: Any, key: str) -> Any:
    # Works for dicts and OmegaConf DictConfigs alike (both are mappings with .get).
    if obj is None:
        return None
    try:
        return obj.get(key) if hasattr(obj, "get") else getattr(obj, key, None)
    except Exception:  # OmegaConf raises on missing/interpolation errors: treat as absent
        return None


def _ema_shadow(ckpt: Mapping, file: Path) -> list | None:
    ema = ckpt.get("ema")
    shadow = _get(ema, "shadow_params") if isinstance(ema, Mapping) else None
    if shadow is None:
        return None  # trained without EMA: the state_dict weights are the ones to use
    if not isinstance(shadow, (list, tuple)) or \
            not all(isinstance(t, torch.Tensor) for t in shadow):
        raise CheckpointError(f"corrupted checkpoint {file}: ema.shadow_params must be a list "
                              f"of tensors")
    return list(shadow)


def _apply_ema(model: DiT, shadow: list, file: Path) -> None:
    """Copy EMA weights into ``model.parameters()`` (their order is MDLM's backbone order)."""
    params = list(model.named_parameters())
    if len(shadow) != len(params):
        raise CheckpointError(
            f"{file}: ema.shadow_params has {len(shadow)} tensors but the model has "
            f"{len(params)} parameters (expected one per backbone parameter, in order; "
            f"a noise schedule with trainable parameters is not supported)")
    bad = [f"#{i} {name}: expected {tuple(p.shape)}, got {tuple(s.shape)}"
           for i, ((name, p), s) in enumerate(zip(params, shadow)) if s.shape != p.shape]
    if bad:
        raise CheckpointError(f"{file}: ema.shadow_params shape mismatch: {_listing(bad)}")
    with torch.no_grad():
        for (_, p), s in zip(params, shadow):
            p.copy_(s)
    model.refresh_constants()


# --------------------------------------------------------------------------------------------
# State dict and config handling
# --------------------------------------------------------------------------------------------

def _tensor_dict(state: Any, file: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping):
        raise CheckpointError(f"corrupted checkpoint {file}: state dict is a "
                              f"{type(state).__name__}, not a mapping")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"corrupted checkpoint {file}: non-tensor entries "
                              f"{_listing([str(k) for k in bad])}")
    return dict(state)


class _BackboneState(dict):
    """Backbone tensors under bare names, plus how to report key problems to the user.

    ``prefix`` is what the file put before backbone names ("backbone." or ""), ``foreign`` the
    file's keys outside the backbone that must be reported as unexpected (HF files only).
    """

    def __init__(self, tensors: dict, prefix: str, foreign: list[str]) -> None:
        super().__init__(tensors)
        self.prefix = prefix
        self.foreign = foreign


def _backbone_state(state: dict, *, ignore_other_prefixes: bool) -> _BackboneState:
    """Strip ``backbone.``; keys without it are unexpected unless told to ignore them.

    If no key has the prefix, the keys are taken as bare backbone names.
    """
    if not any(k.startswith(_PREFIX) for k in state):
        return _BackboneState(state, "", [])
    tensors = {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX)}
    foreign = [] if ignore_other_prefixes else [k for k in state if not k.startswith(_PREFIX)]
    return _BackboneState(tensors, _PREFIX, foreign)


def _infer_config(state: dict) -> dict:
    """Config fields readable from tensor shapes (everything but n_heads and the flags)."""
    out: dict[str, Any] = {}
    emb = state.get("vocab_embed.embedding")
    if emb is not None and emb.dim() == 2:
        out["vocab_size"], out["hidden_dim"] = emb.shape
    sig = state.get("sigma_map.mlp.0.weight")
    if sig is not None and sig.dim() == 2:
        out["cond_dim"] = sig.shape[0]
    indices = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if indices:
        out["n_blocks"] = max(indices) + 1
    return out


def _check_overrides(overrides: Mapping[str, Any]) -> None:
    known = {f for f in DiTConfig.__dataclass_fields__}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"load_denoiser got unknown keyword(s) {', '.join(unknown)}; "
                        f"config overrides must be DiTConfig fields: {', '.join(sorted(known))}")


def _make_config(fields: dict, path: Path) -> DiTConfig:
    try:
        return DiTConfig.from_dict(fields)
    except ValueError as e:
        hint = ""
        if "n_heads" in str(e):
            hint = (" (n_heads cannot be inferred from weight shapes: put a config.json next to "
                    "the checkpoint or pass n_heads=...)")
        raise CheckpointError(f"bad config for {path}: {e}{hint}") from e


def _build_and_load(config: DiTConfig, state: _BackboneState, path: Path) -> DiT:
    # Build on the meta device so the (discarded) random init costs nothing at full size.
    with torch.device("meta"):
        model = DiT(config)
    model.to_empty(device="cpu")
    model.rotary_emb.reset_parameters()  # to_empty left it uninitialized; the file may lack it
    expected = model.state_dict()
    _check_keys_and_shapes(expected, state, path)
    full = {**{k: expected[k] for k in _OPTIONAL_KEYS if k not in state}, **state}
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as e:  # dtype problems etc.; keys and shapes were checked above
        raise CheckpointError(f"cannot load {path}: {e}") from e
    return model


def _check_keys_and_shapes(expected: Mapping[str, torch.Tensor], state: _BackboneState,
                           path: Path) -> None:
    """One error listing every missing/unexpected key and shape mismatch, under file names."""
    pre = state.prefix or ""
    missing = [pre + k for k in expected if k not in state and k not in _OPTIONAL_KEYS]
    unexpected = [pre + k for k in state if k not in expected] + state.foreign
    mismatched = [f"{pre}{k}: expected {tuple(expected[k].shape)}, got {tuple(state[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_listing(mismatched)}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not match the model config: "
                              + "; ".join(problems))


def _listing(items: list[str]) -> str:
    """At most ``_MAX_LISTED`` items, then '... and N more'."""
    shown = ", ".join(items[:_MAX_LISTED])
    extra = len(items) - _MAX_LISTED
    return shown + (f", ... and {extra} more" if extra > 0 else "")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _state_for_saving(model: DiT) -> dict[str, torch.Tensor]:
    # safetensors wants contiguous CPU tensors that share no storage: clone each one.
    return {_PREFIX + k: v.detach().to("cpu").contiguous().clone()
            for k, v in model.state_dict().items()}


def _write_config(config: DiTConfig, file: Path) -> None:
    with open(file, "w", encoding="utf-8") as f:
        json.dump(config.to_dict(), f, indent=2, sort_keys=True)
        f.write("\n")


def _write_safetensors(tensors: dict[str, torch.Tensor], file: Path) -> None:
    from safetensors.torch import save_file
    save_file(tensors, str(file), metadata={"format": "pt"})


def _check_replaceable(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise CheckpointError(f"refusing to replace {path}: it exists and is not a directory")
    if any(path.iterdir()) and not (path / CONFIG_NAME).is_file():
        raise CheckpointError(f"refusing to replace {path}: it is a non-empty directory "
                              f"without {CONFIG_NAME}, so it does not look like a checkpoint")

