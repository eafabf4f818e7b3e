// Small CUDA kernels that exercise one feature of cuda_emu.h each (tests/test_cuda_emu.py checks them against
// the definitions): warp shuffles and votes, __syncwarp, atomicAdd, dynamic shared memory, and the bugs the
// emulator reports (a missing barrier, a barrier some threads skip, a deadlock, a bad mask or width, and with the
// schedule run_ahead a warp running ahead of another's reads); and set_schedule, the emulator's one setting.
// Test-only: they are not CUDA sources of minidiff, so they live here and not in csrc/cuda/.
#include "minidiff/cuda_emu.h"
#include "minidiff/device.h"

#include "check.h"
#include "emu/emu.h"
#include "emu/launch.h"

namespace {

using md::index_t;

__device__ index_t global_thread() { return index_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ unsigned int lane_of_thread() { return threadIdx.x % 32; }

// out[g] = the shuffle `mode` (0 idx, 1 up, 2 down, 3 xor) of x with lane argument param[g], for the threads
// whose lane is in mask; the others leave out[g] as it was.
template <typename T>
__global__ void shuffle_kernel(int mode, const T* x, const int* param, int width, unsigned int mask, T* out) {
  const index_t g = global_thread();
  if (!((mask >> lane_of_thread()) & 1u)) return;
  const T v = x[g];
  const int b = param[g];
  T r;
  switch (mode) {
    case 0: r = __shfl_sync(mask, v, b, width); break;
    case 1: r = __shfl_up_sync(mask, v, static_cast<unsigned int>(b), width); break;
    case 2: r = __shfl_down_sync(mask, v, static_cast<unsigned int>(b), width); break;
    default: r = __shfl_xor_sync(mask, v, b, width); break;
  }
  out[g] = r;
}

// out[g] = __ballot_sync(mask, pred[g]) for the threads whose lane is in mask.
__global__ void ballot_kernel(const int* pred, unsigned int mask, unsigned int* out) {
  const index_t g = global_thread();
  if ((mask >> lane_of_thread()) & 1u) out[g] = __ballot_sync(mask, pred[g]);
}

// Each block (one warp of 32 threads) sums its 32 values the warp-synchronous way, through shared memory with
// half the lanes active per level. With sync != 0 __syncwarp() separates the reads of a level from its writes
// and from the next level; without, it relies on the lanes running in lockstep, which they need not.
template <typename T>
__global__ void warp_tree_sum_kernel(const T* x, T* out, int sync) {
  __shared__ T s[32];
  const unsigned int lane = threadIdx.x;
  s[lane] = x[global_thread()];
  if (sync) __syncwarp();
  for (unsigned int half = 16; half > 0; half /= 2) {
    T v = T(0);
    if (lane < half) v = s[lane] + s[lane + half];
    if (sync) __syncwarp();
    if (lane < half) s[lane] = v;
    if (sync) __syncwarp();
  }
  if (lane == 0) out[blockIdx.x] = s[0];
}

// Every thread adds `repeats` times 1 to count and ucount, 0.5 to fsum and value[g] to dsum, meeting its warp
// between additions (so the threads interleave); first[g] = the value count had before its first addition.
__global__ void atomic_kernel(int repeats, const double* value, int* count, unsigned long long* ucount,
                              float* fsum, double* dsum, int* first) {
  const index_t g = global_thread();
  for (int r = 0; r < repeats; ++r) {
    const int old = atomicAdd(count, 1);
    if (r == 0) first[g] = old;
    atomicAdd(ucount, 1ull);
    atomicAdd(fsum, 0.5f);
    atomicAdd(dsum, value[g]);
    __syncwarp();
  }
}

// Dynamic shared memory of n ints per block: before[b, i] = what it held when block b started, after[b, i] =
// element n - 1 - i once every thread has written element i = b n + i (so most reads are another thread's).
__global__ void dynamic_shared_kernel(int n, int* before, int* after) {
  MD_DYNAMIC_SHARED(int, s);
  const index_t base = index_t(blockIdx.x) * n;
  for (int i = threadIdx.x; i < n; i += blockDim.x) before[base + i] = s[i];
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = static_cast<int>(base + i);
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) after[base + i] = s[n - 1 - i];
}

// out[g] = the value the thread `shift` places further on in the block put in shared memory (cyclically);
// correct only with the barrier (sync != 0) between the writes and the reads.
__global__ void neighbour_kernel(const int* x, int shift, int sync, int* out) {
  __shared__ int s[1024];
  const int t = static_cast<int>(threadIdx.x), n = static_cast<int>(blockDim.x);
  s[t] = x[global_thread()];
  if (sync) __syncthreads();
  out[global_thread()] = s[((t + shift) % n + n) % n];
}

// Two rounds of a hand-off between warps, block_sum's pattern: lane 0 of each warp puts its warp's value in shared
// memory; a barrier; every warp takes the next warp's value (cyclically), agreed on by a shuffle. So out[g] = x of
// lane 0 of the warp two on. Correct only with a barrier (sync != 0) between the reads of the first round and the
// writes of the second: without, the schedule run_ahead lets a warp overwrite its slot before the warp before it
// has read it; round_robin does not (cuda_emu.h).
__global__ void handoff_kernel(const int* x, int sync, int* out) {
  __shared__ int slot[32];
  const unsigned int warp = threadIdx.x / 32, warps = blockDim.x / 32;
  int v = x[global_thread()];
  for (int round = 0; round < 2; ++round) {
    if (lane_of_thread() == 0) slot[warp] = v;
    __syncthreads();
    v = __shfl_sync(0xffffffffu, slot[(warp + 1) % warps], 0);
    if (sync) __syncthreads();
  }
  out[global_thread()] = v;
}

// Misuses of barriers and warp intrinsics, each a bug the emulator must report:
//   0 thread 0 returns before a __syncthreads() the others reach
//   1 even and odd threads meet at two different __syncthreads()
//   2 lanes 0-15 wait in __syncwarp for the whole warp while lanes 16-31 wait at __syncthreads(): a deadlock
//   3 a shuffle whose mask leaves out the calling lane
//   4 a shuffle of width 3
//   5 lanes 0-15 call __syncwarp(0x0000ffff) while lanes 16-31 call __syncwarp(0xffffffff)
__global__ void misuse_kernel(int mode, float* out) {
  const unsigned int t = threadIdx.x, lane = lane_of_thread();
  switch (mode) {
    case 0:
      if (t == 0) return;
      __syncthreads();
      break;
    case 1:
      if (t % 2 == 0) {
        __syncthreads();
      } else {
        __syncthreads();
      }
      break;
    case 2:
      if (lane < 16) {
        __syncwarp();
      } else {
        __syncthreads();
      }
      break;
    case 3: out[t] = __shfl_sync(0xfffffffeu, 1.0f, 0); break;
    case 4: out[t] = __shfl_xor_sync(0xffffffffu, 1.0f, 1, 3); break;
    default: __syncwarp(lane < 16 ? 0x0000ffffu : 0xffffffffu); break;
  }
}

}  // namespace

