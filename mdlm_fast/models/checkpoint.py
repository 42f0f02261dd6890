"""Load and save MDLM denoisers: HF-style directories and Lightning ``.ckpt`` files.

Formats read by :func:`load_denoiser`:

* **HF-style directory** (e.g. ``kuleshov-group/mdlm-owt``): ``config.json`` with the
  :class:`~mdlm_fast.models.dit.DiTConfig` fields (unknown keys such as ``model_type``/``auto_map``
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

Torch pickles (``.ckpt``, ``pytorch_model.bin``) are read by default through
:mod:`mdlm_fast.models.inert_pickle`: tensors are rebuilt, and every other object the file names (an
OmegaConf config, a pickled tokenizer, ...) becomes an inert record of its class name and stored
state; nothing from the file is imported or executed. ``trust_checkpoint=True`` unpickles fully.
Config values that are OmegaConf interpolations (``"${...}"``) count as not recorded.

The mask id, first rule that applies (``model.config.mask_index_source`` names it):

* ``"argument"``: ``mask_index=`` given;
* ``"tokenizer"``: the tokenizer MDLM pickles into ``hyper_parameters`` has a mask token: its id
  (text8: ``[MASK]`` = 4; a BERT tokenizer: 103);
* ``"appended"``: that tokenizer has no mask token, so MDLM appended one after its vocabulary:
  ``vocab_size - 1``;
* ``"config"``: ``mask_index`` (or Hugging Face's ``mask_token_id``) in ``config.json``;
* ``"default"``: nothing recorded: ``vocab_size - 1``.

Loading is strict: missing and unexpected keys and shape mismatches are all reported in one
:class:`CheckpointError`. The one tolerated omission is ``rotary_emb.inv_freq``, a deterministic
function of the config, which is recomputed when absent.

:func:`save_denoiser` writes an HF-style directory atomically (temporary sibling, fsync, rename).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from mdlm_fast.models import inert_pickle
from mdlm_fast.util.atomic import atomic_directory
from mdlm_fast.models.embedded import ASSETS
from mdlm_fast.models.dit import DiT, DiTConfig

__all__ = ["CheckpointError", "load_denoiser", "save_denoiser"]

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
BIN_NAME = "pytorch_model.bin"
_PREFIX = "backbone."
_OPTIONAL_KEYS = frozenset({"rotary_emb.inv_freq"})  # recomputed from the config when absent
_MAX_LISTED = 10
# model.config.mask_index_source: which rule gave the mask id.
MASK_FROM_ARGUMENT = "argument"      # mask_index= / --mask-index
MASK_FROM_TOKENIZER = "tokenizer"    # the mask token of the tokenizer pickled in a .ckpt
MASK_FROM_CONFIG = "config"          # mask_index / mask_token_id in config.json
MASK_APPENDED = "appended"           # the .ckpt's tokenizer has none: MDLM appends it, vocab_size - 1
MASK_DEFAULT = "default"             # nothing recorded: vocab_size - 1
_MASK_SOURCE_KEY = "_mask_index_source"
MASK_INDEX_ARGUMENT = "mask_index="  # how errors about the mask_index argument start (the CLI names its flag)
#: The trained models shipped inside the package: ``load_denoiser("embedded:heavy")``.
EMBEDDED_DIR = ASSETS
EMBEDDED_MODELS = ("heavy", "light")
EMBEDDED_JUDGE = "judge"  # also in assets/, but a causal LM: analysis.judge loads it


def resolve_embedded(path: str | os.PathLike) -> Path:
    """``"embedded:NAME"`` -> the package's assets/NAME directory; other paths unchanged."""
    text = str(path)
    if not text.startswith("embedded:"):
        return Path(path)
    name = text.split(":", 1)[1]
    target = EMBEDDED_DIR / name
    if name == EMBEDDED_JUDGE:
        raise CheckpointError("embedded:judge is the gen-PPL judge (a causal LM), not a denoiser: load it with "
                              "load_judge('embedded'); the embedded denoisers are embedded:heavy and embedded:light")
    if name not in EMBEDDED_MODELS or not (target / CONFIG_NAME).is_file():
        shipped = [f"embedded:{m}" for m in EMBEDDED_MODELS if (EMBEDDED_DIR / m / CONFIG_NAME).is_file()]
        raise CheckpointError(f"no embedded denoiser {name!r} in this build (shipped: {', '.join(shipped) or 'none'})")
    return target


