"""The mask id a checkpoint records, and which rule gave it (``model.config.mask_index_source``);
here, MDLM's rule for the tokenizer it pickles into a Lightning checkpoint's ``hyper_parameters``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mdlm_fast.models import inert_pickle
from mdlm_fast.models.checkpoints.errors import CheckpointError
from mdlm_fast.models.checkpoints.pickles import mapping

MASK_FROM_ARGUMENT = "argument"  # mask_index= / --mask-index
MASK_FROM_TOKENIZER = "tokenizer"  # the mask token of the tokenizer pickled in a .ckpt
MASK_FROM_CONFIG = "config"  # mask_index / mask_token_id in config.json
MASK_APPENDED = "appended"  # the .ckpt's tokenizer has none: MDLM appends it, vocab_size - 1
MASK_DEFAULT = "default"  # nothing recorded: vocab_size - 1
#: The config field (dropped before DiTConfig sees it) that carries the rule a reader applied.
MASK_SOURCE_KEY = "_mask_index_source"


def tokenizer_mask(tokenizer: Any, file: Path) -> dict:
    """MDLM's rule for the tokenizer it pickled into ``hyper_parameters``: the tokenizer's mask
    token id if it has a mask token, else ``vocab_size`` of the tokenizer with the model's
    vocabulary grown by one (``vocab_size - 1`` of the model). Returns config fields."""
    if tokenizer is None:
        return {}
    if not isinstance(tokenizer, inert_pickle.InertRecord):  # a trusted load: the real object
        if getattr(tokenizer, "mask_token", None) is None:
            return {MASK_SOURCE_KEY: MASK_APPENDED}
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if not isinstance(mask_id, int):
            raise CheckpointError(
                f"{file}: the tokenizer's mask token has no integer id "
                f"({mask_id!r}); pass mask_index=... (--mask-index)"
            )
        return {"mask_index": mask_id, MASK_SOURCE_KEY: MASK_FROM_TOKENIZER}
    attrs = tokenizer.state if isinstance(tokenizer.state, dict) else {}
    if "_mask_token" in attrs:
        token = attrs["_mask_token"]
    elif isinstance(attrs.get("_special_tokens_map"), dict):
        token = attrs["_special_tokens_map"].get("mask_token")
    elif isinstance(attrs.get("init_kwargs"), dict) and "mask_token" in attrs["init_kwargs"]:
        token = attrs["init_kwargs"]["mask_token"]
    else:
        raise CheckpointError(
            f"{file}: cannot tell whether the pickled tokenizer "
            f"({tokenizer.qualname}) has a mask token; pass mask_index=... "
            f"(--mask-index)"
        )
    if token is None:
        return {MASK_SOURCE_KEY: MASK_APPENDED}
    text = _token_text(token)
    mask_id = _token_id(attrs, text) if text is not None else None
    if mask_id is None:
        raise CheckpointError(
            f"{file}: the pickled tokenizer ({tokenizer.qualname}) has the mask "
            f"token {text!r} but no id for it that this loader can read; pass "
            f"mask_index=... (--mask-index)"
        )
    return {"mask_index": mask_id, MASK_SOURCE_KEY: MASK_FROM_TOKENIZER}


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
        table = mapping(attrs.get(name)) or {}
        if isinstance(table.get(text), int):
            return table[text]
    for name in ("_added_tokens_decoder", "added_tokens_decoder"):
        for index, token in (mapping(attrs.get(name)) or {}).items():
            if isinstance(index, int) and _token_text(token) == text:
                return index
    fast = attrs.get("_tokenizer")
    if isinstance(fast, inert_pickle.InertRecord) and isinstance(fast.state, (bytes, str)):
        found = _fast_tokenizer_id(fast.state, text)
        if found is not None:
            return found
    for value in attrs.values():
        vocab = mapping(value)
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
