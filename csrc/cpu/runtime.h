// Threads and build facts of the CPU kernels.
#pragma once

#include "minidiff/common.h"

namespace md::cpu {

// Threads the OpenMP kernels use: OMP_NUM_THREADS (or all cores) until set_num_threads is called.
int num_threads();
constexpr int kMaxThreads = 1024;  // more would fail to start (and abort) rather than run faster
void set_num_threads(int n);

// Below this many elements an elementwise kernel runs on one thread: waking the team costs more.
constexpr index_t kParallelGrain = 1 << 15;

}  // namespace md::cpu
