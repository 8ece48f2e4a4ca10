#include <cblas.h>

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

// Row-major GEMM overloads: C = alpha op(A) op(B) + beta C.
void Gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void Gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
          int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// Per (sequence, query head): S = scale Q_h K_g^T as one GEMM over the whole sequence (the upper,
// masked triangle is computed and discarded: twice the flops of the loop, many times its speed),
// a causal softmax per row (sum in double), then O_h = P V_g.
template <typename T>
void Forward(const T* q, const T* k, const T* v, const int32_t* cu, int64_t num_seqs, const Dims& d, T* out, T* lse) {
  const int64_t qs = d.heads * d.hd, ks = d.kv_heads * d.hd;  // token strides
  std::vector<T> p;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t b = cu[s], len = cu[s + 1] - cu[s];
    if (len == 0) continue;
    p.resize(len * len);
    for (int64_t h = 0; h < d.heads; ++h) {
      const int64_t g = h / d.group;
      Gemm(CblasNoTrans, CblasTrans, len, len, d.hd, static_cast<T>(d.scale), q + b * qs + h * d.hd, qs,
           k + b * ks + g * d.hd, ks, T(0), p.data(), len);
      for (int64_t i = 0; i < len; ++i) {
        T* row = p.data() + i * len;
        const T mx = *std::max_element(row, row + i + 1);
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += (row[j] = std::exp(row[j] - mx));
        const T inv = static_cast<T>(1.0 / sum);
        for (int64_t j = 0; j <= i; ++j) row[j] *= inv;
        std::fill(row + i + 1, row + len, T(0));
        lse[(b + i) * d.heads + h] = static_cast<T>(static_cast<double>(mx) + std::log(sum));
      }
      Gemm(CblasNoTrans, CblasNoTrans, len, d.hd, len, T(1), p.data(), len, v + b * ks + g * d.hd, ks, T(0),
           out + b * qs + h * d.hd, qs);
    }
  }
}

// Per (sequence, query head), with P recomputed from lse: dV_g += P^T dO_h; dP = dO_h V_g^T;
// dS = P (dP - rowsum(dO_h O_h)); dQ_h = scale dS K_g; dK_g += scale dS^T Q_h.
template <typename T>
void Backward(const T* q, const T* k, const T* v, const int32_t* cu, int64_t num_seqs, const Dims& d, const T* out,
              const T* lse, const T* dout, T* dq, T* dk, T* dv) {
  const int64_t qs = d.heads * d.hd, ks = d.kv_heads * d.hd;
  std::fill(dk, dk + d.tokens * ks, T(0));
  std::fill(dv, dv + d.tokens * ks, T(0));
  std::vector<T> p, dp;
  const T scale = static_cast<T>(d.scale);
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t b = cu[s], len = cu[s + 1] - cu[s];
    if (len == 0) continue;
    p.resize(len * len);
    dp.resize(len * len);
    for (int64_t h = 0; h < d.heads; ++h) {
      const int64_t g = h / d.group;
      const T* qh = q + b * qs + h * d.hd;
      const T* kg = k + b * ks + g * d.hd;
      const T* vg = v + b * ks + g * d.hd;
      const T* doh = dout + b * qs + h * d.hd;
      const T* oh = out + b * qs + h * d.hd;
      Gemm(CblasNoTrans, CblasTrans, len, len, d.hd, scale, qh, qs, kg, ks, T(0), p.data(), len);
      for (int64_t i = 0; i < len; ++i) {
        T* row = p.data() + i * len;
        const T l = lse[(b + i) * d.heads + h];
        for (int64_t j = 0; j <= i; ++j) row[j] = std::exp(row[j] - l);
        std::fill(row + i + 1, row + len, T(0));
      }
      Gemm(CblasTrans, CblasNoTrans, len, d.hd, len, T(1), p.data(), len, doh, qs, T(1), dv + b * ks + g * d.hd, ks);
      Gemm(CblasNoTrans, CblasTrans, len, len, d.hd, T(1), doh, qs, vg, ks, T(0), dp.data(), len);
      for (int64_t i = 0; i < len; ++i) {
        double big_d = 0;
        for (int64_t c = 0; c < d.hd; ++c) big_d += static_cast<double>(doh[i * qs + c]) * oh[i * qs + c];
        const T* prow = p.data() + i * len;
        T* row = dp.data() + i * len;
        for (int64_t j = 0; j <= i; ++j) row[j] = prow[j] * (row[j] - static_cast<T>(big_d));
        std::fill(row + i + 1, row + len, T(0));
      }
      Gemm(CblasNoTrans, CblasNoTrans, len, d.hd, len, scale, dp.data(), len, kg, ks, T(0), dq + b * qs + h * d.hd,
           qs);
      Gemm(CblasTrans, CblasNoTrans, len, d.hd, len, scale, dp.data(), len, qh, qs, T(1), dk + b * ks + g * d.hd, ks);
    }
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
