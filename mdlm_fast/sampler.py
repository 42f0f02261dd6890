"""``mdlm_fast.sample``: one call for both samplers.

``sampler="reference"`` is a faithful port of MDLM's ``ddpm_cache`` sampler; ``sampler="fast"``
draws the same output distribution with reveal-first sampling, per-row no-op skipping and the
fused head (see reference_sampler.py and fast_sampler.py); ``sampler="confidence"`` is
LLaDA-style confidence decoding on the fused head (a different distribution, see
confidence_sampler.py).
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from mdlm_fast.compute_dtype import denoisers_in_dtype
from mdlm_fast.denoiser import Denoiser, as_denoisers
from mdlm_fast.flops import ExecutedFlops, schedule_flops
from mdlm_fast.noise import LogLinearNoise, sampling_timesteps
from mdlm_fast.schedule import ModelSchedule
from mdlm_fast.reference import check_temperature
from mdlm_fast.time_schedule import resolve_schedule

SAMPLERS = ("reference", "fast", "confidence")
PRECISIONS = ("fp64", "fp32-mdlm")
NOISE_REMOVALS = ("greedy", "ancestral")


class NonFiniteForwardError(FloatingPointError, ValueError):
    """A model forward produced NaN or inf: sampling stops rather than drawing from garbage."""


# Bits of SamplingRun.non_finite[step]: what was not finite in that step's forward.
_BAD_OUTPUT = 1  # the hidden states or logits the step used
_BAD_HEAD = 2    # the output layer's weight or bias (checked at each model's first forward)


@dataclass
class SampleStats:
    """What a sampling run did and cost."""

    sampler: str
    precision: str
    steps: int
    batch_size: int
    length: int
    seed: int
    schedule: str
    forwards: list[int]          # model forwards run, per model index
    rows: list[int]              # sequences pushed through the trunk, per model index
    head_positions: int          # positions projected onto the vocabulary
    wall_time_s: float
    host_syncs: int              # device->host waits inside the sampling loop
    predicted_saving: float | None  # paper eq. 3: block FLOPs only, vs all-heavy
    analytic_flops: dict[str, Any] | None = None   # every step a full forward (reference-style)
    executed_flops: dict[str, Any] | None = None   # what this run actually computed
    dtype: str = "float32"       # the models' compute dtype in this run
    dtype_reason: str = ""       # why: "requested", "auto: this CPU has avx512_bf16", "as loaded"

    @property
    def forwards_per_step(self) -> float:
        return sum(self.forwards) / self.steps

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["forwards_per_step"] = self.forwards_per_step
        return out


@dataclass
class SampleResult:
    tokens: torch.Tensor  # int64 [B, L]
    stats: SampleStats


@dataclass
class SamplingRun:
    """Everything a sampler loop needs, validated."""

    models: list[Denoiser]
    schedule: ModelSchedule
    x: torch.Tensor               # int64 [B, L]: the prior (masks) with the given tokens written in
    seed: int
    precision: str
    noise_removal: str
    progress: bool
    temperature: float = 1.0
    noise: LogLinearNoise = field(default_factory=LogLinearNoise)
    flops: ExecutedFlops = field(default_factory=ExecutedFlops)
    forwards: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    head_positions: int = 0
    host_syncs: int = 0
    fast_options: Any = None      # fast_sampler.FastOptions (benchmark ablations); None = every mechanism on

    def __post_init__(self):
        self.forwards = [0] * len(self.models)
        self.rows = [0] * len(self.models)
        self._heads_checked: set[int] = set()

    @property
    def mask_index(self) -> int:
        return self.models[0].mask_index

    @functools.cached_property
    def banned(self) -> torch.Tensor:
        """Ids never drawn: the mask id (SUBS gives it zero probability)."""
        return torch.tensor([self.mask_index], dtype=torch.int64, device=self.x.device)

    @functools.cached_property
    def non_finite(self) -> torch.Tensor:
        """int8 [T + 1] on the device: per step (T = noise removal), the _BAD_* bits of its forward.
        Written without a host sync; read where the sampler syncs anyway."""
        return torch.zeros(self.schedule.steps + 1, dtype=torch.int8, device=self.x.device)

    def check_forward(self, step: int, model_index: int, output: torch.Tensor, *, logits: bool) -> None:
        """Flag step ``step`` if ``output`` is not finite: hidden states must be finite, logits must
        have a finite maximum per position (-inf marks an impossible token; NaN and +inf are
        errors). A fused model's head is checked at its first forward in the run."""
        bad = ~torch.isfinite(output.amax(-1) if logits else output).all()
        code = bad.to(torch.int8)
        model = self.models[model_index]
        if model.fused and model_index not in self._heads_checked:
            self._heads_checked.add(model_index)
            weight, bias = model.head()
            head_ok = torch.isfinite(weight).all()
            if bias is not None:
                head_ok = head_ok & torch.isfinite(bias).all()
            code = code + (~head_ok).to(torch.int8) * _BAD_HEAD
        self.non_finite[step] = code

    @contextlib.contextmanager
    def naming_non_finite(self):
        """The fused op refuses a NaN logit row itself, before the deferred flag check: report it as
        the forward's error, naming the first flagged step and its model."""
        try:
            yield
        except RuntimeError:
            self.raise_if_non_finite()
            raise

    def raise_if_non_finite(self, step: int | None = None) -> None:
        """Raise NonFiniteForwardError naming the first flagged step (or ``step`` if given) and
        its model; this reads the flags from the device."""
        flags = self.non_finite if step is None else self.non_finite[step:step + 1]
        bad = torch.nonzero(flags).flatten().tolist()
        if not bad:
            return
        first = bad[0] + (0 if step is None else step)
        code = int(self.non_finite[first])
        steps = self.schedule.steps
        model = self.schedule[first] if first < steps else self.schedule[-1]
        where = (f"step {first} of {steps} (t = {float(self.timesteps[first]):.4g})" if first < steps
                 else f"the noise-removal forward after step {steps}")
        what = " and ".join(name for bit, name in ((_BAD_OUTPUT, "its hidden states or logits"),
                                                   (_BAD_HEAD, "its output layer's weights")) if code & bit)
        raise NonFiniteForwardError(
            f"sampling stopped: the forward of model {model} at {where} produced NaN or inf in {what}; "
            f"the model's weights or the given tokens are not usable")

    @property
    def timesteps(self) -> torch.Tensor:
        """MDLM's grid: linspace(1, 1e-5, T + 1) in float64."""
        return sampling_timesteps(self.schedule.steps)

    def sigma(self, t: float, rows: int) -> torch.Tensor:
        return torch.full((rows,), float(self.noise.sigma(t)), device=self.x.device)

    def record_forward(self, model_index: int, rows: int, head_positions: int,
                       last_block_queries: int | None = None) -> None:
        """Count one trunk forward over `rows` rows and a head over `head_positions` positions
        (`last_block_queries`: the last block ran at that many positions only)."""
        model = self.models[model_index]
        self.forwards[model_index] += 1
        self.rows[model_index] += rows
        self.head_positions += head_positions
        if model.shape is not None:
            self.flops.add_trunk(model_index, model.shape, rows, self.x.shape[1], last_block_queries)
            self.flops.add_head(model.shape, head_positions)


