// The identities of METHODS.md §14 (recipes 1-6) for every initialisation, on random W with known,
// distinct singular values, in f32 and f64 on the CpuBackend; plus CorDA's damping rule and errors.
// Reference quantities (best rank-r approximations, singular subspaces) come from f64 SVDs of the
// stored (rounded) inputs; products are compared in f64. Singular vectors are only compared after
// aligning their signs (METHODS.md §12).
#include "kernels/peft/init.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/model/backend.h"
#include "kernels/ops/linalg_testing.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/random.h"
#include "kernels/testing/status.h"

namespace sigmatune::peft {
namespace {

using ::sigmatune::kernels::Transpose;
using ::sigmatune::kernels::testing::Along;
using ::sigmatune::kernels::testing::ApplySigns;
using ::sigmatune::kernels::testing::ColumnSigns;
using ::sigmatune::kernels::testing::ProductF64;
using ::sigmatune::kernels::testing::ReconstructF64;
using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::FrobeniusNorm;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::RandomSymmetric;
using ::sigmatune::testing::RandomWithSingularValues;
using ::sigmatune::testing::RelativeError;
using ::sigmatune::testing::Tolerance;

constexpr char kLayer[] = "model.layers.3.self_attn.q_proj";

model::CpuBackend& Backend() {
  static model::CpuBackend* backend = new model::CpuBackend();
  return *backend;
}

// Relative accuracy expected of an identity: a few hundred ulps of the dtype.
double Tol(DType dt) { return dt == DType::kF32 ? 1e-5 : 1e-10; }

// Distinct singular values 1 + (k - 1 - i) / 4 (uniform gaps of 1/4 keep every singular subspace
// well conditioned, at the top and at the bottom).
std::vector<double> LinearSpectrum(int64_t k) {
  std::vector<double> sigma(k);
  for (int64_t i = 0; i < k; ++i) sigma[i] = 1.0 + 0.25 * static_cast<double>(k - 1 - i);
  return sigma;
}

// Eigenvalues log-spaced from `hi` down to `lo`.
std::vector<double> LogSpaced(int64_t n, double hi, double lo) {
  std::vector<double> lambda(n);
  for (int64_t i = 0; i < n; ++i) {
    lambda[i] = hi * std::pow(lo / hi, n == 1 ? 0.0 : static_cast<double>(i) / static_cast<double>(n - 1));
  }
  return lambda;
}

struct Svd64 {
  Tensor u, s, vt;
};

// Thin SVD of a (any float dtype) computed in f64 by the backend.
Svd64 SvdF64(const Tensor& a) {
  const Tensor a64 = a.To(DType::kF64);
  const int64_t m = a.dim(0), n = a.dim(1), k = std::min(m, n);
  Svd64 f{Tensor::Empty({m, k}, DType::kF64), Tensor::Empty({k}, DType::kF64), Tensor::Empty({k, n}, DType::kF64)};
  const absl::Status st = Backend().Svd(a64, &f.u, &f.s, &f.vt);
  EXPECT_TRUE(st.ok()) << st;
  return f;
}

// Singular values of a, by the backend's Svd in a's own dtype.
std::vector<double> SingularValues(const Tensor& a) {
  const int64_t m = a.dim(0), n = a.dim(1), k = std::min(m, n);
  Tensor u = Tensor::Empty({m, k}, a.dtype()), s = Tensor::Empty({k}, a.dtype()), vt = Tensor::Empty({k, n}, a.dtype());
  const absl::Status st = Backend().Svd(a, &u, &s, &vt);
  EXPECT_TRUE(st.ok()) << st;
  std::vector<double> out(k);
  for (int64_t i = 0; i < k; ++i) out[i] = GetAsDouble(s, i);
  return out;
}

// u[:, b:e] diag(s[b:e]) vt[b:e, :] in f64.
Tensor Truncation(const Svd64& f, int64_t begin, int64_t end) {
  return ReconstructF64(f.u.Slice(1, begin, end), f.s.Slice(0, begin, end), f.vt.Slice(0, begin, end));
}

std::vector<double> Values(const Tensor& t) {
  std::vector<double> out(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = GetAsDouble(t, i);
  return out;
}

Tensor Diag(const std::vector<double>& values) {
  const int64_t r = static_cast<int64_t>(values.size());
  Tensor d = Tensor::Zeros({r, r}, DType::kF64);
  for (int64_t i = 0; i < r; ++i) d.at<double>({i, i}) = values[i];
  return d;
}

// alpha * x + beta * y in f64.
Tensor Combine(double alpha, const Tensor& x, double beta, const Tensor& y) {
  EXPECT_EQ(x.shape(), y.shape());
  Tensor out = x.To(DType::kF64);
  for (int64_t i = 0; i < out.numel(); ++i) {
    out.data<double>()[i] = alpha * GetAsDouble(x, i) + beta * GetAsDouble(y, i);
  }
  return out;
}

// s * B * A in f64.
Tensor ScaledDelta(const AdapterInit& init) {
  const Tensor ba = ProductF64(init.b, Transpose::kNo, init.a, Transpose::kNo);
  return Combine(init.scale, ba, 0.0, ba);
}

double SumOfSquares(const std::vector<double>& v, size_t begin, size_t end) {
  double sum = 0;
  for (size_t i = begin; i < end; ++i) sum += v[i] * v[i];
  return sum;
}

AdapterOptions Options(Method method, int64_t rank, double alpha = 16.0) {
  AdapterOptions options;
  options.method = method;
  options.rank = rank;
  options.alpha = alpha;
  return options;
}

AdapterInit Init(const AdapterOptions& options, const Tensor& w, const Tensor* c = nullptr, uint64_t seed = 7) {
  absl::StatusOr<AdapterInit> init = InitializeAdapter(Backend(), options, kLayer, w, c, seed);
  EXPECT_TRUE(init.ok()) << init.status();
  return init.ok() ? *std::move(init) : AdapterInit{};
}

DampedCovariance Damp(const Tensor& c) {
  absl::StatusOr<DampedCovariance> damped = DampCovariance(Backend(), kLayer, c);
  EXPECT_TRUE(damped.ok()) << damped.status();
  return damped.ok() ? *std::move(damped) : DampedCovariance{};
}

bool SameBits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// ||X||_F-relative size of a product that must vanish: ||x y|| / (||x|| ||y||).
double RelativeProduct(const Tensor& x, Transpose tx, const Tensor& y, Transpose ty) {
  return FrobeniusNorm(ProductF64(x, tx, y, ty)) / (FrobeniusNorm(x) * FrobeniusNorm(y));
}

// Aligns the r components of `actual` (A rows, B columns, flipped together) to `expected`.
void ExpectSameFactors(const AdapterInit& actual, const AdapterInit& expected, double tol) {
  const Tensor signs = ColumnSigns(actual.b, expected.b);
  EXPECT_LE(RelativeError(ApplySigns(actual.b, signs, Along::kColumns), expected.b), tol);
  EXPECT_LE(RelativeError(ApplySigns(actual.a, signs, Along::kRows), expected.a), tol);
}

struct Case {
  int64_t m, n;
  DType dtype;
};

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  return std::to_string(info.param.m) + "x" + std::to_string(info.param.n) + "_" +
         std::string(DTypeName(info.param.dtype));
}

class InitTest : public ::testing::TestWithParam<Case> {
 protected:
  int64_t m() const { return GetParam().m; }
  int64_t n() const { return GetParam().n; }
  int64_t k() const { return std::min(m(), n()); }
  DType dt() const { return GetParam().dtype; }
  double tol() const { return Tol(dt()); }

