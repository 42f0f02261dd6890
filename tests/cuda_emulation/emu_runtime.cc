// The emulator's scheduler, collectives and launch checks (see include/cuda_emu.h).
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_emu.h"
#include "emu_api.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

namespace emu {

struct ThreadState {
  ucontext_t ctx;
  dim3 tid;
  unsigned linear = 0;  // within its block
  unsigned block = 0;   // its block's rank in the cluster
  bool done = false;
  Op op = Op::kNone;  // what it waits for (kNone: runnable)
  unsigned mask = 0;
  uint64_t payload = 0, result = 0;
  int arg = 0, width = 32;
  const char* file = "";
  int line = 0;
};

namespace {

constexpr size_t kStackBytes = EMU_ASAN ? (1u << 20) : (256u << 10);
constexpr size_t kDefaultSmem = 48 * 1024;

struct Config {
  int order = EMU_ORDER_FORWARD;
  uint64_t seed = 0;
  int major = 9, minor = 0;
  int smem_optin = 232448;  // sm_90: 227 KB per block with opt-in
} g_config;

// One block of the running cluster: its index and its shared memory.
struct BlockState {
  dim3 idx;
  bool exited = false;  // every thread done: its shared memory is poisoned again
  char* dyn_smem = nullptr;
  std::map<std::string, std::pair<char*, size_t>> static_smem;
};

struct Launch {
  dim3 grid, block;
  size_t smem = 0;       // dynamic shared memory per block
  unsigned cluster = 1;  // blocks per cluster (along x); they run together
  std::vector<BlockState> blocks;
  std::vector<ThreadState> threads;  // the cluster's threads, block by block
  std::vector<char*> stacks;
  const std::function<void()>* body = nullptr;
  ThreadState* cur = nullptr;
  ucontext_t scheduler;
  std::mt19937_64 rng;
  bool aborted = false;
#if EMU_ASAN
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
#endif
};

Launch* g_launch = nullptr;
std::string g_fault;  // sticky: the first fault since the last reset
cudaError_t g_last_error = cudaSuccess;
std::map<const void*, int> g_max_dyn_smem;

std::string where(const char* file, int line) {
  std::string f = file;
  const size_t slash = f.find_last_of('/');
  if (slash != std::string::npos) f = f.substr(slash + 1);
  return f + ":" + std::to_string(line);
}

std::string thread_name(const ThreadState& t) {
  const dim3& b = g_launch->blocks[t.block].idx;
  return "thread (" + std::to_string(t.tid.x) + "," + std::to_string(t.tid.y) + "," + std::to_string(t.tid.z) +
         ") of block (" + std::to_string(b.x) + "," + std::to_string(b.y) + "," + std::to_string(b.z) + ")";
}

const char* op_name(Op op) {
  switch (op) {
    case Op::kShflIdx:
      return "__shfl_sync";
    case Op::kShflXor:
      return "__shfl_xor_sync";
    case Op::kShflUp:
      return "__shfl_up_sync";
    case Op::kShflDown:
      return "__shfl_down_sync";
    case Op::kBallot:
      return "__ballot_sync";
    case Op::kSyncWarp:
      return "__syncwarp";
    case Op::kMma:
      return "mma.sync.m16n8k16";
    case Op::kBarrier:
      return "__syncthreads";
    case Op::kClusterBarrier:
      return "cluster.sync()";
    default:
      return "nothing";
  }
}

std::string waiting_at(const ThreadState& t) {
  if (t.done) return "has exited";
  return std::string("waits at ") + op_name(t.op) + " (" + where(t.file, t.line) + ")";
}

// Records the fault; inside a fiber, returns to the scheduler for good.
void record_fault(const std::string& what) {
  if (g_fault.empty()) g_fault = what;
  if (g_launch != nullptr) g_launch->aborted = true;
}

void switch_to_scheduler(ThreadState* t) {
  Launch& l = *g_launch;
#if EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(t->done || l.aborted ? nullptr : &fake, l.sched_stack_bottom, l.sched_stack_size);
  swapcontext(&t->ctx, &l.scheduler);
  __sanitizer_finish_switch_fiber(fake, &l.sched_stack_bottom, &l.sched_stack_size);
#else
  swapcontext(&t->ctx, &l.scheduler);
#endif
}

void fiber_entry() {
  Launch& l = *g_launch;
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &l.sched_stack_bottom, &l.sched_stack_size);
#endif
  (*l.body)();
  l.cur->done = true;
  l.cur->op = Op::kNone;
  switch_to_scheduler(l.cur);
}

void run_fiber(ThreadState& t, size_t index) {
  Launch& l = *g_launch;
  l.cur = &t;
#if EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, l.stacks[index], kStackBytes);
  swapcontext(&l.scheduler, &t.ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)index;
  swapcontext(&l.scheduler, &t.ctx);
#endif
  l.cur = nullptr;
}

std::vector<size_t> sweep_order(size_t n) {
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  if (g_config.order == EMU_ORDER_REVERSE) std::reverse(order.begin(), order.end());
  if (g_config.order == EMU_ORDER_RANDOM) std::shuffle(order.begin(), order.end(), g_launch->rng);
  return order;
}

float mma_input(uint32_t word, int half, int kind) {
  const uint16_t bits = static_cast<uint16_t>(word >> (16 * half));
  return kind == 0 ? __bfloat162float(__nv_bfloat16{bits}) : __half2float(__half{bits});
}

// D = A B + C over the warp's fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16"). A model
// of the tensor core, not its exact rounding: products are exact (bf16/fp16 into double) and the
// 16-term dot product plus C is rounded to float once.
void complete_mma(ThreadState* lanes[32]) {
  float a[16][16], b[16][8], c[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const MmaOperands& m = *reinterpret_cast<const MmaOperands*>(static_cast<uintptr_t>(lanes[lane]->payload));
    const int g = lane >> 2, t = lane & 3;
    for (int h = 0; h < 2; ++h) {
      a[g][2 * t + h] = mma_input(m.a[0], h, m.kind);
      a[g + 8][2 * t + h] = mma_input(m.a[1], h, m.kind);
      a[g][2 * t + 8 + h] = mma_input(m.a[2], h, m.kind);
      a[g + 8][2 * t + 8 + h] = mma_input(m.a[3], h, m.kind);
      b[2 * t + h][g] = mma_input(m.b[0], h, m.kind);
      b[2 * t + 8 + h][g] = mma_input(m.b[1], h, m.kind);
    }
    c[g][2 * t] = *m.c[0];
    c[g][2 * t + 1] = *m.c[1];
    c[g + 8][2 * t] = *m.c[2];
    c[g + 8][2 * t + 1] = *m.c[3];
  }
  for (int lane = 0; lane < 32; ++lane) {
    const MmaOperands& m = *reinterpret_cast<const MmaOperands*>(static_cast<uintptr_t>(lanes[lane]->payload));
    const int g = lane >> 2, t = lane & 3;
    const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int r = 0; r < 4; ++r) {
      double acc = c[rows[r]][cols[r]];
      for (int k = 0; k < 16; ++k) acc += static_cast<double>(a[rows[r]][k]) * static_cast<double>(b[k][cols[r]]);
      *m.c[r] = static_cast<float>(acc);
    }
  }
}

