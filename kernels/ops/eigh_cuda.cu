// cuSOLVER SymmetricEigen. As on the CPU, the row-major buffer of A read column-major is A^T, so
// cuSOLVER's UPPER fill mode reads our LOWER triangle. Every path factors a scratch copy of A
// (the solvers overwrite it with the eigenvectors as column-major columns), then copies the requested
// eigenvalues out and transposes the requested eigenvector columns into the row-major [n, k] output.
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/eigh.h"
#include "kernels/ops/linalg_util.h"
#include "kernels/ops/linalg_util_cuda.h"

namespace sigmatune::kernels::cuda {
namespace {

// Owns a syevjInfo_t (default tolerance = machine epsilon, 100 sweeps, ascending order).
class SyevjParams {
 public:
  SyevjParams() = default;
  SyevjParams(const SyevjParams&) = delete;
  SyevjParams& operator=(const SyevjParams&) = delete;
  ~SyevjParams() {
    if (info_ != nullptr) cusolverDnDestroySyevjInfo(info_);
  }
  absl::Status Init() {
    ST_CUSOLVER_RETURN_IF_ERROR(cusolverDnCreateSyevjInfo(&info_));
    return absl::OkStatus();
  }
  syevjInfo_t get() const { return info_; }

 private:
  syevjInfo_t info_ = nullptr;
};

absl::Status CheckDeviceOperands(GpuContext& ctx, const Tensor& a, const Tensor& eigenvalues,
                                 const Tensor& eigenvectors) {
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, a, "eigh input A"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, eigenvalues, "eigh output eigenvalues"));
  return ExpectOnDevice(ctx, eigenvectors, "eigh output eigenvectors");
}

