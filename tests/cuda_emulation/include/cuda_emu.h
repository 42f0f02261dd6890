// CUDA-on-CPU emulator: just enough of the CUDA runtime and device intrinsics to run the
// project's kernels (csrc/cuda/*_kernels.cu, after transform.py) on the host with g++.
//
// One cooperative fiber per CUDA thread; blocks run one after another. A fiber runs until it
// reaches a barrier or a warp collective, then the scheduler runs the next one; when every
// thread of the block waits, the collectives whose lanes have all arrived complete. Faults that
// real hardware would turn into hangs, garbage or undefined behaviour stop the launch with a
// message instead (emu_last_fault): a barrier not reached by every thread at one call site, a
// collective whose mask names an absent or exited lane or whose lanes wait at different call
// sites, a misaligned vector load, __launch_bounds__ or shared-memory limits exceeded. Shared
// memory is poisoned (0xFF bytes: NaN floats and doubles, -1 integers) before each block, and
// lives in its own heap allocation so that an AddressSanitizer build sees overruns.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------------------------------------
// Qualifiers.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)

// ---------------------------------------------------------------------------------------------
// Runtime types.
typedef enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorLaunchFailure = 719,
} cudaError_t;
typedef void* cudaStream_t;
enum cudaDeviceAttr {
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

struct __nv_bfloat16 {
  uint16_t bits;
};
struct __half {
  uint16_t bits;
};

namespace emu {

// ---------------------------------------------------------------------------------------------
// What a thread is waiting for.
enum class Op : int {
  kNone,
  kShflIdx,
  kShflXor,
  kShflUp,
  kShflDown,
  kBallot,
  kSyncWarp,
  kMma,
  kBarrier,
  kClusterBarrier
};

struct ThreadState;
ThreadState* current();
const dim3& thread_idx();
const dim3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

// Parks the calling thread at a collective; returns its result bits. `payload` carries the
// operand bits (shuffles, ballot) or a pointer to the mma fragments.
uint64_t collective(Op op, unsigned mask, uint64_t payload, int arg, int width, const char* file, int line);
void syncthreads(const char* file, int line);
// Thread-block clusters (sm_90): the barrier over every thread of the cluster, the calling
// block's rank, the cluster's size, and `p` (in the caller's dynamic shared memory) in block `rank`'s.
void cluster_sync(const char* file, int line);
unsigned cluster_block_rank();
unsigned cluster_size();
void* map_shared_rank(const void* p, unsigned rank, const char* file, int line);
[[noreturn]] void fault(const char* file, int line, const char* what);
void check_launch_bounds(unsigned max_threads, const char* kernel);
void check_vector_load(const void* p, size_t align, const char* file, int line);
void* dynamic_shared_base();
void* static_shared(const char* key, size_t bytes);

struct MmaOperands {
  uint32_t a[4], b[2];
  float* c[4];
  int kind;  // 0 = bf16, 1 = fp16
};

// Launch plumbing: validated configuration, then `body` runs once per thread. Blocks run one
// after another, or, with clusters of `cluster` blocks along x, one cluster after another.
bool begin_launch(const void* kernel, dim3 grid, dim3 block, size_t smem);
void run_grid(dim3 grid, dim3 block, size_t smem, unsigned cluster, const std::function<void()>& body);

template <typename... P, typename... A>
void launch_clusters(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, unsigned cluster, A&&... args) {
  if (!begin_launch(reinterpret_cast<const void*>(kernel), grid, block, smem)) return;
  // Parameters are copied once, as the CUDA runtime copies them into the launch.
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  run_grid(grid, block, smem, cluster, [&] { std::apply(kernel, params); });
}

template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t, A&&... args) {
  launch_clusters(kernel, grid, block, smem, 1, std::forward<A>(args)...);
}

template <typename T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_base());
}

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 8 bytes");
  uint64_t bits = 0;
  memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
T from_bits(uint64_t bits) {
  T v;
  memcpy(&v, &bits, sizeof(T));
  return v;
}

// Device-side configuration queries (cudaDeviceGetAttribute and friends).
int device_attribute(cudaDeviceAttr attr);
cudaError_t set_max_dynamic_smem(const void* kernel, int bytes);
cudaError_t take_last_error();

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())

// ---------------------------------------------------------------------------------------------
// Runtime API.
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = emu::device_attribute(attr);
  return cudaSuccess;
}
template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
}
inline cudaError_t cudaGetLastError() { return emu::take_last_error(); }

// cudaLaunchKernelEx with the one attribute the kernels use: a cluster dimension (along x; at
// most 8 blocks, the portable size; the grid a multiple of it).
// (gridDim and blockDim are macros here: set aside while the config's fields are named.)
#pragma push_macro("gridDim")
#pragma push_macro("blockDim")
#undef gridDim
#undef blockDim
enum cudaLaunchAttributeID { cudaLaunchAttributeClusterDimension = 4 };
union cudaLaunchAttributeValue {
  struct {
    unsigned x, y, z;
  } clusterDim;
  char pad[64];
};
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  cudaLaunchAttributeValue val;
};
struct cudaLaunchConfig_t {
  dim3 gridDim, blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  cudaLaunchAttribute* attrs;
  unsigned numAttrs;
};
template <typename... P, typename... A>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(P...), A&&... args) {
  unsigned cluster = 1;
  for (unsigned i = 0; i < config->numAttrs; ++i) {
    const cudaLaunchAttribute& attr = config->attrs[i];
    if (attr.id != cudaLaunchAttributeClusterDimension) return cudaErrorInvalidValue;
    if (attr.val.clusterDim.y != 1 || attr.val.clusterDim.z != 1) return cudaErrorInvalidValue;
    cluster = attr.val.clusterDim.x;
  }
  if (cluster < 1 || cluster > 8 || config->gridDim.x % cluster != 0) return cudaErrorInvalidValue;
  emu::launch_clusters(kernel, config->gridDim, config->blockDim, config->dynamicSmemBytes, cluster,
                       std::forward<A>(args)...);
  return cudaSuccess;  // configuration errors and faults are left for cudaGetLastError, as launches do
}
#pragma pop_macro("blockDim")
#pragma pop_macro("gridDim")

