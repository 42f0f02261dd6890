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
from mdlm_fast.schedules.time_schedule import resolve_schedule
from mdlm_fast.util.devices import usable_device
from mdlm_fast.util.validate import positive_int

SAMPLERS = ("fast", "mdlm", "confidence")
SAMPLER_ALIASES = {"reference": "mdlm"}  # the name of MDLM's sampler in 0.1
PRECISIONS = ("fp64", "fp32-mdlm")
NOISE_REMOVALS = ("greedy", "ancestral")


def _as_prefix(prefix: Any, batch_size: int, length: int, vocab_size: int, mask_index: int,
               device: torch.device) -> torch.Tensor | None:
    if prefix is None:
        return None
    try:
        prefix = torch.as_tensor(prefix)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ValueError(f"prefix must be token ids of shape [P] or [batch_size={batch_size}, P] with rows of "
                         f"one length ({exc})") from None
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
    device = usable_device(device, "device")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if model_device is not None and model_device != device:
        raise ValueError(f"device={device} but the models are on {model_device}; move them with .to()")
    return device


def sample(models: Any, *, steps: int, batch_size: int, length: int | None = None,
           schedule: ModelSchedule | str | Sequence[int] | None = None, sampler: str = "fast",
           seed: int = 0, prefix: Any = None, precision: str = "fp64", device: Any = None,
           progress: bool = False, noise_removal: str = "greedy", temperature: float = 1.0,
           dtype: Any = None, _fast_options: Any = None) -> SampleResult:
    """Generate ``batch_size`` sequences of ``length`` tokens in ``steps`` denoising steps.

    models: one denoiser or a sequence (index 0 = heavy); schedule picks a model index per step
    (a ModelSchedule, a text spec such as "sandwich:0.25" or "L32-H64-L32", a list; None = all
    heavy). prefix: token ids [P] or [B, P] written at the start and never changed.
    precision: "fp64" (exact Gumbel-max) or "fp32-mdlm" (MDLM's original float32 formula; the
    mdlm sampler only). noise_removal: "greedy" (MDLM's argmax) or "ancestral" (fast only).
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
        raise ValueError("precision='fp32-mdlm' reproduces MDLM's truncated float32 Gumbel noise and exists "
                         "for the mdlm (reference) sampler only; the fast sampler draws exactly")
    if sampler != "fast" and noise_removal != "greedy":
        raise ValueError("noise_removal='ancestral' is an option of the fast sampler only")
    positive_int("steps", steps)
    positive_int("batch_size", batch_size)
    check_seed(seed)

    denoisers = as_denoisers(models)
    schedule = resolve_schedule(schedule, steps).validate_for(len(denoisers))
    if length is None:
        length = getattr(getattr(denoisers[0].model, "config", None), "model_length", None)
        if length is None:
            raise ValueError("length is required for denoisers without config.model_length")
    positive_int("length", length)
    device = _resolve_device(denoisers, device)
    denoisers, dtype_choice = denoisers_in_dtype(denoisers, dtype, device)
    mask_index = denoisers[0].mask_index
    given = _as_prefix(prefix, batch_size, length, denoisers[0].vocab_size, mask_index, device)

    x = torch.full((batch_size, length), mask_index, dtype=torch.int64, device=device)
    if given is not None:
        x[:, :given.shape[1]] = given
    run = SamplingRun(denoisers, schedule, x, seed, precision, noise_removal, progress, float(temperature))
    run.fast_options = _fast_options

    loop = {"mdlm": mdlm.generate, "fast": fast.generate, "confidence": confidence.generate}[sampler]
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
        analytic_flops=schedule_flops(schedule, shapes, batch_size, length, noise_removal_model=schedule[-1])
        if known else None,
        executed_flops=run.flops.as_dict() if known else None,
        dtype=dtype_choice.name, dtype_reason=dtype_choice.reason,
    )
    return SampleResult(tokens=tokens, stats=stats)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
