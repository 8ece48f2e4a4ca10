// The evaluate phase on the tiny example model: perplexity does not depend on how samples are
// batched and equals exp(token-weighted mean loss); exact match compares final answers of greedy
// generations; ExtractFinalAnswer's rule.
#include "worker/train/evaluate.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"
#include "kernels/testing/golden.h"
#include "worker/data/loader.h"
#include "worker/data/tokenizer.h"
#include "worker/model/llama_loader.h"

namespace sigmatune::train {
namespace {

TEST(ExtractFinalAnswerTest, TakesTheTextAfterTheLastMarker) {
  EXPECT_EQ(ExtractFinalAnswer("3 + 4 = 7. #### 7"), "7");
  EXPECT_EQ(ExtractFinalAnswer("#### 1 then #### 12  \n"), "12");
  EXPECT_EQ(ExtractFinalAnswer("  no marker here \n"), "no marker here");
  EXPECT_EQ(ExtractFinalAnswer(""), "");
  EXPECT_NE(ExtractFinalAnswer("#### 71"), ExtractFinalAnswer("#### 7"));
}

class EvaluateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = testing::RunfilePath("examples/models/tiny-llama");
    auto loaded = LoadLlamaFromHfDirectory(dir, backend_);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto model = model::LlamaModel::Create(loaded->config, loaded->weights, &backend_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    auto tokenizer = data::Tokenizer::FromJsonFile(dir + "/tokenizer.json");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::make_unique<data::Tokenizer>(std::move(*tokenizer));
  }

  data::TokenizedSample Sample(const std::string& text, int skip_targets) {
    data::TokenizedSample s;
    s.ids = *tokenizer_->Encode(text);
    s.targets = s.ids;
    for (int i = 0; i < skip_targets + 1 && i < static_cast<int>(s.targets.size()); ++i) s.targets[i] = -100;
    return s;
  }

  model::CpuBackend backend_{1};
  std::unique_ptr<model::LlamaModel> model_;
  std::unique_ptr<data::Tokenizer> tokenizer_;
};

TEST_F(EvaluateTest, PerplexityIsTheTokenWeightedMeanWhateverTheBatching) {
  EvalSet set;
  set.name = "ppl";
  set.dataset.samples = {Sample("The licensee may copy and distribute the program.", 0),
                         Sample("Mia has 7 marbles. She finds 5 more.", 3), Sample("12 - 3 = 9. #### 9", 1)};
  // Direct: one Forward per sample, weighted by its targets.
  double loss_sum = 0.0;
  int64_t targets = 0;
  for (const data::TokenizedSample& s : set.dataset.samples) {
    data::MicroBatch micro;
    micro.samples = {&s};
    micro.tokens = static_cast<int64_t>(s.ids.size());
    auto batch = data::MakeBatch(backend_, micro);
    ASSERT_TRUE(batch.ok()) << batch.status();
    auto r = model_->Forward(*batch);
    ASSERT_TRUE(r.ok()) << r.status();
    loss_sum += r->loss * r->num_targets;
    targets += r->num_targets;
  }
  for (int64_t budget : {1, 20, 4096}) {
    EvaluateOptions options;
    options.batch_tokens = budget;
    auto result = Evaluate(*model_, set, *tokenizer_, options, nullptr);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->tokens, targets);
    EXPECT_NEAR(result->mean_loss, loss_sum / targets, 1e-5) << budget;
    EXPECT_NEAR(result->value, std::exp(loss_sum / targets), 1e-4 * result->value) << budget;
    EXPECT_EQ(result->total, 3);
  }
}

TEST_F(EvaluateTest, ExactMatchComparesFinalAnswersOfGreedyGenerations) {
  const std::vector<int32_t> prompt = *tokenizer_->Encode("Tom has 3 apples.");
  auto generated = model_->GenerateGreedy(prompt, 6, {});
  ASSERT_TRUE(generated.ok()) << generated.status();
  const std::string text = tokenizer_->Decode(*generated, data::SkipSpecialTokens::kYes);
  EvalSet set;
  set.name = "em";
  set.metric = EvalMetric::kExactMatch;
  set.max_new_tokens = 6;
  set.prompts = {{prompt, text, 1}, {prompt, text + " and more", 2}, {prompt, "#### " + text, 3}};
  EvaluateOptions options;
  auto result = Evaluate(*model_, set, *tokenizer_, options, nullptr);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->total, 3);
  EXPECT_EQ(result->correct, 2);  // the first and the "####" form match, the second does not
  EXPECT_NEAR(result->value, 2.0 / 3.0, 1e-12);
  ASSERT_EQ(result->examples.size(), 3u);
  EXPECT_TRUE(result->examples[0].correct);
  EXPECT_FALSE(result->examples[1].correct);
  EXPECT_EQ(result->examples[0].generated, text);
}

TEST_F(EvaluateTest, EmptySetsAreErrors) {
  EvalSet set;
  set.name = "nothing";
  EXPECT_FALSE(Evaluate(*model_, set, *tokenizer_, {}, nullptr).ok());
  set.metric = EvalMetric::kExactMatch;
  EXPECT_FALSE(Evaluate(*model_, set, *tokenizer_, {}, nullptr).ok());
}

}  // namespace
}  // namespace sigmatune::train
