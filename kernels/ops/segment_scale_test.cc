#include "kernels/ops/segment_scale.h"

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

Tensor Cu(const std::vector<int32_t>& offsets) {
  return Tensor::FromVector<int32_t>({static_cast<int64_t>(offsets.size())}, offsets);
}

Tensor Bad(int32_t start) { return Tensor::FromVector<int32_t>({1}, {start}); }

// Straightforward reference in double: y (f64) and the number of bad segments.
struct Reference {
  Tensor y;
  int32_t bad = 0;
};
Reference ReferenceScale(const Tensor& x, const std::vector<int32_t>& cu) {
  const int64_t rows = x.dim(0), cols = x.dim(1);
  Reference ref{Tensor::Zeros({rows, cols}, DType::kF64)};
  const Tensor xc = x.Contiguous();
  for (size_t s = 0; s + 1 < cu.size(); ++s) {
    if (cu[s] == cu[s + 1] || cols == 0) continue;
    double max = -std::numeric_limits<double>::infinity();
    bool finite = true;
    for (int64_t i = cu[s] * cols; i < cu[s + 1] * cols; ++i) {
      const double v = GetAsDouble(xc, i);
      finite = finite && std::isfinite(v);
      if (v > max) max = v;
    }
    const double mu = std::fabs(max);
    if (!finite || mu == 0 || !std::isfinite(mu)) {
      ++ref.bad;
      continue;
    }
    for (int64_t i = cu[s] * cols; i < cu[s + 1] * cols; ++i) ref.y.data<double>()[i] = GetAsDouble(xc, i) / mu;
  }
  return ref;
}

// Tolerance of y against the double reference: the division is rounded once in y's dtype (the
// reference rounds the double quotient again, at most one more ulp).
Tolerance YTolerance(DType y_dtype) { return y_dtype == DType::kF32 ? Tolerance{0, 1.2e-7} : Tolerance{0, 0}; }

// Random segment boundaries over [lead, rows - tail), including empty segments.
std::vector<int32_t> RandomSegments(int64_t rows, int lead, int tail, uint64_t seed) {
  std::vector<int32_t> cu = {lead};
  uint64_t state = seed * 6364136223846793005ull + 1442695040888963407ull;
  while (cu.back() < rows - tail) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const int32_t len = static_cast<int32_t>((state >> 33) % 40);  // 0 (empty) to 39 rows
    cu.push_back(static_cast<int32_t>(std::min<int64_t>(cu.back() + len, rows - tail)));
  }
  return cu;
}

struct Case {
  int64_t rows, cols;
  int lead, tail;  // padding rows before the first and after the last segment
};
constexpr Case kCases[] = {{1, 1, 0, 0}, {7, 7, 1, 2}, {111, 111, 0, 5}, {1100, 33, 3, 0}, {60, 1030, 2, 2}};

TEST(SegmentScaleCpuTest, MatchesReferenceOverAwkwardShapes) {
  for (const Case& c : kCases) {
    for (DType x_dt : {DType::kF32, DType::kF64}) {
      for (DType y_dt : {DType::kF32, DType::kF64}) {
        if (SizeOf(y_dt) < SizeOf(x_dt)) continue;
        SCOPED_TRACE(::testing::Message() << c.rows << " x " << c.cols << " " << DTypeName(x_dt) << " -> "
                                          << DTypeName(y_dt));
        const std::vector<int32_t> cu = RandomSegments(c.rows, c.lead, c.tail, c.rows);
        // A strided x: the first cols columns of a wider matrix.
        const Tensor wide = RandomNormal({c.rows, c.cols + 3}, x_dt, c.cols);
        const Tensor x = wide.Slice(1, 0, c.cols);
        Tensor y = Tensor::Empty({c.rows, c.cols}, y_dt);
        Tensor bad = Bad(5);
        const absl::Status s = cpu::ScaleSegmentsByAbsMax(x, Cu(cu), &y, &bad);
        ASSERT_TRUE(s.ok()) << s;
        const Reference ref = ReferenceScale(x, cu);
        EXPECT_TRUE(AllClose(y, ref.y, YTolerance(y_dt)));
        EXPECT_EQ(bad.data<int32_t>()[0], 5 + ref.bad);
      }
    }
  }
}

