#include "worker/train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/tensor.h"
#include "kernels/model/backend.h"
#include "kernels/ops/adamw.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/random.h"
#include "kernels/testing/status.h"

namespace sigmatune::train {
namespace {

using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::LoadGolden;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::RunfilePath;
using ::sigmatune::testing::Tolerance;

constexpr Tolerance kExact{0, 0};

// Parameters and gradients owned by a test, in the order given.
struct Model {
  std::vector<std::string> names;
  std::vector<Tensor> values, grads;

  std::vector<AdamW::Param> Params() {
    std::vector<AdamW::Param> out;
    for (size_t i = 0; i < names.size(); ++i) out.push_back({names[i], &values[i], &grads[i]});
    return out;
  }
  Model Clone() const {
    Model m{names, {}, {}};
    for (const Tensor& v : values) m.values.push_back(v.Contiguous());
    for (const Tensor& g : grads) m.grads.push_back(g.Contiguous());
    return m;
  }
};

Model RandomModel(DType dt, uint64_t seed) {
  Model m;
  const std::vector<Shape> shapes = {{7, 3}, {111}, {1}, {4, 2, 5}};
  for (size_t i = 0; i < shapes.size(); ++i) {
    m.names.push_back(absl::StrCat("layers.", i, ".lora_A"));
    m.values.push_back(RandomNormal(shapes[i], dt, seed + i));
    m.grads.push_back(Tensor::Zeros(shapes[i], dt));
  }
  return m;
}

// Deterministic gradients of step k (their total norm varies around 2).
void SetGradients(Model* m, int k) {
  for (size_t i = 0; i < m->grads.size(); ++i) {
    m->grads[i].CopyFrom(RandomNormal(m->grads[i].shape(), m->grads[i].dtype(), 1000 + 10 * k + i));
    if (m->grads[i].dtype() == DType::kF32) {
      for (int64_t j = 0; j < m->grads[i].numel(); ++j) m->grads[i].data<float>()[j] *= 0.15f * (k % 3 + 1);
    } else {
      for (int64_t j = 0; j < m->grads[i].numel(); ++j) m->grads[i].data<double>()[j] *= 0.15 * (k % 3 + 1);
    }
  }
}

AdamWOptions TestOptions() {
  AdamWOptions o;
  o.lr = 1e-2;
  o.beta1 = 0.85;
  o.beta2 = 0.99;
  o.eps = 1e-6;
  o.weight_decay = 0.01;
  o.max_grad_norm = 1.0;
  return o;
}

// 1e-6 relative to each element and to the tensor's largest magnitude.
Tolerance RelativeToScale(const Tensor& want) {
  double scale = 0;
  for (int64_t i = 0; i < want.numel(); ++i) scale = std::max(scale, std::abs(GetAsDouble(want, i)));
  return Tolerance{1e-6 * scale, 1e-6};
}

double Lr(int k) { return 1e-2 * (1.0 - 0.1 * k); }

::testing::AssertionResult SameState(const AdamW& got, const AdamW& want, Tolerance tol) {
  auto g = got.StateTensors(), w = want.StateTensors();
  if (!g.ok() || !w.ok()) return ::testing::AssertionFailure() << g.status() << w.status();
  if (got.step() != want.step())
    return ::testing::AssertionFailure() << got.step() << " vs " << want.step() << " steps";
  for (const auto& [name, t] : *w) {
    ::testing::AssertionResult r = AllClose(g->at(name), t, tol);
    if (!r) return r << " (" << name << ")";
  }
  for (size_t i = 0; i < want.params().size(); ++i) {
    ::testing::AssertionResult r = AllClose(*got.params()[i].value, *want.params()[i].value, tol);
    if (!r) return r << " (" << want.params()[i].name << ")";
  }
  return ::testing::AssertionSuccess();
}

TEST(AdamWTest, MatchesPyTorchFixture) {
  // tools/golden/make_optim_fixtures.py: torch.optim.AdamW after clip_grad_norm_(max_norm = 0.5), lr
  // from get_cosine_schedule_with_warmup(2, 5), stepped as transformers' Trainer does.
  auto golden = LoadGolden(RunfilePath("tests/testdata/optim/adamw.safetensors"));
  ASSERT_TRUE(golden.ok()) << golden.status();
  const std::map<std::string, Tensor>& t = *golden;
  const Tensor& hp = t.at("hparams");
  Model m;
  for (const char* name : {"a", "b", "c", "d"}) {
    m.names.push_back(name);
    m.values.push_back(t.at(absl::StrCat("init.", name)).Contiguous());
    m.grads.push_back(Tensor::Zeros(m.values.back().shape(), DType::kF32));
  }
  AdamWOptions options;
  options.lr = GetAsDouble(hp, 0);
  options.beta1 = GetAsDouble(hp, 1);
  options.beta2 = GetAsDouble(hp, 2);
  options.eps = GetAsDouble(hp, 3);
  options.weight_decay = GetAsDouble(hp, 4);
  options.max_grad_norm = GetAsDouble(hp, 5);
  model::CpuBackend backend(1);
  auto opt = AdamW::Create(&backend, m.Params(), options);
  ASSERT_TRUE(opt.ok()) << opt.status();

  int clipped = 0, unclipped = 0;
  for (int k = 1; k <= 5; ++k) {
    SCOPED_TRACE(::testing::Message() << "step " << k);
    const std::string p = absl::StrCat("step", k, ".");
    for (size_t i = 0; i < m.names.size(); ++i) m.grads[i].CopyFrom(t.at(p + "grad." + m.names[i]));
    const double lr = GetAsDouble(t.at(p + "lr"), 0);
    auto stats = (*opt)->Step(lr, 1.0);
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ((*opt)->step(), k);
    EXPECT_EQ(stats->lr, lr);
    const double want_norm = GetAsDouble(t.at(p + "grad_norm"), 0);
    EXPECT_NEAR(stats->grad_norm, want_norm, 1e-5 * want_norm);
    EXPECT_NEAR(stats->clip_coef, GetAsDouble(t.at(p + "clip_coef"), 0), 1e-6);
    (stats->clip_coef < 1 ? clipped : unclipped) += 1;

    // torch clips with an f32 norm and coefficient, this optimizer in double: the scaled gradients
    // differ by ~1e-7 relative, so the states match to 1e-6 of each tensor's scale (an exp_avg
    // element that nearly cancels can be much smaller than that scale).
    auto state = (*opt)->StateTensors();
    ASSERT_TRUE(state.ok()) << state.status();
    for (size_t i = 0; i < m.names.size(); ++i) {
      const std::string& name = m.names[i];
      SCOPED_TRACE(name);
      EXPECT_TRUE(AllClose(m.values[i], t.at(p + "param." + name), RelativeToScale(t.at(p + "param." + name))));
      const Tensor& exp_avg = t.at(p + "exp_avg." + name);
      EXPECT_TRUE(AllClose(state->at(name + ".exp_avg"), exp_avg, RelativeToScale(exp_avg)));
      const Tensor& exp_avg_sq = t.at(p + "exp_avg_sq." + name);
      EXPECT_TRUE(AllClose(state->at(name + ".exp_avg_sq"), exp_avg_sq, RelativeToScale(exp_avg_sq)));
    }
  }
  // The fixture exercises both sides of clipping, and a first step at lr 0 (warmup).
  EXPECT_GE(clipped, 1);
  EXPECT_GE(unclipped, 1);
  EXPECT_EQ(GetAsDouble(t.at("step1.lr"), 0), 0.0);
}

TEST(AdamWTest, GradScaleAppliesBeforeClipping) {
  // Gradients twice as large with grad_scale 0.5 are the same step to the bit (powers of two), and
  // the reported norm is the scaled one.
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    model::CpuBackend backend(1);
    Model a = RandomModel(dt, 1), b = a.Clone();
    auto opt_a = AdamW::Create(&backend, a.Params(), TestOptions());
    auto opt_b = AdamW::Create(&backend, b.Params(), TestOptions());
    ASSERT_TRUE(opt_a.ok() && opt_b.ok());
    for (int k = 0; k < 4; ++k) {
      SetGradients(&a, k);
      SetGradients(&b, k);
      for (Tensor& g : b.grads) {
        Tensor doubled = g.To(DType::kF64);
        for (int64_t j = 0; j < doubled.numel(); ++j) doubled.data<double>()[j] *= 2;
        g.CopyFrom(doubled);
      }
      auto sa = (*opt_a)->Step(Lr(k), 1.0), sb = (*opt_b)->Step(Lr(k), 0.5);
      ASSERT_TRUE(sa.ok() && sb.ok());
      EXPECT_EQ(sa->grad_norm, sb->grad_norm);
      EXPECT_EQ(sa->clip_coef, sb->clip_coef);
      EXPECT_TRUE(SameState(**opt_b, **opt_a, kExact));
    }
  }
}

TEST(AdamWTest, ClipsLikeClipGradNorm) {
  model::CpuBackend backend(1);
  Model m = RandomModel(DType::kF64, 2), ref = m.Clone();
  AdamWOptions options = TestOptions();
  options.max_grad_norm = 0.25;
  auto opt = AdamW::Create(&backend, m.Params(), options);
  ASSERT_TRUE(opt.ok());
  SetGradients(&m, 0);
  SetGradients(&ref, 0);
  double sum = 0;
  for (const Tensor& g : m.grads) {
    for (int64_t j = 0; j < g.numel(); ++j) sum += GetAsDouble(g, j) * GetAsDouble(g, j);
  }
  const double norm = 3.0 * std::sqrt(sum);
  auto stats = (*opt)->Step(1e-3, 3.0);
  ASSERT_TRUE(stats.ok());
  EXPECT_NEAR(stats->grad_norm, norm, 1e-12 * norm);
  EXPECT_NEAR(stats->clip_coef, 0.25 / (norm + 1e-6), 1e-15);
  ASSERT_LT(stats->clip_coef, 1.0);
  // The step is the kernel's with grad_scale * coef (the gradients themselves are untouched).
  for (size_t i = 0; i < ref.values.size(); ++i) {
    EXPECT_TRUE(AllClose(m.grads[i], ref.grads[i], kExact));
    Tensor exp_avg = Tensor::Zeros(ref.values[i].shape(), DType::kF64);
    Tensor exp_avg_sq = Tensor::Zeros(ref.values[i].shape(), DType::kF64);
    kernels::AdamWStepArgs args;
    args.lr = 1e-3;
    args.beta1 = options.beta1;
    args.beta2 = options.beta2;
    args.eps = options.eps;
    args.weight_decay = options.weight_decay;
    args.grad_scale = 3.0 * stats->clip_coef;
    args.step = 1;
    ASSERT_TRUE(kernels::cpu::AdamWStep(&ref.values[i], ref.grads[i], &exp_avg, &exp_avg_sq, args).ok());
    EXPECT_TRUE(AllClose(m.values[i], ref.values[i], kExact));
  }

  // max_grad_norm <= 0: no clipping, but the norm is still reported.
  for (double off : {0.0, -1.0}) {
    Model n = RandomModel(DType::kF32, 3);
    options.max_grad_norm = off;
    auto unclipped = AdamW::Create(&backend, n.Params(), options);
    ASSERT_TRUE(unclipped.ok());
    SetGradients(&n, 2);
    auto s = (*unclipped)->Step(1e-3, 10.0);
    ASSERT_TRUE(s.ok());
    EXPECT_GT(s->grad_norm, 10.0);
    EXPECT_EQ(s->clip_coef, 1.0);
  }
}

TEST(AdamWTest, NonFiniteGradientChangesNothing) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(), 3e38f}) {
    SCOPED_TRACE(::testing::Message() << "bad gradient element " << bad);
    model::CpuBackend backend(1);
    Model m = RandomModel(DType::kF32, 4);
    auto opt = AdamW::Create(&backend, m.Params(), TestOptions());
    ASSERT_TRUE(opt.ok());
    for (int k = 0; k < 2; ++k) {
      SetGradients(&m, k);
      ASSERT_TRUE((*opt)->Step(Lr(k), 1.0).ok());
    }
    Model before = m.Clone();
    auto state_before = (*opt)->StateTensors();
    ASSERT_TRUE(state_before.ok());

    SetGradients(&m, 2);
    m.grads[1].data<float>()[17] = bad;
    // A huge finite element: its square is finite in double, the norm scaled by 1e300 is not.
    const double scale = std::isfinite(bad) ? 1e300 : 1.0;
    auto stats = (*opt)->Step(Lr(2), scale);
    ASSERT_FALSE(stats.ok());
    EXPECT_EQ(stats.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_ERROR_MENTIONS(stats.status(), "gradient norm is NaN/Inf at step 3");
    EXPECT_EQ((*opt)->step(), 2);
    for (size_t i = 0; i < m.values.size(); ++i) EXPECT_TRUE(AllClose(m.values[i], before.values[i], kExact));
    auto state_after = (*opt)->StateTensors();
    ASSERT_TRUE(state_after.ok());
    for (const auto& [name, t] : *state_before) EXPECT_TRUE(AllClose(state_after->at(name), t, kExact)) << name;

    // Fixed gradients: training goes on from the same state.
    SetGradients(&m, 2);
    auto ok = (*opt)->Step(Lr(2), 1.0);
    ASSERT_TRUE(ok.ok()) << ok.status();
    EXPECT_EQ((*opt)->step(), 3);
  }
}

