// Argument checks for the torch adapters: every message names the argument and the expectation.
#pragma once

#include <torch/types.h>

#include <cmath>
#include <string>

#define MDLM_CHECK_ARG(cond, arg, ...) TORCH_CHECK(cond, "mdlm_fast: argument '", arg, "' ", __VA_ARGS__)

#define MDLM_CHECK_DIM(t, arg, d) \
  MDLM_CHECK_ARG((t).dim() == (d), arg, "must be a ", d, "-D tensor, got shape ", (t).sizes())

#define MDLM_CHECK_DTYPE(t, arg, dt) \
  MDLM_CHECK_ARG((t).scalar_type() == (dt), arg, "must have dtype ", dt, ", got ", (t).scalar_type())

#define MDLM_CHECK_SAME_DEVICE(t, arg, ref, ref_arg)                                                     \
  MDLM_CHECK_ARG((t).device() == (ref).device(), arg, "must be on the same device as '", ref_arg, "' (", \
                 (ref).device(), "), got ", (t).device())

namespace mdlm_fast {

// Temperatures of fused_head_sample besides 0 (argmax). Below 1e-6 every practical logit gap is
// multiplied past a million and the draw is the argmax anyway, while the division drives finite
// logits toward float32 overflow: such values are refused (pass 0) rather than silently turned
// into argmax. The upper bound is float32's largest finite value, the precision the kernels use.
constexpr double kMinTemperature = 1e-6;
constexpr double kMaxTemperature = 3.4028234663852886e38;

// The one device check every op makes: each tensor argument lives on the kernel's device.
#define MDLM_CHECK_ON_DEVICE(t, arg, device_type, device_name)                              \
  MDLM_CHECK_ARG((t).device().type() == (device_type), arg, "must be on the ", device_name, \
                 " device like the other arguments of this call, got ", (t).device())

// keys: int64 [N, 3] rows of (step, row, position).
inline void check_keys(const at::Tensor& keys, const char* arg) {
  MDLM_CHECK_DIM(keys, arg, 2);
  MDLM_CHECK_ARG(keys.size(1) == 3, arg, "must have shape [N, 3] (step, row, position), got ", keys.sizes());
  MDLM_CHECK_DTYPE(keys, arg, at::kLong);
}

inline void check_purpose(int64_t purpose) {
  MDLM_CHECK_ARG(purpose >= 0 && purpose < 256, "purpose", "must be in [0, 255], got ", purpose);
}

// philox_noise's `dist` argument; the values are the kernels' (philox_kernels.cuh) too.
enum NoiseDist : int { kNoiseUniform = 0, kNoiseGumbel = 1, kNoiseUniform24 = 2 };
// The names the op takes, indexed by NoiseDist (Python reads them from _C.constants()).
constexpr const char* kNoiseDistNames[] = {"uniform", "gumbel", "uniform24"};
constexpr int kNumNoiseDists = 3;

inline NoiseDist parse_noise_dist(c10::string_view dist) {
  for (int i = 0; i < kNumNoiseDists; ++i) {
    if (dist == kNoiseDistNames[i]) return static_cast<NoiseDist>(i);
  }
  TORCH_CHECK(false, "mdlm_fast: argument 'dist' must be one of 'uniform', 'gumbel', 'uniform24', got '",
              std::string(dist), "'");
}

// The shape, dtype and range checks of fused_head_sample that need no tensor values (so no device
// synchronization): shared by the CPU and CUDA adapters, which must refuse the same inputs.
inline void check_fused_head_args(const at::Tensor& hidden, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias, const at::Tensor& keys, int64_t purpose,
                                  double temperature, const at::Tensor& banned) {
  MDLM_CHECK_DIM(hidden, "hidden", 2);
  MDLM_CHECK_DIM(weight, "weight", 2);
  const auto dtype = hidden.scalar_type();
  MDLM_CHECK_ARG(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, "hidden",
                 "must be float32, bfloat16 or float16, got ", dtype);
  MDLM_CHECK_ARG(weight.scalar_type() == dtype, "weight", "must have the dtype of 'hidden' (", dtype, "), got ",
                 weight.scalar_type());
  MDLM_CHECK_ARG(weight.size(1) == hidden.size(1), "weight",
                 "must have shape [V, d] with d = hidden.size(1) = ", hidden.size(1), ", got ", weight.sizes());
  const int64_t n = hidden.size(0), vocab = weight.size(0);
  MDLM_CHECK_ARG(vocab > 0, "weight", "must have at least one vocabulary row");
  if (bias.has_value()) {
    MDLM_CHECK_DIM(*bias, "bias", 1);
    MDLM_CHECK_ARG(bias->size(0) == vocab, "bias", "must have shape [V] = [", vocab, "], got ", bias->sizes());
    MDLM_CHECK_ARG(bias->scalar_type() == dtype, "bias", "must have the dtype of 'weight' (", dtype, "), got ",
                   bias->scalar_type());
  }
  check_keys(keys, "keys");
  MDLM_CHECK_ARG(keys.size(0) == n, "keys", "must have one row per hidden row (", n, "), got ", keys.size(0));
  check_purpose(purpose);
  MDLM_CHECK_ARG(temperature == 0 || (temperature >= kMinTemperature && temperature <= kMaxTemperature), "temperature",
                 "must be 0 (argmax) or in [", kMinTemperature, ", ", kMaxTemperature, "] (float32), got ",
                 temperature);
  MDLM_CHECK_DIM(banned, "banned", 1);
  MDLM_CHECK_DTYPE(banned, "banned", at::kLong);
}

// fused_head_sample's optional per-row seeds: int64 [N], one per hidden row.
inline void check_row_seeds(const c10::optional<at::Tensor>& seeds, int64_t n) {
  if (!seeds.has_value()) return;
  MDLM_CHECK_DIM(*seeds, "seeds", 1);
  MDLM_CHECK_DTYPE(*seeds, "seeds", at::kLong);
  MDLM_CHECK_ARG(seeds->size(0) == n, "seeds", "must have one seed per hidden row (", n, "), got ", seeds->size(0));
}

// Every tensor of a fused_head_sample call on one device type (the kernel's).
inline void check_fused_head_devices(const at::Tensor& hidden, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias, const at::Tensor& keys,
                                     const at::Tensor& banned, const c10::optional<at::Tensor>& seeds,
                                     c10::DeviceType type, const char* name) {
  MDLM_CHECK_ON_DEVICE(hidden, "hidden", type, name);
  MDLM_CHECK_ON_DEVICE(weight, "weight", type, name);
  if (bias.has_value()) MDLM_CHECK_ON_DEVICE(*bias, "bias", type, name);
  MDLM_CHECK_ON_DEVICE(keys, "keys", type, name);
  MDLM_CHECK_ON_DEVICE(banned, "banned", type, name);
  if (seeds.has_value()) MDLM_CHECK_ON_DEVICE(*seeds, "seeds", type, name);
}

// The value errors of fused_head_sample, worded once for every backend (reference.py too).
[[noreturn]] inline void fail_banned_out_of_range(int64_t id, int64_t vocab) {
  MDLM_CHECK_ARG(false, "banned", "ids must lie in [0, ", vocab, "), got ", id);
  __builtin_unreachable();
}
[[noreturn]] inline void fail_nan_row(int64_t row) {
  TORCH_CHECK(false, "mdlm_fast: fused_head_sample: row ", row,
              " has a NaN logit (NaN or inf * 0 in 'hidden', 'weight' or 'bias'); nothing can be drawn");
  __builtin_unreachable();
}
[[noreturn]] inline void fail_empty_row(int64_t row) {
  TORCH_CHECK(false, "mdlm_fast: fused_head_sample: every vocabulary id of row ", row,
              " is banned or -inf; nothing can be drawn");
  __builtin_unreachable();
}

}  // namespace mdlm_fast
