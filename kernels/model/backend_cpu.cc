#include <cblas.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/model/backend.h"
#include "kernels/ops/adamw.h"
#include "kernels/ops/adapter_ops.h"
#include "kernels/ops/cast.h"
#include "kernels/ops/covariance.h"
#include "kernels/ops/embedding.h"
#include "kernels/ops/inverse.h"
#include "kernels/ops/matrix_util.h"
#include "kernels/ops/matmul.h"
#include "kernels/ops/rms_norm.h"
#include "kernels/ops/rsvd.h"
#include "kernels/ops/segment_scale.h"
#include "kernels/ops/svd.h"
#include "kernels/ops/swiglu.h"

namespace sigmatune::model {

// Freed host buffers kept for reuse, by size class. Shared with the deleters of the tensors it
// hands out (so it outlives the backend if they do). Thread safe.
class CpuBackend::BufferCache {
 public:
  ~BufferCache() {
    for (auto& [bytes, buffers] : free_) {
      for (void* p : buffers) std::free(p);
    }
  }

  // Buffers below kMinBytes come straight from the allocator; larger sizes are rounded up to one of
  // four classes per power of two (at most 19% unused), so that nearby sizes share buffers.
  static size_t ClassBytes(size_t bytes) {
    constexpr size_t kAlignment = 64;
    if (bytes < kMinBytes) return (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
    size_t power = kMinBytes;
    while (power * 2 <= bytes) power *= 2;
    const size_t step = power / 4;
    return (bytes + step - 1) / step * step;
  }

  // The result holds at least `bytes` bytes, 64-byte aligned; pass it back to Put with the same
  // `bytes`.
  void* Get(size_t bytes) {
    const size_t cls = ClassBytes(bytes);
    if (cls >= kMinBytes) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(cls);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_bytes_ -= cls;
        return p;
      }
    }
    return std::aligned_alloc(64, cls);
  }

  void Put(void* p, size_t bytes) {
    const size_t cls = ClassBytes(bytes);
    if (cls >= kMinBytes) {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_bytes_ + cls <= kMaxCachedBytes) {
        free_[cls].push_back(p);
        cached_bytes_ += cls;
        return;
      }
    }
    std::free(p);
  }

 private:
  static constexpr size_t kMinBytes = size_t{1} << 16;
  static constexpr size_t kMaxCachedBytes = size_t{2} << 30;  // idle buffers beyond this are freed

  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_bytes_ = 0;
};

CpuBackend::CpuBackend() : CpuBackend(openblas_get_num_threads()) {}

CpuBackend::CpuBackend(int num_threads)
    : ctx_(std::make_unique<kernels::CpuContext>(std::max(num_threads, 1))), cache_(std::make_shared<BufferCache>()) {}

CpuBackend::~CpuBackend() = default;

absl::StatusOr<Tensor> CpuBackend::Allocate(const Shape& shape, DType dtype) {
  for (int64_t dim : shape) {
    if (dim < 0) {
      return absl::InvalidArgumentError(absl::StrCat("CpuBackend::Allocate: bad shape ", ShapeToString(shape)));
    }
  }
  const size_t bytes = static_cast<size_t>(NumElements(shape)) * SizeOf(dtype);
  void* data = cache_->Get(bytes);
  if (data == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("CpuBackend: out of host memory allocating ", bytes, " bytes"));
  }
  std::shared_ptr<BufferCache> cache = cache_;
  auto storage = std::make_shared<Storage>(data, bytes, Device::Cpu(),
                                           [cache = std::move(cache), bytes](void* p) { cache->Put(p, bytes); });
  return Tensor(std::move(storage), dtype, shape, Tensor::ContiguousStrides(shape), 0);
}

absl::StatusOr<Tensor> CpuBackend::Zeros(const Shape& shape, DType dtype) {
  ST_ASSIGN_OR_RETURN(Tensor t, Allocate(shape, dtype));
  if (t.nbytes() > 0) std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}

