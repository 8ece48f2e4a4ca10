// LowRankAdapter on the CPU backend against dense double-precision formulas and finite
// differences: forward, the gradients of A, B, d and x, dropout (mask recomputed here from
// kernels::DropoutUniform), gradient accumulation, ZeroGrad and argument errors.
#include "kernels/peft/adapter.h"

#include <functional>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/model/backend.h"
#include "kernels/ops/adapter_ops.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/finite_diff.h"
#include "kernels/testing/random.h"
#include "kernels/testing/status.h"

namespace sigmatune::peft {
namespace {

using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::Dot;
using ::sigmatune::testing::NumericalGradient;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::Tolerance;

constexpr int64_t kT = 6, kN = 7, kM = 5, kR = 3;
constexpr double kScale = 1.7;
constexpr uint64_t kSeed = 12345;

// A dense row-major matrix in double, for the reference formulas.
struct Mat {
  int64_t rows = 0, cols = 0;
  std::vector<double> v;
  Mat(int64_t r, int64_t c) : rows(r), cols(c), v(r * c, 0.0) {}
  explicit Mat(const Tensor& t) : rows(t.dim(0)), cols(t.rank() == 2 ? t.dim(1) : 1), v(t.numel()) {
    for (int64_t i = 0; i < t.numel(); ++i) v[i] = GetAsDouble(t, i);
  }
  double& operator()(int64_t i, int64_t j) { return v[i * cols + j]; }
  double operator()(int64_t i, int64_t j) const { return v[i * cols + j]; }
  Tensor ToTensor() const { return Tensor::FromVector<double>({rows, cols}, v); }
};

Mat MatMul(const Mat& a, const Mat& b) {
  ST_CHECK_EQ(a.cols, b.rows);
  Mat c(a.rows, b.cols);
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t k = 0; k < a.cols; ++k)
      for (int64_t j = 0; j < b.cols; ++j) c(i, j) += a(i, k) * b(k, j);
  return c;
}

Mat Transposed(const Mat& a) {
  Mat t(a.cols, a.rows);
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t j = 0; j < a.cols; ++j) t(j, i) = a(i, j);
  return t;
}

// m[:, j] *= d[j].
Mat ScaleCols(Mat m, const std::vector<double>& d) {
  for (int64_t i = 0; i < m.rows; ++i)
    for (int64_t j = 0; j < m.cols; ++j) m(i, j) *= d[j];
  return m;
}

// The dropout mask of a [rows, cols] input, as the backend draws it: 0 or 1 / (1 - p).
Mat DropoutMultiplier(int64_t rows, int64_t cols, double p, uint64_t seed) {
  Mat mask(rows, cols);
  for (int64_t i = 0; i < rows * cols; ++i) {
    mask.v[i] = p == 0.0 ? 1.0
                         : (static_cast<double>(kernels::DropoutUniform(seed, static_cast<uint64_t>(i))) >= p
                                ? 1.0 / (1.0 - p)
                                : 0.0);
  }
  return mask;
}

Mat Hadamard(Mat a, const Mat& b) {
  for (size_t i = 0; i < a.v.size(); ++i) a.v[i] *= b.v[i];
  return a;
}

// Adapter parameters and data of one test case.
struct Case {
  Tensor x, a, b, d, y0, r;  // r: the weights of the objective sum(r * y)
  Case(DType dt, bool with_d, uint64_t seed) {
    x = RandomNormal({kT, kN}, dt, seed);
    a = RandomNormal({kR, kN}, dt, seed + 1);
    b = RandomNormal({kM, kR}, dt, seed + 2);
    if (with_d) d = RandomNormal({kR}, dt, seed + 3);
    y0 = RandomNormal({kT, kM}, dt, seed + 4);
    r = RandomNormal({kT, kM}, dt, seed + 5);
  }
};