TEST(AdamWTest, LoadStateRoundTripContinuesBitIdentically) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    model::CpuBackend backend(2);
    // Never stopped: five steps.
    Model straight = RandomModel(dt, 5);
    auto opt = AdamW::Create(&backend, straight.Params(), TestOptions());
    ASSERT_TRUE(opt.ok());
    for (int k = 0; k < 5; ++k) {
      SetGradients(&straight, k);
      ASSERT_TRUE((*opt)->Step(Lr(k), 0.5).ok());
    }

    // Two steps, a checkpoint, a fresh optimizer (new process), three more steps.
    Model first = RandomModel(dt, 5);
    auto before = AdamW::Create(&backend, first.Params(), TestOptions());
    ASSERT_TRUE(before.ok());
    for (int k = 0; k < 2; ++k) {
      SetGradients(&first, k);
      ASSERT_TRUE((*before)->Step(Lr(k), 0.5).ok());
    }
    auto saved = (*before)->StateTensors();
    ASSERT_TRUE(saved.ok());
    ASSERT_EQ(saved->size(), 2 * first.names.size());
    const int64_t saved_step = (*before)->step();
    Model resumed = first.Clone();
    // The checkpoint is a copy: stepping the old optimizer further does not change it.
    std::map<std::string, Tensor> snapshot;
    for (const auto& [name, t] : *saved) snapshot.emplace(name, t.Contiguous());
    SetGradients(&first, 2);
    ASSERT_TRUE((*before)->Step(Lr(2), 0.5).ok());
    for (const auto& [name, t] : *saved) EXPECT_TRUE(AllClose(t, snapshot.at(name), kExact)) << name;

    auto after = AdamW::Create(&backend, resumed.Params(), TestOptions());
    ASSERT_TRUE(after.ok());
    ASSERT_TRUE((*after)->LoadState(*saved, saved_step).ok());
    EXPECT_EQ((*after)->step(), 2);
    for (int k = 2; k < 5; ++k) {
      SetGradients(&resumed, k);
      ASSERT_TRUE((*after)->Step(Lr(k), 0.5).ok());
    }
    EXPECT_TRUE(SameState(**after, **opt, kExact));
  }
}

