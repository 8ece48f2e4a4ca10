#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/attention.h"
#include "kernels/ops/cpu_context.h"
#include "kernels/ops/cpu_vec.h"
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

// row[0, n) = exp(row - shift); returns the sum in double (f32: vec::Exp4 lanes).
double ExpShift(double* row, int64_t n, double shift) {
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += (row[j] = std::exp(row[j] - shift));
  return sum;
}
double ExpShift(float* row, int64_t n, float shift) {
  const vec::F4 m = vec::Splat(shift);
  vec::D2 acc = {0.0, 0.0};
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const vec::F4 e = vec::Exp4(vec::Load(row + j) - m);
    vec::Store(row + j, e);
    vec::AccumulateDouble(e, &acc);
  }
  double sum = acc[0] + acc[1];
  for (; j < n; ++j) sum += (row[j] = vec::Exp(row[j] - shift));
  return sum;
}

// The work is cut into units, one per (sequence, kv head g): the group's query heads are stacked
// into one [group * len, hd] block (row hl * len + i = token i of head g * group + hl), so each
// product is one GEMM with group * len rows rather than `group` GEMMs of len rows. The [T, T]
// scores of a unit are computed whole (the masked upper triangle too: twice the flops of a loop,
// many times its speed). Units are processed in batches of at most kBatchScores scores (and at
// least one unit): the batch's score GEMMs, then its row-wise softmax work split over ctx's threads,
// then its output GEMMs.
constexpr int64_t kBatchScores = int64_t{1} << 22;

struct Unit {
  int64_t b, len, g;  // sequence start and length, kv head
  int64_t row0;       // first stacked row within the batch
  int64_t s_off;      // offset of the unit's [group * len, len] scores in the batch buffers
  int64_t x_off;      // offset of its [group * len, hd] stacked blocks
};

// Groups the (sequence, kv head) units into batches and calls flush(units, rows, scores, stacked).
template <typename Flush>
void ForEachBatch(const int32_t* cu, int64_t num_seqs, const Dims& d, Flush flush) {
  std::vector<Unit> units;
  int64_t rows = 0, scores = 0, stacked = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t b = cu[s], len = cu[s + 1] - cu[s];
    if (len == 0) continue;
    for (int64_t g = 0; g < d.kv_heads; ++g) {
      const int64_t unit_scores = d.group * len * len;
      if (!units.empty() && scores + unit_scores > kBatchScores) {
        flush(units, rows, scores, stacked);
        units.clear();
        rows = scores = stacked = 0;
      }
      units.push_back(Unit{b, len, g, rows, scores, stacked});
      rows += d.group * len;
      scores += unit_scores;
      stacked += d.group * len * d.hd;
    }
  }
  if (!units.empty()) flush(units, rows, scores, stacked);
}

// Copies the group's heads of x [tokens, heads, hd] (token stride xs) into the unit's stacked block.
template <typename T>
void Gather(const Unit& u, const Dims& d, const T* x, int64_t xs, T* stacked) {
  for (int64_t hl = 0; hl < d.group; ++hl) {
    for (int64_t i = 0; i < u.len; ++i) {
      const T* src = x + (u.b + i) * xs + (u.g * d.group + hl) * d.hd;
      std::copy(src, src + d.hd, stacked + (hl * u.len + i) * d.hd);
    }
  }
}

// The inverse of Gather: the stacked block back into the group's heads of x.
template <typename T>
void Scatter(const Unit& u, const Dims& d, const T* stacked, T* x, int64_t xs) {
  for (int64_t hl = 0; hl < d.group; ++hl) {
    for (int64_t i = 0; i < u.len; ++i) {
      const T* src = stacked + (hl * u.len + i) * d.hd;
      std::copy(src, src + d.hd, x + (u.b + i) * xs + (u.g * d.group + hl) * d.hd);
    }
  }
}

// Calls fn(unit, local row) for the stacked rows [begin, end) of a batch.
template <typename Fn>
void ForRows(const std::vector<Unit>& units, int64_t begin, int64_t end, const Dims& d, Fn fn) {
  size_t u = 0;
  while (u + 1 < units.size() && units[u + 1].row0 <= begin) ++u;
  for (int64_t r = begin; r < end; ++r) {
    while (r >= units[u].row0 + d.group * units[u].len) ++u;
    fn(units[u], r - units[u].row0);
  }
}