std::unique_ptr<LowRankAdapter> MakeAdapter(model::ModelBackend& backend, const Tensor& a, const Tensor& b,
                                            const Tensor& d, double dropout) {
  auto adapter = LowRankAdapter::Create(&backend, a, b, d, kScale, dropout);
  ST_CHECK(adapter.ok()) << adapter.status();
  (*adapter)->set_dropout_seed(kSeed);
  return std::move(*adapter);
}

Tensor RunForward(model::ModelBackend& backend, const Tensor& x, const Tensor& a, const Tensor& b, const Tensor& d,
                  const Tensor& y0, double dropout) {
  auto adapter = MakeAdapter(backend, a, b, d, dropout);
  Tensor y = y0.Contiguous();
  const absl::Status st = adapter->Forward(x, &y);
  ST_CHECK(st.ok()) << st;
  return y;
}

// The dense expectations: y = y0 + s ((M ⊙ x) A^T diag(d)) B^T and the gradients of sum(R ⊙ y).
struct Dense {
  Mat y, grad_a, grad_b, grad_x;
  std::vector<double> grad_d;
};

Dense DenseReference(const Case& c, double dropout) {
  const Mat x(c.x), a(c.a), b(c.b), dy(c.r);
  std::vector<double> d(kR, 1.0);
  if (c.d.defined()) d = Mat(c.d).v;
  const Mat mask = DropoutMultiplier(kT, kN, dropout, kSeed);
  const Mat xd = Hadamard(x, mask);
  const Mat u = MatMul(xd, Transposed(a));  // [T, r]
  const Mat v = ScaleCols(u, d);
  Dense out{Mat(c.y0), Mat(kR, kN), Mat(kM, kR), Mat(kT, kN), std::vector<double>(kR, 0.0)};
  const Mat delta = MatMul(v, Transposed(b));
  for (size_t i = 0; i < out.y.v.size(); ++i) out.y.v[i] += kScale * delta.v[i];
  Mat g = MatMul(dy, b);  // [T, r]
  for (double& e : g.v) e *= kScale;
  for (int64_t t = 0; t < kT; ++t)
    for (int64_t j = 0; j < kR; ++j) out.grad_d[j] += g(t, j) * u(t, j);
  const Mat gd = ScaleCols(g, d);
  out.grad_b = MatMul(Transposed(dy), v);
  for (double& e : out.grad_b.v) e *= kScale;
  out.grad_a = MatMul(Transposed(gd), xd);
  out.grad_x = Hadamard(MatMul(gd, a), mask);
  return out;
}

class AdapterTest : public ::testing::TestWithParam<std::tuple<bool, double>> {
 protected:
  bool with_d() const { return std::get<0>(GetParam()); }
  double dropout() const { return std::get<1>(GetParam()); }
  model::CpuBackend backend_;
};

TEST_P(AdapterTest, ForwardAndBackwardMatchDenseFormulasF32) {
  const Case c(DType::kF32, with_d(), 10);
  const Dense expected = DenseReference(c, dropout());
  auto adapter = MakeAdapter(backend_, c.a, c.b, c.d, dropout());
  EXPECT_EQ(adapter->rank(), kR);
  EXPECT_EQ(adapter->has_diagonal(), with_d() ? HasDiagonal::kYes : HasDiagonal::kNo);
  Tensor y = c.y0.Contiguous();
  ASSERT_TRUE(adapter->Forward(c.x, &y).ok());
  const Tolerance tol{1e-5, 1e-5};
  EXPECT_TRUE(AllClose(y, expected.y.ToTensor(), tol));

  // dx starts non-zero: Backward adds to it.
  const Tensor dx0 = RandomNormal({kT, kN}, DType::kF32, 99);
  Tensor dx = dx0.Contiguous();
  ASSERT_TRUE(adapter->Backward(c.x, c.r, &dx).ok());
  Mat expected_dx = expected.grad_x;
  for (int64_t i = 0; i < kT * kN; ++i) expected_dx.v[i] += GetAsDouble(dx0, i);
  EXPECT_TRUE(AllClose(dx, expected_dx.ToTensor(), tol));
  EXPECT_TRUE(AllClose(adapter->grad_a(), expected.grad_a.ToTensor(), tol));
  EXPECT_TRUE(AllClose(adapter->grad_b(), expected.grad_b.ToTensor(), tol));
  if (with_d()) {
    EXPECT_TRUE(AllClose(adapter->grad_d(), Tensor::FromVector<double>({kR}, expected.grad_d), tol));
  } else {
    EXPECT_FALSE(adapter->grad_d().defined());
  }
}

