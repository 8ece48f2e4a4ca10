#include "kernels/ops/swiglu.h"

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

TEST(SwigluCpuTest, MatchesTorchGolden) {
  auto golden = LoadGolden(RunfilePath("tests/testdata/nn/swiglu.safetensors"));
  ASSERT_TRUE(golden.ok()) << golden.status();
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    const Tensor gate = golden->at("gate").To(dt), up = golden->at("up").To(dt), dout = golden->at("dout").To(dt);
    Tensor out = Tensor::Empty(gate.shape(), dt), dg = Tensor::Empty(gate.shape(), dt);
    Tensor du = Tensor::Empty(gate.shape(), dt);
    ASSERT_TRUE(cpu::SwigluForward(gate, up, &out).ok());
    ASSERT_TRUE(cpu::SwigluBackward(gate, up, dout, &dg, &du).ok());
    const Tolerance tol = dt == DType::kF32 ? Tolerance{1e-6, 1e-6} : Tolerance{1e-14, 1e-14};
    EXPECT_TRUE(AllClose(out, golden->at("out_f64"), tol));
    EXPECT_TRUE(AllClose(dg, golden->at("dgate_f64"), tol));
    EXPECT_TRUE(AllClose(du, golden->at("dup_f64"), tol));
  }
}

TEST(SwigluCpuTest, BackwardMatchesFiniteDifferences) {
  const Tensor gate = RandomNormal({7, 5}, DType::kF64, 1), up = RandomNormal({7, 5}, DType::kF64, 2);
  const Tensor dout = RandomNormal({7, 5}, DType::kF64, 3);
  auto loss = [&](const Tensor& g, const Tensor& u) {
    Tensor out = Tensor::Empty(g.shape(), DType::kF64);
    ST_CHECK(cpu::SwigluForward(g, u, &out).ok());
    return Dot(out, dout);
  };
  Tensor dg = Tensor::Empty(gate.shape(), DType::kF64), du = Tensor::Empty(gate.shape(), DType::kF64);
  ASSERT_TRUE(cpu::SwigluBackward(gate, up, dout, &dg, &du).ok());
  EXPECT_TRUE(AllClose(dg, NumericalGradient([&](const Tensor& g) { return loss(g, up); }, gate), Tolerance{1e-8, 1e-7}));
  EXPECT_TRUE(AllClose(du, NumericalGradient([&](const Tensor& u) { return loss(gate, u); }, up), Tolerance{1e-8, 1e-7}));
}

TEST(SwigluCpuTest, InPlaceAndErrors) {
  Tensor gate = RandomNormal({111}, DType::kF32, 4);
  const Tensor up = RandomNormal({111}, DType::kF32, 5);
  Tensor expected = Tensor::Empty({111}, DType::kF32);
  ASSERT_TRUE(cpu::SwigluForward(gate, up, &expected).ok());
  ASSERT_TRUE(cpu::SwigluForward(gate, up, &gate).ok());
  EXPECT_TRUE(AllClose(gate, expected, Tolerance{0, 0}));
  Tensor out = Tensor::Empty({110}, DType::kF32);
  absl::Status s = cpu::SwigluForward(gate, up, &out);
  EXPECT_NE(s.message().find("swiglu: out must have shape [111]"), std::string::npos) << s;
  Tensor out64 = Tensor::Empty({111}, DType::kF64);
  s = cpu::SwigluForward(gate, up, &out64);
  EXPECT_NE(s.message().find("must have the same dtype"), std::string::npos) << s;
}

TEST(SwigluCpuTest, ContextSplitGivesIdenticalResults) {
  CpuContext ctx(2);
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    const Tensor g = RandomNormal({3, 100003}, dt, 9), u = RandomNormal({3, 100003}, dt, 10);
    const Tensor d = RandomNormal({3, 100003}, dt, 11);
    Tensor out[2], dg[2], du[2];
    for (int i = 0; i < 2; ++i) {
      out[i] = Tensor::Empty(g.shape(), dt), dg[i] = Tensor::Empty(g.shape(), dt), du[i] = Tensor::Empty(g.shape(), dt);
      CpuContext* c = i == 0 ? nullptr : &ctx;
      ASSERT_TRUE(cpu::SwigluForward(g, u, &out[i], c).ok());
      ASSERT_TRUE(cpu::SwigluBackward(g, u, d, &dg[i], &du[i], c).ok());
    }
    EXPECT_TRUE(AllClose(out[1], out[0], Tolerance{0, 0}));
    EXPECT_TRUE(AllClose(dg[1], dg[0], Tolerance{0, 0}));
    EXPECT_TRUE(AllClose(du[1], du[0], Tolerance{0, 0}));
  }
}

#if SIGMATUNE_WITH_CUDA
TEST(SwigluCudaTest, MatchesCpuOverAwkwardShapes) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  for (int64_t n : {1, 7, 111, 4097}) {
    for (DType dt : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE(::testing::Message() << n << " " << DTypeName(dt));
      const Tensor g = RandomNormal({n, 3}, dt, 6), u = RandomNormal({n, 3}, dt, 7), d = RandomNormal({n, 3}, dt, 8);
      auto dg = ctx->ToDevice(g), du = ctx->ToDevice(u), dd = ctx->ToDevice(d);
      auto out = ctx->Allocate({n, 3}, dt), gg = ctx->Allocate({n, 3}, dt), gu = ctx->Allocate({n, 3}, dt);
      ASSERT_TRUE(dg.ok() && du.ok() && dd.ok() && out.ok() && gg.ok() && gu.ok());
      ASSERT_TRUE(cuda::SwigluForward(*ctx, *dg, *du, &*out).ok());
      ASSERT_TRUE(cuda::SwigluBackward(*ctx, *dg, *du, *dd, &*gg, &*gu).ok());
      const Tensor g32 = g.To(DType::kF32), u32 = u.To(DType::kF32), d32 = d.To(DType::kF32);
      Tensor eo = Tensor::Empty({n, 3}, DType::kF32), eg = Tensor::Empty({n, 3}, DType::kF32);
      Tensor eu = Tensor::Empty({n, 3}, DType::kF32);
      ASSERT_TRUE(cpu::SwigluForward(g32, u32, &eo).ok());
      ASSERT_TRUE(cpu::SwigluBackward(g32, u32, d32, &eg, &eu).ok());
      const Tolerance tol = dt == DType::kBF16 ? Tolerance{1e-2, 1e-2} : Tolerance{1e-6, 1e-5};
      auto ho = ctx->ToHost(*out), hg = ctx->ToHost(*gg), hu = ctx->ToHost(*gu);
      ASSERT_TRUE(ho.ok() && hg.ok() && hu.ok());
      EXPECT_TRUE(AllClose(*ho, eo, tol));
      EXPECT_TRUE(AllClose(*hg, eg, tol));
      EXPECT_TRUE(AllClose(*hu, eu, tol));
    }
  }
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