// The largest batch's scores and stacked elements.
std::pair<int64_t, int64_t> MaxBatch(const int32_t* cu, int64_t num_seqs, const Dims& d) {
  int64_t max_scores = 0, max_stacked = 0;
  ForEachBatch(cu, num_seqs, d, [&](const std::vector<Unit>&, int64_t, int64_t scores, int64_t stacked) {
    max_scores = std::max(max_scores, scores);
    max_stacked = std::max(max_stacked, stacked);
  });
  return {max_scores, max_stacked};
}

template <typename T>
void Forward(const T* q, const T* k, const T* v, const int32_t* cu, int64_t num_seqs, const Dims& d, T* out, T* lse,
             CpuContext* ctx) {
  const int64_t qs = d.heads * d.hd, ks = d.kv_heads * d.hd;  // token strides
  const auto [max_scores, max_stacked] = MaxBatch(cu, num_seqs, d);
  const CpuScratch<T> scratch(ctx, max_scores + max_stacked);
  T* const p = scratch.data();  // scores, then probabilities
  T* const x = p + max_scores;  // stacked Q, then O
  ForEachBatch(cu, num_seqs, d, [&](const std::vector<Unit>& units, int64_t rows, int64_t, int64_t) {
    for (const Unit& u : units) {  // S = scale Q K^T
      Gather(u, d, q, qs, x + u.x_off);
      Gemm(CblasNoTrans, CblasTrans, d.group * u.len, u.len, d.hd, static_cast<T>(d.scale), x + u.x_off, d.hd,
           k + u.b * ks + u.g * d.hd, ks, T(0), p + u.s_off, u.len);
    }
    // Causal softmax per row (sum in double), lse.
    ParallelFor(ctx, rows, 16, [&](int64_t begin, int64_t end) {
      ForRows(units, begin, end, d, [&](const Unit& u, int64_t r) {
        const int64_t i = r % u.len, h = u.g * d.group + r / u.len;
        T* row = p + u.s_off + r * u.len;
        const T mx = *std::max_element(row, row + i + 1);
        const double sum = ExpShift(row, i + 1, mx);
        const T inv = static_cast<T>(1.0 / sum);
        for (int64_t j = 0; j <= i; ++j) row[j] *= inv;
        std::fill(row + i + 1, row + u.len, T(0));
        lse[(u.b + i) * d.heads + h] = static_cast<T>(static_cast<double>(mx) + std::log(sum));
      });
    });
    for (const Unit& u : units) {  // O = P V, through the stacked block
      Gemm(CblasNoTrans, CblasNoTrans, d.group * u.len, d.hd, u.len, T(1), p + u.s_off, u.len,
           v + u.b * ks + u.g * d.hd, ks, T(0), x + u.x_off, d.hd);
      Scatter(u, d, x + u.x_off, out, qs);
    }
  });
}

