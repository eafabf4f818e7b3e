#include "cpu/runtime.h"

#include <atomic>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace md::cpu {

namespace {
int default_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();  // honours OMP_NUM_THREADS
#else
  return 1;
#endif
}
std::atomic<int> g_threads{default_threads()};
}  // namespace

int num_threads() { return g_threads.load(std::memory_order_relaxed); }

void set_num_threads(int n) {
  if (n < 1 || n > kMaxThreads)
    throw std::invalid_argument("n: expected a number of threads in 1.." + std::to_string(kMaxThreads) + ", got " +
                                std::to_string(n));
  g_threads.store(n, std::memory_order_relaxed);
}

}  // namespace md::cpu
