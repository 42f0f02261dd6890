"""Training the byte-level BPE tokenizer the embedded models use (``mdlm-fast tokenizer``)."""

from __future__ import annotations

import os

from mdlm_fast.text.data import DEFAULT_VAL_FRACTION, read_text, split_documents, split_train_val
from mdlm_fast.text.tokenizer import EOS_TOKEN, MASK_TOKEN, TextTokenizer, TokenizerError
from mdlm_fast.util.validate import integer


def train_bpe_tokenizer(
    text_path: str | os.PathLike,
    vocab_size: int = 8192,
    out_path: str | os.PathLike | None = None,
    *,
    val_fraction: float | None = None,
    min_frequency: int = 2,
) -> TextTokenizer:
    """Train a byte-level BPE on a UTF-8 text file; ``[MASK]`` is appended as the last id.

    ``vocab_size`` counts the 256 byte symbols, the merges and ``<|endoftext|>`` (id 0); the
    result has ``vocab_size + 1`` ids with ``[MASK]`` last (fewer merges, and so a smaller
    vocabulary, if the text runs out of pairs seen ``min_frequency`` times). Only the training
    part of the text is used: the split of :func:`mdlm_fast.text.data.split_train_val` with
    ``val_fraction`` (default: the data module's 5%), so held-out text never shapes the merges.
    Deterministic: the same file and arguments give the same tokenizer. Written atomically to
    ``out_path`` if given.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # optional dependency

    integer(
        "vocab_size (256 bytes, <|endoftext|> and at least one merge)", vocab_size, minimum=258, error=TokenizerError
    )
    text = read_text(text_path)
    train_text, _ = split_train_val(text, DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction)
    docs = split_documents(train_text)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    tok.add_special_tokens([MASK_TOKEN])
    wrapped = TextTokenizer(tok, str(out_path) if out_path is not None else "trained", kind="tokenizers")
    assert wrapped.mask_id == wrapped.vocab_size - 1 and wrapped.eos_id == 0, wrapped
    if out_path is not None:
        wrapped.save(out_path)
    return wrapped
