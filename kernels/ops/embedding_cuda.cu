#include <cuda_bf16.h>

#include <climits>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/embedding.h"
#include "kernels/ops/nn_cuda_util.h"
#include "kernels/ops/nn_util.h"

namespace sigmatune::kernels::cuda {
namespace {

constexpr char kOp[] = "embedding";

// first_bad starts at INT_MAX; ends as the smallest position holding an out-of-range id.
__global__ void FindBadIdKernel(const int32_t* ids, int64_t tokens, int64_t vocab, int* first_bad) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < tokens;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (ids[t] < 0 || ids[t] >= vocab) atomicMin(first_bad, static_cast<int>(t));
  }
}

__global__ void InitIntKernel(int* p, int v) { *p = v; }

absl::Status CheckIdsInRange(GpuContext& ctx, const Tensor& ids, int64_t vocab) {
  const int64_t tokens = ids.numel();
  if (tokens == 0) return absl::OkStatus();
  if (tokens > INT_MAX) return absl::InvalidArgumentError(absl::StrCat("embedding: ", tokens, " ids exceed 2^31-1"));
  ST_ASSIGN_OR_RETURN(void* scratch, ctx.Workspace(sizeof(int)));
  int* first_bad = static_cast<int*>(scratch);
  InitIntKernel<<<1, 1, 0, ctx.stream()>>>(first_bad, INT_MAX);
  FindBadIdKernel<<<nn::GridFor(tokens, 256), 256, 0, ctx.stream()>>>(ids.data<int32_t>(), tokens, vocab, first_bad);
  ST_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  int pos = INT_MAX;
  ST_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(&pos, first_bad, sizeof(int), cudaMemcpyDeviceToHost, ctx.stream()));
  ST_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx.stream()));
  if (pos == INT_MAX) return absl::OkStatus();
  int32_t id = 0;
  ST_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(&id, ids.data<int32_t>() + pos, sizeof(int32_t), cudaMemcpyDeviceToHost, ctx.stream()));
  ST_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx.stream()));
  return absl::InvalidArgumentError(absl::StrCat("embedding: ids[", pos, "] = ", id, " is outside [0, ", vocab, ")"));
}

template <typename T>
__global__ void GatherKernel(const T* table, const int32_t* ids, int64_t tokens, int64_t d, T* out) {
  const int64_t n = tokens * d;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / d, j = i % d;
    out[i] = table[static_cast<int64_t>(ids[t]) * d + j];
  }
}

template <typename T>
__global__ void ScatterAddKernel(const int32_t* ids, const T* dout, int64_t tokens, int64_t d, float* dtable) {
  const int64_t n = tokens * d;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / d, j = i % d;
    atomicAdd(dtable + static_cast<int64_t>(ids[t]) * d + j, nn::Load(dout + i));
  }
}

}  // namespace

absl::Status EmbeddingForward(GpuContext& ctx, const Tensor& table, const Tensor& ids, Tensor* out) {
  ST_CHECK(out != nullptr);
  ST_RETURN_IF_ERROR(CheckEmbeddingForward(table, ids, *out));
  ST_RETURN_IF_ERROR(kernels::nn::ExpectTensor(table, kOp, "table", {-1, -1}, {DType::kF32, DType::kBF16}));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, table, "embedding table"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, ids, "embedding ids"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *out, "embedding out"));
  ST_RETURN_IF_ERROR(ctx.Activate());
  ST_RETURN_IF_ERROR(CheckIdsInRange(ctx, ids, table.dim(0)));
  const int64_t tokens = ids.numel(), d = table.dim(1);
  if (tokens * d == 0) return absl::OkStatus();
  const unsigned grid = nn::GridFor(tokens * d, 256);
  if (table.dtype() == DType::kF32) {
    GatherKernel<<<grid, 256, 0, ctx.stream()>>>(table.data<float>(), ids.data<int32_t>(), tokens, d,
                                                 out->data<float>());
  } else {
    GatherKernel<<<grid, 256, 0, ctx.stream()>>>(static_cast<const __nv_bfloat16*>(table.raw_data()),
                                                 ids.data<int32_t>(), tokens, d,
                                                 static_cast<__nv_bfloat16*>(out->raw_data()));
  }
  return CudaStatus(cudaGetLastError(), "embedding GatherKernel launch");
}

absl::Status EmbeddingBackward(GpuContext& ctx, const Tensor& ids, const Tensor& dout, Tensor* dtable) {
  ST_CHECK(dtable != nullptr);
  ST_RETURN_IF_ERROR(CheckEmbeddingBackward(ids, dout, *dtable));
  ST_RETURN_IF_ERROR(kernels::nn::ExpectTensor(dout, kOp, "dout", {-1, -1}, {DType::kF32, DType::kBF16}));
  ST_RETURN_IF_ERROR(kernels::nn::ExpectTensor(*dtable, kOp, "dtable", {-1, -1}, {DType::kF32}));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, ids, "embedding ids"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, dout, "embedding dout"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *dtable, "embedding dtable"));
  ST_RETURN_IF_ERROR(ctx.Activate());
  ST_RETURN_IF_ERROR(CheckIdsInRange(ctx, ids, dtable->dim(0)));
  const int64_t tokens = ids.numel(), d = dout.dim(1);
  if (tokens * d == 0) return absl::OkStatus();
  const unsigned grid = nn::GridFor(tokens * d, 256);
  if (dout.dtype() == DType::kF32) {
    ScatterAddKernel<<<grid, 256, 0, ctx.stream()>>>(ids.data<int32_t>(), dout.data<float>(), tokens, d,
                                                     dtable->data<float>());
  } else {
    ScatterAddKernel<<<grid, 256, 0, ctx.stream()>>>(
        ids.data<int32_t>(), static_cast<const __nv_bfloat16*>(dout.raw_data()), tokens, d, dtable->data<float>());
  }
  return CudaStatus(cudaGetLastError(), "embedding ScatterAddKernel launch");
}

}  // namespace sigmatune::kernels::cuda
