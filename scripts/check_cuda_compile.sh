#!/usr/bin/env bash
# nvcc compile check of the torch-free CUDA kernels (csrc/cuda/*_kernels.cu) through CMake, then
# of the torch adapters (csrc/cuda/*_cuda.cu) against the installed torch's headers. Needs nvcc
# and cmake, no GPU. Skips (exit 0, with a message) where nvcc is missing; exits non-zero when a
# file fails to compile.
#
# The adapters include c10/cuda headers. A CPU-only torch wheel ships them but not the one header
# its CUDA build generates (c10/cuda/impl/cuda_cmake_macros.h, which only defines
# C10_CUDA_BUILD_SHARED_LIBS); the check supplies that single definition in its build folder and
# compiles every adapter to an object file (no linking: a CPU torch has no CUDA libraries). The
# adapter check is skipped with a message where no Python with torch is found.
#
# Environment: CUDACXX (nvcc to use; default: nvcc on PATH, else /usr/local/cuda/bin/nvcc),
# CUDA_ARCHS (default "80;90"), MDLM_FAST_WERROR (1 = nvcc warnings are errors; default 1),
# MDLM_FAST_CUDA_CHECK_DIR (build folder; default build/cuda-check), JOBS (default 1),
# PYTHON (interpreter with torch for the adapter check; default .venv/bin/python, else python3),
# MDLM_FAST_CHECK_ADAPTERS (0 = kernels only; default 1).
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

if [ "${MDLM_FAST_CHECK_ADAPTERS:-1}" = "0" ]; then
  echo "check_cuda_compile: adapters SKIPPED -- MDLM_FAST_CHECK_ADAPTERS=0"
  exit 0
fi
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
if ! torch_includes="$("$python" -c 'import torch.utils.cpp_extension as c; print(" ".join(c.include_paths()))' 2>/dev/null)"; then
  echo "check_cuda_compile: adapters SKIPPED -- no torch importable with $python"
  exit 0
fi
read -r torch_include _ <<<"$torch_includes"
stub="$build_dir/adapter-stub"
if [ ! -f "$torch_include/c10/cuda/impl/cuda_cmake_macros.h" ]; then
  mkdir -p "$stub/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$stub/c10/cuda/impl/cuda_cmake_macros.h"
  echo "check_cuda_compile: this torch has no c10/cuda/impl/cuda_cmake_macros.h (CPU build); supplying its one definition"
fi
abi="$("$python" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')"
# The flags cpp_extension gives nvcc (--expt-relaxed-constexpr, the __CUDA_NO_HALF_* defines).
read -r -a torch_nvcc_flags <<<"$("$python" -c 'import torch.utils.cpp_extension as c; print(" ".join(c.COMMON_NVCC_FLAGS))')"
first_arch="${archs%%;*}"
includes=(-Icsrc -Icsrc/include -Icsrc/cuda -I"$stub")
for dir in $torch_includes; do includes+=(-I"$dir"); done
pids=()
for adapter in csrc/cuda/*_cuda.cu; do
  obj="$build_dir/$(basename "$adapter" .cu).o"
  # -std=c++20: what torch's cpp_extension passes for these headers.
  "$nvcc" -std=c++20 -arch="sm_$first_arch" "${torch_nvcc_flags[@]}" -c "$adapter" "${includes[@]}" \
    -D_GLIBCXX_USE_CXX11_ABI="$abi" \
    -DMDLM_FAST_WITH_CUDA -o "$obj" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
if [ "$status" -ne 0 ]; then
  echo "check_cuda_compile: FAILED -- a csrc/cuda/*_cuda.cu adapter does not compile" >&2
  exit 1
fi
echo "check_cuda_compile: OK -- every csrc/cuda/*_cuda.cu adapter compiles against $(dirname "$torch_include")"
