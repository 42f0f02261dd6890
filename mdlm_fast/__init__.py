"""mdlm_fast: fast sampling for masked diffusion language models (MDLMs).

Model scheduling (heavy and light denoisers swapped per step), fused vocabulary-projection +
sampling kernels computed only where a step reveals tokens, and the analysis tools to choose
schedules. This module is the public facade: everything a user calls is importable from here.
See README.md; the layout (one folder per concept) and the math are in docs/design.md.
"""

# First, before torch loads OpenMP: the mdlm-fast command's passive thread wait (util/threads.py).
from mdlm_fast.util.threads import passive_wait_for_command_line as _passive_wait_for_command_line

_passive_wait_for_command_line()

from mdlm_fast._build import build_info
from mdlm_fast.analysis.judge import CausalLM, CausalLMConfig, load_judge, save_judge
from mdlm_fast.analysis.metrics import (
    distinct_n,
    evaluate_samples,
    evaluate_schedule,
    generative_perplexity,
    unigram_entropy,
)
from mdlm_fast.models.checkpoint import CheckpointError, load_denoiser, save_denoiser
from mdlm_fast.models.denoiser import Denoiser, live_denoiser
from mdlm_fast.models.dit import DiT, DiTConfig, subs_log_probs
from mdlm_fast.models.live import LiveModelError, LiveModelWarning
from mdlm_fast.ops import compiled as ops
from mdlm_fast.ops import reference
from mdlm_fast.sampling.api import SampleResult, SampleStats, sample
from mdlm_fast.sampling.dropin import fast_sample, patch
from mdlm_fast.sampling.engine import Completion, Engine, EngineError, QueueFull, Request
from mdlm_fast.schedules.flops import ExecutedFlops, ModelShape, schedule_flops
from mdlm_fast.schedules.model_schedule import ModelSchedule, ScheduleError
from mdlm_fast.schedules.noise import LogLinearNoise
from mdlm_fast.schedules.time_schedule import TimeSchedule, resolve_schedule
from mdlm_fast.text.tokenizer import TextTokenizer, TokenizerError, load_tokenizer
from mdlm_fast.version import __version__

__all__ = [
    "build_info",
    "ops",
    "reference",
    "DiT",
    "DiTConfig",
    "subs_log_probs",
    "Denoiser",
    "live_denoiser",
    "LiveModelError",
    "LiveModelWarning",
    "fast_sample",
    "patch",
    "load_denoiser",
    "save_denoiser",
    "CheckpointError",
    "ModelSchedule",
    "ScheduleError",
    "TimeSchedule",
    "resolve_schedule",
    "ModelShape",
    "ExecutedFlops",
    "schedule_flops",
    "LogLinearNoise",
    "sample",
    "SampleResult",
    "SampleStats",
    "Engine",
    "Request",
    "Completion",
    "EngineError",
    "QueueFull",
    "TextTokenizer",
    "TokenizerError",
    "load_tokenizer",
    "CausalLM",
    "CausalLMConfig",
    "load_judge",
    "save_judge",
    "generative_perplexity",
    "unigram_entropy",
    "distinct_n",
    "evaluate_schedule",
    "evaluate_samples",
    "__version__",
]
