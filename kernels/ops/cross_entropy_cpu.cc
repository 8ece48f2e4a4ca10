#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
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

// Adds the losses of `rows` rows to *stats.
template <typename T>
void AccumulateLoss(const T* logits, const int32_t* targets, int64_t rows, int64_t vocab, int32_t ignore_index,
                    CrossEntropyStats* stats) {
  for (int64_t t = 0; t < rows; ++t) {
    if (targets[t] == ignore_index) continue;
    const T* row = logits + t * vocab;
    stats->loss_sum += RowLogSumExp(row, vocab) - static_cast<double>(row[targets[t]]);
    ++stats->count;
  }
}

// d logits in place: scale * (softmax - onehot), zero rows for ignored targets.
template <typename T>
void LogitsToGrad(T* logits, const int32_t* targets, int64_t rows, int64_t vocab, int32_t ignore_index,
                  double scale) {
  for (int64_t t = 0; t < rows; ++t) {
    T* row = logits + t * vocab;
    if (targets[t] == ignore_index) {
      std::fill(row, row + vocab, T(0));
      continue;
    }
    const double lse = RowLogSumExp(row, vocab);
    for (int64_t j = 0; j < vocab; ++j) {
      row[j] = static_cast<T>(scale * (std::exp(static_cast<double>(row[j]) - lse) - (j == targets[t] ? 1.0 : 0.0)));
    }
  }
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
  if (logits.dtype() == DType::kF32) {
    AccumulateLoss(logits.data<float>(), targets.data<int32_t>(), logits.dim(0), logits.dim(1), ignore_index, &stats);
  } else {
    AccumulateLoss(logits.data<double>(), targets.data<int32_t>(), logits.dim(0), logits.dim(1), ignore_index, &stats);
  }
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
  if (logits.dtype() == DType::kF32) {
    LogitsToGrad(dlogits->data<float>(), targets.data<int32_t>(), logits.dim(0), logits.dim(1), ignore_index,
                 grad_scale);
  } else {
    LogitsToGrad(dlogits->data<double>(), targets.data<int32_t>(), logits.dim(0), logits.dim(1), ignore_index,
                 grad_scale);
  }
  return absl::OkStatus();
}

absl::StatusOr<CrossEntropyStats> LmHeadCrossEntropyForward(const Tensor& hidden, const Tensor& weight,
                                                            const Tensor& targets,
                                                            const CrossEntropyOptions& options) {
  ST_RETURN_IF_ERROR(CheckLmHeadCrossEntropy(hidden, weight, targets, options));
  ST_RETURN_IF_ERROR(CheckCpuDTypes({{&hidden, "hidden"}, {&weight, "lm_head weight"}, {&targets, "targets"}}));
  const int64_t tokens = hidden.dim(0), vocab = weight.dim(0);
  ST_RETURN_IF_ERROR(CheckTargets(targets, vocab, options.ignore_index));
  const int64_t chunk = std::min(options.chunk_tokens, std::max<int64_t>(tokens, 1));
  Tensor buffer = Tensor::Empty({chunk, vocab}, hidden.dtype());
  CrossEntropyStats stats;
  for (int64_t t0 = 0; t0 < tokens; t0 += chunk) {
    const int64_t rows = std::min(chunk, tokens - t0);
    Tensor logits = buffer.Slice(0, 0, rows);
    ST_RETURN_IF_ERROR(
        Matmul(hidden.Slice(0, t0, t0 + rows), Transpose::kNo, weight, Transpose::kYes, 1.0, 0.0, &logits));
    const int32_t* tg = targets.data<int32_t>() + t0;
    if (hidden.dtype() == DType::kF32) {
      AccumulateLoss(logits.data<float>(), tg, rows, vocab, options.ignore_index, &stats);
    } else {
      AccumulateLoss(logits.data<double>(), tg, rows, vocab, options.ignore_index, &stats);
    }
  }
  Finish(&stats);
  return stats;
}

absl::Status LmHeadCrossEntropyBackward(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                        const CrossEntropyOptions& options, double grad_scale, Tensor* dhidden,
                                        Tensor* dweight) {
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
  Tensor buffer = Tensor::Empty({chunk, vocab}, hidden.dtype());
  for (int64_t t0 = 0; t0 < tokens; t0 += chunk) {
    const int64_t rows = std::min(chunk, tokens - t0);
    const Tensor h = hidden.Slice(0, t0, t0 + rows);
    Tensor logits = buffer.Slice(0, 0, rows);
    ST_RETURN_IF_ERROR(Matmul(h, Transpose::kNo, weight, Transpose::kYes, 1.0, 0.0, &logits));
    const int32_t* tg = targets.data<int32_t>() + t0;
    if (hidden.dtype() == DType::kF32) {
      LogitsToGrad(logits.data<float>(), tg, rows, vocab, options.ignore_index, grad_scale);
    } else {
      LogitsToGrad(logits.data<double>(), tg, rows, vocab, options.ignore_index, grad_scale);
    }
    Tensor dh = dhidden->Slice(0, t0, t0 + rows);
    ST_RETURN_IF_ERROR(Matmul(logits, Transpose::kNo, weight, Transpose::kNo, 1.0, 0.0, &dh));
    if (dweight != nullptr) ST_RETURN_IF_ERROR(Matmul(logits, Transpose::kYes, h, Transpose::kNo, 1.0, 1.0, dweight));
  }
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
