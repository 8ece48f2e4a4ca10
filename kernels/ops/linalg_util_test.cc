#include "kernels/ops/linalg_util.h"

#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/gpu.h"
#include "kernels/testing/random.h"

#if SIGMATUNE_WITH_CUDA
#include "kernels/ops/linalg_util_cuda.h"
#endif

namespace sigmatune::kernels {
namespace {

using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::Tolerance;

TEST(LinalgUtilTest, WorkLengthSurvivesFloatRoundingOfTheQuery) {
  // ssyevd at n = 4096: the documented minimum is not a float; the query rounds it down.
  const int64_t minimum = SyevdMinWork(4096);
  ASSERT_EQ(minimum, 33579009);
  const float query = static_cast<float>(minimum);
  ASSERT_LT(static_cast<double>(query), static_cast<double>(minimum));  // the LAPACKE pitfall
  EXPECT_GE(LapackWorkLength(query, minimum), minimum);
  // Without the floor, the slack alone still covers float rounding (relative error <= 2^-24).
  EXPECT_GE(LapackWorkLength(query, 0), minimum);
  // A larger (optimal) query wins over the minimum; garbage queries fall back to the minimum.
  EXPECT_GE(LapackWorkLength(5e7, minimum), 50000000);
  EXPECT_EQ(LapackWorkLength(-1.0, 17), 17);
  EXPECT_EQ(LapackWorkLength(NAN, 17), 17);
  EXPECT_EQ(LapackWorkLength(0.0, 0), 1);
}

TEST(LinalgUtilTest, DocumentedMinimumWorkspaces) {
  EXPECT_EQ(SyevdMinWork(1), 1);
  EXPECT_EQ(SyevdMinWork(7), 1 + 42 + 98);
  EXPECT_EQ(SyevdMinIwork(7), 38);
  EXPECT_EQ(SyevrMinWork(7), 182);
  EXPECT_EQ(SyevrMinIwork(0), 1);
  // gesdd jobz 'S', k = 5, K = 7: max(3*5 + max(7, 100 + 20), 100 + 30 + 7).
  EXPECT_EQ(GesddMinWork(7, 5), 137);
  EXPECT_EQ(GesddMinWork(5, 7), 137);
  EXPECT_EQ(GesddIwork(7, 5), 40);
}

TEST(LinalgUtilTest, TransposeCopyAcrossCacheBlocks) {
  const int64_t rows = 37, cols = 45, ld_src = 50, ld_dst = 40;
  std::vector<double> src(rows * ld_src), dst(cols * ld_dst, -1.0);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<double>(i);
  TransposeCopy(src.data(), rows, cols, ld_src, dst.data(), ld_dst);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) ASSERT_EQ(dst[j * ld_dst + i], src[i * ld_src + j]) << i << "," << j;
  }
  EXPECT_EQ(dst[ld_dst - 1], -1.0);  // padding untouched
}

TEST(LinalgUtilTest, TransposeSquareInPlace) {
  for (int64_t n : {1, 2, 31, 33, 70}) {
    std::vector<float> a(n * n);
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i);
    TransposeSquareInPlace(a.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) ASSERT_EQ(a[i * n + j], static_cast<float>(j * n + i)) << n;
    }
  }
}

