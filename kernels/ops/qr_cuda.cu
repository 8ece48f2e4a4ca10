// cuSOLVER Qr, mirroring the CPU reference: geam transposes the row-major A into a column-major
// m x n copy (lda = m); geqrf leaves R in its upper triangle, which geam copies (transposed) into the
// row-major r before a small kernel zeroes r's strict lower triangle; orgqr turns the first k columns
// into Q, which geam transposes into the row-major q.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/linalg_util.h"
#include "kernels/ops/linalg_util_cuda.h"
#include "kernels/ops/qr.h"

namespace sigmatune::kernels::cuda {
namespace {

// r[i][j] = 0 for j < i in a contiguous row-major rows x cols matrix.
template <typename T>
__global__ void ZeroStrictLowerKernel(T* r, int64_t rows, int64_t cols) {
  const int64_t total = rows * cols;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    if (idx % cols < idx / cols) r[idx] = T(0);
  }
}

cusolverStatus_t GeqrfBufferSize(cusolverDnHandle_t h, int m, int n, float* a, int* lwork) {
  return cusolverDnSgeqrf_bufferSize(h, m, n, a, m, lwork);
}
cusolverStatus_t GeqrfBufferSize(cusolverDnHandle_t h, int m, int n, double* a, int* lwork) {
  return cusolverDnDgeqrf_bufferSize(h, m, n, a, m, lwork);
}
cusolverStatus_t Geqrf(cusolverDnHandle_t h, int m, int n, float* a, float* tau, float* work, int lwork, int* info) {
  return cusolverDnSgeqrf(h, m, n, a, m, tau, work, lwork, info);
}
cusolverStatus_t Geqrf(cusolverDnHandle_t h, int m, int n, double* a, double* tau, double* work, int lwork, int* info) {
  return cusolverDnDgeqrf(h, m, n, a, m, tau, work, lwork, info);
}
// Q (m x k, the first k columns of a, lda = m) from the k reflectors of geqrf.
cusolverStatus_t OrgqrBufferSize(cusolverDnHandle_t h, int m, int k, const float* a, const float* tau, int* lwork) {
  return cusolverDnSorgqr_bufferSize(h, m, k, k, a, m, tau, lwork);
}
cusolverStatus_t OrgqrBufferSize(cusolverDnHandle_t h, int m, int k, const double* a, const double* tau, int* lwork) {
  return cusolverDnDorgqr_bufferSize(h, m, k, k, a, m, tau, lwork);
}
cusolverStatus_t Orgqr(cusolverDnHandle_t h, int m, int k, float* a, const float* tau, float* work, int lwork,
                       int* info) {
  return cusolverDnSorgqr(h, m, k, k, a, m, tau, work, lwork, info);
}
cusolverStatus_t Orgqr(cusolverDnHandle_t h, int m, int k, double* a, const double* tau, double* work, int lwork,
                       int* info) {
  return cusolverDnDorgqr(h, m, k, k, a, m, tau, work, lwork, info);
}

template <typename T>
absl::Status QrImpl(GpuContext& ctx, const Tensor& a, int64_t m64, int64_t n64, Tensor* q, Tensor* r) {
  ST_RETURN_IF_ERROR(ExpectInt32Index(std::max(m64, n64), "the qr input dimension"));
  ST_RETURN_IF_ERROR(ExpectInt32Index(m64 * n64, "the qr input size m*n"));
  const int m = static_cast<int>(m64), n = static_cast<int>(n64), k = std::min(m, n);
  // The size queries read no matrix; the outputs stand in for the scratch pieces.
  int geqrf_lwork = 0, orgqr_lwork = 0;
  ST_CUSOLVER_RETURN_IF_ERROR(GeqrfBufferSize(ctx.cusolver(), m, n, q->data<T>(), &geqrf_lwork));
  ST_CUSOLVER_RETURN_IF_ERROR(OrgqrBufferSize(ctx.cusolver(), m, k, q->data<T>(), r->data<T>(), &orgqr_lwork));
  const int lwork = std::max({geqrf_lwork, orgqr_lwork, 1});
  ScratchLayout layout;
  const int info_piece = layout.Add(2 * sizeof(int));
  const int buf_piece = layout.Add(static_cast<size_t>(m64 * n64) * sizeof(T));
  const int tau_piece = layout.Add(static_cast<size_t>(k) * sizeof(T));
  const int work_piece = layout.Add(static_cast<size_t>(lwork) * sizeof(T));
  ST_ASSIGN_OR_RETURN(void* base, ctx.Workspace(layout.total_bytes()));
  int* info = layout.At<int>(base, info_piece);
  T* buf = layout.At<T>(base, buf_piece);
  T* tau = layout.At<T>(base, tau_piece);
  T* work = layout.At<T>(base, work_piece);
  const DType dtype = a.dtype();

  // a is the column-major n x m matrix A^T; buf = A, column-major m x n.
  ST_RETURN_IF_ERROR(TransposeMatrix(ctx, dtype, n, m, a.raw_data(), n, buf, m));
  ST_CUSOLVER_RETURN_IF_ERROR(Geqrf(ctx.cusolver(), m, n, buf, tau, work, lwork, info));
  // Rows 0..k-1 of buf (column-major k x n, ld m) hold R above the diagonal; r (row-major k x n) is
  // their transpose read column-major (n x k, ld n).
  ST_RETURN_IF_ERROR(TransposeMatrix(ctx, dtype, k, n, buf, m, r->raw_data(), n));
  constexpr int kThreads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((int64_t{k} * n + kThreads - 1) / kThreads, 1024));
  ZeroStrictLowerKernel<T><<<blocks, kThreads, 0, ctx.stream()>>>(r->data<T>(), k, n);
  ST_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  ST_CUSOLVER_RETURN_IF_ERROR(Orgqr(ctx.cusolver(), m, k, buf, tau, work, lwork, info + 1));
  // Q is column-major m x k (ld m); q (row-major m x k) is column-major k x m (ld k).
  ST_RETURN_IF_ERROR(TransposeMatrix(ctx, dtype, m, k, buf, m, q->raw_data(), k));
  const bool f32 = dtype == DType::kF32;
  return CheckSolverInfo(ctx, {{info, f32 ? "cusolverDnSgeqrf" : "cusolverDnDgeqrf"},
                               {info + 1, f32 ? "cusolverDnSorgqr" : "cusolverDnDorgqr"}});
}

}  // namespace

absl::Status Qr(GpuContext& ctx, const Tensor& a, Tensor* q, Tensor* r) {
  ST_CHECK(q != nullptr && r != nullptr);
  ST_ASSIGN_OR_RETURN(const int64_t k, CheckQr(a, *q, *r));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, a, "qr input A"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *q, "qr output Q"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *r, "qr output R"));
  if (k == 0) return absl::OkStatus();
  ST_RETURN_IF_ERROR(ctx.Activate());
  ST_RETURN_IF_ERROR(ExpectFiniteOnDevice(ctx, a, "qr input A"));
  if (a.dtype() == DType::kF32) return QrImpl<float>(ctx, a, a.dim(0), a.dim(1), q, r);
  return QrImpl<double>(ctx, a, a.dim(0), a.dim(1), q, r);
}

}  // namespace sigmatune::kernels::cuda