TEST_P(AdapterTest, GradientsMatchFiniteDifferencesF64) {
  const Case c(DType::kF64, with_d(), 20);
  const double p = dropout();
  auto objective = [&](const Tensor& x, const Tensor& a, const Tensor& b, const Tensor& d) {
    return Dot(RunForward(backend_, x, a, b, d, c.y0, p), c.r);
  };
  auto adapter = MakeAdapter(backend_, c.a, c.b, c.d, p);
  Tensor y = c.y0.Contiguous();
  ASSERT_TRUE(adapter->Forward(c.x, &y).ok());
  Tensor dx = Tensor::Zeros({kT, kN}, DType::kF64);
  ASSERT_TRUE(adapter->Backward(c.x, c.r, &dx).ok());

  const Tolerance tol{1e-7, 1e-7};
  EXPECT_TRUE(AllClose(dx, NumericalGradient([&](const Tensor& x) { return objective(x, c.a, c.b, c.d); }, c.x), tol));
  EXPECT_TRUE(AllClose(adapter->grad_a(),
                       NumericalGradient([&](const Tensor& a) { return objective(c.x, a, c.b, c.d); }, c.a), tol));
  EXPECT_TRUE(AllClose(adapter->grad_b(),
                       NumericalGradient([&](const Tensor& b) { return objective(c.x, c.a, b, c.d); }, c.b), tol));
  if (with_d()) {
    EXPECT_TRUE(AllClose(adapter->grad_d(),
                         NumericalGradient([&](const Tensor& d) { return objective(c.x, c.a, c.b, d); }, c.d), tol));
  }
  // And the dense formulas, in f64.
  const Dense expected = DenseReference(c, p);
  EXPECT_TRUE(AllClose(y, expected.y.ToTensor(), Tolerance{1e-12, 1e-12}));
  EXPECT_TRUE(AllClose(adapter->grad_a(), expected.grad_a.ToTensor(), Tolerance{1e-12, 1e-12}));
}

TEST_P(AdapterTest, GradientsAccumulateUntilZeroGrad) {
  const Case c(DType::kF64, with_d(), 30);
  const Tensor r2 = RandomNormal({kT, kM}, DType::kF64, 77);
  auto grads_for = [&](const Tensor& dy) {
    auto adapter = MakeAdapter(backend_, c.a, c.b, c.d, dropout());
    Tensor y = c.y0.Contiguous(), dx = Tensor::Zeros({kT, kN}, DType::kF64);
    ST_CHECK(adapter->Forward(c.x, &y).ok());
    ST_CHECK(adapter->Backward(c.x, dy, &dx).ok());
    return std::vector<Tensor>{adapter->grad_a().Contiguous(), adapter->grad_b().Contiguous(),
                               with_d() ? adapter->grad_d().Contiguous() : Tensor()};
  };
  const std::vector<Tensor> g1 = grads_for(c.r), g2 = grads_for(r2);

  auto adapter = MakeAdapter(backend_, c.a, c.b, c.d, dropout());
  const Tensor grad_a_view = adapter->grad_a();  // a view the optimizer might hold
  Tensor y = c.y0.Contiguous(), dx = Tensor::Zeros({kT, kN}, DType::kF64);
  ASSERT_TRUE(adapter->Forward(c.x, &y).ok());
  ASSERT_TRUE(adapter->Backward(c.x, c.r, &dx).ok());
  ASSERT_TRUE(adapter->Backward(c.x, r2, &dx).ok());
  const std::vector<Tensor*> grads = {&adapter->grad_a(), &adapter->grad_b(), &adapter->grad_d()};
  for (int i = 0; i < (with_d() ? 3 : 2); ++i) {
    Tensor sum = g1[i].Contiguous();
    for (int64_t k = 0; k < sum.numel(); ++k) sum.data<double>()[k] += g2[i].data<double>()[k];
    EXPECT_TRUE(AllClose(*grads[i], sum, Tolerance{1e-13, 1e-13})) << "gradient " << i;
  }
  ASSERT_TRUE(adapter->ZeroGrad().ok());
  for (int i = 0; i < (with_d() ? 3 : 2); ++i) {
    EXPECT_TRUE(AllClose(*grads[i], Tensor::Zeros(grads[i]->shape(), DType::kF64), Tolerance{0, 0}));
  }
  // ZeroGrad works in place.
  EXPECT_EQ(grad_a_view.raw_data(), adapter->grad_a().raw_data());
  EXPECT_TRUE(AllClose(grad_a_view, Tensor::Zeros(grad_a_view.shape(), DType::kF64), Tolerance{0, 0}));
}

