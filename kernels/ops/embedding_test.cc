#include "kernels/ops/embedding.h"

#include <cstring>
#include <vector>

#include "gtest/gtest.h"
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

Tensor Ids(const std::vector<int32_t>& v) { return Tensor::FromVector<int32_t>({static_cast<int64_t>(v.size())}, v); }

Tensor RandomIds(int64_t n, int32_t vocab, uint64_t seed) {
  const Tensor u = ::sigmatune::testing::RandomUniform({n}, DType::kF64, 0, vocab, seed);
  std::vector<int32_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<int32_t>(u.data<double>()[i]);
  return Ids(v);
}

TEST(EmbeddingCpuTest, MatchesTorchGolden) {
  auto golden = LoadGolden(RunfilePath("tests/testdata/nn/embedding.safetensors"));
  ASSERT_TRUE(golden.ok()) << golden.status();
  const Tensor& table = golden->at("table");
  const Tensor& ids = golden->at("ids");
  Tensor out = Tensor::Empty({ids.dim(0), table.dim(1)}, DType::kF32);
  ASSERT_TRUE(cpu::EmbeddingForward(table, ids, &out).ok());
  EXPECT_TRUE(AllClose(out, golden->at("out"), Tolerance{0, 0}));
  Tensor dtable = Tensor::Zeros(table.shape(), DType::kF32);
  ASSERT_TRUE(cpu::EmbeddingBackward(ids, golden->at("dout"), &dtable).ok());
  EXPECT_TRUE(AllClose(dtable, golden->at("dtable_f64"), Tolerance{1e-6, 1e-6}));
}

TEST(EmbeddingCpuTest, BackwardMatchesFiniteDifferences) {
  const Tensor table = RandomNormal({9, 4}, DType::kF64, 1);
  const Tensor ids = Ids({2, 8, 2, 0, 2, 5, 8});
  const Tensor dout = RandomNormal({7, 4}, DType::kF64, 2);
  auto loss = [&](const Tensor& tab) {
    Tensor out = Tensor::Empty({7, 4}, DType::kF64);
    ST_CHECK(cpu::EmbeddingForward(tab, ids, &out).ok());
    double s = 0;
    for (int64_t i = 0; i < out.numel(); ++i) s += out.data<double>()[i] * dout.data<double>()[i];
    return s;
  };
  Tensor dtable = Tensor::Zeros(table.shape(), DType::kF64);
  ASSERT_TRUE(cpu::EmbeddingBackward(ids, dout, &dtable).ok());
  EXPECT_TRUE(AllClose(dtable, NumericalGradient(loss, table), Tolerance{1e-8, 1e-8}));
}

TEST(EmbeddingCpuTest, AwkwardShapesAndDeterministicBackward) {
  for (int64_t tokens : {1, 7, 111}) {
    SCOPED_TRACE(tokens);
    const Tensor table = RandomNormal({4097, 7}, DType::kF32, 3);
    const Tensor ids = RandomIds(tokens, 4097, 4);
    Tensor out = Tensor::Empty({tokens, 7}, DType::kF32);
    ASSERT_TRUE(cpu::EmbeddingForward(table, ids, &out).ok());
    for (int64_t t = 0; t < tokens; ++t) {
      EXPECT_EQ(std::memcmp(out.data<float>() + t * 7, table.data<float>() + ids.data<int32_t>()[t] * 7, 28), 0);
    }
    const Tensor dout = RandomNormal({tokens, 7}, DType::kF32, 5);
    Tensor a = Tensor::Zeros(table.shape(), DType::kF32), b = Tensor::Zeros(table.shape(), DType::kF32);
    ASSERT_TRUE(cpu::EmbeddingBackward(ids, dout, &a).ok());
    ASSERT_TRUE(cpu::EmbeddingBackward(ids, dout, &b).ok());
    EXPECT_EQ(std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()), 0);
  }
}

TEST(EmbeddingCpuTest, BackwardAccumulates) {
  const Tensor ids = Ids({1, 1});
  const Tensor dout = Tensor::FromVector<float>({2, 1}, {2.0f, 3.0f});
  Tensor dtable = Tensor::FromVector<float>({2, 1}, {10.0f, 20.0f});
  ASSERT_TRUE(cpu::EmbeddingBackward(ids, dout, &dtable).ok());
  EXPECT_EQ(dtable.data<float>()[0], 10.0f);
  EXPECT_EQ(dtable.data<float>()[1], 25.0f);
}

