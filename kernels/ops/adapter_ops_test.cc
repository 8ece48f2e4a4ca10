#include "kernels/ops/adapter_ops.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/gpu.h"
#include "kernels/testing/random.h"
#include "kernels/testing/status.h"

namespace sigmatune::kernels {
namespace {

using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::Tolerance;

struct Dims {
  int64_t rows, cols;
};
constexpr Dims kShapes[] = {{1, 1}, {7, 3}, {111, 7}, {1100, 33}, {5, 1030}};

// Reference values computed in double, rounded once to dt.
Tensor ReferenceScaleColumns(const Tensor& x, const Tensor& d) {
  Tensor y = Tensor::Empty(x.shape(), DType::kF64);
  for (int64_t t = 0; t < x.dim(0); ++t) {
    for (int64_t j = 0; j < x.dim(1); ++j) {
      y.data<double>()[t * x.dim(1) + j] = GetAsDouble(x, t * x.dim(1) + j) * GetAsDouble(d, j);
    }
  }
  return y.To(x.dtype());
}

Tensor ReferenceColumnDot(const Tensor& a, const Tensor& b, double beta, const Tensor& out) {
  Tensor r = Tensor::Empty(out.shape(), DType::kF64);
  for (int64_t j = 0; j < a.dim(1); ++j) {
    double sum = beta == 0 ? 0.0 : beta * GetAsDouble(out, j);
    for (int64_t t = 0; t < a.dim(0); ++t) sum += GetAsDouble(a, t * a.dim(1) + j) * GetAsDouble(b, t * a.dim(1) + j);
    r.data<double>()[j] = sum;
  }
  return r;
}

// The dropout formula evaluated element by element from DropoutUniform.
Tensor ReferenceDropout(const Tensor& x, double p, uint64_t seed) {
  Tensor y = Tensor::Empty(x.shape(), x.dtype());
  for (int64_t i = 0; i < x.numel(); ++i) {
    const bool keep = DropoutUniform(seed, static_cast<uint64_t>(i)) >= p;
    if (x.dtype() == DType::kF32) {
      y.data<float>()[i] = keep ? x.data<float>()[i] * static_cast<float>(1.0 / (1.0 - p)) : 0.0f;
    } else {
      y.data<double>()[i] = keep ? x.data<double>()[i] * (1.0 / (1.0 - p)) : 0.0;
    }
  }
  return y;
}

TEST(AdapterOpsCpuTest, ScaleColumnsMatchesReference) {
  for (const Dims& s : kShapes) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(::testing::Message() << s.rows << " x " << s.cols << " " << DTypeName(dt));
      const Tensor x = RandomNormal({s.rows, s.cols}, dt, 1), d = RandomNormal({s.cols}, dt, 2);
      Tensor y = Tensor::Empty(x.shape(), dt);
      ASSERT_TRUE(cpu::ScaleColumns(x, d, &y).ok());
      const Tensor want = ReferenceScaleColumns(x, d);
      EXPECT_TRUE(AllClose(y, want, Tolerance{0, 0}));  // one exact product, one rounding
      Tensor in_place = x.Contiguous();
      ASSERT_TRUE(cpu::ScaleColumns(in_place, d, &in_place).ok());
      EXPECT_TRUE(AllClose(in_place, want, Tolerance{0, 0}));
    }
  }
}

TEST(AdapterOpsCpuTest, ColumnDotMatchesReference) {
  for (const Dims& s : kShapes) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(::testing::Message() << s.rows << " x " << s.cols << " " << DTypeName(dt));
      const Tensor a = RandomNormal({s.rows, s.cols}, dt, 3), b = RandomNormal({s.rows, s.cols}, dt, 4);
      const Tensor start = RandomNormal({s.cols}, dt, 5);
      const Tolerance tol = dt == DType::kF32 ? Tolerance{1e-6, 1e-6} : Tolerance{1e-12, 1e-12};
      Tensor out = start.Contiguous();
      ASSERT_TRUE(cpu::ColumnDot(a, b, 0.5, &out).ok());
      EXPECT_TRUE(AllClose(out, ReferenceColumnDot(a, b, 0.5, start), tol));
      // beta == 0 does not read out (a NaN there must not leak through).
      Tensor fresh = Tensor::Empty({s.cols}, dt);
      for (int64_t j = 0; j < s.cols; ++j) {
        if (dt == DType::kF32) {
          fresh.data<float>()[j] = std::numeric_limits<float>::quiet_NaN();
        } else {
          fresh.data<double>()[j] = std::numeric_limits<double>::quiet_NaN();
        }
      }
      ASSERT_TRUE(cpu::ColumnDot(a, b, 0.0, &fresh).ok());
      EXPECT_TRUE(AllClose(fresh, ReferenceColumnDot(a, b, 0.0, start), tol));
    }
  }
}

