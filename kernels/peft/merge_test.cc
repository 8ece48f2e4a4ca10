// Merge / Unmerge and the plain-LoRA export on the CPU backend (METHODS.md §11, §14 recipes 2, 6, 11):
//   W + s' B' A' == W_res + s B diag(d) A  for random trained factors (f32 <= 1e-6 relative, f64),
// for PiSSA-style residual inits ([A; A0], [B, -B0]) and KaSA (the truncated tail), with the
// standard and the rank-stabilised scaling; merge then unmerge returns W_res.
#include "kernels/peft/merge.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/model/backend.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/random.h"
#include "kernels/testing/status.h"

namespace sigmatune::peft {
namespace {

using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::RandomUniform;
using ::sigmatune::testing::RandomWithSingularValues;
using ::sigmatune::testing::RelativeError;
using ::sigmatune::testing::Tolerance;

constexpr int64_t kM = 12, kN = 9, kR = 3;

// W + scale * B diag(d) A in double (d may be undefined), as an f64 CPU tensor.
Tensor DenseUpdate(const Tensor& w, const Tensor& b, const Tensor& d, const Tensor& a, double scale) {
  const int64_t m = w.dim(0), n = w.dim(1), r = a.dim(0);
  Tensor out = w.To(DType::kF64);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0.0;
      for (int64_t k = 0; k < r; ++k) {
        const double dk = d.defined() ? GetAsDouble(d, k) : 1.0;
        sum += GetAsDouble(b, i * r + k) * dk * GetAsDouble(a, k * n + j);
      }
      out.data<double>()[i * n + j] += scale * sum;
    }
  }
  return out;
}

std::vector<double> DistinctSingularValues(int64_t k) {
  std::vector<double> s(k);
  for (int64_t i = 0; i < k; ++i) s[i] = 3.0 * std::pow(0.7, static_cast<double>(i));
  return s;
}

Tensor PlusNoise(const Tensor& t, double amplitude, uint64_t seed) {
  const Tensor noise = RandomNormal(t.shape(), DType::kF64, seed);
  Tensor out = t.To(DType::kF64);
  for (int64_t i = 0; i < out.numel(); ++i) out.data<double>()[i] += amplitude * noise.data<double>()[i];
  return out.To(t.dtype());
}

Tensor ScaledRows(const Tensor& m, const std::vector<double>& f) {  // diag(f) m
  Tensor out = m.To(DType::kF64);
  for (int64_t i = 0; i < m.dim(0); ++i)
    for (int64_t j = 0; j < m.dim(1); ++j) out.data<double>()[i * m.dim(1) + j] *= f[i];
  return out.To(m.dtype());
}

Tensor ScaledCols(const Tensor& m, const std::vector<double>& f) {  // m diag(f)
  Tensor out = m.To(DType::kF64);
  for (int64_t i = 0; i < m.dim(0); ++i)
    for (int64_t j = 0; j < m.dim(1); ++j) out.data<double>()[i * m.dim(1) + j] *= f[j];
  return out.To(m.dtype());
}

struct Svd {
  Tensor u, s, vt;
};

Svd Decompose(model::ModelBackend& backend, const Tensor& w) {
  const int64_t k = std::min(w.dim(0), w.dim(1));
  Svd out{Tensor::Empty({w.dim(0), k}, w.dtype()), Tensor::Empty({k}, w.dtype()), Tensor::Empty({k, w.dim(1)}, w.dtype())};
  const absl::Status st = backend.Svd(w, &out.u, &out.s, &out.vt);
  ST_CHECK(st.ok()) << st;
  return out;
}

double Tol(DType dt) { return dt == DType::kF32 ? 1e-6 : 1e-13; }

class MergeTest : public ::testing::TestWithParam<DType> {
 protected:
  DType dt() const { return GetParam(); }
  model::CpuBackend backend_;
};

