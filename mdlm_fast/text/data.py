"""Text data for training: a deterministic train/validation split, tokenization, fixed-length windows.

Split. The validation split is the *last* ``val_fraction`` (default 5%) of the file's characters,
as one contiguous block starting at a paragraph boundary (the first blank line at or after the
cut point; failing that, a line boundary); the training split is everything before it. Because
the two are contiguous blocks, no window of one can overlap the other. For
``shakespeare.txt`` (38 works in a fixed order) the validation block is the last scenes of
*The Two Gentlemen of Verona* and all of *The Winter's Tale* (about 225k characters, 68k
tokens with the embedded tokenizer).

Documents. Each split is cut into documents at Project-Gutenberg-style headings -- two or more
blank lines, a title line, an optional blank line and a ``by AUTHOR`` line (:data:`DOC_SEPARATOR`) -- and a
text without such headings is one document. Each document is tokenized on its own and followed
by the tokenizer's end-of-text id (if it has one), and the documents are concatenated into one
token stream per split.

Windows. Training batches are random contiguous windows of the training stream, drawn from a
generator seeded by ``(seed, step)`` -- so a batch depends on nothing but the seed and the step
number, which makes resumed runs exact. Validation uses the fixed non-overlapping windows that
tile the validation stream from its start (the remainder shorter than a window is dropped).

Shipped text. ``embedded:heldout`` is the validation split of ``shakespeare.txt`` (the rule above)
that the embedded models were validated on, shipped whole in ``mdlm_fast/assets/data/``: read
as a text, all of it is held out (validation fraction 1). ``embedded:sample`` is 100k characters
of the training split spanning a play boundary, for quick training runs and tests. Any other
name is a path; the full corpus is passed as one for real training.

Cache. Token streams are cached as ``tokens-<key>.npz`` in a cache directory (the training run
directory by default); the key hashes the text's sha256, the tokenizer's fingerprint, the split
fraction and the document rule, so a different tokenizer or file never reuses a stale cache.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mdlm_fast.models.embedded import PREFIX, TEXT, EmbeddedNameError, embedded_path, shipped, specs
from mdlm_fast.text.tokenizer import load_tokenizer
from mdlm_fast.util.atomic import atomic_file

__all__ = [
    "DEFAULT_VAL_FRACTION",
    "EMBEDDED_TEXTS",
    "resolve_text",
    "held_out_fraction",
    "DOC_SEPARATOR",
    "Corpus",
    "read_text",
    "split_train_val",
    "split_documents",
    "load_corpus",
    "derive_seed",
    "file_sha256",
]

DEFAULT_VAL_FRACTION = 0.05
#: A document starts after 2+ blank lines followed by "TITLE\n\nby AUTHOR\n" (Gutenberg style;
#: the blank line between title and author is optional, as in The Sonnets' heading).
DOC_SEPARATOR = r"\n{3,}(?=[^\n]+\n\n?by [^\n]+\n)"
_CACHE_FORMAT = 1
#: Texts shipped with the package: name -> file.
EMBEDDED_TEXTS = {spec: shipped(TEXT, spec[len(PREFIX) :]) for spec in specs(TEXT)}


def resolve_text(spec: str | os.PathLike) -> Path:
    """The file behind a text spec: an ``embedded:`` name (:data:`EMBEDDED_TEXTS`) or a path."""
    try:
        embedded = embedded_path(spec, TEXT)
    except EmbeddedNameError as e:
        raise FileNotFoundError(str(e)) from None
    return Path(spec) if embedded is None else embedded


def held_out_fraction(spec: str | os.PathLike, default: float = DEFAULT_VAL_FRACTION) -> float:
    """The validation fraction that makes ``spec``'s validation split the held-out text: all of
    ``embedded:heldout`` (it is that split already), else ``default`` of the file."""
    return 1.0 if str(spec) == "embedded:heldout" else default


def read_text(path: str | os.PathLike) -> str:
    """The file (or ``embedded:`` text) as UTF-8 text (a clear error if it is missing or not UTF-8)."""
    path = resolve_text(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such text file: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from None


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_train_val(text: str, val_fraction: float = DEFAULT_VAL_FRACTION) -> tuple[str, str]:
    """``(train, val)``: val is the last ``val_fraction`` of ``text`` as one contiguous block.

    The cut moves forward to the first blank line (else newline) at or after
    ``len(text) * (1 - val_fraction)``; ``train + val`` loses only the separating newlines.
    ``val_fraction = 0`` gives an empty validation split, ``1`` an empty training split (the
    text is held-out text already, as ``embedded:heldout`` is).
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction!r}")
    if val_fraction == 0.0 or not text:
        return text, ""
    if val_fraction == 1.0:
        return "", text
    target = int(len(text) * (1.0 - val_fraction))
    cut = text.find("\n\n", target)
    if cut < 0:
        cut = text.find("\n", target)
    if cut < 0:
        cut = target
    train = text[:cut]
    val = text[cut:].lstrip("\n")
    return train, val


