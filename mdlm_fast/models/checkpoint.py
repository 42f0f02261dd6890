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

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from mdlm_fast.models.checkpoints import hf
from mdlm_fast.models.checkpoints.backbone import BackboneState, build_and_load
from mdlm_fast.models.checkpoints.errors import CheckpointError
from mdlm_fast.models.checkpoints.lightning import apply_ema, read_lightning
from mdlm_fast.models.checkpoints.mask_id import (
    MASK_APPENDED,
    MASK_DEFAULT,
    MASK_FROM_ARGUMENT,
    MASK_FROM_CONFIG,
    MASK_SOURCE_KEY,
)
from mdlm_fast.models.dit import DiT, DiTConfig
from mdlm_fast.models.embedded import JUDGE, MODEL, EmbeddedNameError, embedded_path
from mdlm_fast.util.atomic import atomic_directory

__all__ = ["CheckpointError", "load_denoiser", "save_denoiser"]

MASK_INDEX_ARGUMENT = "mask_index="  # how errors about the mask_index argument start (the CLI names its flag)


def resolve_embedded(path: str | os.PathLike) -> Path:
    """``"embedded:NAME"`` -> the package's assets/NAME directory; other paths unchanged."""
    if str(path) == f"embedded:{JUDGE}":
        raise CheckpointError(
            "embedded:judge is the gen-PPL judge (a causal LM), not a denoiser: load it with "
            "load_judge('embedded'); the embedded denoisers are embedded:heavy and embedded:light"
        )
    try:
        target = embedded_path(path, MODEL)
    except EmbeddedNameError as e:
        raise CheckpointError(str(e)) from None
    if target is None:
        return Path(path)
    if not (target / hf.CONFIG_NAME).is_file():
        raise CheckpointError(f"the embedded model {str(path)!r} is missing from this build ({target})")
    return target


def load_denoiser(
    path: str | os.PathLike,
    *,
    ema: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    mask_index: int | None = None,
    trust_checkpoint: bool = False,
    **config_overrides: Any,
) -> DiT:
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
    if (
        mask_index is not None
        and isinstance(vocab, int)
        and isinstance(mask_index, int)
        and not 0 <= mask_index < vocab
    ):
        raise CheckpointError(
            f"{MASK_INDEX_ARGUMENT}{mask_index} is not a token id of {path}: its vocab_size "
            f"is {vocab} (ids 0 to {vocab - 1})"
        )
    source = (
        MASK_FROM_ARGUMENT
        if "mask_index" in config_overrides
        else config.get(MASK_SOURCE_KEY, MASK_FROM_CONFIG if "mask_index" in config else MASK_DEFAULT)
    )
    if source == MASK_APPENDED and "mask_index" not in config_overrides:
        fields.pop("mask_index", None)  # vocab_size - 1, after any vocab_size override
    dit_config = _make_config(fields, path)
    # Not a DiTConfig field (equality and saved configs stay as they were): where the id came from.
    dit_config.mask_index_source = source  # type: ignore[attr-defined]
    model = build_and_load(dit_config, state, path)
    if shadow is not None:
        apply_ema(model, shadow, path)
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
    hf.check_replaceable(path)
    with atomic_directory(path) as tmp:
        hf.write_config(model.config, tmp / hf.CONFIG_NAME)
        hf.write_safetensors(hf.state_for_saving(model), tmp / hf.SAFETENSORS_NAME)
    return path


def _read_any(path: Path, ema: bool, trusted: bool, mask_given: bool) -> tuple[BackboneState, dict, list | None]:
    """Dispatch on the kind of path: (backbone state, config fields, EMA params or None)."""
    if path.name == hf.CONFIG_NAME and path.is_file():
        path = path.parent  # the config file of an HF-style directory stands for the directory
    if path.is_dir():
        state, config = hf.read_hf_dir(path, trusted)
        return state, config, None
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint file or directory: {path}")
    if path.suffix == ".safetensors" or (path.suffix == ".bin" and (path.parent / hf.CONFIG_NAME).is_file()):
        # A weights file of an HF-style directory: its config.json sits next to it.
        config = hf.read_config_json(path.parent)
        return hf.read_hf_weights(path, trusted), config, None
    return read_lightning(path, ema, trusted, mask_given)


def _check_overrides(overrides: Mapping[str, Any]) -> None:
    known = {f for f in DiTConfig.__dataclass_fields__}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(
            f"load_denoiser got unknown keyword(s) {', '.join(unknown)}; "
            f"config overrides must be DiTConfig fields: {', '.join(sorted(known))}"
        )


def _make_config(fields: dict, path: Path) -> DiTConfig:
    try:
        return DiTConfig.from_dict(fields)
    except ValueError as e:
        hint = ""
        if "n_heads" in str(e):
            config_file = (path if path.is_dir() else path.parent) / hf.CONFIG_NAME
            where = (
                f'add "n_heads" to {config_file}'
                if config_file.is_file()
                else 'put a config.json with "n_heads" next to the checkpoint'
            )
            hint = (
                f" (n_heads cannot be inferred from weight shapes: {where}; from Python, "
                f"load_denoiser(..., n_heads=N) also does)"
            )
        raise CheckpointError(f"bad config for {path}: {e}{hint}") from e