// Eigenpairs begin..end-1 of the n x n matrix a (validated, on the device, n >= 1, end > begin).
absl::Status EighImpl(GpuContext& ctx, const Tensor& a, int64_t n, int64_t begin, int64_t end, EighSolver solver,
                      Tensor* eigenvalues, Tensor* eigenvectors) {
  const int64_t k = end - begin;
  const DType dtype = a.dtype();
  const size_t elem = SizeOf(dtype);
  const cudaDataType_t type = CudaDataType(dtype);
  const bool f32 = dtype == DType::kF32;
  const cusolverEigMode_t jobz = CUSOLVER_EIG_MODE_VECTOR;
  const cublasFillMode_t uplo = CUBLAS_FILL_MODE_UPPER;  // = the row-major lower triangle
  ST_RETURN_IF_ERROR(ctx.Activate());
  ST_RETURN_IF_ERROR(ExpectFiniteOnDevice(ctx, a, "eigh input A"));

  // The partial range only has a dedicated driver for divide and conquer (syevdx); it leaves the
  // eigenpairs in the first k columns. The full solvers leave eigenpair j in column j.
  const bool use_syevdx = solver == EighSolver::kDivideAndConquer && k < n;
  const int64_t first = use_syevdx ? 0 : begin;
  const char* routine = solver == EighSolver::kJacobi ? (f32 ? "cusolverDnSsyevj" : "cusolverDnDsyevj")
                                                      : (use_syevdx ? "cusolverDnXsyevdx" : "cusolverDnXsyevd");

  CusolverParams params;
  SyevjParams syevj;
  size_t device_bytes = 0, host_bytes = 0;
  int syevj_lwork = 0;
  int64_t found = 0;
  const int64_t il = begin + 1, iu = end;  // 1-based, inclusive
  double vl64 = 0, vu64 = 0;               // unused with range I, but must point at the matrix type
  float vl32 = 0, vu32 = 0;
  void* vl = f32 ? static_cast<void*>(&vl32) : static_cast<void*>(&vl64);
  void* vu = f32 ? static_cast<void*>(&vu32) : static_cast<void*>(&vu64);
  // The size queries do not read the matrices; the output pointers stand in for the scratch.
  if (solver == EighSolver::kJacobi) {
    ST_RETURN_IF_ERROR(ExpectInt32Index(n, "eigh dimension n for syevj"));
    ST_RETURN_IF_ERROR(syevj.Init());
    const int n32 = static_cast<int>(n);
    if (f32) {
      ST_CUSOLVER_RETURN_IF_ERROR(cusolverDnSsyevj_bufferSize(ctx.cusolver(), jobz, uplo, n32, a.data<float>(), n32,
                                                              eigenvalues->data<float>(), &syevj_lwork, syevj.get()));
    } else {
      ST_CUSOLVER_RETURN_IF_ERROR(cusolverDnDsyevj_bufferSize(ctx.cusolver(), jobz, uplo, n32, a.data<double>(), n32,
                                                              eigenvalues->data<double>(), &syevj_lwork, syevj.get()));
    }
    device_bytes = static_cast<size_t>(syevj_lwork) * elem;
  } else {
    ST_RETURN_IF_ERROR(params.Init());
    if (use_syevdx) {
      ST_CUSOLVER_RETURN_IF_ERROR(cusolverDnXsyevdx_bufferSize(
          ctx.cusolver(), params.get(), jobz, CUSOLVER_EIG_RANGE_I, uplo, n, type, a.raw_data(), n, vl, vu, il, iu,
          &found, type, eigenvalues->raw_data(), type, &device_bytes, &host_bytes));
    } else {
      ST_CUSOLVER_RETURN_IF_ERROR(cusolverDnXsyevd_bufferSize(ctx.cusolver(), params.get(), jobz, uplo, n, type,
                                                              a.raw_data(), n, type, eigenvalues->raw_data(), type,
                                                              &device_bytes, &host_bytes));
    }
  }

  ScratchLayout layout;
  const int info_piece = layout.Add(sizeof(int));
  const int vectors_piece = layout.Add(static_cast<size_t>(n * n) * elem);
  const int values_piece = layout.Add(static_cast<size_t>(n) * elem);
  const int work_piece = layout.Add(device_bytes);
  ST_ASSIGN_OR_RETURN(void* base, ctx.Workspace(layout.total_bytes()));
  int* info = layout.At<int>(base, info_piece);
  char* vectors = layout.At<char>(base, vectors_piece);
  char* values = layout.At<char>(base, values_piece);
  void* work = layout.At<void>(base, work_piece);
  std::vector<char> host_work(host_bytes + 1);  // must outlive the solve: CheckSolverInfo synchronizes below

  ST_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(vectors, a.raw_data(), a.nbytes(), cudaMemcpyDeviceToDevice, ctx.stream()));
  if (solver == EighSolver::kJacobi) {
    const int n32 = static_cast<int>(n);
    if (f32) {
      ST_CUSOLVER_RETURN_IF_ERROR(cusolverDnSsyevj(ctx.cusolver(), jobz, uplo, n32, reinterpret_cast<float*>(vectors),
                                                   n32, reinterpret_cast<float*>(values), static_cast<float*>(work),
                                                   syevj_lwork, info, syevj.get()));
    } else {
      ST_CUSOLVER_RETURN_IF_ERROR(cusolverDnDsyevj(ctx.cusolver(), jobz, uplo, n32, reinterpret_cast<double*>(vectors),
                                                   n32, reinterpret_cast<double*>(values), static_cast<double*>(work),
                                                   syevj_lwork, info, syevj.get()));
    }
  } else if (use_syevdx) {
    ST_CUSOLVER_RETURN_IF_ERROR(cusolverDnXsyevdx(ctx.cusolver(), params.get(), jobz, CUSOLVER_EIG_RANGE_I, uplo, n,
                                                  type, vectors, n, vl, vu, il, iu, &found, type, values, type, work,
                                                  device_bytes, host_work.data(), host_bytes, info));
  } else {
    ST_CUSOLVER_RETURN_IF_ERROR(cusolverDnXsyevd(ctx.cusolver(), params.get(), jobz, uplo, n, type, vectors, n, type,
                                                 values, type, work, device_bytes, host_work.data(), host_bytes, info));
  }
  // Eigenvalues first..first+k-1 and the matching columns of the column-major n x n result.
  ST_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(eigenvalues->raw_data(), values + first * elem, static_cast<size_t>(k) * elem,
                                          cudaMemcpyDeviceToDevice, ctx.stream()));
  ST_RETURN_IF_ERROR(TransposeMatrix(ctx, dtype, n, k, vectors + first * n * elem, n, eigenvectors->raw_data(), k));
  ST_RETURN_IF_ERROR(CheckSolverInfo(ctx, {{info, routine}}));
  if (use_syevdx && found != k) {
    return absl::InternalError(
        absl::StrCat("cusolverDnXsyevdx returned ", found, " eigenpairs for the index range [", begin, ", ", end, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SymmetricEigen(GpuContext& ctx, const Tensor& a, Tensor* eigenvalues, Tensor* eigenvectors,
                            EighSolver solver) {
  ST_CHECK(eigenvalues != nullptr && eigenvectors != nullptr);
  const int64_t n = a.defined() && a.rank() == 2 ? a.dim(0) : 0;
  ST_RETURN_IF_ERROR(CheckSymmetricEigen(a, 0, n, *eigenvalues, *eigenvectors).status());
  ST_RETURN_IF_ERROR(CheckDeviceOperands(ctx, a, *eigenvalues, *eigenvectors));
  if (n == 0) return absl::OkStatus();
  return EighImpl(ctx, a, n, 0, n, solver, eigenvalues, eigenvectors);
}

absl::Status SymmetricEigenRange(GpuContext& ctx, const Tensor& a, int64_t begin, int64_t end, Tensor* eigenvalues,
                                 Tensor* eigenvectors, EighSolver solver) {
  ST_CHECK(eigenvalues != nullptr && eigenvectors != nullptr);
  ST_ASSIGN_OR_RETURN(const int64_t n, CheckSymmetricEigen(a, begin, end, *eigenvalues, *eigenvectors));
  ST_RETURN_IF_ERROR(CheckDeviceOperands(ctx, a, *eigenvalues, *eigenvectors));
  if (begin == end) return absl::OkStatus();
  return EighImpl(ctx, a, n, begin, end, solver, eigenvalues, eigenvectors);
}

}  // namespace sigmatune::kernels::cuda