absl::StatusOr<Tensor> CpuBackend::Upload(const Tensor& host) {
  if (!host.device().is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat("CpuBackend::Upload needs a CPU tensor, got ", host.DebugString()));
  }
  return host.is_contiguous() ? host : host.Contiguous();
}

absl::StatusOr<Tensor> CpuBackend::Download(const Tensor& t) { return Upload(t); }

absl::Status CpuBackend::Copy(const Tensor& src, Tensor* dst) {
  if (src.shape() != dst->shape() || src.dtype() != dst->dtype()) {
    return absl::InvalidArgumentError(absl::StrCat("copy ", src.DebugString(), " -> ", dst->DebugString()));
  }
  dst->CopyFrom(src);
  return absl::OkStatus();
}

absl::Status CpuBackend::Axpy(double alpha, const Tensor& x, Tensor* y) {
  if (x.shape() != y->shape() || x.dtype() != y->dtype() || !x.is_contiguous() || !y->is_contiguous() ||
      (x.dtype() != DType::kF32 && x.dtype() != DType::kF64)) {
    return absl::InvalidArgumentError(absl::StrCat("axpy needs contiguous f32/f64 tensors of one shape, got ",
                                                   x.DebugString(), " and ", y->DebugString()));
  }
  if (x.dtype() == DType::kF32) {
    cblas_saxpy(x.numel(), static_cast<float>(alpha), x.data<float>(), 1, y->data<float>(), 1);
  } else {
    cblas_daxpy(x.numel(), alpha, x.data<double>(), 1, y->data<double>(), 1);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Matmul(const Tensor& a, kernels::Transpose ta, const Tensor& b, kernels::Transpose tb,
                                double alpha, double beta, Tensor* c) {
  return kernels::cpu::Matmul(a, ta, b, tb, alpha, beta, c);
}

absl::Status CpuBackend::EmbeddingForward(const Tensor& table, const Tensor& ids, Tensor* out) {
  return kernels::cpu::EmbeddingForward(table, ids, out);
}

absl::Status CpuBackend::RmsNormForward(const Tensor& x, const Tensor& w, double eps, Tensor* y) {
  return kernels::cpu::RmsNormForward(x, w, eps, y, ctx_.get());
}

absl::Status CpuBackend::RmsNormBackward(const Tensor& x, const Tensor& w, double eps, const Tensor& dy, Tensor* dx) {
  return kernels::cpu::RmsNormBackward(x, w, eps, dy, dx, nullptr, ctx_.get());
}

absl::Status CpuBackend::ApplyRope(const Tensor& x, const Tensor& positions, const kernels::RopeConfig& config,
                                   kernels::RopeDirection direction, Tensor* out) {
  return kernels::cpu::ApplyRope(x, positions, config, direction, out, ctx_.get());
}

absl::Status CpuBackend::AttentionForward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                                          Tensor* out, Tensor* lse) {
  return kernels::cpu::AttentionForward(q, k, v, cu_seqlens, out, lse, ctx_.get());
}

absl::Status CpuBackend::AttentionBackward(const Tensor& q, const Tensor& k, const Tensor& v,
                                           const Tensor& cu_seqlens, const Tensor& out, const Tensor& lse,
                                           const Tensor& dout, Tensor* dq, Tensor* dk, Tensor* dv) {
  return kernels::cpu::AttentionBackward(q, k, v, cu_seqlens, out, lse, dout, dq, dk, dv, ctx_.get());
}

absl::Status CpuBackend::SwigluForward(const Tensor& gate, const Tensor& up, Tensor* out) {
  return kernels::cpu::SwigluForward(gate, up, out, ctx_.get());
}

absl::Status CpuBackend::SwigluBackward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor* dgate,
                                        Tensor* dup) {
  return kernels::cpu::SwigluBackward(gate, up, dout, dgate, dup, ctx_.get());
}