TEST(SegmentScaleCpuTest, SignedMaxThenAbs) {
  // Segment 0 is all negative: max = -1, mu = 1. Segment 1: max = 4 although |-10| is larger.
  const Tensor x = Tensor::FromVector<float>({4, 2}, {-2, -4, -8, -1, 4, -10, 2, 1});
  Tensor y = Tensor::Empty({4, 2}, DType::kF32);
  Tensor bad = Bad(0);
  ASSERT_TRUE(cpu::ScaleSegmentsByAbsMax(x, Cu({0, 2, 4}), &y, &bad).ok());
  const Tensor want = Tensor::FromVector<float>({4, 2}, {-2, -4, -8, -1, 1, -2.5f, 0.5f, 0.25f});
  EXPECT_TRUE(AllClose(y, want, Tolerance{0, 0}));
  EXPECT_EQ(bad.data<int32_t>()[0], 0);
}

TEST(SegmentScaleCpuTest, BadSegmentsCountAndZero) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    Tensor x = RandomNormal({12, 3}, DType::kF64, 9);
    double* p = x.data<double>();
    p[0 * 3 + 1] = std::numeric_limits<double>::quiet_NaN();  // segment [0, 2): NaN
    for (int i = 2 * 3; i < 4 * 3; ++i) p[i] = 0.0;             // segment [2, 4): all zero
    p[5 * 3 + 2] = -std::numeric_limits<double>::infinity();    // segment [4, 7): -inf
    p[8 * 3 + 0] = std::numeric_limits<double>::infinity();     // segment [7, 10): +inf
    const std::vector<int32_t> cu = {0, 2, 4, 7, 10, 10, 11};   // [10, 10) empty, [10, 11) fine, row 11 padding
    const Tensor xd = x.To(dt);
    Tensor y = Tensor::Empty({12, 3}, dt);
    Tensor bad = Bad(7);
    ASSERT_TRUE(cpu::ScaleSegmentsByAbsMax(xd, Cu(cu), &y, &bad).ok());
    EXPECT_EQ(bad.data<int32_t>()[0], 7 + 4);  // incremented, not reset
    const Reference ref = ReferenceScale(xd, cu);
    EXPECT_EQ(ref.bad, 4);
    EXPECT_TRUE(AllClose(y, ref.y, YTolerance(dt)));  // bad segments and padding are zero
    for (int64_t i = 0; i < 10 * 3; ++i) EXPECT_EQ(GetAsDouble(y, i), 0.0) << i;
  }
}

TEST(SegmentScaleCpuTest, InPlaceAndNoSegments) {
  const std::vector<int32_t> cu = {1, 4, 9};
  Tensor x = RandomNormal({10, 5}, DType::kF32, 3);
  const Reference ref = ReferenceScale(x, cu);
  Tensor bad = Bad(0);
  ASSERT_TRUE(cpu::ScaleSegmentsByAbsMax(x, Cu(cu), &x, &bad).ok());
  EXPECT_TRUE(AllClose(x, ref.y, YTolerance(DType::kF32)));
  // cu_seqlens = {0}: no segments, every row is padding.
  const Tensor x2 = RandomNormal({3, 4}, DType::kF64, 4);
  Tensor y2 = Tensor::Empty({3, 4}, DType::kF64);
  ASSERT_TRUE(cpu::ScaleSegmentsByAbsMax(x2, Cu({0}), &y2, &bad).ok());
  EXPECT_TRUE(AllClose(y2, Tensor::Zeros({3, 4}, DType::kF64), Tolerance{0, 0}));
  EXPECT_EQ(bad.data<int32_t>()[0], 0);
}

