#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/cpu_context.h"
#include "kernels/ops/cpu_vec.h"
#include "kernels/ops/cross_entropy.h"
#include "kernels/ops/matmul.h"
#include "kernels/ops/nn_util.h"

namespace sigmatune::kernels {
namespace {

constexpr char kOp[] = "cross_entropy";

absl::Status CheckTargets(const Tensor& targets, int64_t vocab, int32_t ignore_index) {
  const int32_t* p = targets.data<int32_t>();
  for (int64_t t = 0; t < targets.numel(); ++t) {
    if (p[t] != ignore_index && (p[t] < 0 || p[t] >= vocab)) {
      return absl::InvalidArgumentError(absl::StrCat("cross_entropy: targets[", t, "] = ", p[t], " is outside [0, ",
                                                     vocab, ") and is not ignore_index ", ignore_index));
    }
  }
  return absl::OkStatus();
}

template <typename T>
double RowLogSumExp(const T* row, int64_t vocab) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < vocab; ++j) mx = std::max(mx, static_cast<double>(row[j]));
  double sum = 0;
  for (int64_t j = 0; j < vocab; ++j) sum += std::exp(static_cast<double>(row[j]) - mx);
  return mx + std::log(sum);
}

struct ExpSum {
  float max;
  double sum;
  double lse() const { return static_cast<double>(max) + std::log(sum); }
};

// f32 rows: SIMD max, exp(x - max) in f32 (vec::Exp4), the sum of the exps in double. Writes the
// exps to `e` (which may be `row`) when it is not null.
ExpSum RowExpSum(const float* row, int64_t vocab, float* e) {
  using vec::F4;
  F4 mx4 = vec::Splat(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 4 <= vocab; j += 4) mx4 = vec::Max(mx4, vec::Load(row + j));
  float mx = vec::HorizontalMax(mx4);
  for (; j < vocab; ++j) mx = std::max(mx, row[j]);
  const F4 m = vec::Splat(mx);
  vec::D2 acc = {0.0, 0.0};
  for (j = 0; j + 4 <= vocab; j += 4) {
    const F4 x = vec::Exp4(vec::Load(row + j) - m);
    if (e != nullptr) vec::Store(e + j, x);
    vec::AccumulateDouble(x, &acc);
  }
  double sum = acc[0] + acc[1];
  for (; j < vocab; ++j) {
    const float x = vec::Exp(row[j] - mx);
    if (e != nullptr) e[j] = x;
    sum += x;
  }
  return ExpSum{mx, sum};
}

// The loss of one valid row: lse - logit[target].
template <typename T>
double RowLoss(const T* row, int64_t vocab, int32_t target) {
  double lse;
  if constexpr (std::is_same_v<T, float>) {
    lse = RowExpSum(row, vocab, nullptr).lse();
  } else {
    lse = RowLogSumExp(row, vocab);
  }
  return lse - static_cast<double>(row[target]);
}

// One valid row in place: scale * (softmax - onehot); returns the row's loss (read first).
template <typename T>
double RowToGrad(T* row, int64_t vocab, int32_t target, double scale) {
  const double target_logit = row[target];
  if constexpr (std::is_same_v<T, float>) {
    const ExpSum es = RowExpSum(row, vocab, row);
    const float s = static_cast<float>(scale / es.sum);
    const vec::F4 s4 = vec::Splat(s);
    int64_t j = 0;
    for (; j + 4 <= vocab; j += 4) vec::Store(row + j, vec::Load(row + j) * s4);
    for (; j < vocab; ++j) row[j] *= s;
    // The target's entry from the double exp ratio (p_target near 1 cancels against the 1).
    row[target] = static_cast<float>(scale * (std::exp(target_logit - es.lse()) - 1.0));
    return es.lse() - target_logit;
  } else {
    const double lse = RowLogSumExp(row, vocab);
    for (int64_t j = 0; j < vocab; ++j) {
      row[j] = static_cast<T>(scale * (std::exp(static_cast<double>(row[j]) - lse) - (j == target ? 1.0 : 0.0)));
    }
    return lse - target_logit;
  }
}

// The rows of one block of logits, split over ctx's threads: loss[t] = row t's loss (valid rows only)
// and, with `grad`, the rows turned into d logits in place (ignored rows zeroed).
template <typename T>
void ProcessRows(T* logits, const int32_t* targets, int64_t rows, int64_t vocab, int32_t ignore_index, bool grad,
                 double scale, double* loss, CpuContext* ctx) {
  ParallelFor(ctx, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      T* row = logits + t * vocab;
      if (targets[t] == ignore_index) {
        if (grad) std::fill(row, row + vocab, T(0));
      } else {
        loss[t] = grad ? RowToGrad(row, vocab, targets[t], scale) : RowLoss(row, vocab, targets[t]);
      }
    }
  });
}

