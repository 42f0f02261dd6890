"""Lightning ``.ckpt`` files read without executing them: payloads, MDLM's layout, the mask id.

MDLM's ``.ckpt`` holds, besides tensors, an OmegaConf ``DictConfig`` and a pickled Hugging Face
tokenizer (``hyper_parameters = {"config": ..., "tokenizer": ...}``, from ``save_hyperparameters``).
Neither omegaconf nor transformers is a dependency, so stand-ins defined here are pickled with the
same stored state as the real classes (``__getstate__`` dicts holding ``_content`` / ``_val`` for
the config, ``_mask_token``, ``_added_tokens_*`` and the vocabulary for the tokenizer). Their
``__setstate__`` writes a marker file, so a load that ran any of them would be seen.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from pathlib import Path

import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.models import inert_pickle
from mdlm_fast.models.checkpoint import CheckpointError, load_denoiser, save_denoiser
from mdlm_fast.models.dit import subs_log_probs
from mdlm_fast.schedules.noise import LogLinearNoise, sampling_dt, sampling_timesteps
from tests.helpers.model_reference import load_test_model
from tests.helpers.paths import REPO_ROOT
from tests.helpers.stats_helpers import chi_square_p_value

ref = load_test_model("_mdlm_test_model_reference_pickles")
# text8: 27 characters after 8 special tokens ([CLS] [SEP] [BOS] [EOS] [MASK] [PAD] [RESERVED] [UNK]).
TEXT8 = {**ref.TINY, "vocab_size": 35}
TEXT8_MASK = 4
MARKER_ENV = "MDLM_TEST_UNPICKLE_MARKER"


def _mark(what: str) -> None:
    marker = os.environ.get(MARKER_ENV)
    if marker:
        with open(marker, "a") as f:
            f.write(what + "\n")


# --------------------------------------------------------------------------------------------
# Stand-ins with the real classes' pickled state
# --------------------------------------------------------------------------------------------


class ContainerMetadata:
    def __init__(self, key=None):
        self.ref_type, self.object_type, self.optional, self.key = object, dict, True, key
        self.flags, self.key_type, self.element_type = {}, object, object


class AnyNode:
    """omegaconf.nodes.AnyNode: a leaf holding ``_val``."""

    def __init__(self, value, parent=None):
        self._val, self._parent, self._metadata = value, parent, ContainerMetadata()

    def __setstate__(self, state):
        _mark("AnyNode.__setstate__")
        self.__dict__.update(state)


class DictConfig:
    """omegaconf.DictConfig: ``__getstate__`` returns ``_metadata``, ``_parent``, ``_content``."""

    def __init__(self, content, parent=None):
        self._metadata, self._parent = ContainerMetadata(), parent
        self._content = {
            k: DictConfig(v, self) if isinstance(v, dict) else AnyNode(v, self) for k, v in content.items()
        }
        self._flags_cache = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_flags_cache", None)
        return state

    def get(self, key, default=None):  # the mapping interface a trusted load reads
        node = self._content.get(key, default)
        return node._val if isinstance(node, AnyNode) else node

    def __setstate__(self, state):
        _mark("DictConfig.__setstate__")
        self.__dict__.update(state)


class AddedToken:
    """tokenizers.AddedToken: pickled as its fields."""

    def __init__(self, content, special=True):
        self.content, self.special = content, special
        self.single_word = self.lstrip = self.rstrip = self.normalized = False

    def __getstate__(self):
        return dict(self.__dict__)

    def __setstate__(self, state):
        _mark("AddedToken.__setstate__")
        self.__dict__.update(state)


class Text8Tokenizer:
    """MDLM's text8 tokenizer (a transformers.PreTrainedTokenizer) as its ``__dict__`` pickles."""

    def __init__(self, added_tables=True, mask_as_added_token=True):
        chars = list("abcdefghijklmnopqrstuvwxyz ")
        specials = ["[CLS]", "[SEP]", "[BOS]", "[EOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]"]
        self._vocab_str_to_int = {**{t: i for i, t in enumerate(specials)}, **{ch: i + 8 for i, ch in enumerate(chars)}}
        self._vocab_int_to_str = {v: k for k, v in self._vocab_str_to_int.items()}
        for name in ("bos", "eos", "sep", "cls", "pad", "mask", "unk"):
            text = f"[{name.upper()}]"
            setattr(self, f"_{name}_token", AddedToken(text) if mask_as_added_token else text)
        self._additional_special_tokens = []
        if added_tables:
            self._added_tokens_decoder = {self._vocab_str_to_int[t]: AddedToken(t) for t in specials}
            self._added_tokens_encoder = {t: self._vocab_str_to_int[t] for t in specials}
        self.init_kwargs = {"mask_token": "[MASK]"}
        self.model_max_length = 1024

    # transformers' properties, which a trusted load reads
    @property
    def mask_token(self):
        return None if self._mask_token is None else str(getattr(self._mask_token, "content", self._mask_token))

    @property
    def mask_token_id(self):
        return self._vocab_str_to_int[self.mask_token]

    def __setstate__(self, state):
        _mark("Text8Tokenizer.__setstate__")
        self.__dict__.update(state)


