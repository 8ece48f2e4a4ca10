#include "kernels/ops/adamw.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/gpu.h"
#include "kernels/testing/random.h"
#include "kernels/testing/status.h"

namespace sigmatune::kernels {
namespace {

using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::LoadGolden;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::RandomUniform;
using ::sigmatune::testing::RunfilePath;
using ::sigmatune::testing::Tolerance;

constexpr int64_t kSizes[] = {1, 7, 111, 4097};

// The optimizer state of one tensor, CPU.
struct State {
  Tensor param, exp_avg, exp_avg_sq;
};

State RandomState(const Shape& shape, DType dt, uint64_t seed) {
  // exp_avg_sq >= 0 as a real state is; some exact zeros (a fresh state) in the first elements.
  State s{RandomNormal(shape, dt, seed), RandomNormal(shape, dt, seed + 1),
          RandomUniform(shape, dt, 0.0, 2.0, seed + 2)};
  for (int64_t i = 0; i < std::min<int64_t>(2, s.param.numel()); ++i) {
    if (dt == DType::kF32) {
      s.exp_avg.data<float>()[i] = s.exp_avg_sq.data<float>()[i] = 0.0f;
    } else {
      s.exp_avg.data<double>()[i] = s.exp_avg_sq.data<double>()[i] = 0.0;
    }
  }
  return s;
}

State Copy(const State& s) { return {s.param.Contiguous(), s.exp_avg.Contiguous(), s.exp_avg_sq.Contiguous()}; }

// The textbook AdamW step (torch.optim.AdamW's documentation) in double, from the same inputs.
State ReferenceStep(const State& s, const Tensor& grad, const AdamWStepArgs& a) {
  State out{Tensor::Empty(s.param.shape(), DType::kF64), Tensor::Empty(s.param.shape(), DType::kF64),
            Tensor::Empty(s.param.shape(), DType::kF64)};
  const double bias1 = 1 - std::pow(a.beta1, a.step), bias2 = 1 - std::pow(a.beta2, a.step);
  for (int64_t i = 0; i < grad.numel(); ++i) {
    const double g = GetAsDouble(grad, i) * a.grad_scale;
    const double p = GetAsDouble(s.param, i) * (1 - a.lr * a.weight_decay);
    const double m = a.beta1 * GetAsDouble(s.exp_avg, i) + (1 - a.beta1) * g;
    const double v = a.beta2 * GetAsDouble(s.exp_avg_sq, i) + (1 - a.beta2) * g * g;
    out.param.data<double>()[i] = p - a.lr / bias1 * m / (std::sqrt(v) / std::sqrt(bias2) + a.eps);
    out.exp_avg.data<double>()[i] = m;
    out.exp_avg_sq.data<double>()[i] = v;
  }
  return out;
}

::testing::AssertionResult StateClose(const State& got, const State& want, Tolerance tol) {
  for (const auto& [g, w, what] :
       {std::make_tuple(&got.param, &want.param, "param"), std::make_tuple(&got.exp_avg, &want.exp_avg, "exp_avg"),
        std::make_tuple(&got.exp_avg_sq, &want.exp_avg_sq, "exp_avg_sq")}) {
    ::testing::AssertionResult r = AllClose(*g, *w, tol);
    if (!r) return r << " (" << what << ")";
  }
  return ::testing::AssertionSuccess();
}

AdamWStepArgs Args(double lr, double beta1, double beta2, double eps, double wd, double scale, int64_t step) {
  AdamWStepArgs a;
  a.lr = lr;
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;
  a.weight_decay = wd;
  a.grad_scale = scale;
  a.step = step;
  return a;
}

// Argument sets covering both lerp branches (1 - beta1 below / above 0.5), no weight decay, late
// steps (bias corrections near 1) and a gradient scale.
std::vector<AdamWStepArgs> ArgSets() {
  return {Args(1e-3, 0.9, 0.999, 1e-8, 0.01, 1.0, 1), Args(2e-2, 0.3, 0.95, 1e-6, 0.0, 0.37, 3),
          Args(5e-4, 0.85, 0.99, 1e-8, 0.1, 2.5, 1000), Args(0.0, 0.9, 0.999, 1e-8, 0.01, 1.0, 2)};
}

TEST(AdamWCpuTest, MatchesPyTorchFixture) {
  // torch.optim.AdamW (foreach=False) after clip_grad_norm_, lr from a cosine schedule with warmup:
  // replay every step with torch's clip coefficient as the gradient scale.
  auto golden = LoadGolden(RunfilePath("tests/testdata/optim/adamw.safetensors"));
  ASSERT_TRUE(golden.ok()) << golden.status();
  const std::map<std::string, Tensor>& t = *golden;
  const Tensor& hp = t.at("hparams");
  for (const char* name : {"a", "b", "c", "d"}) {
    SCOPED_TRACE(name);
    const Tensor& init = t.at(absl::StrCat("init.", name));
    State s{init.Contiguous(), Tensor::Zeros(init.shape(), DType::kF32), Tensor::Zeros(init.shape(), DType::kF32)};
    for (int k = 1; k <= 5; ++k) {
      SCOPED_TRACE(::testing::Message() << "step " << k);
      const std::string p = absl::StrCat("step", k, ".");
      const AdamWStepArgs a = Args(GetAsDouble(t.at(p + "lr"), 0), GetAsDouble(hp, 1), GetAsDouble(hp, 2),
                                   GetAsDouble(hp, 3), GetAsDouble(hp, 4), GetAsDouble(t.at(p + "clip_coef"), 0), k);
      ASSERT_TRUE(cpu::AdamWStep(&s.param, t.at(p + "grad." + name), &s.exp_avg, &s.exp_avg_sq, a).ok());
      // The same f32 operations as torch: the moments agree to the bit on x86-64; a parameter can
      // differ by an ulp where torch's MKL sqrt is not the correctly rounded one.
      const State want{t.at(p + "param." + name), t.at(p + "exp_avg." + name), t.at(p + "exp_avg_sq." + name)};
      EXPECT_TRUE(StateClose(s, want, Tolerance{0, 1e-6}));
    }
  }
}

TEST(AdamWCpuTest, MatchesReferenceOverOddShapes) {
  for (int64_t n : kSizes) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      int set = 0;
      for (const AdamWStepArgs& args : ArgSets()) {
        SCOPED_TRACE(::testing::Message() << "n = " << n << " " << DTypeName(dt) << " args " << set++);
        State s = RandomState({n}, dt, 10 + n);
        // Three consecutive steps, each checked against the reference from the op's own inputs.
        for (int64_t k = 0; k < 3; ++k) {
          AdamWStepArgs a = args;
          a.step += k;
          const Tensor grad = RandomNormal({n}, dt, 100 + k);
          const State before = Copy(s);
          ASSERT_TRUE(cpu::AdamWStep(&s.param, grad, &s.exp_avg, &s.exp_avg_sq, a).ok());
          const Tolerance tol = dt == DType::kF32 ? Tolerance{1e-6, 1e-6} : Tolerance{1e-14, 1e-13};
          EXPECT_TRUE(StateClose(s, ReferenceStep(before, grad, a), tol));
          if (a.lr == 0) {
            EXPECT_TRUE(AllClose(s.param, before.param, Tolerance{0, 0}));
          }
        }
      }
    }
  }
}

