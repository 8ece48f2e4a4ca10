// Decompose on a half-precision (bf16) base: the adapters come out f32 (the dtype AdamW steps and
// PEFT keeps on a bf16 model) and W_res in the weight's bf16; the init works on the widened weight,
// so it equals the init of the same values given in f32 exactly, with W_res rounded once.
#include "worker/job/adapters.h"

#include <vector>

#include "gtest/gtest.h"
#include "kernels/model/backend.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/random.h"
#include "worker/job/work_plan.h"

namespace sigmatune::job {
namespace {

using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::Tolerance;

model::LlamaConfig TinyConfig() {
  model::LlamaConfig c;
  c.vocab_size = 32;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_layers = 1;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 8;
  c.rope.head_dim = 8;
  return c;
}

// The layer's q and down weights in `dtype`, from bf16-representable values.
model::LlamaWeights Weights(DType dtype) {
  model::LlamaWeights w;
  w.layers.resize(1);
  w.layers[0].q = RandomNormal({16, 16}, DType::kF32, 7).To(DType::kBF16).To(dtype);
  w.layers[0].down = RandomNormal({16, 24}, DType::kF32, 8).To(DType::kBF16).To(dtype);
  return w;
}

std::vector<train::TrainedLinear> DecomposeTwo(model::ModelBackend& backend, const model::LlamaWeights& weights,
                                      peft::Method method) {
  const std::vector<peft::TargetModule> targets = {{0, model::LinearKind::kQ}, {0, model::LinearKind::kDown}};
  comm::SingleProcessCommunicator comm;
  peft::AdapterOptions options;
  options.method = method;
  options.rank = 4;
  options.alpha = 8;
  const WorkPlan plan = PlanWork(TinyConfig(), targets, method, 1);
  auto linears = Decompose(backend, comm, plan, weights, options, targets, nullptr, 42, nullptr);
  ST_CHECK(linears.ok()) << linears.status();
  return *std::move(linears);
}

TEST(DecomposeTest, HalfPrecisionWeightsGiveF32AdaptersAndARoundedResidual) {
  model::CpuBackend backend(1);
  for (peft::Method method : {peft::Method::kPissa, peft::Method::kMilora, peft::Method::kLora}) {
    SCOPED_TRACE(peft::MethodName(method));
    const std::vector<train::TrainedLinear> half = DecomposeTwo(backend, Weights(DType::kBF16), method);
    const std::vector<train::TrainedLinear> full = DecomposeTwo(backend, Weights(DType::kF32), method);
    ASSERT_EQ(half.size(), 2u);
    for (size_t i = 0; i < half.size(); ++i) {
      SCOPED_TRACE(half[i].target.name());
      EXPECT_EQ(half[i].a.dtype(), DType::kF32);
      EXPECT_EQ(half[i].b.dtype(), DType::kF32);
      EXPECT_EQ(half[i].init.w_res.dtype(), DType::kBF16);
      EXPECT_TRUE(AllClose(half[i].a, full[i].a, Tolerance{0, 0}));
      EXPECT_TRUE(AllClose(half[i].b, full[i].b, Tolerance{0, 0}));
      EXPECT_TRUE(AllClose(half[i].init.w_res.To(DType::kF32), full[i].init.w_res.To(DType::kBF16).To(DType::kF32),
                           Tolerance{0, 0}));
    }
  }
}

TEST(DecomposeTest, F32WeightsKeepF32Everything) {
  model::CpuBackend backend(1);
  const std::vector<train::TrainedLinear> full = DecomposeTwo(backend, Weights(DType::kF32), peft::Method::kPissa);
  for (const train::TrainedLinear& l : full) {
    EXPECT_EQ(l.a.dtype(), DType::kF32);
    EXPECT_EQ(l.init.w_res.dtype(), DType::kF32);
  }
}

}  // namespace
}  // namespace sigmatune::job