class CheckpointError(ValueError):
    """A checkpoint cannot be read: missing file, corrupted data, or keys/shapes that disagree."""


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def load_denoiser(path: str | os.PathLike, *, ema: bool = True,
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  mask_index: int | None = None, trust_checkpoint: bool = False,
                  **config_overrides: Any) -> DiT:
    """Load a :class:`DiT` from an HF-style directory or a Lightning ``.ckpt`` file.

    Args:
        path: ``"embedded:heavy"`` / ``"embedded:light"`` (the trained models shipped in the
            package), a directory with ``config.json`` + ``model.safetensors``/``pytorch_model.bin``, a
            weights file inside such a directory, or a Lightning checkpoint file.
        ema: for Lightning checkpoints, use the EMA weights when the file has them (ignored for
            HF directories, whose weights are the exported ones).
        device, dtype: applied after loading (the model is built in fp32 on the CPU first).
            ``dtype=None`` keeps fp32.
        mask_index: the mask token id, overriding what the checkpoint records (see the module
            doc for where it is read from; ``model.config.mask_index_source`` says which rule
            applied).
        trust_checkpoint: unpickle torch files fully (``torch.load(weights_only=False)``), which
            runs whatever code the file names -- only for files you trust. By default nothing
            from the file is executed: tensors are rebuilt and every other object becomes an
            inert record that the config and the mask token are read from.
        **config_overrides: DiTConfig fields that override the stored config (e.g. ``n_heads``
            for a bare state dict).

    Returns the model in eval mode. Raises :class:`CheckpointError` on any problem with the
    files, TypeError for an override that is not a DiTConfig field.
    """
    path = resolve_embedded(path)
    if mask_index is not None:
        config_overrides["mask_index"] = mask_index
    _check_overrides(config_overrides)
    state, config, shadow = _read_any(path, ema, bool(trust_checkpoint), "mask_index" in config_overrides)
    fields = {**config, **config_overrides}
    vocab = fields.get("vocab_size")
    if mask_index is not None and isinstance(vocab, int) and isinstance(mask_index, int) \
            and not 0 <= mask_index < vocab:
        raise CheckpointError(f"{MASK_INDEX_ARGUMENT}{mask_index} is not a token id of {path}: its vocab_size "
                              f"is {vocab} (ids 0 to {vocab - 1})")
    source = (MASK_FROM_ARGUMENT if "mask_index" in config_overrides
              else config.get(_MASK_SOURCE_KEY, MASK_FROM_CONFIG if "mask_index" in config else MASK_DEFAULT))
    if source == MASK_APPENDED and "mask_index" not in config_overrides:
        fields.pop("mask_index", None)  # vocab_size - 1, after any vocab_size override
    config = _make_config(fields, path)
    # Not a DiTConfig field (equality and saved configs stay as they were): where the id came from.
    config.mask_index_source = source
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


def _read_any(path: Path, ema: bool, trusted: bool,
              mask_given: bool) -> tuple["_BackboneState", dict, list | None]:
    """Dispatch on the kind of path: (backbone state, config fields, EMA params or None)."""
    if path.name == CONFIG_NAME and path.is_file():
        path = path.parent  # the config file of an HF-style directory stands for the directory
    if path.is_dir():
        state, config = _read_hf_dir(path, trusted)
        return state, config, None
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint file or directory: {path}")
    if path.suffix == ".safetensors" or (
            path.suffix == ".bin" and (path.parent / CONFIG_NAME).is_file()):
        # A weights file of an HF-style directory: its config.json sits next to it.
        config = _read_config_json(path.parent)
        return _read_hf_weights(path, trusted), config, None
    return _read_lightning(path, ema, trusted, mask_given)


# --------------------------------------------------------------------------------------------
# Reading: HF-style directories
# --------------------------------------------------------------------------------------------

def _read_hf_dir(directory: Path, trusted: bool) -> tuple["_BackboneState", dict]:
    config = _read_config_json(directory)
    for name in (SAFETENSORS_NAME, BIN_NAME):
        if (directory / name).is_file():
            return _read_hf_weights(directory / name, trusted), config
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
    if "mask_index" not in config and isinstance(config.get("mask_token_id"), int):
        config["mask_index"] = config["mask_token_id"]  # the Hugging Face name for the same id
    return config


def _read_hf_weights(file: Path, trusted: bool) -> "_BackboneState":
    if file.suffix == ".safetensors":
        state = _read_safetensors(file)
    else:
        state = _torch_load(file, trusted)
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