// Completes the collective lane `first` waits at, or faults. Returns true when it completed.
bool resolve_collective(std::vector<ThreadState>& threads, size_t warp_base, size_t block_end, ThreadState& first) {
  const unsigned lane0 = first.linear - static_cast<unsigned>(warp_base);
  const std::string site = std::string(op_name(first.op)) + " at " + where(first.file, first.line);
  if (first.op == Op::kMma && first.mask != 0xffffffffu) {
    record_fault(site + ": mma.sync.aligned needs the whole warp");
    return false;
  }
  if (!((first.mask >> lane0) & 1u)) {
    record_fault(site + ": the mask 0x" +
                 [&] {
                   char b[16];
                   snprintf(b, sizeof b, "%08x", first.mask);
                   return std::string(b);
                 }() +
                 " does not name the calling lane " + std::to_string(lane0) + " (" + thread_name(first) + ")");
    return false;
  }
  ThreadState* lanes[32] = {};
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (!((first.mask >> lane) & 1u)) continue;
    const size_t idx = warp_base + lane;
    if (idx >= block_end) {
      record_fault(site + ": the mask names lane " + std::to_string(lane) + ", which the block does not have (" +
                   std::to_string(g_launch->block.x * g_launch->block.y * g_launch->block.z) + " threads)");
      return false;
    }
    ThreadState& t = threads[idx];
    if (t.done || t.op != first.op || t.line != first.line || strcmp(t.file, first.file) != 0 || t.mask != first.mask) {
      record_fault(site + " (" + thread_name(first) + "): lane " + std::to_string(lane) + " of its mask " +
                   waiting_at(t) + (t.done || t.op == Op::kNone ? "" : " with mask " + std::to_string(t.mask)) +
                   " -- a collective in divergent code");
      return false;
    }
    lanes[lane] = &t;
  }
  const int width = first.width;
  for (unsigned lane = 0; lane < 32; ++lane) {
    ThreadState* t = lanes[lane];
    if (t == nullptr) continue;
    const unsigned seg = lane / width * width;
    int src = -1;
    switch (first.op) {
      case Op::kShflIdx:
        src = static_cast<int>(seg + (static_cast<unsigned>(t->arg) % width));
        break;
      case Op::kShflXor:
        src = static_cast<int>(lane ^ static_cast<unsigned>(t->arg));
        break;
      case Op::kShflUp:
        src = static_cast<int>(lane) - t->arg < static_cast<int>(seg) ? static_cast<int>(lane)
                                                                      : static_cast<int>(lane) - t->arg;
        break;
      case Op::kShflDown:
        src = static_cast<int>(lane) + t->arg >= static_cast<int>(seg + width) ? static_cast<int>(lane)
                                                                               : static_cast<int>(lane) + t->arg;
        break;
      default:
        break;
    }
    if (src >= 0) {
      if (src >= 32 || lanes[src] == nullptr) {
        record_fault(site + " (" + thread_name(*t) + "): reads lane " + std::to_string(src) +
                     ", which is not in the mask (undefined value)");
        return false;
      }
      t->result = lanes[src]->payload;
    } else if (first.op == Op::kBallot) {
      uint64_t bits = 0;
      for (unsigned l = 0; l < 32; ++l) {
        if (lanes[l] != nullptr && lanes[l]->payload != 0) bits |= uint64_t{1} << l;
      }
      t->result = bits;
    }
  }
  if (first.op == Op::kMma) complete_mma(lanes);
  for (ThreadState* t : lanes) {
    if (t != nullptr) t->op = Op::kNone;
  }
  return true;
}