TEST(AdamWCpuTest, AnyRankAndEmpty) {
  State s = RandomState({3, 4, 5}, DType::kF32, 3);
  const Tensor grad = RandomNormal({3, 4, 5}, DType::kF32, 4);
  State flat{s.param.Reshape({60}).Contiguous(), s.exp_avg.Reshape({60}).Contiguous(),
             s.exp_avg_sq.Reshape({60}).Contiguous()};
  const AdamWStepArgs a = Args(1e-3, 0.9, 0.999, 1e-8, 0.01, 1.0, 5);
  ASSERT_TRUE(cpu::AdamWStep(&s.param, grad, &s.exp_avg, &s.exp_avg_sq, a).ok());
  ASSERT_TRUE(cpu::AdamWStep(&flat.param, grad.Reshape({60}), &flat.exp_avg, &flat.exp_avg_sq, a).ok());
  EXPECT_TRUE(AllClose(s.param.Reshape({60}), flat.param, Tolerance{0, 0}));
  EXPECT_TRUE(AllClose(s.exp_avg_sq.Reshape({60}), flat.exp_avg_sq, Tolerance{0, 0}));

  Tensor empty = Tensor::Empty({0, 3}, DType::kF32), em = Tensor::Empty({0, 3}, DType::kF32),
         ev = Tensor::Empty({0, 3}, DType::kF32);
  EXPECT_TRUE(cpu::AdamWStep(&empty, empty, &em, &ev, a).ok());
  auto sum = cpu::SumOfSquares(empty);
  ASSERT_TRUE(sum.ok());
  EXPECT_EQ(*sum, 0.0);
}

