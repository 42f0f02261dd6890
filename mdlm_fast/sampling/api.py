"""``mdlm_fast.sample``: one call for every sampler.

``sampler="fast"`` (the default, as in the CLI) draws MDLM's output distribution with
reveal-first sampling, per-row no-op skipping and the fused head (fast.py, design §4);
``sampler="mdlm"`` (alias ``"reference"``) is a faithful port of MDLM's ``ddpm_cache`` sampler,
noise for noise (mdlm.py, design §3); ``sampler="confidence"`` is LLaDA-style confidence decoding
on the fused head, a different distribution (confidence.py).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from mdlm_fast.models.compute_dtype import denoisers_in_dtype
from mdlm_fast.models.denoiser import Denoiser, as_denoisers
from mdlm_fast.ops.compiled import check_seed, check_temperature
from mdlm_fast.sampling import confidence, fast, mdlm
from mdlm_fast.sampling.run import SampleResult, SampleStats, SamplingRun
from mdlm_fast.schedules.flops import schedule_flops
from mdlm_fast.schedules.model_schedule import ModelSchedule
from mdlm_fast.schedules.noise import SAMPLING_EPS, LogLinearNoise
from mdlm_fast.schedules.time_schedule import resolve_schedule
from mdlm_fast.util.devices import usable_device
from mdlm_fast.util.validate import positive_int

SAMPLERS = ("fast", "mdlm", "confidence")
SAMPLER_ALIASES = {"reference": "mdlm"}  # the name of MDLM's sampler in 0.1
PRECISIONS = ("fp64", "fp32-mdlm")
NOISE_REMOVALS = ("greedy", "ancestral", "none")


_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _as_given(
    given: Any, prefix: Any, batch_size: int, length: int, vocab_size: int, mask_index: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The tokens a run is conditioned on, as ``(tokens, known)``: int64 ``[B, L]`` with the mask id
    wherever a token is to be generated, and bool ``[B, L]``, True at the given positions.

    ``given``: ``[L]`` (every row) or ``[B, L]`` token ids, the mask id where tokens are generated.
    ``prefix``: ``[P]`` or ``[B, P]`` real tokens at the start, the rest generated (a special case of
    ``given``). At most one of the two; None when neither is passed. Every sampler (and anything
    else that conditions a batch) reads the given tokens through this function, so the rules are
    the same everywhere.
    """
    if given is not None and prefix is not None:
        raise ValueError(
            "pass given= or prefix=, not both: a prefix is given= with its tokens first and the mask id after them"
        )
    if prefix is not None:
        prefix = _token_tensor("prefix", prefix, batch_size, vocab_size)
        if prefix.shape[1] > length:
            raise ValueError(f"prefix has {prefix.shape[1]} tokens but the sequence length is {length}")
        if (prefix == mask_index).any():
            raise ValueError(f"prefix holds the mask id {mask_index}; given tokens must be real tokens")
        tokens = torch.full((batch_size, length), mask_index, dtype=torch.int64)
        tokens[:, : prefix.shape[1]] = prefix
    elif given is not None:
        tokens = _token_tensor("given", given, batch_size, vocab_size)
        if tokens.shape[1] != length:
            raise ValueError(
                f"given has {tokens.shape[1]} positions but the sequence length is {length}; "
                f"given spans the whole sequence, with the mask id {mask_index} where tokens are "
                f"generated"
            )
        tokens = tokens.contiguous()
    else:
        return None
    tokens = tokens.to(device)
    return tokens, tokens != mask_index


