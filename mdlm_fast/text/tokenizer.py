"""Tokenizers: the embedded byte-level BPE, any ``tokenizer.json``, or a local Hugging Face directory.

The embedded tokenizer (``mdlm_fast/assets/tokenizer.json``) is a byte-level BPE trained with the
``tokenizers`` library by :func:`mdlm_fast.training.bpe.train_bpe_tokenizer` (``mdlm-fast tokenizer``). Its id layout:

* id 0: ``<|endoftext|>`` -- the end-of-text token put between documents (and, for the judge, a
  beginning-of-text context);
* ids 1 .. vocab_size-1: the 256 byte symbols and the learned merges (``vocab_size`` = 8192 by
  default, counting ``<|endoftext|>``);
* the last id, ``vocab_size`` (8192): ``[MASK]``, appended after training.

So the total vocabulary is ``vocab_size + 1`` = 8193 and ``mask_id = total - 1``, the same layout as
MDLM's GPT-2 setup (mask 50257 appended to GPT-2's 50257 ids).

:class:`TextTokenizer` wraps either backend (``tokenizers.Tokenizer`` or a ``transformers``
tokenizer) behind a small interface. A tokenizer without a mask token (GPT-2) has
``mask_id = None``: the model config's ``mask_index`` is authoritative, and
:func:`check_compatible` says whether a tokenizer and a model fit together.

``decode`` drops mask ids (or renders each as ``mask_text``) and keeps ``<|endoftext|>`` as text.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from mdlm_fast.models.embedded import TOKENIZER, EmbeddedNameError, embedded_path, shipped
from mdlm_fast.util import atomic

__all__ = [
    "TextTokenizer",
    "TokenizerError",
    "load_tokenizer",
    "check_compatible",
    "EOS_TOKEN",
    "MASK_TOKEN",
    "EMBEDDED_TOKENIZER",
]

EOS_TOKEN = "<|endoftext|>"
MASK_TOKEN = "[MASK]"
#: Where the embedded tokenizer lives inside the package.
EMBEDDED_TOKENIZER = shipped(TOKENIZER, "tokenizer")


class TokenizerError(ValueError):
    """A tokenizer cannot be loaded or does not fit a model (one-line message)."""


# --------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------


class TextTokenizer:
    """A tokenizer as the samplers, trainers and judges see it.

    Attributes:
        name: where it came from ("embedded", a file or a directory path).
        vocab_size: number of ids the tokenizer can produce or decode (added tokens included).
        mask_id: id of the mask token, or None if the tokenizer has none (e.g. GPT-2).
        eos_id: id of the end-of-text token, or None.
        fingerprint: sha256 of the tokenizer's serialized form (identifies it in caches).
    """

    def __init__(self, backend: Any, name: str, *, kind: str) -> None:
        if kind not in ("tokenizers", "transformers"):
            raise ValueError(f"unknown tokenizer backend kind {kind!r}")
        self._tok = backend
        self._kind = kind
        self.name = str(name)
        if kind == "tokenizers":
            self.vocab_size = int(backend.get_vocab_size(with_added_tokens=True))
            self.mask_id = backend.token_to_id(MASK_TOKEN)
            self.eos_id = backend.token_to_id(EOS_TOKEN)
            serialized = backend.to_str()
        else:
            self.vocab_size = int(len(backend))
            self.mask_id = getattr(backend, "mask_token_id", None)
            self.eos_id = getattr(backend, "eos_token_id", None)
            inner = getattr(backend, "backend_tokenizer", None)
            serialized = (
                inner.to_str()
                if inner is not None
                else f"{type(backend).__name__}:{self.name}:{sorted(backend.get_vocab().items())}"
            )
        self.fingerprint = hashlib.sha256(serialized.encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return (
            f"TextTokenizer(name={self.name!r}, vocab_size={self.vocab_size}, "
            f"mask_id={self.mask_id}, eos_id={self.eos_id})"
        )

    @property
    def backend(self) -> Any:
        """The wrapped ``tokenizers.Tokenizer`` or ``transformers`` tokenizer."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added; literal special-token text is matched)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if self._kind == "tokenizers":
            return list(self._tok.encode(text, add_special_tokens=False).ids)
        return list(self._tok.encode(text, add_special_tokens=False))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` of each text (in parallel for the ``tokenizers`` backend)."""
        if self._kind == "tokenizers":
            return [list(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int], *, mask_id: int | None = None, mask_text: str = "") -> str:
        """Text of ``ids``; mask ids (``self.mask_id`` and ``mask_id``) become ``mask_text``.

        ``mask_id`` names the model's mask index when the tokenizer has none (GPT-2 + mdlm-owt:
        50257, one past the tokenizer). Any other id outside ``[0, vocab_size)`` is an error.
        """
        masks = {m for m in (self.mask_id, mask_id) if m is not None}
        ids = [int(i) for i in ids]
        bad = [i for i in ids if i not in masks and not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"cannot decode id {bad[0]}: outside the tokenizer's vocabulary "
                f"[0, {self.vocab_size}) and not the mask id"
            )
        if not mask_text:
            return self._decode([i for i in ids if i not in masks])
        pieces: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in masks:
                pieces.append(self._decode(run))
                pieces.append(mask_text)
                run = []
            else:
                run.append(i)
        pieces.append(self._decode(run))
        return "".join(pieces)

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        if self._kind == "tokenizers":
            return self._tok.decode(ids, skip_special_tokens=False)
        return self._tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (``tokenizers`` backend) atomically; returns the path."""
        if self._kind != "tokenizers":
            raise TokenizerError(
                f"tokenizer {self.name} is a transformers tokenizer; "
                f"only tokenizers.Tokenizer backends can be saved as one file"
            )
        return atomic.write_text(path, self._tok.to_str(pretty=True))


def check_compatible(tokenizer: TextTokenizer, model_vocab_size: int, mask_index: int) -> None:
    """Raise a one-line :class:`TokenizerError` if ``tokenizer`` cannot drive such a model.

    Rules: ``mask_index`` must lie in the model's vocabulary; every tokenizer id must be a model
    id (tokenizer vocabulary not larger than the model's); a tokenizer with its own mask token
    must put it at ``mask_index``; one without must not have a real token at ``mask_index``.
    A model vocabulary larger than the tokenizer's (padding, an appended mask) is fine.
    """
    name = tokenizer.name
    if not 0 <= mask_index < model_vocab_size:
        raise TokenizerError(f"model mask_index {mask_index} is outside its vocabulary [0, {model_vocab_size})")
    if tokenizer.vocab_size > model_vocab_size:
        raise TokenizerError(
            f"tokenizer {name} has {tokenizer.vocab_size} ids but the model's vocabulary has only {model_vocab_size}"
        )
    if tokenizer.mask_id is not None:
        if tokenizer.mask_id != mask_index:
            raise TokenizerError(
                f"tokenizer {name} has its mask token at id {tokenizer.mask_id} "
                f"but the model's mask_index is {mask_index}"
            )
    elif mask_index < tokenizer.vocab_size:
        raise TokenizerError(
            f"the model's mask_index {mask_index} is a real token of tokenizer "
            f"{name} ({tokenizer.vocab_size} ids, no mask token)"
        )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_tokenizer(spec: "str | os.PathLike | TextTokenizer | None" = "embedded") -> TextTokenizer:
    """Load a tokenizer from ``"embedded"``, a ``tokenizer.json`` file, or a local HF directory.

    A directory is loaded with ``transformers.AutoTokenizer.from_pretrained(dir,
    local_files_only=True)``; without ``transformers`` installed, a directory holding a
    ``tokenizer.json`` is still read with ``tokenizers``. Raises :class:`TokenizerError`.
    """
    if isinstance(spec, TextTokenizer):
        return spec
    if spec is None:
        spec = "embedded"
    try:
        embedded = embedded_path(spec, TOKENIZER)
    except EmbeddedNameError as e:
        raise TokenizerError(str(e)) from None
    if embedded is not None:
        if not EMBEDDED_TOKENIZER.is_file():
            raise TokenizerError(
                f"the embedded tokenizer is missing from this build ({EMBEDDED_TOKENIZER}); "
                f"make it with: mdlm-fast tokenizer --data shakespeare.txt "
                f"--out {EMBEDDED_TOKENIZER}"
            )
        return _from_json(EMBEDDED_TOKENIZER, "embedded")
    path = Path(spec).expanduser()
    if path.is_file():
        return _from_json(path, str(spec))
    if path.is_dir():
        return _from_dir(path, str(spec))
    raise TokenizerError(
        f"no tokenizer at {spec}: expected 'embedded', a tokenizer.json file "
        f"or a local Hugging Face tokenizer directory"
    )


def _from_json(path: Path, name: str) -> TextTokenizer:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises its own Exception type on bad JSON
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TokenizerError(f"cannot read tokenizer file {path}: {msg}") from None
    return TextTokenizer(tok, name, kind="tokenizers")


def _from_dir(path: Path, name: str) -> TextTokenizer:
    try:
        import transformers  # noqa: F401  (optional dependency)
    except ImportError:
        if (path / "tokenizer.json").is_file():
            return _from_json(path / "tokenizer.json", name)
        raise TokenizerError(
            f"loading the tokenizer directory {path} needs the transformers "
            f"package (pip install transformers), or put a tokenizer.json "
            f"there"
        ) from None
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TokenizerError(f"cannot load a tokenizer from {path}: {msg}") from None
    return TextTokenizer(tok, name, kind="transformers")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
