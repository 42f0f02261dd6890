"""Which floating dtype a run computes in: ``"auto"`` resolved from what the hardware does natively.

bf16 halves the bytes every weight read moves and, where the CPU has bf16 dot-product
instructions (x86 AVX-512 BF16 or AMX, Arm's BF16 extension) or the GPU has bf16 tensor cores
(compute capability 8.0 and up), runs the GEMMs at about twice the fp32 rate. Without native
support bf16 is emulated and slower than fp32, so ``"auto"`` falls back to fp32 there. The choice
is read from the CPU's feature flags or the GPU's capability, never from the model.

The models keep LayerNorm, rotary, the adaLN modulations and the residual stream in fp32 under
bf16 weights (see model.py); the fused head accumulates its logits in fp32 and its softmax
statistics in fp64 whatever the weight dtype.
"""

from __future__ import annotations

import copy
import functools
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

DTYPE_CHOICES = ("auto", "float32", "bfloat16")
_BY_NAME = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# /proc/cpuinfo flag names of native bf16 arithmetic: x86 (AVX-512 BF16, AMX BF16) and aarch64 (BF16).
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_BF16_FLAGS = ("bf16",)


@dataclass(frozen=True)
class DtypeChoice:
    """A resolved dtype and why it was chosen (printed with the run report, kept in the stats)."""

    dtype: torch.dtype
    requested: str
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of a ``/proc/cpuinfo`` text (x86 ``flags``, aarch64 ``Features`` lines)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


@functools.lru_cache(maxsize=1)
def host_cpu_flags() -> frozenset[str] | None:
    """This machine's CPU flags, or None where ``/proc/cpuinfo`` cannot be read (not Linux)."""
    try:
        return parse_cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None


def cpu_bf16_support(flags: Iterable[str] | None = None, machine: str | None = None) -> tuple[bool, str]:
    """(native bf16?, the reason in words) from CPU flags; ``flags=None`` reads this machine's.

    Where no flags can be read, torch's own probe of AVX-512 BF16 / AMX decides."""
    import platform

    machine = (machine or platform.machine()).lower()
    if flags is None:
        flags = host_cpu_flags()
        if flags is None:
            probe = getattr(torch, "cpu", None)
            try:
                native = probe is not None and bool(probe._is_avx512_bf16_supported() or probe._is_amx_tile_supported())
            except AttributeError:
                native = False
            return native, (
                "torch reports AVX-512 BF16 / AMX"
                if native
                else "no CPU flags readable and torch reports no AVX-512 BF16 / AMX"
            )
    flags = frozenset(flags)
    candidates = ARM_BF16_FLAGS if machine in ("aarch64", "arm64") else X86_BF16_FLAGS
    found = [f for f in candidates if f in flags]
    if found:
        return True, f"this CPU has {', '.join(found)}"
    return False, f"this CPU lacks {' / '.join(candidates)}"


def cuda_bf16_support(device: torch.device, capability: tuple[int, int] | None = None) -> tuple[bool, str]:
    """(native bf16?, reason) for a CUDA device: tensor-core bf16 from compute capability 8.0."""
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    native = tuple(capability) >= (8, 0)
    cc = f"{capability[0]}.{capability[1]}"
    return native, f"GPU compute capability {cc}" + (" has bf16 tensor cores" if native else " < 8.0")


def resolve_dtype(
    dtype: Any,
    device: Any = "cpu",
    *,
    cpu_flags: Iterable[str] | None = None,
    machine: str | None = None,
    cuda_capability: tuple[int, int] | None = None,
) -> DtypeChoice:
    """``"auto" | "float32" | "bfloat16"`` (or torch.float32 / torch.bfloat16) -> a DtypeChoice.

    ``cpu_flags``, ``machine`` and ``cuda_capability`` replace what is read from this machine
    (tests inject them)."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).replace("torch.", "")
        if name not in _BY_NAME:
            raise ValueError(f"dtype must be one of {DTYPE_CHOICES} or torch.float32 / torch.bfloat16, got {dtype}")
        return DtypeChoice(dtype, name, "requested")
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {dtype!r}")
    if dtype != "auto":
        return DtypeChoice(_BY_NAME[dtype], dtype, "requested")
    device = torch.device(device)
    if device.type == "cpu":
        native, why = cpu_bf16_support(cpu_flags, machine)
    elif device.type == "cuda":
        native, why = cuda_bf16_support(device, cuda_capability)
    else:
        native, why = False, f"no native-bf16 check for {device.type}"
    return DtypeChoice(torch.bfloat16 if native else torch.float32, "auto", f"auto: {why}")


def module_dtype(module: Any) -> torch.dtype | None:
    """The dtype of a module's floating parameters (the first one's), or None without any."""
    params = getattr(module, "parameters", None)
    if params is None:
        return None
    return next((p.dtype for p in params() if p.is_floating_point()), None)


def _param_key(module: torch.nn.Module) -> tuple:
    def version(p):
        try:
            return p._version
        except RuntimeError:  # inference tensors have no version counter (and cannot change)
            return -1

    return tuple((p.data_ptr(), version(p)) for p in module.parameters())


# A cast copy per (module, dtype), dropped with the module and rebuilt when its parameters change:
# sample(dtype=...) called in a loop casts once, and the caller's module is never modified.
_CAST_COPIES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def cast_module(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module`` itself if its floating parameters are all ``dtype``, else a cached cast copy."""
    if all(p.dtype == dtype for p in module.parameters() if p.is_floating_point()):
        return module
    copies = _CAST_COPIES.setdefault(module, {})
    key = _param_key(module)
    cached = copies.get(dtype)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cast = copy.deepcopy(module).to(dtype=dtype)
        copies[dtype] = (key, cast)
    return copies[dtype][1]


def denoisers_in_dtype(denoisers: list, dtype: Any, device: Any) -> tuple[list, DtypeChoice]:
    """The samplers' denoisers computing in ``dtype`` (None: as loaded), and the choice made.

    Modules are cast (a cached copy, see :func:`cast_module`); a plain callable cannot be, so an
    explicit dtype other than its own is refused, and ``"auto"`` leaves it as it is."""
    from mdlm_fast.models.denoiser import Denoiser

    if dtype is None:
        dtypes = (module_dtype(d.model) for d in denoisers)
        found = next((t for t in dtypes if t is not None), torch.float32)
        return denoisers, DtypeChoice(found, "as loaded", "as loaded")
    choice = resolve_dtype(dtype, device)
    out = []
    for i, d in enumerate(denoisers):
        if not isinstance(d.model, torch.nn.Module):
            if choice.requested != "auto":
                raise ValueError(
                    f"dtype={choice.requested!r}: models[{i}] is a plain callable, which cannot be "
                    "cast; pass dtype=None (or 'auto') or give an nn.Module"
                )
            out.append(d)
            continue
        cast = cast_module(d.model, choice.dtype)
        out.append(
            d
            if cast is d.model
            else Denoiser(
                cast,
                vocab_size=d.vocab_size,
                mask_index=d.mask_index,
                time_conditioning=d.time_conditioning,
                n_blocks=d.n_blocks,
                hidden_dim=d.hidden_dim,
                noise_eps=d.noise_eps,
            )
        )
    return out, choice