def _token_tensor(name: str, value: Any, batch_size: int, vocab_size: int) -> torch.Tensor:
    """``value`` as int64 ``[B, N]`` (a ``[N]`` value repeated over the batch), ids checked against the vocabulary."""
    shape = "[P] or [batch_size={}, P]" if name == "prefix" else "[L] or [batch_size={}, L]"
    try:
        value = torch.as_tensor(value)
    except (ValueError, TypeError, RuntimeError) as exc:  # ragged rows, non-numbers
        raise ValueError(
            f"{name} must be token ids of shape {shape.format(batch_size)} with rows of one length ({exc})"
        ) from None
    if value.dtype not in _INTEGER_DTYPES:
        raise ValueError(f"{name} must hold integer token ids, got dtype {value.dtype}")
    if value.dim() == 1:
        value = value.unsqueeze(0).expand(batch_size, -1)
    if value.dim() != 2 or value.shape[0] != batch_size:
        what = "[P] or [batch_size" if name == "prefix" else "[L] or [batch_size"
        raise ValueError(
            f"{name} must have shape {what}={batch_size}, {'P' if name == 'prefix' else 'L'}], got {tuple(value.shape)}"
        )
    value = value.to(torch.int64)
    if value.numel() and (value.min() < 0 or value.max() >= vocab_size):
        raise ValueError(f"{name} holds token ids outside [0, {vocab_size})")
    return value


def _resolve_device(models: list[Denoiser], device: Any) -> torch.device:
    devices = {m.device for m in models if m.device is not None}
    if len(devices) > 1:
        raise ValueError(f"models live on different devices ({sorted(map(str, devices))}); move them to one")
    model_device = next(iter(devices), None)
    if device is None:
        return model_device or torch.device("cpu")
    device = usable_device(device, "device")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if model_device is not None and model_device != device:
        raise ValueError(f"device={device} but the models are on {model_device}; move them with .to()")
    return device


