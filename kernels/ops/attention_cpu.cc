#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/attention.h"
#include "kernels/ops/nn_util.h"

namespace sigmatune::kernels {
namespace {

constexpr char kOp[] = "attention";

struct Dims {
  int64_t tokens, heads, kv_heads, hd, group;
  double scale;
};

Dims DimsOf(const Tensor& q, const Tensor& k) {
  return Dims{q.dim(0), q.dim(1), k.dim(1), q.dim(2), q.dim(1) / k.dim(1), 1.0 / std::sqrt(static_cast<double>(q.dim(2)))};
}

template <typename T>
double Dot(const T* a, const T* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

template <typename T>
void Forward(const T* q, const T* k, const T* v, const int32_t* cu, int64_t num_seqs, const Dims& d, T* out, T* lse) {
  std::vector<double> p, o(d.hd);
  for (int64_t s = 0; s < num_seqs; ++s) {
    for (int64_t i = cu[s]; i < cu[s + 1]; ++i) {
      for (int64_t h = 0; h < d.heads; ++h) {
        const int64_t g = h / d.group;
        const T* qi = q + (i * d.heads + h) * d.hd;
        p.assign(i - cu[s] + 1, 0.0);
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = cu[s]; j <= i; ++j) {
          p[j - cu[s]] = d.scale * Dot(qi, k + (j * d.kv_heads + g) * d.hd, d.hd);
          mx = std::max(mx, p[j - cu[s]]);
        }
        double sum = 0;
        for (double& x : p) sum += (x = std::exp(x - mx));
        std::fill(o.begin(), o.end(), 0.0);
        for (int64_t j = cu[s]; j <= i; ++j) {
          const T* vj = v + (j * d.kv_heads + g) * d.hd;
          for (int64_t c = 0; c < d.hd; ++c) o[c] += p[j - cu[s]] * vj[c];
        }
        for (int64_t c = 0; c < d.hd; ++c) out[(i * d.heads + h) * d.hd + c] = static_cast<T>(o[c] / sum);
        lse[i * d.heads + h] = static_cast<T>(mx + std::log(sum));
      }
    }
  }
}

template <typename T>
void Backward(const T* q, const T* k, const T* v, const int32_t* cu, int64_t num_seqs, const Dims& d, const T* out,
              const T* lse, const T* dout, T* dq, T* dk, T* dv) {
  std::vector<double> dk_acc(d.tokens * d.kv_heads * d.hd, 0.0), dv_acc(dk_acc.size(), 0.0), dq_i(d.hd);
  for (int64_t s = 0; s < num_seqs; ++s) {
    for (int64_t i = cu[s]; i < cu[s + 1]; ++i) {
      for (int64_t h = 0; h < d.heads; ++h) {
        const int64_t g = h / d.group;
        const int64_t qoff = (i * d.heads + h) * d.hd;
        const double big_d = Dot(dout + qoff, out + qoff, d.hd);
        std::fill(dq_i.begin(), dq_i.end(), 0.0);
        for (int64_t j = cu[s]; j <= i; ++j) {
          const int64_t koff = (j * d.kv_heads + g) * d.hd;
          const double p = std::exp(d.scale * Dot(q + qoff, k + koff, d.hd) - static_cast<double>(lse[i * d.heads + h]));
          const double dp = Dot(dout + qoff, v + koff, d.hd);
          const double ds = p * (dp - big_d) * d.scale;
          for (int64_t c = 0; c < d.hd; ++c) {
            dq_i[c] += ds * k[koff + c];
            dk_acc[koff + c] += ds * q[qoff + c];
            dv_acc[koff + c] += p * dout[qoff + c];
          }
        }
        for (int64_t c = 0; c < d.hd; ++c) dq[qoff + c] = static_cast<T>(dq_i[c]);
      }
    }
  }
  for (size_t i = 0; i < dk_acc.size(); ++i) {
    dk[i] = static_cast<T>(dk_acc[i]);
    dv[i] = static_cast<T>(dv_acc[i]);
  }
}

absl::Status CheckCpuOperands(std::initializer_list<std::pair<const Tensor*, const char*>> operands) {
  const Tensor& q = *operands.begin()->first;
  if (q.dtype() != DType::kF32 && q.dtype() != DType::kF64) {
    return absl::InvalidArgumentError(absl::StrCat("cpu attention: q must be f32 or f64, got ", DTypeName(q.dtype())));
  }
  for (const auto& [t, what] : operands) ST_RETURN_IF_ERROR(nn::ExpectCpu(*t, kOp, what));
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                            const Tensor& out, const Tensor& lse) {
  ST_RETURN_IF_ERROR(nn::ExpectTensor(q, kOp, "q", {-1, -1, -1}, {DType::kF32, DType::kF64, DType::kBF16}));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(k, kOp, "k", {q.dim(0), -1, q.dim(2)}, {q.dtype()}));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(v, kOp, "v", k.shape(), {q.dtype()}));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(out, kOp, "out", q.shape(), {q.dtype()}));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(lse, kOp, "lse", {q.dim(0), q.dim(1)},
                                      {q.dtype() == DType::kF64 ? DType::kF64 : DType::kF32}));
  if (k.dim(1) == 0 || q.dim(1) % k.dim(1) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("attention: heads (", q.dim(1), ") must be a positive multiple of ",
                                                   "kv_heads (", k.dim(1), ")"));
  }
  if (q.dim(2) == 0) return absl::InvalidArgumentError("attention: head dim must be positive");
  ST_RETURN_IF_ERROR(nn::ExpectTensor(cu_seqlens, kOp, "cu_seqlens", {-1}, {DType::kI32}));
  ST_RETURN_IF_ERROR(nn::ExpectCpu(cu_seqlens, kOp, "cu_seqlens"));
  const int32_t* cu = cu_seqlens.data<int32_t>();
  const int64_t n = cu_seqlens.numel();
  if (n < 1 || cu[0] != 0 || cu[n - 1] != q.dim(0)) {
    return absl::InvalidArgumentError(absl::StrCat("attention: cu_seqlens must start at 0 and end at tokens (",
                                                   q.dim(0), "); got ", n, " offsets"));
  }
  for (int64_t i = 1; i < n; ++i) {
    if (cu[i] < cu[i - 1]) {
      return absl::InvalidArgumentError(
          absl::StrCat("attention: cu_seqlens decreases at index ", i, " (", cu[i - 1], " -> ", cu[i], ")"));
    }
  }
  return absl::OkStatus();
}

