// CPU kernel of fused_head_sample: the vocabulary projection fused with the two-level draw.
//
// Pass 1 walks the vocabulary in groups of canonical chunks (at::parallel_for over groups). A
// group's logits for all N rows come from one small GEMM (BLAS speed, W read once for every row)
// and stay in cache while each chunk's max, argmax and mass are taken and a candidate id is drawn
// inside it; [N, V] logits never exist. Pass 2, per row, picks a chunk from the per-chunk summaries and
// takes its candidate (see categorical.h).
//
// Non-finite logits (the rule of every backend and of reference.py): a row with a NaN logit, or
// with every id banned or -inf, is an error naming the row; a row with a +inf logit takes its
// lowest +inf id with log-probability 0 (the limit of the softmax is a point mass there when it
// is the only one; several +inf ids resolve to the lowest, as the argmax does); -inf ids are
// never drawn.
#include <ATen/Parallel.h>
#include <ATen/ops/exp.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "checks.h"
#include "mdlm_fast/categorical.h"
#include "mdlm_fast/philox.h"
#include "small_n_projection.h"

namespace mdlm_fast {
namespace {

struct HeadArgs {
  at::Tensor hidden;  // [N, d] float32, contiguous
  at::Tensor weight;  // [V, d], the caller's dtype
  c10::optional<at::Tensor> bias;
  float temperature;  // 0 = argmax
  std::vector<int64_t> banned;
  bool small_n = false;   // project with project_small_n (a few rows, AVX-512) instead of a GEMM
  at::Tensor hidden_raw;  // [N, d] in the caller's dtype, contiguous (for small_n)
  // small_n: the logits and their exps, [N, V] float32 (at most 8 rows), allocated once per call.
  // Tiles are views into them: a fresh tile per group is a fresh mmap'd block whose unmapping
  // stalls on every other core (TLB shootdowns), which on a loaded VM cost more than the math.
  at::Tensor z_all, e_all;
};

// z = (hidden_rows @ W[begin:end]^T + b) / temperature, banned ids at -inf: [rows, end - begin] float32.
at::Tensor chunk_logits(const HeadArgs& a, const at::Tensor& hidden_rows, int64_t begin, int64_t end) {
  at::Tensor z;
  if (a.small_n) {
    z = a.z_all.narrow(1, begin, end - begin);
    project_small_n(hidden_rows.data_ptr<float>(), a.hidden_raw.data_ptr(), a.weight.data_ptr(), a.weight.scalar_type(),
                    hidden_rows.size(0), hidden_rows.size(1), a.weight.stride(0), begin, end - begin,
                    z.data_ptr<float>(), z.stride(0));
  } else {
    const at::Tensor w = a.weight.narrow(0, begin, end - begin).to(at::kFloat);
    // W_chunk @ hidden^T streams W as the row-major left operand: at small N (the sampler's case)
    // BLAS runs this shape up to 3x faster than hidden @ W_chunk^T; the [cols, N] result is small.
    z = at::mm(w, hidden_rows.t()).t().contiguous();
  }
  if (a.bias.has_value()) z.add_(a.bias->narrow(0, begin, end - begin).to(at::kFloat));
  if (a.temperature > 0.f && a.temperature != 1.f) z.div_(a.temperature);
  float* zp = z.data_ptr<float>();
  const int64_t rows = z.size(0), row_stride = z.stride(0);
  for (int64_t id : a.banned) {
    if (id < begin || id >= end) continue;
    for (int64_t r = 0; r < rows; ++r) zp[r * row_stride + (id - begin)] = -std::numeric_limits<float>::infinity();
  }
  return z;
}

// A chunk's mass in the lane order of categorical.h, which the CUDA kernel shares. The order
// differs from a sequential sum only by rounding (~1e-16 relative); the full groups are one
// accumulator per lane so that the loop vectorizes.
double sum_as_double(const float* e, int64_t cols) {
  double lane[kMassLanes] = {};
  const int64_t full = mass_full_groups_end(cols);
  int64_t j = 0;
  for (; j < full; j += kMassLanes) {
    for (int k = 0; k < kMassLanes; ++k) lane[k] += static_cast<double>(e[j + k]);
  }
  for (; j < cols; ++j) lane[kMassTailLane] += static_cast<double>(e[j]);
  return combine_mass_lanes(lane);
}

// A run of whole canonical chunks projected together by one GEMM; the group that ends at the
// vocabulary's end also takes its partial last chunk (a second, narrower GEMM). Groups are as
// large as keeps the [N, cols] float tile near 64 KB (in L2), and their number is a multiple
// of the thread count so that at::parallel_for hands every thread the same share of W.
struct ChunkGroup {
  int64_t first_chunk, n_full;
  bool with_partial;
};

std::vector<ChunkGroup> chunk_groups(int64_t vocab, int64_t rows, int64_t threads, int64_t kTileFloats = 16 * 1024) {
  const int64_t full = vocab / kVocabChunk;
  const bool partial = vocab % kVocabChunk != 0;
  const int64_t by_cache = std::max<int64_t>(1, kTileFloats / (std::max<int64_t>(rows, 1) * kVocabChunk));
  threads = std::max<int64_t>(1, threads);
  int64_t n_groups = std::max<int64_t>((full + by_cache - 1) / by_cache, 1);
  n_groups = std::min(full, (n_groups + threads - 1) / threads * threads);
  std::vector<ChunkGroup> groups;
  if (n_groups == 0) return {{0, 0, partial}};
  const int64_t per_group = (full + n_groups - 1) / n_groups;
  for (int64_t c = 0; c < full; c += per_group) groups.push_back({c, std::min(per_group, full - c), false});
  groups.back().with_partial = partial;
  return groups;
}

// The CUDA adapter's twin in signature and checks: both implement the one schema of ops.cpp.
std::tuple<at::Tensor, at::Tensor> fused_head_sample_cpu(const at::Tensor& hidden, const at::Tensor& weight,
                                                         const c10::optional<at::Tensor>& bias, const at::Tensor& keys,
                                                         int64_t seed, int64_t purpose, double temperature,
                                                         const at::Tensor& banned, bool return_logprob,
                                                         const c10::optional<at::Tensor>& seeds) {
  check_fused_head_args(hidden, weight, bias, keys, purpose, temperature, banned);
  check_row_seeds(seeds, hidden.size(0));
  check_fused_head_devices(hidden, weight, bias, keys, banned, seeds, at::kCPU, "cpu");
  const int64_t n = hidden.size(0), vocab = weight.size(0);

  HeadArgs a;
  a.hidden = hidden.to(at::kFloat).contiguous();
  a.weight = weight.stride(1) == 1 ? weight : weight.contiguous();
  a.small_n = small_n_projection_available(weight.scalar_type(), n);
  if (a.small_n) {
    a.hidden_raw = hidden.contiguous();
    a.z_all = at::empty({n, vocab}, hidden.options().dtype(at::kFloat));
    a.e_all = at::empty({n, vocab}, hidden.options().dtype(at::kFloat));
  }
  a.bias = bias;
  if (a.small_n && bias.has_value()) a.bias = bias->to(at::kFloat).contiguous();  // converted once, not per tile
  a.temperature = static_cast<float>(temperature);
  const at::Tensor banned_c = banned.contiguous();
  a.banned.assign(banned_c.data_ptr<int64_t>(), banned_c.data_ptr<int64_t>() + banned_c.numel());
  for (int64_t id : a.banned) {
    if (id < 0 || id >= vocab) fail_banned_out_of_range(id, vocab);
  }

  at::Tensor tokens = at::empty({n}, hidden.options().dtype(at::kLong));
  at::Tensor logprob = at::empty({return_logprob ? n : 0}, hidden.options().dtype(at::kFloat));
  if (n == 0) return {tokens, logprob};

  const at::Tensor keys_c = keys.contiguous();
  const int64_t* k = keys_c.data_ptr<int64_t>();
  const at::Tensor seeds_c = seeds.has_value() ? seeds->contiguous() : at::Tensor();
  const int64_t* row_seeds = seeds_c.defined() ? seeds_c.data_ptr<int64_t>() : nullptr;
  const auto row_key = [&](int64_t r) {
    return make_noise_key(row_seed(static_cast<uint64_t>(seed), row_seeds, r), static_cast<uint32_t>(purpose), k[3 * r],
                          k[3 * r + 1], k[3 * r + 2]);
  };
  const bool draw = a.temperature > 0.f;

  // Pass 1: per-chunk summaries and candidates, rows x chunks. Canonical chunks are projected in
  // groups (one GEMM and a handful of ATen calls per group rather than per chunk, which matters
  // at small N where the per-call overhead rivals the arithmetic); the grouping only changes the
  // work split, never a result.
  const int64_t n_chunks = num_vocab_chunks(vocab);
  // The small-N projection has no per-call cost to amortize but the ATen calls of the summaries:
  // larger tiles (256 KB, still in L2) mean fewer of them.
  const std::vector<ChunkGroup> groups =
      chunk_groups(vocab, n, at::get_num_threads(), a.small_n ? 64 * 1024 : 16 * 1024);
  std::vector<ChunkSummary> summary(n * n_chunks);
  // Projects `count` consecutive chunks of `cols` ids from chunk `first` on, and fills their summaries.
  const auto summarize_chunks = [&](int64_t first, int64_t count, int64_t cols) {
    const int64_t begin = first * kVocabChunk;
    const at::Tensor z = chunk_logits(a, a.hidden, begin, begin + count * cols).view({n, count, cols});
    // Max and first argmax per (row, chunk), then exp(z - max): vectorized ATen calls over the tile.
    const auto [maxima, argmaxima] = at::max(z, 2);
    const float* mp = maxima.data_ptr<float>();
    const int64_t* ap = argmaxima.data_ptr<int64_t>();
    const at::Tensor shift = at::where(at::isfinite(maxima), maxima, at::zeros_like(maxima));
    at::Tensor e;  // a fully banned chunk: exp(-inf) = 0
    if (a.small_n) {
      e = a.e_all.narrow(1, begin, count * cols).view({n, count, cols});
      at::sub_out(e, z, shift.unsqueeze(2));
      e.exp_();
    } else {
      e = at::exp(z - shift.unsqueeze(2));
    }
    const float* zp = z.data_ptr<float>();
    const float* ep = e.data_ptr<float>();
    const int64_t z_row = z.stride(0), e_row = e.stride(0);
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t local = 0; local < count; ++local) {
        const int64_t c = first + local, at_rc = r * count + local;
        ChunkSummary& s = summary[r * n_chunks + c];
        s.stats = empty_row_summary();
        s.candidate = -1;
        s.candidate_logit = -std::numeric_limits<float>::infinity();
        if (mp[at_rc] == -std::numeric_limits<float>::infinity()) continue;  // every id banned here
        s.stats.max = mp[at_rc];  // NaN when the chunk holds one (at::max propagates it)
        s.stats.argmax = c * kVocabChunk + ap[at_rc];
        if (!std::isfinite(mp[at_rc])) continue;  // NaN or +inf: the row's rule needs no mass or draw
        const float* er = ep + r * e_row + local * cols;
        s.stats.mass = sum_as_double(er, cols);
        if (draw) {
          const double v = uniform53_at(row_key(r), static_cast<uint32_t>(1 + c));
          const int64_t j = inverse_cdf(cols, v * s.stats.mass, [&](int64_t i) { return static_cast<double>(er[i]); });
          s.candidate = c * kVocabChunk + j;
          s.candidate_logit = zp[r * z_row + local * cols + j];
        }
      }
    }
  };
  at::parallel_for(0, static_cast<int64_t>(groups.size()), 1, [&](int64_t group_begin, int64_t group_end) {
    for (int64_t g = group_begin; g < group_end; ++g) {
      const ChunkGroup& group = groups[g];
      if (group.n_full > 0) summarize_chunks(group.first_chunk, group.n_full, kVocabChunk);
      if (group.with_partial) summarize_chunks(vocab / kVocabChunk, 1, vocab % kVocabChunk);
    }
  });

