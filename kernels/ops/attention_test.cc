#include "kernels/ops/attention.h"

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

Tensor Cu(const std::vector<int32_t>& v) { return Tensor::FromVector<int32_t>({static_cast<int64_t>(v.size())}, v); }

DType LseType(DType dt) { return dt == DType::kF64 ? DType::kF64 : DType::kF32; }

struct Grads {
  Tensor out, lse, dq, dk, dv;
};

Grads RunCpu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu, const Tensor& dout,
             CpuContext* ctx = nullptr) {
  Grads g{Tensor::Empty(q.shape(), q.dtype()), Tensor::Empty({q.dim(0), q.dim(1)}, LseType(q.dtype())),
          Tensor::Empty(q.shape(), q.dtype()), Tensor::Empty(k.shape(), q.dtype()), Tensor::Empty(k.shape(), q.dtype())};
  absl::Status s = cpu::AttentionForward(q, k, v, cu, &g.out, &g.lse, ctx);
  ST_CHECK(s.ok()) << s;
  s = cpu::AttentionBackward(q, k, v, cu, g.out, g.lse, dout, &g.dq, &g.dk, &g.dv, ctx);
  ST_CHECK(s.ok()) << s;
  return g;
}

TEST(AttentionCpuTest, MatchesTorchSdpaWithRepeatKv) {
  auto golden = LoadGolden(RunfilePath("tests/testdata/nn/attention.safetensors"));
  ASSERT_TRUE(golden.ok()) << golden.status();
  for (const std::string name : {"gqa3", "mha"}) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(::testing::Message() << name << " " << DTypeName(dt));
      auto in = [&](const char* s) { return golden->at(name + s).To(dt); };
      const Grads g = RunCpu(in("_q"), in("_k"), in("_v"), golden->at(name + "_cu_seqlens"), in("_dout"));
      const Tolerance tol = dt == DType::kF32 ? Tolerance{2e-5, 2e-5} : Tolerance{1e-12, 1e-12};
      EXPECT_TRUE(AllClose(g.out, golden->at(name + "_out_f64"), tol));
      EXPECT_TRUE(AllClose(g.lse, golden->at(name + "_lse_f64"), tol));
      EXPECT_TRUE(AllClose(g.dq, golden->at(name + "_dq_f64"), tol));
      EXPECT_TRUE(AllClose(g.dk, golden->at(name + "_dk_f64"), tol));
      EXPECT_TRUE(AllClose(g.dv, golden->at(name + "_dv_f64"), tol));
    }
  }
}

TEST(AttentionCpuTest, BackwardMatchesFiniteDifferences) {
  for (int64_t group : {1, 3}) {
    SCOPED_TRACE(group);
    const int64_t kv = 2, heads = kv * group, hd = 8, tokens = 7;
    const Tensor q = RandomNormal({tokens, heads, hd}, DType::kF64, 1);
    const Tensor k = RandomNormal({tokens, kv, hd}, DType::kF64, 2);
    const Tensor v = RandomNormal({tokens, kv, hd}, DType::kF64, 3);
    const Tensor dout = RandomNormal({tokens, heads, hd}, DType::kF64, 4);
    const Tensor cu = Cu({0, 4, 4, 7});
    auto loss = [&](const Tensor& qq, const Tensor& kk, const Tensor& vv) {
      Tensor out = Tensor::Empty(qq.shape(), DType::kF64), lse = Tensor::Empty({tokens, heads}, DType::kF64);
      ST_CHECK(cpu::AttentionForward(qq, kk, vv, cu, &out, &lse).ok());
      double s = 0;
      for (int64_t i = 0; i < out.numel(); ++i) s += out.data<double>()[i] * dout.data<double>()[i];
      return s;
    };
    const Grads g = RunCpu(q, k, v, cu, dout);
    const Tolerance tol{1e-7, 1e-6};
    EXPECT_TRUE(AllClose(g.dq, NumericalGradient([&](const Tensor& x) { return loss(x, k, v); }, q), tol));
    EXPECT_TRUE(AllClose(g.dk, NumericalGradient([&](const Tensor& x) { return loss(q, x, v); }, k), tol));
    EXPECT_TRUE(AllClose(g.dv, NumericalGradient([&](const Tensor& x) { return loss(q, k, x); }, v), tol));
  }
}

