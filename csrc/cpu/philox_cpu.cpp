// CPU kernel of philox_noise.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "mdlm_fast/gumbel.h"
#include "mdlm_fast/philox.h"

namespace mdlm_fast {
namespace {

at::Tensor philox_noise_cpu(const at::Tensor& keys, int64_t seed, int64_t purpose, int64_t n,
                            c10::string_view dist_name) {
  check_keys(keys, "keys");
  MDLM_CHECK_ON_DEVICE(keys, "keys", at::kCPU, "cpu");
  check_purpose(purpose);
  MDLM_CHECK_ARG(n >= 0 && n <= (int64_t{1} << 32), "n", "must be in [0, 2^32], got ", n);
  const NoiseDist dist = parse_noise_dist(dist_name);
  const at::Tensor keys_c = keys.contiguous();
  const int64_t rows = keys_c.size(0);
  const auto* k = keys_c.data_ptr<int64_t>();
  for (int64_t i = 0; i < rows; ++i) {
    MDLM_CHECK_ARG(k[3 * i] >= 0 && k[3 * i] <= kMaxStep, "keys", "step column must be in [0, 2^24), got ", k[3 * i],
                   " in row ", i);
  }
  const auto dtype = dist == kNoiseUniform24 ? at::kFloat : at::kDouble;
  at::Tensor out = at::empty({rows, n}, keys.options().dtype(dtype));
  const uint64_t useed = static_cast<uint64_t>(seed);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const NoiseKey key = make_noise_key(useed, static_cast<uint32_t>(purpose), k[3 * i], k[3 * i + 1], k[3 * i + 2]);
      if (dist == kNoiseUniform24) {
        float* o = out.data_ptr<float>() + i * n;
        for (int64_t j = 0; j < n; j += 4) {
          const Philox4x32 r = philox_block(key, static_cast<uint32_t>(j >> 2));
          for (int64_t w = 0; w < 4 && j + w < n; ++w) o[j + w] = uniform24(r.v[w]);
        }
      } else {
        double* o = out.data_ptr<double>() + i * n;
        for (int64_t j = 0; j < n; j += 2) {
          const Philox4x32 r = philox_block(key, static_cast<uint32_t>(j >> 1));
          const double u0 = uniform53(r.v[0], r.v[1]);
          const double u1 = uniform53(r.v[2], r.v[3]);
          const bool gumbel = dist == kNoiseGumbel;
          o[j] = gumbel ? gumbel_from_uniform(u0) : u0;
          if (j + 1 < n) o[j + 1] = gumbel ? gumbel_from_uniform(u1) : u1;
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mdlm_fast, CPU, m) { m.impl("philox_noise", &philox_noise_cpu); }

}  // namespace mdlm_fast
