#!/usr/bin/env bash
# nvcc compile check of the torch-free CUDA kernels (csrc/cuda/*_kernels.cu) through CMake.
# Needs nvcc and cmake, neither a GPU nor torch. Skips (exit 0, with a message) where nvcc is
# missing; exits non-zero when a kernel fails to compile.
#
# Environment: CUDACXX (nvcc to use; default: nvcc on PATH, else /usr/local/cuda/bin/nvcc),
# CUDA_ARCHS (default "80;90"), MDLM_FAST_WERROR (1 = nvcc warnings are errors; default 1),
# MDLM_FAST_CUDA_CHECK_DIR (build folder; default build/cuda-check), JOBS (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."

nvcc="${CUDACXX:-}"
if [ -n "$nvcc" ] && [ ! -x "$nvcc" ]; then
  echo "check_cuda_compile: FAILED -- CUDACXX=$nvcc is not an executable" >&2
  exit 1
fi
if [ -z "$nvcc" ]; then
  if command -v nvcc >/dev/null 2>&1; then
    nvcc="$(command -v nvcc)"
  elif [ -x /usr/local/cuda/bin/nvcc ]; then
    nvcc=/usr/local/cuda/bin/nvcc
  fi
fi
if [ -z "$nvcc" ] || [ ! -x "$nvcc" ]; then
  echo "check_cuda_compile: SKIPPED -- no nvcc found (set CUDACXX or put nvcc on PATH)"
  exit 0
fi
if ! command -v cmake >/dev/null 2>&1; then
  echo "check_cuda_compile: FAILED -- nvcc found at $nvcc but cmake is missing" >&2
  exit 1
fi

build_dir="${MDLM_FAST_CUDA_CHECK_DIR:-build/cuda-check}"
archs="${CUDA_ARCHS:-80;90}"
werror="${MDLM_FAST_WERROR:-1}"
case "$werror" in 1 | ON | on | true) werror=ON ;; *) werror=OFF ;; esac

echo "check_cuda_compile: $("$nvcc" --version | tail -n 1), archs $archs, build dir $build_dir"
cmake -S . -B "$build_dir" \
  -DCMAKE_CUDA_COMPILER="$nvcc" \
  -DCMAKE_CUDA_ARCHITECTURES="$archs" \
  -DMDLM_FAST_CUDA_CHECK=ON \
  -DMDLM_FAST_TORCH_EXTENSION=OFF \
  -DMDLM_FAST_WERROR="$werror"
cmake --build "$build_dir" -j "${JOBS:-1}"
echo "check_cuda_compile: OK -- every csrc/cuda/*_kernels.cu compiles"
