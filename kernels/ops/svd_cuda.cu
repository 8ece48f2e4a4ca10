// cuSOLVER Svd. The row-major m x n buffer of A, read column-major, is the n x m matrix A^T, and
// A^T = U' S V'^T means A = V' S U'^T: the column-major U' (n x k) is the row-major vt [k, n].
//  - kQr (Xgesvd) needs rows >= cols. For n >= m it factors A^T directly and writes U' into vt and
//    V'^T (column-major k x m, ldvt = k = the row-major u [m, k]) into u: no transposes. For m > n it
//    transposes A into a column-major m x n copy with geam, factors that (A = U S V^T), and
//    transposes U and V^T into the row-major outputs.
//  - kJacobi (gesvdj, econ) takes any shape: it factors A^T, writes U' into vt and returns V' (not
//    V'^T) as a column-major m x k matrix, which one geam transposes into u.
#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/linalg_util.h"
#include "kernels/ops/linalg_util_cuda.h"
#include "kernels/ops/svd.h"

namespace sigmatune::kernels::cuda {
namespace {

// Owns a gesvdjInfo_t (default tolerance = machine epsilon, 100 sweeps, descending order).
class GesvdjParams {
 public:
  GesvdjParams() = default;
  GesvdjParams(const GesvdjParams&) = delete;
  GesvdjParams& operator=(const GesvdjParams&) = delete;
  ~GesvdjParams() {
    if (info_ != nullptr) cusolverDnDestroyGesvdjInfo(info_);
  }
  absl::Status Init() {
    ST_CUSOLVER_RETURN_IF_ERROR(cusolverDnCreateGesvdjInfo(&info_));
    return absl::OkStatus();
  }
  gesvdjInfo_t get() const { return info_; }

 private:
  gesvdjInfo_t info_ = nullptr;
};

absl::Status GesvdImpl(GpuContext& ctx, const Tensor& a, int64_t m, int64_t n, Tensor* u, Tensor* s, Tensor* vt) {
  const int64_t k = std::min(m, n);
  const DType dtype = a.dtype();
  const size_t elem = SizeOf(dtype);
  const cudaDataType_t type = CudaDataType(dtype);
  const bool direct = n >= m;  // A^T (n x m) already has rows >= cols
  // The matrix handed to gesvd: rows x cols, column-major, lda = rows.
  const int64_t rows = direct ? n : m, cols = direct ? m : n;
  CusolverParams params;
  ST_RETURN_IF_ERROR(params.Init());

  ScratchLayout layout;
  const int info_piece = layout.Add(sizeof(int));
  const int copy_piece = layout.Add(static_cast<size_t>(m * n) * elem);
  const int u_piece = layout.Add(direct ? 0 : static_cast<size_t>(m * k) * elem);
  const int vt_piece = layout.Add(direct ? 0 : static_cast<size_t>(k * n) * elem);
  // Where gesvd writes its U (rows x k, ldu = rows) and VT (k x cols, ldvt = k).
  void* solver_u = direct ? vt->raw_data() : nullptr;
  void* solver_vt = direct ? u->raw_data() : nullptr;
  size_t device_bytes = 0, host_bytes = 0;
  // The size query reads no matrix; the outputs stand in for the scratch pieces.
  ST_CUSOLVER_RETURN_IF_ERROR(cusolverDnXgesvd_bufferSize(
      ctx.cusolver(), params.get(), 'S', 'S', rows, cols, type, a.raw_data(), rows, type, s->raw_data(), type,
      vt->raw_data(), rows, type, u->raw_data(), k, type, &device_bytes, &host_bytes));
  const int work_piece = layout.Add(device_bytes);
  ST_ASSIGN_OR_RETURN(void* base, ctx.Workspace(layout.total_bytes()));
  int* info = layout.At<int>(base, info_piece);
  void* copy = layout.At<void>(base, copy_piece);
  if (!direct) {
    solver_u = layout.At<void>(base, u_piece);
    solver_vt = layout.At<void>(base, vt_piece);
  }
  void* work = layout.At<void>(base, work_piece);
  std::vector<char> host_work(host_bytes + 1);  // alive until CheckSolverInfo has synchronized

  if (direct) {
    ST_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(copy, a.raw_data(), a.nbytes(), cudaMemcpyDeviceToDevice, ctx.stream()));
  } else {
    // a is the column-major n x m matrix A^T; copy = A, column-major m x n.
    ST_RETURN_IF_ERROR(TransposeMatrix(ctx, dtype, n, m, a.raw_data(), n, copy, m));
  }
  ST_CUSOLVER_RETURN_IF_ERROR(cusolverDnXgesvd(ctx.cusolver(), params.get(), 'S', 'S', rows, cols, type, copy, rows,
                                               type, s->raw_data(), type, solver_u, rows, type, solver_vt, k, type,
                                               work, device_bytes, host_work.data(), host_bytes, info));
  if (!direct) {
    // A = U S V^T with U column-major m x k and V^T column-major k x n (k = n).
    ST_RETURN_IF_ERROR(TransposeMatrix(ctx, dtype, m, k, solver_u, m, u->raw_data(), k));
    ST_RETURN_IF_ERROR(TransposeMatrix(ctx, dtype, k, n, solver_vt, k, vt->raw_data(), n));
  }
  return CheckSolverInfo(ctx, {{info, "cusolverDnXgesvd"}});
}

// gesvdj wrappers, econ = 1, column-major rows x cols input (lda = rows), U rows x k (ldu = rows),
// V cols x k (ldv = cols).
cusolverStatus_t GesvdjBufferSize(cusolverDnHandle_t h, int rows, int cols, const float* a, const float* s,
                                  const float* u, const float* v, int* lwork, gesvdjInfo_t p) {
  return cusolverDnSgesvdj_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, 1, rows, cols, a, rows, s, u, rows, v, cols, lwork,
                                      p);
}
cusolverStatus_t GesvdjBufferSize(cusolverDnHandle_t h, int rows, int cols, const double* a, const double* s,
                                  const double* u, const double* v, int* lwork, gesvdjInfo_t p) {
  return cusolverDnDgesvdj_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, 1, rows, cols, a, rows, s, u, rows, v, cols, lwork,
                                      p);
}
cusolverStatus_t Gesvdj(cusolverDnHandle_t h, int rows, int cols, float* a, float* s, float* u, float* v, float* work,
                        int lwork, int* info, gesvdjInfo_t p) {
  return cusolverDnSgesvdj(h, CUSOLVER_EIG_MODE_VECTOR, 1, rows, cols, a, rows, s, u, rows, v, cols, work, lwork, info,
                           p);
}
cusolverStatus_t Gesvdj(cusolverDnHandle_t h, int rows, int cols, double* a, double* s, double* u, double* v,
                        double* work, int lwork, int* info, gesvdjInfo_t p) {
  return cusolverDnDgesvdj(h, CUSOLVER_EIG_MODE_VECTOR, 1, rows, cols, a, rows, s, u, rows, v, cols, work, lwork, info,
                           p);
}