def split_documents(text: str, separator: str = DOC_SEPARATOR) -> list[str]:
    """Documents of ``text`` (cut at ``separator``), stripped of surrounding newlines, non-empty."""
    docs = [d.strip("\n") for d in re.split(separator, text)]
    return [d for d in docs if d]


def derive_seed(seed: int, purpose: str, step: int = 0) -> int:
    """A 63-bit seed that is a pure function of ``(seed, purpose, step)`` (same on every machine)."""
    digest = hashlib.sha256(f"mdlm_fast:{int(seed)}:{purpose}:{int(step)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class Corpus:
    """Token streams of a text file's two splits (int64 CPU tensors) and where they came from."""

    train: torch.Tensor
    val: torch.Tensor
    data_path: str
    data_sha256: str
    tokenizer_name: str
    tokenizer_fingerprint: str
    val_fraction: float
    n_train_docs: int
    n_val_docs: int

    def train_batch(self, step: int, batch_size: int, length: int, seed: int) -> torch.Tensor:
        """``[batch_size, length]`` random contiguous windows of the training stream.

        A pure function of ``(seed, step)`` (and the data), so a resumed run sees the same data.
        """
        n = self.train.numel()
        if n < length:
            raise ValueError(
                f"the training split of {self.data_path} has {n} tokens, fewer than one window of {length}"
            )
        gen = torch.Generator().manual_seed(derive_seed(seed, "data", step))
        starts = torch.randint(0, n - length + 1, (batch_size,), generator=gen)
        return self.train[starts[:, None] + torch.arange(length)]

    def val_windows(self, length: int) -> torch.Tensor:
        """``[N, length]`` non-overlapping windows tiling the validation stream from its start."""
        n = self.val.numel() // length
        if n == 0:
            raise ValueError(
                f"the validation split of {self.data_path} has {self.val.numel()} "
                f"tokens, fewer than one window of {length}"
            )
        return self.val[: n * length].view(n, length)


def load_corpus(
    data_path: str | os.PathLike,
    tokenizer,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    cache_dir: str | os.PathLike | None = None,
) -> Corpus:
    """Split, tokenize (cached in ``cache_dir`` when given) and return the :class:`Corpus`.

    ``tokenizer`` is a :class:`mdlm_fast.text.tokenizer.TextTokenizer` (or a spec for
    :func:`mdlm_fast.text.tokenizer.load_tokenizer`).
    """

    tokenizer = load_tokenizer(tokenizer)
    data_path = resolve_text(data_path)
    if not data_path.is_file():
        raise FileNotFoundError(f"no such text file: {data_path}")
    sha = file_sha256(data_path)
    key = hashlib.sha256(
        f"{_CACHE_FORMAT}|{sha}|{tokenizer.fingerprint}|{val_fraction!r}|{DOC_SEPARATOR}".encode()
    ).hexdigest()[:16]
    cache = Path(cache_dir) / f"tokens-{key}.npz" if cache_dir is not None else None
    arrays = None
    if cache is not None and cache.is_file():
        try:
            with np.load(cache) as z:
                arrays = {k: z[k] for k in ("train", "val", "docs")}
        except Exception:  # a damaged cache is rebuilt, not fatal
            arrays = None
    if arrays is None:
        train_text, val_text = split_train_val(read_text(data_path), val_fraction)
        train, n_train = _tokenize_stream(train_text, tokenizer, data_path)
        val, n_val = _tokenize_stream(val_text, tokenizer, data_path)
        arrays = {"train": train, "val": val, "docs": np.array([n_train, n_val], dtype=np.int64)}
        if cache is not None:
            with atomic_file(cache, "wb") as f:
                np.savez(f, **arrays)
    return Corpus(
        train=torch.from_numpy(arrays["train"].astype(np.int64)),
        val=torch.from_numpy(arrays["val"].astype(np.int64)),
        data_path=str(data_path),
        data_sha256=sha,
        tokenizer_name=tokenizer.name,
        tokenizer_fingerprint=tokenizer.fingerprint,
        val_fraction=float(val_fraction),
        n_train_docs=int(arrays["docs"][0]),
        n_val_docs=int(arrays["docs"][1]),
    )


def _tokenize_stream(text: str, tokenizer, data_path: Path) -> tuple[np.ndarray, int]:
    docs = split_documents(text)
    eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    ids: list[int] = []
    for doc_ids in tokenizer.encode_batch(docs):
        ids.extend(doc_ids)
        ids.extend(eos)
    out = np.asarray(ids, dtype=np.int32)
    if tokenizer.mask_id is not None and out.size and (out == tokenizer.mask_id).any():
        raise ValueError(f"{data_path} contains the mask token's text: it would be read as mask id {tokenizer.mask_id}")
    return out, len(docs)
