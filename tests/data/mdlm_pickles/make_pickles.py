"""Write the pickles of real MDLM-side objects that test_checkpoint_pickles.py reads.

Run with a Python that has transformers and omegaconf (not dependencies of mdlm_fast), e.g. in a
scratch venv with ``pip install transformers==4.38.2 omegaconf==2.3.0`` (MDLM's pins) and again
with current releases:

    python tests/data/mdlm_pickles/make_pickles.py tests/data/mdlm_pickles

It writes ``transformers-<version>.pkl``: pickle protocol 2 (torch.save's) of a dict holding
MDLM's text8 tokenizer, a BERT tokenizer (slow and fast), a GPT-2 tokenizer with the pad token MDLM
adds, an OmegaConf config shaped like MDLM's, and, as plain data, what each tokenizer itself says
its mask token id is and what the config holds.
"""

import os
import pickle
import sys
import tempfile

import omegaconf
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers


class Text8Tokenizer(transformers.PreTrainedTokenizer):
    """MDLM's (dataloader.py), unchanged apart from layout."""

    def __init__(
        self,
        bos_token="[BOS]",
        eos_token="[EOS]",
        sep_token="[SEP]",
        cls_token="[CLS]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        unk_token="[UNK]",
        **kwargs,
    ):
        self.characters = list("abcdefghijklmnopqrstuvwxyz ")
        self._vocab_str_to_int = {
            "[CLS]": 0,
            "[SEP]": 1,
            "[BOS]": 2,
            "[EOS]": 3,
            "[MASK]": 4,
            "[PAD]": 5,
            "[RESERVED]": 6,
            "[UNK]": 7,
            **{ch: i + 8 for i, ch in enumerate(self.characters)},
        }
        self._vocab_int_to_str = {v: k for k, v in self._vocab_str_to_int.items()}
        super().__init__(
            bos_token=bos_token,
            eos_token=eos_token,
            sep_token=sep_token,
            cls_token=cls_token,
            pad_token=pad_token,
            mask_token=mask_token,
            unk_token=unk_token,
            **kwargs,
        )

    @property
    def vocab_size(self):
        return len(self._vocab_str_to_int)

    def _tokenize(self, text, **kwargs):
        return list(text.lower())

    def _convert_token_to_id(self, token):
        return self._vocab_str_to_int.get(token, self._vocab_str_to_int["[UNK]"])

    def _convert_id_to_token(self, index):
        return self._vocab_int_to_str[index]

    def convert_tokens_to_string(self, tokens):
        return "".join(tokens)

    def get_vocab(self):
        return self._vocab_str_to_int


def main(out_dir):
    work = tempfile.mkdtemp()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(10)] + ["[MASK]", "the", "cat"]
    vocab = os.path.join(work, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(words) + "\n")
    backend = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "<|endoftext|>": 2}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt2 = transformers.GPT2TokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    gpt2.add_special_tokens({"pad_token": "[PAD]"})  # as MDLM's get_tokenizer does
    tokenizers = {
        "text8": Text8Tokenizer(),
        "bert_slow": transformers.BertTokenizer(vocab),
        "bert_fast": transformers.BertTokenizerFast(vocab_file=vocab),
        "gpt2_fast": gpt2,
    }
    config = omegaconf.OmegaConf.create(
        {
            "backbone": "dit",
            "time_conditioning": True,
            "model": {"hidden_size": 32, "cond_dim": 16, "length": 16, "n_blocks": 2, "n_heads": 4},
            "loader": {"global_batch_size": 512, "eval_global_batch_size": "${.global_batch_size}"},
        }
    )
    expected = {name: (t.mask_token_id if t.mask_token is not None else None) for name, t in tokenizers.items()}
    payload = {
        "tokenizers": tokenizers,
        "config": config,
        "expected_mask_ids": expected,
        "expected_config": omegaconf.OmegaConf.to_container(config, resolve=False),
        "versions": {"transformers": transformers.__version__, "omegaconf": omegaconf.__version__},
    }
    path = os.path.join(out_dir, f"transformers-{transformers.__version__}.pkl")
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=2)
    print(path, expected)


if __name__ == "__main__":
    main(sys.argv[1])
