// Torch-free CUDA kernels of fused_head_sample (see fused_head_sample_kernels.cuh for the contract).
//
// Three kernels per pass of at most kMaxRowsPerPass rows:
//
//  1. pack_hidden: hidden (any strides) -> workspace [rows_pad, d_pad] in its own dtype, zero
//     padded to a multiple of 8 rows (one mma n-tile) and of 64 columns (one k-block), so the
//     projection reads aligned 16-byte vectors without bounds checks.
//
//  2. the projection and the per-chunk summaries (the memory-bound part), on one of three grids:
//     small calls (rows_pad <= kSplitMaxRows) split each chunk into 8 slices of 128 ids so that
//     the grid fills the GPU -- on sm_90+ the 8 slices form a thread-block cluster and combine
//     their logits in distributed shared memory (cluster_*_kernel); before sm_90 they go through
//     the workspace to a summary kernel (slice_*_kernel, chunk_summary_kernel). Larger calls use
//     the chunk grid: one block of 8 warps per (canonical chunk, row group of
//     R = 8, 16 or 32 rows). The block computes the chunk's 1024 logits for its R rows into shared
//     memory (W read once per row group; for N <= 32 that is once in total), then one warp per
//     row derives the row's chunk summary: max, first argmax, mass (the double sum of
//     expf(z - max) in the lane order of categorical.h) and, when sampling, the candidate id drawn
//     with v_c = uniform 1 + c.
//     bf16/fp16: tensor cores (mma.sync.m16n8k16, fp32 accumulate). Vocabulary ids are the M
//       dimension (each warp tile: 2 m-tiles of 16 = 32 ids; a chunk block's 8 warps take 4 tiles each),
//       rows the N dimension (n-tiles of 8). A and B fragments come straight from global memory:
//       each lane reads 32 contiguous bytes of a W row per 64-wide k-block (every 128-byte line
//       is consumed by one warp), the packed hidden rows are shared by all warps via L1/L2. The k
//       index inside a 64-wide k-block is permuted -- identically for A and B, so every dot
//       product keeps exactly its d products -- so that fragments are 16-byte loads.
//     float32: SIMT, lane = vocabulary id, fmaf over k in increasing order, one accumulator per row.
//     Row groups of one chunk are adjacent in block order, so they share the W chunk through L2.
//
//  3. select (one warp per row): merges the row's chunk summaries (row max, first argmax), chunk
//     weights mass_c * exp(max_c - max), their sequential total, the chunk by the sequential
//     inverse CDF with uniform 0, and writes the chunk's candidate (or the argmax at temperature 0)
//     and its log-probability.
//
// Non-finite logits follow the rule of every backend (see fused_head_sample_kernels.cuh): a chunk
// holding a NaN records max = NaN, one holding +inf records max = +inf and its first +inf id, and
// neither draws; select then writes kNanRowToken for a row with a NaN, the first +inf id with
// log-probability 0 for a row with +inf, and kEmptyRowToken for a row with nothing to draw. The
// adapter turns the two codes into the CPU kernel's errors.
//
// The candidate search (in kernel 2) must return exactly inverse_cdf(len, v * mass, e) of
// categorical.h: the first id whose *sequential* float64 running sum of e exceeds the target.
// A warp computes all running sums P_j with a parallel scan instead, whose rounding differs from
// the sequential R_j by at most ~1.2e-13 * R_j (both are sums of <= 1024 non-negative terms; see
// kScanSlack). The warp takes the first j that is not surely below the target; if it is surely
// above, it is the sequential answer; if no j is, the sequential scan never exceeds the target
// and returns the last positive id; otherwise (the target within ~4e-13 relative of a running sum,
// probability ~1e-12) lane 0 runs the sequential inverse_cdf itself.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <type_traits>

#include "fused_head_sample_geometry.h"
#include "fused_head_sample_kernels.cuh"
#include "mdlm_fast/categorical.h"
#include "mdlm_fast/philox.h"

