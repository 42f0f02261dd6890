// Host-only helper of scripts/kernel_report: prints fused_head_sample's launch geometry as JSON,
// one line per shape read from stdin ("dtype n d vocab major smem_optin", dtype 0 = float32,
// 1 = bfloat16, 2 = float16). Built by nvcc together with the kernels; runs without a GPU.
#include <cstdio>

#include "fused_head_sample_geometry.h"

int main() {
  int dtype = 0, major = 0, smem = 0;
  long long n = 0, d = 0, vocab = 0;
  while (std::scanf("%d %lld %lld %lld %d %d", &dtype, &n, &d, &vocab, &major, &smem) == 6) {
    mdlm_fast::HeadKernelLaunch launches[64];
    const int count = mdlm_fast::fused_head_sample_geometry(static_cast<mdlm_fast::HeadDtype>(dtype), n, d, vocab,
                                                            major, smem, launches, 64);
    if (count < 0 || count > 64) {
      std::printf("{\"error\": \"no geometry (%d launches)\"}\n", count);
      continue;
    }
    std::printf("[");
    for (int i = 0; i < count; ++i) {
      const mdlm_fast::HeadKernelLaunch& k = launches[i];
      std::printf(
          "%s{\"kernel\": \"%s\", \"grid\": %lld, \"threads\": %d, \"dyn_smem\": %lld, \"ids_per_block\": %lld, "
          "\"group_rows\": %lld, \"row_groups\": %lld, \"w_bytes_in_flight_per_thread\": %d, "
          "\"serial_rounds_per_warp\": %lld, \"logits_written\": %lld, \"logits_read\": %lld}",
          i ? ", " : "", k.kernel, static_cast<long long>(k.grid), k.threads, static_cast<long long>(k.dyn_smem),
          static_cast<long long>(k.ids_per_block), static_cast<long long>(k.group_rows),
          static_cast<long long>(k.row_groups), k.w_bytes_in_flight_per_thread,
          static_cast<long long>(k.serial_rounds_per_warp), static_cast<long long>(k.logits_written),
          static_cast<long long>(k.logits_read));
    }
    std::printf("]\n");
  }
  return 0;
}