// The first thread of `from`..`to` that is not waiting at barrier `op` at the call site of `at`.
const ThreadState* first_absent(const std::vector<ThreadState>& threads, size_t from, size_t to, Op op,
                                const ThreadState& at) {
  for (size_t i = from; i < to; ++i) {
    const ThreadState& t = threads[i];
    if (t.op != op || t.line != at.line || strcmp(t.file, at.file) != 0) return &t;
  }
  return nullptr;
}

// Runs one cluster (by default one block) to completion (or to a fault): the threads of all its
// blocks interleave, so a cluster barrier sees every block of the cluster.
void run_cluster(Launch& l) {
  const size_t n = l.threads.size(), per_block = n / l.cluster;
  for (size_t i = 0; i < n; ++i) {
    ThreadState& t = l.threads[i];
    t = ThreadState();
    const size_t local = i % per_block;
    t.linear = static_cast<unsigned>(local);
    t.block = static_cast<unsigned>(i / per_block);
    t.tid = dim3(static_cast<unsigned>(local % l.block.x), static_cast<unsigned>(local / l.block.x % l.block.y),
                 static_cast<unsigned>(local / (l.block.x * l.block.y)));
    getcontext(&t.ctx);
    t.ctx.uc_stack.ss_sp = l.stacks[i];
    t.ctx.uc_stack.ss_size = kStackBytes;
    t.ctx.uc_link = nullptr;
    makecontext(&t.ctx, fiber_entry, 0);
  }
  while (!l.aborted) {
    for (size_t i : sweep_order(n)) {
      ThreadState& t = l.threads[i];
      if (t.done || t.op != Op::kNone) continue;
      run_fiber(t, i);
      if (l.aborted) return;
    }
    // A block that has exited no longer owns its shared memory: a cluster peer still reading it
    // (a missing cluster barrier) sees poison, as it would see garbage on the GPU.
    for (size_t b0 = 0; b0 < n; b0 += per_block) {
      BlockState& bs = l.blocks[b0 / per_block];
      if (bs.exited) continue;
      bool done = true;
      for (size_t i = b0; i < b0 + per_block; ++i) done &= l.threads[i].done;
      if (!done) continue;
      bs.exited = true;
      memset(bs.dyn_smem, 0xFF, l.smem > 0 ? l.smem : 1);
      for (auto& kv : bs.static_smem) memset(kv.second.first, 0xFF, kv.second.second);
    }
    // Everyone is parked or done: complete what can complete.
    bool progressed = false;
    for (size_t b0 = 0; b0 < n && !l.aborted; b0 += per_block) {
      for (size_t w = b0; w < b0 + per_block && !l.aborted; w += 32) {
        for (size_t i = w; i < std::min(b0 + per_block, w + 32) && !l.aborted; ++i) {
          ThreadState& t = l.threads[i];
          if (t.op != Op::kNone && t.op != Op::kBarrier && t.op != Op::kClusterBarrier &&
              resolve_collective(l.threads, w, b0 + per_block, t)) {
            progressed = true;
          }
        }
      }
    }
    if (l.aborted) return;
    if (progressed) continue;
    // Barriers: a block whose threads all wait at one __syncthreads, a cluster whose threads all
    // wait at one cluster barrier.
    for (size_t b0 = 0; b0 < n; b0 += per_block) {
      const ThreadState& head = l.threads[b0];
      if (head.op == Op::kBarrier && first_absent(l.threads, b0, b0 + per_block, Op::kBarrier, head) == nullptr) {
        for (size_t i = b0; i < b0 + per_block; ++i) l.threads[i].op = Op::kNone;
        progressed = true;
      }
    }
    if (l.threads[0].op == Op::kClusterBarrier &&
        first_absent(l.threads, 0, n, Op::kClusterBarrier, l.threads[0]) == nullptr) {
      for (ThreadState& t : l.threads) t.op = Op::kNone;
      progressed = true;
    }
    if (progressed) continue;
    bool all_done = true;
    for (const ThreadState& t : l.threads) all_done &= t.done;
    if (all_done) return;
    // Stuck: name the barrier some thread waits at and a thread that never reaches it.
    for (size_t i = 0; i < n; ++i) {
      const ThreadState& at = l.threads[i];
      if (at.op == Op::kBarrier) {
        const size_t b0 = i / per_block * per_block;
        const ThreadState* t = first_absent(l.threads, b0, b0 + per_block, Op::kBarrier, at);
        record_fault(std::string("__syncthreads at ") + where(at.file, at.line) + " (" + thread_name(at) +
                     ") is not reached by every thread of the block: " + thread_name(*t) + " " + waiting_at(*t));
        return;
      }
      if (at.op == Op::kClusterBarrier) {
        const ThreadState* t = first_absent(l.threads, 0, n, Op::kClusterBarrier, at);
        record_fault(std::string("cluster.sync() at ") + where(at.file, at.line) + " (" + thread_name(at) +
                     ") is not reached by every thread of the cluster: " + thread_name(*t) + " " + waiting_at(*t));
        return;
      }
    }
    record_fault("deadlock: no thread can proceed");
    return;
  }
}

}  // namespace

