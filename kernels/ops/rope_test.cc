#include "kernels/ops/rope.h"

#include <cstring>
#include <string>
#include <vector>

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
using ::sigmatune::testing::LoadGolden;
using ::sigmatune::testing::NumericalGradient;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::RunfilePath;
using ::sigmatune::testing::Tolerance;

RopeConfig DefaultConfig() {
  RopeConfig c;
  c.theta = 10000.0;
  c.head_dim = 8;
  return c;
}

RopeConfig Llama3Config() {
  RopeConfig c;
  c.theta = 500000.0;
  c.head_dim = 64;
  c.scaling = RopeScaling::kLlama3;
  c.factor = 8.0;
  c.low_freq_factor = 1.0;
  c.high_freq_factor = 4.0;
  c.original_max_position_embeddings = 8192;
  return c;
}

Tensor Positions(int64_t n, int32_t modulo) {
  std::vector<int32_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<int32_t>((i * 37) % modulo);
  return Tensor::FromVector<int32_t>({n}, v);
}

TEST(RopeCpuTest, MatchesTransformers) {
  auto golden = LoadGolden(RunfilePath("tests/testdata/nn/rope.safetensors"));
  ASSERT_TRUE(golden.ok()) << golden.status();
  for (const auto& [name, config] : {std::pair<std::string, RopeConfig>{"default", DefaultConfig()},
                                     {"llama3", Llama3Config()}}) {
    SCOPED_TRACE(name);
    auto inv = RopeInvFreq(config);
    ASSERT_TRUE(inv.ok()) << inv.status();
    const Tensor ours = Tensor::FromVector<float>({static_cast<int64_t>(inv->size())}, *inv);
    // Bit for bit: at position 131071 one ulp of inv_freq moves the angle by ~1e-2 rad.
    EXPECT_TRUE(AllClose(ours, golden->at(name + "_inv_freq"), Tolerance{0, 0}));
    const Tensor& x = golden->at(name + "_x");
    const Tensor& pos = golden->at(name + "_positions");
    Tensor out = Tensor::Empty(x.shape(), DType::kF32);
    ASSERT_TRUE(cpu::ApplyRope(x, pos, config, RopeDirection::kForward, &out).ok());
    // Angles up to 131071 rad in fp32: an ulp of inv_freq moves the angle by ~1e-2 * 2^-23 * pos.
    EXPECT_TRUE(AllClose(out, golden->at(name + "_out"), Tolerance{2e-5, 2e-5}));
    Tensor dx = Tensor::Empty(x.shape(), DType::kF32);
    ASSERT_TRUE(cpu::ApplyRope(golden->at(name + "_dy"), pos, config, RopeDirection::kBackward, &dx).ok());
    EXPECT_TRUE(AllClose(dx, golden->at(name + "_dx"), Tolerance{2e-5, 2e-5}));
  }
}

