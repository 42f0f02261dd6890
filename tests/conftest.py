"""Shared fixtures: tests take a `device` and run once per backend.

CUDA availability is checked when a test runs, never at import or collection time.
"""

import pytest
import torch

import mdlm_fast


def _skip_unless_usable(device: str) -> None:
    if device == "cuda":
        if not mdlm_fast.build_info()["cuda"]:
            pytest.skip("this build of mdlm_fast has no CUDA kernels")
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device visible")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request) -> str:
    _skip_unless_usable(request.param)
    return request.param


def pytest_addoption(parser):
    parser.addoption(
        "--emulated-full",
        action="store_true",
        default=False,
        help="run the full matrix of the emulated CUDA kernel tests (default: the quick set)",
    )
    parser.addoption(
        "--emulated-order",
        choices=["forward", "reverse", "random"],
        default="forward",
        help="thread and block order of the emulated launches a test does not set itself",
    )
