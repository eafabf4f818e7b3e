// cuda_emu.h: run CUDA kernels on the CPU, to test their indexing, tiling and synchronization.
//
// Include this header, then the .cu file, in a C++ translation unit. It maps the CUDA execution model
// onto the CPU:
//   - the grid's blocks run one after another, in blockIdx order (x fastest);
//   - a block's threads are std::threads, one per CUDA thread, that meet at a barrier for
//     __syncthreads() and again at the end of every block;
//   - threadIdx, blockIdx, blockDim, gridDim are thread_local variables set by the launcher;
//   - __shared__ variables become function-local statics: since blocks run one at a time, each
//     block has the storage to itself, as on a GPU.
// Not emulated: warp intrinsics (__shfl_*, __ballot_sync), dynamic `extern __shared__` arrays,
// streams and timing. Kernels of this project use shared-memory reductions instead. A kernel must
// not throw; a thread that returns before a __syncthreads() its block-mates reach deadlocks here,
// as it is undefined behaviour on a GPU.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

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

// A reusable barrier for a fixed number of threads (std::barrier is C++20).
class Barrier {
 public:
  explicit Barrier(std::size_t count) : count_(count), waiting_(0), generation_(0) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const std::size_t gen = generation_;
    if (++waiting_ == count_) {
      waiting_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen != generation_; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::size_t count_, waiting_, generation_;
};

inline thread_local Barrier* current_block_barrier = nullptr;
inline std::mutex& atomic_mutex() {
  static std::mutex m;
  return m;
}
inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

constexpr unsigned int kMaxThreadsPerBlock = 1024;
constexpr unsigned long long kMaxBlocksPerLaunch = 1ULL << 20;  // an emulation limit: blocks run in turn

inline void check_launch(const dim3& grid, const dim3& block) {
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
}

// kernel<<<grid, block>>>(args...) becomes md_emu::launch(grid, block, kernel, args...).
template <typename... KernelArgs, typename... Args>
void launch(dim3 grid, dim3 block, void (*kernel)(KernelArgs...), Args... args) {
  check_launch(grid, block);
  std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex());
  const unsigned int n_threads = block.x * block.y * block.z;
  Barrier barrier(n_threads);
  auto body = [&](unsigned int t) {
    threadIdx = uint3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
    blockDim = block;
    gridDim = grid;
    current_block_barrier = &barrier;
    for (unsigned int bz = 0; bz < grid.z; ++bz)
      for (unsigned int by = 0; by < grid.y; ++by)
        for (unsigned int bx = 0; bx < grid.x; ++bx) {
          blockIdx = uint3(bx, by, bz);
          kernel(static_cast<KernelArgs>(args)...);
          barrier.arrive_and_wait();  // the block is done before the next one reuses __shared__
        }
    current_block_barrier = nullptr;
  };
  std::vector<std::thread> threads;
  threads.reserve(n_threads);
  for (unsigned int t = 0; t < n_threads; ++t) threads.emplace_back(body, t);
  for (auto& th : threads) th.join();
}

}  // namespace md_emu

inline void __syncthreads() { md_emu::current_block_barrier->arrive_and_wait(); }

template <typename T>
inline T atomicAdd(T* address, T value) {
  std::lock_guard<std::mutex> lock(md_emu::atomic_mutex());
  const T old = *address;
  *address = old + value;
  return old;
}