TEST(AdapterOpsCpuTest, DropoutMaskIsDropoutUniform) {
  for (int64_t n : {1, 7, 111, 4099}) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      for (double p : {0.0, 0.05, 0.5, 0.9}) {
        SCOPED_TRACE(::testing::Message() << n << " " << DTypeName(dt) << " p = " << p);
        const Tensor x = RandomNormal({n}, dt, 6);
        Tensor y = Tensor::Empty({n}, dt);
        ASSERT_TRUE(cpu::Dropout(x, p, 1234, &y).ok());
        EXPECT_TRUE(AllClose(y, ReferenceDropout(x, p, 1234), Tolerance{0, 0}));
        if (p == 0.0) {
          EXPECT_TRUE(AllClose(y, x, Tolerance{0, 0}));
        }
        // In place, and again (a recomputed layer drops the same elements).
        Tensor in_place = x.Contiguous();
        ASSERT_TRUE(cpu::Dropout(in_place, p, 1234, &in_place).ok());
        EXPECT_TRUE(AllClose(in_place, y, Tolerance{0, 0}));
      }
    }
  }
}

TEST(AdapterOpsCpuTest, DropoutKeepsAboutOneMinusP) {
  constexpr int64_t kN = 1 << 20;
  const Tensor ones = Tensor::FromVector<float>({kN}, std::vector<float>(kN, 1.0f));
  Tensor y = Tensor::Empty({kN}, DType::kF32);
  for (double p : {0.05, 0.1, 0.5}) {
    for (uint64_t seed : {0ull, 1ull, 0xDEADBEEFull}) {
      SCOPED_TRACE(::testing::Message() << "p = " << p << " seed = " << seed);
      ASSERT_TRUE(cpu::Dropout(ones, p, seed, &y).ok());
      int64_t kept = 0;
      for (int64_t i = 0; i < kN; ++i) kept += y.data<float>()[i] != 0.0f;
      // Binomial standard deviation at p = 0.5 is 0.0005 of kN; allow ~6 of them.
      EXPECT_NEAR(static_cast<double>(kept) / kN, 1.0 - p, 3e-3);
    }
  }
  // Different seeds give different masks; the uniform is in [0, 1).
  Tensor y2 = Tensor::Empty({kN}, DType::kF32);
  ASSERT_TRUE(cpu::Dropout(ones, 0.5, 1, &y).ok());
  ASSERT_TRUE(cpu::Dropout(ones, 0.5, 2, &y2).ok());
  int64_t differ = 0;
  for (int64_t i = 0; i < kN; ++i) differ += y.data<float>()[i] != y2.data<float>()[i];
  EXPECT_NEAR(static_cast<double>(differ) / kN, 0.5, 3e-3);
  for (uint64_t i = 0; i < 1000; ++i) {
    const float u = DropoutUniform(42, i);
    EXPECT_GE(u, 0.0f);
    EXPECT_LT(u, 1.0f);
  }
}

