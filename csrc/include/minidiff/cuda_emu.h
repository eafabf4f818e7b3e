// cuda_emu.h: run CUDA kernels on the CPU, to test their indexing, tiling and synchronization.
//
// Include this header, then the .cu file, in a C++ translation unit. Where CUDA writes
// kernel<<<grid, block, shared_bytes>>>(args...), call md_emu::launch(grid, block, shared_bytes, kernel, args...)
// (or launch(grid, block, kernel, args...) without dynamic shared memory).
//
// The execution model
//   - The grid's blocks run one after another, in blockIdx order (x fastest).
//   - A block's threads are fibers, each with its own stack, on the OS thread that launched: one runs at a
//     time, until it reaches a barrier (__syncthreads(), a warp intrinsic) or returns; then the next ready one
//     runs. Switching is thus cooperative and cheap (see jump()), and a launch does the same thing every time.
//   - When a barrier releases its threads they resume in increasing thread order, and at the next release in
//     decreasing order (odd-numbered blocks start decreasing). A thread that reads, with no barrier in between,
//     what another writes in the same phase reads a stale value in one of the two orders, whichever side the
//     writer is on: a missing __syncthreads() shows as a wrong result.
//   - The schedule (set_schedule(), cuda_emu.set_schedule in Python) says where the threads a barrier or a warp
//     intrinsic releases join the threads ready to run. round_robin (the default): behind them, so every ready
//     thread runs to its next barrier or intrinsic before a released one goes on. run_ahead: in front of them, so
//     the first warp whose intrinsic completes runs on to the next __syncthreads() before the other warps start
//     the phase. Only run_ahead catches a warp that overwrites shared memory another warp has yet to read (a
//     missing barrier after the reads, as at the end of block_sum of minidiff/device.h): in round_robin no warp
//     gets past its first intrinsic of a phase before every thread has done its reads up to its own.
//   - threadIdx, blockIdx, blockDim, gridDim are globals, set before each switch to a thread.
//   - __shared__ variables are function-local statics: blocks run one at a time, so each has them to itself.
//     Dynamic shared memory (MD_DYNAMIC_SHARED of minidiff/device.h; `extern __shared__` on the GPU) is a
//     buffer of exactly the launch's shared_bytes, filled with all-ones bytes (NaN as floats, -1 as ints) at
//     the start of every block: as undefined as on a GPU, but visibly so.
//   - Warps are 32 consecutive threads in linear order (x fastest); lane = linear index % 32. The warp
//     intrinsics (__shfl*_sync, __syncwarp, __ballot_sync) are rendezvous of the lanes named in `mask`: each
//     lane deposits its value and waits until every named lane still running has deposited; then each takes
//     its result. Shuffles follow PTX's shfl.sync (shfl_source below), `width` segments included.
//   - atomicAdd is a plain read-modify-write: threads switch only at barriers, so no other thread can run
//     between the read and the write. It is exactly as atomic as on a GPU.
//
// What the emulator reports, as md_emu::KernelError (RuntimeError in Python), stopping the launch:
//   - a thread returning while others wait at __syncthreads(), or a __syncthreads() after some returned;
//   - threads of a block meeting at different __syncthreads() calls (a barrier in a divergent branch);
//   - a deadlock: every thread left waits for one that cannot come (lanes at __syncwarp() while others of the
//     warp wait at __syncthreads(), a shuffle whose mask names a lane that waits elsewhere); a GPU would hang;
//   - a warp intrinsic whose mask leaves out the calling lane, lanes of a warp meeting with overlapping but
//     different masks or different intrinsics, or a width that is not 1, 2, 4, 8, 16 or 32.
// What it turns into a poison value (all bits set: NaN for floats), so that a result using it is wrong:
//   - a shuffle reading a lane that does not take part (outside the mask, returned, past the end of the block);
//   - dynamic shared memory read before it is written in the block.
// What it cannot see:
//   - races that need threads running at once: a plain `x += v` by many threads loses updates on a GPU but
//     counts exactly here; memory ordering and fences (every access here is sequentially consistent);
//   - kernels that depend on the order of blocks (they run in order here, concurrently on a GPU);
//   - static __shared__ memory read before it is written (it keeps the previous block's values);
//   - out-of-bounds accesses to global or static shared memory (the AddressSanitizer build of CI catches
//     those in buffers Python allocated, and in the dynamic shared buffer);
//   - performance: coalescing, bank conflicts, occupancy, register spills.
// A kernel must not throw (a thrown exception is reported as a KernelError).
#pragma once

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define MD_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MD_EMU_ASAN 1
#endif
#endif
#ifdef MD_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#define MD_CUDA_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