INSTANTIATE_TEST_SUITE_P(DiagonalAndDropout, AdapterTest,
                         ::testing::Combine(::testing::Bool(), ::testing::Values(0.0, 0.3)));

TEST(AdapterDropoutTest, MaskDependsOnSeedAndDropsAboutP) {
  model::CpuBackend backend;
  const Tensor x = RandomNormal({64, 32}, DType::kF32, 5);
  const Tensor a = RandomNormal({2, 32}, DType::kF32, 6), b = RandomNormal({4, 2}, DType::kF32, 7);
  const Mat mask = DropoutMultiplier(64, 32, 0.3, kSeed);
  int64_t dropped = 0;
  for (double m : mask.v) dropped += m == 0.0;
  EXPECT_NEAR(static_cast<double>(dropped) / mask.v.size(), 0.3, 0.05);
  auto adapter = MakeAdapter(backend, a, b, Tensor(), 0.3);
  Tensor y1 = Tensor::Zeros({64, 4}, DType::kF32), y2 = Tensor::Zeros({64, 4}, DType::kF32);
  Tensor y3 = Tensor::Zeros({64, 4}, DType::kF32);
  ASSERT_TRUE(adapter->Forward(x, &y1).ok());
  ASSERT_TRUE(adapter->Forward(x, &y2).ok());  // same seed: same mask
  EXPECT_TRUE(AllClose(y1, y2, Tolerance{0, 0}));
  adapter->set_dropout_seed(kSeed + 1);
  ASSERT_TRUE(adapter->Forward(x, &y3).ok());
  EXPECT_GT(testing::RelativeError(y3, y1), 1e-3);
}

TEST(AdapterDropoutTest, EvalModeTurnsDropoutOff) {
  model::CpuBackend backend;
  const Tensor x = RandomNormal({16, 8}, DType::kF32, 5);
  const Tensor a = RandomNormal({2, 8}, DType::kF32, 6), b = RandomNormal({4, 2}, DType::kF32, 7);
  auto dropped = MakeAdapter(backend, a, b, Tensor(), 0.5);
  auto plain = MakeAdapter(backend, a, b, Tensor(), 0.0);
  Tensor y_train = Tensor::Zeros({16, 4}, DType::kF32), y_eval = Tensor::Zeros({16, 4}, DType::kF32);
  Tensor y_plain = Tensor::Zeros({16, 4}, DType::kF32);
  ASSERT_TRUE(dropped->Forward(x, &y_train).ok());
  dropped->set_mode(AdapterMode::kEval);
  ASSERT_TRUE(dropped->Forward(x, &y_eval).ok());
  ASSERT_TRUE(plain->Forward(x, &y_plain).ok());
  EXPECT_TRUE(AllClose(y_eval, y_plain, Tolerance{0, 0}));
  EXPECT_GT(testing::RelativeError(y_train, y_plain), 1e-3);
  dropped->set_mode(AdapterMode::kTrain);
  Tensor y_again = Tensor::Zeros({16, 4}, DType::kF32);
  ASSERT_TRUE(dropped->Forward(x, &y_again).ok());
  EXPECT_TRUE(AllClose(y_again, y_train, Tolerance{0, 0}));
}