def _read_lightning(file: Path, ema: bool, trusted: bool, mask_given: bool) -> tuple[dict, dict, list | None]:
    ckpt = _torch_load(file, trusted)
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
    if not any(k == "vocab_embed.embedding" or k.startswith("blocks.") for k in state):
        raise CheckpointError(f"{file} holds no MDLM DiT weights: no backbone.vocab_embed.embedding and no "
                              f"backbone.blocks.* (its state_dict keys: {_listing(list(raw_state))})")
    config = _infer_config(state)
    if (file.parent / CONFIG_NAME).is_file():
        config.update(_read_config_json(file.parent))
    hparams = _mapping(ckpt.get("hyper_parameters"))
    config.update(_lightning_config(hparams))
    if not mask_given:  # the caller's id stands; a tokenizer this loader cannot read is no error then
        config.update(_tokenizer_mask(hparams.get("tokenizer") if hparams else None, file))
    shadow = _ema_shadow(ckpt, file) if ema else None
    return state, config, shadow


def _torch_load(file: Path, trusted: bool) -> Any:
    """torch.load on CPU: through the inert unpickler unless the caller trusts the file."""
    if trusted:
        try:
            return torch.load(file, map_location="cpu", weights_only=False)
        except ModuleNotFoundError as e:
            raise CheckpointError(f"cannot unpickle {file}: it needs the module '{e.name}' "
                                  f"(install it, e.g. omegaconf for MDLM checkpoints)") from e
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
        raise CheckpointError(f"{file} is not a torch checkpoint (neither a zip archive nor a pickle; it "
                              f"starts with {head!r})")
    if not is_zip:
        # The legacy format reads storages through its own pickle hooks: only torch's
        # weights-only unpickler reads it without trusting the file.
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(
                f"corrupted checkpoint {file}, or a legacy-format torch file holding Python "
                f"objects: torch.load(weights_only=True) refuses it ({_first_line(e)}); pass "
                f"trust_checkpoint=True (--trust-checkpoint) only if you trust the file") from e
    try:
        return inert_pickle.load(file)
    except Exception as e:
        raise CheckpointError(f"corrupted checkpoint {file}: {e}") from e


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _mapping(obj: Any) -> dict | None:
    """A dict (or a record of a dict subclass, e.g. Lightning's AttributeDict) as a dict."""
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, inert_pickle.InertRecord) and obj.dict_items:
        return dict(obj.dict_items)
    return None


# --------------------------------------------------------------------------------------------
# The mask id
# --------------------------------------------------------------------------------------------

def _tokenizer_mask(tokenizer: Any, file: Path) -> dict:
    """MDLM's rule for the tokenizer it pickled into ``hyper_parameters``: the tokenizer's mask
    token id if it has a mask token, else ``vocab_size`` of the tokenizer with the model's
    vocabulary grown by one (``vocab_size - 1`` of the model). Returns config fields."""
    if tokenizer is None:
        return {}
    if not isinstance(tokenizer, inert_pickle.InertRecord):  # a trusted load: the real object
        if getattr(tokenizer, "mask_token", None) is None:
            return {_MASK_SOURCE_KEY: MASK_APPENDED}
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if not isinstance(mask_id, int):
            raise CheckpointError(f"{file}: the tokenizer's mask token has no integer id "
                                  f"({mask_id!r}); pass mask_index=... (--mask-index)")
        return {"mask_index": mask_id, _MASK_SOURCE_KEY: MASK_FROM_TOKENIZER}
    attrs = tokenizer.state if isinstance(tokenizer.state, dict) else {}
    if "_mask_token" in attrs:
        token = attrs["_mask_token"]
    elif isinstance(attrs.get("_special_tokens_map"), dict):
        token = attrs["_special_tokens_map"].get("mask_token")
    elif isinstance(attrs.get("init_kwargs"), dict) and "mask_token" in attrs["init_kwargs"]:
        token = attrs["init_kwargs"]["mask_token"]
    else:
        raise CheckpointError(f"{file}: cannot tell whether the pickled tokenizer "
                              f"({tokenizer.qualname}) has a mask token; pass mask_index=... "
                              f"(--mask-index)")
    if token is None:
        return {_MASK_SOURCE_KEY: MASK_APPENDED}
    text = _token_text(token)
    mask_id = _token_id(attrs, text) if text is not None else None
    if mask_id is None:
        raise CheckpointError(f"{file}: the pickled tokenizer ({tokenizer.qualname}) has the mask "
                              f"token {text!r} but no id for it that this loader can read; pass "
                              f"mask_index=... (--mask-index)")
    return {"mask_index": mask_id, _MASK_SOURCE_KEY: MASK_FROM_TOKENIZER}