namespace mdlm_fast {
namespace head {

constexpr int kTile = 32;                              // ids per warp tile
constexpr int kChunk = static_cast<int>(kVocabChunk);  // 1024
// 8 warps: with the pipelined k-loop's registers (up to ~130 at 32 rows) a 16-warp block would
// sit at its 128-register ceiling; the block is limited to one per SM by its shared memory anyway.
constexpr int kChunkWarps = 8;  // warps per chunk block
constexpr int kChunkThreads = kChunkWarps * 32;
constexpr int kTilesPerChunk = kChunk / kTile;  // 32 = 4 per warp
constexpr int kKBlock = 64;                     // d is padded to a multiple of this
constexpr int kSelectWarps = 4;                 // rows per select block
constexpr int64_t kMaxRowsPerPass = 2048;
constexpr int kMaxGroupRows = 32;
// Shared-memory layout of one row's chunk logits: one pad float after every 32 ids, so that a
// lane walking its own 32 consecutive ids (the epilogue) and the mma epilogue's stores are both
// bank-conflict free; the row stride (1060 = 4 mod 32) spreads the 4 rows a store touches.
constexpr int kZRowStride = kChunk + kChunk / 32 + 4;  // 1060 floats
// Slack of the scan check, relative to the running sum: |sequential - parallel| <= (1023 + 70) *
// 2^-53 * sum ~= 1.22e-13 * sum for <= 1024 non-negative terms (recursive-summation bound; the
// parallel scan chains <= 70 roundings); 4e-13 leaves a factor of 3.
constexpr double kScanSlack = 4e-13;
// The split grid of small calls (rows_pad <= kSplitMaxRows): blocks of kSliceWarps warps, one
// 32-id tile each, so a block covers kSliceIds ids -- a slice of a canonical chunk -- and V =
// 50258 gives 393 blocks per row group (about 3 per SM on an H100) instead of 50. The slices'
// finished logits go to the workspace ([rows][chunk][kZChunkStride], zidx layout); the summary
// kernel then runs the unchanged per-(row, chunk) epilogue on them.
constexpr int kSliceWarps = 4;
constexpr int kSliceThreads = kSliceWarps * 32;
constexpr int kSliceIds = kSliceWarps * kTile;  // 128
// slice_mma_kernel is declared for three resident blocks per SM (the ~3 per SM an H100 gets at V =
// 50258): a register ceiling of 168. Without it ptxas held the 32-row element-load variant at 128
// registers and spilled; the SIMT slices need ~180 and keep the default ceiling of 255.
constexpr int kSliceMinBlocks = 3;
constexpr int kSlicesPerChunk = kChunk / kSliceIds;  // 8
constexpr int64_t kSplitMaxRows = 64;
constexpr int kZChunkStride = kChunk + kChunk / 32;  // 1056 floats: zidx(1023) = 1054
constexpr int kSummaryWarps = 4;                     // (row, chunk) pairs per summary block
// The cluster grid (sm_90+) keeps the split grid's slice blocks but makes the kSlicesPerChunk
// slices of one (chunk, row group) a thread-block cluster: the logits stay in the blocks' shared
// memory and are combined over distributed shared memory, never through the workspace.
constexpr int kSliceRowStride = kSliceIds + 4;                         // floats per row of one slice
constexpr int kClusterRowsPerBlock = kMaxGroupRows / kSlicesPerChunk;  // rows one block summarizes
static_assert(kClusterRowsPerBlock <= kSliceWarps, "one warp per summarized row");
static_assert(kSlicesPerChunk <= 8, "8 blocks is the portable cluster size");
static_assert(kVocabChunk == 1024, "the chunk block holds one canonical chunk in shared memory");
static_assert(kChunkWarps * 4 == kTilesPerChunk, "each warp owns four 32-id tiles of the chunk");
static_assert(kMaxRowsPerPass % kMaxGroupRows == 0, "passes must keep rows in the same n-tile slots");
static_assert(kKBlock == 64, "the mma k permutation assumes 64-wide k-blocks");
static_assert(kSlicesPerChunk * kSliceIds == kChunk, "slices never straddle a canonical chunk");

__host__ __device__ __forceinline__ int zidx(int j) { return j + (j >> 5); }

// ---------------------------------------------------------------------------------------------
// Element types. bf16/fp16 travel as raw 16-bit patterns (uint16_t) and are converted only where
// a float is needed; 0 bits are +0.0 in all three types, which the zero padding relies on.
struct Bf16Tag {
  using Storage = uint16_t;
};
struct Fp16Tag {
  using Storage = uint16_t;
};
struct Fp32Tag {
  using Storage = float;
};

__device__ __forceinline__ float to_float(Bf16Tag, uint16_t bits) {
  return __bfloat162float(__ushort_as_bfloat16(bits));
}
__device__ __forceinline__ float to_float(Fp16Tag, uint16_t bits) { return __half2float(__ushort_as_half(bits)); }
__device__ __forceinline__ float to_float(Fp32Tag, float x) { return x; }

// ---------------------------------------------------------------------------------------------
// Workspace layout, shared by the size function and the launcher.
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline size_t align256(size_t x) { return (x + 255) & ~static_cast<size_t>(255); }

struct Layout {
  int64_t rows_cap = 0;      // rows per pass at most
  int64_t rows_pad_cap = 0;  // rows_cap rounded up to an n-tile (8)
  int64_t d_pad = 0;         // d rounded up to a k-block (64)
  int64_t n_chunks = 0;      // canonical chunks of kVocabChunk ids
  // [rows_pad_cap, d_pad] packed hidden; then per (row, chunk), [rows_cap, n_chunks] each:
  size_t hidden_off = 0;
  size_t max_off = 0;     // float  chunk max (-inf: every id banned or -inf)
  size_t arg_off = 0;     // int32  first argmax (-1: none)
  size_t mass_off = 0;    // double sum expf(z - max), eight-lane order
  size_t cand_off = 0;    // int32  candidate id (-1: none drawn)
  size_t logit_off = 0;   // float  candidate's z
  size_t weight_off = 0;  // double chunk weight (select kernel scratch)
  size_t total = 0;
  // Split grid only (rows_cap <= kSplitMaxRows): float logits [rows_cap][n_chunks][kZChunkStride].
  bool split = false;
  size_t logits_off = 0;
};

inline size_t element_size(HeadDtype dtype) { return dtype == HeadDtype::kFloat32 ? 4 : 2; }

inline Layout make_layout(HeadDtype dtype, int64_t n, int64_t d, int64_t vocab) {
  Layout l;
  l.rows_cap = std::min<int64_t>(n, kMaxRowsPerPass);
  l.rows_pad_cap = round_up(l.rows_cap, 8);
  l.d_pad = round_up(d, kKBlock);
  l.n_chunks = num_vocab_chunks(vocab);
  const size_t per_chunk = static_cast<size_t>(l.rows_cap * l.n_chunks);
  size_t off = 0;
  // Each region starts where the one before it ends, on a 256-byte boundary.
  const auto region = [&off](size_t bytes) {
    const size_t at = off;
    off += align256(bytes);
    return at;
  };
  l.hidden_off = region(static_cast<size_t>(l.rows_pad_cap * l.d_pad) * element_size(dtype));
  l.max_off = region(per_chunk * sizeof(float));
  l.arg_off = region(per_chunk * sizeof(int32_t));
  l.mass_off = region(per_chunk * sizeof(double));
  l.cand_off = region(per_chunk * sizeof(int32_t));
  l.logit_off = region(per_chunk * sizeof(float));
  l.weight_off = region(per_chunk * sizeof(double));
  l.split = l.rows_pad_cap <= kSplitMaxRows;
  if (l.split) l.logits_off = region(per_chunk * kZChunkStride * sizeof(float));
  l.total = off;
  return l;
}

// ---------------------------------------------------------------------------------------------
// Small device helpers.

// (max, argmax) under the tie rule of categorical.h (max_beats); arg -1 = nothing above -inf seen.
struct MaxArg {
  float max;
  int arg;
};

__device__ __forceinline__ MaxArg better(MaxArg a, MaxArg b) {
  if (b.arg < 0) return a;
  if (a.arg < 0) return b;
  return max_beats(b.max, b.arg, a.max, a.arg) ? b : a;
}

__device__ __forceinline__ MaxArg shfl_xor(MaxArg v, int offset) {
  MaxArg o;
  o.max = __shfl_xor_sync(0xffffffffu, v.max, offset);
  o.arg = __shfl_xor_sync(0xffffffffu, v.arg, offset);
  return o;
}

// Bit j set iff id base + j is banned (j < 32). Warp-collective: every lane must call it. The
// banned list is scanned once per 32-id tile, never per logit.
__device__ __forceinline__ uint32_t banned_mask_warp(const int64_t* __restrict__ banned, int64_t n_banned,
                                                     int64_t base) {
  const int lane = threadIdx.x & 31;
  uint32_t mask = 0;
  for (int64_t i = lane; i < n_banned; i += 32) {
    const int64_t off = banned[i] - base;
    if (off >= 0 && off < 32) mask |= 1u << off;
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) mask |= __shfl_xor_sync(0xffffffffu, mask, offset);
  return mask;
}

// (std::min is a constexpr host function: not callable from device code without
// --expt-relaxed-constexpr, which the CMake compile check does not pass.)
__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ bool divides_by_temperature(float temperature) {
  return temperature > 0.f && temperature != 1.f;
}

// The CPU's chunk_logits epilogue for one logit: (+ bias) then (/ temperature), banned -> -inf.
// Explicit round-to-nearest intrinsics so that no compiler flag can contract or approximate them.
template <typename Tag>
__device__ __forceinline__ float finish_logit(float acc, int64_t id, const typename Tag::Storage* __restrict__ bias,
                                              float temperature, bool banned) {
  float z = acc;
  if (bias != nullptr) z = __fadd_rn(z, to_float(Tag{}, bias[id]));
  if (divides_by_temperature(temperature)) z = __fdiv_rn(z, temperature);
  return banned ? -INFINITY : z;
}

// The CPU's shifted_exp shift: the max, or 0 when it is not finite (all -inf).
__device__ __forceinline__ float exp_shift(float max) { return isfinite(max) ? max : 0.f; }

// ---------------------------------------------------------------------------------------------
// Tensor-core tile (bf16/fp16): one warp, 32 vocabulary ids [base, base + 32) x NT n-tiles of 8
// packed hidden rows starting at row0. acc[m][nt][r] follows the mma C layout: vocab id
// base + 16 m + g + 8 (r >> 1), hidden row row0 + 8 nt + 2 t + (r & 1), g = lane / 4, t = lane % 4.
//
// k permutation (per 64-wide k-block kb and mma step s = 0..3): logical k 2t, 2t+1 of the mma
// <-> physical kb + 16t + 4s + {0, 1}; logical 2t+8, 2t+9 <-> kb + 16t + 4s + {2, 3}. It is a
// bijection of the 64 k's, identical for A (W) and B (hidden), so the products summed per
// output element are exactly the d products of the dot product. Each lane thus needs the 16
// contiguous elements [kb + 16t, kb + 16t + 16) of each of its rows: two 16-byte loads.
//
// An output element's value depends only on its vocabulary id's W row and its hidden row (the
// k order is fixed), never on which other rows share the n-tiles: a row's logits are the same
// whatever the batch.

template <bool kVec>
__device__ __forceinline__ uint4 load8(const uint16_t* __restrict__ row, int64_t k, int64_t d) {
  if (row == nullptr || k >= d) return make_uint4(0u, 0u, 0u, 0u);
  // row + k is 16-byte aligned when kVec: base aligned, row stride a multiple of 8 elements, k % 8 == 0.
  if (kVec && k + 8 <= d) return __ldg(reinterpret_cast<const uint4*>(row + k));
  uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    if (k + e < d) w[e >> 1] |= static_cast<uint32_t>(row[k + e]) << (16 * (e & 1));  // low half = lower k
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// 32-bit word w (0..7) of 16 contiguous 16-bit elements held as two uint4: elements 2w, 2w+1.
__device__ __forceinline__ uint32_t word16(const uint4 (&v)[2], int w) {
  const uint4& h = v[w >> 2];
  switch (w & 3) {
    case 0:
      return h.x;
    case 1:
      return h.y;
    case 2:
      return h.z;
    default:
      return h.w;
  }
}

template <typename Tag>
__device__ __forceinline__ void mma_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if (std::is_same<Tag, Bf16Tag>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
#else
  // Built for an arch without bf16/fp16 mma.sync; the launcher refuses such devices first.
  __trap();
#endif
}

// The 8 16-byte W loads of one lane for one k-block: elements k0 .. k0 + 15 of its four rows.
template <bool kVecW>
__device__ __forceinline__ void load_w_kblock(const uint16_t* const (&wrow)[2][2], int64_t k0, int64_t d,
                                              uint4 (&a)[2][2][2]) {
#pragma unroll
  for (int m = 0; m < 2; ++m) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      a[m][h][0] = load8<kVecW>(wrow[m][h], k0, d);
      a[m][h][1] = load8<kVecW>(wrow[m][h], k0 + 8, d);
    }
  }
}

template <typename Tag, int NT, bool kVecW>
__device__ __forceinline__ void mma_warp_tile(const uint16_t* __restrict__ W, int64_t ldw, int64_t vocab, int64_t d,
                                              int64_t d_pad, int64_t base, const uint16_t* __restrict__ H, int64_t ldh,
                                              int64_t row0, int nt_count, float (&acc)[2][NT][4]) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  // W rows of this lane: [m][h] -> id base + 16 m + 8 h + g; ids past the vocabulary read as 0.
  const uint16_t* wrow[2][2];
#pragma unroll
  for (int m = 0; m < 2; ++m) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t id = base + 16 * m + 8 * h + g;
      wrow[m][h] = id < vocab ? W + id * ldw : nullptr;
    }
  }
