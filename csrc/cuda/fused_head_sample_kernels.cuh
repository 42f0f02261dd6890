// Torch-free CUDA launcher of fused_head_sample: the vocabulary projection fused with the
// two-level categorical draw of mdlm_fast/categorical.h. W is read once per group of up to 32
// rows. One canonical chunk's logits are held in shared memory -- of one block, or on sm_90 of a
// cluster of 8 blocks -- and per (row, chunk) only a small summary goes to the workspace; only
// calls of <= 64 rows before sm_90 pass their [N, V] logits through the workspace.
//
// Semantics are those of csrc/cpu/fused_head_sample_cpu.cpp and mdlm_fast/reference.py:
//   z = float32(hidden @ weight^T) (+ float32(bias)), z /= temperature when temperature is not 0
//   or 1, banned ids at -inf; canonical chunks of kVocabChunk = 1024 ids. Per chunk c: max_c,
//   first argmax, mass_c = sum of expf(z - max_c) in double, and (temperature > 0) a candidate:
//   the first id whose sequential float64 running sum of expf(z - max_c) exceeds v_c * mass_c,
//   v_c = uniform number 1 + c of the row's Philox stream. Then uniform 0 picks a chunk by the
//   sequential inverse CDF over mass_c * exp(max_c - max), and its candidate is the token.
//   Temperature 0 = argmax (lowest id on ties). logprob = float32(z_tok - max - log(total))
//   (temperature-1 logits at 0).
//
//   Non-finite logits, as on the CPU: a row with a NaN logit, or with every id banned or -inf,
//   gets a code token (kNanRowToken, kEmptyRowToken) that the adapter raises on; a row with a
//   +inf logit takes its lowest +inf id with log-probability 0.
//
// What is guaranteed across devices (and what is not):
//   * the noise: every uniform is the same Philox number on every device (integer arithmetic);
//   * the same tokens as the CPU when the logits are bit-identical on both (e.g. inputs whose dot
//     products are exact in float32) and expf agrees on them -- checked on every CI run by
//     executing these kernels under the CUDA-on-CPU emulator of tests/cuda_emulation (with the
//     host's expf) against the CPU kernel;
//   * otherwise the same distribution, with rare differences in the drawn id: the dot products
//     are accumulated in tensor-core (bf16/fp16) or sequential-k fmaf (fp32) order rather than
//     BLAS order, and CUDA's expf (<= 2 ulp) and double exp/log differ from the CPU's in the last
//     bits. In an emulator experiment with a model of CUDA's expf and a different dot-product
//     order on real activations, 5 of 49,152 draws at temperature 1 (about 1e-4) differed from
//     the CPU, each time by the adjacent id;
//   * on one device, a row's token does not depend on the batch size, on which other rows are in
//     the call or on their order (each row's logits and uniforms are its own).
//   Everything else is the CPU's arithmetic in the CPU's order: mass_c is summed in the lane
//   order of categorical.h, the candidate is exactly the CPU's sequential inverse_cdf result
//   (found by a parallel scan whose error bound is checked, with the sequential scan as fallback
//   when the bound cannot decide), and chunk weights, total and the chunk choice are sequential.
//   These kernels have not yet run on a GPU (scripts/gpu_check.sh is the one-command check).
//
// Requirements: sm_80 or newer for bfloat16/float16 (mma.sync.m16n8k16); any arch for float32.
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

namespace mdlm_fast {

enum class HeadDtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

struct FusedHeadParams {
  HeadDtype dtype = HeadDtype::kFloat32;  // of hidden, weight and bias alike

  // hidden [n, d]: any strides (in elements, may be non-contiguous); copied into the workspace.
  const void* hidden = nullptr;
  int64_t n = 0, d = 0;
  int64_t hidden_stride_row = 0, hidden_stride_col = 1;

  // weight [vocab, d]: column stride 1, any row stride >= d (in elements). 16-byte loads are used
  // when the base is 16-byte aligned and the row stride is a multiple of 16 bytes, element loads
  // otherwise (same results).
  const void* weight = nullptr;
  int64_t vocab = 0;  // 1 <= vocab <= INT32_MAX
  int64_t weight_stride_row = 0;

  const void* bias = nullptr;  // [vocab] contiguous, or nullptr

  const int64_t* keys = nullptr;  // [n, 3] contiguous (step, row, position)
  uint64_t seed = 0;
  // Per-row seeds [n] (the uint64 bit patterns), overriding `seed`, or nullptr: rows of different
  // requests in one call keep their own streams.
  const int64_t* seeds = nullptr;
  uint32_t purpose = 0;
  float temperature = 1.f;  // 0 = argmax

  // Banned ids (any order, duplicates allowed). Ids outside [0, vocab) match nothing (callers
  // validate). n_banned may be 0 (banned may then be nullptr).
  const int64_t* banned = nullptr;
  int64_t n_banned = 0;

  int64_t* tokens = nullptr;  // [n] out; kNanRowToken / kEmptyRowToken for rows that cannot be drawn
  float* logprob = nullptr;   // [n] out (NaN for such rows), or nullptr to skip
};

// Token codes of rows with nothing to draw; the adapter raises the CPU kernel's error on them.
constexpr int64_t kEmptyRowToken = -1;  // every id banned or -inf
constexpr int64_t kNanRowToken = -2;    // a NaN logit

// Bytes of device workspace launch_fused_head_sample needs (a multiple of 256; the workspace
// must be 256-byte aligned, as cudaMalloc and the PyTorch allocator give). Rows are processed
// in passes of at most 2048, so the size is bounded in n: about 2048 * (d * elem + 32 * V / 1024)
// bytes at most.
size_t fused_head_sample_workspace_bytes(HeadDtype dtype, int64_t n, int64_t d, int64_t vocab);

// Enqueues the kernels on `stream` (no synchronization, no allocation, graph-capturable).
// Returns cudaErrorInvalidValue for bad sizes or a too-small workspace, else the launch status.
// n == 0 launches nothing.
cudaError_t launch_fused_head_sample(const FusedHeadParams& params, void* workspace, size_t workspace_bytes,
                                     cudaStream_t stream);

}  // namespace mdlm_fast