// Recipes 2 / 6: merge adds s B diag(d) A; unmerge returns W_res.
TEST_P(MergeTest, MergeAndUnmerge) {
  for (bool with_d : {false, true}) {
    SCOPED_TRACE(with_d ? "with d" : "without d");
    const Tensor w_res = RandomNormal({kM, kN}, dt(), 1), a = RandomNormal({kR, kN}, dt(), 2);
    const Tensor b = RandomNormal({kM, kR}, dt(), 3);
    const Tensor d = with_d ? RandomNormal({kR}, dt(), 4) : Tensor();
    const double s = 0.75;
    Tensor w = w_res.Contiguous();
    ASSERT_TRUE(Merge(backend_, a, b, d, s, &w).ok());
    EXPECT_LE(RelativeError(w, DenseUpdate(w_res, b, d, a, s)), Tol(dt()));
    ASSERT_TRUE(Unmerge(backend_, a, b, d, s, &w).ok());
    EXPECT_LE(RelativeError(w, w_res), Tol(dt()));
  }
}

// A bf16 base weight is updated in the adapter's dtype and rounded once.
TEST(MergeBf16Test, WidensTheWeight) {
  model::CpuBackend backend;
  const Tensor w_res = RandomNormal({kM, kN}, DType::kBF16, 1), a = RandomNormal({kR, kN}, DType::kF32, 2);
  const Tensor b = RandomNormal({kM, kR}, DType::kF32, 3);
  Tensor w = w_res.Contiguous();
  ASSERT_TRUE(Merge(backend, a, b, Tensor(), 0.5, &w).ok());
  EXPECT_EQ(w.dtype(), DType::kBF16);
  EXPECT_LE(RelativeError(w, DenseUpdate(w_res, b, Tensor(), a, 0.5)), 1e-2);
}

// Recipe 11 for the residual methods: PiSSA-style A0, B0 (the top-r triplets), W_res = W - s B0 A0.
TEST_P(MergeTest, ResidualInitExportsExactly) {
  for (Scaling scaling : {Scaling::kStandard, Scaling::kRankStabilized}) {
    SCOPED_TRACE(scaling == Scaling::kStandard ? "standard" : "rslora");
    AdapterOptions options;
    options.method = Method::kPissa;
    options.rank = kR;
    options.alpha = 16.0;
    options.scaling = scaling;
    const double s = AdapterScale(options);
    const Tensor w = RandomWithSingularValues(kM, kN, DistinctSingularValues(kN), dt(), 5);
    const Svd svd = Decompose(backend_, w);
    std::vector<double> root(kR);
    for (int64_t i = 0; i < kR; ++i) root[i] = std::sqrt(GetAsDouble(svd.s, i) / s);
    AdapterInit init;
    init.a = ScaledRows(svd.vt.Slice(0, 0, kR).Contiguous(), root);
    init.b = ScaledCols(svd.u.Slice(1, 0, kR).Contiguous(), root);
    init.scale = s;
    init.w_res = w.Contiguous();
    ASSERT_TRUE(Unmerge(backend_, init.a, init.b, Tensor(), s, &init.w_res).ok());
    // "Trained" factors.
    const Tensor a = PlusNoise(init.a, 0.3, 6), b = PlusNoise(init.b, 0.3, 7);

    auto lora = ConvertToPlainLora(backend_, options, init, a, b, Tensor());
    ASSERT_TRUE(lora.ok()) << lora.status();
    EXPECT_EQ(lora->rank, 2 * kR);
    EXPECT_EQ(lora->a.shape(), (Shape{2 * kR, kN}));
    EXPECT_EQ(lora->b.shape(), (Shape{kM, 2 * kR}));
    EXPECT_DOUBLE_EQ(lora->alpha, scaling == Scaling::kStandard ? 32.0 : 16.0 * std::sqrt(2.0));
    AdapterOptions converted = options;
    converted.rank = lora->rank;
    converted.alpha = lora->alpha;
    const double s2 = AdapterScale(converted);
    EXPECT_NEAR(s2, s, 1e-15 * s);
    // W + s' B' A' == W_res + s B A.
    EXPECT_LE(RelativeError(DenseUpdate(w, lora->b, Tensor(), lora->a, s2), DenseUpdate(init.w_res, b, Tensor(), a, s)),
              Tol(dt()));
    // The same through Merge on the device: merging the export into W equals merging the adapter into W_res.
    Tensor merged_export = w.Contiguous(), merged_adapter = init.w_res.Contiguous();
    ASSERT_TRUE(Merge(backend_, lora->a, lora->b, Tensor(), s2, &merged_export).ok());
    ASSERT_TRUE(Merge(backend_, a, b, Tensor(), s, &merged_adapter).ok());
    EXPECT_LE(RelativeError(merged_export, merged_adapter), 2 * Tol(dt()));
  }
}