#pragma unroll
  for (int m = 0; m < 2; ++m) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[m][nt][r] = 0.f;
    }
  }
  // Software pipeline: the W loads of k-block kb + 64 are issued before the mma steps of kb, so a
  // warp keeps two k-blocks of W in flight instead of waiting one DRAM round per k-block.
  uint4 a[2][2][2];  // [m][h][half]: elements k0 + 8 half .. + 7 of row (m, h); 0 past d
  load_w_kblock<kVecW>(wrow, 16 * t, d, a);
  for (int64_t kb = 0; kb < d_pad; kb += kKBlock) {
    const int64_t k0 = kb + 16 * t;
    const bool more = kb + kKBlock < d_pad;  // warp-uniform
    uint4 next[2][2][2];
    if (more) load_w_kblock<kVecW>(wrow, k0 + kKBlock, d, next);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      if (nt < nt_count) {  // warp-uniform
        // Packed hidden: aligned (ldh % 64 == 0, base 256-aligned), zero past d and past the rows.
        const uint16_t* hrow = H + (row0 + 8 * nt + g) * ldh + k0;
        uint4 b[2];
        b[0] = __ldg(reinterpret_cast<const uint4*>(hrow));
        b[1] = __ldg(reinterpret_cast<const uint4*>(hrow + 8));
#pragma unroll
        for (int s = 0; s < 4; ++s) {
#pragma unroll
          for (int m = 0; m < 2; ++m) {
            mma_16816<Tag>(acc[m][nt], word16(a[m][0], 2 * s), word16(a[m][1], 2 * s), word16(a[m][0], 2 * s + 1),
                           word16(a[m][1], 2 * s + 1), word16(b, 2 * s), word16(b, 2 * s + 1));
          }
        }
      }
    }
    if (more) {
#pragma unroll
      for (int m = 0; m < 2; ++m) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          a[m][h][0] = next[m][h][0];
          a[m][h][1] = next[m][h][1];
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SIMT tile (float32): acc[r] = sum_k H[r][k] * w[k], fmaf in increasing k, for nr_count rows
// starting at H (row stride ldh). The per-element operation sequence does not depend on NR or
// nr_count, so a row's logits are the same whatever the batch.

template <bool kVec>
__device__ __forceinline__ float4 load4(const float* __restrict__ row, int64_t k, int64_t d) {
  if (row == nullptr || k >= d) return make_float4(0.f, 0.f, 0.f, 0.f);
  if (kVec && k + 4 <= d) return __ldg(reinterpret_cast<const float4*>(row + k));
  float v[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    if (k + e < d) v[e] = row[k + e];
  }
  return make_float4(v[0], v[1], v[2], v[3]);
}

template <int NR, bool kVecW>
__device__ __forceinline__ void simt_accumulate(const float* __restrict__ wrow, int64_t d, const float* __restrict__ H,
                                                int64_t ldh, int nr_count, float (&acc)[NR]) {
#pragma unroll
  for (int r = 0; r < NR; ++r) acc[r] = 0.f;
  // Past d both w (load4) and the packed hidden (padded to a multiple of 64) are 0, and
  // fmaf(0, 0, acc) == acc. Four float4 of W are loaded before the first is used: 64 bytes in
  // flight per lane rather than 16; the fmaf order per accumulator stays increasing k.
  for (int64_t k = 0; k < d; k += 16) {
    float4 w[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) w[u] = load4<kVecW>(wrow, k + 4 * u, d);
#pragma unroll
    for (int u = 0; u < 4; ++u) {
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        if (r < nr_count) {
          const float4 h = __ldg(reinterpret_cast<const float4*>(H + r * ldh + k + 4 * u));
          acc[r] = fmaf(h.x, w[u].x, acc[r]);
          acc[r] = fmaf(h.y, w[u].y, acc[r]);
          acc[r] = fmaf(h.z, w[u].z, acc[r]);
          acc[r] = fmaf(h.w, w[u].w, acc[r]);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Kernel 1: pack hidden.

template <typename S>
__global__ void __launch_bounds__(256)
    pack_hidden_kernel(const S* __restrict__ src, int64_t stride_row, int64_t stride_col, int64_t rows, int64_t d,
                       S* __restrict__ dst, int64_t rows_pad, int64_t d_pad) {
  const int64_t total = rows_pad * d_pad;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = idx / d_pad, k = idx - j * d_pad;
    dst[idx] = (j < rows && k < d) ? src[j * stride_row + k * stride_col] : S(0);
  }
}

// ---------------------------------------------------------------------------------------------
// Kernel 2: chunk summaries and candidates.

struct ChunkRecords {
  float* max;
  int32_t* arg;
  double* mass;
  int32_t* cand;
  float* cand_logit;
};

template <typename Tag>
struct ChunkArgs {
  using S = typename Tag::Storage;
  const S* W;
  int64_t ldw, vocab, d, d_pad;
  const S* bias;
  const S* H;  // packed [rows_pad, d_pad]
  int64_t ldh;
  int64_t rows, rows_pad;  // this pass
  int64_t n_chunks, row_groups;
  float temperature;
  const int64_t* banned;
  int64_t n_banned;
  const int64_t* keys;  // this pass's rows
  uint64_t seed;
  const int64_t* seeds;  // this pass's rows' own seeds, or nullptr (all rows: seed)
  uint32_t purpose;
  ChunkRecords rec;  // [rows, n_chunks] each
};

// The chunk's mass in the lane order of categorical.h, so that it is the CPU's to the bit: warp
// lane L < kMassLanes is mass lane L. Warp-collective; every lane gets the sum.
__device__ __forceinline__ double cpu_order_mass(const float* __restrict__ zr, int len, float shift) {
  const int lane = threadIdx.x & 31;
  double part = 0.0;
  if (lane < kMassLanes) {
    const int full = static_cast<int>(mass_full_groups_end(len));
    for (int j = lane; j < full; j += kMassLanes) part += static_cast<double>(expf(zr[zidx(j)] - shift));
    if (lane == kMassTailLane) {
      for (int j = full; j < len; ++j) part += static_cast<double>(expf(zr[zidx(j)] - shift));
    }
  }
  double l[kMassLanes];
#pragma unroll
  for (int k = 0; k < kMassLanes; ++k) l[k] = __shfl_sync(0xffffffffu, part, k);
  return combine_mass_lanes(l);
}

// One row's summary of one chunk, from its logits zr (zidx layout, len ids). Warp-collective.
// Lane L owns ids [32 L, 32 L + 32) of the chunk, walked in increasing order.
__device__ void chunk_row_epilogue(const float* __restrict__ zr, int len, int64_t begin, int64_t chunk, int64_t row,
                                   bool draw, const NoiseKey& key, const ChunkRecords& rec, int64_t n_chunks) {
  const int lane = threadIdx.x & 31;
  const int j0 = lane * kTile, j1 = min(len, j0 + kTile);  // j1 <= j0 for lanes past the end
  const int64_t out = row * n_chunks + chunk;

  // Max and first argmax, as at::max; NaN seen apart (at::max would return it as the max).
  MaxArg best{-INFINITY, -1};
  bool nan_seen = false;
  for (int j = j0; j < j1; ++j) {
    const float z = zr[zidx(j)];
    nan_seen |= isnan(z);
    if (max_beats(z, j, best.max, best.arg)) best = MaxArg{z, j};  // chunk-local id for now
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) best = better(best, shfl_xor(best, offset));
  const bool chunk_nan = __ballot_sync(0xffffffffu, nan_seen) != 0u;
  if (best.arg < 0 || chunk_nan || best.max == INFINITY) {
    // Every id banned or -inf (an empty summary), or a NaN or +inf that decides the row alone
    // (see select_kernel): no mass, no candidate.
    if (lane == 0) {
      rec.max[out] = chunk_nan ? NAN : best.arg < 0 ? -INFINITY : best.max;
      rec.arg[out] = chunk_nan || best.arg < 0 ? -1 : static_cast<int32_t>(begin + best.arg);
      rec.mass[out] = 0.0;
      rec.cand[out] = -1;
      rec.cand_logit[out] = -INFINITY;
    }
    return;
  }
  const float shift = exp_shift(best.max);
  const double mass = cpu_order_mass(zr, len, shift);

  int cand = -1;
  if (draw) {  // block-uniform
    const double target = uniform53_at(key, static_cast<uint32_t>(1 + chunk)) * mass;
    // Pass A: this lane's segment total; inclusive then exclusive warp scan of the totals.
    double seg = 0.0;
    for (int j = j0; j < j1; ++j) seg += static_cast<double>(expf(zr[zidx(j)] - shift));
    double incl = seg;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const double y = __shfl_up_sync(0xffffffffu, incl, offset);
      if (lane >= offset) incl = y + incl;
    }
    double running = __shfl_up_sync(0xffffffffu, incl, 1);
    if (lane == 0) running = 0.0;
    // Pass B: running sums P_j; the first j not surely below the target, and whether it is surely
    // above; the last positive id.
    int first = INT_MAX, last_positive = -1;
    bool surely_above = false;
    for (int j = j0; j < j1; ++j) {
      const double w = static_cast<double>(expf(zr[zidx(j)] - shift));
      if (w > 0.0) last_positive = j;
      running += w;
      if (first == INT_MAX) {
        const double slack = kScanSlack * running;
        if (!(running < target - slack)) {
          first = j;
          surely_above = running > target + slack;
        }
      }
    }
    int first_all = first;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      first_all = min(first_all, __shfl_xor_sync(0xffffffffu, first_all, offset));
      last_positive = max(last_positive, __shfl_xor_sync(0xffffffffu, last_positive, offset));
    }
    if (first_all == INT_MAX) {
      // Every running sum is surely <= target: the sequential scan falls through to its clamp.
      cand = last_positive >= 0 ? last_positive : 0;
    } else {
      const unsigned owner = __ffs(__ballot_sync(0xffffffffu, first == first_all)) - 1;
      if (__shfl_sync(0xffffffffu, surely_above, owner)) {
        cand = first_all;
      } else {  // undecidable from the parallel sums: the sequential scan itself (rare)
        int seq = 0;
        if (lane == 0) {
          seq = static_cast<int>(inverse_cdf(len, target, [&](int64_t j) {
            return static_cast<double>(expf(zr[zidx(static_cast<int>(j))] - shift));
          }));
        }
        cand = __shfl_sync(0xffffffffu, seq, 0);
      }
    }
  }
  if (lane == 0) {
    rec.max[out] = best.max;
    rec.arg[out] = static_cast<int32_t>(begin + best.arg);
    rec.mass[out] = mass;
    rec.cand[out] = cand >= 0 ? static_cast<int32_t>(begin + cand) : -1;
    rec.cand_logit[out] = cand >= 0 ? zr[zidx(cand)] : -INFINITY;
  }
}

// The chunk's rows after the logits are in shared memory: one warp per row.
template <int R>
__device__ __forceinline__ void chunk_block_epilogue(const float* s_z, int len, int64_t begin, int64_t chunk,
                                                     int64_t row0, int64_t rows, float temperature,
                                                     const int64_t* __restrict__ keys, uint64_t seed,
                                                     const int64_t* __restrict__ seeds, uint32_t purpose,
                                                     const ChunkRecords& rec, int64_t n_chunks) {
  const int warp = threadIdx.x >> 5;
  const int rows_here = static_cast<int>(min64(R, rows - row0));
  const bool draw = temperature > 0.f;
  for (int rl = warp; rl < rows_here; rl += kChunkWarps) {  // warp-uniform
    const int64_t row = row0 + rl;
    const int64_t* k = keys + 3 * row;
    const NoiseKey key = make_noise_key(row_seed(seed, seeds, row), purpose, k[0], k[1], k[2]);
    chunk_row_epilogue(s_z + rl * kZRowStride, len, begin, chunk, row, draw, key, rec, n_chunks);
  }
}

// One warp's 32-id tile [base, base + 32) for the rows of its group starting at row0: the finished
// logits (finish_logit: bias, temperature, banned ids) handed to store(r, local, z), r the row in
// the group, local the id in the tile. Every grid computes a logit through this one path, so all
// give the same bits; rows at or past a.rows are not handed on. Warp-collective.
template <typename Tag, int NT, bool kVecW, typename Store>
__device__ __forceinline__ void mma_tile_logits(const ChunkArgs<Tag>& a, int64_t base, int64_t row0, Store store) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int nt_count = static_cast<int>(min64(NT, (a.rows_pad - row0) / 8));
  float acc[2][NT][4];
  mma_warp_tile<Tag, NT, kVecW>(a.W, a.ldw, a.vocab, a.d, a.d_pad, base, a.H, a.ldh, row0, nt_count, acc);
  const uint32_t bmask = banned_mask_warp(a.banned, a.n_banned, base);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = 8 * nt + 2 * t + i;
      if (nt >= nt_count || row0 + r >= a.rows) continue;
#pragma unroll
      for (int m = 0; m < 2; ++m) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int local = 16 * m + 8 * h + g;
          const int64_t id = base + local;
          if (id < a.vocab) {
            store(r, local, finish_logit<Tag>(acc[m][nt][2 * h + i], id, a.bias, a.temperature, (bmask >> local) & 1u));
          }
        }
      }
    }
  }
}