class SerializedTokenizer:
    """tokenizers.Tokenizer, the backend of a fast HF tokenizer: pickled as its JSON."""

    def __init__(self, data):
        self.data = data

    def __reduce__(self):
        return (SerializedTokenizer._new, (), json.dumps(self.data).encode())

    @staticmethod
    def _new():
        return SerializedTokenizer.__new__(SerializedTokenizer)

    def __setstate__(self, state):
        _mark("SerializedTokenizer.__setstate__")
        self.data = json.loads(state)


class BertTokenizerFast:
    """A fast tokenizer whose mask id lives only in its serialized backend."""

    def __init__(self, mask_id):
        self._mask_token = AddedToken("[MASK]")
        self._tokenizer = SerializedTokenizer(
            {
                "added_tokens": [{"id": 0, "content": "[PAD]"}, {"id": mask_id, "content": "[MASK]"}],
                "model": {"vocab": {"[PAD]": 0, "a": 1}},
            }
        )

    def __setstate__(self, state):
        _mark("BertTokenizerFast.__setstate__")
        self.__dict__.update(state)


class GPT2TokenizerFast:
    """No mask token: MDLM appends one after the vocabulary."""

    def __init__(self):
        self._mask_token = None
        self._eos_token = AddedToken("<|endoftext|>")

    def __setstate__(self, state):
        _mark("GPT2TokenizerFast.__setstate__")
        self.__dict__.update(state)


class CreatesFile:
    """A payload: unpickling it creates a file, three ways a pickle can call code."""

    def __init__(self, path, how):
        self.path, self.how = str(path), how

    def __reduce__(self):
        if self.how == "open":
            return (open, (self.path, "w"))
        if self.how == "method":  # pickled as getattr(Path, "touch"), then called
            return (pathlib.Path(self.path).touch, ())
        return (os.system, (f"touch {self.path}",))


def mdlm_ckpt(file: Path, state: dict, tokenizer, *, shadow=None, extra=None, model_cfg=None) -> Path:
    """A checkpoint laid out as MDLM's Lightning module writes one."""
    cfg = TEXT8 if model_cfg is None else model_cfg
    config = DictConfig(
        {
            "mode": "train",
            "backbone": "dit",
            "parameterization": "subs",
            "time_conditioning": False,
            "model": {
                "name": "tiny",
                "type": "ddit",
                "hidden_size": cfg["hidden_dim"],
                "cond_dim": cfg["cond_dim"],
                "length": cfg["model_length"],
                "n_blocks": cfg["n_blocks"],
                "n_heads": cfg["n_heads"],
                "scale_by_sigma": True,
                "dropout": 0.1,
            },
            "loader": {"num_workers": "${eval:\"len(__import__('os').sched_getaffinity(0))\"}"},
            "training": {"ema": 0.9999},
        }
    )
    ckpt = {
        "epoch": 0,
        "global_step": 10,
        "pytorch-lightning_version": "2.2.1",
        "state_dict": {"backbone." + k: v for k, v in state.items()},
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 0}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val/nll'}": {"best_model_score": torch.tensor(3.5), "dirpath": "/checkpoints"}
        },
        "optimizer_states": [{"state": {0: {"step": torch.tensor(10.0)}}, "param_groups": [{"lr": 3e-4}]}],
        "lr_schedulers": [{"base_lrs": [3e-4]}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"config": config, "tokenizer": tokenizer},
    }
    if shadow is not None:
        ckpt["ema"] = {"decay": 0.9999, "num_updates": 10, "shadow_params": shadow}
    ckpt.update(extra or {})
    torch.save(ckpt, file)
    return file


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "executed.txt"
    monkeypatch.setenv(MARKER_ENV, str(path))
    return path


