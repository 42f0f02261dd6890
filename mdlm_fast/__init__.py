"""mdlm_fast: fast sampling for masked diffusion language models (MDLMs).

Model scheduling (heavy and light denoisers swapped per step), fused vocabulary-projection +
sampling kernels computed only where a step reveals tokens, and the analysis tools to choose
schedules. See README.md.
"""
from mdlm_fast._build import build_info
from mdlm_fast import ops, reference
from mdlm_fast.checkpoint import CheckpointError, load_denoiser, save_denoiser
from mdlm_fast.denoiser import Denoiser
from mdlm_fast.flops import ExecutedFlops, ModelShape, schedule_flops
from mdlm_fast.model import DiT, DiTConfig, subs_log_probs
from mdlm_fast.noise import LogLinearNoise
from mdlm_fast.sampler import SampleResult, SampleStats, sample
from mdlm_fast.schedule import ModelSchedule, ScheduleError
from mdlm_fast.time_schedule import TimeSchedule, resolve_schedule
from mdlm_fast.tokenizer import TextTokenizer, TokenizerError, load_tokenizer
from mdlm_fast.judge import CausalLM, CausalLMConfig, load_judge, save_judge
from mdlm_fast.eval import (distinct_n, evaluate_samples, evaluate_schedule, generative_perplexity,
                            unigram_entropy)

__version__ = "0.1.0"

__all__ = [
    "build_info", "ops", "reference",
    "DiT", "DiTConfig", "subs_log_probs", "Denoiser",
    "load_denoiser", "save_denoiser", "CheckpointError",
    "ModelSchedule", "ScheduleError", "TimeSchedule", "resolve_schedule", "ModelShape", "ExecutedFlops", "schedule_flops",
    "LogLinearNoise", "sample", "SampleResult", "SampleStats",
    "TextTokenizer", "TokenizerError", "load_tokenizer",
    "CausalLM", "CausalLMConfig", "load_judge", "save_judge",
    "generative_perplexity", "unigram_entropy", "distinct_n", "evaluate_schedule", "evaluate_samples",
    "__version__",
]
