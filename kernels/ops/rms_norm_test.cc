#include "kernels/ops/rms_norm.h"

#include <string>

#include "gtest/gtest.h"
#include "kernels/ops/cpu_context.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/finite_diff.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/gpu.h"
#include "kernels/testing/random.h"

namespace sigmatune::kernels {
namespace {

using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::Dot;
using ::sigmatune::testing::LoadGolden;
using ::sigmatune::testing::NumericalGradient;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::RunfilePath;
using ::sigmatune::testing::Tolerance;

TEST(RmsNormCpuTest, MatchesLlamaRMSNorm) {
  auto golden = LoadGolden(RunfilePath("tests/testdata/nn/rms_norm.safetensors"));
  ASSERT_TRUE(golden.ok()) << golden.status();
  for (const std::string key : {"t7d24", "t1d64"}) {
    SCOPED_TRACE(key);
    const Tensor& x = golden->at(key + "_x");
    const Tensor& w = golden->at(key + "_w");
    Tensor y = Tensor::Empty(x.shape(), DType::kF32);
    ASSERT_TRUE(cpu::RmsNormForward(x, w, 1e-5, &y).ok());
    EXPECT_TRUE(AllClose(y, golden->at(key + "_y"), Tolerance{1e-6, 1e-6}));
    Tensor dx = Tensor::Empty(x.shape(), DType::kF32), dw = Tensor::Empty(w.shape(), DType::kF32);
    ASSERT_TRUE(cpu::RmsNormBackward(x, w, 1e-5, golden->at(key + "_dy"), &dx, &dw).ok());
    EXPECT_TRUE(AllClose(dx, golden->at(key + "_dx"), Tolerance{1e-5, 1e-5}));
    EXPECT_TRUE(AllClose(dw, golden->at(key + "_dw"), Tolerance{1e-5, 1e-5}));
  }
}

TEST(RmsNormCpuTest, BackwardMatchesFiniteDifferences) {
  for (int64_t d : {1, 8, 64}) {
    SCOPED_TRACE(d);
    const Tensor x = RandomNormal({3, d}, DType::kF64, 1);
    const Tensor w = RandomNormal({d}, DType::kF64, 2);
    const Tensor dy = RandomNormal({3, d}, DType::kF64, 3);
    const double eps = 1e-3;  // large enough to matter in the gradient
    auto loss_x = [&](const Tensor& xx) {
      Tensor y = Tensor::Empty(xx.shape(), DType::kF64);
      ST_CHECK(cpu::RmsNormForward(xx, w, eps, &y).ok());
      return Dot(y, dy);
    };
    auto loss_w = [&](const Tensor& ww) {
      Tensor y = Tensor::Empty(x.shape(), DType::kF64);
      ST_CHECK(cpu::RmsNormForward(x, ww, eps, &y).ok());
      return Dot(y, dy);
    };
    Tensor dx = Tensor::Empty(x.shape(), DType::kF64), dw = Tensor::Empty(w.shape(), DType::kF64);
    ASSERT_TRUE(cpu::RmsNormBackward(x, w, eps, dy, &dx, &dw).ok());
    EXPECT_TRUE(AllClose(dx, NumericalGradient(loss_x, x), Tolerance{1e-7, 1e-7}));
    EXPECT_TRUE(AllClose(dw, NumericalGradient(loss_w, w), Tolerance{1e-7, 1e-7}));
    Tensor dx_only = Tensor::Empty(x.shape(), DType::kF64);
    ASSERT_TRUE(cpu::RmsNormBackward(x, w, eps, dy, &dx_only, nullptr).ok());
    EXPECT_TRUE(AllClose(dx_only, dx, Tolerance{0, 0}));
  }
}

TEST(RmsNormCpuTest, BadInputsGetClearErrors) {
  const Tensor x = Tensor::Zeros({2, 4}, DType::kF32);
  Tensor y = Tensor::Empty({2, 4}, DType::kF32);
  absl::Status s = cpu::RmsNormForward(x, Tensor::Zeros({3}, DType::kF32), 1e-5, &y);
  EXPECT_NE(s.message().find("w must have shape [4]"), std::string::npos) << s;
  s = cpu::RmsNormForward(x, Tensor::Zeros({4}, DType::kF32), 0.0, &y);
  EXPECT_NE(s.message().find("eps must be positive"), std::string::npos) << s;
  s = cpu::RmsNormForward(x, Tensor::Zeros({4}, DType::kF64), 1e-5, &y);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
}

TEST(RmsNormCpuTest, ContextSplitGivesIdenticalResults) {
  CpuContext ctx(2);
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    const Tensor x = RandomNormal({37, 1001}, dt, 11), w = RandomNormal({1001}, dt, 12);
    const Tensor dy = RandomNormal({37, 1001}, dt, 13);
    Tensor y[2], dx[2];
    for (int i = 0; i < 2; ++i) {
      y[i] = Tensor::Empty(x.shape(), dt), dx[i] = Tensor::Empty(x.shape(), dt);
      CpuContext* c = i == 0 ? nullptr : &ctx;
      ASSERT_TRUE(cpu::RmsNormForward(x, w, 1e-5, &y[i], c).ok());
      ASSERT_TRUE(cpu::RmsNormBackward(x, w, 1e-5, dy, &dx[i], nullptr, c).ok());
    }
    EXPECT_TRUE(AllClose(y[1], y[0], Tolerance{0, 0}));
    EXPECT_TRUE(AllClose(dx[1], dx[0], Tolerance{0, 0}));
    // With dw (one thread, scalar loops), dx agrees too.
    Tensor dx2 = Tensor::Empty(x.shape(), dt), dw = Tensor::Empty({1001}, dt);
    ASSERT_TRUE(cpu::RmsNormBackward(x, w, 1e-5, dy, &dx2, &dw, &ctx).ok());
    EXPECT_TRUE(AllClose(dx2, dx[0], Tolerance{1e-12, 1e-6}));
  }
}

#if SIGMATUNE_WITH_CUDA
TEST(RmsNormCudaTest, MatchesCpuOverAwkwardShapes) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  for (int64_t tokens : {1, 7, 111}) {
    for (int64_t d : {1, 7, 64, 4097}) {
      for (DType xt : {DType::kF32, DType::kBF16}) {
        for (DType wt : {DType::kF32, DType::kBF16}) {
          SCOPED_TRACE(::testing::Message() << tokens << "x" << d << " x " << DTypeName(xt) << " w " << DTypeName(wt));
          const Tensor x = RandomNormal({tokens, d}, xt, 4), w = RandomNormal({d}, wt, 5);
          const Tensor dy = RandomNormal({tokens, d}, xt, 6);
          auto dx_dev = ctx->ToDevice(x), dw_dev = ctx->ToDevice(w), ddy = ctx->ToDevice(dy);
          auto y_dev = ctx->Allocate({tokens, d}, xt), gx_dev = ctx->Allocate({tokens, d}, xt);
          auto gw_dev = ctx->Allocate({d}, DType::kF32);
          ASSERT_TRUE(dx_dev.ok() && dw_dev.ok() && ddy.ok() && y_dev.ok() && gx_dev.ok() && gw_dev.ok());
          ASSERT_TRUE(cuda::RmsNormForward(*ctx, *dx_dev, *dw_dev, 1e-5, &*y_dev).ok());
          ASSERT_TRUE(cuda::RmsNormBackward(*ctx, *dx_dev, *dw_dev, 1e-5, *ddy, &*gx_dev, &*gw_dev).ok());
          const Tensor x32 = x.To(DType::kF32), w32 = w.To(DType::kF32), dy32 = dy.To(DType::kF32);
          Tensor y = Tensor::Empty(x.shape(), DType::kF32), gx = Tensor::Empty(x.shape(), DType::kF32);
          Tensor gw = Tensor::Empty({d}, DType::kF32);
          ASSERT_TRUE(cpu::RmsNormForward(x32, w32, 1e-5, &y).ok());
          ASSERT_TRUE(cpu::RmsNormBackward(x32, w32, 1e-5, dy32, &gx, &gw).ok());
          const Tolerance tol = xt == DType::kBF16 ? Tolerance{2e-2, 1e-2} : Tolerance{1e-5, 1e-5};
          auto hy = ctx->ToHost(*y_dev), hgx = ctx->ToHost(*gx_dev), hgw = ctx->ToHost(*gw_dev);
          ASSERT_TRUE(hy.ok() && hgx.ok() && hgw.ok());
          EXPECT_TRUE(AllClose(*hy, y, tol));
          EXPECT_TRUE(AllClose(*hgx, gx, tol));
          EXPECT_TRUE(AllClose(*hgw, gw, Tolerance{1e-4 * tokens, 1e-4}));
        }
      }
    }
  }
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