  Tensor W(uint64_t seed = 11) const { return RandomWithSingularValues(m(), n(), LinearSpectrum(k()), dt(), seed); }
  // A damped covariance with eigenvalues spanning 1 .. 1e-2 (plus the damping).
  Tensor DampedCovariance(double c_scale = 1.0, uint64_t seed = 5) const {
    std::vector<double> lambda = LogSpaced(n(), 1.0, 1e-2);
    for (double& l : lambda) l *= c_scale;
    return Damp(RandomSymmetric(n(), lambda, dt(), seed)).c_d;
  }
};

// Recipe 1: W_res + s B A == W for every residual method.
TEST_P(InitTest, ResidualPlusAdapterIsW) {
  const Tensor w = W();
  const Tensor c_d = DampedCovariance();
  AdapterOptions fast = Options(Method::kPissa, 5);
  fast.pissa_niter = 2;
  for (const AdapterOptions& options : {Options(Method::kPissa, 5), fast, Options(Method::kMilora, 5),
                                        Options(Method::kCordaIpm, 5), Options(Method::kCordaKpm, 5)}) {
    SCOPED_TRACE(std::string(MethodName(options.method)) + " niter " + std::to_string(options.pissa_niter));
    const AdapterInit init = Init(options, w, &c_d);
    ASSERT_EQ(init.a.shape(), (Shape{5, n()}));
    ASSERT_EQ(init.b.shape(), (Shape{m(), 5}));
    ASSERT_EQ(init.w_res.shape(), w.shape());
    EXPECT_EQ(init.a.dtype(), dt());
    EXPECT_EQ(init.b.dtype(), dt());
    EXPECT_EQ(init.w_res.dtype(), dt());
    EXPECT_DOUBLE_EQ(init.scale, 16.0 / 5.0);
    EXPECT_NE(init.w_res.raw_data(), w.raw_data());
    EXPECT_LE(RelativeError(Combine(1.0, init.w_res, 1.0, ScaledDelta(init)), w), tol());
  }
}

// Recipe 2: LoRA leaves the layer's output unchanged; |A_ij| <= 1/sqrt(n); B == 0.
TEST_P(InitTest, LoraKeepsTheOutputAndBoundsA) {
  const Tensor w = W();
  const AdapterInit init = Init(Options(Method::kLora, 6), w);
  EXPECT_EQ(init.w_res.raw_data(), w.raw_data());  // shares W
  ASSERT_EQ(init.a.shape(), (Shape{6, n()}));
  ASSERT_EQ(init.b.shape(), (Shape{m(), 6}));
  EXPECT_EQ(FrobeniusNorm(init.b), 0.0);
  EXPECT_FALSE(init.d.defined());
  const double bound = 1.0 / std::sqrt(static_cast<double>(n()));
  double max_abs = 0, sum = 0, sum_sq = 0;
  for (double v : Values(init.a)) {
    max_abs = std::max(max_abs, std::fabs(v));
    sum += v;
    sum_sq += v * v;
  }
  EXPECT_LE(max_abs, bound);
  EXPECT_GT(max_abs, 0.8 * bound);
  // U(-b, b): mean 0, variance b^2 / 3 (6 n samples; loose bounds).
  const double count = static_cast<double>(init.a.numel());
  EXPECT_LT(std::fabs(sum / count), 0.2 * bound);
  EXPECT_NEAR(sum_sq / count, bound * bound / 3, 0.3 * bound * bound / 3);
  // y = W_res x + s B (A x) == W x.
  const Tensor x = RandomNormal({n(), 3}, dt(), 9);
  const Tensor y = Combine(
      1.0, ProductF64(init.w_res, Transpose::kNo, x, Transpose::kNo), init.scale,
      ProductF64(init.b, Transpose::kNo, ProductF64(init.a, Transpose::kNo, x, Transpose::kNo), Transpose::kNo));
  EXPECT_TRUE(AllClose(y, ProductF64(w, Transpose::kNo, x, Transpose::kNo), Tolerance{0, 0}));
}

// Recipe 3: PiSSA.
TEST_P(InitTest, PissaIdentities) {
  const int64_t r = 5;
  const Tensor w = W();
  const AdapterInit init = Init(Options(Method::kPissa, r), w);
  const double s = init.scale;
  const Svd64 ref = SvdF64(w);
  const std::vector<double> sigma = Values(ref.s);
  // ||W - s B A||_F^2 = sum_{i > r} sigma_i^2 and ||W - s B A||_2 = sigma_{r+1}.
  const double tail = SumOfSquares(sigma, r, k());
  EXPECT_NEAR(std::pow(FrobeniusNorm(init.w_res), 2), tail, tol() * tail);
  EXPECT_NEAR(SingularValues(init.w_res)[0], sigma[r], tol() * sigma[0]);
  // s B A = P_top S_top Q_top^T.
  EXPECT_LE(RelativeError(ScaledDelta(init), Truncation(ref, 0, r)), tol());
  // A A^T = B^T B = diag(sigma_top / s).
  std::vector<double> expected(sigma.begin(), sigma.begin() + r);
  for (double& v : expected) v /= s;
  const Tolerance gram_tol{tol() * sigma[0] / s, tol()};
  EXPECT_TRUE(AllClose(ProductF64(init.a, Transpose::kNo, init.a, Transpose::kYes), Diag(expected), gram_tol));
  EXPECT_TRUE(AllClose(ProductF64(init.b, Transpose::kYes, init.b, Transpose::kNo), Diag(expected), gram_tol));
  // The residual is orthogonal to the adapter: A W_res^T = 0, B^T W_res = 0.
  EXPECT_LE(RelativeProduct(init.a, Transpose::kNo, init.w_res, Transpose::kYes), tol());
  EXPECT_LE(RelativeProduct(init.b, Transpose::kYes, init.w_res, Transpose::kNo), tol());
}

// Recipe 3, fast mode: only W_res + s B A == W is exact; the adapter approaches the best rank-r
// approximation as niter grows (niter = 0 is the full SVD).
TEST_P(InitTest, RandomizedPissaConvergesWithNiter) {
  const int64_t r = 5;
  // A spectral gap sigma_{r+1} / sigma_r = 0.63 at the rank: the subspace error falls like 0.63^(2 niter + 1).
  std::vector<double> sigma = LinearSpectrum(k());
  for (int64_t i = r; i < k(); ++i) sigma[i] *= 0.6;
  const Tensor w = RandomWithSingularValues(m(), n(), sigma, dt(), 13);
  const Tensor best = Truncation(SvdF64(w), 0, r);
  std::vector<double> errors;
  for (int niter : {1, 2, 8, 0}) {
    SCOPED_TRACE(niter);
    AdapterOptions options = Options(Method::kPissa, r);
    options.pissa_niter = niter;
    const AdapterInit init = Init(options, w);
    EXPECT_LE(RelativeError(Combine(1.0, init.w_res, 1.0, ScaledDelta(init)), w), tol());
    errors.push_back(RelativeError(ScaledDelta(init), best));
  }
  EXPECT_GT(errors[0], errors[1]);
  EXPECT_GT(errors[1], errors[2]);
  EXPECT_GT(errors[2], errors[3]);
  EXPECT_GT(errors[0], 1e-2);
  EXPECT_LT(errors[2], 1e-2);
  EXPECT_LE(errors[3], tol());
}

// Recipe 4: MiLoRA.
TEST_P(InitTest, MiloraIdentities) {
  const int64_t r = 5;
  const Tensor w = W();
  const AdapterInit init = Init(Options(Method::kMilora, r), w);
  const Svd64 ref = SvdF64(w);
  const std::vector<double> sigma = Values(ref.s);
  // s B A = P_bot S_bot Q_bot^T, and its spectral norm is sigma_{k-r+1}.
  EXPECT_LE(RelativeError(ScaledDelta(init), Truncation(ref, k() - r, k())), tol());
  EXPECT_NEAR(SvdF64(ScaledDelta(init)).s.at<double>({0}), sigma[k() - r], tol() * sigma[0]);
  // W_res keeps sigma_1 .. sigma_{k-r}; the rest vanish.
  const std::vector<double> res = SingularValues(init.w_res);
  for (int64_t i = 0; i < k(); ++i) {
    EXPECT_NEAR(res[i], i < k() - r ? sigma[i] : 0.0, tol() * sigma[0]) << i;
  }
}

// Recipe 5: CorDA with a shared damped covariance.
TEST_P(InitTest, CordaIdentities) {
  const int64_t r = 5;
  const Tensor w = W();
  const Tensor c_d = DampedCovariance();
  const Tensor wc = ProductF64(w, Transpose::kNo, c_d, Transpose::kNo);
  const Svd64 ref = SvdF64(wc);
  const std::vector<double> sv = Values(ref.s);
  for (const bool ipm : {true, false}) {
    SCOPED_TRACE(ipm ? "IPM" : "KPM");
    const AdapterInit init = Init(Options(ipm ? Method::kCordaIpm : Method::kCordaKpm, r), w, &c_d);
    const double s = init.scale;
    const int64_t begin = ipm ? 0 : k() - r;
    const Tensor delta = ScaledDelta(init);
    if (ipm) {
      // s B A C_d = [W C_d]_r.
      EXPECT_LE(RelativeError(ProductF64(delta, Transpose::kNo, c_d, Transpose::kNo), Truncation(ref, 0, r)), tol());
    } else {
      // W_res C_d = [W C_d]_{k-r}; sigma(s B A C_d) = the r smallest of sigma(W C_d).
      EXPECT_LE(RelativeError(ProductF64(init.w_res, Transpose::kNo, c_d, Transpose::kNo), Truncation(ref, 0, k() - r)),
                tol());
      const std::vector<double> adapter_sv = Values(SvdF64(ProductF64(delta, Transpose::kNo, c_d, Transpose::kNo)).s);
      for (int64_t i = 0; i < r; ++i) EXPECT_NEAR(adapter_sv[i], sv[begin + i], tol() * sv[0]) << i;
    }
    // s B A = U_sel U_sel^T W.
    const Tensor u_sel = ref.u.Slice(1, begin, begin + r);
    EXPECT_LE(RelativeError(delta, ProductF64(ProductF64(u_sel, Transpose::kNo, u_sel, Transpose::kYes), Transpose::kNo,
                                              w, Transpose::kNo)),
              tol());
    // B^T B = diag(S_sel / s) = (A C_d)(A C_d)^T.
    std::vector<double> expected(sv.begin() + begin, sv.begin() + begin + r);
    for (double& v : expected) v /= s;
    const Tolerance gram_tol{tol() * sv[0] / s, tol()};
    EXPECT_TRUE(AllClose(ProductF64(init.b, Transpose::kYes, init.b, Transpose::kNo), Diag(expected), gram_tol));
    const Tensor ac = ProductF64(init.a, Transpose::kNo, c_d, Transpose::kNo);
    EXPECT_TRUE(AllClose(ProductF64(ac, Transpose::kNo, ac, Transpose::kYes), Diag(expected), gram_tol));
  }
}

// Recipe 5: isotropic data (C = c I) makes IPM PiSSA and KPM MiLoRA.
TEST_P(InitTest, CordaWithIsotropicCovarianceIsPissaOrMilora) {
  const int64_t r = 5;
  const Tensor w = W();
  Tensor c = Tensor::Zeros({n(), n()}, dt());
  for (int64_t i = 0; i < n(); ++i) {
    if (dt() == DType::kF32) {
      c.at<float>({i, i}) = 2.5f;
    } else {
      c.at<double>({i, i}) = 2.5;
    }
  }
  const Tensor c_d = Damp(c).c_d;
  EXPECT_LE(RelativeError(ScaledDelta(Init(Options(Method::kCordaIpm, r), w, &c_d)),
                          ScaledDelta(Init(Options(Method::kPissa, r), w))),
            tol());
  EXPECT_LE(RelativeError(ScaledDelta(Init(Options(Method::kCordaKpm, r), w, &c_d)),
                          ScaledDelta(Init(Options(Method::kMilora, r), w))),
            tol());
}

// Recipe 5, scaling: C -> c^2 C (calibration data scaled by c, before the collector's per-sample
// |max| normalisation, which removes such a factor anyway) takes the same damping d and leaves
// s B A and W_res unchanged. A and B themselves rescale as in PEFT (V^ = (V~^T C_d^{-1})^T shrinks
// by c^2, S grows by c^2): B -> c B, A -> A / c; METHODS.md §14's "A, B unchanged" holds for the
// covariance (scale-free per sample), not for a rescaled covariance.
TEST_P(InitTest, CordaIsInvariantToScalingTheCovariance) {
  const Tensor w = W();
  const Tensor c_d = DampedCovariance(1.0);
  const Tensor c_d9 = DampedCovariance(9.0);
  for (const Method method : {Method::kCordaIpm, Method::kCordaKpm}) {
    SCOPED_TRACE(std::string(MethodName(method)));
    const AdapterInit base = Init(Options(method, 5), w, &c_d), scaled = Init(Options(method, 5), w, &c_d9);
    EXPECT_LE(RelativeError(ScaledDelta(scaled), ScaledDelta(base)), 10 * tol());
    EXPECT_LE(RelativeError(scaled.w_res, base.w_res), 10 * tol());
    AdapterInit unscaled;
    unscaled.a = Combine(3.0, scaled.a, 0.0, scaled.a);
    unscaled.b = Combine(1.0 / 3.0, scaled.b, 0.0, scaled.b);
    ExpectSameFactors(unscaled, base, 10 * tol());
  }
}

const Case kCases[] = {{24, 40, DType::kF32}, {40, 24, DType::kF32}, {33, 33, DType::kF32},
                       {24, 40, DType::kF64}, {40, 24, DType::kF64}, {33, 33, DType::kF64}};
INSTANTIATE_TEST_SUITE_P(Shapes, InitTest, ::testing::ValuesIn(kCases), CaseName);

// Recipe 5: PEFT's own inverse-based factors, A = diag(sqrt(S')) (V~_sel^T C_d^{-1}),
// B = U_sel diag(sqrt(S')), S' = S_sel / s, computed here explicitly in f64, equal ours.
TEST(CordaTest, MatchesPeftInverseFormulaInF64) {
  const int64_t r = 6;
  for (const Case& c : {Case{24, 40, DType::kF64}, Case{40, 24, DType::kF64}, Case{33, 33, DType::kF64}}) {
    SCOPED_TRACE(CaseName(::testing::TestParamInfo<Case>(c, 0)));
    const int64_t k = std::min(c.m, c.n);
    const Tensor w = RandomWithSingularValues(c.m, c.n, LinearSpectrum(k), DType::kF64, 21);
    const Tensor c_d = Damp(RandomSymmetric(c.n, LogSpaced(c.n, 1.0, 1e-3), DType::kF64, 22)).c_d;
    Tensor wc = Tensor::Empty({c.m, c.n}, DType::kF64);
    ASSERT_TRUE(Backend().Matmul(w, Transpose::kNo, c_d, Transpose::kNo, 1.0, 0.0, &wc).ok());
    Tensor u = Tensor::Empty({c.m, k}, DType::kF64), s = Tensor::Empty({k}, DType::kF64);
    Tensor vt = Tensor::Empty({k, c.n}, DType::kF64), inv = Tensor::Empty({c.n, c.n}, DType::kF64);
    ASSERT_TRUE(Backend().Svd(wc, &u, &s, &vt).ok());
    ASSERT_TRUE(Backend().Inverse(c_d, &inv).ok());
    const Tensor v_hat_t = ProductF64(vt, Transpose::kNo, inv, Transpose::kNo);  // V^^T = V~^T C_d^{-1}
    for (const bool ipm : {true, false}) {
      SCOPED_TRACE(ipm ? "IPM" : "KPM");
      const AdapterOptions options = Options(ipm ? Method::kCordaIpm : Method::kCordaKpm, r, 12.0);
      const double scale = AdapterScale(options);
      const int64_t begin = ipm ? 0 : k - r;
      std::vector<double> root(r);
      for (int64_t i = 0; i < r; ++i) root[i] = std::sqrt(s.at<double>({begin + i}) / scale);
      AdapterInit peft;
      peft.a = ProductF64(Diag(root), Transpose::kNo, v_hat_t.Slice(0, begin, begin + r), Transpose::kNo);
      peft.b = ProductF64(u.Slice(1, begin, begin + r), Transpose::kNo, Diag(root), Transpose::kNo);
      const AdapterInit ours = Init(options, w, &c_d);
      ExpectSameFactors(ours, peft, 1e-10);
      const Tensor peft_res = Combine(1.0, w, -scale, ProductF64(peft.b, Transpose::kNo, peft.a, Transpose::kNo));
      EXPECT_LE(RelativeError(ours.w_res, peft_res), 1e-10);
    }
  }
}

// A rank-deficient W: KPM would select a zero singular value of W C_d (A = 0 / 0 in PEFT).
TEST(CordaTest, KpmOnAZeroSingularValueIsAClearError) {
  for (const DType dt : {DType::kF32, DType::kF64}) {
    Tensor w = Tensor::Zeros({6, 8}, DType::kF64);
    for (int64_t i = 0; i < 5; ++i) w.at<double>({i, i}) = 6.0 - static_cast<double>(i);  // row 5 is zero
    w = w.To(dt);
    Tensor c = Tensor::Zeros({8, 8}, DType::kF64);
    for (int64_t i = 0; i < 8; ++i) c.at<double>({i, i}) = 1.0;
    const Tensor c_d = Damp(c.To(dt)).c_d;
    const absl::StatusOr<AdapterInit> kpm =
        InitializeAdapter(Backend(), Options(Method::kCordaKpm, 2), kLayer, w, &c_d, 1);
    EXPECT_EQ(kpm.status().code(), absl::StatusCode::kFailedPrecondition) << kpm.status();
    EXPECT_ERROR_MENTIONS(kpm.status(), kLayer, "KPM", "[6, 8]", "singular value 5");
    // IPM on the non-zero directions is fine.
    const AdapterInit ipm = Init(Options(Method::kCordaIpm, 2), w, &c_d);
    EXPECT_LE(RelativeError(Combine(1.0, ipm.w_res, 1.0, ScaledDelta(ipm)), w), Tol(dt));
  }
}

TEST(CordaTest, CovarianceErrors) {
  const Tensor w = RandomWithSingularValues(8, 12, LinearSpectrum(8), DType::kF32, 3);
  EXPECT_ERROR_MENTIONS(InitializeAdapter(Backend(), Options(Method::kCordaIpm, 2), kLayer, w, nullptr, 1).status(),
                        kLayer, "covariance");
  const Tensor wrong = Tensor::Zeros({8, 8}, DType::kF32);
  EXPECT_ERROR_MENTIONS(InitializeAdapter(Backend(), Options(Method::kCordaKpm, 2), kLayer, w, &wrong, 1).status(),
                        kLayer, "covariance", "[12, 12]");
  const Tensor f64 = Tensor::Zeros({12, 12}, DType::kF64);
  EXPECT_ERROR_MENTIONS(InitializeAdapter(Backend(), Options(Method::kCordaKpm, 2), kLayer, w, &f64, 1).status(),
                        kLayer, "covariance", "f32");
}

// Recipe 6: KaSA.
TEST_P(InitTest, KasaIdentities) {
  const int64_t r = 5;
  const Tensor w = W();
  const AdapterInit init = Init(Options(Method::kKasa, r), w);
  const std::vector<double> sigma = Values(SvdF64(w).s);
  // rank(W_res) = k - r: W_res keeps sigma_1 .. sigma_{k-r}.
  const std::vector<double> res = SingularValues(init.w_res);
  for (int64_t i = 0; i < k(); ++i) {
    EXPECT_NEAR(res[i], i < k() - r ? sigma[i] : 0.0, tol() * sigma[0]) << i;
  }
  // ||W - W_res||_F^2 = the sum of the r smallest sigma^2.
  const double tail = SumOfSquares(sigma, k() - r, k());
  EXPECT_NEAR(std::pow(FrobeniusNorm(Combine(1.0, w, -1.0, init.w_res)), 2), tail, tol() * tail);
  // W = W_res + tail_u diag(tail_s) tail_vt (the exact export of METHODS.md §11).
  ASSERT_EQ(init.tail_u.shape(), (Shape{m(), r}));
  ASSERT_EQ(init.tail_s.shape(), (Shape{r}));
  ASSERT_EQ(init.tail_vt.shape(), (Shape{r, n()}));
  EXPECT_TRUE(init.tail_u.is_contiguous());
  EXPECT_LE(RelativeError(Combine(1.0, init.w_res, 1.0, ReconstructF64(init.tail_u, init.tail_s, init.tail_vt)), w),
            tol());
  for (int64_t i = 0; i < r; ++i) EXPECT_NEAR(GetAsDouble(init.tail_s, i), sigma[k() - r + i], tol() * sigma[0]);
  // B = 0, A Kaiming-uniform, d ~ N(0, 1).
  EXPECT_EQ(init.b.shape(), (Shape{m(), r}));
  EXPECT_EQ(FrobeniusNorm(init.b), 0.0);
  ASSERT_EQ(init.a.shape(), (Shape{r, n()}));
  for (double v : Values(init.a)) EXPECT_LE(std::fabs(v), 1.0 / std::sqrt(static_cast<double>(n())));
  ASSERT_EQ(init.d.shape(), (Shape{r}));
  EXPECT_EQ(init.d.dtype(), dt());
  for (double v : Values(init.d)) EXPECT_LT(std::fabs(v), 6.0);
  EXPECT_GT(FrobeniusNorm(init.d), 0.0);
}

// KaSA at r = k is allowed (PEFT does not reject it): everything is truncated, W_res = 0.
TEST(KasaTest, FullRankTruncatesEverything) {
  const Tensor w = RandomWithSingularValues(6, 9, LinearSpectrum(6), DType::kF64, 4);
  const AdapterInit init = Init(Options(Method::kKasa, 6), w);
  EXPECT_EQ(FrobeniusNorm(init.w_res), 0.0);
  EXPECT_LE(RelativeError(ReconstructF64(init.tail_u, init.tail_s, init.tail_vt), w), 1e-12);
}

// rsLoRA: s = alpha / sqrt(r), and the factors use that s.
TEST(InitOptionsTest, RankStabilizedScale) {
  const Tensor w = RandomWithSingularValues(24, 40, LinearSpectrum(24), DType::kF64, 8);
  AdapterOptions options = Options(Method::kPissa, 4, 16.0);
  options.scaling = Scaling::kRankStabilized;
  const AdapterInit init = Init(options, w);
  EXPECT_DOUBLE_EQ(init.scale, 8.0);
  EXPECT_LE(RelativeError(Combine(1.0, init.w_res, 1.0, ScaledDelta(init)), w), 1e-12);
  const std::vector<double> sigma = Values(SvdF64(w).s);
  std::vector<double> expected(sigma.begin(), sigma.begin() + 4);
  for (double& v : expected) v /= 8.0;
  EXPECT_TRUE(
      AllClose(ProductF64(init.a, Transpose::kNo, init.a, Transpose::kYes), Diag(expected), Tolerance{1e-12, 1e-12}));
  options.method = Method::kLora;
  EXPECT_DOUBLE_EQ(Init(options, w).scale, 8.0);
}

TEST(InitOptionsTest, RankAboveMinDimensionIsAnError) {
  const Tensor w = RandomWithSingularValues(24, 40, LinearSpectrum(24), DType::kF32, 8);
  const Tensor c_d = Damp(RandomSymmetric(40, LogSpaced(40, 1.0, 0.1), DType::kF32, 2)).c_d;
  for (const Method method : {Method::kPissa, Method::kMilora, Method::kCordaIpm, Method::kCordaKpm, Method::kKasa}) {
    SCOPED_TRACE(std::string(MethodName(method)));
    const absl::StatusOr<AdapterInit> init = InitializeAdapter(Backend(), Options(method, 25), kLayer, w, &c_d, 1);
    EXPECT_EQ(init.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_ERROR_MENTIONS(init.status(), kLayer, "[24, 40]", "25");
  }
  // Plain LoRA has no such limit (as PEFT).
  EXPECT_TRUE(InitializeAdapter(Backend(), Options(Method::kLora, 25), kLayer, w, nullptr, 1).ok());
  // Invalid options and weights name the layer too.
  EXPECT_ERROR_MENTIONS(InitializeAdapter(Backend(), Options(Method::kPissa, 0), kLayer, w, nullptr, 1).status(),
                        kLayer, "rank");
  Tensor bad = w.Contiguous();
  bad.at<float>({3, 4}) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_ERROR_MENTIONS(InitializeAdapter(Backend(), Options(Method::kPissa, 2), kLayer, bad, nullptr, 1).status(),
                        kLayer, "1 non-finite");
  const Tensor half = w.To(DType::kBF16);
  EXPECT_ERROR_MENTIONS(InitializeAdapter(Backend(), Options(Method::kLora, 2), kLayer, half, nullptr, 1).status(),
                        kLayer, "f32/f64");
}

TEST(InitOptionsTest, SameSeedSameBits) {
  for (const DType dt : {DType::kF32, DType::kF64}) {
    const Tensor w = RandomWithSingularValues(24, 40, LinearSpectrum(24), dt, 8);
    AdapterOptions fast = Options(Method::kPissa, 4);
    fast.pissa_niter = 2;
    for (const AdapterOptions& options : {Options(Method::kLora, 4), Options(Method::kKasa, 4), fast}) {
      SCOPED_TRACE(std::string(MethodName(options.method)));
      const AdapterInit first = Init(options, w, nullptr, 42), second = Init(options, w, nullptr, 42);
      EXPECT_TRUE(SameBits(first.a, second.a));
      EXPECT_TRUE(SameBits(first.b, second.b));
      if (options.method == Method::kKasa) {
        EXPECT_TRUE(SameBits(first.d, second.d));
      }
      EXPECT_TRUE(SameBits(first.w_res, second.w_res));
      EXPECT_FALSE(SameBits(Init(options, w, nullptr, 43).a, first.a));
    }
  }
}

// --- DampCovariance ---

TEST(DampCovarianceTest, WellConditionedAcceptsTheFirstDamping) {
  for (const DType dt : {DType::kF32, DType::kF64}) {
    const Tensor c = RandomSymmetric(32, LogSpaced(32, 1.0, 0.5), dt, 6);
    const DampedCovariance damped = Damp(c);
    EXPECT_EQ(damped.doublings, 0);
    EXPECT_DOUBLE_EQ(damped.damping, 0.01);
    EXPECT_LT(damped.inverse_error, Tol(dt));
    double mean = 0;
    for (int64_t i = 0; i < 32; ++i) mean += GetAsDouble(c, i * 33) / 32;
    Tensor expected = c.To(DType::kF64);
    for (int64_t i = 0; i < 32; ++i) expected.at<double>({i, i}) += 0.01 * mean;
    EXPECT_TRUE(AllClose(damped.c_d, expected, Tolerance{Tol(dt), Tol(dt)}));
    EXPECT_EQ(damped.c_d.dtype(), dt);
    EXPECT_NE(damped.c_d.raw_data(), c.raw_data());
  }
}

// An activation covariance with one outlier direction over a faint isotropic background,
// C = u u^T + 1e-6 Y^T Y / n (u, Y Gaussian; eigenvalues from 1 down to ~1e-13): cond(C_d) at
// d = 0.01 is ~100 n, and in f32 the LU inverse misses ||C_d C_d^{-1} - I||_F < 0.05 (by ~2x at
// n = 2048, so d doubles), while in f64 the first d passes.
TEST(DampCovarianceTest, IllConditionedF32Doubles) {
  const int64_t n = 2048;
  const Tensor u = RandomNormal({n, 1}, DType::kF64, 3);
  const Tensor y = RandomNormal({n, n}, DType::kF64, 4);
  Tensor c64 = Tensor::Empty({n, n}, DType::kF64);
  ASSERT_TRUE(Backend().Matmul(y, Transpose::kYes, y, Transpose::kNo, 1e-6 / n, 0.0, &c64).ok());
  const double uu = std::pow(FrobeniusNorm(u), 2);
  ASSERT_TRUE(Backend().Matmul(u, Transpose::kNo, u, Transpose::kYes, 1.0 / uu, 1.0, &c64).ok());
  const Tensor c = c64.To(DType::kF32);
  const DampedCovariance damped = Damp(c);
  EXPECT_GE(damped.doublings, 1);
  EXPECT_DOUBLE_EQ(damped.damping, 0.01 * std::pow(2.0, damped.doublings));
  EXPECT_LT(damped.inverse_error, 0.05);
  // Without doublings that is a FailedPrecondition naming the layer and the last error.
  const absl::StatusOr<DampedCovariance> strict = DampCovariance(Backend(), kLayer, c, /*max_doublings=*/0);
  EXPECT_EQ(strict.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_ERROR_MENTIONS(strict.status(), kLayer, "0 doublings", "||C_d inv(C_d) - I||_F");
  // In f64 the first damping passes.
  const DampedCovariance damped64 = Damp(c64);
  EXPECT_EQ(damped64.doublings, 0);
  EXPECT_LT(damped64.inverse_error, 1e-6);
}

// C_d at d = 0.01 is exactly singular ([[101, 101], [101, 101]]): keep doubling, as PEFT would have
// to (its inv raises).
TEST(DampCovarianceTest, ExactlySingularDampingDoubles) {
  for (const DType dt : {DType::kF32, DType::kF64}) {
    const Tensor c = Tensor::FromVector<double>({2, 2}, {100, 101, 101, 100}).To(dt);
    const DampedCovariance damped = Damp(c);
    EXPECT_EQ(damped.doublings, 1);
    EXPECT_DOUBLE_EQ(damped.damping, 0.02);
    EXPECT_TRUE(AllClose(damped.c_d, Tensor::FromVector<double>({2, 2}, {102, 101, 101, 102}), Tolerance{0, 0}));
  }
}

TEST(DampCovarianceTest, NonFiniteAndZeroCovariancesAreErrors) {
  for (const DType dt : {DType::kF32, DType::kF64}) {
    Tensor c = RandomSymmetric(8, LogSpaced(8, 1.0, 0.1), DType::kF64, 1);
    c.at<double>({2, 3}) = std::numeric_limits<double>::quiet_NaN();
    c.at<double>({3, 2}) = std::numeric_limits<double>::infinity();
    const absl::StatusOr<DampedCovariance> nan = DampCovariance(Backend(), kLayer, c.To(dt));
    EXPECT_EQ(nan.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_ERROR_MENTIONS(nan.status(), "covariance of model.layers.3.self_attn.q_proj holds 2 non-finite values",
                          "NaN/Inf");
    const absl::StatusOr<DampedCovariance> zero = DampCovariance(Backend(), kLayer, Tensor::Zeros({8, 8}, dt));
    EXPECT_EQ(zero.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_ERROR_MENTIONS(zero.status(), kLayer, "the layer never saw non-zero input");
  }
  EXPECT_ERROR_MENTIONS(DampCovariance(Backend(), kLayer, Tensor::Zeros({3, 4}, DType::kF32)).status(), kLayer,
                        "square");
}

}  // namespace
}  // namespace sigmatune::peft