// KaSA: W = W_res + P_t S_t Q_t^T (the r smallest triplets); the trained update s B diag(d) A.
TEST_P(MergeTest, KasaExportsExactly) {
  AdapterOptions options;
  options.method = Method::kKasa;
  options.rank = kR;
  options.alpha = 16.0;
  const double s = AdapterScale(options);
  const int64_t k = kN;
  const Tensor w = RandomWithSingularValues(kM, kN, DistinctSingularValues(k), dt(), 8);
  const Svd svd = Decompose(backend_, w);
  AdapterInit init;
  init.tail_u = svd.u.Slice(1, k - kR, k).Contiguous();
  init.tail_s = svd.s.Slice(0, k - kR, k).Contiguous();
  init.tail_vt = svd.vt.Slice(0, k - kR, k).Contiguous();
  std::vector<double> tail_s(kR);
  for (int64_t i = 0; i < kR; ++i) tail_s[i] = GetAsDouble(init.tail_s, i);
  // W_res = W - tail, computed as PEFT does (from the top triplets) would differ by rounding only.
  init.w_res = w.Contiguous();
  ASSERT_TRUE(Unmerge(backend_, init.tail_vt, init.tail_u, init.tail_s, 1.0, &init.w_res).ok());
  const double bound = 1.0 / std::sqrt(static_cast<double>(kN));
  init.a = RandomUniform({kR, kN}, dt(), -bound, bound, 16);
  init.b = Tensor::Zeros({kM, kR}, dt());
  init.d = RandomNormal({kR}, dt(), 9);
  init.scale = s;
  const Tensor a = PlusNoise(init.a, 0.2, 10), b = PlusNoise(init.b, 0.2, 11), d = PlusNoise(init.d, 0.2, 12);

  auto lora = ConvertToPlainLora(backend_, options, init, a, b, d);
  ASSERT_TRUE(lora.ok()) << lora.status();
  EXPECT_EQ(lora->rank, 2 * kR);
  EXPECT_DOUBLE_EQ(lora->alpha, 32.0);
  const Tensor expected = DenseUpdate(init.w_res, b, d, a, s);
  EXPECT_LE(RelativeError(DenseUpdate(w, lora->b, Tensor(), lora->a, s), expected), Tol(dt()));
  // METHODS.md §11's factors: A' = [A; Q_t^T], B' = [B diag(d), -P_t S_t / s].
  EXPECT_TRUE(AllClose(lora->a.Slice(0, kR, 2 * kR).Contiguous(), init.tail_vt, Tolerance{0, 0}));
  // FORMATS.md §3's alternative, B'' = [B, -P_t], A'' = [diag(d) A; S_t Q_t^T / s], is the same product.
  {
    std::vector<double> dv(kR), tail_over_s(kR);
    for (int64_t i = 0; i < kR; ++i) dv[i] = GetAsDouble(d, i), tail_over_s[i] = tail_s[i] / s;
    const Tensor top = ScaledRows(a, dv), bottom = ScaledRows(init.tail_vt, tail_over_s);
    Tensor a2 = Tensor::Empty({2 * kR, kN}, DType::kF64), b2 = Tensor::Empty({kM, 2 * kR}, DType::kF64);
    a2.Slice(0, 0, kR).CopyFrom(top);
    a2.Slice(0, kR, 2 * kR).CopyFrom(bottom);
    b2.Slice(1, 0, kR).CopyFrom(b);
    Tensor minus_u = ScaledCols(init.tail_u, std::vector<double>(kR, -1.0));
    b2.Slice(1, kR, 2 * kR).CopyFrom(minus_u);
    EXPECT_LE(RelativeError(DenseUpdate(w, b2, Tensor(), a2, s), expected), Tol(dt()));
  }
  // Recipe 6: merge then unmerge of the trained adapter returns W_res (never W).
  Tensor merged = init.w_res.Contiguous();
  ASSERT_TRUE(Merge(backend_, a, b, d, s, &merged).ok());
  EXPECT_LE(RelativeError(merged, expected), Tol(dt()));
  ASSERT_TRUE(Unmerge(backend_, a, b, d, s, &merged).ok());
  EXPECT_LE(RelativeError(merged, init.w_res), Tol(dt()));
  EXPECT_GT(RelativeError(merged, w), 1e-3);
}