// The float32 (SIMT) counterpart: lane = id in the tile, one accumulator per row.
template <int NR, bool kVecW, typename Store>
__device__ __forceinline__ void simt_tile_logits(const ChunkArgs<Fp32Tag>& a, int64_t base, int64_t row0, Store store) {
  const int lane = threadIdx.x & 31;
  const int nr_count = static_cast<int>(min64(NR, a.rows_pad - row0));
  const int64_t id = base + lane;
  const bool valid = id < a.vocab;
  float acc[NR];
  simt_accumulate<NR, kVecW>(valid ? a.W + id * a.ldw : nullptr, a.d, a.H + row0 * a.ldh, a.ldh, nr_count, acc);
  const uint32_t bmask = banned_mask_warp(a.banned, a.n_banned, base);
  if (!valid) return;
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    if (r < nr_count && row0 + r < a.rows) {
      store(r, lane, finish_logit<Fp32Tag>(acc[r], id, a.bias, a.temperature, (bmask >> lane) & 1u));
    }
  }
}

template <typename Tag, int NT, bool kVecW>
__global__ void __launch_bounds__(kChunkThreads) chunk_mma_kernel(const ChunkArgs<Tag> a) {
  extern __shared__ float s_z[];  // [8 NT][kZRowStride]
  // Row group fastest: the row groups of one chunk run side by side and share W through L2.
  const int64_t bid = blockIdx.x;
  const int64_t rg = bid % a.row_groups, chunk = bid / a.row_groups;
  const int64_t begin = chunk * kChunk;
  const int len = static_cast<int>(min64(kChunk, a.vocab - begin));
  const int64_t row0 = rg * (8 * NT);
  const int warp = threadIdx.x >> 5;
  const int n_tiles = (len + kTile - 1) / kTile;
  for (int tile = warp; tile < n_tiles; tile += kChunkWarps) {  // warp-uniform
    mma_tile_logits<Tag, NT, kVecW>(
        a, begin + static_cast<int64_t>(tile) * kTile, row0,
        [&](int r, int local, float z) { s_z[r * kZRowStride + zidx(tile * kTile + local)] = z; });
  }
  __syncthreads();
  chunk_block_epilogue<8 * NT>(s_z, len, begin, chunk, row0, a.rows, a.temperature, a.keys, a.seed, a.seeds, a.purpose,
                               a.rec, a.n_chunks);
}