namespace md::emu {

namespace py = pybind11;

namespace {

// Launches with one dimension: grid (blocks,), block (threads,).
dim3 one_d(const py::tuple& t, const char* name) {
  const dim3 d = to_dim3(t, name);
  if (d.y != 1 || d.z != 1) throw py::value_error(std::string(name) + ": expected a 1-d launch (x,)");
  return d;
}

index_t threads_of(const dim3& grid, const dim3& block) { return index_t(grid.x) * block.x; }

template <typename T>
const T* input(const py::array& a, const char* name, index_t n) {
  const T* p = check::data<T>(a, name);
  check::holds(a, name, n);
  return p;
}

template <typename T>
T* output(py::array& a, const char* name, index_t n) {
  T* p = check::mutable_data<T>(a, name);
  check::holds(a, name, n);
  return p;
}

}  // namespace

void register_selftest(py::module_& m) {
  m.def(
      "set_schedule",
      [](const std::string& name) {
        md_emu::Schedule s;
        if (name == "round_robin") {
          s = md_emu::Schedule::round_robin;
        } else if (name == "run_ahead") {
          s = md_emu::Schedule::run_ahead;
        } else {
          throw py::value_error("schedule: expected 'round_robin' or 'run_ahead', got '" + name + "'");
        }
        return md_emu::set_schedule(s) == md_emu::Schedule::run_ahead ? "run_ahead" : "round_robin";
      },
      py::arg("schedule"),
      "Where the threads a barrier or warp intrinsic releases join the ready ones, for the launches from now on "
      "(cuda_emu.h): 'round_robin' (behind them, the default) or 'run_ahead' (in front). Returns the previous one.");
  m.def("shuffle_kernel", [](const py::tuple& grid, const py::tuple& block, int mode, const py::array& x,
                             const py::array& param, int width, unsigned int mask, py::array& out) {
    const dim3 g = one_d(grid, "grid"), b = one_d(block, "block");
    const index_t n = threads_of(g, b);
    check::dispatch_float(x, "x", [&](auto tag) {
      using T = decltype(tag);
      const T* px = input<T>(x, "x", n);
      const int* pp = input<int>(param, "param", n);
      T* po = output<T>(out, "out", n);
      py::gil_scoped_release release;
      md_emu::launch(g, b, shuffle_kernel<T>, mode, px, pp, width, mask, po);
    });
  });
  m.def("ballot_kernel", [](const py::tuple& grid, const py::tuple& block, const py::array& pred, unsigned int mask,
                            py::array& out) {
    const dim3 g = one_d(grid, "grid"), b = one_d(block, "block");
    const index_t n = threads_of(g, b);
    const int* pp = input<int>(pred, "pred", n);
    unsigned int* po = output<unsigned int>(out, "out", n);
    py::gil_scoped_release release;
    md_emu::launch(g, b, ballot_kernel, pp, mask, po);
  });
  m.def("warp_tree_sum_kernel", [](const py::tuple& grid, const py::array& x, py::array& out, int sync) {
    const dim3 g = one_d(grid, "grid"), b(32);
    const double* px = input<double>(x, "x", threads_of(g, b));
    double* po = output<double>(out, "out", g.x);
    py::gil_scoped_release release;
    md_emu::launch(g, b, warp_tree_sum_kernel<double>, px, po, sync);
  });
  m.def("atomic_kernel", [](const py::tuple& grid, const py::tuple& block, int repeats, const py::array& value,
                            py::array& count, py::array& ucount, py::array& fsum, py::array& dsum, py::array& first) {
    const dim3 g = one_d(grid, "grid"), b = one_d(block, "block");
    const index_t n = threads_of(g, b);
    const double* pv = input<double>(value, "value", n);
    int* pc = output<int>(count, "count", 1);
    auto* pu = output<unsigned long long>(ucount, "ucount", 1);
    float* pf = output<float>(fsum, "fsum", 1);
    double* pd = output<double>(dsum, "dsum", 1);
    int* p1 = output<int>(first, "first", n);
    py::gil_scoped_release release;
    md_emu::launch(g, b, atomic_kernel, repeats, pv, pc, pu, pf, pd, p1);
  });
  m.def(
      "dynamic_shared_kernel",
      [](const py::tuple& grid, const py::tuple& block, int n, py::array& before, py::array& after,
         std::size_t shared_mem) {
        const dim3 g = one_d(grid, "grid"), b = one_d(block, "block");
        if (n < 0 || shared_mem < std::size_t(n) * sizeof(int))
          throw py::value_error("shared_mem: dynamic_shared_kernel needs n ints of dynamic shared memory");
        int* pb = output<int>(before, "before", index_t(g.x) * n);
        int* pa = output<int>(after, "after", index_t(g.x) * n);
        py::gil_scoped_release release;
        md_emu::launch(g, b, shared_mem, dynamic_shared_kernel, n, pb, pa);
      },
      py::arg("grid"), py::arg("block"), py::arg("n"), py::arg("before"), py::arg("after"), py::kw_only(),
      py::arg("shared_mem"));
  m.def("neighbour_kernel", [](const py::tuple& grid, const py::tuple& block, const py::array& x, int shift,
                               int sync, py::array& out) {
    const dim3 g = one_d(grid, "grid"), b = one_d(block, "block");
    const index_t n = threads_of(g, b);
    const int* px = input<int>(x, "x", n);
    int* po = output<int>(out, "out", n);
    py::gil_scoped_release release;
    md_emu::launch(g, b, neighbour_kernel, px, shift, sync, po);
  });
  m.def("handoff_kernel", [](const py::tuple& grid, const py::tuple& block, const py::array& x, int sync,
                             py::array& out) {
    const dim3 g = one_d(grid, "grid"), b = one_d(block, "block");
    check_warp_block(b, "handoff_kernel");
    const index_t n = threads_of(g, b);
    const int* px = input<int>(x, "x", n);
    int* po = output<int>(out, "out", n);
    py::gil_scoped_release release;
    md_emu::launch(g, b, handoff_kernel, px, sync, po);
  });
  m.def("misuse_kernel", [](const py::tuple& grid, const py::tuple& block, int mode, py::array& out) {
    const dim3 g = one_d(grid, "grid"), b = one_d(block, "block");
    float* po = output<float>(out, "out", b.x);
    py::gil_scoped_release release;
    md_emu::launch(g, b, misuse_kernel, mode, po);
  });
}

}  // namespace md::emu
