"""Loads the compiled extension (which registers torch.ops.mdlm_fast.*) and reports what it holds."""

from __future__ import annotations

import torch  # loads libtorch, which the extension links against

try:
    from mdlm_fast import _C  # type: ignore[attr-defined]  # noqa: F401  (importing registers the operators)
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        f"mdlm_fast's compiled extension is missing, or was built against another torch than this "
        f"{torch.__version__} (an 'undefined symbol' below). Install the package with "
        "`pip install --no-build-isolation .` (or `-e .`) so the operators are built "
        f"against your torch. Original error: {exc}"
    ) from exc


def build_info() -> dict:
    """Which backends this build compiled: {'cpu': True, 'cuda': bool, 'cuda_archs': str}."""
    return dict(_C.build_info())


def compiled_constants() -> dict:
    """The constants the kernels were compiled with (csrc/include/mdlm_fast/*.h, csrc/checks.h):
    {'purposes': {name: id}, 'max_step', 'vocab_chunk', 'min_temperature', 'max_temperature',
    'noise_dists'}."""
    return dict(_C.constants())