template <int NR, bool kVecW>
__global__ void __launch_bounds__(kChunkThreads) chunk_simt_kernel(const ChunkArgs<Fp32Tag> a) {
  extern __shared__ float s_z[];  // [NR][kZRowStride]
  const int64_t bid = blockIdx.x;
  const int64_t rg = bid % a.row_groups, chunk = bid / a.row_groups;
  const int64_t begin = chunk * kChunk;
  const int len = static_cast<int>(min64(kChunk, a.vocab - begin));
  const int64_t row0 = rg * NR;
  const int warp = threadIdx.x >> 5;
  const int n_tiles = (len + kTile - 1) / kTile;
  for (int tile = warp; tile < n_tiles; tile += kChunkWarps) {  // warp-uniform
    simt_tile_logits<NR, kVecW>(a, begin + static_cast<int64_t>(tile) * kTile, row0, [&](int r, int lane, float z) {
      s_z[r * kZRowStride + zidx(tile * kTile + lane)] = z;
    });
  }
  __syncthreads();
  chunk_block_epilogue<NR>(s_z, len, begin, chunk, row0, a.rows, a.temperature, a.keys, a.seed, a.seeds, a.purpose,
                           a.rec, a.n_chunks);
}

// ---------------------------------------------------------------------------------------------
// Kernel 2, split grid (small calls): slice_mma_kernel / slice_simt_kernel compute one slice's
// finished logits for one row group into the workspace; chunk_summary_kernel then derives each
// (row, chunk) summary from them with the chunk kernels' epilogue. A logit is computed by exactly
// the same per-element operations as in the chunk kernels (same warp tile, same finish_logit),
// so both grids give the same bits.

// Where a slice tile's logit goes: row `row`, vocabulary id `id`, in the zidx layout of its chunk.
__device__ __forceinline__ int64_t logit_slot(int64_t row, int64_t id, int64_t n_chunks) {
  const int64_t chunk = id / kChunk;
  return (row * n_chunks + chunk) * kZChunkStride + zidx(static_cast<int>(id - chunk * kChunk));
}

template <typename Tag, int NT, bool kVecW>
__global__ void __launch_bounds__(kSliceThreads, kSliceMinBlocks)
    slice_mma_kernel(const ChunkArgs<Tag> a, float* __restrict__ logits) {
  // Row group fastest: the row groups of one slice run side by side and share W through L2.
  const int64_t bid = blockIdx.x;
  const int64_t rg = bid % a.row_groups, slice = bid / a.row_groups;
  const int64_t base = slice * kSliceIds + static_cast<int64_t>(threadIdx.x >> 5) * kTile;
  if (base >= a.vocab) return;  // warp-uniform; no block barrier in this kernel
  const int64_t row0 = rg * (8 * NT);
  mma_tile_logits<Tag, NT, kVecW>(
      a, base, row0, [&](int r, int local, float z) { logits[logit_slot(row0 + r, base + local, a.n_chunks)] = z; });
}

template <int NR, bool kVecW>
__global__ void __launch_bounds__(kSliceThreads)
    slice_simt_kernel(const ChunkArgs<Fp32Tag> a, float* __restrict__ logits) {
  const int64_t bid = blockIdx.x;
  const int64_t rg = bid % a.row_groups, slice = bid / a.row_groups;
  const int64_t base = slice * kSliceIds + static_cast<int64_t>(threadIdx.x >> 5) * kTile;
  if (base >= a.vocab) return;  // warp-uniform
  const int64_t row0 = rg * NR;
  simt_tile_logits<NR, kVecW>(
      a, base, row0, [&](int r, int lane, float z) { logits[logit_slot(row0 + r, base + lane, a.n_chunks)] = z; });
}

struct SummaryArgs {
  const float* logits;  // [rows][n_chunks][kZChunkStride]
  int64_t rows, n_chunks, vocab;
  float temperature;
  const int64_t* keys;  // this pass's rows
  uint64_t seed;
  const int64_t* seeds;  // this pass's rows' own seeds, or nullptr (all rows: seed)
  uint32_t purpose;
  ChunkRecords rec;
};

// One warp per (row, chunk), chunks of a row adjacent: the chunk kernels' epilogue on the logits
// the slice kernels left in the workspace.
__global__ void __launch_bounds__(kSummaryWarps * 32) chunk_summary_kernel(const SummaryArgs a) {
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * kSummaryWarps + (threadIdx.x >> 5);
  if (pair >= a.rows * a.n_chunks) return;  // whole warp
  const int64_t row = pair / a.n_chunks, chunk = pair - row * a.n_chunks;
  const int64_t begin = chunk * kChunk;
  const int len = static_cast<int>(min64(kChunk, a.vocab - begin));
  const int64_t* k = a.keys + 3 * row;
  const NoiseKey key = make_noise_key(row_seed(a.seed, a.seeds, row), a.purpose, k[0], k[1], k[2]);
  chunk_row_epilogue(a.logits + pair * kZChunkStride, len, begin, chunk, row, a.temperature > 0.f, key, a.rec,
                     a.n_chunks);
}

// ---------------------------------------------------------------------------------------------
// Kernel 2, cluster grid (sm_90+, small calls): the split grid's slices without the workspace.
// The kSlicesPerChunk slice blocks of one (chunk, row group) are one thread-block cluster, rank r
// computing ids [chunk * 1024 + 128 r, + 128) into its own shared memory s_slice [R rows]. After a
// cluster barrier, block r copies the whole chunk's logits of group rows r, r + 8, r + 16, r + 24
// from the 8 blocks' s_slice (distributed shared memory, coalesced 128-float rows) into its s_rows
// in the zidx layout, and one warp per row runs the chunk epilogue on them. The logits never leave
// the SMs. Same per-element operations as the chunk and slice kernels, so the same bits.

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define MDLM_FAST_CLUSTERS 1  // cooperative_groups::cluster_group exists in this compilation pass
#endif

inline size_t cluster_smem_bytes(int group_rows) {
  const int summarized = (group_rows + kSlicesPerChunk - 1) / kSlicesPerChunk;
  return static_cast<size_t>(group_rows * kSliceRowStride + summarized * kZChunkStride) * sizeof(float);
}

#ifdef MDLM_FAST_CLUSTERS
// The part after the slice's logits are in s_slice: gather the block's rows, then summarize them.
// Every thread of every block of the cluster must call it (two cluster barriers).
template <int R, typename Args>
__device__ __forceinline__ void cluster_gather_and_summarize(const Args& a, const float* s_slice, float* s_rows,
                                                             int64_t chunk, int64_t row0, int rank) {
  namespace cg = cooperative_groups;
  const cg::cluster_group cluster = cg::this_cluster();
  constexpr int kMine = (R + kSlicesPerChunk - 1) / kSlicesPerChunk;
  const int64_t begin = chunk * kChunk;
  const int len = static_cast<int>(min64(kChunk, a.vocab - begin));
  const int rows_here = static_cast<int>(min64(R, a.rows - row0));
  cluster.sync();  // every slice's logits are in its block's shared memory
  for (int s = 0; s < kSlicesPerChunk; ++s) {
    const float* peer = cluster.map_shared_rank(s_slice, s);
    const int j = s * kSliceIds + static_cast<int>(threadIdx.x);
    if (j >= len) continue;
#pragma unroll
    for (int i = 0; i < kMine; ++i) {
      const int rl = rank + kSlicesPerChunk * i;
      if (rl < rows_here) s_rows[i * kZChunkStride + zidx(j)] = peer[rl * kSliceRowStride + threadIdx.x];
    }
  }
  // The gathered rows are complete, and no block reads another's shared memory after this (a
  // block may exit only once no peer reads its s_slice).
  cluster.sync();
  const int warp = threadIdx.x >> 5;
  const int rl = rank + kSlicesPerChunk * warp;
  if (warp < kMine && rl < rows_here) {  // warp-uniform
    const int64_t row = row0 + rl;
    const int64_t* k = a.keys + 3 * row;
    const NoiseKey key = make_noise_key(row_seed(a.seed, a.seeds, row), a.purpose, k[0], k[1], k[2]);
    chunk_row_epilogue(s_rows + warp * kZChunkStride, len, begin, chunk, row, a.temperature > 0.f, key, a.rec,
                       a.n_chunks);
  }
}
#endif

template <typename Tag, int NT, bool kVecW>
__global__ void __launch_bounds__(kSliceThreads, kSliceMinBlocks) cluster_mma_kernel(const ChunkArgs<Tag> a) {
#ifdef MDLM_FAST_CLUSTERS
  extern __shared__ float s_cluster[];  // s_slice [8 NT][kSliceRowStride], then s_rows
  float* s_slice = s_cluster;
  float* s_rows = s_cluster + 8 * NT * kSliceRowStride;
  // Clusters of one chunk's row groups are adjacent: they run side by side and share W through L2.
  const int rank = static_cast<int>(cooperative_groups::this_cluster().block_rank());
  const int64_t cluster_id = blockIdx.x / kSlicesPerChunk;
  const int64_t rg = cluster_id % a.row_groups, chunk = cluster_id / a.row_groups;
  const int warp = threadIdx.x >> 5;
  const int64_t base = chunk * kChunk + rank * kSliceIds + static_cast<int64_t>(warp) * kTile;
  const int64_t row0 = rg * (8 * NT);
  if (base < a.vocab) {  // warp-uniform; every thread goes on to the cluster barriers
    mma_tile_logits<Tag, NT, kVecW>(
        a, base, row0, [&](int r, int local, float z) { s_slice[r * kSliceRowStride + warp * kTile + local] = z; });
  }
  cluster_gather_and_summarize<8 * NT>(a, s_slice, s_rows, chunk, row0, rank);
#else
  __trap();  // clusters need sm_90; the launcher uses this kernel only there
#endif
}

