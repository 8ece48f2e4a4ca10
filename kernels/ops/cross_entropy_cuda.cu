#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/cross_entropy.h"
#include "kernels/ops/matmul.h"
#include "kernels/ops/nn_cuda_util.h"
#include "kernels/ops/nn_util.h"

namespace sigmatune::kernels::cuda {
namespace {

constexpr char kOp[] = "cross_entropy";
constexpr int kThreads = 256;

template <typename T>
__device__ float RowLse(const T* row, int64_t vocab, float* scratch) {
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) mx = fmaxf(mx, nn::Load(row + j));
  mx = nn::BlockMax(mx, scratch);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) sum += expf(nn::Load(row + j) - mx);
  sum = nn::BlockSum(sum, scratch);
  return mx + logf(sum);
}

// One block per row: row_loss[t] = lse - logit[target] (0 for ignored rows).
template <typename T>
__global__ void RowLossKernel(const T* logits, const int32_t* targets, int64_t vocab, int32_t ignore_index,
                              float* row_loss) {
  __shared__ float scratch[32];
  const int64_t t = blockIdx.x;
  const int32_t target = targets[t];
  if (target == ignore_index) {
    if (threadIdx.x == 0) row_loss[t] = 0.0f;
    return;
  }
  const T* row = logits + t * vocab;
  const float lse = RowLse(row, vocab, scratch);
  if (threadIdx.x == 0) row_loss[t] = lse - nn::Load(row + target);
}

// One block per row: d logits = scale * (softmax - onehot), zero for ignored rows. `in` may be `out`.
template <typename In, typename Out>
__global__ void GradKernel(const In* logits, const int32_t* targets, int64_t vocab, int32_t ignore_index, float scale,
                           Out* dlogits) {
  __shared__ float scratch[32];
  const int64_t t = blockIdx.x;
  const int32_t target = targets[t];
  const In* row = logits + t * vocab;
  Out* drow = dlogits + t * vocab;
  if (target == ignore_index) {
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) nn::Store(drow + j, 0.0f);
    return;
  }
  const float lse = RowLse(row, vocab, scratch);
  __syncthreads();  // every thread has read the row before any (in-place) write
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float p = expf(nn::Load(row + j) - lse);
    nn::Store(drow + j, scale * (p - (j == target ? 1.0f : 0.0f)));
  }
}

// Copies the targets to the host and checks them there (one synchronisation).
absl::StatusOr<std::vector<int32_t>> HostTargets(GpuContext& ctx, const Tensor& targets, int64_t vocab,
                                                 int32_t ignore_index) {
  std::vector<int32_t> host(targets.numel());
  if (!host.empty()) {
    ST_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host.data(), targets.raw_data(), host.size() * sizeof(int32_t),
                                            cudaMemcpyDeviceToHost, ctx.stream()));
    ST_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx.stream()));
  }
  for (size_t t = 0; t < host.size(); ++t) {
    if (host[t] != ignore_index && (host[t] < 0 || host[t] >= vocab)) {
      return absl::InvalidArgumentError(absl::StrCat("cross_entropy: targets[", t, "] = ", host[t], " is outside [0, ",
                                                     vocab, ") and is not ignore_index ", ignore_index));
    }
  }
  return host;
}

absl::StatusOr<CrossEntropyStats> SumOnHost(GpuContext& ctx, const float* row_loss_dev,
                                            const std::vector<int32_t>& targets, int32_t ignore_index) {
  std::vector<float> row_loss(targets.size());
  if (!row_loss.empty()) {
    ST_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(row_loss.data(), row_loss_dev, row_loss.size() * sizeof(float),
                                            cudaMemcpyDeviceToHost, ctx.stream()));
  }
  ST_RETURN_IF_ERROR(ctx.Synchronize());
  CrossEntropyStats stats;
  for (size_t t = 0; t < targets.size(); ++t) {
    if (targets[t] == ignore_index) continue;
    stats.loss_sum += row_loss[t];
    ++stats.count;
  }
  stats.loss = stats.count > 0 ? stats.loss_sum / stats.count : 0.0;
  return stats;
}

template <typename T>
const T* In(const Tensor& t) {
  return static_cast<const T*>(t.raw_data());
}