@pytest.fixture
def text8_state() -> dict:
    return ref.random_published_state(TEXT8, seed=31)


def assert_matches_reference(model, state: dict, cfg: dict = TEXT8):
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, cfg["vocab_size"], (2, 7), generator=gen)
    sigma = torch.rand(2, generator=gen)
    with torch.no_grad():
        out = model(x, sigma)
    expected = ref.reference_forward(state, {**cfg, "time_conditioning": False}, x, sigma)
    torch.testing.assert_close(out.double(), expected, atol=2e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Payloads
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["open", "method", "system"])
def test_payload_outside_the_weights_is_not_run_and_the_weights_load(tmp_path, text8_state, how):
    target = tmp_path / "created-by-payload"
    file = mdlm_ckpt(tmp_path / "evil.ckpt", text8_state, Text8Tokenizer(), extra={"payload": CreatesFile(target, how)})
    model = load_denoiser(file)
    assert not target.exists()
    assert_matches_reference(model, text8_state)


def test_payload_inside_the_state_dict_is_a_clear_error(tmp_path, text8_state):
    target = tmp_path / "created-by-payload"
    state = {**text8_state, "blocks.0.evil": CreatesFile(target, "open")}
    torch.save({"state_dict": {"backbone." + k: v for k, v in state.items()}}, tmp_path / "evil.ckpt")
    with pytest.raises(
        CheckpointError, match=r"non-tensor entries backbone\.blocks\.0\.evil \(objects of [a-z_]+\.open, "
    ):
        load_denoiser(tmp_path / "evil.ckpt", n_heads=TEXT8["n_heads"])
    assert not target.exists()


def test_a_payload_runs_only_when_trusted(tmp_path, text8_state):
    target = tmp_path / "created-by-payload"
    file = mdlm_ckpt(
        tmp_path / "evil.ckpt", text8_state, Text8Tokenizer(), extra={"payload": CreatesFile(target, "open")}
    )
    load_denoiser(file, trust_checkpoint=True)
    assert target.exists()  # so the default path's "not created" above is meaningful


def test_the_unpickler_records_calls_instead_of_making_them(tmp_path):
    torch.save({"p": CreatesFile(tmp_path / "x", "system"), "t": torch.arange(3)}, tmp_path / "f.pt")
    loaded = inert_pickle.load(tmp_path / "f.pt")
    record = loaded["p"]
    assert isinstance(record, inert_pickle.InertRecord) and record.qualname in ("posix.system", "nt.system")
    assert record.args == (f"touch {tmp_path / 'x'}",)
    assert torch.equal(loaded["t"], torch.arange(3)) and not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------
# MDLM's layout
# --------------------------------------------------------------------------------------------


def test_mdlm_layout_loads_without_running_anything(tmp_path, marker, text8_state):
    ema_state = ref.random_published_state(TEXT8, seed=32)
    shadow = [ema_state[k] for k in ref.published_shapes(**TEXT8)]
    file = mdlm_ckpt(tmp_path / "last.ckpt", text8_state, Text8Tokenizer(), shadow=shadow)
    model = load_denoiser(file)
    assert not marker.exists()
    assert model.config.model_length == TEXT8["model_length"] and model.config.n_heads == TEXT8["n_heads"]
    assert model.config.mask_index == TEXT8_MASK and model.config.mask_index_source == "tokenizer"
    assert_matches_reference(model, ema_state)
    assert_matches_reference(load_denoiser(file, ema=False), text8_state)


def test_trusted_load_runs_the_classes_and_reads_the_same(tmp_path, marker, text8_state):
    model = load_denoiser(mdlm_ckpt(tmp_path / "last.ckpt", text8_state, Text8Tokenizer()), trust_checkpoint=True)
    assert "Text8Tokenizer.__setstate__" in marker.read_text()
    assert (model.config.mask_index, model.config.mask_index_source) == (TEXT8_MASK, "tokenizer")
    assert_matches_reference(model, text8_state)