template <int NR, bool kVecW>
__global__ void __launch_bounds__(kSliceThreads) cluster_simt_kernel(const ChunkArgs<Fp32Tag> a) {
#ifdef MDLM_FAST_CLUSTERS
  extern __shared__ float s_cluster[];  // s_slice [NR][kSliceRowStride], then s_rows
  float* s_slice = s_cluster;
  float* s_rows = s_cluster + NR * kSliceRowStride;
  const int rank = static_cast<int>(cooperative_groups::this_cluster().block_rank());
  const int64_t cluster_id = blockIdx.x / kSlicesPerChunk;
  const int64_t rg = cluster_id % a.row_groups, chunk = cluster_id / a.row_groups;
  const int warp = threadIdx.x >> 5;
  const int64_t base = chunk * kChunk + rank * kSliceIds + static_cast<int64_t>(warp) * kTile;
  const int64_t row0 = rg * NR;
  if (base < a.vocab) {  // warp-uniform
    simt_tile_logits<NR, kVecW>(
        a, base, row0, [&](int r, int lane, float z) { s_slice[r * kSliceRowStride + warp * kTile + lane] = z; });
  }
  cluster_gather_and_summarize<NR>(a, s_slice, s_rows, chunk, row0, rank);
#else
  __trap();  // clusters need sm_90; the launcher uses this kernel only there
#endif
}

// ---------------------------------------------------------------------------------------------
// Kernel 3: select, one warp per row.

struct SelectArgs {
  int64_t rows, n_chunks;
  float temperature;
  const int64_t* keys;  // this pass's rows
  uint64_t seed;
  const int64_t* seeds;  // this pass's rows' own seeds, or nullptr (all rows: seed)
  uint32_t purpose;
  const float* max;
  const int32_t* arg;
  const double* mass;
  const int32_t* cand;
  const float* cand_logit;
  double* weight;   // [rows, n_chunks] scratch
  int64_t* tokens;  // this pass's rows
  float* logprob;   // this pass's rows, or nullptr
};

__global__ void __launch_bounds__(kSelectWarps * 32) select_kernel(const SelectArgs a) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSelectWarps + (threadIdx.x >> 5);
  if (row >= a.rows) return;  // whole warp
  const int lane = threadIdx.x & 31;
  const int64_t base = row * a.n_chunks;

  // The row's max and first argmax: merge_row_summary over the chunks.
  MaxArg best{-INFINITY, -1};
  bool nan_seen = false;
  for (int64_t c = lane; c < a.n_chunks; c += 32) {
    nan_seen |= isnan(a.max[base + c]);
    best = better(best, MaxArg{a.max[base + c], a.arg[base + c]});
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) best = better(best, shfl_xor(best, offset));
  const bool row_nan = __ballot_sync(0xffffffffu, nan_seen) != 0u;
  if (row_nan || best.arg < 0 || best.max == INFINITY) {
    // A NaN logit, or nothing to draw: codes the adapter raises on. A +inf logit: the lowest +inf
    // id (better() keeps the lowest among equal maxima), log-probability 0.
    if (lane == 0) {
      a.tokens[row] = row_nan ? kNanRowToken : best.arg < 0 ? kEmptyRowToken : best.arg;
      if (a.logprob != nullptr) a.logprob[row] = row_nan || best.arg < 0 ? NAN : 0.f;
    }
    return;
  }
  const double row_max = static_cast<double>(best.max);

  // Chunk weights in parallel; total and choice sequential in chunk order, as on the CPU.
  double* weight = a.weight + base;
  for (int64_t c = lane; c < a.n_chunks; c += 32) {
    weight[c] = a.arg[base + c] < 0 ? 0.0 : a.mass[base + c] * exp(static_cast<double>(a.max[base + c]) - row_max);
  }
  __syncwarp();  // orders the lanes' global writes before lane 0 reads them
  if (lane == 0) {
    double total = 0.0;
    for (int64_t c = 0; c < a.n_chunks; ++c) total += weight[c];
    int64_t token = best.arg;
    double token_logit = row_max;
    if (a.temperature > 0.f) {
      const int64_t* k = a.keys + 3 * row;
      const double u = uniform53_at(make_noise_key(row_seed(a.seed, a.seeds, row), a.purpose, k[0], k[1], k[2]), 0);
      const int64_t c = inverse_cdf(a.n_chunks, u * total, [&](int64_t i) { return weight[i]; });
      token = a.cand[base + c];
      token_logit = static_cast<double>(a.cand_logit[base + c]);
    }
    a.tokens[row] = token;
    if (a.logprob != nullptr) a.logprob[row] = static_cast<float>(token_logit - row_max - log(total));
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

inline int64_t grid_for(int64_t total, int threads, int64_t cap) {
  return std::max<int64_t>(1, std::min<int64_t>((total + threads - 1) / threads, cap));
}

inline size_t chunk_smem_bytes(int group_rows) { return static_cast<size_t>(group_rows) * kZRowStride * sizeof(float); }

// Rows per chunk block: the smallest group holding all rows, capped by what shared memory allows
// (32 needs ~133 KiB: A100/H100; 16 fits consumer GPUs' 99 KiB); 0 when not even 8 fit.
inline int chunk_group_rows(int64_t rows_pad, int smem_optin) {
  int max_group_rows = kMaxGroupRows;
  while (max_group_rows > 8 && chunk_smem_bytes(max_group_rows) > static_cast<size_t>(smem_optin)) max_group_rows /= 2;
  if (chunk_smem_bytes(max_group_rows) > static_cast<size_t>(smem_optin)) return 0;
  return std::min(rows_pad <= 8 ? 8 : rows_pad <= 16 ? 16 : kMaxGroupRows, max_group_rows);
}

template <typename Kernel, typename Args>
cudaError_t launch_chunk_kernel(Kernel kernel, const Args& args, int group_rows, int64_t grid, cudaStream_t stream) {
  const size_t smem = chunk_smem_bytes(group_rows);
  // Over 48 KiB of dynamic shared memory must be opted into, per kernel (and device).
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<grid, kChunkThreads, smem, stream>>>(args);
  return cudaGetLastError();
}

template <typename Tag, bool kVecW>
cudaError_t launch_chunk(const ChunkArgs<Tag>& ca, int group_rows, int64_t grid, cudaStream_t stream) {
  if constexpr (std::is_same<Tag, Fp32Tag>::value) {
    switch (group_rows) {
      case 8:
        return launch_chunk_kernel(chunk_simt_kernel<8, kVecW>, ca, group_rows, grid, stream);
      case 16:
        return launch_chunk_kernel(chunk_simt_kernel<16, kVecW>, ca, group_rows, grid, stream);
      default:
        return launch_chunk_kernel(chunk_simt_kernel<32, kVecW>, ca, group_rows, grid, stream);
    }
  } else {
    switch (group_rows) {
      case 8:
        return launch_chunk_kernel(chunk_mma_kernel<Tag, 1, kVecW>, ca, group_rows, grid, stream);
      case 16:
        return launch_chunk_kernel(chunk_mma_kernel<Tag, 2, kVecW>, ca, group_rows, grid, stream);
      default:
        return launch_chunk_kernel(chunk_mma_kernel<Tag, 4, kVecW>, ca, group_rows, grid, stream);
    }
  }
}

// Rows per slice block: the smallest group holding all rows (no shared memory involved).
inline int slice_group_rows(int64_t rows_pad) { return rows_pad <= 8 ? 8 : rows_pad <= 16 ? 16 : kMaxGroupRows; }

inline int64_t num_slices(int64_t vocab) { return (vocab + kSliceIds - 1) / kSliceIds; }

template <typename Tag, bool kVecW>
cudaError_t launch_slice(const ChunkArgs<Tag>& ca, int group_rows, int64_t grid, float* logits, cudaStream_t stream) {
  if constexpr (std::is_same<Tag, Fp32Tag>::value) {
    switch (group_rows) {
      case 8:
        slice_simt_kernel<8, kVecW><<<grid, kSliceThreads, 0, stream>>>(ca, logits);
        break;
      case 16:
        slice_simt_kernel<16, kVecW><<<grid, kSliceThreads, 0, stream>>>(ca, logits);
        break;
      default:
        slice_simt_kernel<32, kVecW><<<grid, kSliceThreads, 0, stream>>>(ca, logits);
    }
  } else {
    switch (group_rows) {
      case 8:
        slice_mma_kernel<Tag, 1, kVecW><<<grid, kSliceThreads, 0, stream>>>(ca, logits);
        break;
      case 16:
        slice_mma_kernel<Tag, 2, kVecW><<<grid, kSliceThreads, 0, stream>>>(ca, logits);
        break;
      default:
        slice_mma_kernel<Tag, 4, kVecW><<<grid, kSliceThreads, 0, stream>>>(ca, logits);
    }
  }
  return cudaGetLastError();
}

// The split grid's kernel 2: slices, then the (row, chunk) summaries from their logits.
template <typename Tag>
cudaError_t launch_split(ChunkArgs<Tag> ca, bool vec_w, float* logits, cudaStream_t stream) {
  const int group = slice_group_rows(ca.rows_pad);
  ca.row_groups = (ca.rows_pad + group - 1) / group;
  const int64_t grid = num_slices(ca.vocab) * ca.row_groups;
  cudaError_t err = vec_w ? launch_slice<Tag, true>(ca, group, grid, logits, stream)
                          : launch_slice<Tag, false>(ca, group, grid, logits, stream);
  if (err != cudaSuccess) return err;
  SummaryArgs sa;
  sa.logits = logits;
  sa.rows = ca.rows;
  sa.n_chunks = ca.n_chunks;
  sa.vocab = ca.vocab;
  sa.temperature = ca.temperature;
  sa.keys = ca.keys;
  sa.seed = ca.seed;
  sa.seeds = ca.seeds;
  sa.purpose = ca.purpose;
  sa.rec = ca.rec;
  const int64_t pairs = ca.rows * ca.n_chunks;
  chunk_summary_kernel<<<(pairs + kSummaryWarps - 1) / kSummaryWarps, kSummaryWarps * 32, 0, stream>>>(sa);
  return cudaGetLastError();
}

template <typename Kernel, typename Args>
cudaError_t launch_cluster_kernel(Kernel kernel, const Args& args, int64_t grid, size_t smem, cudaStream_t stream) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = kSlicesPerChunk;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  // Positional (gridDim, blockDim, dynamicSmemBytes, stream, attrs, numAttrs): the emulator
  // defines gridDim and blockDim as macros. smem stays under 48 KiB: no opt-in needed.
  const cudaLaunchConfig_t config = {dim3(static_cast<unsigned>(grid)), dim3(kSliceThreads), smem, stream, attr, 1};
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, args);
  return err != cudaSuccess ? err : cudaGetLastError();
}

