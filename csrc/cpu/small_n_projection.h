// The vocabulary projection of fused_head_sample for a few rows (N <= kSmallNMaxRows): a GEMV-shaped
// read of W, bound by memory bandwidth, which BLAS's small-N kernels leave at half the read rate.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace mdlm_fast {

constexpr int64_t kSmallNMaxRows = 8;

// Whether project_small_n serves `n` rows of this dtype on this CPU (AVX-512 found at run time).
bool small_n_projection_available(at::ScalarType dtype, int64_t n);

// out[r * ld_out + j] = sum_k hidden[r][k] * W[begin + j][k] in float32, for r < n, j < cols.
// hidden_f32: [n, d] float32 contiguous; hidden_raw: the same rows in `dtype` (bf16 rows feed the
// bf16 dot-product instruction directly); weight: [V, d] rows of `dtype`, row stride ld_w.
// Every product of two bf16 (or fp32 of a bf16) is exact in fp32; only the order of the sums
// differs from a GEMM, so logits that are exact in fp32 come out identical.
void project_small_n(const float* hidden_f32, const void* hidden_raw, const void* weight, at::ScalarType dtype,
                     int64_t n, int64_t d, int64_t ld_w, int64_t begin, int64_t cols, float* out, int64_t ld_out);

}  // namespace mdlm_fast