void LaunchRowLoss(GpuContext& ctx, const Tensor& logits, const int32_t* targets, int64_t rows, int32_t ignore_index,
                   float* row_loss) {
  const int64_t vocab = logits.dim(1);
  if (logits.dtype() == DType::kF32) {
    RowLossKernel<<<static_cast<unsigned>(rows), kThreads, 0, ctx.stream()>>>(In<float>(logits), targets, vocab,
                                                                              ignore_index, row_loss);
  } else {
    RowLossKernel<<<static_cast<unsigned>(rows), kThreads, 0, ctx.stream()>>>(In<__nv_bfloat16>(logits), targets,
                                                                              vocab, ignore_index, row_loss);
  }
}

absl::Status ExpectAllOnDevice(GpuContext& ctx, std::initializer_list<std::pair<const Tensor*, const char*>> ts) {
  for (const auto& [t, what] : ts) {
    if (t != nullptr) ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *t, what));
  }
  return ctx.Activate();
}

absl::Status CheckCudaLmHead(const Tensor& hidden, const Tensor& weight) {
  if ((hidden.dtype() != DType::kF32 && hidden.dtype() != DType::kBF16) || hidden.dtype() != weight.dtype()) {
    return absl::InvalidArgumentError(absl::StrCat("cuda cross_entropy: hidden and lm_head weight must both be f32 or "
                                                   "both bf16, got ",
                                                   DTypeName(hidden.dtype()), " and ", DTypeName(weight.dtype())));
  }
  if (hidden.dim(0) > INT_MAX) return absl::InvalidArgumentError("cuda cross_entropy: more than 2^31-1 tokens");
  return absl::OkStatus();
}

// Carves the chunk buffers out of the workspace: f32 logits [chunk, vocab], an optional bf16 copy,
// and per-token losses [tokens].
struct Scratch {
  float* logits;
  __nv_bfloat16* logits16;
  float* row_loss;
};
absl::StatusOr<Scratch> GetScratch(GpuContext& ctx, int64_t chunk, int64_t vocab, int64_t tokens, bool bf16) {
  const size_t a = static_cast<size_t>(chunk * vocab) * sizeof(float);
  const size_t b = bf16 ? (static_cast<size_t>(chunk * vocab) * sizeof(__nv_bfloat16) + 255) / 256 * 256 : 0;
  const size_t a_aligned = (a + 255) / 256 * 256;
  ST_ASSIGN_OR_RETURN(void* base, ctx.Workspace(a_aligned + b + static_cast<size_t>(tokens) * sizeof(float) + 256));
  char* p = static_cast<char*>(base);
  return Scratch{reinterpret_cast<float*>(p), bf16 ? reinterpret_cast<__nv_bfloat16*>(p + a_aligned) : nullptr,
                 reinterpret_cast<float*>(p + a_aligned + b)};
}

}  // namespace

absl::StatusOr<CrossEntropyStats> CrossEntropyForward(GpuContext& ctx, const Tensor& logits, const Tensor& targets,
                                                      int32_t ignore_index) {
  ST_RETURN_IF_ERROR(CheckCrossEntropy(logits, targets));
  ST_RETURN_IF_ERROR(kernels::nn::ExpectTensor(logits, kOp, "logits", {-1, -1}, {DType::kF32, DType::kBF16}));
  ST_RETURN_IF_ERROR(ExpectAllOnDevice(ctx, {{&logits, "cross_entropy logits"}, {&targets, "cross_entropy targets"}}));
  ST_ASSIGN_OR_RETURN(const std::vector<int32_t> host_targets, HostTargets(ctx, targets, logits.dim(1), ignore_index));
  const int64_t tokens = logits.dim(0);
  if (tokens == 0) return CrossEntropyStats{};
  ST_ASSIGN_OR_RETURN(void* scratch, ctx.Workspace(static_cast<size_t>(tokens) * sizeof(float)));
  float* row_loss = static_cast<float*>(scratch);
  LaunchRowLoss(ctx, logits, targets.data<int32_t>(), tokens, ignore_index, row_loss);
  ST_RETURN_IF_ERROR(CudaStatus(cudaGetLastError(), "cross_entropy RowLossKernel launch"));
  return SumOnHost(ctx, row_loss, host_targets, ignore_index);
}