def _as_prefix(prefix: Any, batch_size: int, length: int, vocab_size: int, mask_index: int,
               device: torch.device) -> torch.Tensor | None:
    if prefix is None:
        return None
    prefix = torch.as_tensor(prefix)
    if prefix.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"prefix must hold integer token ids, got dtype {prefix.dtype}")
    if prefix.dim() == 1:
        prefix = prefix.unsqueeze(0).expand(batch_size, -1)
    if prefix.dim() != 2 or prefix.shape[0] != batch_size:
        raise ValueError(f"prefix must have shape [P] or [batch_size={batch_size}, P], got {tuple(prefix.shape)}")
    if prefix.shape[1] > length:
        raise ValueError(f"prefix has {prefix.shape[1]} tokens but the sequence length is {length}")
    if prefix.numel() and (prefix.min() < 0 or prefix.max() >= vocab_size):
        raise ValueError(f"prefix holds token ids outside [0, {vocab_size})")
    if (prefix == mask_index).any():
        raise ValueError(f"prefix holds the mask id {mask_index}; given tokens must be real tokens")
    return prefix.to(device=device, dtype=torch.int64)


def _resolve_device(models: list[Denoiser], device: Any) -> torch.device:
    devices = {m.device for m in models if m.device is not None}
    if len(devices) > 1:
        raise ValueError(f"models live on different devices ({sorted(map(str, devices))}); move them to one")
    model_device = next(iter(devices), None)
    if device is None:
        return model_device or torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if model_device is not None and model_device != device:
        raise ValueError(f"device={device} but the models are on {model_device}; move them with .to()")
    return device