TEST(RopeCpuTest, Llama3InvFreqBands) {
  // High frequencies unchanged, low frequencies divided by factor, the band between interpolated.
  RopeConfig plain = Llama3Config();
  plain.scaling = RopeScaling::kNone;
  auto base = RopeInvFreq(plain);
  auto scaled = RopeInvFreq(Llama3Config());
  ASSERT_TRUE(base.ok() && scaled.ok());
  EXPECT_EQ((*scaled)[0], (*base)[0]);
  EXPECT_FLOAT_EQ(scaled->back(), base->back() / 8.0f);
  RopeConfig bad = Llama3Config();
  bad.high_freq_factor = 1.0;
  EXPECT_EQ(RopeInvFreq(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = DefaultConfig();
  bad.rotary_dim = 7;
  EXPECT_NE(RopeInvFreq(bad).status().message().find("even rotary_dim"), std::string::npos);
}

TEST(RopeCpuTest, BackwardMatchesFiniteDifferencesAndInvertsForward) {
  for (int64_t hd : {8, 64}) {
    SCOPED_TRACE(hd);
    RopeConfig c = Llama3Config();
    c.head_dim = hd;
    const Tensor x = RandomNormal({7, 3, hd}, DType::kF64, 1);
    const Tensor dy = RandomNormal({7, 3, hd}, DType::kF64, 2);
    const Tensor pos = Positions(7, 20000);
    auto loss = [&](const Tensor& xx) {
      Tensor y = Tensor::Empty(xx.shape(), DType::kF64);
      ST_CHECK(cpu::ApplyRope(xx, pos, c, RopeDirection::kForward, &y).ok());
      double s = 0;
      for (int64_t i = 0; i < y.numel(); ++i) s += y.data<double>()[i] * dy.data<double>()[i];
      return s;
    };
    Tensor dx = Tensor::Empty(x.shape(), DType::kF64);
    ASSERT_TRUE(cpu::ApplyRope(dy, pos, c, RopeDirection::kBackward, &dx).ok());
    EXPECT_TRUE(AllClose(dx, NumericalGradient(loss, x), Tolerance{1e-8, 1e-8}));
    Tensor y = Tensor::Empty(x.shape(), DType::kF64);
    ASSERT_TRUE(cpu::ApplyRope(x, pos, c, RopeDirection::kForward, &y).ok());
    ASSERT_TRUE(cpu::ApplyRope(y, pos, c, RopeDirection::kBackward, &y).ok());  // in place
    EXPECT_TRUE(AllClose(y, x, Tolerance{1e-13, 1e-13}));
  }
}

TEST(RopeCpuTest, PartialRotaryAndPackedPositions) {
  // rotary_dim 4 of head_dim 8: the first 4 dims rotate as a head_dim-4 rope, the tail passes through.
  RopeConfig partial = DefaultConfig();
  partial.rotary_dim = 4;
  RopeConfig small = DefaultConfig();
  small.head_dim = 4;
  const Tensor x = RandomNormal({7, 2, 8}, DType::kF32, 3);
  const Tensor pos = Tensor::FromVector<int32_t>({7}, {0, 1, 2, 0, 1, 2, 3});  // two packed sequences
  Tensor out = Tensor::Empty(x.shape(), DType::kF32);
  ASSERT_TRUE(cpu::ApplyRope(x, pos, partial, RopeDirection::kForward, &out).ok());
  Tensor head = Tensor::Empty({7, 2, 4}, DType::kF32);
  for (int64_t r = 0; r < 14; ++r) std::memcpy(head.data<float>() + r * 4, x.data<float>() + r * 8, 16);
  Tensor head_out = Tensor::Empty({7, 2, 4}, DType::kF32);
  ASSERT_TRUE(cpu::ApplyRope(head, pos, small, RopeDirection::kForward, &head_out).ok());
  for (int64_t r = 0; r < 14; ++r) {
    EXPECT_EQ(std::memcmp(out.data<float>() + r * 8, head_out.data<float>() + r * 4, 16), 0);
    EXPECT_EQ(std::memcmp(out.data<float>() + r * 8 + 4, x.data<float>() + r * 8 + 4, 16), 0);
  }
  // Position 0 is the identity; equal positions give equal rotations (sequences restart).
  EXPECT_EQ(std::memcmp(out.data<float>(), x.data<float>(), 2 * 8 * 4), 0);
}

TEST(RopeCpuTest, SpreadPositionsAndContextSplitGiveIdenticalResults) {
  // Positions spread wider than the token count take the per-token path, packed ones the
  // per-position table; both, and any split over a context, give the same bits as one token at a time.
  const RopeConfig config = Llama3Config();
  CpuContext ctx(2);
  for (const Tensor& pos : {Positions(300, 128), Positions(300, 100000)}) {
    const Tensor x = RandomNormal({300, 3, 64}, DType::kF32, 4);
    Tensor out = Tensor::Empty(x.shape(), DType::kF32), split = Tensor::Empty(x.shape(), DType::kF32);
    ASSERT_TRUE(cpu::ApplyRope(x, pos, config, RopeDirection::kForward, &out).ok());
    ASSERT_TRUE(cpu::ApplyRope(x, pos, config, RopeDirection::kForward, &split, &ctx).ok());
    EXPECT_TRUE(AllClose(split, out, Tolerance{0, 0}));
    for (int64_t t = 0; t < 300; t += 37) {
      const Tensor xt = x.Slice(0, t, t + 1).Contiguous(), pt = pos.Slice(0, t, t + 1).Contiguous();
      Tensor ot = Tensor::Empty(xt.shape(), DType::kF32);
      ASSERT_TRUE(cpu::ApplyRope(xt, pt, config, RopeDirection::kForward, &ot).ok());
      EXPECT_EQ(std::memcmp(ot.data<float>(), out.data<float>() + t * 3 * 64, 3 * 64 * 4), 0) << t;
    }
  }
}

TEST(RopeCpuTest, BadInputsGetClearErrors) {
  const Tensor x = Tensor::Zeros({3, 2, 8}, DType::kF32);
  Tensor out = Tensor::Empty({3, 2, 8}, DType::kF32);
  absl::Status s = cpu::ApplyRope(x, Tensor::Zeros({2}, DType::kI32), DefaultConfig(), RopeDirection::kForward, &out);
  EXPECT_NE(s.message().find("positions must have shape [3]"), std::string::npos) << s;
  RopeConfig c = DefaultConfig();
  c.head_dim = 16;
  s = cpu::ApplyRope(x, Tensor::Zeros({3}, DType::kI32), c, RopeDirection::kForward, &out);
  EXPECT_NE(s.message().find("x must have shape"), std::string::npos) << s;
}

#if SIGMATUNE_WITH_CUDA
TEST(RopeCudaTest, MatchesCpuOverAwkwardShapes) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  for (int64_t tokens : {1, 7, 111}) {
    for (int64_t hd : {8, 64, 128}) {
      for (DType dt : {DType::kF32, DType::kBF16}) {
        for (RopeDirection dir : {RopeDirection::kForward, RopeDirection::kBackward}) {
          SCOPED_TRACE(::testing::Message() << tokens << " hd " << hd << " " << DTypeName(dt));
          RopeConfig c = Llama3Config();
          c.head_dim = hd;
          c.rotary_dim = hd == 128 ? 96 : 0;
          const Tensor x = RandomNormal({tokens, 3, hd}, dt, 4);
          const Tensor pos = Positions(tokens, 20000);
          auto dx = ctx->ToDevice(x), dpos = ctx->ToDevice(pos);
          auto dout = ctx->Allocate(x.shape(), dt);
          ASSERT_TRUE(dx.ok() && dpos.ok() && dout.ok());
          ASSERT_TRUE(cuda::ApplyRope(*ctx, *dx, *dpos, c, dir, &*dout).ok());
          Tensor expected = Tensor::Empty(x.shape(), DType::kF32);
          ASSERT_TRUE(cpu::ApplyRope(x.To(DType::kF32), pos, c, dir, &expected).ok());
          auto host = ctx->ToHost(*dout);
          ASSERT_TRUE(host.ok());
          EXPECT_TRUE(AllClose(*host, expected, dt == DType::kBF16 ? Tolerance{2e-2, 1e-2} : Tolerance{1e-5, 1e-5}));
        }
      }
    }
  }
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