namespace md_emu {

// --- switching between fibers ----------------------------------------------------------------------------------
// On x86-64 Linux a few instructions of our own: save the callee-saved registers and the floating-point control
// words on the current stack, swap stack pointers, restore, return into the other fiber (about as costly as a
// function call). Elsewhere ucontext's swapcontext, which also saves the signal mask with a system call (about a
// microsecond). The assembly is not used where the compiler builds for CET shadow stacks, which a return into
// another stack would violate, nor when MD_EMU_UCONTEXT is defined (to test the portable path).
#if defined(__x86_64__) && defined(__linux__) && !(defined(__CET__) && (__CET__ & 2)) && !defined(MD_EMU_UCONTEXT)
#define MD_EMU_FAST_SWITCH 1
// rdi = where to save this fiber's stack pointer, rsi = the other fiber's. Naked: the body is the whole function.
__attribute__((naked, noinline)) inline void switch_stacks(void** /*save_sp*/, void* /*load_sp*/) {
  __asm__(
      "pushq %rbp\n"
      "pushq %rbx\n"
      "pushq %r12\n"
      "pushq %r13\n"
      "pushq %r14\n"
      "pushq %r15\n"
      "subq $8, %rsp\n"
      "stmxcsr (%rsp)\n"
      "fnstcw 4(%rsp)\n"
      "movq %rsp, (%rdi)\n"
      "movq %rsi, %rsp\n"
      "ldmxcsr (%rsp)\n"
      "fldcw 4(%rsp)\n"
      "addq $8, %rsp\n"
      "popq %r15\n"
      "popq %r14\n"
      "popq %r13\n"
      "popq %r12\n"
      "popq %rbx\n"
      "popq %rbp\n"
      "ret\n");
}

struct Context {
  void* sp = nullptr;
};

// A context that starts `entry` (which must never return) on the stack [stack, stack + size): the frame
// switch_stacks pops, with entry as its return address.
inline void make_context(Context& c, char* stack, std::size_t size, void (*entry)()) {
  const std::uintptr_t top = reinterpret_cast<std::uintptr_t>(stack + size) & ~std::uintptr_t(15);
  auto* frame = reinterpret_cast<std::uint64_t*>(top - 72);  // 8 mod 16: entry starts as if called
  std::uint16_t fpu_control;
  __asm__ volatile("fnstcw %0" : "=m"(fpu_control));
  frame[0] = __builtin_ia32_stmxcsr() | (std::uint64_t(fpu_control) << 32);  // the launcher's rounding modes
  for (int r = 1; r <= 6; ++r) frame[r] = 0;                                 // r15, r14, r13, r12, rbx, rbp
  frame[7] = reinterpret_cast<std::uint64_t>(entry);
  frame[8] = 0;  // entry's return address: none (ends backtraces)
  c.sp = frame;
}

inline void jump(Context& from, Context& to) { switch_stacks(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};

inline void make_context(Context& c, char* stack, std::size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}

inline void jump(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// A bug the emulation found in a kernel (or its launch): thrown by launch() once the launch has stopped.
struct KernelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr unsigned int kMaxThreadsPerBlock = 1024;
constexpr unsigned long long kMaxBlocksPerLaunch = 1ULL << 20;  // an emulation limit: blocks run in turn
constexpr std::size_t kMaxDynamicSharedBytes = 48 * 1024;     // a GPU's limit without an opt-in attribute
constexpr unsigned int kFullMask = 0xffffffffu;

inline void check_launch(const dim3& grid, const dim3& block, std::size_t shared_bytes) {
  const unsigned long long threads = 1ULL * block.x * block.y * block.z;
  if (threads == 0 || threads > kMaxThreadsPerBlock)
    throw std::invalid_argument("cuda_emu: block must have 1.." + std::to_string(kMaxThreadsPerBlock) +
                                " threads, got " + std::to_string(threads));
  if (block.z > 64)
    throw std::invalid_argument("cuda_emu: blockDim.z must be at most 64");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
    throw std::invalid_argument("cuda_emu: grid dimensions must be positive (y, z at most 65535)");
  if (1ULL * grid.x * grid.y * grid.z > kMaxBlocksPerLaunch)
    throw std::invalid_argument("cuda_emu: at most " + std::to_string(kMaxBlocksPerLaunch) +
                                " blocks per launch (the emulator runs them one after another)");
  if (shared_bytes > kMaxDynamicSharedBytes)
    throw std::invalid_argument("cuda_emu: shared_mem: at most " + std::to_string(kMaxDynamicSharedBytes) +
                                " bytes of dynamic shared memory per block, got " + std::to_string(shared_bytes));
}

// Where released threads join the ready ones (the header comment above): read at the start of each launch.
enum class Schedule { round_robin, run_ahead };

inline std::atomic<Schedule>& schedule_setting() {
  static std::atomic<Schedule> s{Schedule::round_robin};
  return s;
}

// Sets the schedule of the launches that start from now on; returns the previous one.
inline Schedule set_schedule(Schedule s) { return schedule_setting().exchange(s); }

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

// Fiber stacks: mmap'd, lazily committed, a guard page below each; kept for the next launch.
class StackPool {
 public:
  static constexpr std::size_t kStackBytes = 256 * 1024;

  ~StackPool() {
    for (char* s : stacks_) munmap(s - page(), kStackBytes + page());
  }
  char* get(std::size_t i) {  // the lowest usable address of stack i (kStackBytes above it are usable)
    while (stacks_.size() <= i) {
      void* p = mmap(nullptr, kStackBytes + page(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
      if (p == MAP_FAILED) throw std::runtime_error("cuda_emu: could not map a fiber stack");
      mprotect(p, page(), PROT_NONE);  // a stack overflow faults instead of corrupting the next stack
      stacks_.push_back(static_cast<char*>(p) + page());
    }
    return stacks_[i];
  }

 private:
  static std::size_t page() { return static_cast<std::size_t>(sysconf(_SC_PAGESIZE)); }
  std::vector<char*> stacks_;
};

enum class Waiting { running, block_barrier, warp, returned };
enum class WarpOp { shfl, sync, ballot };

struct Fiber {
  Context context;
  uint3 index;
  unsigned int lane = 0, warp = 0;
  Waiting waiting = Waiting::running;
  std::uint64_t result = 0;  // what the last warp intrinsic returns to this lane
};

// A warp intrinsic in progress: the lanes of `mask` that have arrived, with their values.
struct Rendezvous {
  unsigned int mask = 0, arrived = 0;
  WarpOp op = WarpOp::sync;
  std::uint64_t value[32] = {};
  int source[32] = {};  // shfl: the lane each lane reads (its own when out of its segment)
};

class Launch;
inline thread_local Launch* current_launch = nullptr;

class Launch {
 public:
  Launch(dim3 grid, dim3 block, std::size_t shared_bytes, void (*run)(void*), void* closure)
      : grid_(grid), block_(block), run_(run), closure_(closure), schedule_(schedule_setting().load()),
        n_threads_(block.x * block.y * block.z), n_warps_((n_threads_ + 31) / 32),
        fibers_(n_threads_), pending_(n_warps_), live_lanes_(n_warps_), shared_(shared_bytes) {
    for (unsigned int t = 0; t < n_threads_; ++t) {
      fibers_[t].index = uint3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      fibers_[t].lane = t % 32;
      fibers_[t].warp = t / 32;
    }
  }

  void run() {
    current_launch = this;
    blockDim = block_;
    gridDim = grid_;
    unsigned long long block_number = 0;
    try {
      for (unsigned int bz = 0; bz < grid_.z; ++bz)
        for (unsigned int by = 0; by < grid_.y; ++by)
          for (unsigned int bx = 0; bx < grid_.x; ++bx, ++block_number) {
            blockIdx = uint3(bx, by, bz);
            run_block(block_number);
          }
    } catch (...) {
      current_launch = nullptr;
      throw;
    }
    current_launch = nullptr;
  }

  // --- called from inside the kernel, on the current fiber ---------------------------------------------------

  void sync_threads(const char* file, int line) {
    Fiber& f = fibers_[current_];
    if (returned_ > 0)
      fail("__syncthreads() after " + std::to_string(returned_) +
           " threads of its block returned: every thread must reach every barrier");
    if (barrier_arrived_ == 0) {
      barrier_file_ = file;
      barrier_line_ = line;
    } else if (line != barrier_line_ || std::strcmp(file, barrier_file_) != 0) {
      fail("threads meet at different __syncthreads() (line " + std::to_string(barrier_line_) + " and line " +
           std::to_string(line) + "): a barrier inside a branch that not all threads of the block take");
    }
    f.waiting = Waiting::block_barrier;
    if (++barrier_arrived_ == n_threads_ - returned_) release_block_barrier();
    switch_away();
  }

  // One warp intrinsic by the current lane: deposits `value` (and, for shfl, the lane it reads), waits for the
  // other lanes of mask, returns this lane's result.
  std::uint64_t warp_op(WarpOp op, const char* name, unsigned int mask, std::uint64_t value, int source) {
    Fiber& f = fibers_[current_];
    const unsigned int bit = 1u << f.lane;
    if (!(mask & bit))
      fail(std::string(name) + ": mask " + hex(mask) + " does not name the calling lane " + std::to_string(f.lane));
    Rendezvous* r = nullptr;
    for (Rendezvous& p : pending_[f.warp]) {
      if (!(p.mask & mask)) continue;
      if (p.mask != mask || p.op != op)
        fail(std::string(name) + " with mask " + hex(mask) + " meets another warp intrinsic of mask " + hex(p.mask) +
             " in the same warp: lanes must agree on the intrinsic and its mask");
      r = &p;
    }
    if (r == nullptr) {
      pending_[f.warp].push_back(Rendezvous{});
      r = &pending_[f.warp].back();
      r->mask = mask;
      r->op = op;
    }
    r->arrived |= bit;
    r->value[f.lane] = value;
    r->source[f.lane] = source;
    f.waiting = Waiting::warp;
    complete_warp_ops(f.warp);
    switch_away();
    return fibers_[current_].result;
  }

  unsigned int lane() const { return fibers_[current_].lane; }
  unsigned char* shared_memory() { return shared_.empty() ? nullptr : shared_.data(); }

  [[noreturn]] void fail(const std::string& what) {
    const Fiber& f = fibers_[current_];
    error_ = "cuda_emu: block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " +
             std::to_string(blockIdx.z) + "), thread (" + std::to_string(f.index.x) + ", " +
             std::to_string(f.index.y) + ", " + std::to_string(f.index.z) + "): " + what;
    to_main();  // the launch stops here; the fibers are abandoned (kernels hold no resources)
    __builtin_unreachable();
  }

 private:
  static std::string hex(unsigned int v) {
    char s[16];
    std::snprintf(s, sizeof s, "0x%08x", v);
    return s;
  }

  bool forward() const { return (phase_ & 1) == 0; }

  // Makes `threads` ready, in increasing or decreasing order as the phase says, behind the threads already ready
  // (round_robin) or in front of them (run_ahead).
  void make_ready_in_order(std::vector<unsigned int> threads) {
    if (!forward()) std::reverse(threads.begin(), threads.end());
    for (unsigned int t : threads) fibers_[t].waiting = Waiting::running;
    ready_.insert(schedule_ == Schedule::run_ahead ? ready_.begin() : ready_.end(), threads.begin(), threads.end());
    ++phase_;
  }

  void release_block_barrier() {
    std::vector<unsigned int> waiting;
    for (unsigned int t = 0; t < n_threads_; ++t)
      if (fibers_[t].waiting == Waiting::block_barrier) waiting.push_back(t);
    barrier_arrived_ = 0;
    make_ready_in_order(waiting);
  }

  // Completes every pending intrinsic of warp w whose live lanes have all arrived.
  void complete_warp_ops(unsigned int w) {
    auto& pending = pending_[w];
    for (auto it = pending.begin(); it != pending.end();) {
      const unsigned int expected = it->mask & live_lanes_[w];
      if ((it->arrived & expected) != expected) {
        ++it;
        continue;
      }
      const Rendezvous r = *it;
      it = pending.erase(it);
      std::uint64_t ballot = 0;  // (not `(v != 0 ? 1 : 0) << l`: GCC 12 with -fsanitize=undefined got that wrong)
      for (unsigned int l = 0; l < 32; ++l)
        if (((r.arrived >> l) & 1u) && r.value[l] != 0) ballot |= std::uint64_t(1) << l;
      std::vector<unsigned int> lanes;
      for (unsigned int l = 0; l < 32; ++l) {
        if (!((r.arrived >> l) & 1u)) continue;
        Fiber& f = fibers_[w * 32 + l];
        if (r.op == WarpOp::shfl) {
          const int src = r.source[l];
          f.result = ((r.arrived >> src) & 1u) ? r.value[src] : ~std::uint64_t(0);  // absent lane: poison
        } else {
          f.result = ballot;
        }
        lanes.push_back(w * 32 + l);
      }
      make_ready_in_order(lanes);
    }
  }

  void on_return() {
    Fiber& f = fibers_[current_];
    f.waiting = Waiting::returned;
    ++returned_;
    live_lanes_[f.warp] &= ~(1u << f.lane);
    if (barrier_arrived_ > 0)
      fail("returned while " + std::to_string(barrier_arrived_) +
           " threads of its block wait at __syncthreads(): every thread must reach every barrier");
    complete_warp_ops(f.warp);  // the lanes still running may have been waiting only for this one
  }

  // Leaves the current fiber (waiting or returned) for the next ready one, or for the launcher when none is.
  void switch_away() {
    if (ready_.empty()) {
      to_main();
      return;
    }
    const unsigned int next = ready_.front();
    ready_.pop_front();
    if (next == current_) return;  // released by its own arrival, and first in line
    const unsigned int from = current_;
    enter(next);
    swap(&fibers_[from].context, next, fibers_[from].waiting == Waiting::returned);
  }

  void enter(unsigned int t) {
    current_ = t;
    threadIdx = fibers_[t].index;
  }

  void to_main() {
    Fiber& f = fibers_[current_];
    swap_to(&f.context, &main_, stack_bottom_main_, stack_size_main_, f.waiting == Waiting::returned);
  }

  void swap(Context* from, unsigned int to, bool from_is_done) {
    swap_to(from, &fibers_[to].context, pool().get(to), StackPool::kStackBytes, from_is_done);
  }

  // AddressSanitizer is told about every switch, so that it knows which stack is in use.
  void swap_to(Context* from, Context* to, const void* to_bottom, std::size_t to_size, bool from_is_done) {
#ifdef MD_EMU_ASAN
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(from_is_done ? nullptr : &fake_stack, to_bottom, to_size);
    jump(*from, *to);
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
    (void)to_bottom, (void)to_size, (void)from_is_done;
    jump(*from, *to);
#endif
  }

  static void fiber_entry() {
    Launch* self = current_launch;
#ifdef MD_EMU_ASAN
    const void* from_bottom = nullptr;
    std::size_t from_size = 0;
    __sanitizer_finish_switch_fiber(nullptr, &from_bottom, &from_size);
    if (self->stack_bottom_main_ == nullptr) {  // the first fiber of a launch is entered from the launcher
      self->stack_bottom_main_ = from_bottom;
      self->stack_size_main_ = from_size;
    }
#endif
    try {
      self->run_(self->closure_);
    } catch (...) {
      self->fail("the kernel threw an exception");
    }
    self->on_return();
    self->switch_away();  // never comes back: a returned fiber is not made ready again
  }

  void run_block(unsigned long long block_number) {
    ready_.clear();
    for (auto& p : pending_) p.clear();
    for (auto& l : live_lanes_) l = 0;
    for (unsigned int t = 0; t < n_threads_; ++t) live_lanes_[t / 32] |= 1u << (t % 32);
    returned_ = barrier_arrived_ = 0;
    if (!shared_.empty()) std::memset(shared_.data(), 0xff, shared_.size());
    std::vector<unsigned int> all(n_threads_);
    for (unsigned int t = 0; t < n_threads_; ++t) {
#ifdef MD_EMU_ASAN
      // The frames the previous block left on this stack (a fiber's entry never returns) would otherwise stay
      // poisoned under the new ones.
      __asan_unpoison_memory_region(pool().get(t), StackPool::kStackBytes);
#endif
      make_context(fibers_[t].context, pool().get(t), StackPool::kStackBytes, &Launch::fiber_entry);
      all[t] = t;
    }
    phase_ = block_number;  // odd blocks start in decreasing order
    make_ready_in_order(all);
    const unsigned int first = ready_.front();
    ready_.pop_front();
    enter(first);
    swap_to(&main_, &fibers_[first].context, pool().get(first), StackPool::kStackBytes, false);
    // Back on the launcher: every thread returned, or none can run (an error or a deadlock).
    if (!error_.empty()) throw KernelError(error_);
    if (returned_ != n_threads_) throw KernelError(deadlock_report());
  }

  std::string deadlock_report() const {
    unsigned int at_barrier = 0, at_warp = 0;
    for (const Fiber& f : fibers_) {
      at_barrier += f.waiting == Waiting::block_barrier;
      at_warp += f.waiting == Waiting::warp;
    }
    return "cuda_emu: block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " +
           std::to_string(blockIdx.z) + ") deadlocks: " + std::to_string(at_barrier) +
           " threads wait at __syncthreads(), " + std::to_string(at_warp) + " at a warp intrinsic, " +
           std::to_string(returned_) + " have returned; no thread can go on";
  }

  static StackPool& pool() {
    static StackPool p;  // guarded by launch_mutex()
    return p;
  }

  dim3 grid_, block_;
  void (*run_)(void*);
  void* closure_;
  Schedule schedule_;
  unsigned int n_threads_, n_warps_;
  std::vector<Fiber> fibers_;
  std::vector<std::vector<Rendezvous>> pending_;  // per warp
  std::vector<unsigned int> live_lanes_;          // per warp: lanes that exist and have not returned
  std::vector<unsigned char> shared_;             // dynamic shared memory of the running block
  std::deque<unsigned int> ready_;
  Context main_;
  const void* stack_bottom_main_ = nullptr;
  std::size_t stack_size_main_ = 0;
  unsigned int current_ = 0, returned_ = 0, barrier_arrived_ = 0;
  unsigned long long phase_ = 0;
  const char* barrier_file_ = "";
  int barrier_line_ = 0;
  std::string error_;
};

inline Launch& active(const char* what) {
  if (current_launch == nullptr) throw std::logic_error(std::string("cuda_emu: ") + what + " outside a kernel");
  return *current_launch;
}

// kernel<<<grid, block, shared_bytes>>>(args...) becomes md_emu::launch(grid, block, shared_bytes, kernel, args...).
template <typename... KernelArgs, typename... Args>
void launch(dim3 grid, dim3 block, std::size_t shared_bytes, void (*kernel)(KernelArgs...), Args... args) {
  static_assert(sizeof...(KernelArgs) == sizeof...(Args), "launch: wrong number of kernel arguments");
  check_launch(grid, block, shared_bytes);
  std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex());  // __shared__ statics are per kernel
  auto call = [&] { kernel(static_cast<KernelArgs>(args)...); };
  Launch run(grid, block, shared_bytes, [](void* c) { (*static_cast<decltype(call)*>(c))(); }, &call);
  run.run();
}

// kernel<<<grid, block>>>(args...): no dynamic shared memory.
template <typename... KernelArgs, typename... Args>
void launch(dim3 grid, dim3 block, void (*kernel)(KernelArgs...), Args... args) {
  launch(grid, block, std::size_t(0), kernel, args...);
}

template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(active("dynamic shared memory").shared_memory());
}

template <typename T>
std::uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "warp shuffles move values of 1-8 bytes");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(std::uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// The source lane of a shuffle, as PTX's shfl.sync computes it: lanes form segments of `width`; a lane whose
// source falls outside what its mode allows reads its own value. b is the lane, delta or xor mask (5 bits).
enum class ShflMode { idx, up, down, bfly };

inline int shfl_source(ShflMode mode, const char* name, int lane, int b, int width) {
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    active(name).fail(std::string(name) + ": width must be 1, 2, 4, 8, 16 or 32, got " + std::to_string(width));
  b &= 31;
  const int first = lane & ~(width - 1), last = first + width - 1;  // this lane's segment
  int j = lane;
  bool valid = true;
  switch (mode) {
    case ShflMode::idx: j = first | (b & (width - 1)); break;
    case ShflMode::up: j = lane - b; valid = j >= first; break;
    case ShflMode::down: j = lane + b; valid = j <= last; break;
    case ShflMode::bfly: j = lane ^ b; valid = j <= last; break;  // an earlier segment is readable, a later not
  }
  return valid ? j : lane;
}

template <typename T>
T shfl(ShflMode mode, const char* name, unsigned int mask, T var, int b, int width) {
  Launch& l = active(name);
  const int source = shfl_source(mode, name, static_cast<int>(l.lane()), b, width);
  return from_bits<T>(l.warp_op(WarpOp::shfl, name, mask, to_bits(var), source));
}

}  // namespace md_emu

// The CUDA intrinsics. __syncthreads is a macro so that the barrier knows where it was called from.
#define __syncthreads() ::md_emu::active("__syncthreads()").sync_threads(__FILE__, __LINE__)

template <typename T>
inline T __shfl_sync(unsigned int mask, T var, int srcLane, int width = warpSize) {
  return md_emu::shfl(md_emu::ShflMode::idx, "__shfl_sync", mask, var, srcLane, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize) {
  return md_emu::shfl(md_emu::ShflMode::up, "__shfl_up_sync", mask, var, static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize) {
  return md_emu::shfl(md_emu::ShflMode::down, "__shfl_down_sync", mask, var, static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T var, int laneMask, int width = warpSize) {
  return md_emu::shfl(md_emu::ShflMode::bfly, "__shfl_xor_sync", mask, var, laneMask, width);
}
inline void __syncwarp(unsigned int mask = md_emu::kFullMask) {
  md_emu::active("__syncwarp").warp_op(md_emu::WarpOp::sync, "__syncwarp", mask, 0, 0);
}
inline unsigned int __ballot_sync(unsigned int mask, int predicate) {
  return static_cast<unsigned int>(
      md_emu::active("__ballot_sync").warp_op(md_emu::WarpOp::ballot, "__ballot_sync", mask, predicate != 0, 0));
}

// atomicAdd for the types CUDA has it for: returns the old value. Threads switch only at barriers, so nothing
// runs between this read and this write.
template <typename T>
inline T atomicAdd(T* address, T value) {
  static_assert(std::is_same<T, int>::value || std::is_same<T, unsigned int>::value ||
                    std::is_same<T, unsigned long long>::value || std::is_same<T, float>::value ||
                    std::is_same<T, double>::value,
                "atomicAdd: CUDA has it for int, unsigned int, unsigned long long, float and double");
  const T old = *address;
  *address = old + value;
  return old;
}
