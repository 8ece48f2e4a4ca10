// The KaSA (both forms) and SORSA regularisers on the CPU backend: values against dense double
// computations (the reference form against explicit n x n / m x m Gram matrices), gradients against
// finite differences in f64, accumulation into existing gradients, the 0/0 guard, KaSA's init value
// (METHODS.md §14 recipe 6) and argument errors.
#include "kernels/peft/regularizer.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/model/backend.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/finite_diff.h"
#include "kernels/testing/random.h"
#include "kernels/testing/status.h"

namespace sigmatune::peft {
namespace {

using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::NumericalGradient;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::Tolerance;

constexpr int64_t kM = 9, kN = 7, kR = 3;

// ||op(X) op(X)^T - I||_F in double, where op(X) = X (rows = true) or X^T: the Gram matrix of the
// rows (or columns) of a [rows, cols] tensor.
double GramDistance(const Tensor& x, bool rows) {
  const int64_t p = rows ? x.dim(0) : x.dim(1), q = rows ? x.dim(1) : x.dim(0);
  auto at = [&](int64_t i, int64_t k) { return rows ? GetAsDouble(x, i * x.dim(1) + k) : GetAsDouble(x, k * x.dim(1) + i); };
  double sum = 0.0;
  for (int64_t i = 0; i < p; ++i) {
    for (int64_t j = 0; j < p; ++j) {
      double g = 0.0;
      for (int64_t k = 0; k < q; ++k) g += at(i, k) * at(j, k);
      if (i == j) g -= 1.0;
      sum += g * g;
    }
  }
  return std::sqrt(sum);
}

double SumOfSquares(const Tensor& t) {
  double s = 0.0;
  for (int64_t i = 0; i < t.numel(); ++i) s += GetAsDouble(t, i) * GetAsDouble(t, i);
  return s;
}

Tensor Plus(const Tensor& a, const Tensor& b, double scale_b) {
  Tensor out = a.To(DType::kF64);
  for (int64_t i = 0; i < out.numel(); ++i) out.data<double>()[i] += scale_b * GetAsDouble(b, i);
  return out;
}

struct Factors {
  Tensor a, b, d;
  Factors(DType dt, uint64_t seed, double spread = 0.4) {
    a = RandomNormal({kR, kN}, dt, seed);
    b = RandomNormal({kM, kR}, dt, seed + 1);
    d = RandomNormal({kR}, dt, seed + 2);
    // Keep the Gram matrices away from I (the norms are not differentiable at 0).
    for (Tensor* t : {&a, &b}) {
      for (int64_t i = 0; i < t->numel(); ++i) {
        if (dt == DType::kF32) t->data<float>()[i] *= static_cast<float>(spread);
        else t->data<double>()[i] *= spread;
      }
    }
  }
};

class KasaRegularizerTest : public ::testing::TestWithParam<KasaRegularizerForm> {
 protected:
  bool reference() const { return GetParam() == KasaRegularizerForm::kReference; }
  model::CpuBackend backend_;
};

TEST_P(KasaRegularizerTest, ValueMatchesDenseComputation) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    const Factors f(dt, 1);
    const KasaRegularizerOptions options{GetParam(), 0.3, 0.7, 0.25};
    auto value = KasaRegularizer(backend_, options, f.a, f.b, f.d, nullptr, nullptr, nullptr);
    ASSERT_TRUE(value.ok()) << value.status();
    // PEFT: the r x r Gram matrices A A^T and B^T B; reference: the n x n A^T A and m x m B B^T.
    const double l3 = reference() ? GramDistance(f.a, /*rows=*/false) + GramDistance(f.b, /*rows=*/true)
                                  : GramDistance(f.a, /*rows=*/true) + GramDistance(f.b, /*rows=*/false);
    const double l2 = SumOfSquares(f.d);
    const double tol = dt == DType::kF32 ? 1e-5 : 1e-12;
    EXPECT_NEAR(value->l2, l2, tol * l2);
    EXPECT_NEAR(value->l3, l3, tol * l3);
    EXPECT_NEAR(value->total, 0.25 * (0.3 * l2 + 0.7 * l3), tol * value->total);
  }
}