def sample(models: Any, *, steps: int, batch_size: int, length: int | None = None,
           schedule: ModelSchedule | str | Sequence[int] | None = None, sampler: str = "reference",
           seed: int = 0, prefix: Any = None, precision: str = "fp64", device: Any = None,
           progress: bool = False, noise_removal: str = "greedy", temperature: float = 1.0,
           dtype: Any = None, _fast_options: Any = None) -> SampleResult:
    """Generate ``batch_size`` sequences of ``length`` tokens in ``steps`` denoising steps.

    models: one denoiser or a sequence (index 0 = heavy); schedule picks a model index per step
    (a ModelSchedule, a text spec such as "sandwich:0.25" or "L32-H64-L32", a list; None = all
    heavy). prefix: token ids [P] or [B, P] written at the start and never changed.
    precision: "fp64" (exact Gumbel-max) or "fp32-mdlm" (MDLM's original float32 formula; the
    reference sampler only). noise_removal: "greedy" (MDLM's argmax) or "ancestral" (fast only).
    temperature: of the token draws of the fast and confidence samplers (1 = the model's
    distribution, 0 = argmax); the reference sampler is MDLM's and takes 1 only.
    dtype: the models' compute dtype: None (as loaded), "float32", "bfloat16", or "auto" (bf16 where
    the CPU has AVX-512 BF16 / AMX or the GPU has bf16 tensor cores, else fp32); modules are cast
    as a cached copy, the caller's models are left as they are.
    Same seed, same arguments -> same tokens.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if noise_removal not in NOISE_REMOVALS:
        raise ValueError(f"noise_removal must be one of {NOISE_REMOVALS}, got {noise_removal!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a number, got {temperature!r}")
    check_temperature(temperature)  # the fused op's rule, so sample() refuses what the op would
    if sampler == "reference" and temperature != 1.0:
        raise ValueError("the reference sampler is MDLM's: temperature must be 1")
    if sampler != "reference" and precision != "fp64":
        raise ValueError("precision='fp32-mdlm' reproduces MDLM's truncated float32 Gumbel noise and exists "
                         "for the reference sampler only; the fast sampler draws exactly")
    if sampler != "fast" and noise_removal != "greedy":
        raise ValueError("noise_removal='ancestral' is an option of the fast sampler only")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2^64), got {seed!r}")

    denoisers = as_denoisers(models)
    schedule = resolve_schedule(schedule, steps).validate_for(len(denoisers))
    if length is None:
        length = getattr(getattr(denoisers[0].model, "config", None), "model_length", None)
        if length is None:
            raise ValueError("length is required for denoisers without config.model_length")
    if not isinstance(length, int) or length <= 0:
        raise ValueError(f"length must be a positive int, got {length!r}")
    device = _resolve_device(denoisers, device)
    denoisers, dtype_choice = denoisers_in_dtype(denoisers, dtype, device)
    mask_index = denoisers[0].mask_index
    given = _as_prefix(prefix, batch_size, length, denoisers[0].vocab_size, mask_index, device)

    x = torch.full((batch_size, length), mask_index, dtype=torch.int64, device=device)
    if given is not None:
        x[:, :given.shape[1]] = given
    run = SamplingRun(denoisers, schedule, x, seed, precision, noise_removal, progress, float(temperature))
    run.fast_options = _fast_options

    from mdlm_fast import confidence_sampler, fast_sampler, reference_sampler  # late: they import this module

    loop = {"reference": reference_sampler.run, "fast": fast_sampler.run, "confidence": confidence_sampler.run}[sampler]
    _synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        tokens = loop(run)
        run.raise_if_non_finite()  # the flags come over with the end-of-run sync
    _synchronize(device)
    wall = time.perf_counter() - start

    shapes = [m.shape for m in denoisers]
    known = all(s is not None for s in shapes)
    stats = SampleStats(
        sampler=sampler, precision=precision, steps=steps, batch_size=batch_size, length=length, seed=seed,
        schedule=schedule.to_spec(), forwards=run.forwards, rows=run.rows, head_positions=run.head_positions,
        wall_time_s=wall, host_syncs=run.host_syncs,
        predicted_saving=schedule.predicted_saving([s.n_blocks for s in shapes]) if known else None,
        analytic_flops=schedule_flops(schedule, shapes, batch_size, length, noise_removal=schedule[-1])
        if known else None,
        executed_flops=run.flops.as_dict() if known else None,
        dtype=dtype_choice.name, dtype_reason=dtype_choice.reason,
    )
    return SampleResult(tokens=tokens, stats=stats)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
