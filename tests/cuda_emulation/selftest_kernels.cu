// Small CUDA kernels that exercise the emulator itself: each either computes a known result or
// commits one defect real hardware would punish, which the emulator must stop with a fault.
// Compiled through transform.py like the project's kernels; entry points for ctypes below.
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "emu_api.h"

namespace {

// Block sum by warp shuffles and static + dynamic shared memory: out[blockIdx.x] = sum of in.
__global__ void __launch_bounds__(256) block_sum_kernel(const float* in, float* out) {
  __shared__ float warp_sums[8];
  extern __shared__ float staged[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  staged[tid] = in[blockIdx.x * blockDim.x + tid];
  __syncthreads();
  float v = staged[blockDim.x - 1 - tid];
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < static_cast<int>(blockDim.x / 32) ? warp_sums[lane] : 0.f;
    const unsigned any = __ballot_sync(0xffffffffu, s != 0.f);
    for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_down_sync(0xffffffffu, s, offset);
    if (lane == 0) out[blockIdx.x] = any != 0u ? s : 0.f;
  }
}

__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 32) __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void barrier_after_exit_kernel(int* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void divergent_shuffle_kernel(int* out) {
  int v = threadIdx.x;
  if ((threadIdx.x & 31) < 8) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = __shfl_sync(0xffffffffu, v, 0);
}

__global__ void absent_lane_kernel(int* out) {  // launched with 16 threads: lanes 16..31 do not exist
  out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);
}

__global__ void uninitialized_shared_kernel(uint32_t* out) {
  extern __shared__ uint32_t words[];
  if (threadIdx.x == 0) words[0] = 7u;
  __syncthreads();
  out[threadIdx.x] = words[threadIdx.x];  // only words[0] was written
}

__global__ void shared_overrun_kernel(float* out) {
  extern __shared__ float buf[];
  buf[threadIdx.x + 1] = 1.f;  // one float past the dynamic allocation for the last thread
  __syncthreads();
  out[threadIdx.x] = buf[threadIdx.x];
}

__global__ void __launch_bounds__(64) bounded_kernel(int* out) { out[threadIdx.x] = 1; }

// Racy on purpose: every thread writes its id to one shared word; who wins depends on the order.
__global__ void race_kernel(int* out) {
  __shared__ int winner[1];
  winner[0] = static_cast<int>(threadIdx.x);
  __syncwarp();
  __syncthreads();
  if (threadIdx.x == 0) out[0] = winner[0];
}

__global__ void mma_bf16_kernel(const uint32_t* a, const uint32_t* b, float* d) {
  const int lane = threadIdx.x;
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  uint32_t a0 = a[4 * lane], a1 = a[4 * lane + 1], a2 = a[4 * lane + 2], a3 = a[4 * lane + 3];
  uint32_t b0 = b[2 * lane], b1 = b[2 * lane + 1];
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  for (int r = 0; r < 4; ++r) d[4 * lane + r] = c[r];
}

__global__ void big_smem_kernel(float* out) {
  extern __shared__ float s[];
  s[threadIdx.x] = 1.f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

// Cluster exchange: each block stages its values in shared memory; after a cluster barrier, block
// r reads block (r + 1) % size's values through distributed shared memory:
// out[b * threads + t] = in[peer(b) * threads + threads - 1 - t].
__global__ void cluster_rotate_kernel(const float* in, float* out) {
  namespace cg = cooperative_groups;
  extern __shared__ float staged[];
  const cg::cluster_group cluster = cg::this_cluster();
  const unsigned t = threadIdx.x, n = blockDim.x, rank = cluster.block_rank();
  staged[t] = in[blockIdx.x * n + t];
  cluster.sync();
  const float* peer = cluster.map_shared_rank(staged, static_cast<int>((rank + 1) % cluster.num_blocks()));
  const float v = peer[n - 1 - t];
  cluster.sync();  // no block exits while another still reads its shared memory
  out[blockIdx.x * n + t] = v;
}

__global__ void cluster_barrier_skipped_kernel(int* out) {
  const cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  if (cluster.block_rank() != 1) cluster.sync();  // block 1 never arrives
  out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}

__global__ void cluster_rank_out_of_range_kernel(int* out) {
  extern __shared__ int cells[];
  const cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  cells[threadIdx.x] = 1;
  cluster.sync();
  out[threadIdx.x] = *cluster.map_shared_rank(cells, static_cast<int>(cluster.num_blocks()));
}

template <typename... P, typename... A>
cudaError_t launch_with_cluster(void (*kernel)(P...), int blocks, int threads, int cluster, size_t smem, A... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(cluster);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  const cudaLaunchConfig_t config = {dim3(blocks), dim3(threads), smem, nullptr, attr, 1};
  return cudaLaunchKernelEx(&config, kernel, args...);
}

int status(cudaError_t launched) {
  if (emu_last_fault()[0] != '\0') return EMU_FAULT;
  return static_cast<int>(launched == cudaSuccess ? cudaGetLastError() : launched);
}

}  // namespace