@pytest.mark.parametrize(
    "tokenizer,expected,source",
    [
        (Text8Tokenizer(), TEXT8_MASK, "tokenizer"),
        (Text8Tokenizer(added_tables=False), TEXT8_MASK, "tokenizer"),  # only the vocabulary knows it
        (Text8Tokenizer(mask_as_added_token=False), TEXT8_MASK, "tokenizer"),
        (BertTokenizerFast(mask_id=30), 30, "tokenizer"),
        (GPT2TokenizerFast(), TEXT8["vocab_size"] - 1, "appended"),
        (None, TEXT8["vocab_size"] - 1, "default"),
    ],
)
def test_mask_id_from_the_pickled_tokenizer(tmp_path, text8_state, tokenizer, expected, source):
    model = load_denoiser(mdlm_ckpt(tmp_path / "a.ckpt", text8_state, tokenizer))
    assert (model.config.mask_index, model.config.mask_index_source) == (expected, source)


def test_explicit_mask_index_wins_and_bad_ones_are_refused(tmp_path, text8_state):
    file = mdlm_ckpt(tmp_path / "a.ckpt", text8_state, Text8Tokenizer())
    model = load_denoiser(file, mask_index=7)
    assert (model.config.mask_index, model.config.mask_index_source) == (7, "argument")
    with pytest.raises(CheckpointError, match=r"mask_index=35 is not a token id of .*a.ckpt: its vocab_size is 35"):
        load_denoiser(file, mask_index=35)


def test_tokenizer_mask_without_a_readable_id_is_an_error(tmp_path, text8_state):
    tokenizer = GPT2TokenizerFast()
    tokenizer._mask_token = AddedToken("<mask>")  # a mask token no table of the tokenizer lists
    with pytest.raises(CheckpointError, match="mask token '<mask>' but no id.*mask_index"):
        load_denoiser(mdlm_ckpt(tmp_path / "a.ckpt", text8_state, tokenizer))
    assert load_denoiser(tmp_path / "a.ckpt", mask_index=3).config.mask_index == 3


def test_unknown_tokenizer_layout_is_an_error(tmp_path, text8_state):
    with pytest.raises(CheckpointError, match="cannot tell whether the pickled tokenizer"):
        load_denoiser(mdlm_ckpt(tmp_path / "a.ckpt", text8_state, AddedToken("not a tokenizer")))


def test_mask_id_from_an_hf_config(tmp_path, text8_state):
    directory = tmp_path / "hf"
    model = mf.DiT(ref.tiny_config(vocab_size=35, mask_index=TEXT8_MASK)).init_random_(1).eval()
    save_denoiser(model, directory)
    loaded = load_denoiser(directory)
    assert (loaded.config.mask_index, loaded.config.mask_index_source) == (TEXT8_MASK, "config")
    config = json.loads((directory / "config.json").read_text())
    del config["mask_index"]
    (directory / "config.json").write_text(json.dumps({**config, "mask_token_id": 6}))
    loaded = load_denoiser(directory)
    assert (loaded.config.mask_index, loaded.config.mask_index_source) == (6, "config")
    (directory / "config.json").write_text(json.dumps(config))
    loaded = load_denoiser(directory)
    assert (loaded.config.mask_index, loaded.config.mask_index_source) == (34, "default")
    assert load_denoiser("embedded:light").config.mask_index_source == "config"


# --------------------------------------------------------------------------------------------
# A text8-style checkpoint through the samplers
# --------------------------------------------------------------------------------------------


def mdlm_p_x0(logits: torch.Tensor, xt: torch.Tensor, mask_index: int) -> torch.Tensor:
    """MDLM's ``_subs_parameterization`` (diffusion.py), exponentiated, in float64."""
    logits = logits.double().clone()
    logits[:, :, mask_index] += -1000000.0
    logits = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    unmasked = xt != mask_index
    logits[unmasked] = -1000000.0
    logits[unmasked, xt[unmasked]] = 0
    return logits.exp()


def test_text8_p_x0_matches_mdlm(tmp_path, text8_state):
    model = load_denoiser(mdlm_ckpt(tmp_path / "a.ckpt", text8_state, Text8Tokenizer()))
    x = torch.full((3, 9), TEXT8_MASK)
    x[:, 0] = 34  # a real token (the old vocab_size - 1 rule would have called it the mask)
    x[1, 3] = 10
    with torch.no_grad():
        logits = model(x, torch.full((3,), 2.0))
    ours = subs_log_probs(logits, x, model.config.mask_index).double().exp()
    torch.testing.assert_close(ours, mdlm_p_x0(logits, x, TEXT8_MASK), atol=1e-6, rtol=1e-5)
    assert (ours[..., TEXT8_MASK] == 0).all() and (ours[:, 0, 34] == 1).all()


