// Torch-free CUDA kernel of philox_noise: one thread per (key row, Philox block).
#include <algorithm>

#include "mdlm_fast/gumbel.h"
#include "mdlm_fast/philox.h"
#include "philox_kernels.cuh"

namespace mdlm_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 16384;  // grid-stride loop beyond this

// Each thread computes one Philox block (index b of row i) and writes the 2 (double) or 4
// (float) numbers it yields; the last block of a row may be cut short by n.
template <int kDist>
__global__ void __launch_bounds__(kThreads)
    philox_noise_kernel(const int64_t* __restrict__ keys, int64_t rows, uint64_t seed, uint32_t purpose, int64_t n,
                        int64_t blocks_per_row, void* __restrict__ out) {
  constexpr int64_t kPerBlock = kDist == kPhiloxUniform24 ? 4 : 2;
  const int64_t total = rows * blocks_per_row;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / blocks_per_row;
    const int64_t b = idx - i * blocks_per_row;  // < 2^31 since n <= 2^32
    const NoiseKey key = make_noise_key(seed, purpose, keys[3 * i], keys[3 * i + 1], keys[3 * i + 2]);
    const Philox4x32 r = philox_block(key, static_cast<uint32_t>(b));
    const int64_t j = b * kPerBlock;  // first output column of this block
    if (kDist == kPhiloxUniform24) {
      float* o = static_cast<float*>(out) + i * n;
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        if (j + w < n) o[j + w] = uniform24(r.v[w]);
      }
    } else {
      double* o = static_cast<double*>(out) + i * n;
      const double u0 = uniform53(r.v[0], r.v[1]);
      const double u1 = uniform53(r.v[2], r.v[3]);
      // j < n always holds (b < blocks_per_row); only the second number can fall past the end.
      o[j] = kDist == kPhiloxGumbel ? gumbel_from_uniform(u0) : u0;
      if (j + 1 < n) o[j + 1] = kDist == kPhiloxGumbel ? gumbel_from_uniform(u1) : u1;
    }
  }
}

}  // namespace

cudaError_t launch_philox_noise(const int64_t* keys, int64_t rows, uint64_t seed, uint32_t purpose, int64_t n, int dist,
                                void* out, cudaStream_t stream) {
  if (dist != kPhiloxUniform && dist != kPhiloxGumbel && dist != kPhiloxUniform24) return cudaErrorInvalidValue;
  if (rows < 0 || n < 0) return cudaErrorInvalidValue;
  if (rows == 0 || n == 0) return cudaSuccess;  // a grid of zero blocks is an error: launch nothing
  const int64_t per_block = dist == kPhiloxUniform24 ? 4 : 2;
  const int64_t blocks_per_row = (n + per_block - 1) / per_block;
  const int64_t total = rows * blocks_per_row;
  const int64_t grid = std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);
  switch (dist) {
    case kPhiloxUniform:
      philox_noise_kernel<kPhiloxUniform>
          <<<grid, kThreads, 0, stream>>>(keys, rows, seed, purpose, n, blocks_per_row, out);
      break;
    case kPhiloxGumbel:
      philox_noise_kernel<kPhiloxGumbel>
          <<<grid, kThreads, 0, stream>>>(keys, rows, seed, purpose, n, blocks_per_row, out);
      break;
    default:
      philox_noise_kernel<kPhiloxUniform24>
          <<<grid, kThreads, 0, stream>>>(keys, rows, seed, purpose, n, blocks_per_row, out);
      break;
  }
  return cudaGetLastError();
}

}  // namespace mdlm_fast