// LoRA needs no conversion: W_res == W, and the adapter comes back as is (copies).
TEST_P(MergeTest, LoraIsUnchanged) {
  AdapterOptions options;
  options.rank = kR;
  options.alpha = 8.0;
  AdapterInit init;
  init.w_res = RandomNormal({kM, kN}, dt(), 13);
  const Tensor a = RandomNormal({kR, kN}, dt(), 14), b = RandomNormal({kM, kR}, dt(), 15);
  auto lora = ConvertToPlainLora(backend_, options, init, a, b, Tensor());
  ASSERT_TRUE(lora.ok()) << lora.status();
  EXPECT_EQ(lora->rank, kR);
  EXPECT_EQ(lora->alpha, 8.0);
  EXPECT_EQ(ConvertedRank(options), kR);
  EXPECT_TRUE(AllClose(lora->a, a, Tolerance{0, 0}));
  EXPECT_TRUE(AllClose(lora->b, b, Tolerance{0, 0}));
  EXPECT_NE(lora->a.raw_data(), a.raw_data());
}

INSTANTIATE_TEST_SUITE_P(DTypes, MergeTest, ::testing::Values(DType::kF32, DType::kF64),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

TEST(MergeErrorsTest, NameTheProblem) {
  model::CpuBackend backend;
  const Tensor a = RandomNormal({kR, kN}, DType::kF32, 1), b = RandomNormal({kM, kR}, DType::kF32, 2);
  Tensor w = RandomNormal({kM, kN + 1}, DType::kF32, 3);
  EXPECT_ERROR_MENTIONS(Merge(backend, a, b, Tensor(), 1.0, &w), "Merge", "weight", "[12, 9]");
  Tensor w_ok = RandomNormal({kM, kN}, DType::kF32, 3);
  EXPECT_ERROR_MENTIONS(Unmerge(backend, a, RandomNormal({kM, kR + 1}, DType::kF32, 1), Tensor(), 1.0, &w_ok),
                        "Unmerge", "b must be");
  EXPECT_ERROR_MENTIONS(Merge(backend, a, b, RandomNormal({kR + 1}, DType::kF32, 1), 1.0, &w_ok), "d must be");

  AdapterOptions options;
  options.method = Method::kPissa;
  options.rank = kR + 1;
  AdapterInit init;
  EXPECT_ERROR_MENTIONS(ConvertToPlainLora(backend, options, init, a, b, Tensor()).status(), "rank 3", "rank 4");
  options.rank = kR;
  EXPECT_ERROR_MENTIONS(ConvertToPlainLora(backend, options, init, a, b, Tensor()).status(), "init.a");
  options.method = Method::kKasa;
  EXPECT_ERROR_MENTIONS(ConvertToPlainLora(backend, options, init, a, b, Tensor()).status(), "kasa", "diagonal d");
  EXPECT_ERROR_MENTIONS(ConvertToPlainLora(backend, options, init, a, b, RandomNormal({kR}, DType::kF32, 1)).status(),
                        "init.tail_u");
}

}  // namespace
}  // namespace sigmatune::peft