TEST(AdamWTest, LoadStateRejectsMismatchesAndChangesNothing) {
  model::CpuBackend backend(1);
  Model m = RandomModel(DType::kF32, 6);
  auto opt = AdamW::Create(&backend, m.Params(), TestOptions());
  ASSERT_TRUE(opt.ok());
  SetGradients(&m, 0);
  ASSERT_TRUE((*opt)->Step(1e-3, 1.0).ok());
  auto good = (*opt)->StateTensors();
  ASSERT_TRUE(good.ok());
  const std::string first = m.names[0];

  const std::string first_avg = first + ".exp_avg", first_sq = first + ".exp_avg_sq";
  const std::string second_avg = m.names[1] + ".exp_avg", third_sq = m.names[2] + ".exp_avg_sq";
  std::map<std::string, Tensor> missing = *good;
  missing.erase(first_sq);
  EXPECT_ERROR_MENTIONS((*opt)->LoadState(missing, 1), "missing tensor", first_sq.c_str());

  std::map<std::string, Tensor> extra = *good;
  extra.emplace("layers.9.lora_B.exp_avg", Tensor::Zeros({1}, DType::kF32));
  EXPECT_ERROR_MENTIONS((*opt)->LoadState(extra, 1), "unexpected tensor", "layers.9.lora_B.exp_avg");

  std::map<std::string, Tensor> shape = *good;
  shape[first_avg] = Tensor::Zeros({3, 7}, DType::kF32);
  EXPECT_ERROR_MENTIONS((*opt)->LoadState(shape, 1), first_avg.c_str(), "[3, 7]", "expected f32 [7, 3]");

  std::map<std::string, Tensor> dtype = *good;
  dtype[first_avg] = Tensor::Zeros({7, 3}, DType::kF64);
  EXPECT_ERROR_MENTIONS((*opt)->LoadState(dtype, 1), first_avg.c_str(), "f64", "expected f32 [7, 3]");

  std::map<std::string, Tensor> nan = *good;
  nan[second_avg] = nan[second_avg].Contiguous();
  nan[second_avg].data<float>()[5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_ERROR_MENTIONS((*opt)->LoadState(nan, 1), second_avg.c_str(), "element 5", "finite");

  std::map<std::string, Tensor> negative = *good;
  negative[third_sq] = Tensor::FromVector<float>({1}, {-1.0f});
  EXPECT_ERROR_MENTIONS((*opt)->LoadState(negative, 1), third_sq.c_str(), ">= 0");

  EXPECT_ERROR_MENTIONS((*opt)->LoadState(*good, -1), "step must be >= 0");

  // Nothing above changed the optimizer.
  EXPECT_EQ((*opt)->step(), 1);
  auto now = (*opt)->StateTensors();
  ASSERT_TRUE(now.ok());
  for (const auto& [name, t] : *good) EXPECT_TRUE(AllClose(now->at(name), t, kExact)) << name;
}

TEST(AdamWTest, CreateAndStepRejectBadInput) {
  model::CpuBackend backend(1);
  Model m = RandomModel(DType::kF32, 7);

  auto params = m.Params();
  params[2].name = params[0].name;
  EXPECT_ERROR_MENTIONS(AdamW::Create(&backend, params, TestOptions()).status(), "duplicate parameter name",
                        m.names[0].c_str());
  params = m.Params();
  params[1].name = "";
  EXPECT_ERROR_MENTIONS(AdamW::Create(&backend, params, TestOptions()).status(), "empty name");
  params = m.Params();
  params[1].grad = nullptr;
  EXPECT_ERROR_MENTIONS(AdamW::Create(&backend, params, TestOptions()).status(), m.names[1].c_str(), "null");
  params = m.Params();
  params[1].grad = &m.grads[0];
  EXPECT_ERROR_MENTIONS(AdamW::Create(&backend, params, TestOptions()).status(), "gradient of", m.names[1].c_str(),
                        "[7, 3]", "[111]");
  params = m.Params();
  params[3].value = &m.values[0];
  params[3].grad = &m.grads[0];
  EXPECT_ERROR_MENTIONS(AdamW::Create(&backend, params, TestOptions()).status(), "shares");
  EXPECT_ERROR_MENTIONS(AdamW::Create(&backend, {}, TestOptions()).status(), "no parameters");

  Tensor f64_grad = Tensor::Zeros({7, 3}, DType::kF64);
  params = m.Params();
  params[0].grad = &f64_grad;
  EXPECT_ERROR_MENTIONS(AdamW::Create(&backend, params, TestOptions()).status(), "gradient of", "f64");
  Tensor bf16 = m.values[0].To(DType::kBF16), bf16_grad = Tensor::Zeros({7, 3}, DType::kBF16);
  params = m.Params();
  params[0].value = &bf16;
  params[0].grad = &bf16_grad;
  EXPECT_ERROR_MENTIONS(AdamW::Create(&backend, params, TestOptions()).status(), "must be f32 or f64", "bf16");
  Tensor transposed = RandomNormal({3, 7}, DType::kF32, 1).Transposed();
  params = m.Params();
  params[0].value = &transposed;
  EXPECT_ERROR_MENTIONS(AdamW::Create(&backend, params, TestOptions()).status(), "must be contiguous");

  struct BadOption {
    AdamWOptions options;
    const char* mentions;
  };
  std::vector<BadOption> bad;
  for (int i = 0; i < 6; ++i) bad.push_back({TestOptions(), ""});
  bad[0].options.lr = -1;
  bad[0].mentions = "lr";
  bad[1].options.beta1 = 1.0;
  bad[1].mentions = "beta1";
  bad[2].options.beta2 = std::numeric_limits<double>::quiet_NaN();
  bad[2].mentions = "beta2";
  bad[3].options.eps = -1e-8;
  bad[3].mentions = "eps";
  bad[4].options.weight_decay = -0.1;
  bad[4].mentions = "weight_decay";
  bad[5].options.max_grad_norm = std::numeric_limits<double>::infinity();
  bad[5].mentions = "max_grad_norm";
  for (const BadOption& b : bad) {
    EXPECT_ERROR_MENTIONS(AdamW::Create(&backend, m.Params(), b.options).status(), "AdamW option", b.mentions);
  }

  auto opt = AdamW::Create(&backend, m.Params(), TestOptions());
  ASSERT_TRUE(opt.ok()) << opt.status();
  EXPECT_EQ((*opt)->params().size(), 4u);
  EXPECT_EQ((*opt)->params()[1].name, m.names[1]);
  EXPECT_EQ((*opt)->step(), 0);
  SetGradients(&m, 0);
  EXPECT_ERROR_MENTIONS((*opt)->Step(-1e-3, 1.0).status(), "lr must be finite and >= 0");
  EXPECT_ERROR_MENTIONS((*opt)->Step(1e-3, 0.0).status(), "grad_scale must be finite and > 0");
  EXPECT_ERROR_MENTIONS((*opt)->Step(std::numeric_limits<double>::infinity(), 1.0).status(), "lr");
  EXPECT_EQ((*opt)->step(), 0);
}

}  // namespace
}  // namespace sigmatune::train