TEST(AttentionCpuTest, PackedSequencesNeverInteract) {
  // Perturbing the second sequence leaves the first one's outputs and gradients bit-identical, and
  // vice versa; the first token of each sequence attends only to itself (out = v).
  const int64_t tokens = 111, heads = 3, kv = 1, hd = 64;
  const Tensor cu = Cu({0, 1, 50, 111});
  const Tensor q = RandomNormal({tokens, heads, hd}, DType::kF32, 5);
  const Tensor k = RandomNormal({tokens, kv, hd}, DType::kF32, 6);
  const Tensor v = RandomNormal({tokens, kv, hd}, DType::kF32, 7);
  const Tensor dout = RandomNormal({tokens, heads, hd}, DType::kF32, 8);
  const Grads base = RunCpu(q, k, v, cu, dout);
  Tensor k2 = k.Contiguous(), v2 = v.Contiguous();
  for (int64_t i = 50 * kv * hd; i < tokens * kv * hd; ++i) {
    k2.data<float>()[i] += 1.0f;
    v2.data<float>()[i] *= -2.0f;
  }
  const Grads other = RunCpu(q, k2, v2, cu, dout);
  auto same_rows = [](const Tensor& a, const Tensor& b, int64_t begin, int64_t end) {
    const int64_t row = a.numel() / a.dim(0);
    return std::memcmp(a.data<float>() + begin * row, b.data<float>() + begin * row, (end - begin) * row * 4) == 0;
  };
  for (const auto& [a, b] : {std::pair<const Tensor*, const Tensor*>{&base.out, &other.out}, {&base.lse, &other.lse},
                             {&base.dq, &other.dq}, {&base.dk, &other.dk}, {&base.dv, &other.dv}}) {
    EXPECT_TRUE(same_rows(*a, *b, 0, 50));
    EXPECT_FALSE(same_rows(*a, *b, 50, 111));
  }
  for (int64_t h = 0; h < heads; ++h) {
    EXPECT_EQ(std::memcmp(base.out.data<float>() + h * hd, v.data<float>(), hd * 4), 0);
  }
}

TEST(AttentionCpuTest, BatchingAndContextSplitGiveIdenticalResults) {
  // Sequences long enough that the (sequence, kv head) units fall into several batches of scores,
  // empty ones and a one-token one: each sequence's rows are bit-identical to running it alone, with
  // or without a context.
  const int64_t heads = 4, kv = 2, hd = 16;
  const std::vector<int32_t> lens = {700, 0, 1, 1500, 0, 37};
  std::vector<int32_t> offsets = {0};
  for (int32_t len : lens) offsets.push_back(offsets.back() + len);
  const int64_t tokens = offsets.back();
  const Tensor q = RandomNormal({tokens, heads, hd}, DType::kF32, 21);
  const Tensor k = RandomNormal({tokens, kv, hd}, DType::kF32, 22);
  const Tensor v = RandomNormal({tokens, kv, hd}, DType::kF32, 23);
  const Tensor dout = RandomNormal({tokens, heads, hd}, DType::kF32, 24);
  const Grads packed = RunCpu(q, k, v, Cu(offsets), dout);
  CpuContext ctx(2);
  const Grads split = RunCpu(q, k, v, Cu(offsets), dout, &ctx);
  for (const auto& [a, b] : {std::pair<const Tensor*, const Tensor*>{&packed.out, &split.out},
                             {&packed.lse, &split.lse}, {&packed.dq, &split.dq}, {&packed.dk, &split.dk},
                             {&packed.dv, &split.dv}}) {
    EXPECT_TRUE(AllClose(*b, *a, Tolerance{0, 0}));
  }
  for (size_t s = 0; s < lens.size(); ++s) {
    if (lens[s] == 0) continue;
    SCOPED_TRACE(s);
    const int64_t b = offsets[s], e = offsets[s + 1];
    auto rows = [&](const Tensor& t) { return t.Slice(0, b, e).Contiguous(); };
    const Grads alone = RunCpu(rows(q), rows(k), rows(v), Cu({0, lens[s]}), rows(dout));
    for (const auto& [a, p] : {std::pair<const Tensor*, const Tensor*>{&alone.out, &packed.out},
                               {&alone.lse, &packed.lse}, {&alone.dq, &packed.dq}, {&alone.dk, &packed.dk},
                               {&alone.dv, &packed.dv}}) {
      EXPECT_TRUE(AllClose(rows(*p), *a, Tolerance{0, 0}));
    }
  }
}