// The cluster grid's kernel 2 (sm_90+): one cluster of slice blocks per (chunk, row group).
template <typename Tag, bool kVecW>
cudaError_t launch_cluster(ChunkArgs<Tag> ca, cudaStream_t stream) {
  const int group = slice_group_rows(ca.rows_pad);
  ca.row_groups = (ca.rows_pad + group - 1) / group;
  const int64_t grid = ca.n_chunks * ca.row_groups * kSlicesPerChunk;
  const size_t smem = cluster_smem_bytes(group);
  if constexpr (std::is_same<Tag, Fp32Tag>::value) {
    switch (group) {
      case 8:
        return launch_cluster_kernel(cluster_simt_kernel<8, kVecW>, ca, grid, smem, stream);
      case 16:
        return launch_cluster_kernel(cluster_simt_kernel<16, kVecW>, ca, grid, smem, stream);
      default:
        return launch_cluster_kernel(cluster_simt_kernel<32, kVecW>, ca, grid, smem, stream);
    }
  } else {
    switch (group) {
      case 8:
        return launch_cluster_kernel(cluster_mma_kernel<Tag, 1, kVecW>, ca, grid, smem, stream);
      case 16:
        return launch_cluster_kernel(cluster_mma_kernel<Tag, 2, kVecW>, ca, grid, smem, stream);
      default:
        return launch_cluster_kernel(cluster_mma_kernel<Tag, 4, kVecW>, ca, grid, smem, stream);
    }
  }
}

// Thread-block clusters and distributed shared memory: sm_90 and newer.
inline bool use_clusters(const Layout& l, int major) { return l.split && major >= 9; }