def _token_text(token: Any) -> str | None:
    """A special token's text: a str, or a record of a tokenizers.AddedToken."""
    if isinstance(token, str):
        return token
    if isinstance(token, inert_pickle.InertRecord):
        content = token.attribute("content")
        if isinstance(content, str):
            return content
        if token.args and isinstance(token.args[0], str):
            return token.args[0]
    return None


def _token_id(attrs: dict, text: str) -> int | None:
    """The id of ``text`` in a pickled tokenizer's attributes: its added-token tables, the
    serialized fast tokenizer, or a vocabulary mapping (text8's ``_vocab_str_to_int``, BERT's
    ``vocab``, GPT-2's ``encoder``)."""
    for name in ("_added_tokens_encoder", "added_tokens_encoder"):
        found = _mapping(attrs.get(name)) or {}
        if isinstance(found.get(text), int):
            return found[text]
    for name in ("_added_tokens_decoder", "added_tokens_decoder"):
        for index, token in (_mapping(attrs.get(name)) or {}).items():
            if isinstance(index, int) and _token_text(token) == text:
                return index
    fast = attrs.get("_tokenizer")
    if isinstance(fast, inert_pickle.InertRecord) and isinstance(fast.state, (bytes, str)):
        found = _fast_tokenizer_id(fast.state, text)
        if found is not None:
            return found
    for value in attrs.values():
        vocab = _mapping(value)
        if vocab and isinstance(vocab.get(text), int) and not isinstance(vocab[text], bool):
            return vocab[text]
    return None


def _fast_tokenizer_id(serialized: bytes | str, text: str) -> int | None:
    """The id of ``text`` in a tokenizers.Tokenizer's pickled state (its JSON serialization)."""
    try:
        data = json.loads(serialized)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    for token in data.get("added_tokens") or []:
        if isinstance(token, dict) and token.get("content") == text and isinstance(token.get("id"), int):
            return token["id"]
    vocab = (data.get("model") or {}).get("vocab") if isinstance(data.get("model"), dict) else None
    if isinstance(vocab, dict) and isinstance(vocab.get(text), int):
        return vocab[text]
    return None


def _lightning_config(hparams: Any) -> dict:
    """DiTConfig fields from MDLM's saved hyperparameters (an OmegaConf config or plain dicts)."""
    cfg = _get(hparams, "config")
    if isinstance(cfg, inert_pickle.InertRecord):
        cfg = inert_pickle.plain(cfg)  # an OmegaConf DictConfig read from its stored content
    model = _get(cfg, "model")
    out: dict[str, Any] = {}
    # MDLM's names -> DiTConfig's names.
    for src, dst in (("hidden_size", "hidden_dim"), ("hidden_dim", "hidden_dim"),
                     ("n_heads", "n_heads"), ("n_blocks", "n_blocks"), ("cond_dim", "cond_dim"),
                     ("length", "model_length"), ("dropout", "dropout")):
        value = _get(model, src)
        if value is not None and not _is_interpolation(value):
            out[dst] = value
    time_conditioning = _get(cfg, "time_conditioning")
    if time_conditioning is not None and not _is_interpolation(time_conditioning):
        out["time_conditioning"] = bool(time_conditioning)
    return out


def _is_interpolation(value: Any) -> bool:
    # An OmegaConf "${...}" read from the stored content: resolving it could run a resolver
    # (MDLM registers an "eval" one), so it counts as not recorded.
    return isinstance(value, str) and "${" in value


def _get(obj: Any, key: str) -> Any:
    # Works for dicts and OmegaConf DictConfigs alike (both are mappings with .get).
    if obj is None or isinstance(obj, inert_pickle.InertRecord):
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
        objects = sorted({v.qualname for v in state.values() if isinstance(v, inert_pickle.InertRecord)})
        hint = (f" (objects of {', '.join(objects)}, which are not rebuilt without "
                f"trust_checkpoint=True)" if objects else "")
        raise CheckpointError(f"corrupted checkpoint {file}: non-tensor entries "
                              f"{_listing([str(k) for k in bad])}{hint}")
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
            config_file = (path if path.is_dir() else path.parent) / CONFIG_NAME
            where = (f"add \"n_heads\" to {config_file}" if config_file.is_file()
                     else f"put a config.json with \"n_heads\" next to the checkpoint")
            hint = (f" (n_heads cannot be inferred from weight shapes: {where}; from Python, "
                    f"load_denoiser(..., n_heads=N) also does)")
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