TEST(AttentionCpuTest, BadInputsGetClearErrors) {
  const Tensor q = Tensor::Zeros({4, 4, 8}, DType::kF32), k = Tensor::Zeros({4, 3, 8}, DType::kF32);
  Tensor out = Tensor::Empty({4, 4, 8}, DType::kF32), lse = Tensor::Empty({4, 4}, DType::kF32);
  absl::Status s = cpu::AttentionForward(q, k, k, Cu({0, 4}), &out, &lse);
  EXPECT_NE(s.message().find("multiple of kv_heads"), std::string::npos) << s;
  const Tensor k2 = Tensor::Zeros({4, 2, 8}, DType::kF32);
  s = cpu::AttentionForward(q, k2, k2, Cu({0, 3}), &out, &lse);
  EXPECT_NE(s.message().find("end at tokens (4)"), std::string::npos) << s;
  s = cpu::AttentionForward(q, k2, k2, Cu({0, 3, 2, 4}), &out, &lse);
  EXPECT_NE(s.message().find("cu_seqlens decreases at index 2"), std::string::npos) << s;
  Tensor lse64 = Tensor::Empty({4, 4}, DType::kF64);
  s = cpu::AttentionForward(q, k2, k2, Cu({0, 4}), &out, &lse64);
  EXPECT_NE(s.message().find("lse must be f32"), std::string::npos) << s;
}

#if SIGMATUNE_WITH_CUDA
TEST(AttentionCudaTest, MatchesCpuOverAwkwardShapes) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  struct Case {
    std::vector<int32_t> cu;
    int64_t heads, kv, hd;
  };
  for (const Case& c : {Case{{0, 1}, 2, 2, 8}, Case{{0, 7}, 3, 1, 64}, Case{{0, 3, 3, 80, 111}, 6, 2, 64},
                        Case{{0, 111}, 4, 4, 128}, Case{{0, 40, 111}, 2, 1, 256}}) {
    for (DType dt : {DType::kF32, DType::kBF16}) {
      const int64_t tokens = c.cu.back();
      SCOPED_TRACE(::testing::Message() << tokens << " tokens, heads " << c.heads << "/" << c.kv << " hd " << c.hd
                                        << " " << DTypeName(dt));
      const Tensor q = RandomNormal({tokens, c.heads, c.hd}, dt, 9), k = RandomNormal({tokens, c.kv, c.hd}, dt, 10);
      const Tensor v = RandomNormal({tokens, c.kv, c.hd}, dt, 11), dout = RandomNormal({tokens, c.heads, c.hd}, dt, 12);
      const Tensor cu = Cu(c.cu);
      const Grads ref = RunCpu(q.To(DType::kF32), k.To(DType::kF32), v.To(DType::kF32), cu, dout.To(DType::kF32));
      auto dq_in = ctx->ToDevice(q), dk_in = ctx->ToDevice(k), dv_in = ctx->ToDevice(v), ddo = ctx->ToDevice(dout);
      auto out = ctx->Allocate(q.shape(), dt), lse = ctx->Allocate({tokens, c.heads}, DType::kF32);
      auto dq = ctx->Allocate(q.shape(), dt), dk = ctx->Allocate(k.shape(), dt), dv = ctx->Allocate(k.shape(), dt);
      ASSERT_TRUE(dq_in.ok() && dk_in.ok() && dv_in.ok() && ddo.ok() && out.ok() && lse.ok() && dq.ok() && dk.ok() &&
                  dv.ok());
      absl::Status s = cuda::AttentionForward(*ctx, *dq_in, *dk_in, *dv_in, cu, &*out, &*lse);
      ASSERT_TRUE(s.ok()) << s;
      s = cuda::AttentionBackward(*ctx, *dq_in, *dk_in, *dv_in, cu, *out, *lse, *ddo, &*dq, &*dk, &*dv);
      ASSERT_TRUE(s.ok()) << s;
      const Tolerance tol = dt == DType::kBF16 ? Tolerance{3e-2, 3e-2} : Tolerance{1e-4, 1e-4};
      auto ho = ctx->ToHost(*out), hl = ctx->ToHost(*lse), hq = ctx->ToHost(*dq), hk = ctx->ToHost(*dk),
           hv = ctx->ToHost(*dv);
      ASSERT_TRUE(ho.ok() && hl.ok() && hq.ok() && hk.ok() && hv.ok());
      EXPECT_TRUE(AllClose(*ho, ref.out, tol));
      EXPECT_TRUE(AllClose(*hl, ref.lse, tol));
      EXPECT_TRUE(AllClose(*hq, ref.dq, tol));
      EXPECT_TRUE(AllClose(*hk, ref.dk, tol));
      EXPECT_TRUE(AllClose(*hv, ref.dv, tol));
    }
  }
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
