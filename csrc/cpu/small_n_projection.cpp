// AVX-512 kernels of small_n_projection.h. Each call streams a run of W rows once, front to back,
// one row at a time: each 16 (fp32) or 32 (bf16) columns of the row are multiplied into N
// accumulators that stay in registers, so W is read once for all N rows at close to the memory's
// read rate. (Interleaving several rows, 1.5-3 KB apart, measured 2-8x slower on this project's
// Zen 4 CPU than one sequential stream: the hardware prefetcher follows one stream best.) Compiled for AVX-512 with
// target attributes and chosen at run time, so the extension still loads on CPUs without it (they keep the GEMM path).
#include "small_n_projection.h"

#include <c10/util/BFloat16.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MDLM_SMALL_N_X86 1
#endif

namespace mdlm_fast {

#ifdef MDLM_SMALL_N_X86
namespace {

bool has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}

bool has_avx512_bf16() {
  __builtin_cpu_init();
  return has_avx512() && __builtin_cpu_supports("avx512bf16");
}

const bool kHasAvx512 = has_avx512();
const bool kHasAvx512Bf16 = has_avx512_bf16();

// The three row kernels below (rows_f32, rows_bf16_widened, rows_bf16_dot) are deliberate twins:
// the same accumulate-then-reduce skeleton around a different load of W (fp32; bf16 widened to
// fp32; bf16 pairs for vdpbf16ps). Each must be compiled for its own ISA target, and a shared
// helper would need that target and forced inlining on every piece to stay one straight-line,
// fully unrolled loop; three short copies read (and profile) more plainly.

// fp32 W, fp32 hidden: R rows of W against N rows of hidden, 16 columns per step.
template <int N, int R>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void rows_f32(const float* h, const float* w, int64_t d,
                                                                   int64_t ld_w, float* out, int64_t ld_out) {
  __m512 acc[R][N];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int i = 0; i < N; ++i) acc[r][i] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= d; k += 16) {
    __m512 wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) wv[r] = _mm512_loadu_ps(w + r * ld_w + k);
#pragma GCC unroll 8
    for (int i = 0; i < N; ++i) {
      const __m512 hv = _mm512_loadu_ps(h + i * d + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][i] = _mm512_fmadd_ps(wv[r], hv, acc[r][i]);
    }
  }
  if (k < d) {
    const __mmask16 m = static_cast<__mmask16>((1u << (d - k)) - 1);
    __m512 wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) wv[r] = _mm512_maskz_loadu_ps(m, w + r * ld_w + k);
#pragma GCC unroll 8
    for (int i = 0; i < N; ++i) {
      const __m512 hv = _mm512_maskz_loadu_ps(m, h + i * d + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][i] = _mm512_fmadd_ps(wv[r], hv, acc[r][i]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) out[i * ld_out + r] = _mm512_reduce_add_ps(acc[r][i]);
}

// bf16 W widened to fp32 (a 16-bit shift, exact), fp32 hidden: for AVX-512 CPUs without BF16.
template <int N, int R>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void rows_bf16_widened(const float* h, const uint16_t* w,
                                                                            int64_t d, int64_t ld_w, float* out,
                                                                            int64_t ld_out) {
  __m512 acc[R][N];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int i = 0; i < N; ++i) acc[r][i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < d; k += 16) {
    const __mmask16 m = d - k >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (d - k)) - 1);
    __m512 wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256i raw = _mm256_maskz_loadu_epi16(m, w + r * ld_w + k);
      wv[r] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
    }
#pragma GCC unroll 8
    for (int i = 0; i < N; ++i) {
      const __m512 hv = _mm512_maskz_loadu_ps(m, h + i * d + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][i] = _mm512_fmadd_ps(wv[r], hv, acc[r][i]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) out[i * ld_out + r] = _mm512_reduce_add_ps(acc[r][i]);
}

// bf16 W, bf16 hidden: vdpbf16ps multiplies 32 bf16 pairs per instruction, exactly, into fp32 lanes.
template <int N, int R>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void rows_bf16_dot(const uint16_t* h, const uint16_t* w,
                                                                                   int64_t d, int64_t ld_w, float* out,
                                                                                   int64_t ld_out) {
  __m512 acc[R][N];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int i = 0; i < N; ++i) acc[r][i] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= d; k += 32) {
    __m512i wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) wv[r] = _mm512_loadu_si512(w + r * ld_w + k);