// Adds the valid rows' losses to *stats in token order.
void AddLosses(const double* loss, const int32_t* targets, int64_t rows, int32_t ignore_index,
               CrossEntropyStats* stats) {
  for (int64_t t = 0; t < rows; ++t) {
    if (targets[t] == ignore_index) continue;
    stats->loss_sum += loss[t];
    ++stats->count;
  }
}

// ProcessRows + AddLosses on a logits tensor of f32 or f64 (stats may be null).
void ChunkRows(const Tensor& logits, const int32_t* targets, int32_t ignore_index, bool grad, double scale,
               CrossEntropyStats* stats, CpuContext* ctx) {
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  std::vector<double> loss(rows, 0.0);
  if (logits.dtype() == DType::kF32) {
    ProcessRows(logits.data<float>(), targets, rows, vocab, ignore_index, grad, scale, loss.data(), ctx);
  } else {
    ProcessRows(logits.data<double>(), targets, rows, vocab, ignore_index, grad, scale, loss.data(), ctx);
  }
  if (stats != nullptr) AddLosses(loss.data(), targets, rows, ignore_index, stats);
}

void Finish(CrossEntropyStats* stats) { stats->loss = stats->count > 0 ? stats->loss_sum / stats->count : 0.0; }

absl::Status CheckCpuDTypes(std::initializer_list<std::pair<const Tensor*, const char*>> operands) {
  const Tensor& first = *operands.begin()->first;
  if (first.dtype() != DType::kF32 && first.dtype() != DType::kF64) {
    return absl::InvalidArgumentError(absl::StrCat("cpu cross_entropy: ", operands.begin()->second,
                                                   " must be f32 or f64, got ", DTypeName(first.dtype())));
  }
  for (const auto& [t, what] : operands) {
    if (t == nullptr) continue;
    ST_RETURN_IF_ERROR(nn::ExpectCpu(*t, kOp, what));
    if (t->dtype() != DType::kI32) ST_RETURN_IF_ERROR(nn::ExpectSameDType(*t, first, kOp, what, operands.begin()->second));
  }
  return absl::OkStatus();
}

// The [chunk, vocab] logits block: in ctx's workspace, or allocated here.
Tensor LogitsBuffer(CpuContext* ctx, int64_t chunk, int64_t vocab, DType dtype) {
  if (ctx == nullptr) return Tensor::Empty({chunk, vocab}, dtype);
  void* data = ctx->Workspace(static_cast<size_t>(chunk * vocab) * SizeOf(dtype));
  return Tensor::Wrap(data, {chunk, vocab}, dtype, Device::Cpu());
}

}  // namespace

absl::Status CheckLmHeadCrossEntropy(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                     const CrossEntropyOptions& options) {
  const std::initializer_list<DType> floats = {DType::kF32, DType::kF64, DType::kBF16};
  ST_RETURN_IF_ERROR(nn::ExpectTensor(hidden, kOp, "hidden", {-1, -1}, floats));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(weight, kOp, "lm_head weight", {-1, hidden.dim(1)}, floats));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(targets, kOp, "targets", {hidden.dim(0)}, {DType::kI32}));
  if (options.chunk_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("cross_entropy: chunk_tokens must be positive, got ",
                                                   options.chunk_tokens));
  }
  return absl::OkStatus();
}

absl::Status CheckCrossEntropy(const Tensor& logits, const Tensor& targets) {
  ST_RETURN_IF_ERROR(nn::ExpectTensor(logits, kOp, "logits", {-1, -1}, {DType::kF32, DType::kF64, DType::kBF16}));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(targets, kOp, "targets", {logits.dim(0)}, {DType::kI32}));
  return absl::OkStatus();
}

namespace cpu {

absl::StatusOr<CrossEntropyStats> CrossEntropyForward(const Tensor& logits, const Tensor& targets,
                                                      int32_t ignore_index) {
  ST_RETURN_IF_ERROR(CheckCrossEntropy(logits, targets));
  ST_RETURN_IF_ERROR(CheckCpuDTypes({{&logits, "logits"}, {&targets, "targets"}}));
  ST_RETURN_IF_ERROR(CheckTargets(targets, logits.dim(1), ignore_index));
  CrossEntropyStats stats;
  ChunkRows(logits, targets.data<int32_t>(), ignore_index, /*grad=*/false, 0.0, &stats, nullptr);
  Finish(&stats);
  return stats;
}

absl::Status CrossEntropyBackward(const Tensor& logits, const Tensor& targets, int32_t ignore_index,
                                  double grad_scale, Tensor* dlogits) {
  ST_CHECK(dlogits != nullptr);
  ST_RETURN_IF_ERROR(CheckCrossEntropy(logits, targets));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(*dlogits, kOp, "dlogits", logits.shape(), {logits.dtype()}));
  ST_RETURN_IF_ERROR(CheckCpuDTypes({{&logits, "logits"}, {&targets, "targets"}, {dlogits, "dlogits"}}));
  ST_RETURN_IF_ERROR(CheckTargets(targets, logits.dim(1), ignore_index));
  if (dlogits->raw_data() != logits.raw_data()) dlogits->CopyFrom(logits);
  ChunkRows(*dlogits, targets.data<int32_t>(), ignore_index, /*grad=*/true, grad_scale, nullptr, nullptr);
  return absl::OkStatus();
}