TEST(AdamWCpuTest, SumOfSquaresMatchesReference) {
  for (int64_t n : kSizes) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(::testing::Message() << "n = " << n << " " << DTypeName(dt));
      const Tensor x = RandomNormal({n}, dt, 50 + n);
      long double want = 0;
      for (int64_t i = 0; i < n; ++i) want += static_cast<long double>(GetAsDouble(x, i)) * GetAsDouble(x, i);
      auto got = cpu::SumOfSquares(x);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_NEAR(*got, static_cast<double>(want), 1e-14 * static_cast<double>(want));
      auto again = cpu::SumOfSquares(x);
      ASSERT_TRUE(again.ok());
      EXPECT_EQ(*got, *again);
    }
  }
  const Tensor nan = Tensor::FromVector<float>({3}, {1.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f});
  auto sum = cpu::SumOfSquares(nan);
  ASSERT_TRUE(sum.ok());
  EXPECT_TRUE(std::isnan(*sum));
  const Tensor big = Tensor::FromVector<float>({2}, {3e30f, 4e30f});  // f32 squares would overflow
  sum = cpu::SumOfSquares(big);
  ASSERT_TRUE(sum.ok());
  EXPECT_NEAR(std::sqrt(*sum), 5e30, 5e30 * 1e-7);
}

TEST(AdamWCpuTest, BadOperands) {
  State s = RandomState({4, 3}, DType::kF32, 5);
  const Tensor grad = RandomNormal({4, 3}, DType::kF32, 6);
  const AdamWStepArgs ok = Args(1e-3, 0.9, 0.999, 1e-8, 0.01, 1.0, 1);
  const State before = Copy(s);

  const Tensor grad12 = RandomNormal({12}, DType::kF32, 6);
  EXPECT_ERROR_MENTIONS(cpu::AdamWStep(&s.param, grad12, &s.exp_avg, &s.exp_avg_sq, ok), "AdamWStep",
                        "grad must have shape [4, 3]");
  Tensor m64 = s.exp_avg.To(DType::kF64);
  EXPECT_ERROR_MENTIONS(cpu::AdamWStep(&s.param, grad, &m64, &s.exp_avg_sq, ok), "AdamWStep",
                        "exp_avg (f64) and param (f32)");
  const Tensor transposed = RandomNormal({3, 4}, DType::kF32, 7).Transposed();
  EXPECT_ERROR_MENTIONS(cpu::AdamWStep(&s.param, transposed, &s.exp_avg, &s.exp_avg_sq, ok), "AdamWStep",
                        "grad must be contiguous");
  Tensor vb = s.exp_avg_sq.To(DType::kBF16), pb = s.param.To(DType::kBF16), mb = s.exp_avg.To(DType::kBF16);
  EXPECT_ERROR_MENTIONS(cpu::AdamWStep(&pb, grad.To(DType::kBF16), &mb, &vb, ok), "AdamWStep", "param must be f32/f64",
                        "bf16");
  Tensor undefined;
  EXPECT_ERROR_MENTIONS(cpu::AdamWStep(&undefined, grad, &s.exp_avg, &s.exp_avg_sq, ok), "AdamWStep",
                        "param is not defined");

  const double nan = std::numeric_limits<double>::quiet_NaN();
  struct BadArg {
    AdamWStepArgs args;
    const char* mentions;
  };
  const BadArg bad[] = {
      {Args(-1e-3, 0.9, 0.999, 1e-8, 0.0, 1.0, 1), "lr must be finite and >= 0"},
      {Args(nan, 0.9, 0.999, 1e-8, 0.0, 1.0, 1), "lr must be finite and >= 0"},
      {Args(1e-3, 1.0, 0.999, 1e-8, 0.0, 1.0, 1), "beta1 must be in [0, 1)"},
      {Args(1e-3, 0.9, -0.1, 1e-8, 0.0, 1.0, 1), "beta2 must be in [0, 1)"},
      {Args(1e-3, 0.9, nan, 1e-8, 0.0, 1.0, 1), "beta2 must be in [0, 1)"},
      {Args(1e-3, 0.9, 0.999, -1.0, 0.0, 1.0, 1), "eps must be finite and >= 0"},
      {Args(1e-3, 0.9, 0.999, 1e-8, -0.1, 1.0, 1), "weight_decay must be finite and >= 0"},
      {Args(1e-3, 0.9, 0.999, 1e-8, 0.0, std::numeric_limits<double>::infinity(), 1), "grad_scale must be finite"},
      {Args(1e-3, 0.9, 0.999, 1e-8, 0.0, 1.0, 0), "step must be >= 1"},
  };
  for (const BadArg& b : bad) {
    EXPECT_ERROR_MENTIONS(cpu::AdamWStep(&s.param, grad, &s.exp_avg, &s.exp_avg_sq, b.args), "AdamWStep", b.mentions);
  }
  EXPECT_TRUE(StateClose(s, before, Tolerance{0, 0}));  // nothing written on error

  EXPECT_ERROR_MENTIONS(cpu::SumOfSquares(transposed).status(), "SumOfSquares", "x must be contiguous");
  EXPECT_ERROR_MENTIONS(cpu::SumOfSquares(Tensor::Zeros({3}, DType::kI32)).status(), "SumOfSquares",
                        "x must be f32/f64", "i32");
  EXPECT_ERROR_MENTIONS(cpu::SumOfSquares(Tensor()).status(), "SumOfSquares", "not defined");
}