TEST(SegmentScaleCpuTest, BadOperands) {
  const Tensor x = RandomNormal({6, 4}, DType::kF32, 5);
  Tensor y = Tensor::Empty({6, 4}, DType::kF32);
  Tensor bad = Bad(0);
  EXPECT_ERROR_MENTIONS(cpu::ScaleSegmentsByAbsMax(x, Cu({0, 3, 2}), &y, &bad), "cu_seqlens", "non-decreasing",
                        "cu_seqlens[1] = 3");
  EXPECT_ERROR_MENTIONS(cpu::ScaleSegmentsByAbsMax(x, Cu({0, 7}), &y, &bad), "cu_seqlens[1] = 7", "6 rows");
  EXPECT_ERROR_MENTIONS(cpu::ScaleSegmentsByAbsMax(x, Cu({-1, 2}), &y, &bad), "cu_seqlens[0] = -1");
  EXPECT_ERROR_MENTIONS(cpu::ScaleSegmentsByAbsMax(x, Cu({}), &y, &bad), "cu_seqlens", "num_segments + 1");
  const Tensor cu64 = Tensor::FromVector<int64_t>({2}, {0, 6});
  EXPECT_ERROR_MENTIONS(cpu::ScaleSegmentsByAbsMax(x, cu64, &y, &bad), "cu_seqlens must be i32", "i64");
  const Tensor x64 = x.To(DType::kF64);
  EXPECT_ERROR_MENTIONS(cpu::ScaleSegmentsByAbsMax(x64, Cu({0, 6}), &y, &bad), "y (f32)", "at least as wide",
                        "x (f64)");
  Tensor y_short = Tensor::Empty({5, 4}, DType::kF32);
  EXPECT_ERROR_MENTIONS(cpu::ScaleSegmentsByAbsMax(x, Cu({0, 6}), &y_short, &bad), "y must have shape [6, 4]");
  Tensor y_bf16 = Tensor::Empty({6, 4}, DType::kBF16);
  EXPECT_ERROR_MENTIONS(cpu::ScaleSegmentsByAbsMax(x, Cu({0, 6}), &y_bf16, &bad), "y must be f32/f64", "bf16");
  Tensor bad2 = Tensor::Zeros({2}, DType::kI32);
  EXPECT_ERROR_MENTIONS(cpu::ScaleSegmentsByAbsMax(x, Cu({0, 6}), &y, &bad2), "bad must have shape [1]");
  Tensor bad_f = Tensor::Zeros({1}, DType::kF32);
  EXPECT_ERROR_MENTIONS(cpu::ScaleSegmentsByAbsMax(x, Cu({0, 6}), &y, &bad_f), "bad must be i32", "f32");
  const Tensor square = RandomNormal({4, 4}, DType::kF32, 6);
  Tensor y4 = Tensor::Empty({4, 4}, DType::kF32);
  EXPECT_ERROR_MENTIONS(cpu::ScaleSegmentsByAbsMax(square.Transposed(), Cu({0, 4}), &y4, &bad), "x must be row-major",
                        "unit column stride");
  const Tensor ints = Tensor::Zeros({6, 4}, DType::kI32);
  EXPECT_ERROR_MENTIONS(cpu::ScaleSegmentsByAbsMax(ints, Cu({0, 6}), &y, &bad), "x must be f32/f64/bf16/f16", "i32");
  const Tensor xb = x.To(DType::kBF16);
  EXPECT_ERROR_MENTIONS(cpu::ScaleSegmentsByAbsMax(xb, Cu({0, 6}), &y, &bad), "cpu ScaleSegmentsByAbsMax",
                        "f32 or f64", "bf16");
  const Tensor vec = Tensor::Empty({6}, DType::kF32);
  EXPECT_ERROR_MENTIONS(cpu::ScaleSegmentsByAbsMax(vec, Cu({0, 6}), &y, &bad), "x must be a [T, n] matrix");
}

