// The project's torch-free launchers, exported for ctypes. Each returns the launcher's
// cudaError_t, or EMU_FAULT when the emulator stopped a kernel.
#include "emu_api.h"

#include <stdio.h>
#include <string.h>

#include "cuda_emu.h"
#include "fused_head_sample_geometry.h"
#include "fused_head_sample_kernels.cuh"
#include "philox_kernels.cuh"

namespace {
int finish(cudaError_t launched) {
  if (emu_last_fault()[0] != '\0') return EMU_FAULT;
  return static_cast<int>(launched);
}
}  // namespace

extern "C" {

int emu_philox_noise(const int64_t* keys, int64_t rows, uint64_t seed, uint32_t purpose, int64_t n, int dist,
                     void* out) {
  return finish(mdlm_fast::launch_philox_noise(keys, rows, seed, purpose, n, dist, out, nullptr));
}

size_t emu_fused_head_workspace_bytes(int dtype, int64_t n, int64_t d, int64_t vocab) {
  return mdlm_fast::fused_head_sample_workspace_bytes(static_cast<mdlm_fast::HeadDtype>(dtype), n, d, vocab);
}

int emu_fused_head_sample(int dtype, const void* hidden, int64_t n, int64_t d, int64_t hidden_stride_row,
                          int64_t hidden_stride_col, const void* weight, int64_t vocab, int64_t weight_stride_row,
                          const void* bias, const int64_t* keys, uint64_t seed, const int64_t* seeds, uint32_t purpose,
                          float temperature, const int64_t* banned, int64_t n_banned, int64_t* tokens, float* logprob,
                          void* workspace, size_t workspace_bytes) {
  mdlm_fast::FusedHeadParams p;
  p.dtype = static_cast<mdlm_fast::HeadDtype>(dtype);
  p.hidden = hidden;
  p.n = n;
  p.d = d;
  p.hidden_stride_row = hidden_stride_row;
  p.hidden_stride_col = hidden_stride_col;
  p.weight = weight;
  p.vocab = vocab;
  p.weight_stride_row = weight_stride_row;
  p.bias = bias;
  p.keys = keys;
  p.seed = seed;
  p.seeds = seeds;
  p.purpose = purpose;
  p.temperature = temperature;
  p.banned = banned;
  p.n_banned = n_banned;
  p.tokens = tokens;
  p.logprob = logprob;
  return finish(mdlm_fast::launch_fused_head_sample(p, workspace, workspace_bytes, nullptr));
}

// The launches of a call, as "kernel grid threads" lines into buf (kernel_report's geometry).
int emu_fused_head_geometry(int dtype, int64_t n, int64_t d, int64_t vocab, int major, int smem_optin, char* buf,
                            size_t size) {
  mdlm_fast::HeadKernelLaunch launches[16];
  const int count = mdlm_fast::fused_head_sample_geometry(static_cast<mdlm_fast::HeadDtype>(dtype), n, d, vocab, major,
                                                          smem_optin, launches, 16);
  size_t used = 0;
  buf[0] = '\0';
  for (int i = 0; i < count && i < 16 && used < size; ++i) {
    used += snprintf(buf + used, size - used, "%s %lld %d\n", launches[i].kernel,
                     static_cast<long long>(launches[i].grid), launches[i].threads);
  }
  return count;
}

}  // extern "C"
