#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/linalg_util_cuda.h"

namespace sigmatune::kernels::cuda {
namespace {

constexpr size_t kScratchAlignment = 256;

// Sets *flag to 1 when any of the n entries is NaN or infinite (*flag must start at 0).
template <typename T>
__global__ void FlagNonFiniteKernel(const T* x, int64_t n, int* flag) {
  bool bad = false;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    bad |= !isfinite(x[i]);
  }
  if (bad) *flag = 1;  // benign race: every writer stores the same value
}

}  // namespace

CusolverParams::~CusolverParams() {
  if (params_ != nullptr) cusolverDnDestroyParams(params_);
}

absl::Status CusolverParams::Init() {
  ST_CHECK(params_ == nullptr);
  ST_CUSOLVER_RETURN_IF_ERROR(cusolverDnCreateParams(&params_));
  return absl::OkStatus();
}

int ScratchLayout::Add(size_t bytes) {
  offsets_.push_back(total_);
  total_ += (bytes + kScratchAlignment - 1) / kScratchAlignment * kScratchAlignment;
  return static_cast<int>(offsets_.size()) - 1;
}

absl::Status TransposeMatrix(GpuContext& ctx, DType dtype, int64_t rows, int64_t cols, const void* src, int64_t ld_src,
                             void* dst, int64_t ld_dst) {
  ST_CHECK(ld_src >= std::max<int64_t>(1, rows) && ld_dst >= std::max<int64_t>(1, cols))
      << "transpose " << rows << "x" << cols << " with ld_src " << ld_src << ", ld_dst " << ld_dst;
  if (rows == 0 || cols == 0) return absl::OkStatus();
  // C (cols x rows, ldc = ld_dst) = 1 * A^T + 0 * B, A = src (rows x cols, lda = ld_src). B is C
  // itself (cuBLAS's documented in-place form, ldb = ldc, transb = N); with beta = 0 it is not read.
  if (dtype == DType::kF32) {
    const float one = 1.0f, zero = 0.0f;
    ST_CUBLAS_RETURN_IF_ERROR(cublasSgeam_64(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, cols, rows, &one,
                                             static_cast<const float*>(src), ld_src, &zero, static_cast<float*>(dst),
                                             ld_dst, static_cast<float*>(dst), ld_dst));
  } else {
    ST_CHECK(dtype == DType::kF64) << DTypeName(dtype);
    const double one = 1.0, zero = 0.0;
    ST_CUBLAS_RETURN_IF_ERROR(cublasDgeam_64(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, cols, rows, &one,
                                             static_cast<const double*>(src), ld_src, &zero, static_cast<double*>(dst),
                                             ld_dst, static_cast<double*>(dst), ld_dst));
  }
  return absl::OkStatus();
}

absl::Status ExpectFiniteOnDevice(GpuContext& ctx, const Tensor& t, const char* what) {
  ST_CHECK(t.is_contiguous());
  const int64_t n = t.numel();
  if (n == 0) return absl::OkStatus();
  ST_RETURN_IF_ERROR(ctx.Activate());
  ST_ASSIGN_OR_RETURN(void* scratch, ctx.Workspace(sizeof(int)));
  int* flag = static_cast<int*>(scratch);
  ST_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(flag, 0, sizeof(int), ctx.stream()));
  constexpr int kThreads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1024));
  if (t.dtype() == DType::kF32) {
    FlagNonFiniteKernel<float><<<blocks, kThreads, 0, ctx.stream()>>>(t.data<float>(), n, flag);
  } else {
    FlagNonFiniteKernel<double><<<blocks, kThreads, 0, ctx.stream()>>>(t.data<double>(), n, flag);
  }
  ST_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  int host_flag = 0;
  ST_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(&host_flag, flag, sizeof(int), cudaMemcpyDeviceToHost, ctx.stream()));
  ST_RETURN_IF_ERROR(ctx.Synchronize());
  if (host_flag == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " has a non-finite entry (NaN or Inf); the decomposition needs finite input"));
}

absl::Status CheckSolverInfo(GpuContext& ctx, const std::vector<SolverInfo>& infos) {
  std::vector<int> host(infos.size(), 0);
  for (size_t i = 0; i < infos.size(); ++i) {
    ST_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(&host[i], infos[i].device_info, sizeof(int), cudaMemcpyDeviceToHost, ctx.stream()));
  }
  ST_RETURN_IF_ERROR(ctx.Synchronize());
  for (size_t i = 0; i < infos.size(); ++i) {
    const int info = host[i];
    if (info < 0) {
      return absl::InternalError(absl::StrCat(infos[i].routine, " rejected argument ", -info, " (devInfo = ", info,
                                              "); this is a bug in sigmatune"));
    }
    if (info > 0) {
      return absl::InternalError(absl::StrCat(infos[i].routine, " did not converge (devInfo = ", info,
                                              "); the input may be badly scaled or ill-conditioned"));
    }
  }
  return absl::OkStatus();
}

}  // namespace sigmatune::kernels::cuda