#if SIGMATUNE_WITH_CUDA
TEST(SegmentScaleCudaTest, MatchesCpuOverAwkwardShapes) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  constexpr Case kGpuCases[] = {{1, 1, 0, 0}, {7, 7, 1, 2}, {111, 111, 0, 5}, {2100, 1030, 3, 4}};
  for (const Case& c : kGpuCases) {
    for (DType x_dt : {DType::kF32, DType::kF64, DType::kBF16, DType::kF16}) {
      for (DType y_dt : {DType::kF32, DType::kF64}) {
        if (SizeOf(y_dt) < SizeOf(x_dt)) continue;
        SCOPED_TRACE(::testing::Message() << c.rows << " x " << c.cols << " " << DTypeName(x_dt) << " -> "
                                          << DTypeName(y_dt));
        const std::vector<int32_t> cu = RandomSegments(c.rows, c.lead, c.tail, c.rows + 1);
        Tensor x = RandomNormal({c.rows, c.cols}, x_dt, c.cols + 1);
        if (c.rows > 20) {  // one bad segment: a NaN in the row after the first
          Tensor x64 = x.To(DType::kF64);
          x64.data<double>()[(cu[0] + 1) * c.cols] = std::numeric_limits<double>::quiet_NaN();
          x = x64.To(x_dt);
        }
        // The CPU reference on the widened x (exact) with y's dtype.
        const DType cpu_x_dt = x_dt == DType::kF64 ? DType::kF64 : DType::kF32;
        Tensor want = Tensor::Empty({c.rows, c.cols}, y_dt);
        Tensor want_bad = Bad(3);
        ASSERT_TRUE(cpu::ScaleSegmentsByAbsMax(x.To(cpu_x_dt), Cu(cu), &want, &want_bad).ok());

        auto dx = ctx->ToDevice(x), dbad = ctx->ToDevice(Bad(3));
        auto dy = ctx->Allocate({c.rows, c.cols}, y_dt);
        ASSERT_TRUE(dx.ok() && dbad.ok() && dy.ok());
        const absl::Status s = cuda::ScaleSegmentsByAbsMax(*ctx, *dx, Cu(cu), &*dy, &*dbad);
        ASSERT_TRUE(s.ok()) << s;
        auto got = ctx->ToHost(*dy), got_bad = ctx->ToHost(*dbad);
        ASSERT_TRUE(got.ok() && got_bad.ok());
        EXPECT_TRUE(AllClose(*got, want, Tolerance{0, 0}));  // same IEEE division
        EXPECT_EQ(got_bad->data<int32_t>()[0], want_bad.data<int32_t>()[0]);
        if (c.rows > 20) {
          EXPECT_GE(want_bad.data<int32_t>()[0], 4);
        }
      }
    }
  }
}

TEST(SegmentScaleCudaTest, InPlaceAndStridedX) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  const std::vector<int32_t> cu = {0, 5, 5, 17, 40};
  const Tensor wide = RandomNormal({41, 70}, DType::kF32, 8);
  const Tensor x = wide.Slice(1, 0, 64);
  Tensor want = Tensor::Empty({41, 64}, DType::kF32);
  Tensor want_bad = Bad(0);
  ASSERT_TRUE(cpu::ScaleSegmentsByAbsMax(x, Cu(cu), &want, &want_bad).ok());
  auto dwide = ctx->ToDevice(wide), dbad = ctx->ToDevice(Bad(0));
  auto dy = ctx->Allocate({41, 64}, DType::kF32);
  ASSERT_TRUE(dwide.ok() && dbad.ok() && dy.ok());
  ASSERT_TRUE(cuda::ScaleSegmentsByAbsMax(*ctx, dwide->Slice(1, 0, 64), Cu(cu), &*dy, &*dbad).ok());
  auto got = ctx->ToHost(*dy);
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(AllClose(*got, want, Tolerance{0, 0}));
  auto dx = ctx->ToDevice(x.Contiguous());
  ASSERT_TRUE(dx.ok());
  ASSERT_TRUE(cuda::ScaleSegmentsByAbsMax(*ctx, *dx, Cu(cu), &*dx, &*dbad).ok());
  auto got_in_place = ctx->ToHost(*dx);
  ASSERT_TRUE(got_in_place.ok());
  EXPECT_TRUE(AllClose(*got_in_place, want, Tolerance{0, 0}));
  Tensor host_bad = Bad(0);
  EXPECT_ERROR_MENTIONS(cuda::ScaleSegmentsByAbsMax(*ctx, *dx, Cu(cu), &*dy, &host_bad), "bad", "x's device");
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
