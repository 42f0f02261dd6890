// The two-level inverse-CDF categorical draw, shared by the CPU and CUDA kernels.
//
// The vocabulary is cut into canonical chunks of kVocabChunk ids -- a constant of the algorithm,
// never a hardware tile -- so every device draws the same id from the same uniforms:
//   inside every chunk c, uniform v_c (stream number 1 + c) picks a candidate id by inverse CDF
//   over exp(z - max_c), while the chunk's logits are at hand;
//   uniform u (stream number 0) then picks chunk c with probability mass_c exp(max_c - max) / sum,
//   and its candidate is the token.
// Exact in distribution (no truncated tail): P(id) = P(chunk) P(id | chunk). One exp per logit,
// and the weight matrix is read once: no chunk is revisited after the choice.
#pragma once

#include <math.h>
#include <stdint.h>

#include "mdlm_fast/common.h"

namespace mdlm_fast {

constexpr int64_t kVocabChunk = 1024;

MDLM_HOST_DEVICE inline int64_t num_vocab_chunks(int64_t vocab) { return (vocab + kVocabChunk - 1) / kVocabChunk; }

// The argmax tie rule of every backend: the lowest id among maxima (at::max's first index).
// It is a strict total order on (value, id) for non-NaN values, so every merge tree -- the CPU's
// chunk-by-chunk merges, a warp's butterfly -- finds the same (max, argmax).
MDLM_HOST_DEVICE inline bool max_beats(float value, int64_t id, float best, int64_t best_id) {
  return value > best || (value == best && id < best_id);
}

// The order of a chunk's mass, the sum in double of n float exps: the mass weighs the chunk
// draw, so every backend must round it alike. Element j goes to lane j % kMassLanes while it
// lies in a full group (j < mass_full_groups_end(n)), the tail to kMassTailLane, each lane in
// increasing j; then combine_mass_lanes. Independent lanes keep a CPU's adder pipeline full
// and map onto a warp's lanes.
constexpr int kMassLanes = 8;
constexpr int kMassTailLane = 0;

MDLM_HOST_DEVICE inline int64_t mass_full_groups_end(int64_t n) { return n / kMassLanes * kMassLanes; }

MDLM_HOST_DEVICE inline double combine_mass_lanes(const double (&lane)[kMassLanes]) {
  static_assert(kMassLanes == 8, "the combine tree is written out for eight lanes");
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// Running summary of the logits seen so far in one row: online max / argmax and a log-sum-exp.
struct RowSummary {
  float max;       // -inf when nothing finite was seen
  int64_t argmax;  // lowest id among maxima (max_beats)
  double mass;     // sum exp(z - max)
};

MDLM_HOST_DEVICE inline RowSummary empty_row_summary() {
  RowSummary r;
  r.max = -INFINITY;
  r.argmax = -1;
  r.mass = 0.0;
  return r;
}

// What a row keeps of one chunk: its summary and the candidate drawn inside it.
struct ChunkSummary {
  RowSummary stats;
  int64_t candidate;      // id drawn inside the chunk (-1 when nothing was drawn)
  float candidate_logit;  // its z
};

// Merges summary b (ids after a's when tied) into a.
MDLM_HOST_DEVICE inline RowSummary merge_row_summary(RowSummary a, RowSummary b) {
  if (b.argmax < 0) return a;
  if (a.argmax < 0) return b;
  RowSummary r;
  const bool b_wins = max_beats(b.max, b.argmax, a.max, a.argmax);
  r.max = b_wins ? b.max : a.max;
  r.argmax = b_wins ? b.argmax : a.argmax;
  r.mass = a.mass * exp(static_cast<double>(a.max) - r.max) + b.mass * exp(static_cast<double>(b.max) - r.max);
  return r;
}

// Index of the first entry whose running sum exceeds target, over n weights given by get(i);
// clamped to the last entry with positive weight (rounding can leave target >= the final sum).
template <typename Get>
MDLM_HOST_DEVICE inline int64_t inverse_cdf(int64_t n, double target, Get get) {
  double running = 0.0;
  int64_t last_positive = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double w = get(i);
    if (w > 0.0) last_positive = i;
    running += w;
    if (running > target) return i;
  }
  return last_positive;
}

}  // namespace mdlm_fast
