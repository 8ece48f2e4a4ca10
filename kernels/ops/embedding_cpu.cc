#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/embedding.h"
#include "kernels/ops/nn_util.h"

namespace sigmatune::kernels {
namespace {

constexpr char kOp[] = "embedding";

template <typename T>
void ScatterAdd(const int32_t* ids, const T* dout, int64_t tokens, int64_t d, T* dtable) {
  for (int64_t t = 0; t < tokens; ++t) {
    T* row = dtable + static_cast<int64_t>(ids[t]) * d;
    const T* g = dout + t * d;
    for (int64_t j = 0; j < d; ++j) row[j] += g[j];
  }
}

absl::Status CheckIdsInRange(const Tensor& ids, int64_t vocab) {
  const int32_t* p = ids.data<int32_t>();
  for (int64_t t = 0; t < ids.numel(); ++t) {
    if (p[t] < 0 || p[t] >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("embedding: ids[", t, "] = ", p[t], " is outside [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckEmbeddingForward(const Tensor& table, const Tensor& ids, const Tensor& out) {
  ST_RETURN_IF_ERROR(nn::ExpectTensor(table, kOp, "table", {-1, -1},
                                      {DType::kF32, DType::kF64, DType::kBF16, DType::kF16}));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(ids, kOp, "ids", {-1}, {DType::kI32}));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(out, kOp, "out", {ids.dim(0), table.dim(1)}, {table.dtype()}));
  return absl::OkStatus();
}

absl::Status CheckEmbeddingBackward(const Tensor& ids, const Tensor& dout, const Tensor& dtable) {
  ST_RETURN_IF_ERROR(nn::ExpectTensor(ids, kOp, "ids", {-1}, {DType::kI32}));
  ST_RETURN_IF_ERROR(
      nn::ExpectTensor(dout, kOp, "dout", {ids.dim(0), -1}, {DType::kF32, DType::kF64, DType::kBF16}));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(dtable, kOp, "dtable", {-1, dout.dim(1)}, {DType::kF32, DType::kF64}));
  return absl::OkStatus();
}

namespace cpu {

absl::Status EmbeddingForward(const Tensor& table, const Tensor& ids, Tensor* out) {
  ST_CHECK(out != nullptr);
  ST_RETURN_IF_ERROR(CheckEmbeddingForward(table, ids, *out));
  for (const auto& [t, what] : {std::pair<const Tensor*, const char*>{&table, "table"}, {&ids, "ids"}, {out, "out"}}) {
    ST_RETURN_IF_ERROR(nn::ExpectCpu(*t, kOp, what));
  }
  ST_RETURN_IF_ERROR(CheckIdsInRange(ids, table.dim(0)));
  const size_t row_bytes = static_cast<size_t>(table.dim(1)) * SizeOf(table.dtype());
  const char* src = static_cast<const char*>(table.raw_data());
  char* dst = static_cast<char*>(out->raw_data());
  for (int64_t t = 0; t < ids.numel(); ++t) {
    if (row_bytes > 0) std::memcpy(dst + t * row_bytes, src + ids.data<int32_t>()[t] * row_bytes, row_bytes);
  }
  return absl::OkStatus();
}

absl::Status EmbeddingBackward(const Tensor& ids, const Tensor& dout, Tensor* dtable) {
  ST_CHECK(dtable != nullptr);
  ST_RETURN_IF_ERROR(CheckEmbeddingBackward(ids, dout, *dtable));
  ST_RETURN_IF_ERROR(nn::ExpectSameDType(dout, *dtable, kOp, "dout", "dtable"));
  for (const auto& [t, what] : {std::pair<const Tensor*, const char*>{&ids, "ids"}, {&dout, "dout"}, {dtable, "dtable"}}) {
    ST_RETURN_IF_ERROR(nn::ExpectCpu(*t, kOp, what));
  }
  ST_RETURN_IF_ERROR(CheckIdsInRange(ids, dtable->dim(0)));
  if (dout.dtype() == DType::kF32) {
    ScatterAdd(ids.data<int32_t>(), dout.data<float>(), ids.numel(), dout.dim(1), dtable->data<float>());
  } else {
    ScatterAdd(ids.data<int32_t>(), dout.data<double>(), ids.numel(), dout.dim(1), dtable->data<double>());
  }
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