absl::StatusOr<CrossEntropyStats> LmHeadCrossEntropyForward(const Tensor& hidden, const Tensor& weight,
                                                            const Tensor& targets, const CrossEntropyOptions& options,
                                                            Tensor* dhidden_unit, CpuContext* ctx) {
  ST_RETURN_IF_ERROR(CheckLmHeadCrossEntropy(hidden, weight, targets, options));
  if (dhidden_unit != nullptr) {
    ST_RETURN_IF_ERROR(nn::ExpectTensor(*dhidden_unit, kOp, "dhidden_unit", hidden.shape(), {hidden.dtype()}));
  }
  ST_RETURN_IF_ERROR(CheckCpuDTypes(
      {{&hidden, "hidden"}, {&weight, "lm_head weight"}, {&targets, "targets"}, {dhidden_unit, "dhidden_unit"}}));
  const int64_t tokens = hidden.dim(0), vocab = weight.dim(0);
  ST_RETURN_IF_ERROR(CheckTargets(targets, vocab, options.ignore_index));
  const int64_t chunk = std::min(options.chunk_tokens, std::max<int64_t>(tokens, 1));
  Tensor buffer = LogitsBuffer(ctx, chunk, vocab, hidden.dtype());
  CrossEntropyStats stats;
  for (int64_t t0 = 0; t0 < tokens; t0 += chunk) {
    const int64_t rows = std::min(chunk, tokens - t0);
    Tensor logits = buffer.Slice(0, 0, rows);
    ST_RETURN_IF_ERROR(
        Matmul(hidden.Slice(0, t0, t0 + rows), Transpose::kNo, weight, Transpose::kYes, 1.0, 0.0, &logits));
    // Without dhidden_unit only the losses; with it, the chunk's d logits for grad_scale 1 and then
    // its rows of dhidden_unit.
    const bool grad = dhidden_unit != nullptr;
    ChunkRows(logits, targets.data<int32_t>() + t0, options.ignore_index, grad, 1.0, &stats, ctx);
    if (!grad) continue;
    Tensor dh = dhidden_unit->Slice(0, t0, t0 + rows);
    ST_RETURN_IF_ERROR(Matmul(logits, Transpose::kNo, weight, Transpose::kNo, 1.0, 0.0, &dh));
  }
  Finish(&stats);
  return stats;
}

absl::Status LmHeadCrossEntropyBackward(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                        const CrossEntropyOptions& options, double grad_scale, Tensor* dhidden,
                                        Tensor* dweight, CpuContext* ctx) {
  ST_CHECK(dhidden != nullptr);
  ST_RETURN_IF_ERROR(CheckLmHeadCrossEntropy(hidden, weight, targets, options));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(*dhidden, kOp, "dhidden", hidden.shape(), {hidden.dtype()}));
  if (dweight != nullptr) {
    ST_RETURN_IF_ERROR(nn::ExpectTensor(*dweight, kOp, "dweight", weight.shape(), {weight.dtype()}));
  }
  ST_RETURN_IF_ERROR(CheckCpuDTypes({{&hidden, "hidden"},
                                     {&weight, "lm_head weight"},
                                     {&targets, "targets"},
                                     {dhidden, "dhidden"},
                                     {dweight, "dweight"}}));
  const int64_t tokens = hidden.dim(0), vocab = weight.dim(0);
  ST_RETURN_IF_ERROR(CheckTargets(targets, vocab, options.ignore_index));
  const int64_t chunk = std::min(options.chunk_tokens, std::max<int64_t>(tokens, 1));
  Tensor buffer = LogitsBuffer(ctx, chunk, vocab, hidden.dtype());
  for (int64_t t0 = 0; t0 < tokens; t0 += chunk) {
    const int64_t rows = std::min(chunk, tokens - t0);
    const Tensor h = hidden.Slice(0, t0, t0 + rows);
    Tensor logits = buffer.Slice(0, 0, rows);
    ST_RETURN_IF_ERROR(Matmul(h, Transpose::kNo, weight, Transpose::kYes, 1.0, 0.0, &logits));
    ChunkRows(logits, targets.data<int32_t>() + t0, options.ignore_index, /*grad=*/true, grad_scale, nullptr, ctx);
    Tensor dh = dhidden->Slice(0, t0, t0 + rows);
    ST_RETURN_IF_ERROR(Matmul(logits, Transpose::kNo, weight, Transpose::kNo, 1.0, 0.0, &dh));
    if (dweight != nullptr) ST_RETURN_IF_ERROR(Matmul(logits, Transpose::kYes, h, Transpose::kNo, 1.0, 1.0, dweight));
  }
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