// cooperative_groups' cluster_group, the calls the kernels make. Call sites are the caller's
// (__builtin_FILE/LINE), so barrier faults name the kernel's line.
namespace cooperative_groups {
struct cluster_group {
  void sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) const { emu::cluster_sync(file, line); }
  unsigned block_rank() const { return emu::cluster_block_rank(); }
  unsigned num_blocks() const { return emu::cluster_size(); }
  template <typename T>
  T* map_shared_rank(T* addr, int rank, const char* file = __builtin_FILE(), int line = __builtin_LINE()) const {
    return static_cast<T*>(emu::map_shared_rank(addr, static_cast<unsigned>(rank), file, line));
  }
};
inline cluster_group this_cluster() { return cluster_group{}; }
}  // namespace cooperative_groups

// ---------------------------------------------------------------------------------------------
// Synchronization and warp collectives.
#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::emu::syncwarp_at(__FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_sync(mask, v, src, ...) \
  ::emu::shfl_at(__FILE__, __LINE__, ::emu::Op::kShflIdx, mask, v, src __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_xor_sync(mask, v, lm, ...) \
  ::emu::shfl_at(__FILE__, __LINE__, ::emu::Op::kShflXor, mask, v, lm __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_up_sync(mask, v, d, ...) \
  ::emu::shfl_at(__FILE__, __LINE__, ::emu::Op::kShflUp, mask, v, d __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_down_sync(mask, v, d, ...) \
  ::emu::shfl_at(__FILE__, __LINE__, ::emu::Op::kShflDown, mask, v, d __VA_OPT__(, ) __VA_ARGS__)
#define __ballot_sync(mask, pred) ::emu::ballot_at(__FILE__, __LINE__, mask, pred)
#define __trap() ::emu::fault(__FILE__, __LINE__, "__trap()")

namespace emu {
inline void syncwarp_at(const char* file, int line, unsigned mask = 0xffffffffu) {
  collective(Op::kSyncWarp, mask, 0, 0, 32, file, line);
}
template <typename T>
T shfl_at(const char* file, int line, Op op, unsigned mask, T v, int arg, int width = 32) {
  return from_bits<T>(collective(op, mask, to_bits(v), arg, width, file, line));
}
inline unsigned ballot_at(const char* file, int line, unsigned mask, bool pred) {
  return static_cast<unsigned>(collective(Op::kBallot, mask, pred ? 1 : 0, 0, 32, file, line));
}
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32, D = C in place.
inline void mma_m16n8k16(int kind, float& c0, float& c1, float& c2, float& c3, uint32_t a0, uint32_t a1, uint32_t a2,
                         uint32_t a3, uint32_t b0, uint32_t b1, const char* file, int line) {
  MmaOperands m{{a0, a1, a2, a3}, {b0, b1}, {&c0, &c1, &c2, &c3}, kind};
  collective(Op::kMma, 0xffffffffu, reinterpret_cast<uintptr_t>(&m), 0, 32, file, line);
}
}  // namespace emu
#define EMU_MMA_BF16(...) ::emu::mma_m16n8k16(0, __VA_ARGS__, __FILE__, __LINE__)
#define EMU_MMA_F16(...) ::emu::mma_m16n8k16(1, __VA_ARGS__, __FILE__, __LINE__)

// ---------------------------------------------------------------------------------------------
// Loads, bit tricks, arithmetic with an explicit rounding mode (host IEEE arithmetic is
// round-to-nearest; the build passes -ffp-contract=off so no FMA is formed behind our back).
template <typename T>
inline T __ldg(const T* p) {
  if (alignof(T) > 1) emu::check_vector_load(p, alignof(T), __FILE__, __LINE__);
  return *p;
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }

// bfloat16 / float16 conversions (exact: every value of both formats is a float).
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) { return __nv_bfloat16{bits}; }
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t bits = static_cast<uint32_t>(h.bits) << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}
inline __half __ushort_as_half(unsigned short bits) { return __half{bits}; }
inline float __half2float(__half h) {
  const uint32_t sign = (h.bits >> 15) & 1u, exp = (h.bits >> 10) & 0x1fu, mant = h.bits & 0x3ffu;
  float mag;
  if (exp == 0) {
    mag = ldexpf(static_cast<float>(mant), -24);
  } else if (exp == 31) {
    mag = mant == 0 ? INFINITY : NAN;
  } else {
    mag = ldexpf(static_cast<float>(mant | 0x400u), static_cast<int>(exp) - 25);
  }
  return sign ? -mag : mag;
}