// Per unit, with P recomputed from lse: dV_g = P^T dO; dP = dO V_g^T; dS = P (dP - rowsum(dO O));
// dQ = scale dS K_g; dK_g = scale dS^T Q (the stacked rows sum over the group's heads).
template <typename T>
void Backward(const T* q, const T* k, const T* v, const int32_t* cu, int64_t num_seqs, const Dims& d, const T* out,
              const T* lse, const T* dout, T* dq, T* dk, T* dv, CpuContext* ctx) {
  const int64_t qs = d.heads * d.hd, ks = d.kv_heads * d.hd;
  // Every (token, kv head) block of dq, dk and dv is written by exactly one unit (cu_seqlens covers
  // [0, tokens)), so the GEMMs overwrite (beta 0).
  const auto [max_scores, max_stacked] = MaxBatch(cu, num_seqs, d);
  const CpuScratch<T> scratch(ctx, 2 * (max_scores + max_stacked));
  T* const p = scratch.data();      // P
  T* const dp = p + max_scores;     // dP, then dS
  T* const xq = dp + max_scores;    // stacked Q
  T* const xdo = xq + max_stacked;  // stacked dO, then dQ
  const T scale = static_cast<T>(d.scale);
  ForEachBatch(cu, num_seqs, d, [&](const std::vector<Unit>& units, int64_t rows, int64_t, int64_t) {
    for (const Unit& u : units) {
      const int64_t m = d.group * u.len;
      Gather(u, d, q, qs, xq + u.x_off);
      Gather(u, d, dout, qs, xdo + u.x_off);
      Gemm(CblasNoTrans, CblasTrans, m, u.len, d.hd, scale, xq + u.x_off, d.hd, k + u.b * ks + u.g * d.hd, ks,
           T(0), p + u.s_off, u.len);
      Gemm(CblasNoTrans, CblasTrans, m, u.len, d.hd, T(1), xdo + u.x_off, d.hd, v + u.b * ks + u.g * d.hd, ks,
           T(0), dp + u.s_off, u.len);
    }
    ParallelFor(ctx, rows, 16, [&](int64_t begin, int64_t end) {
      ForRows(units, begin, end, d, [&](const Unit& u, int64_t r) {
        const int64_t i = r % u.len, h = u.g * d.group + r / u.len;
        T* prow = p + u.s_off + r * u.len;
        T* row = dp + u.s_off + r * u.len;
        ExpShift(prow, i + 1, lse[(u.b + i) * d.heads + h]);
        std::fill(prow + i + 1, prow + u.len, T(0));
        const T* doh = dout + (u.b + i) * qs + h * d.hd;
        const T* oh = out + (u.b + i) * qs + h * d.hd;
        double big_d = 0;
        for (int64_t c = 0; c < d.hd; ++c) big_d += static_cast<double>(doh[c]) * oh[c];
        for (int64_t j = 0; j <= i; ++j) row[j] = prow[j] * (row[j] - static_cast<T>(big_d));
        std::fill(row + i + 1, row + u.len, T(0));
      });
    });
    for (const Unit& u : units) {
      const int64_t m = d.group * u.len;
      T* dkg = dk + u.b * ks + u.g * d.hd;
      T* dvg = dv + u.b * ks + u.g * d.hd;
      Gemm(CblasTrans, CblasNoTrans, u.len, d.hd, m, T(1), p + u.s_off, u.len, xdo + u.x_off, d.hd, T(0),
           dvg, ks);
      Gemm(CblasTrans, CblasNoTrans, u.len, d.hd, m, scale, dp + u.s_off, u.len, xq + u.x_off, d.hd,
           T(0), dkg, ks);
      // dQ through the stacked dO block (no longer needed).
      Gemm(CblasNoTrans, CblasNoTrans, m, d.hd, u.len, scale, dp + u.s_off, u.len, k + u.b * ks + u.g * d.hd,
           ks, T(0), xdo + u.x_off, d.hd);
      Scatter(u, d, xdo + u.x_off, dq, qs);
    }
  });
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
                              Tensor* out, Tensor* lse, CpuContext* ctx) {
  ST_CHECK(out != nullptr && lse != nullptr);
  ST_RETURN_IF_ERROR(CheckAttention(q, k, v, cu_seqlens, *out, *lse));
  ST_RETURN_IF_ERROR(CheckCpuOperands({{&q, "q"}, {&k, "k"}, {&v, "v"}, {out, "out"}, {lse, "lse"}}));
  const Dims d = DimsOf(q, k);
  const int64_t seqs = cu_seqlens.numel() - 1;
  if (q.dtype() == DType::kF32) {
    Forward(q.data<float>(), k.data<float>(), v.data<float>(), cu_seqlens.data<int32_t>(), seqs, d,
            out->data<float>(), lse->data<float>(), ctx);
  } else {
    Forward(q.data<double>(), k.data<double>(), v.data<double>(), cu_seqlens.data<int32_t>(), seqs, d,
            out->data<double>(), lse->data<double>(), ctx);
  }
  return absl::OkStatus();
}

absl::Status AttentionBackward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                               const Tensor& out, const Tensor& lse, const Tensor& dout, Tensor* dq, Tensor* dk,
                               Tensor* dv, CpuContext* ctx) {
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
             dv->data<float>(), ctx);
  } else {
    Backward(q.data<double>(), k.data<double>(), v.data<double>(), cu_seqlens.data<int32_t>(), seqs, d,
             out.data<double>(), lse.data<double>(), dout.data<double>(), dq->data<double>(), dk->data<double>(),
             dv->data<double>(), ctx);
  }
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