  // Pass 2: per row, merge the chunk summaries, pick a chunk and take its candidate.
  int64_t* tok = tokens.data_ptr<int64_t>();
  float* lp = return_logprob ? logprob.data_ptr<float>() : nullptr;
  at::parallel_for(0, n, 1, [&](int64_t row_begin, int64_t row_end) {
    std::vector<double> chunk_weight(n_chunks);
    for (int64_t r = row_begin; r < row_end; ++r) {
      const ChunkSummary* s = &summary[r * n_chunks];
      bool nan_row = false, inf_row = false;
      for (int64_t c = 0; c < n_chunks; ++c) {
        nan_row |= std::isnan(s[c].stats.max);
        inf_row |= s[c].stats.max == std::numeric_limits<float>::infinity();
      }
      if (nan_row) fail_nan_row(r);
      if (inf_row) {  // the lowest +inf id, log-probability 0
        int64_t c = 0;
        while (s[c].stats.max != std::numeric_limits<float>::infinity()) ++c;
        tok[r] = s[c].stats.argmax;
        if (lp != nullptr) lp[r] = 0.f;
        continue;
      }
      RowSummary all = empty_row_summary();
      for (int64_t c = 0; c < n_chunks; ++c) all = merge_row_summary(all, s[c].stats);
      if (all.argmax < 0) fail_empty_row(r);
      double total = 0.0;
      for (int64_t c = 0; c < n_chunks; ++c) {
        const RowSummary& cs = s[c].stats;
        chunk_weight[c] = cs.argmax < 0 ? 0.0 : cs.mass * std::exp(static_cast<double>(cs.max) - all.max);
        total += chunk_weight[c];
      }
      int64_t token = all.argmax;
      double token_logit = all.max;
      if (draw) {
        const double u = uniform53_at(row_key(r), 0);
        const int64_t c = inverse_cdf(n_chunks, u * total, [&](int64_t i) { return chunk_weight[i]; });
        token = s[c].candidate;
        token_logit = s[c].candidate_logit;
      }
      tok[r] = token;
      if (lp != nullptr) lp[r] = static_cast<float>(token_logit - all.max - std::log(total));
    }
  });
  return {tokens, logprob};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdlm_fast, CPU, m) { m.impl("fused_head_sample", &fused_head_sample_cpu); }

}  // namespace mdlm_fast
