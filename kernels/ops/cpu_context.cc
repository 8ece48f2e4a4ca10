#include "kernels/ops/cpu_context.h"

#ifdef __linux__
#include <pthread.h>
#include <sched.h>
#endif

#include <algorithm>
#include <chrono>

#include "kernels/base/check.h"

namespace sigmatune::kernels {

CpuContext::CpuContext(int num_threads) {
#ifdef __linux__
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &set)) cpus_.push_back(cpu);
    }
  }
#endif
  for (int part = 1; part < num_threads; ++part) workers_.emplace_back([this, part] { WorkerLoop(part); });
}

void CpuContext::KeepWorkersOffCallerCpu() {
#ifdef __linux__
  if (cpus_.size() < 2) return;
  const int cpu = sched_getcpu();
  if (cpu < 0 || cpu == excluded_cpu_) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus_) {
    if (c != cpu) CPU_SET(c, &set);
  }
  for (std::thread& t : workers_) pthread_setaffinity_np(t.native_handle(), sizeof(set), &set);
  excluded_cpu_ = cpu;
#endif
}

CpuContext::~CpuContext() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void CpuContext::RunPart(int part) const {
  const int64_t begin = n_ * part / parts_, end = n_ * (part + 1) / parts_;
  if (begin < end) (*fn_)(begin, end);
}

void CpuContext::WorkerLoop(int part) {
  uint64_t seen = 0;
  while (true) {
    // Wait for the next epoch: yielding first, then asleep.
    const auto spin_end = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
    while (epoch_.load(std::memory_order_acquire) == seen && !stop_.load(std::memory_order_acquire) &&
           std::chrono::steady_clock::now() < spin_end) {
      std::this_thread::yield();
    }
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stop_.load() || epoch_.load() != seen; });
      if (stop_.load()) return;
      seen = epoch_.load();
      if (part >= parts_) continue;  // this call needs fewer ranges
    }
    RunPart(part);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void CpuContext::ParallelFor(int64_t n, int64_t grain, absl::FunctionRef<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  const int64_t max_parts = std::max<int64_t>(1, n / std::max<int64_t>(grain, 1));
  const int parts = static_cast<int>(std::min<int64_t>(num_threads(), max_parts));
  if (parts <= 1 || !call_mu_.try_lock()) {
    fn(0, n);
    return;
  }
  KeepWorkersOffCallerCpu();
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    n_ = n;
    parts_ = parts;
    pending_.store(parts - 1);
    epoch_.fetch_add(1, std::memory_order_acq_rel);
  }
  work_cv_.notify_all();
  RunPart(0);
  while (pending_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  call_mu_.unlock();
}

void* CpuContext::Workspace(size_t bytes) {
  if (bytes > workspace_bytes_ || workspace_ == nullptr) {
    constexpr size_t kAlignment = 64;
    const size_t rounded = (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
    workspace_.reset();  // free before allocating: never hold both
    workspace_.reset(std::aligned_alloc(kAlignment, rounded));
    ST_CHECK(workspace_ != nullptr) << "CpuContext: cannot allocate a " << rounded << "-byte workspace";
    workspace_bytes_ = rounded;
  }
  return workspace_.get();
}

}  // namespace sigmatune::kernels