TEST(EmbeddingCpuTest, OutOfRangeIdsNameFirstBadIdAndPosition) {
  const Tensor table = Tensor::Zeros({5, 3}, DType::kF32);
  Tensor out = Tensor::Empty({4, 3}, DType::kF32);
  absl::Status s = cpu::EmbeddingForward(table, Ids({1, 5, -1, 99}), &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("ids[1] = 5 is outside [0, 5)"), std::string::npos) << s;
  Tensor dtable = Tensor::Zeros({5, 3}, DType::kF32);
  s = cpu::EmbeddingBackward(Ids({0, 0, -1, 2}), Tensor::Zeros({4, 3}, DType::kF32), &dtable);
  EXPECT_NE(s.message().find("ids[2] = -1"), std::string::npos) << s;
  s = cpu::EmbeddingForward(table, Tensor::Zeros({4}, DType::kI64), &out);
  EXPECT_NE(s.message().find("ids must be i32"), std::string::npos) << s;
  Tensor wrong = Tensor::Empty({4, 2}, DType::kF32);
  s = cpu::EmbeddingForward(table, Ids({0, 0, 0, 0}), &wrong);
  EXPECT_NE(s.message().find("out must have shape"), std::string::npos) << s;
}

#if SIGMATUNE_WITH_CUDA
TEST(EmbeddingCudaTest, MatchesCpuOverAwkwardShapes) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  for (int64_t tokens : {1, 7, 111, 4097}) {
    for (DType dt : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE(::testing::Message() << tokens << " " << DTypeName(dt));
      const Tensor table = RandomNormal({4097, 7}, dt, 6);
      const Tensor ids = RandomIds(tokens, 4097, 7);
      const Tensor dout = RandomNormal({tokens, 7}, dt, 8);
      auto dtab = ctx->ToDevice(table), dids = ctx->ToDevice(ids), ddout = ctx->ToDevice(dout);
      auto dout_dev = ctx->Allocate({tokens, 7}, dt);
      auto dgrad = ctx->Zeros({4097, 7}, DType::kF32);
      ASSERT_TRUE(dtab.ok() && dids.ok() && ddout.ok() && dout_dev.ok() && dgrad.ok());
      ASSERT_TRUE(cuda::EmbeddingForward(*ctx, *dtab, *dids, &*dout_dev).ok());
      ASSERT_TRUE(cuda::EmbeddingBackward(*ctx, *dids, *ddout, &*dgrad).ok());
      const Tensor table32 = table.To(DType::kF32);
      Tensor out = Tensor::Empty({tokens, 7}, DType::kF32);
      ASSERT_TRUE(cpu::EmbeddingForward(table32, ids, &out).ok());
      Tensor grad = Tensor::Zeros({4097, 7}, DType::kF32);
      ASSERT_TRUE(cpu::EmbeddingBackward(ids, dout.To(DType::kF32), &grad).ok());
      auto host_out = ctx->ToHost(*dout_dev);
      auto host_grad = ctx->ToHost(*dgrad);
      ASSERT_TRUE(host_out.ok() && host_grad.ok());
      EXPECT_TRUE(AllClose(*host_out, out, Tolerance{0, 0}));
      EXPECT_TRUE(AllClose(*host_grad, grad, Tolerance{1e-5, 1e-5}));
    }
  }
  // The id check runs on the device too.
  auto dtab = ctx->Zeros({5, 3}, DType::kF32);
  auto dids = ctx->ToDevice(Ids({1, 2, 7, 9}));
  auto dout_dev = ctx->Allocate({4, 3}, DType::kF32);
  ASSERT_TRUE(dtab.ok() && dids.ok() && dout_dev.ok());
  const absl::Status s = cuda::EmbeddingForward(*ctx, *dtab, *dids, &*dout_dev);
  EXPECT_NE(s.message().find("ids[2] = 7 is outside [0, 5)"), std::string::npos) << s;
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