absl::Status CrossEntropyBackward(GpuContext& ctx, const Tensor& logits, const Tensor& targets, int32_t ignore_index,
                                  double grad_scale, Tensor* dlogits) {
  ST_CHECK(dlogits != nullptr);
  ST_RETURN_IF_ERROR(CheckCrossEntropy(logits, targets));
  ST_RETURN_IF_ERROR(kernels::nn::ExpectTensor(logits, kOp, "logits", {-1, -1}, {DType::kF32, DType::kBF16}));
  ST_RETURN_IF_ERROR(kernels::nn::ExpectTensor(*dlogits, kOp, "dlogits", logits.shape(), {logits.dtype()}));
  ST_RETURN_IF_ERROR(ExpectAllOnDevice(
      ctx, {{&logits, "cross_entropy logits"}, {&targets, "cross_entropy targets"}, {dlogits, "cross_entropy dlogits"}}));
  ST_RETURN_IF_ERROR(HostTargets(ctx, targets, logits.dim(1), ignore_index).status());
  const int64_t tokens = logits.dim(0), vocab = logits.dim(1);
  if (tokens == 0) return absl::OkStatus();
  const float scale = static_cast<float>(grad_scale);
  if (logits.dtype() == DType::kF32) {
    GradKernel<<<static_cast<unsigned>(tokens), kThreads, 0, ctx.stream()>>>(
        In<float>(logits), targets.data<int32_t>(), vocab, ignore_index, scale, dlogits->data<float>());
  } else {
    GradKernel<<<static_cast<unsigned>(tokens), kThreads, 0, ctx.stream()>>>(
        In<__nv_bfloat16>(logits), targets.data<int32_t>(), vocab, ignore_index, scale,
        static_cast<__nv_bfloat16*>(dlogits->raw_data()));
  }
  return CudaStatus(cudaGetLastError(), "cross_entropy GradKernel launch");
}

absl::StatusOr<CrossEntropyStats> LmHeadCrossEntropyForward(GpuContext& ctx, const Tensor& hidden,
                                                            const Tensor& weight, const Tensor& targets,
                                                            const CrossEntropyOptions& options,
                                                            Tensor* dhidden_unit) {
  ST_RETURN_IF_ERROR(CheckLmHeadCrossEntropy(hidden, weight, targets, options));
  ST_RETURN_IF_ERROR(CheckCudaLmHead(hidden, weight));
  if (dhidden_unit != nullptr) {
    ST_RETURN_IF_ERROR(kernels::nn::ExpectTensor(*dhidden_unit, kOp, "dhidden_unit", hidden.shape(),
                                                 {DType::kF32, hidden.dtype()}));
  }
  ST_RETURN_IF_ERROR(ExpectAllOnDevice(ctx, {{&hidden, "cross_entropy hidden"},
                                             {&weight, "cross_entropy lm_head weight"},
                                             {&targets, "cross_entropy targets"},
                                             {dhidden_unit, "cross_entropy dhidden_unit"}}));
  const int64_t tokens = hidden.dim(0), vocab = weight.dim(0);
  ST_ASSIGN_OR_RETURN(const std::vector<int32_t> host_targets,
                      HostTargets(ctx, targets, vocab, options.ignore_index));
  if (tokens == 0) return CrossEntropyStats{};
  const bool bf16 = dhidden_unit != nullptr && weight.dtype() == DType::kBF16;
  const int64_t chunk = std::min(options.chunk_tokens, tokens);
  ST_ASSIGN_OR_RETURN(const Scratch s, GetScratch(ctx, chunk, vocab, tokens, bf16));
  const Device dev = Device::Cuda(ctx.ordinal());
  for (int64_t t0 = 0; t0 < tokens; t0 += chunk) {
    const int64_t rows = std::min(chunk, tokens - t0);
    Tensor logits = Tensor::Wrap(s.logits, {rows, vocab}, DType::kF32, dev);
    ST_RETURN_IF_ERROR(
        Matmul(ctx, hidden.Slice(0, t0, t0 + rows), Transpose::kNo, weight, Transpose::kYes, 1.0, 0.0, &logits));
    LaunchRowLoss(ctx, logits, targets.data<int32_t>() + t0, rows, options.ignore_index, s.row_loss + t0);
    ST_RETURN_IF_ERROR(CudaStatus(cudaGetLastError(), "cross_entropy RowLossKernel launch"));
    if (dhidden_unit == nullptr) continue;
    // The chunk's d logits for grad_scale 1 (after the loss kernel has read the logits), then its
    // rows of dhidden_unit.
    Tensor grad = bf16 ? Tensor::Wrap(s.logits16, {rows, vocab}, DType::kBF16, dev) : logits;
    if (bf16) {
      GradKernel<<<static_cast<unsigned>(rows), kThreads, 0, ctx.stream()>>>(
          s.logits, targets.data<int32_t>() + t0, vocab, options.ignore_index, 1.0f, s.logits16);
    } else {
      GradKernel<<<static_cast<unsigned>(rows), kThreads, 0, ctx.stream()>>>(
          s.logits, targets.data<int32_t>() + t0, vocab, options.ignore_index, 1.0f, s.logits);
    }
    ST_RETURN_IF_ERROR(CudaStatus(cudaGetLastError(), "cross_entropy GradKernel launch"));
    Tensor dh = dhidden_unit->Slice(0, t0, t0 + rows);
    ST_RETURN_IF_ERROR(Matmul(ctx, grad, Transpose::kNo, weight, Transpose::kNo, 1.0, 0.0, &dh));
  }
  return SumOnHost(ctx, s.row_loss, host_targets, options.ignore_index);
}

