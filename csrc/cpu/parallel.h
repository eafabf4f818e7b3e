// Helpers of the OpenMP kernels: aligned scratch buffers, and a parallel loop that carries exceptions out of
// the parallel region (an exception escaping an OpenMP region would terminate the whole program).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <new>

#include "minidiff/common.h"

namespace md::cpu {

constexpr std::size_t kAlignment = 64;  // a cache line, and one AVX-512 register

// A grow-only buffer of at least n elements, aligned to kAlignment; contents are unspecified after get().
// A thread_local instance gives each OpenMP thread its own, reused from call to call.
template <typename T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }

  T* get(index_t n) {
    if (n > capacity_) {
      std::free(data_);
      data_ = nullptr;
      capacity_ = 0;
      const std::size_t bytes = (static_cast<std::size_t>(n) * sizeof(T) + kAlignment - 1) / kAlignment * kAlignment;
      data_ = static_cast<T*>(std::aligned_alloc(kAlignment, bytes));
      if (data_ == nullptr) throw std::bad_alloc();
      capacity_ = n;
    }
    return data_;
  }

 private:
  T* data_ = nullptr;
  index_t capacity_ = 0;
};

// fn(i) for every i in [0, count), spread over `threads` OpenMP threads (static schedule: thread t takes one
// contiguous range of i). The first exception any fn(i) throws is rethrown here, after the loop.
template <typename F>
void parallel_for(int threads, index_t count, F&& fn) {
  if (threads <= 1 || count <= 1) {
    for (index_t i = 0; i < count; ++i) fn(i);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (index_t i = 0; i < count; ++i) {
    try {
      fn(i);
    } catch (...) {
      const std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// Threads worth waking for `fmas` multiply-adds: one per kMinFmasPerThread (about 10 us of work on one core),
// at most `threads`. Below that, starting and joining a team costs more than it saves (and far more when the
// other cores are busy: a sleeping thread waits for the scheduler).
constexpr index_t kMinFmasPerThread = index_t(1) << 20;

inline int useful_threads(int threads, double fmas) {
  const double useful = fmas / static_cast<double>(kMinFmasPerThread);
  return useful >= threads ? threads : std::max(1, static_cast<int>(useful));
}

inline index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }
inline index_t round_up(index_t a, index_t b) { return ceil_div(a, b) * b; }

}  // namespace md::cpu