def sample(
    models: Any,
    *,
    steps: int,
    batch_size: int,
    length: int | None = None,
    schedule: ModelSchedule | str | Sequence[int] | None = None,
    sampler: str = "fast",
    seed: int = 0,
    prefix: Any = None,
    given: Any = None,
    precision: str = "fp64",
    device: Any = None,
    progress: bool = False,
    noise_removal: str = "greedy",
    temperature: float = 1.0,
    dtype: Any = None,
    _fast_options: Any = None,
    _final_time: float = SAMPLING_EPS,
) -> SampleResult:
    """Generate ``batch_size`` sequences of ``length`` tokens in ``steps`` denoising steps.

    models: one denoiser or a sequence (index 0 = heavy); schedule picks a model index per step
    (a ModelSchedule, a text spec such as "sandwich:0.25" or "L32-H64-L32", a list; None = all
    heavy). prefix: token ids [P] or [B, P] written at the start and never changed.
    given: token ids [L] or [B, L] (infilling), the mask id where tokens are generated; the others
    are never changed (prefix is the special case of a given start; pass one or the other).
    length: defaults to given's length, else the model's config.model_length.
    precision: "fp64" (exact Gumbel-max) or "fp32-mdlm" (MDLM's original float32 formula; the
    mdlm sampler only). noise_removal: "greedy" (MDLM's argmax), "ancestral" (fast only) or "none"
    (fast only: positions the grid never reveals stay masked, MDLM's sampling.noise_removal=False).
    temperature: of the token draws of the fast and confidence samplers (1 = the model's
    distribution, 0 = argmax); the mdlm sampler is MDLM's and takes 1 only.
    dtype: the models' compute dtype: None (as loaded), "float32", "bfloat16", or "auto" (bf16 where
    the CPU has AVX-512 BF16 / AMX or the GPU has bf16 tensor cores, else fp32); modules are cast
    as a cached copy, the caller's models are left as they are.
    Same seed, same arguments -> same tokens.
    """
    sampler = SAMPLER_ALIASES.get(sampler, sampler)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS} (or 'reference' = 'mdlm'), got {sampler!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if noise_removal not in NOISE_REMOVALS:
        raise ValueError(f"noise_removal must be one of {NOISE_REMOVALS}, got {noise_removal!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a number, got {temperature!r}")
    check_temperature(temperature)  # the fused op's rule, so sample() refuses what the op would
    if sampler == "mdlm" and temperature != 1.0:
        raise ValueError("the mdlm (reference) sampler is MDLM's: temperature must be 1")
    if sampler != "mdlm" and precision != "fp64":
        raise ValueError(
            "precision='fp32-mdlm' reproduces MDLM's truncated float32 Gumbel noise and exists "
            "for the mdlm (reference) sampler only; the fast sampler draws exactly"
        )
    if sampler != "fast" and noise_removal != "greedy":
        raise ValueError(f"noise_removal={noise_removal!r} is an option of the fast sampler only")
    if isinstance(_final_time, bool) or not isinstance(_final_time, (int, float)) or not 0 < _final_time < 1:
        raise ValueError(f"the sampler's final time (MDLM's eps) must be in (0, 1), got {_final_time!r}")
    positive_int("steps", steps)
    positive_int("batch_size", batch_size)
    check_seed(seed)

    denoisers = as_denoisers(models)
    schedule = resolve_schedule(schedule, steps).validate_for(len(denoisers))
    if length is None and given is not None and torch.as_tensor(given).dim() in (1, 2):
        length = torch.as_tensor(given).shape[-1]
    if length is None:
        length = getattr(getattr(denoisers[0].model, "config", None), "model_length", None)
        if length is None:
            raise ValueError("length is required for denoisers without config.model_length")
    positive_int("length", length)
    device = _resolve_device(denoisers, device)
    denoisers, dtype_choice = denoisers_in_dtype(denoisers, dtype, device)
    mask_index = denoisers[0].mask_index
    conditioned = _as_given(given, prefix, batch_size, length, denoisers[0].vocab_size, mask_index, device)
    if conditioned is None:
        x = torch.full((batch_size, length), mask_index, dtype=torch.int64, device=device)
    else:
        x = conditioned[0]
    run = SamplingRun(
        denoisers,
        schedule,
        x,
        seed,
        precision,
        noise_removal,
        progress,
        float(temperature),
        noise=_noise_of(denoisers),
        final_time=_final_time,
    )
    run.fast_options = _fast_options

    loop = {"mdlm": mdlm.generate, "fast": fast.generate, "confidence": confidence.generate}[sampler]
    _synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        tokens = loop(run)
        run.raise_if_non_finite()  # the flags come over with the end-of-run sync
    _synchronize(device)
    wall = time.perf_counter() - start

    shapes = [s for s in (m.shape for m in denoisers) if s is not None]
    known = len(shapes) == len(denoisers)
    stats = SampleStats(
        sampler=sampler,
        precision=precision,
        steps=steps,
        batch_size=batch_size,
        length=length,
        seed=seed,
        schedule=schedule.to_spec(),
        forwards=run.forwards,
        rows=run.rows,
        head_positions=run.head_positions,
        wall_time_s=wall,
        host_syncs=run.host_syncs,
        predicted_saving=schedule.predicted_saving([s.n_blocks for s in shapes]) if known else None,
        analytic_flops=schedule_flops(schedule, shapes, batch_size, length, noise_removal_model=schedule[-1])
        if known
        else None,
        executed_flops=run.flops.as_dict() if known else None,
        dtype=dtype_choice.name,
        dtype_reason=dtype_choice.reason,
    )
    return SampleResult(tokens=tokens, stats=stats)


def _noise_of(denoisers: list[Denoiser]) -> LogLinearNoise:
    """The run's noise schedule: the models' own where they carry one (a live MDLM module's, read by
    models/live.py), else MDLM's default log-linear schedule."""
    schedules = {m.noise_eps for m in denoisers if m.noise_eps is not None}
    if len(schedules) > 1:
        raise ValueError(
            f"the models carry different noise schedules (log-linear eps {sorted(schedules)}); "
            "scheduled models must share one"
        )
    return LogLinearNoise(schedules.pop()) if schedules else LogLinearNoise()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