template <typename Tag>
cudaError_t launch_typed(const FusedHeadParams& p, const Layout& l, char* ws, cudaStream_t stream) {
  using S = typename Tag::Storage;
  constexpr bool kMma = !std::is_same<Tag, Fp32Tag>::value;
  int device = 0, major = 0, smem_optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  if (kMma && major < 8) return cudaErrorInvalidDeviceFunction;  // mma.sync m16n8k16 bf16/fp16: sm_80+
  if (chunk_group_rows(8, smem_optin) == 0) return cudaErrorInvalidConfiguration;

  const S* W = static_cast<const S*>(p.weight);
  const S* bias = static_cast<const S*>(p.bias);
  const S* hidden = static_cast<const S*>(p.hidden);
  S* H = reinterpret_cast<S*>(ws + l.hidden_off);
  ChunkRecords rec;
  rec.max = reinterpret_cast<float*>(ws + l.max_off);
  rec.arg = reinterpret_cast<int32_t*>(ws + l.arg_off);
  rec.mass = reinterpret_cast<double*>(ws + l.mass_off);
  rec.cand = reinterpret_cast<int32_t*>(ws + l.cand_off);
  rec.cand_logit = reinterpret_cast<float*>(ws + l.logit_off);
  double* weight_scratch = reinterpret_cast<double*>(ws + l.weight_off);
  // 16-byte W loads need every row start 16-byte aligned; otherwise element loads (same values).
  const bool vec_w =
      reinterpret_cast<uintptr_t>(W) % 16 == 0 && (p.weight_stride_row * static_cast<int64_t>(sizeof(S))) % 16 == 0;

  for (int64_t r0 = 0; r0 < p.n; r0 += kMaxRowsPerPass) {
    const int64_t rows = std::min<int64_t>(kMaxRowsPerPass, p.n - r0);
    const int64_t rows_pad = round_up(rows, 8);

    const int64_t pack_total = rows_pad * l.d_pad;
    if (pack_total > 0) {  // d == 0: nothing to pack (and a zero-block grid is an error)
      pack_hidden_kernel<S><<<grid_for(pack_total, 256, 4096), 256, 0, stream>>>(
          hidden + r0 * p.hidden_stride_row, p.hidden_stride_row, p.hidden_stride_col, rows, p.d, H, rows_pad, l.d_pad);
    }

    ChunkArgs<Tag> ca;
    ca.W = W;
    ca.ldw = p.weight_stride_row;
    ca.vocab = p.vocab;
    ca.d = p.d;
    ca.d_pad = l.d_pad;
    ca.bias = bias;
    ca.H = H;
    ca.ldh = l.d_pad;
    ca.rows = rows;
    ca.rows_pad = rows_pad;
    ca.n_chunks = l.n_chunks;
    const int group = chunk_group_rows(rows_pad, smem_optin);
    ca.row_groups = (rows_pad + group - 1) / group;
    ca.temperature = p.temperature;
    ca.banned = p.banned;
    ca.n_banned = p.n_banned;
    ca.keys = p.keys + 3 * r0;
    ca.seed = p.seed;
    ca.seeds = p.seeds != nullptr ? p.seeds + r0 : nullptr;
    ca.purpose = p.purpose;
    ca.rec = rec;
    const int64_t grid = l.n_chunks * ca.row_groups;
    if (use_clusters(l, major)) {  // small calls on sm_90+: slices combined in shared memory
      err = vec_w ? launch_cluster<Tag, true>(ca, stream) : launch_cluster<Tag, false>(ca, stream);
    } else if (l.split) {  // small calls before sm_90: slices combined through the workspace
      err = launch_split<Tag>(ca, vec_w, reinterpret_cast<float*>(ws + l.logits_off), stream);
    } else {
      err =
          vec_w ? launch_chunk<Tag, true>(ca, group, grid, stream) : launch_chunk<Tag, false>(ca, group, grid, stream);
    }
    if (err != cudaSuccess) return err;

    SelectArgs sa;
    sa.rows = rows;
    sa.n_chunks = l.n_chunks;
    sa.temperature = p.temperature;
    sa.keys = p.keys + 3 * r0;
    sa.seed = p.seed;
    sa.seeds = p.seeds != nullptr ? p.seeds + r0 : nullptr;
    sa.purpose = p.purpose;
    sa.max = rec.max;
    sa.arg = rec.arg;
    sa.mass = rec.mass;
    sa.cand = rec.cand;
    sa.cand_logit = rec.cand_logit;
    sa.weight = weight_scratch;
    sa.tokens = p.tokens + r0;
    sa.logprob = p.logprob != nullptr ? p.logprob + r0 : nullptr;
    select_kernel<<<(rows + kSelectWarps - 1) / kSelectWarps, kSelectWarps * 32, 0, stream>>>(sa);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// ---------------------------------------------------------------------------------------------
// Geometry (fused_head_sample_geometry.h): what launch_typed enqueues, from the same planning code.

inline const char* tag_name(HeadDtype dtype) {
  return dtype == HeadDtype::kBFloat16 ? "Bf16Tag" : dtype == HeadDtype::kFloat16 ? "Fp16Tag" : "Fp32Tag";
}

inline int geometry(HeadDtype dtype, int64_t n, int64_t d, int64_t vocab, int major, int smem_optin,
                    HeadKernelLaunch* out, int capacity) {
  if (n < 0 || d < 0 || vocab <= 0 || vocab > INT32_MAX) return -1;
  const bool mma = dtype != HeadDtype::kFloat32;
  const Layout l = make_layout(dtype, n, d, vocab);
  int count = 0;
  const auto add = [&](const HeadKernelLaunch& k) {
    if (count < capacity) out[count] = k;
    ++count;
  };
  for (int64_t r0 = 0; r0 < n; r0 += kMaxRowsPerPass) {
    const int64_t rows = std::min<int64_t>(kMaxRowsPerPass, n - r0);
    const int64_t rows_pad = round_up(rows, 8);
    if (rows_pad * l.d_pad > 0) {
      HeadKernelLaunch k;
      snprintf(k.kernel, sizeof k.kernel, "pack_hidden_kernel<%s>", mma ? "unsigned short" : "float");
      k.grid = grid_for(rows_pad * l.d_pad, 256, 4096);
      k.threads = 256;
      add(k);
    }
    const int group = chunk_group_rows(rows_pad, smem_optin);
    if (group == 0) return -1;
    // mma: a lane issues the 8 16-byte W loads of the next k-block before it uses the current
    // one's (two k-blocks in flight); SIMT: four float4 per step of 16 k, loaded before use.
    const int w_in_flight = mma ? 2 * 8 * 16 : 4 * 16;
    const int64_t rounds_per_tile = mma ? (l.d_pad / kKBlock + 1) / 2 : (d + 15) / 16;
    if (use_clusters(l, major)) {
      const int sgroup = slice_group_rows(rows_pad);
      HeadKernelLaunch k;
      if (mma) {
        snprintf(k.kernel, sizeof k.kernel, "cluster_mma_kernel<%s, %d, true>", tag_name(dtype), sgroup / 8);
      } else {
        snprintf(k.kernel, sizeof k.kernel, "cluster_simt_kernel<%d, true>", sgroup);
      }
      k.row_groups = (rows_pad + sgroup - 1) / sgroup;
      k.grid = l.n_chunks * k.row_groups * kSlicesPerChunk;
      k.threads = kSliceThreads;
      k.dyn_smem = static_cast<int64_t>(cluster_smem_bytes(sgroup));
      k.ids_per_block = kSliceIds;
      k.group_rows = sgroup;
      k.w_bytes_in_flight_per_thread = w_in_flight;
      k.serial_rounds_per_warp = rounds_per_tile;
      add(k);
    } else if (l.split) {
      const int sgroup = slice_group_rows(rows_pad);
      HeadKernelLaunch k;
      if (mma) {
        snprintf(k.kernel, sizeof k.kernel, "slice_mma_kernel<%s, %d, true>", tag_name(dtype), sgroup / 8);
      } else {
        snprintf(k.kernel, sizeof k.kernel, "slice_simt_kernel<%d, true>", sgroup);
      }
      k.row_groups = (rows_pad + sgroup - 1) / sgroup;
      k.grid = num_slices(vocab) * k.row_groups;
      k.threads = kSliceThreads;
      k.ids_per_block = kSliceIds;
      k.group_rows = sgroup;
      k.w_bytes_in_flight_per_thread = w_in_flight;
      k.serial_rounds_per_warp = rounds_per_tile;
      k.logits_written = rows * vocab * static_cast<int64_t>(sizeof(float));
      add(k);
      HeadKernelLaunch m;
      snprintf(m.kernel, sizeof m.kernel, "chunk_summary_kernel");
      m.grid = (rows * l.n_chunks + kSummaryWarps - 1) / kSummaryWarps;
      m.threads = kSummaryWarps * 32;
      m.logits_read = rows * vocab * static_cast<int64_t>(sizeof(float));
      add(m);
    } else {
      HeadKernelLaunch k;
      if (mma) {
        snprintf(k.kernel, sizeof k.kernel, "chunk_mma_kernel<%s, %d, true>", tag_name(dtype), group / 8);
      } else {
        snprintf(k.kernel, sizeof k.kernel, "chunk_simt_kernel<%d, true>", group);
      }
      k.row_groups = (rows_pad + group - 1) / group;
      k.grid = l.n_chunks * k.row_groups;
      k.threads = kChunkThreads;
      k.dyn_smem = static_cast<int64_t>(chunk_smem_bytes(group));
      k.ids_per_block = kChunk;
      k.group_rows = group;
      k.w_bytes_in_flight_per_thread = w_in_flight;
      k.serial_rounds_per_warp = kTilesPerChunk / kChunkWarps * rounds_per_tile;
      add(k);
    }
    HeadKernelLaunch s;
    snprintf(s.kernel, sizeof s.kernel, "select_kernel");
    s.grid = (rows + kSelectWarps - 1) / kSelectWarps;
    s.threads = kSelectWarps * 32;
    add(s);
  }
  return count;
}

}  // namespace head

int fused_head_sample_geometry(HeadDtype dtype, int64_t n, int64_t d, int64_t vocab, int major, int smem_optin,
                               HeadKernelLaunch* out, int capacity) {
  return head::geometry(dtype, n, d, vocab, major, smem_optin, out, capacity);
}

size_t fused_head_sample_workspace_bytes(HeadDtype dtype, int64_t n, int64_t d, int64_t vocab) {
  if (n <= 0 || d < 0 || vocab <= 0) return 0;
  return head::make_layout(dtype, n, d, vocab).total;
}

cudaError_t launch_fused_head_sample(const FusedHeadParams& p, void* workspace, size_t workspace_bytes,
                                     cudaStream_t stream) {
  if (p.n < 0 || p.d < 0 || p.vocab <= 0 || p.vocab > INT32_MAX || p.n_banned < 0) return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;  // nothing to do; launching a zero-block grid would be an error
  // Any non-negative strides are memory-safe (each element is read at its own address).
  // With d == 0 a [V, 0] weight and [n, 0] hidden may have null data (PyTorch's CUDA allocator
  // returns nullptr for zero bytes): the logits are all 0 (+ bias) and nothing is read.
  if (p.keys == nullptr || p.tokens == nullptr || (p.d > 0 && (p.hidden == nullptr || p.weight == nullptr)) ||
      (p.n_banned > 0 && p.banned == nullptr) || p.weight_stride_row < 0 || p.hidden_stride_row < 0 ||
      p.hidden_stride_col < 0) {
    return cudaErrorInvalidValue;
  }
  const head::Layout l = head::make_layout(p.dtype, p.n, p.d, p.vocab);
  if (workspace == nullptr || workspace_bytes < l.total || reinterpret_cast<uintptr_t>(workspace) % 256 != 0) {
    return cudaErrorInvalidValue;
  }
  char* ws = static_cast<char*>(workspace);
  switch (p.dtype) {
    case HeadDtype::kFloat32:
      return head::launch_typed<head::Fp32Tag>(p, l, ws, stream);
    case HeadDtype::kBFloat16:
      return head::launch_typed<head::Bf16Tag>(p, l, ws, stream);
    case HeadDtype::kFloat16:
      return head::launch_typed<head::Fp16Tag>(p, l, ws, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace mdlm_fast
