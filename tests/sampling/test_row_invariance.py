"""On one device a row's tokens do not depend on the batch around it: not on the batch size, not
on the other rows' contents, not on the thread count -- for both samplers on the embedded models
(the cross-device guarantee of docs/status.md, "Cross-device behaviour")."""

import pytest
import torch

import mdlm_fast as mf

STEPS, LENGTH, SEED = 8, 24, 21


@pytest.fixture(scope="module")
def models():
    return [mf.load_denoiser("embedded:heavy"), mf.load_denoiser("embedded:light")]


def _prefixes(batch, first_row, others_seed):
    g = torch.Generator().manual_seed(others_seed)
    vocab = mf.load_tokenizer("embedded").vocab_size - 1  # never the mask id
    rows = torch.randint(0, vocab, (batch, 5), generator=g)
    rows[0] = first_row
    return rows


def _sample(models, sampler, batch, prefix, threads=1):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return mf.sample(
            models,
            steps=STEPS,
            batch_size=batch,
            length=LENGTH,
            schedule="sandwich:0.5",
            sampler=sampler,
            seed=SEED,
            prefix=prefix,
        ).tokens
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("sampler", ["mdlm", "fast"])
def test_a_rows_tokens_ignore_the_rest_of_the_batch(models, sampler):
    first = torch.tensor([3, 1, 4, 1, 5])
    base = _sample(models, sampler, 3, _prefixes(3, first, 0))
    # batch size: the same first rows, more rows after them
    bigger = _sample(models, sampler, 5, torch.cat([_prefixes(3, first, 0), _prefixes(2, first, 9)]))
    assert torch.equal(bigger[:3], base)
    # composition: row 0 fixed, the other rows' prefixes changed
    other = _sample(models, sampler, 3, _prefixes(3, first, 1))
    assert torch.equal(other[0], base[0])
    # thread count
    assert torch.equal(_sample(models, sampler, 3, _prefixes(3, first, 0), threads=2), base)