TEST_P(KasaRegularizerTest, GradientsMatchFiniteDifferencesAndAccumulate) {
  const Factors f(DType::kF64, 2);
  const KasaRegularizerOptions options{GetParam(), 0.3, 0.7, 0.25};
  auto total = [&](const Tensor& a, const Tensor& b, const Tensor& d) {
    auto v = KasaRegularizer(backend_, options, a, b, d, nullptr, nullptr, nullptr);
    ST_CHECK(v.ok()) << v.status();
    return v->total;
  };
  // Gradients start non-zero: the regulariser adds to them.
  const Tensor ga0 = RandomNormal({kR, kN}, DType::kF64, 10), gb0 = RandomNormal({kM, kR}, DType::kF64, 11);
  const Tensor gd0 = RandomNormal({kR}, DType::kF64, 12);
  Tensor ga = ga0.Contiguous(), gb = gb0.Contiguous(), gd = gd0.Contiguous();
  auto value = KasaRegularizer(backend_, options, f.a, f.b, f.d, &ga, &gb, &gd);
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_NEAR(value->total, total(f.a, f.b, f.d), 1e-15);
  const Tolerance tol{1e-8, 1e-7};
  EXPECT_TRUE(AllClose(ga, Plus(ga0, NumericalGradient([&](const Tensor& a) { return total(a, f.b, f.d); }, f.a), 1), tol));
  EXPECT_TRUE(AllClose(gb, Plus(gb0, NumericalGradient([&](const Tensor& b) { return total(f.a, b, f.d); }, f.b), 1), tol));
  EXPECT_TRUE(AllClose(gd, Plus(gd0, NumericalGradient([&](const Tensor& d) { return total(f.a, f.b, d); }, f.d), 1), tol));
}

TEST_P(KasaRegularizerTest, F32GradientsMatchF64) {
  const Factors f64(DType::kF64, 3);
  const KasaRegularizerOptions options{GetParam(), 1e-2, 1e-1, 1.0};
  Tensor ga = Tensor::Zeros({kR, kN}, DType::kF64), gb = Tensor::Zeros({kM, kR}, DType::kF64);
  Tensor gd = Tensor::Zeros({kR}, DType::kF64);
  ASSERT_TRUE(KasaRegularizer(backend_, options, f64.a, f64.b, f64.d, &ga, &gb, &gd).ok());
  const Tensor a = f64.a.To(DType::kF32), b = f64.b.To(DType::kF32), d = f64.d.To(DType::kF32);
  Tensor ga32 = Tensor::Zeros({kR, kN}, DType::kF32), gb32 = Tensor::Zeros({kM, kR}, DType::kF32);
  Tensor gd32 = Tensor::Zeros({kR}, DType::kF32);
  ASSERT_TRUE(KasaRegularizer(backend_, options, a, b, d, &ga32, &gb32, &gd32).ok());
  EXPECT_TRUE(AllClose(ga32, ga, Tolerance{1e-6, 1e-5}));
  EXPECT_TRUE(AllClose(gb32, gb, Tolerance{1e-6, 1e-5}));
  EXPECT_TRUE(AllClose(gd32, gd, Tolerance{1e-6, 1e-5}));
}

INSTANTIATE_TEST_SUITE_P(Forms, KasaRegularizerTest,
                         ::testing::Values(KasaRegularizerForm::kPeft, KasaRegularizerForm::kReference));

// METHODS.md §14 recipe 6: at init (B = 0) L2 = ||d||^2 and PEFT's L3 = sqrt(r) + ||A A^T - I||_F;
// the reference form gives sqrt(m) + ||A^T A - I_n||_F.
TEST(KasaRegularizerInitTest, ZeroB) {
  model::CpuBackend backend;
  const Tensor a = RandomNormal({kR, kN}, DType::kF32, 4), d = RandomNormal({kR}, DType::kF32, 5);
  const Tensor b = Tensor::Zeros({kM, kR}, DType::kF32);
  Tensor gb = Tensor::Zeros({kM, kR}, DType::kF32), ga = Tensor::Zeros({kR, kN}, DType::kF32);
  auto peft = KasaRegularizer(backend, {KasaRegularizerForm::kPeft, 1e-4, 1e-3, 1.0}, a, b, d, &ga, &gb, nullptr);
  ASSERT_TRUE(peft.ok()) << peft.status();
  EXPECT_NEAR(peft->l2, SumOfSquares(d), 1e-5 * SumOfSquares(d));
  const double expected = std::sqrt(static_cast<double>(kR)) + GramDistance(a, /*rows=*/true);
  EXPECT_NEAR(peft->l3, expected, 1e-5 * expected);
  EXPECT_TRUE(AllClose(gb, Tensor::Zeros({kM, kR}, DType::kF32), Tolerance{0, 0}));  // B = 0: no B gradient
  auto ref = KasaRegularizer(backend, {KasaRegularizerForm::kReference, 1e-4, 1e-3, 1.0}, a, b, d, nullptr, nullptr,
                             nullptr);
  ASSERT_TRUE(ref.ok()) << ref.status();
  const double expected_ref = std::sqrt(static_cast<double>(kM)) + GramDistance(a, /*rows=*/false);
  EXPECT_NEAR(ref->l3, expected_ref, 1e-5 * expected_ref);
}