TEST(AdapterOpsCpuTest, BadOperands) {
  const Tensor x = RandomNormal({4, 3}, DType::kF32, 7), d = RandomNormal({3}, DType::kF32, 8);
  Tensor y = Tensor::Empty({4, 3}, DType::kF32);
  const Tensor d4 = RandomNormal({4}, DType::kF32, 8);
  EXPECT_ERROR_MENTIONS(cpu::ScaleColumns(x, d4, &y), "ScaleColumns", "d must have shape [3]");
  const Tensor d64 = RandomNormal({3}, DType::kF64, 8);
  EXPECT_ERROR_MENTIONS(cpu::ScaleColumns(x, d64, &y), "ScaleColumns", "d (f64) and x (f32)");
  Tensor y_wrong = Tensor::Empty({3, 4}, DType::kF32);
  EXPECT_ERROR_MENTIONS(cpu::ScaleColumns(x, d, &y_wrong), "ScaleColumns", "y must have shape [4, 3]");
  EXPECT_ERROR_MENTIONS(cpu::ScaleColumns(x.Transposed(), d4, &y_wrong), "ScaleColumns", "x must be contiguous");
  const Tensor xb = x.To(DType::kBF16), db = d.To(DType::kBF16);
  Tensor yb = Tensor::Empty({4, 3}, DType::kBF16);
  EXPECT_ERROR_MENTIONS(cpu::ScaleColumns(xb, db, &yb), "cpu ScaleColumns", "f32 or f64", "bf16");

  Tensor out = Tensor::Empty({3}, DType::kF32);
  Tensor out4 = Tensor::Empty({4}, DType::kF32);
  EXPECT_ERROR_MENTIONS(cpu::ColumnDot(x, x, 0, &out4), "ColumnDot", "out must have shape [3]");
  EXPECT_ERROR_MENTIONS(cpu::ColumnDot(x, y_wrong, 0, &out), "ColumnDot", "b must have shape [4, 3]");
  const Tensor x64 = x.To(DType::kF64);
  EXPECT_ERROR_MENTIONS(cpu::ColumnDot(x, x64, 0, &out), "ColumnDot", "b (f64) and a (f32)");

  for (double p : {1.0, -0.1, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    EXPECT_ERROR_MENTIONS(cpu::Dropout(x, p, 0, &y), "Dropout", "p must be in [0, 1)");
  }
  Tensor flat = Tensor::Empty({12}, DType::kF32);
  EXPECT_ERROR_MENTIONS(cpu::Dropout(x, 0.1, 0, &flat), "Dropout", "y must have shape [4, 3]");
  Tensor y64 = Tensor::Empty({4, 3}, DType::kF64);
  EXPECT_ERROR_MENTIONS(cpu::Dropout(x, 0.1, 0, &y64), "Dropout", "y (f64) and x (f32)");
  const Tensor ints = Tensor::Zeros({4, 3}, DType::kI32);
  EXPECT_ERROR_MENTIONS(cpu::Dropout(ints, 0.1, 0, &y), "Dropout", "x must be f32/f64/bf16", "i32");
}

#if SIGMATUNE_WITH_CUDA
TEST(AdapterOpsCudaTest, MatchesCpuOverAwkwardShapes) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  for (const Dims& s : kShapes) {
    for (DType dt : {DType::kF32, DType::kF64, DType::kBF16}) {
      SCOPED_TRACE(::testing::Message() << s.rows << " x " << s.cols << " " << DTypeName(dt));
      // Inputs rounded to dt; the CPU reference runs in f32 (f64 for f64) on the same values.
      const DType ref_dt = dt == DType::kBF16 ? DType::kF32 : dt;
      const Tensor x = RandomNormal({s.rows, s.cols}, dt, 10), d = RandomNormal({s.cols}, dt, 11);
      const Tensor b = RandomNormal({s.rows, s.cols}, dt, 12), start = RandomNormal({s.cols}, dt, 13);
      const Tensor rx = x.To(ref_dt), rd = d.To(ref_dt), rb = b.To(ref_dt), rstart = start.To(ref_dt);
      auto dx = ctx->ToDevice(x), dd = ctx->ToDevice(d), db = ctx->ToDevice(b), dout = ctx->ToDevice(start);
      auto dy = ctx->Allocate(x.shape(), dt);
      ASSERT_TRUE(dx.ok() && dd.ok() && db.ok() && dout.ok() && dy.ok());

      ASSERT_TRUE(cuda::ScaleColumns(*ctx, *dx, *dd, &*dy).ok());
      Tensor want = Tensor::Empty(x.shape(), ref_dt);
      ASSERT_TRUE(cpu::ScaleColumns(rx, rd, &want).ok());
      auto got = ctx->ToHost(*dy);
      ASSERT_TRUE(got.ok());
      // f32/f64: the same single rounding; bf16: the f32 result rounded once more.
      EXPECT_TRUE(AllClose(*got, want.To(dt), Tolerance{0, 0}));

      ASSERT_TRUE(cuda::ColumnDot(*ctx, *dx, *db, 0.5, &*dout).ok());
      Tensor want_dot = rstart.Contiguous();
      ASSERT_TRUE(cpu::ColumnDot(rx, rb, 0.5, &want_dot).ok());
      auto got_dot = ctx->ToHost(*dout);
      ASSERT_TRUE(got_dot.ok());
      const Tolerance dot_tol = dt == DType::kF64   ? Tolerance{1e-12, 1e-12}
                                : dt == DType::kF32 ? Tolerance{1e-4, 1e-5}
                                                    : Tolerance{2e-2, 1e-2};
      EXPECT_TRUE(AllClose(*got_dot, want_dot, dot_tol));

      for (double p : {0.0, 0.1, 0.5}) {
        SCOPED_TRACE(::testing::Message() << "p = " << p);
        ASSERT_TRUE(cuda::Dropout(*ctx, *dx, p, 77, &*dy).ok());
        Tensor want_drop = Tensor::Empty(x.shape(), ref_dt);
        ASSERT_TRUE(cpu::Dropout(rx, p, 77, &want_drop).ok());
        auto got_drop = ctx->ToHost(*dy);
        ASSERT_TRUE(got_drop.ok());
        EXPECT_TRUE(AllClose(*got_drop, want_drop.To(dt), Tolerance{0, 0}));
        // The masks are bit-identical: the same zeros (x has no zeros).
        for (int64_t i = 0; i < x.numel(); ++i) {
          ASSERT_EQ(GetAsDouble(*got_drop, i) == 0.0, GetAsDouble(want_drop, i) == 0.0) << "element " << i;
        }
      }
    }
  }
}

TEST(AdapterOpsCudaTest, BadOperands) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  auto dx = ctx->Allocate({4, 3}, DType::kF32);
  ASSERT_TRUE(dx.ok());
  const Tensor host_d = Tensor::Zeros({3}, DType::kF32);
  Tensor y = *ctx->Allocate({4, 3}, DType::kF32);
  EXPECT_ERROR_MENTIONS(cuda::ScaleColumns(*ctx, *dx, host_d, &y), "d", "same device");
  EXPECT_ERROR_MENTIONS(cuda::Dropout(*ctx, *dx, 1.0, 0, &y), "Dropout", "p must be in [0, 1)");
  auto dh = ctx->Allocate({4, 3}, DType::kF16);
  ASSERT_TRUE(dh.ok());
  EXPECT_ERROR_MENTIONS(cuda::Dropout(*ctx, *dh, 0.1, 0, &*dh), "Dropout", "f16");
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