ThreadState* current() { return g_launch != nullptr ? g_launch->cur : nullptr; }
const dim3& thread_idx() { return g_launch->cur->tid; }
const dim3& block_idx() { return g_launch->blocks[g_launch->cur->block].idx; }
const dim3& block_dim() { return g_launch->block; }
const dim3& grid_dim() { return g_launch->grid; }

uint64_t collective(Op op, unsigned mask, uint64_t payload, int arg, int width, const char* file, int line) {
  ThreadState* t = current();
  if (t == nullptr) throw std::logic_error("a warp collective called outside a kernel");
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0)
    fault(file, line, "shuffle width must be a power of two <= 32");
  t->op = op;
  t->mask = mask;
  t->payload = payload;
  t->arg = arg;
  t->width = width;
  t->file = file;
  t->line = line;
  switch_to_scheduler(t);
  return t->result;
}

void syncthreads(const char* file, int line) {
  ThreadState* t = current();
  if (t == nullptr) throw std::logic_error("__syncthreads called outside a kernel");
  t->op = Op::kBarrier;
  t->file = file;
  t->line = line;
  switch_to_scheduler(t);
}

void cluster_sync(const char* file, int line) {
  ThreadState* t = current();
  if (t == nullptr) throw std::logic_error("cluster.sync() called outside a kernel");
  t->op = Op::kClusterBarrier;
  t->file = file;
  t->line = line;
  switch_to_scheduler(t);
}

