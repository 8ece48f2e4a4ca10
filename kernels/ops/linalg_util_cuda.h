// CUDA helpers shared by the dense linear-algebra ops (eigh, svd, qr): cuSOLVER parameter objects,
// device scratch carved from GpuContext::Workspace(), transposes with cublas<t>geam, the devInfo
// check, and a finiteness check of an input on the device.
//
// The CUDA half of kernel_op(name = "linalg_util"): implemented in linalg_util_cuda.cu. Only code
// built where CUDA was found includes it (it needs the CUDA headers; a .cc must guard the include
// with `#if SIGMATUNE_WITH_CUDA`).
// Layout vocabulary: cuBLAS/cuSOLVER are column-major, so a contiguous row-major r x c tensor *is*
// the column-major c x r matrix of its transpose (leading dimension c).
#ifndef SIGMATUNE_KERNELS_OPS_LINALG_UTIL_CUDA_H_
#define SIGMATUNE_KERNELS_OPS_LINALG_UTIL_CUDA_H_

#include <cusolverDn.h>
#include <library_types.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/tensor.h"

namespace sigmatune::kernels::cuda {

// Owns a cusolverDnParams_t (default algorithms) for the 64-bit generic API.
class CusolverParams {
 public:
  CusolverParams() = default;
  CusolverParams(const CusolverParams&) = delete;
  CusolverParams& operator=(const CusolverParams&) = delete;
  ~CusolverParams();
  absl::Status Init();
  cusolverDnParams_t get() const { return params_; }

 private:
  cusolverDnParams_t params_ = nullptr;
};

// Back-to-back, 256-byte aligned pieces of one device scratch block:
//   ScratchLayout layout;
//   const int info = layout.Add(2 * sizeof(int)), copy = layout.Add(a.nbytes());
//   ST_ASSIGN_OR_RETURN(void* base, ctx.Workspace(layout.total_bytes()));
//   int* d_info = layout.At<int>(base, info);
class ScratchLayout {
 public:
  // Reserves `bytes` (0 allowed) and returns the piece's index.
  int Add(size_t bytes);
  size_t total_bytes() const { return total_ == 0 ? 1 : total_; }
  template <typename T>
  T* At(void* base, int index) const {
    return reinterpret_cast<T*>(static_cast<char*>(base) + offsets_[index]);
  }

 private:
  std::vector<size_t> offsets_;
  size_t total_ = 0;
};

// dst = src^T on ctx.stream(): src is a column-major rows x cols matrix with leading dimension
// ld_src (>= rows); dst the column-major cols x rows matrix with leading dimension ld_dst (>= cols).
// In row-major terms: src is a cols x rows matrix with row stride ld_src. No aliasing.
absl::Status TransposeMatrix(GpuContext& ctx, DType dtype, int64_t rows, int64_t cols, const void* src, int64_t ld_src,
                             void* dst, int64_t ld_dst);

// InvalidArgument naming `what` when the contiguous f32/f64 device tensor `t` holds a NaN or an
// infinity. Uses a few bytes of ctx.Workspace() and synchronizes the stream.
absl::Status ExpectFiniteOnDevice(GpuContext& ctx, const Tensor& t, const char* what);

// Copies the devInfo integers of the solver calls just enqueued back to the host (synchronizing the
// stream) and turns the first nonzero one into an InternalError naming its routine: info < 0 names the
// argument the routine rejected (a bug in sigmatune), info > 0 says that it did not converge.
struct SolverInfo {
  const int* device_info;  // one int on the device
  const char* routine;     // e.g. "cusolverDnXsyevd"
};
absl::Status CheckSolverInfo(GpuContext& ctx, const std::vector<SolverInfo>& infos);

}  // namespace sigmatune::kernels::cuda

#endif  // SIGMATUNE_KERNELS_OPS_LINALG_UTIL_CUDA_H_