absl::Status LmHeadCrossEntropyBackward(GpuContext& ctx, const Tensor& hidden, const Tensor& weight,
                                        const Tensor& targets, const CrossEntropyOptions& options,
                                        double grad_scale, Tensor* dhidden, Tensor* dweight) {
  ST_CHECK(dhidden != nullptr);
  ST_RETURN_IF_ERROR(CheckLmHeadCrossEntropy(hidden, weight, targets, options));
  ST_RETURN_IF_ERROR(CheckCudaLmHead(hidden, weight));
  ST_RETURN_IF_ERROR(
      kernels::nn::ExpectTensor(*dhidden, kOp, "dhidden", hidden.shape(), {DType::kF32, hidden.dtype()}));
  if (dweight != nullptr) {
    ST_RETURN_IF_ERROR(kernels::nn::ExpectTensor(*dweight, kOp, "dweight", weight.shape(), {DType::kF32}));
  }
  ST_RETURN_IF_ERROR(ExpectAllOnDevice(ctx, {{&hidden, "cross_entropy hidden"},
                                             {&weight, "cross_entropy lm_head weight"},
                                             {&targets, "cross_entropy targets"},
                                             {dhidden, "cross_entropy dhidden"},
                                             {dweight, "cross_entropy dweight"}}));
  const int64_t tokens = hidden.dim(0), vocab = weight.dim(0);
  ST_RETURN_IF_ERROR(HostTargets(ctx, targets, vocab, options.ignore_index).status());
  if (tokens == 0) return absl::OkStatus();
  const bool bf16 = weight.dtype() == DType::kBF16;
  const int64_t chunk = std::min(options.chunk_tokens, tokens);
  ST_ASSIGN_OR_RETURN(const Scratch s, GetScratch(ctx, chunk, vocab, tokens, bf16));
  const Device dev = Device::Cuda(ctx.ordinal());
  const float scale = static_cast<float>(grad_scale);
  for (int64_t t0 = 0; t0 < tokens; t0 += chunk) {
    const int64_t rows = std::min(chunk, tokens - t0);
    const Tensor h = hidden.Slice(0, t0, t0 + rows);
    Tensor logits = Tensor::Wrap(s.logits, {rows, vocab}, DType::kF32, dev);
    ST_RETURN_IF_ERROR(Matmul(ctx, h, Transpose::kNo, weight, Transpose::kYes, 1.0, 0.0, &logits));
    Tensor grad = bf16 ? Tensor::Wrap(s.logits16, {rows, vocab}, DType::kBF16, dev) : logits;
    if (bf16) {
      GradKernel<<<static_cast<unsigned>(rows), kThreads, 0, ctx.stream()>>>(
          s.logits, targets.data<int32_t>() + t0, vocab, options.ignore_index, scale, s.logits16);
    } else {
      GradKernel<<<static_cast<unsigned>(rows), kThreads, 0, ctx.stream()>>>(
          s.logits, targets.data<int32_t>() + t0, vocab, options.ignore_index, scale, s.logits);
    }
    ST_RETURN_IF_ERROR(CudaStatus(cudaGetLastError(), "cross_entropy GradKernel launch"));
    Tensor dh = dhidden->Slice(0, t0, t0 + rows);
    ST_RETURN_IF_ERROR(Matmul(ctx, grad, Transpose::kNo, weight, Transpose::kNo, 1.0, 0.0, &dh));
    if (dweight != nullptr) {
      ST_RETURN_IF_ERROR(Matmul(ctx, grad, Transpose::kYes, h, Transpose::kNo, 1.0, 1.0, dweight));
    }
  }
  return absl::OkStatus();
}

}  // namespace sigmatune::kernels::cuda
