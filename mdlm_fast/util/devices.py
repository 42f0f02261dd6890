"""Which devices a run can use: one check, one wording, for ``sample(device=...)`` and ``--device``."""

from __future__ import annotations

from typing import Any

import torch


def usable_device(spec: Any, name: str = "device") -> torch.device:
    """``spec`` as a ``torch.device`` that is present and that this build has kernels for, else a
    ValueError starting with ``name`` and the spec (torch's own answer on a CPU build is a bare
    ``AssertionError: Torch not compiled with CUDA enabled``)."""
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{name} {spec!r} is not a device; expected cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"{name} {spec}: mdlm_fast has kernels for cpu and cuda only")
    if not torch.cuda.is_available():
        build = "" if torch.version.cuda else f" (torch {torch.__version__} is a CPU-only build)"
        raise ValueError(f"{name} {spec}: no CUDA device is visible{build}")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"{name} {spec}: only {count} CUDA device(s) are visible")
    from mdlm_fast._build import build_info

    if not build_info()["cuda"]:
        raise ValueError(
            f"{name} {spec}: this build of mdlm_fast has no CUDA kernels "
            f"(rebuild it where torch has CUDA and nvcc is found)"
        )
    return dev