template <typename T>
absl::Status GesvdjImpl(GpuContext& ctx, const Tensor& a, int64_t m, int64_t n, Tensor* u, Tensor* s, Tensor* vt) {
  const int64_t k = std::min(m, n);
  ST_RETURN_IF_ERROR(ExpectInt32Index(std::max(m, n), "svd dimension for gesvdj"));
  GesvdjParams params;
  ST_RETURN_IF_ERROR(params.Init());
  // gesvdj factors A^T: rows = n, cols = m; U' (n x k, ldu = n) is vt, V' (m x k, ldv = m) goes to scratch.
  const int rows = static_cast<int>(n), cols = static_cast<int>(m);
  int lwork = 0;
  ST_CUSOLVER_RETURN_IF_ERROR(GesvdjBufferSize(ctx.cusolver(), rows, cols, a.data<T>(), s->data<T>(), vt->data<T>(),
                                               u->data<T>(), &lwork, params.get()));
  ScratchLayout layout;
  const int info_piece = layout.Add(sizeof(int));
  const int copy_piece = layout.Add(static_cast<size_t>(m * n) * sizeof(T));
  const int v_piece = layout.Add(static_cast<size_t>(m * k) * sizeof(T));
  const int work_piece = layout.Add(static_cast<size_t>(lwork) * sizeof(T));
  ST_ASSIGN_OR_RETURN(void* base, ctx.Workspace(layout.total_bytes()));
  int* info = layout.At<int>(base, info_piece);
  T* copy = layout.At<T>(base, copy_piece);
  T* v = layout.At<T>(base, v_piece);
  T* work = layout.At<T>(base, work_piece);
  ST_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(copy, a.raw_data(), a.nbytes(), cudaMemcpyDeviceToDevice, ctx.stream()));
  ST_CUSOLVER_RETURN_IF_ERROR(
      Gesvdj(ctx.cusolver(), rows, cols, copy, s->data<T>(), vt->data<T>(), v, work, lwork, info, params.get()));
  // u (row-major m x k = column-major k x m) = V'^T.
  ST_RETURN_IF_ERROR(TransposeMatrix(ctx, a.dtype(), m, k, v, m, u->raw_data(), k));
  return CheckSolverInfo(ctx, {{info, DTypeOf<T>::value == DType::kF32 ? "cusolverDnSgesvdj" : "cusolverDnDgesvdj"}});
}

}  // namespace

absl::Status Svd(GpuContext& ctx, const Tensor& a, Tensor* u, Tensor* s, Tensor* vt, SvdSolver solver) {
  ST_CHECK(u != nullptr && s != nullptr && vt != nullptr);
  ST_ASSIGN_OR_RETURN(const int64_t k, CheckSvd(a, *u, *s, *vt));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, a, "svd input A"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *u, "svd output U"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *s, "svd output S"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *vt, "svd output Vt"));
  if (k == 0) return absl::OkStatus();
  ST_RETURN_IF_ERROR(ctx.Activate());
  ST_RETURN_IF_ERROR(ExpectFiniteOnDevice(ctx, a, "svd input A"));
  const int64_t m = a.dim(0), n = a.dim(1);
  if (solver == SvdSolver::kQr) return GesvdImpl(ctx, a, m, n, u, s, vt);
  if (a.dtype() == DType::kF32) return GesvdjImpl<float>(ctx, a, m, n, u, s, vt);
  return GesvdjImpl<double>(ctx, a, m, n, u, s, vt);
}

}  // namespace sigmatune::kernels::cuda
