// The evaluate phase: how well a model (with or without its adapters) does on the job's eval sets.
//
//   perplexity   exp(mean next-token loss over the set's trained tokens), the samples packed into
//                batches of at most `batch_tokens` tokens in file order (one Forward each).
//   exact_match  greedy generation from each record's prompt (up to max_new_tokens, stopping at
//                any stop id), decoded without special tokens; correct when the FINAL ANSWER of the
//                generation equals that of the reference (ExtractFinalAnswer). The first few
//                generations are kept for the report.
//
// Contract: the model's adapters must be in AdapterMode::kEval (no dropout) — the caller switches
// them. Evaluation changes no parameters. Progress events (phase kEvaluate, one per batch or
// prompt) go to `sink` when it is not null; a sink error is returned.
#ifndef SIGMATUNE_WORKER_TRAIN_EVALUATE_H_
#define SIGMATUNE_WORKER_TRAIN_EVALUATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/model/llama.h"
#include "worker/data/dataset.h"
#include "worker/data/tokenizer.h"
#include "worker/train/progress.h"

namespace sigmatune::train {

enum class EvalMetric { kPerplexity, kExactMatch };
enum class EvalRole { kTask, kKnowledge };
absl::string_view EvalMetricName(EvalMetric metric);  // "perplexity", "exact_match"
absl::string_view EvalRoleName(EvalRole role);        // "task", "knowledge"

struct EvalSet {
  std::string name;
  EvalMetric metric = EvalMetric::kPerplexity;
  EvalRole role = EvalRole::kTask;
  data::Dataset dataset;                   // perplexity
  std::vector<data::PromptAnswer> prompts;  // exact_match
  int64_t max_new_tokens = 64;
};

struct EvalExample {
  std::string prompt_tail;  // the last characters of the prompt
  std::string generated;
  std::string reference;
  bool correct = false;
};

struct EvalResult {
  std::string name;
  EvalMetric metric = EvalMetric::kPerplexity;
  EvalRole role = EvalRole::kTask;
  double value = 0.0;      // perplexity, or accuracy in [0, 1]
  double mean_loss = 0.0;  // perplexity only
  int64_t tokens = 0;      // perplexity: scored tokens
  int64_t correct = 0;     // exact_match
  int64_t total = 0;       // exact_match: prompts; perplexity: samples
  double seconds = 0.0;
  std::vector<EvalExample> examples;  // exact_match: the first few
};

// The text after the last "####" (trimmed), or the whole trimmed text when there is none.
std::string ExtractFinalAnswer(absl::string_view text);

struct EvaluateOptions {
  int64_t batch_tokens = 4096;       // perplexity batch budget
  std::vector<int32_t> stop_ids;     // end-of-sequence / end-of-turn ids for generation
  int examples_kept = 3;
  std::string label;                 // "before" / "after", for progress messages
};

absl::StatusOr<EvalResult> Evaluate(model::LlamaModel& model, const EvalSet& set, const data::Tokenizer& tokenizer,
                                    const EvaluateOptions& options, ProgressSink* sink);

}  // namespace sigmatune::train

#endif  // SIGMATUNE_WORKER_TRAIN_EVALUATE_H_
