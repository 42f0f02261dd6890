"""Build of mdlm_fast's compiled operators.

CPU kernels always build. CUDA kernels build when the installed torch was built with CUDA and
nvcc is found -- never gated on a visible GPU, so a GPU-less build machine still produces them.

Build knobs (environment variables):
  MDLM_FAST_FORCE_CPU=1      build the CPU kernels only, even where CUDA torch and nvcc exist
  TORCH_CUDA_ARCH_LIST       CUDA archs; defaults to "8.0;9.0+PTX" (A100, H100, and PTX that newer
                             GPUs compile at load time) when unset
  MDLM_FAST_DEBUG=1          -O0 -g, for stepping through the kernels
"""

import glob
import os

from setuptools import find_namespace_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _want_cuda():
    if _flag("MDLM_FAST_FORCE_CPU"):
        return False
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extension():
    debug = _flag("MDLM_FAST_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    sources = _sources("csrc/ops.cpp") + _sources("csrc/cpu/*.cpp")
    # No -std flag: cpp_extension passes the standard the installed torch's headers need.
    cxx_flags = opt + ["-fvisibility=hidden"]
    if not _want_cuda():
        return cpp_extension.CppExtension(
            "mdlm_fast._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            py_limited_api=False,
        )

    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # read by cpp_extension when it writes -gencode flags
    sources += _sources("csrc/cuda/*.cu")
    define = ["-DMDLM_FAST_WITH_CUDA", f'-DMDLM_FAST_CUDA_ARCHS="{archs}"']
    return cpp_extension.CUDAExtension(
        "mdlm_fast._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={
            "cxx": cxx_flags + define,
            # No --use_fast_math: the kernels need IEEE expf/division and no flush-to-zero to
            # draw the same tokens as the CPU kernel and reference.py.
            "nvcc": opt + define + ["-lineinfo"],
        },
    )


def _asset_packages():
    """The asset directories as (namespace) packages with all their files as package data: the
    form setuptools expects for data directories inside a package."""
    root = os.path.join(ROOT, "mdlm_fast", "assets")
    data = {}
    for directory, _, files in os.walk(root):
        files = [f for f in files if not f.startswith(".")]
        if files:
            package = os.path.relpath(directory, ROOT).replace(os.sep, ".")
            data[package] = files
    return data


ASSETS = _asset_packages()

setup(
    packages=find_namespace_packages(include=["mdlm_fast", "mdlm_fast.*"], exclude=["*.__pycache__"]),
    package_data=ASSETS,
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
