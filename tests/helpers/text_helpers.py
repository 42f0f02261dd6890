"""Text-side stand-ins with known answers: a judge with fixed probabilities, an id tokenizer."""

import torch

from mdlm_fast.analysis.judge import CausalLM, CausalLMConfig


class FixedJudge(CausalLM):
    """A judge whose next-token distribution is the same fixed categorical at every position."""

    def __init__(self, probs):
        super().__init__(CausalLMConfig(vocab_size=len(probs), hidden_dim=8, n_heads=2, n_blocks=1, max_length=64))
        self.log_probs = torch.log(torch.tensor(probs))

    def forward(self, ids):
        return self.log_probs.expand(*ids.shape, -1).clone()


class IdTokenizer:
    """Text "3 1 2" <-> ids [3, 1, 2]; decoding drops the mask id."""

    name, eos_id = "ids", 0

    def encode(self, text):
        return [int(t) for t in text.split()]

    def decode(self, ids, mask_id=None):
        return " ".join(str(i) for i in ids if i != mask_id)