def _exact_one_position(model, steps: int) -> torch.Tensor:
    """MDLM's output distribution of a one-token sequence under its own p_x0 formula: each step
    reveals with probability 1 - mc(s)/mc(t) and draws from p_x0; noise removal takes the argmax."""
    noise = LogLinearNoise()
    ts, dt = sampling_timesteps(steps).tolist(), sampling_dt(steps)
    vocab = model.config.vocab_size
    x = torch.full((1, 1), TEXT8_MASK)
    out = torch.zeros(vocab, dtype=torch.float64)
    still_masked = 1.0
    with torch.no_grad():
        for i in range(steps):
            t, s = ts[i], ts[i] - dt
            reveal = 1 - noise.move_chance(s) / noise.move_chance(t)
            p = mdlm_p_x0(model(x, torch.full((1,), noise.sigma(t))), x, TEXT8_MASK)[0, 0]
            out += still_masked * reveal * p
            still_masked *= 1 - reveal
        last = mdlm_p_x0(model(x, torch.full((1,), noise.sigma(ts[-1]))), x, TEXT8_MASK)[0, 0]
    out[last.argmax()] += still_masked
    return out


@pytest.mark.parametrize("sampler", ["mdlm", "fast"])
def test_text8_checkpoint_through_the_samplers(tmp_path, text8_state, sampler):
    model = load_denoiser(mdlm_ckpt(tmp_path / "a.ckpt", text8_state, Text8Tokenizer()))
    steps, draws = 3, 6000
    result = mf.sample(model, steps=steps, batch_size=draws, length=1, sampler=sampler, seed=3)
    assert not (result.tokens == TEXT8_MASK).any()
    counts = torch.bincount(result.tokens.flatten(), minlength=TEXT8["vocab_size"])
    probs = _exact_one_position(model, steps)
    assert math.isclose(probs.sum().item(), 1.0, abs_tol=1e-9) and probs[TEXT8_MASK] == 0
    assert probs.max() < 0.9  # spread: a sampler stuck on the top id would fail
    assert chi_square_p_value(counts, probs) > 1e-4
    assert chi_square_p_value(counts, torch.softmax(probs.log() / 1.5, 0)) < 1e-6  # another temperature
    assert counts[34] > 0 or probs[34] * draws < 5  # the last id is a real token here


# --------------------------------------------------------------------------------------------
# Pickles written by the real classes (tests/data/mdlm_pickles/make_pickles.py)
# --------------------------------------------------------------------------------------------

REAL_PICKLES = sorted((REPO_ROOT / "tests" / "data" / "mdlm_pickles").glob("transformers-*.pkl"))


def test_real_pickles_are_present():
    assert {p.stem for p in REAL_PICKLES} >= {"transformers-4.38.2", "transformers-5.24.0"}


@pytest.mark.parametrize("file", REAL_PICKLES, ids=lambda p: p.stem)
def test_real_tokenizers_and_config_read_inertly(file):
    """transformers' tokenizers (MDLM's text8 one, BERT slow and fast, GPT-2 with MDLM's pad token)
    and an OmegaConf DictConfig, pickled by the real classes, read without importing them: the mask
    id is the one each tokenizer reported when it was pickled."""
    with open(file, "rb") as f:
        data = inert_pickle.Unpickler(f).load()
    from mdlm_fast.models.checkpoints import lightning, mask_id

    for name, tokenizer in data["tokenizers"].items():
        assert isinstance(tokenizer, inert_pickle.InertRecord) and "Tokenizer" in tokenizer.qualname
        expected = data["expected_mask_ids"][name]
        want = (
            {"_mask_index_source": "appended"}
            if expected is None
            else {"mask_index": expected, "_mask_index_source": "tokenizer"}
        )
        assert mask_id.tokenizer_mask(tokenizer, file) == want, name
    assert isinstance(data["config"], inert_pickle.InertRecord)
    assert inert_pickle.plain(data["config"]) == data["expected_config"]
    assert lightning.lightning_config({"config": data["config"]}) == {
        "hidden_dim": 32,
        "cond_dim": 16,
        "model_length": 16,
        "n_blocks": 2,
        "n_heads": 4,
        "time_conditioning": True,
    }