#if SIGMATUNE_WITH_CUDA
TEST(AdamWCudaTest, MatchesCpuOverOddShapes) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{111}, int64_t{4097}, int64_t{300001}}) {
    int set = 0;
    for (const AdamWStepArgs& args : ArgSets()) {
      SCOPED_TRACE(::testing::Message() << "n = " << n << " args " << set++);
      State cpu_state = RandomState({n}, DType::kF32, 20 + n);
      auto dp = ctx->ToDevice(cpu_state.param), dm = ctx->ToDevice(cpu_state.exp_avg),
           dv = ctx->ToDevice(cpu_state.exp_avg_sq);
      ASSERT_TRUE(dp.ok() && dm.ok() && dv.ok());
      for (int64_t k = 0; k < 3; ++k) {
        AdamWStepArgs a = args;
        a.step += k;
        const Tensor grad = RandomNormal({n}, DType::kF32, 200 + k);
        auto dg = ctx->ToDevice(grad);
        ASSERT_TRUE(dg.ok());
        ASSERT_TRUE(cuda::AdamWStep(*ctx, &*dp, *dg, &*dm, &*dv, a).ok());
        ASSERT_TRUE(cpu::AdamWStep(&cpu_state.param, grad, &cpu_state.exp_avg, &cpu_state.exp_avg_sq, a).ok());
      }
      auto hp = ctx->ToHost(*dp), hm = ctx->ToHost(*dm), hv = ctx->ToHost(*dv);
      ASSERT_TRUE(hp.ok() && hm.ok() && hv.ok());
      // The same correctly rounded operations in the same order: equal to the last bit on x86-64
      // (no contraction on the CPU side); allow an ulp for hosts whose compiler fuses.
      EXPECT_TRUE(StateClose(State{*hp, *hm, *hv}, cpu_state, Tolerance{1e-12, 3e-7}));
    }
  }
}

TEST(AdamWCudaTest, SumOfSquaresMatchesCpu) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{111}, int64_t{4097}, int64_t{1000003}}) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(::testing::Message() << "n = " << n << " " << DTypeName(dt));
      const Tensor x = RandomNormal({n}, dt, 60 + n);
      auto dx = ctx->ToDevice(x);
      ASSERT_TRUE(dx.ok());
      auto got = cuda::SumOfSquares(*ctx, *dx);
      auto want = cpu::SumOfSquares(x);
      ASSERT_TRUE(got.ok() && want.ok()) << got.status() << want.status();
      EXPECT_NEAR(*got, *want, 1e-12 * *want);
      auto again = cuda::SumOfSquares(*ctx, *dx);
      ASSERT_TRUE(again.ok());
      EXPECT_EQ(*got, *again);  // deterministic
    }
  }
}

TEST(AdamWCudaTest, BadOperands) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  auto dp = ctx->Zeros({4, 3}, DType::kF32), dm = ctx->Zeros({4, 3}, DType::kF32), dv = ctx->Zeros({4, 3}, DType::kF32);
  ASSERT_TRUE(dp.ok() && dm.ok() && dv.ok());
  const Tensor host_grad = Tensor::Zeros({4, 3}, DType::kF32);
  const AdamWStepArgs ok = Args(1e-3, 0.9, 0.999, 1e-8, 0.01, 1.0, 1);
  EXPECT_ERROR_MENTIONS(cuda::AdamWStep(*ctx, &*dp, host_grad, &*dm, &*dv, ok), "grad", "same device");
  auto d64 = ctx->Zeros({4, 3}, DType::kF64);
  ASSERT_TRUE(d64.ok());
  Tensor p64 = *d64, m64 = *ctx->Zeros({4, 3}, DType::kF64), v64 = *ctx->Zeros({4, 3}, DType::kF64);
  EXPECT_ERROR_MENTIONS(cuda::AdamWStep(*ctx, &p64, p64, &m64, &v64, ok), "cuda AdamWStep", "f32", "f64");
  EXPECT_ERROR_MENTIONS(cuda::AdamWStep(*ctx, &*dp, *dp, &*dm, &*dv, Args(1e-3, 0.9, 0.999, 1e-8, 0, 1, 0)),
                        "step must be >= 1");
  EXPECT_ERROR_MENTIONS(cuda::SumOfSquares(*ctx, host_grad).status(), "SumOfSquares x");
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