#pragma GCC unroll 8
    for (int i = 0; i < N; ++i) {
      const __m512i hv = _mm512_loadu_si512(h + i * d + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][i] = _mm512_dpbf16_ps(acc[r][i], (__m512bh)wv[r], (__m512bh)hv);
    }
  }
  if (k < d) {
    const __mmask32 m = static_cast<__mmask32>((1ull << (d - k)) - 1);
    __m512i wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) wv[r] = _mm512_maskz_loadu_epi16(m, w + r * ld_w + k);
#pragma GCC unroll 8
    for (int i = 0; i < N; ++i) {
      const __m512i hv = _mm512_maskz_loadu_epi16(m, h + i * d + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][i] = _mm512_dpbf16_ps(acc[r][i], (__m512bh)wv[r], (__m512bh)hv);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) out[i * ld_out + r] = _mm512_reduce_add_ps(acc[r][i]);
}

// Rows of W per step (the templates take more, for CPUs whose prefetchers like several streams).
constexpr int rows_per_step(int) { return 1; }

enum class Kind { kF32, kBf16Widened, kBf16Dot };

template <int N>
void project_rows(Kind kind, const float* h32, const uint16_t* h16, const void* weight, int64_t d, int64_t ld_w,
                  int64_t begin, int64_t cols, float* out, int64_t ld_out) {
  constexpr int R = rows_per_step(N);
  const auto run = [&](auto rows_tag, int64_t j) {
    constexpr int RR = decltype(rows_tag)::value;
    if (kind == Kind::kF32) {
      rows_f32<N, RR>(h32, static_cast<const float*>(weight) + (begin + j) * ld_w, d, ld_w, out + j, ld_out);
    } else if (kind == Kind::kBf16Widened) {
      rows_bf16_widened<N, RR>(h32, static_cast<const uint16_t*>(weight) + (begin + j) * ld_w, d, ld_w, out + j,
                               ld_out);
    } else {
      rows_bf16_dot<N, RR>(h16, static_cast<const uint16_t*>(weight) + (begin + j) * ld_w, d, ld_w, out + j, ld_out);
    }
  };
  int64_t j = 0;
  for (; j + R <= cols; j += R) run(std::integral_constant<int, R>{}, j);
  for (; j < cols; ++j) run(std::integral_constant<int, 1>{}, j);
}

}  // namespace

bool small_n_projection_available(at::ScalarType dtype, int64_t n) {
  if (n < 1 || n > kSmallNMaxRows || !kHasAvx512) return false;
  return dtype == at::kFloat || dtype == at::kBFloat16;
}

void project_small_n(const float* hidden_f32, const void* hidden_raw, const void* weight, at::ScalarType dtype,
                     int64_t n, int64_t d, int64_t ld_w, int64_t begin, int64_t cols, float* out, int64_t ld_out) {
  const Kind kind = dtype == at::kFloat ? Kind::kF32 : kHasAvx512Bf16 ? Kind::kBf16Dot : Kind::kBf16Widened;
  const auto* h16 = static_cast<const uint16_t*>(hidden_raw);
  switch (n) {
    case 1:
      return project_rows<1>(kind, hidden_f32, h16, weight, d, ld_w, begin, cols, out, ld_out);
    case 2:
      return project_rows<2>(kind, hidden_f32, h16, weight, d, ld_w, begin, cols, out, ld_out);
    case 3:
      return project_rows<3>(kind, hidden_f32, h16, weight, d, ld_w, begin, cols, out, ld_out);
    case 4:
      return project_rows<4>(kind, hidden_f32, h16, weight, d, ld_w, begin, cols, out, ld_out);
    case 5:
      return project_rows<5>(kind, hidden_f32, h16, weight, d, ld_w, begin, cols, out, ld_out);
    case 6:
      return project_rows<6>(kind, hidden_f32, h16, weight, d, ld_w, begin, cols, out, ld_out);
    case 7:
      return project_rows<7>(kind, hidden_f32, h16, weight, d, ld_w, begin, cols, out, ld_out);
    default:
      return project_rows<8>(kind, hidden_f32, h16, weight, d, ld_w, begin, cols, out, ld_out);
  }
}

#else  // not x86-64 with GCC/Clang: the GEMM path serves every N

bool small_n_projection_available(at::ScalarType, int64_t) { return false; }

void project_small_n(const float*, const void*, const void*, at::ScalarType, int64_t, int64_t, int64_t, int64_t,
                     int64_t, float*, int64_t) {
  TORCH_CHECK(false, "mdlm_fast: project_small_n is not built for this CPU");
}

#endif

}  // namespace mdlm_fast
