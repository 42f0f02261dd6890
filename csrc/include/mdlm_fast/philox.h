// Counter-based Philox4x32-10 (Salmon et al., SC'11), shared by the CPU and CUDA kernels.
//
// Every random number mdlm_fast draws is a pure function of
//   (seed, purpose, step, row, position, index)
// so results never depend on tiling, thread layout, batch compaction or device.
// mdlm_fast/reference.py reproduces this file bit for bit in PyTorch.
#pragma once

#include <stdint.h>

#include "mdlm_fast/common.h"

namespace mdlm_fast {

struct Philox4x32 {
  uint32_t v[4];
};

namespace philox_detail {
constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;
constexpr uint32_t kWeyl1 = 0xBB67AE85u;

MDLM_HOST_DEVICE inline void mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  *lo = static_cast<uint32_t>(product);
}
}  // namespace philox_detail

// Ten rounds of Philox4x32 on counter c under key k (the Random123 reference algorithm).
MDLM_HOST_DEVICE inline Philox4x32 philox4x32_10(Philox4x32 c, uint32_t k0, uint32_t k1) {
  using namespace philox_detail;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kMul0, c.v[0], &hi0, &lo0);
    mulhilo(kMul1, c.v[2], &hi1, &lo1);
    Philox4x32 next;
    next.v[0] = hi1 ^ c.v[1] ^ k0;
    next.v[1] = lo1;
    next.v[2] = hi0 ^ c.v[3] ^ k1;
    next.v[3] = lo0;
    c = next;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return c;
}

// What a stream of random numbers is for. Distinct purposes never share a counter.
enum Purpose : uint32_t {
  kPurposeUser = 0,             // free for callers of the philox_noise op
  kPurposeReveal = 1,           // fast sampler: when each masked position is revealed
  kPurposeToken = 2,            // fused_head_sample: the two uniforms of a categorical draw
  kPurposeReferenceGumbel = 3,  // mdlm sampler (MDLM's ddpm_cache): per-vocabulary-entry Gumbel noise
  kPurposeNoiseRemoval = 4,     // ancestral noise removal after the last step
};

// Steps are packed into 24 bits beside the 8-bit purpose.
constexpr int64_t kMaxStep = (int64_t{1} << 24) - 1;

// The key of one row of draws: which step, batch row (original, never compacted) and position.
struct NoiseKey {
  uint32_t k0, k1;        // the seed
  uint32_t step_purpose;  // step | purpose << 24
  uint32_t row;
  uint32_t position;
};

MDLM_HOST_DEVICE inline NoiseKey make_noise_key(uint64_t seed, uint32_t purpose, int64_t step, int64_t row,
                                                int64_t position) {
  NoiseKey key;
  key.k0 = static_cast<uint32_t>(seed);
  key.k1 = static_cast<uint32_t>(seed >> 32);
  key.step_purpose = (static_cast<uint32_t>(step) & 0xFFFFFFu) | (purpose << 24);
  key.row = static_cast<uint32_t>(row);
  key.position = static_cast<uint32_t>(position);
  return key;
}

// The seed of row `row` of a call: its own entry of `seeds` (the uint64 bit pattern carried as
// int64) when the call has per-row seeds, else the call's one seed.
MDLM_HOST_DEVICE inline uint64_t row_seed(uint64_t seed, const int64_t* seeds, int64_t row) {
  return seeds != nullptr ? static_cast<uint64_t>(seeds[row]) : seed;
}

// Block `block` of four 32-bit words under `key`: counter = (block, position, row, step|purpose).
MDLM_HOST_DEVICE inline Philox4x32 philox_block(const NoiseKey& key, uint32_t block) {
  Philox4x32 c;
  c.v[0] = block;
  c.v[1] = key.position;
  c.v[2] = key.row;
  c.v[3] = key.step_purpose;
  return philox4x32_10(c, key.k0, key.k1);
}

// 53-bit uniform in the open interval (0, 1): a 27-bit high part and a 26-bit low part, as
// numpy does; the single zero outcome becomes 2^-54 so that log(u) and log(-log(u)) stay finite.
MDLM_HOST_DEVICE inline double uniform53(uint32_t a, uint32_t b) {
  const uint64_t x = (static_cast<uint64_t>(a >> 5) << 26) | static_cast<uint64_t>(b >> 6);
  return x == 0 ? 5.551115123125783e-17 /* 2^-54 */ : static_cast<double>(x) * 1.1102230246251565e-16 /* 2^-53 */;
}

// 24-bit uniform in [0, 1) in float32, the resolution of torch.rand (used by "fp32-mdlm").
MDLM_HOST_DEVICE inline float uniform24(uint32_t a) {
  return static_cast<float>(a >> 8) * 5.9604644775390625e-08f /* 2^-24 */;
}

// Uniform number `index` of a key's double stream: two per Philox block.
MDLM_HOST_DEVICE inline double uniform53_at(const NoiseKey& key, uint32_t index) {
  const Philox4x32 r = philox_block(key, index >> 1);
  return (index & 1u) ? uniform53(r.v[2], r.v[3]) : uniform53(r.v[0], r.v[1]);
}

}  // namespace mdlm_fast
