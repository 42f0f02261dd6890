// Torch-free CUDA launcher of the philox_noise op (counter-based Philox4x32-10 noise).
//
// Output row i holds numbers 0..n-1 of the stream keyed by (seed, purpose, keys[i]), exactly as
// csrc/cpu/philox_cpu.cpp and mdlm_fast/reference.py compute them (see mdlm_fast/philox.h):
//   uniform   : float64 in (0, 1), two per Philox block (uniform53 of words (0,1) then (2,3))
//   gumbel    : float64, -log(-log(u)) of the uniforms above
//   uniform24 : float32 in [0, 1), four per Philox block (top 24 bits of each word)
// uniform and uniform24 are integer arithmetic plus exact conversions, so they are bit-identical
// to the CPU. gumbel uses CUDA's double-precision log (at most 1 ulp from the correctly rounded
// result, as glibc's), so a value may differ from the CPU's in its last bits.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace mdlm_fast {

enum PhiloxNoiseDist : int {
  kPhiloxUniform = 0,    // float64 output
  kPhiloxGumbel = 1,     // float64 output
  kPhiloxUniform24 = 2,  // float32 output
};

// keys: device pointer to int64 [rows, 3] (step, row, position), contiguous.
// out:  device pointer to [rows, n] contiguous, float64 (uniform, gumbel) or float32 (uniform24).
// The step column is used as step & 0xFFFFFF (callers validate the range). Asynchronous on
// `stream`; returns the launch status (cudaSuccess when rows * n == 0: nothing is launched).
cudaError_t launch_philox_noise(const int64_t* keys, int64_t rows, uint64_t seed, uint32_t purpose, int64_t n, int dist,
                                void* out, cudaStream_t stream);

}  // namespace mdlm_fast
