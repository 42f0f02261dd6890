"""The state of one sampling run: what every sampler loop reads, and what it reports.

``SamplingRun`` holds the validated inputs and counts what the loop runs (forwards, rows, head
positions, host syncs, executed FLOPs); ``SampleStats`` is what ``sample()`` returns about it.
Non-finite forwards are flagged on the device and read where the loop syncs anyway, so checking
them costs no extra host sync.

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from mdlm_fast.models.denoiser import Denoiser
from mdlm_fast.ops.head_status import DeferredHeadErrors
from mdlm_fast.schedules.flops import ExecutedFlops
from mdlm_fast.schedules.model_schedule import ModelSchedule
from mdlm_fast.schedules.noise import SAMPLING_EPS, LogLinearNoise, sampling_dt, sampling_timesteps


class NonFiniteForwardError(FloatingPointError, ValueError):
    """A model forward produced NaN or inf: sampling stops rather than drawing from garbage."""


# Bits of SamplingRun.non_finite[step]: what was not finite in that step's forward.
_BAD_OUTPUT = 1  # the hidden states or logits the step used
_BAD_HEAD = 2  # the output layer's weight or bias (checked at each model's first forward)


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
    forwards: list[int]  # model forwards run, per model index
    rows: list[int]  # sequences pushed through the trunk, per model index
    head_positions: int  # positions projected onto the vocabulary
    wall_time_s: float
    host_syncs: int  # device->host waits inside the sampling loop
    predicted_saving: float | None  # eq. 3: block FLOPs only, vs all-heavy
    analytic_flops: dict[str, Any] | None = None  # every step a full forward (reference-style)
    executed_flops: dict[str, Any] | None = None  # what this run actually computed
    dtype: str = "float32"  # the models' compute dtype in this run
    dtype_reason: str = ""  # why: "requested", "auto: this CPU has avx512_bf16", "as loaded"

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
    x: torch.Tensor  # int64 [B, L]: the prior (masks) with the given tokens written in
    seed: int
    precision: str
    noise_removal: str
    progress: bool
    temperature: float = 1.0
    noise: LogLinearNoise = field(default_factory=LogLinearNoise)
    final_time: float = SAMPLING_EPS  # the grid's last time (MDLM's eps of _sample)
    flops: ExecutedFlops = field(default_factory=ExecutedFlops)
    forwards: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    head_positions: int = 0
    host_syncs: int = 0
    fast_options: Any = None  # sampling.fast.FastOptions (benchmark ablations); None = every mechanism on

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
    def head_errors(self) -> DeferredHeadErrors:
        """The fused head's value errors on devices where reading them would cost a sync per call
        (CUDA): kept on the device and raised at the run's end, as the CPU op words them."""
        return DeferredHeadErrors(self.x.device, fill_token=self.mask_index)

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
        its model; this reads the flags from the device. At the run's end (no ``step``), then the
        fused head's deferred errors (a NaN row comes from a flagged forward, so the forward's
        error wins, as on the CPU)."""
        flags = self.non_finite if step is None else self.non_finite[step : step + 1]
        bad = torch.nonzero(flags).flatten().tolist()
        if not bad:
            if step is None and "head_errors" in self.__dict__:
                self.head_errors.raise_if_any()
            return
        first = bad[0] + (0 if step is None else step)
        code = int(self.non_finite[first])
        steps = self.schedule.steps
        model = self.schedule[first] if first < steps else self.schedule[-1]
        where = (
            f"step {first} of {steps} (t = {float(self.timesteps[first]):.4g})"
            if first < steps
            else f"the noise-removal forward after step {steps}"
        )
        what = " and ".join(
            name
            for bit, name in ((_BAD_OUTPUT, "its hidden states or logits"), (_BAD_HEAD, "its output layer's weights"))
            if code & bit
        )
        raise NonFiniteForwardError(
            f"sampling stopped: the forward of model {model} at {where} produced NaN or inf in {what}; "
            f"the model's weights or the given tokens are not usable"
        )

    @property
    def timesteps(self) -> torch.Tensor:
        """MDLM's grid: linspace(1, eps = final_time, T + 1) in float64."""
        return sampling_timesteps(self.schedule.steps, self.final_time)

    @property
    def dt(self) -> float:
        """MDLM's step size (1 - eps) / T."""
        return sampling_dt(self.schedule.steps, self.final_time)

    def sigma(self, t: float, rows: int) -> torch.Tensor:
        return torch.full((rows,), float(self.noise.sigma(t)), device=self.x.device)

    def record_forward(
        self, model_index: int, rows: int, head_positions: int, last_block_queries: int | None = None
    ) -> None:
        """Count one trunk forward over `rows` rows and a head over `head_positions` positions
        (`last_block_queries`: the last block ran at that many positions only)."""
        model = self.models[model_index]
        self.forwards[model_index] += 1
        self.rows[model_index] += rows
        self.head_positions += head_positions
        if model.shape is not None:
            self.flops.add_trunk(model_index, model.shape, rows, self.x.shape[1], last_block_queries)
            self.flops.add_head(model.shape, head_positions)