extern "C" {

int selftest_block_sum(const float* in, float* out, int blocks, int threads) {
  block_sum_kernel<<<blocks, threads, threads * sizeof(float)>>>(in, out);
  return status(cudaSuccess);
}

// which: 0 divergent barrier, 1 barrier after an exit, 2 divergent shuffle, 3 absent lane,
// 4 launch bounds exceeded, 5 race (out[0] = the winner).
int selftest_defect(int which, int* out) {
  switch (which) {
    case 0:
      divergent_barrier_kernel<<<1, 64>>>(out);
      break;
    case 1:
      barrier_after_exit_kernel<<<1, 64>>>(out);
      break;
    case 2:
      divergent_shuffle_kernel<<<1, 32>>>(out);
      break;
    case 3:
      absent_lane_kernel<<<1, 16>>>(out);
      break;
    case 4:
      bounded_kernel<<<1, 128>>>(out);
      break;
    case 5:
      race_kernel<<<1, 64>>>(out);
      break;
    default:
      return -2;
  }
  return status(cudaSuccess);
}

int selftest_uninitialized_shared(uint32_t* out, int threads) {
  uninitialized_shared_kernel<<<1, threads, threads * sizeof(uint32_t)>>>(out);
  return status(cudaSuccess);
}

int selftest_shared_overrun(float* out, int threads) {
  shared_overrun_kernel<<<1, threads, threads * sizeof(float)>>>(out);
  return status(cudaSuccess);
}

int selftest_mma_bf16(const uint32_t* a, const uint32_t* b, float* d) {
  mma_bf16_kernel<<<1, 32>>>(a, b, d);
  return status(cudaSuccess);
}

int selftest_cluster_rotate(const float* in, float* out, int blocks, int threads, int cluster) {
  return status(launch_with_cluster(cluster_rotate_kernel, blocks, threads, cluster, threads * sizeof(float), in, out));
}

// which: 0 a block skips the cluster barrier, 1 map_shared_rank past the cluster, 2 a grid that
// is not a multiple of the cluster.
int selftest_cluster_defect(int which, int* out) {
  switch (which) {
    case 0:
      return status(launch_with_cluster(cluster_barrier_skipped_kernel, 4, 32, 4, 0, out));
    case 1:
      return status(launch_with_cluster(cluster_rank_out_of_range_kernel, 2, 32, 2, 32 * sizeof(int), out));
    case 2:
      return status(launch_with_cluster(cluster_barrier_skipped_kernel, 6, 32, 4, 0, out));
    default:
      return -2;
  }
}

// Dynamic shared memory of `bytes`, opted into first when optin_bytes > 0.
int selftest_smem(float* out, int bytes, int optin_bytes) {
  if (optin_bytes > 0) {
    const cudaError_t e =
        cudaFuncSetAttribute(big_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin_bytes);
    if (e != cudaSuccess) return static_cast<int>(e);
  }
  big_smem_kernel<<<1, 32, static_cast<size_t>(bytes)>>>(out);
  return status(cudaSuccess);
}

}  // extern "C"