unsigned cluster_block_rank() { return g_launch->cur->block; }
unsigned cluster_size() { return g_launch->cluster; }

void* map_shared_rank(const void* p, unsigned rank, const char* file, int line) {
  Launch& l = *g_launch;
  if (rank >= l.cluster) {
    const std::string msg =
        "map_shared_rank to block rank " + std::to_string(rank) + " of a cluster of " + std::to_string(l.cluster);
    fault(file, line, msg.c_str());
  }
  const char* c = static_cast<const char*>(p);
  BlockState& own = l.blocks[l.cur->block];
  if (own.dyn_smem != nullptr && c >= own.dyn_smem && c < own.dyn_smem + l.smem) {
    return l.blocks[rank].dyn_smem + (c - own.dyn_smem);
  }
  fault(file, line, "map_shared_rank of an address outside the block's dynamic shared memory (the only kind it maps)");
}

void fault(const char* file, int line, const char* what) {
  ThreadState* t = current();
  const std::string msg = where(file, line) + ": " + what + (t != nullptr ? " (" + thread_name(*t) + ")" : "");
  record_fault(msg);
  if (t == nullptr) throw std::runtime_error(msg);
  for (;;) switch_to_scheduler(t);  // never resumed: the launch is aborted
}

void check_launch_bounds(unsigned max_threads, const char* kernel) {
  const dim3& b = block_dim();
  if (b.x * b.y * b.z > max_threads) {
    const std::string msg = std::string(kernel) + ": launched with " + std::to_string(b.x * b.y * b.z) +
                            " threads per block, above its __launch_bounds__(" + std::to_string(max_threads) + ")";
    fault("launch", 0, msg.c_str());
  }
}

void check_vector_load(const void* p, size_t align, const char* file, int line) {
  if (reinterpret_cast<uintptr_t>(p) % align != 0) {
    const std::string msg = std::to_string(align) + "-byte vector load from a misaligned address";
    fault(file, line, msg.c_str());
  }
}

void* dynamic_shared_base() { return g_launch->blocks[g_launch->cur->block].dyn_smem; }

void* static_shared(const char* key, size_t bytes) {
  auto& regions = g_launch->blocks[g_launch->cur->block].static_smem;
  auto it = regions.find(key);
  if (it != regions.end()) return it->second.first;
  char* p = static_cast<char*>(malloc(bytes));
  memset(p, 0xFF, bytes);
  regions[key] = {p, bytes};
  return p;
}