// Orthonormal factors: the norms are 0, their gradient is defined as 0 (no NaN).
TEST(KasaRegularizerInitTest, ZeroNormHasZeroGradient) {
  model::CpuBackend backend;
  Tensor a = Tensor::Zeros({kR, kN}, DType::kF32), b = Tensor::Zeros({kM, kR}, DType::kF32);
  for (int64_t i = 0; i < kR; ++i) {
    a.at<float>({i, i + 1}) = 1.0f;
    b.at<float>({kM - 1 - i, i}) = i % 2 ? -1.0f : 1.0f;
  }
  const Tensor d = Tensor::Zeros({kR}, DType::kF32);
  Tensor ga = Tensor::Zeros({kR, kN}, DType::kF32), gb = Tensor::Zeros({kM, kR}, DType::kF32);
  Tensor gd = Tensor::Zeros({kR}, DType::kF32);
  auto value = KasaRegularizer(backend, {KasaRegularizerForm::kPeft, 1.0, 1.0, 1.0}, a, b, d, &ga, &gb, &gd);
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(value->total, 0.0);
  EXPECT_TRUE(AllClose(ga, Tensor::Zeros({kR, kN}, DType::kF32), Tolerance{0, 0}));
  EXPECT_TRUE(AllClose(gb, Tensor::Zeros({kM, kR}, DType::kF32), Tolerance{0, 0}));
  auto sorsa = SorsaRegularizer(backend, 1.0, a, b, &ga, &gb);
  ASSERT_TRUE(sorsa.ok()) << sorsa.status();
  EXPECT_EQ(*sorsa, 0.0);
  EXPECT_TRUE(AllClose(ga, Tensor::Zeros({kR, kN}, DType::kF32), Tolerance{0, 0}));
}

TEST(SorsaRegularizerTest, ValueAndGradient) {
  model::CpuBackend backend;
  const Factors f(DType::kF64, 6);
  const double weight = 0.125;
  auto value_of = [&](const Tensor& vt, const Tensor& u) {
    auto v = SorsaRegularizer(backend, weight, vt, u, nullptr, nullptr);
    ST_CHECK(v.ok()) << v.status();
    return *v;
  };
  EXPECT_NEAR(value_of(f.a, f.b), weight * (GramDistance(f.a, true) + GramDistance(f.b, false)), 1e-13);
  Tensor gv = Tensor::Zeros({kR, kN}, DType::kF64), gu = Tensor::Zeros({kM, kR}, DType::kF64);
  ASSERT_TRUE(SorsaRegularizer(backend, weight, f.a, f.b, &gv, &gu).ok());
  const Tolerance tol{1e-8, 1e-7};
  EXPECT_TRUE(AllClose(gv, NumericalGradient([&](const Tensor& vt) { return value_of(vt, f.b); }, f.a), tol));
  EXPECT_TRUE(AllClose(gu, NumericalGradient([&](const Tensor& u) { return value_of(f.a, u); }, f.b), tol));
  // METHODS.md §14 recipe 8: ~0 at an SVD init (orthonormal factors).
  const Tensor w = testing::RandomWithSingularValues(kM, kN, {5, 4, 3, 2, 1, 0.5, 0.25}, DType::kF64, 7);
  Tensor u = Tensor::Empty({kM, kN}, DType::kF64), s = Tensor::Empty({kN}, DType::kF64);
  Tensor vt = Tensor::Empty({kN, kN}, DType::kF64);
  ASSERT_TRUE(backend.Svd(w, &u, &s, &vt).ok());
  EXPECT_LT(value_of(vt.Slice(0, 0, kR).Contiguous(), u.Slice(1, 0, kR).Contiguous()), 1e-13);
}

TEST(RegularizerErrorsTest, NameTheOperand) {
  model::CpuBackend backend;
  const Factors f(DType::kF32, 8);
  EXPECT_ERROR_MENTIONS(KasaRegularizer(backend, {KasaRegularizerForm::kPeft, -1.0, 1.0, 1.0}, f.a, f.b, f.d,
                                        nullptr, nullptr, nullptr)
                            .status(),
                        "beta");
  EXPECT_ERROR_MENTIONS(KasaRegularizer(backend, {}, f.a, RandomNormal({kM, kR + 1}, DType::kF32, 1), f.d, nullptr,
                                        nullptr, nullptr)
                            .status(),
                        "b must be", "[9, 3]");
  EXPECT_ERROR_MENTIONS(
      KasaRegularizer(backend, {}, f.a, f.b, Tensor(), nullptr, nullptr, nullptr).status(), "d is undefined");
  Tensor wrong = Tensor::Zeros({kR, kN}, DType::kF64);
  EXPECT_ERROR_MENTIONS(KasaRegularizer(backend, {}, f.a, f.b, f.d, &wrong, nullptr, nullptr).status(),
                        "gradient of a");
  EXPECT_ERROR_MENTIONS(SorsaRegularizer(backend, 1.0, f.a, f.b.To(DType::kF64), nullptr, nullptr).status(), "u");
}

}  // namespace
}  // namespace sigmatune::peft