absl::StatusOr<kernels::CrossEntropyStats> CpuBackend::LmHeadCrossEntropyForward(
    const Tensor& hidden, const Tensor& weight, const Tensor& targets, const kernels::CrossEntropyOptions& options,
    Tensor* dhidden_unit) {
  return kernels::cpu::LmHeadCrossEntropyForward(hidden, weight, targets, options, dhidden_unit, ctx_.get());
}

absl::Status CpuBackend::LmHeadCrossEntropyBackward(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                                    const kernels::CrossEntropyOptions& options, double grad_scale,
                                                    Tensor* dhidden) {
  return kernels::cpu::LmHeadCrossEntropyBackward(hidden, weight, targets, options, grad_scale, dhidden, nullptr,
                                                 ctx_.get());
}

absl::Status CpuBackend::Cast(const Tensor& src, Tensor* dst) { return kernels::cpu::Cast(src, dst); }

absl::Status CpuBackend::Svd(const Tensor& a, Tensor* u, Tensor* s, Tensor* vt) {
  return kernels::cpu::Svd(a, u, s, vt);
}

absl::Status CpuBackend::RandomizedSvd(const Tensor& a, int64_t rank, int niter, uint64_t seed, Tensor* u, Tensor* s,
                                       Tensor* vt) {
  return kernels::cpu::RandomizedSvd(a, rank, niter, seed, u, s, vt);
}

absl::Status CpuBackend::Inverse(const Tensor& a, Tensor* inv) { return kernels::cpu::Inverse(a, inv); }

absl::StatusOr<double> CpuBackend::DiagonalMean(const Tensor& a) { return kernels::cpu::DiagonalMean(a); }

absl::Status CpuBackend::AddScaledIdentity(double alpha, Tensor* a) {
  return kernels::cpu::AddScaledIdentity(alpha, a);
}

absl::StatusOr<double> CpuBackend::DistanceFromIdentity(const Tensor& a) {
  return kernels::cpu::DistanceFromIdentity(a);
}

absl::StatusOr<int64_t> CpuBackend::CountNonFinite(const Tensor& t) { return kernels::cpu::CountNonFinite(t); }

absl::Status CpuBackend::AccumulateCovariance(const Tensor& x, double alpha, Tensor* c,
                                              kernels::CovarianceFill fill) {
  return kernels::cpu::AccumulateCovariance(x, alpha, c, fill);
}

absl::Status CpuBackend::SymmetrizeFromUpper(Tensor* c) { return kernels::cpu::SymmetrizeFromUpper(c); }

absl::Status CpuBackend::ScaleSegmentsByAbsMax(const Tensor& x, const Tensor& cu_seqlens, Tensor* y, Tensor* bad) {
  return kernels::cpu::ScaleSegmentsByAbsMax(x, cu_seqlens, y, bad);
}

absl::Status CpuBackend::ScaleColumns(const Tensor& x, const Tensor& d, Tensor* y) {
  return kernels::cpu::ScaleColumns(x, d, y);
}

absl::Status CpuBackend::ColumnDot(const Tensor& a, const Tensor& b, double beta, Tensor* out) {
  return kernels::cpu::ColumnDot(a, b, beta, out);
}

absl::Status CpuBackend::Dropout(const Tensor& x, double p, uint64_t seed, Tensor* y) {
  return kernels::cpu::Dropout(x, p, seed, y);
}

absl::Status CpuBackend::AdamWStep(Tensor* param, const Tensor& grad, Tensor* exp_avg, Tensor* exp_avg_sq,
                                   const kernels::AdamWStepArgs& args) {
  return kernels::cpu::AdamWStep(param, grad, exp_avg, exp_avg_sq, args);
}

absl::StatusOr<double> CpuBackend::SumOfSquares(const Tensor& x) { return kernels::cpu::SumOfSquares(x); }

}  // namespace sigmatune::model