namespace cpu {

absl::Status AttentionForward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                              Tensor* out, Tensor* lse) {
  ST_CHECK(out != nullptr && lse != nullptr);
  ST_RETURN_IF_ERROR(CheckAttention(q, k, v, cu_seqlens, *out, *lse));
  ST_RETURN_IF_ERROR(CheckCpuOperands({{&q, "q"}, {&k, "k"}, {&v, "v"}, {out, "out"}, {lse, "lse"}}));
  const Dims d = DimsOf(q, k);
  const int64_t seqs = cu_seqlens.numel() - 1;
  if (q.dtype() == DType::kF32) {
    Forward(q.data<float>(), k.data<float>(), v.data<float>(), cu_seqlens.data<int32_t>(), seqs, d,
            out->data<float>(), lse->data<float>());
  } else {
    Forward(q.data<double>(), k.data<double>(), v.data<double>(), cu_seqlens.data<int32_t>(), seqs, d,
            out->data<double>(), lse->data<double>());
  }
  return absl::OkStatus();
}

absl::Status AttentionBackward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                               const Tensor& out, const Tensor& lse, const Tensor& dout, Tensor* dq, Tensor* dk,
                               Tensor* dv) {
  ST_CHECK(dq != nullptr && dk != nullptr && dv != nullptr);
  ST_RETURN_IF_ERROR(CheckAttention(q, k, v, cu_seqlens, out, lse));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(dout, kOp, "dout", q.shape(), {q.dtype()}));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(*dq, kOp, "dq", q.shape(), {q.dtype()}));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(*dk, kOp, "dk", k.shape(), {q.dtype()}));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(*dv, kOp, "dv", k.shape(), {q.dtype()}));
  ST_RETURN_IF_ERROR(CheckCpuOperands({{&q, "q"}, {&k, "k"}, {&v, "v"}, {&out, "out"}, {&lse, "lse"},
                                       {&dout, "dout"}, {dq, "dq"}, {dk, "dk"}, {dv, "dv"}}));
  const Dims d = DimsOf(q, k);
  const int64_t seqs = cu_seqlens.numel() - 1;
  if (q.dtype() == DType::kF32) {
    Backward(q.data<float>(), k.data<float>(), v.data<float>(), cu_seqlens.data<int32_t>(), seqs, d,
             out.data<float>(), lse.data<float>(), dout.data<float>(), dq->data<float>(), dk->data<float>(),
             dv->data<float>());
  } else {
    Backward(q.data<double>(), k.data<double>(), v.data<double>(), cu_seqlens.data<int32_t>(), seqs, d,
             out.data<double>(), lse.data<double>(), dout.data<double>(), dq->data<double>(), dk->data<double>(),
             dv->data<double>());
  }
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
