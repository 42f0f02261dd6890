// CUDA adapter of fused_head_sample: the CPU kernel's argument checks (same messages) plus
// same-device checks, device guard, current stream, workspace from the caching allocator; the
// kernels themselves are torch-free (fused_head_sample_kernels.cu).
//
// Three CPU checks need tensor *values* (banned ids inside [0, V); a row with a NaN logit or with
// every id banned or -inf is an error). Reading them back would make every call wait for the
// device, so this op never does: out-of-range banned ids match nothing and such rows get a code
// token (kNanRowToken, kEmptyRowToken). mdlm_fast/ops/head_status.py turns the result into a
// status on the device, which ops.fused_head_sample raises at once (one sync) or a sampling run
// reads at its end, with the CPU kernel's messages.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <limits>

#include "checks.h"
#include "fused_head_sample_kernels.cuh"

namespace mdlm_fast {
namespace {

// The CPU kernel's twin in signature and checks: both implement the one schema of ops.cpp.
std::tuple<at::Tensor, at::Tensor> fused_head_sample_cuda(const at::Tensor& hidden, const at::Tensor& weight,
                                                          const c10::optional<at::Tensor>& bias, const at::Tensor& keys,
                                                          int64_t seed, int64_t purpose, double temperature,
                                                          const at::Tensor& banned, bool return_logprob,
                                                          const c10::optional<at::Tensor>& seeds) {
  // --- the CPU kernel's checks, in its order and words ---
  check_fused_head_args(hidden, weight, bias, keys, purpose, temperature, banned);
  check_row_seeds(seeds, hidden.size(0));
  const auto dtype = hidden.scalar_type();
  const int64_t n = hidden.size(0), vocab = weight.size(0), d = hidden.size(1);

  // --- CUDA-only checks ---
  check_fused_head_devices(hidden, weight, bias, keys, banned, seeds, at::kCUDA, "cuda");
  MDLM_CHECK_SAME_DEVICE(weight, "weight", hidden, "hidden");
  if (bias.has_value()) MDLM_CHECK_SAME_DEVICE(*bias, "bias", hidden, "hidden");
  MDLM_CHECK_SAME_DEVICE(keys, "keys", hidden, "hidden");
  MDLM_CHECK_SAME_DEVICE(banned, "banned", hidden, "hidden");
  if (seeds.has_value()) MDLM_CHECK_SAME_DEVICE(*seeds, "seeds", hidden, "hidden");
  MDLM_CHECK_ARG(vocab <= std::numeric_limits<int32_t>::max(), "weight",
                 "must have at most 2^31 - 1 vocabulary rows on CUDA, got ", vocab);
  const c10::cuda::CUDAGuard guard(hidden.device());
  if (dtype != at::kFloat) {
    int major = 0, minor = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, hidden.get_device()));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, hidden.get_device()));
    MDLM_CHECK_ARG(major >= 8, "hidden", "in ", dtype, " needs a GPU of compute capability 8.0 or newer (",
                   "bfloat16/float16 tensor-core kernels), got ", major, ".", minor, "; use float32 on this GPU");
  }

  // Same layout rules as the CPU kernel: W needs unit column stride; hidden may have any strides
  // (the kernel packs it); small tensors are made contiguous.
  const at::Tensor weight_c = weight.stride(1) == 1 ? weight : weight.contiguous();
  const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  const at::Tensor keys_c = keys.contiguous();
  const at::Tensor banned_c = banned.contiguous();
  const at::Tensor seeds_c = seeds.has_value() ? seeds->contiguous() : at::Tensor();
  at::Tensor tokens = at::empty({n}, hidden.options().dtype(at::kLong));
  at::Tensor logprob = at::empty({return_logprob ? n : 0}, hidden.options().dtype(at::kFloat));
  if (n == 0) return {tokens, logprob};

  FusedHeadParams p;
  p.dtype = dtype == at::kFloat      ? HeadDtype::kFloat32
            : dtype == at::kBFloat16 ? HeadDtype::kBFloat16
                                     : HeadDtype::kFloat16;
  p.hidden = hidden.data_ptr();
  p.n = n;
  p.d = d;
  p.hidden_stride_row = hidden.stride(0);
  p.hidden_stride_col = hidden.stride(1);
  p.weight = weight_c.data_ptr();
  p.vocab = vocab;
  p.weight_stride_row = weight_c.stride(0);
  p.bias = bias_c.defined() ? bias_c.data_ptr() : nullptr;
  p.keys = keys_c.data_ptr<int64_t>();
  p.seed = static_cast<uint64_t>(seed);
  p.seeds = seeds_c.defined() ? seeds_c.data_ptr<int64_t>() : nullptr;
  p.purpose = static_cast<uint32_t>(purpose);
  p.temperature = static_cast<float>(temperature);  // the CPU kernel also works with the float
  p.banned = banned_c.numel() > 0 ? banned_c.data_ptr<int64_t>() : nullptr;
  p.n_banned = banned_c.numel();
  p.tokens = tokens.data_ptr<int64_t>();
  p.logprob = return_logprob ? logprob.data_ptr<float>() : nullptr;

  const size_t ws_bytes = fused_head_sample_workspace_bytes(p.dtype, n, d, vocab);
  // The caching allocator returns 512-byte aligned blocks and orders reuse on this stream, so the
  // workspace may be released when this function returns.
  const at::Tensor workspace = at::empty({static_cast<int64_t>(ws_bytes)}, hidden.options().dtype(at::kByte));
  C10_CUDA_CHECK(
      launch_fused_head_sample(p, workspace.data_ptr(), ws_bytes, c10::cuda::getCurrentCUDAStream().stream()));
  return {tokens, logprob};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdlm_fast, CUDA, m) { m.impl("fused_head_sample", &fused_head_sample_cuda); }

}  // namespace mdlm_fast
