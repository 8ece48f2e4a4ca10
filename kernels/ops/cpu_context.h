// CpuContext: what the CPU ops may borrow from their caller, the CPU analogue of GpuContext: a small
// persistent thread pool for their row and elementwise loops (softmax, SiLU, RMSNorm, RoPE) and a
// reusable scratch workspace. model::CpuBackend owns one (threads sized like OpenBLAS's) and passes
// it to the kernels::cpu ops that take one; a null context runs those loops on the calling thread
// and allocates scratch per call.
//
// ParallelFor(n, grain, fn) calls fn(begin, end) on contiguous ranges covering [0, n) exactly once,
// on the calling thread and the pool's workers, and returns when all have run. The split depends
// only on n, grain and num_threads(). The ops that take a context compute every output with the same
// operations whichever range it falls in and reduce across ranges in a fixed order, so their results
// do not depend on the context or its size.
//
// Scheduling. OpenBLAS's idle threads keep their cores busy yielding after every GEMM, so a woken
// worker is often placed on the caller's own core, behind it, and the loop would not run in
// parallel at all. So (on Linux) the workers may run on every CPU of the process except the one the
// calling thread is on (re-pinned only when that changes), and between calls a worker first waits
// yielding its core (sched_yield, as OpenBLAS's threads do), then, after kSpinMicros without work,
// sleeps on a condition variable. A yielding worker gives its core to any other runnable thread, so
// it costs the GEMMs that alternate with these loops little. One ParallelFor runs at a time: a call
// made while another is running (from fn itself or from another thread) runs serially on its
// calling thread. fn must not throw.
//
// Not thread safe otherwise: one op at a time uses a context (the workspace is shared).
#ifndef SIGMATUNE_KERNELS_OPS_CPU_CONTEXT_H_
#define SIGMATUNE_KERNELS_OPS_CPU_CONTEXT_H_

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"

namespace sigmatune::kernels {

class CpuContext {
 public:
  // num_threads counts the calling thread: max(num_threads, 1) - 1 workers are started.
  explicit CpuContext(int num_threads);
  CpuContext(const CpuContext&) = delete;
  CpuContext& operator=(const CpuContext&) = delete;
  ~CpuContext();

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Ranges hold at least `grain` items (>= 1), except when n < grain (one range).
  void ParallelFor(int64_t n, int64_t grain, absl::FunctionRef<void(int64_t, int64_t)> fn);

  // At least `bytes` bytes of 64-byte aligned scratch, valid until the next Workspace call. It only
  // grows and is kept, so ops called over and over do not fault in fresh pages each time.
  void* Workspace(size_t bytes);

 private:
  struct FreeDeleter {
    void operator()(void* p) const { std::free(p); }
  };

  void WorkerLoop(int part);
  void RunPart(int part) const;
  // Keeps the workers off the calling thread's CPU (Linux; a no-op elsewhere or on one CPU).
  void KeepWorkersOffCallerCpu();

  static constexpr int64_t kSpinMicros = 5000;

  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // held for a whole ParallelFor
  std::mutex mu_;       // guards the call's fields below and the sleep/wake handshake
  std::condition_variable work_cv_;
  std::atomic<uint64_t> epoch_{0};  // bumped (under mu_) per parallel call
  std::atomic<bool> stop_{false};
  std::atomic<int> pending_{0};     // worker ranges of this epoch not finished yet
  // The current call, written under mu_ before epoch_ is bumped.
  const absl::FunctionRef<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int parts_ = 0;

  std::vector<int> cpus_;  // the process's CPUs when the context was made
  int excluded_cpu_ = -1;  // the CPU the workers are kept off

  std::unique_ptr<void, FreeDeleter> workspace_;
  size_t workspace_bytes_ = 0;
};

// ctx->ParallelFor, or fn(0, n) on this thread when ctx is null.
inline void ParallelFor(CpuContext* ctx, int64_t n, int64_t grain, absl::FunctionRef<void(int64_t, int64_t)> fn) {
  if (ctx == nullptr) {
    if (n > 0) fn(0, n);
    return;
  }
  ctx->ParallelFor(n, grain, fn);
}

// Scratch of `count` T from ctx->Workspace, or owned by this object when ctx is null.
template <typename T>
class CpuScratch {
 public:
  CpuScratch(CpuContext* ctx, size_t count) {
    if (ctx != nullptr) {
      data_ = static_cast<T*>(ctx->Workspace(count * sizeof(T)));
    } else {
      own_ = std::make_unique<T[]>(count);
      data_ = own_.get();
    }
  }
  T* data() const { return data_; }

 private:
  std::unique_ptr<T[]> own_;
  T* data_ = nullptr;
};

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_CPU_CONTEXT_H_
