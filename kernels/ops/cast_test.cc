#include "kernels/ops/cast.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/gpu.h"
#include "kernels/testing/random.h"

namespace sigmatune::kernels {
namespace {

using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::Tolerance;

// Floats that stress rounding: ties, subnormals, overflow, infinities, NaN, plus random values.
Tensor StressFloats() {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-11f,
                          65504.0f, 65519.0f, 65520.0f, 0x1p-24f, 0x1p-25f, 0x1.8p-25f, 1e-40f,
                          std::numeric_limits<float>::max(), INFINITY, -INFINITY, NAN};
  const Tensor r = ::sigmatune::testing::RandomNormal({1000}, DType::kF32, 5);
  for (int i = 0; i < 1000; ++i) v.push_back(r.data<float>()[i] * std::pow(2.0f, (i % 60) - 30));
  return Tensor::FromVector<float>({static_cast<int64_t>(v.size())}, v);
}

TEST(CastCpuTest, RoundsToNearestEven) {
  const Tensor src = StressFloats();
  Tensor bf = Tensor::Empty(src.shape(), DType::kBF16);
  Tensor hf = Tensor::Empty(src.shape(), DType::kF16);
  ASSERT_TRUE(cpu::Cast(src, &bf).ok());
  ASSERT_TRUE(cpu::Cast(src, &hf).ok());
  for (int64_t i = 0; i < src.numel(); ++i) {
    const float f = src.data<float>()[i];
    const _Float16 h = static_cast<_Float16>(f);  // the compiler's conversion is the reference
    uint16_t expected;
    std::memcpy(&expected, &h, 2);
    if (!std::isnan(f)) {
      EXPECT_EQ(hf.data<Float16>()[i].bits, expected) << f;
      EXPECT_EQ(bf.data<BFloat16>()[i].bits, FloatToBFloat16(f).bits) << f;
    } else {
      EXPECT_TRUE(std::isnan(Float16ToFloat(hf.data<Float16>()[i])));
      EXPECT_TRUE(std::isnan(BFloat16ToFloat(bf.data<BFloat16>()[i])));
    }
  }
  EXPECT_EQ(BFloat16ToFloat(bf.data<BFloat16>()[3]), 1.0f);  // tie to even
}

TEST(CastCpuTest, WideningIsExact) {
  const Tensor src = StressFloats();
  Tensor d = Tensor::Empty(src.shape(), DType::kF64);
  ASSERT_TRUE(cpu::Cast(src, &d).ok());
  Tensor back = Tensor::Empty(src.shape(), DType::kF32);
  ASSERT_TRUE(cpu::Cast(d, &back).ok());
  EXPECT_EQ(std::memcmp(back.raw_data(), src.raw_data(), src.nbytes()), 0);
}

TEST(CastCpuTest, BadInputsGetClearErrors) {
  Tensor dst = Tensor::Empty({3}, DType::kF32);
  absl::Status s = cpu::Cast(Tensor::Zeros({4}, DType::kF32), &dst);
  EXPECT_NE(s.message().find("shapes differ"), std::string::npos) << s;
  s = cpu::Cast(Tensor::Zeros({3}, DType::kI32), &dst);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  Tensor m = Tensor::Zeros({2, 3}, DType::kF32);
  Tensor mt = Tensor::Empty({3, 2}, DType::kF32);
  s = cpu::Cast(m.Transposed(), &mt);
  EXPECT_NE(s.message().find("contiguous"), std::string::npos) << s;
}

#if SIGMATUNE_WITH_CUDA
TEST(CastCudaTest, MatchesCpuBitForBit) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  const std::vector<DType> types = {DType::kF32, DType::kF64, DType::kBF16, DType::kF16};
  for (DType from : types) {
    for (DType to : types) {
      SCOPED_TRACE(::testing::Message() << DTypeName(from) << "->" << DTypeName(to));
      Tensor src = Tensor::Empty(StressFloats().shape(), from);
      ASSERT_TRUE(cpu::Cast(StressFloats(), &src).ok());
      Tensor expected = Tensor::Empty(src.shape(), to);
      ASSERT_TRUE(cpu::Cast(src, &expected).ok());
      auto dsrc = ctx->ToDevice(src);
      auto ddst = ctx->Allocate(src.shape(), to);
      ASSERT_TRUE(dsrc.ok() && ddst.ok());
      ASSERT_TRUE(cuda::Cast(*ctx, *dsrc, &*ddst).ok());
      auto host = ctx->ToHost(*ddst);
      ASSERT_TRUE(host.ok()) << host.status();
      EXPECT_TRUE(AllClose(*host, expected, Tolerance{0, 0}));
    }
  }
  // Over the grid-stride limit: more elements than 65535 blocks x 256 threads.
  const int64_t n = 65535LL * 256 + 7;
  const Tensor big = ::sigmatune::testing::RandomUniform({n}, DType::kF32, -1, 1, 9);
  auto dbig = ctx->ToDevice(big);
  auto dout = ctx->Allocate({n}, DType::kBF16);
  ASSERT_TRUE(dbig.ok() && dout.ok());
  ASSERT_TRUE(cuda::Cast(*ctx, *dbig, &*dout).ok());
  Tensor expected = Tensor::Empty({n}, DType::kBF16);
  ASSERT_TRUE(cpu::Cast(big, &expected).ok());
  auto host = ctx->ToHost(*dout);
  ASSERT_TRUE(host.ok());
  EXPECT_EQ(std::memcmp(host->raw_data(), expected.raw_data(), expected.nbytes()), 0);
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