TEST(LinalgUtilTest, ValidationMessagesNameTheOperand) {
  absl::Status s = ExpectVector(Tensor::Zeros({3, 1}, DType::kF32), 3, DType::kF32, "op output S");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("op output S must be a contiguous f32[3] vector"), std::string::npos) << s;
  EXPECT_TRUE(ExpectVector(Tensor::Zeros({3}, DType::kF64), 3, DType::kF64, "x").ok());
  s = ExpectFloatMatrixInput(Tensor::Zeros({2, 2}, DType::kI32), "op input A");
  EXPECT_NE(s.message().find("op input A must be f32 or f64, got i32"), std::string::npos) << s;
  s = ExpectFloatMatrixInput(Tensor::Zeros({2, 3}, DType::kF32).Transposed(), "op input A");
  EXPECT_NE(s.message().find("op input A must be contiguous"), std::string::npos) << s;
  Tensor t = Tensor::Zeros({2, 3}, DType::kF32);
  EXPECT_TRUE(ExpectFiniteOnCpu(t, "x").ok());
  t.at<float>({1, 2}) = -INFINITY;
  s = ExpectFiniteOnCpu(t, "op input A");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("op input A has a non-finite entry -inf at (1, 2)"), std::string::npos) << s;
  EXPECT_TRUE(ExpectInt32Index(2147483647, "n").ok());
  s = ExpectInt32Index(2147483648LL, "the workspace");
  EXPECT_NE(s.message().find("the workspace is 2147483648"), std::string::npos) << s;
  EXPECT_TRUE(LapackStatus(0, "x").ok());
  EXPECT_NE(LapackStatus(-4, "LAPACK dsyevd").message().find("rejected argument 4"), std::string::npos);
  EXPECT_NE(LapackStatus(3, "LAPACK dsyevd").message().find("did not converge"), std::string::npos);
  EXPECT_EQ(LapackStatus(3, "LAPACK dsyevd").code(), absl::StatusCode::kInternal);
}

#if SIGMATUNE_WITH_CUDA
TEST(LinalgUtilCudaTest, TransposeMatrixMatchesTheHostTranspose) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  for (DType dt : {DType::kF32, DType::kF64}) {
    for (int64_t rows : {1, 7, 111}) {
      for (int64_t cols : {1, 4097}) {
        // Row-major rows x cols host matrix = column-major cols x rows on the device.
        const Tensor host = RandomNormal({rows, cols}, dt, 3);
        auto src = ctx->ToDevice(host);
        auto dst = ctx->Allocate({cols, rows}, dt);
        ASSERT_TRUE(src.ok() && dst.ok());
        ASSERT_TRUE(cuda::TransposeMatrix(*ctx, dt, cols, rows, src->raw_data(), cols, dst->raw_data(), rows).ok());
        auto back = ctx->ToHost(*dst);
        ASSERT_TRUE(back.ok()) << back.status();
        EXPECT_TRUE(AllClose(*back, host.Transposed().Contiguous(), Tolerance{0, 0}));
      }
    }
  }
}

TEST(LinalgUtilCudaTest, FiniteCheckFindsNanAndInf) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  for (DType dt : {DType::kF32, DType::kF64}) {
    Tensor host = RandomNormal({111, 4097}, dt, 4);
    auto clean = ctx->ToDevice(host);
    ASSERT_TRUE(clean.ok());
    EXPECT_TRUE(cuda::ExpectFiniteOnDevice(*ctx, *clean, "x").ok());
    for (double bad : {static_cast<double>(NAN), static_cast<double>(INFINITY)}) {
      Tensor dirty = host.Contiguous();
      if (dt == DType::kF32) {
        dirty.at<float>({110, 4096}) = static_cast<float>(bad);
      } else {
        dirty.at<double>({110, 4096}) = bad;
      }
      auto d = ctx->ToDevice(dirty);
      ASSERT_TRUE(d.ok());
      const absl::Status s = cuda::ExpectFiniteOnDevice(*ctx, *d, "op input A");
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
      EXPECT_NE(s.message().find("op input A has a non-finite entry"), std::string::npos) << s;
    }
  }
}

TEST(LinalgUtilCudaTest, ScratchLayoutAlignsPieces) {
  cuda::ScratchLayout layout;
  const int a = layout.Add(4), b = layout.Add(0), c = layout.Add(1000);
  char* base = reinterpret_cast<char*>(0x10000);
  EXPECT_EQ(layout.At<char>(base, a) - base, 0);
  EXPECT_EQ(layout.At<char>(base, b) - base, 256);
  EXPECT_EQ(layout.At<char>(base, c) - base, 256);
  EXPECT_EQ(layout.total_bytes(), 256u + 1024u);
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