// A bf16 (or f16) model with f32 adapters: the result is the f32 path's on the widened
// activations, rounded once to the activation dtype; the gradients are the f32 path's exactly.
TEST_P(AdapterTest, HalfActivationsEqualTheF32PathOnWidenedValuesRounded) {
  for (DType half : {DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(DTypeName(half));
    const Case c(DType::kF32, with_d(), 10);
    const Tensor x16 = c.x.To(half), y16 = c.y0.To(half), dy16 = c.r.To(half);
    const Tensor dx16 = RandomNormal({kT, kN}, DType::kF32, 99).To(half);
    auto mixed = MakeAdapter(backend_, c.a, c.b, c.d, dropout());
    auto plain = MakeAdapter(backend_, c.a, c.b, c.d, dropout());

    Tensor y_mixed = y16.Contiguous();
    ASSERT_TRUE(mixed->Forward(x16, &y_mixed).ok());
    ASSERT_EQ(y_mixed.dtype(), half);
    Tensor y_plain = y16.To(DType::kF32);
    ASSERT_TRUE(plain->Forward(x16.To(DType::kF32), &y_plain).ok());
    EXPECT_TRUE(AllClose(y_mixed.To(DType::kF32), y_plain.To(half).To(DType::kF32), Tolerance{0, 0}));

    Tensor dx_mixed = dx16.Contiguous();
    ASSERT_TRUE(mixed->Backward(x16, dy16, &dx_mixed).ok());
    Tensor dx_plain = dx16.To(DType::kF32);
    ASSERT_TRUE(plain->Backward(x16.To(DType::kF32), dy16.To(DType::kF32), &dx_plain).ok());
    EXPECT_TRUE(AllClose(dx_mixed.To(DType::kF32), dx_plain.To(half).To(DType::kF32), Tolerance{0, 0}));
    EXPECT_EQ(mixed->grad_a().dtype(), DType::kF32);
    EXPECT_TRUE(AllClose(mixed->grad_a(), plain->grad_a(), Tolerance{0, 0}));
    EXPECT_TRUE(AllClose(mixed->grad_b(), plain->grad_b(), Tolerance{0, 0}));
    if (with_d()) {
      EXPECT_TRUE(AllClose(mixed->grad_d(), plain->grad_d(), Tolerance{0, 0}));
    }
    // And the rounding is real: the mixed output is not the unrounded f32 one.
    EXPECT_FALSE(AllClose(y_mixed.To(DType::kF32), y_plain, Tolerance{0, 0}));
  }
}

TEST(LowRankAdapterTest, ZeroBLeavesTheOutputUnchanged) {
  model::CpuBackend backend;
  const Tensor x = RandomNormal({kT, kN}, DType::kF32, 1), a = RandomNormal({kR, kN}, DType::kF32, 2);
  const Tensor d = RandomNormal({kR}, DType::kF32, 3), y0 = RandomNormal({kT, kM}, DType::kF32, 4);
  auto adapter = MakeAdapter(backend, a, Tensor::Zeros({kM, kR}, DType::kF32), d, 0.2);
  Tensor y = y0.Contiguous();
  ASSERT_TRUE(adapter->Forward(x, &y).ok());
  EXPECT_TRUE(AllClose(y, y0, Tolerance{0, 0}));
}

TEST(LowRankAdapterTest, CreateCopiesTheParameters) {
  model::CpuBackend backend;
  Tensor a = RandomNormal({kR, kN}, DType::kF32, 2);
  const Tensor b = RandomNormal({kM, kR}, DType::kF32, 3);
  auto adapter = MakeAdapter(backend, a, b, Tensor(), 0.0);
  const Tensor before = a.Contiguous();
  a.data<float>()[0] += 1.0f;
  EXPECT_TRUE(AllClose(adapter->a(), before, Tolerance{0, 0}));
  EXPECT_EQ(adapter->scale(), kScale);
  EXPECT_EQ(adapter->dropout(), 0.0);
}

TEST(LowRankAdapterTest, RejectsBadArguments) {
  model::CpuBackend backend;
  const Tensor a = RandomNormal({kR, kN}, DType::kF32, 2), b = RandomNormal({kM, kR}, DType::kF32, 3);
  const Tensor d = RandomNormal({kR}, DType::kF32, 4);
  EXPECT_ERROR_MENTIONS(LowRankAdapter::Create(&backend, a, RandomNormal({kM, kR + 1}, DType::kF32, 1), d, 1, 0)
                            .status(),
                        "rank mismatch");
  EXPECT_ERROR_MENTIONS(
      LowRankAdapter::Create(&backend, a, b, RandomNormal({kR + 1}, DType::kF32, 1), 1, 0).status(), "d must have");
  EXPECT_ERROR_MENTIONS(LowRankAdapter::Create(&backend, a, b.To(DType::kF64), d, 1, 0).status(), "dtype");
  EXPECT_ERROR_MENTIONS(LowRankAdapter::Create(&backend, a, b, d, 1, 1.0).status(), "dropout");
  EXPECT_ERROR_MENTIONS(LowRankAdapter::Create(&backend, a, b, d, 1, -0.1).status(), "dropout");
  EXPECT_ERROR_MENTIONS(LowRankAdapter::Create(&backend, Tensor(), b, d, 1, 0).status(), "a [r, n]");

  auto adapter = MakeAdapter(backend, a, b, d, 0.0);
  Tensor y = Tensor::Zeros({kT, kM}, DType::kF32), dx = Tensor::Zeros({kT, kN}, DType::kF32);
  EXPECT_ERROR_MENTIONS(adapter->Forward(RandomNormal({kT, kN + 1}, DType::kF32, 1), &y), "x");
  Tensor wrong_y = Tensor::Zeros({kT, kM + 1}, DType::kF32);
  EXPECT_ERROR_MENTIONS(adapter->Forward(RandomNormal({kT, kN}, DType::kF32, 1), &wrong_y), "y");
  EXPECT_ERROR_MENTIONS(adapter->Forward(RandomNormal({kT, kN}, DType::kF64, 1), &y), "x", "f32");
  // Parameters are f32 or f64 (AdamW's dtypes); half activations need f32 parameters.
  EXPECT_ERROR_MENTIONS(LowRankAdapter::Create(&backend, a.To(DType::kBF16), b.To(DType::kBF16), Tensor(), 1, 0)
                            .status(),
                        "f32/f64", "bf16");
  auto wide = MakeAdapter(backend, a.To(DType::kF64), b.To(DType::kF64), Tensor(), 0.0);
  Tensor y64 = Tensor::Zeros({kT, kM}, DType::kBF16);
  EXPECT_ERROR_MENTIONS(wide->Forward(RandomNormal({kT, kN}, DType::kF32, 1).To(DType::kBF16), &y64), "bf16",
                        "f64");
  Tensor y_half = Tensor::Zeros({kT, kM}, DType::kF32);
  EXPECT_ERROR_MENTIONS(adapter->Forward(RandomNormal({kT, kN}, DType::kF32, 1).To(DType::kBF16), &y_half), "y",
                        "bf16");
  EXPECT_ERROR_MENTIONS(
      adapter->Backward(RandomNormal({kT, kN}, DType::kF32, 1), RandomNormal({kT + 1, kM}, DType::kF32, 1), &dx),
      "dy");
}

}  // namespace
}  // namespace sigmatune::peft
