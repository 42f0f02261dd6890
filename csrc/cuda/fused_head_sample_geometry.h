// Launch geometry of fused_head_sample for one shape, computed by the launcher's own planning
// code (fused_head_sample_kernels.cu), so a performance model built on it cannot drift from the
// kernels. Host-only and torch-free; needs no GPU. scripts/kernel_report reads it.
#pragma once

#include <stdint.h>

#include "fused_head_sample_kernels.cuh"

namespace mdlm_fast {

struct HeadKernelLaunch {
  char kernel[96] = {};  // "chunk_mma_kernel<Bf16Tag, 1, true>": the demangled entry, namespaces dropped
  int64_t grid = 0;      // blocks
  int threads = 0;       // per block
  int64_t dyn_smem = 0;  // bytes of dynamic shared memory per block
  // The W stream (0 for kernels that do not read W): ids per block, rows whose logits one block
  // computes, and how many row groups read each W id (the first from DRAM, the rest from L2).
  int64_t ids_per_block = 0;
  int64_t group_rows = 0;
  int64_t row_groups = 0;
  // The k-loop's structure: bytes of W one thread has in flight at once (the loads it issues
  // before the first of them is used), and the rounds of DRAM latency one warp waits through in
  // sequence (k-blocks per tile over the pipeline depth, times its tiles).
  int w_bytes_in_flight_per_thread = 0;
  int64_t serial_rounds_per_warp = 0;
  // Bytes of logits written to and read back from the workspace by this launch.
  int64_t logits_written = 0;
  int64_t logits_read = 0;
};

// Fills up to `capacity` launches in enqueue order for a call with these sizes on a device of
// compute capability `major` (9 and up: the cluster grid) with `smem_optin` bytes of opt-in
// shared memory per block; returns how many the call launches (may exceed capacity), or -1 for
// invalid sizes.
int fused_head_sample_geometry(HeadDtype dtype, int64_t n, int64_t d, int64_t vocab, int major, int smem_optin,
                               HeadKernelLaunch* out, int capacity);

}  // namespace mdlm_fast