int device_attribute(cudaDeviceAttr attr) {
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor:
      return g_config.major;
    case cudaDevAttrComputeCapabilityMinor:
      return g_config.minor;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      return g_config.smem_optin;
  }
  return 0;
}

cudaError_t set_max_dynamic_smem(const void* kernel, int bytes) {
  if (bytes < 0 || bytes > g_config.smem_optin) return cudaErrorInvalidValue;
  g_max_dyn_smem[kernel] = bytes;
  return cudaSuccess;
}

cudaError_t take_last_error() {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}

bool begin_launch(const void* kernel, dim3 grid, dim3 block, size_t smem) {
  if (!g_fault.empty()) return false;
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  const bool grid_ok =
      grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 0x7fffffffu && grid.y <= 65535 && grid.z <= 65535;
  const bool block_ok = threads >= 1 && threads <= 1024 && block.x <= 1024 && block.y <= 1024 && block.z <= 64;
  auto it = g_max_dyn_smem.find(kernel);
  const size_t smem_cap = it != g_max_dyn_smem.end() ? std::max<size_t>(kDefaultSmem, it->second) : kDefaultSmem;
  if (!grid_ok || !block_ok || smem > smem_cap) {
    g_last_error = cudaErrorInvalidConfiguration;
    return false;
  }
  return true;
}

void run_grid(dim3 grid, dim3 block, size_t smem, unsigned cluster, const std::function<void()>& body) {
  Launch l;
  l.grid = grid;
  l.block = block;
  l.smem = smem;
  l.cluster = cluster;
  l.body = &body;
  l.rng.seed(g_config.seed);
  const size_t n = static_cast<size_t>(block.x) * block.y * block.z * cluster;
  l.threads.resize(n);
  l.blocks.resize(cluster);
  for (size_t i = 0; i < n; ++i) l.stacks.push_back(static_cast<char*>(malloc(kStackBytes)));
  g_launch = &l;
  const uint64_t clusters = uint64_t{grid.x} * grid.y * grid.z / cluster;
  std::vector<uint64_t> order(clusters);
  for (uint64_t c = 0; c < clusters; ++c) order[c] = c;
  if (g_config.order == EMU_ORDER_REVERSE) std::reverse(order.begin(), order.end());
  if (g_config.order == EMU_ORDER_RANDOM) std::shuffle(order.begin(), order.end(), l.rng);
  for (uint64_t c : order) {
    for (unsigned r = 0; r < cluster; ++r) {
      const uint64_t b = c * cluster + r;  // clusters tile x: grid.x is a multiple of the cluster
      BlockState& bs = l.blocks[r];
      bs.exited = false;
      bs.idx = dim3(static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                    static_cast<unsigned>(b / (uint64_t{grid.x} * grid.y)));
      bs.dyn_smem = static_cast<char*>(malloc(smem > 0 ? smem : 1));
      memset(bs.dyn_smem, 0xFF, smem > 0 ? smem : 1);  // poison: uninitialized reads see NaN / -1
    }
    run_cluster(l);
    for (BlockState& bs : l.blocks) {
      free(bs.dyn_smem);
      bs.dyn_smem = nullptr;
      for (auto& kv : bs.static_smem) free(kv.second.first);
      bs.static_smem.clear();
    }
    if (l.aborted) break;
  }
  for (char* s : l.stacks) free(s);
  g_launch = nullptr;
  if (!g_fault.empty()) g_last_error = cudaErrorLaunchFailure;
}

}  // namespace emu

extern "C" {

void emu_configure(int order, uint64_t seed, int major, int smem_optin) {
  emu::g_config.order = order;
  emu::g_config.seed = seed;
  emu::g_config.major = major;
  emu::g_config.smem_optin = smem_optin;
}

const char* emu_last_fault() { return emu::g_fault.c_str(); }

void emu_reset() {
  emu::g_fault.clear();
  emu::g_last_error = cudaSuccess;
  emu::g_max_dyn_smem.clear();
}

}  // extern "C"
