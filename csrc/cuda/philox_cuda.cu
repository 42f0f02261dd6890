// CUDA adapter of philox_noise: argument checks (the CPU kernel's, same messages), device guard,
// current stream; the kernel itself is torch-free (philox_kernels.cu).
//
// The CPU kernel also checks every key's step column against [0, 2^24). On CUDA that needs the
// keys on the host (a device synchronization), so it runs only when the environment variable
// MDLM_FAST_CUDA_CHECK_VALUES is 1; otherwise the step is used modulo 2^24, as the key packing
// does anyway.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "checks.h"
#include "mdlm_fast/philox.h"
#include "philox_kernels.cuh"

namespace mdlm_fast {
namespace {

bool check_values_on_cuda() {
  const char* v = std::getenv("MDLM_FAST_CUDA_CHECK_VALUES");
  return v != nullptr && (std::strcmp(v, "1") == 0 || std::strcmp(v, "true") == 0);
}

at::Tensor philox_noise_cuda(const at::Tensor& keys, int64_t seed, int64_t purpose, int64_t n,
                             c10::string_view dist_name) {
  check_keys(keys, "keys");
  check_purpose(purpose);
  MDLM_CHECK_ARG(n >= 0 && n <= (int64_t{1} << 32), "n", "must be in [0, 2^32], got ", n);
  const int dist = parse_noise_dist(dist_name);
  MDLM_CHECK_ARG(keys.is_cuda(), "keys", "must be a CUDA tensor here, got ", keys.device());
  const c10::cuda::CUDAGuard guard(keys.device());
  const at::Tensor keys_c = keys.contiguous();
  const int64_t rows = keys_c.size(0);
  if (rows > 0 && check_values_on_cuda()) {
    const at::Tensor steps = keys_c.select(1, 0);
    const at::Tensor bad = ((steps < 0) | (steps > kMaxStep)).nonzero();
    if (bad.size(0) > 0) {
      const int64_t i = bad[0][0].item<int64_t>();
      MDLM_CHECK_ARG(false, "keys", "step column must be in [0, 2^24), got ", steps[i].item<int64_t>(), " in row ", i);
    }
  }
  const auto dtype = dist == kPhiloxUniform24 ? at::kFloat : at::kDouble;
  at::Tensor out = at::empty({rows, n}, keys.options().dtype(dtype));
  if (rows == 0 || n == 0) return out;
  C10_CUDA_CHECK(launch_philox_noise(keys_c.data_ptr<int64_t>(), rows, static_cast<uint64_t>(seed),
                                     static_cast<uint32_t>(purpose), n, dist, out.data_ptr(),
                                     c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mdlm_fast, CUDA, m) { m.impl("philox_noise", &philox_noise_cuda); }

}  // namespace mdlm_fast
