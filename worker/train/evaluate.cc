#include "worker/train/evaluate.h"

#include <chrono>
#include <cmath>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/base/status_macros.h"
#include "worker/data/loader.h"

namespace sigmatune::train {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

absl::Status Report(ProgressSink* sink, int64_t step, int64_t total, double elapsed,
                    std::vector<std::pair<std::string, double>> scalars, std::string message) {
  if (sink == nullptr) return absl::OkStatus();
  ProgressEvent event;
  event.phase = Phase::kEvaluate;
  event.step = step;
  event.total_steps = total;
  event.wall_time = UnixSeconds();
  event.elapsed_s = elapsed;
  event.scalars = std::move(scalars);
  event.message = std::move(message);
  return sink->OnEvent(event);
}

absl::StatusOr<EvalResult> Perplexity(model::LlamaModel& model, const EvalSet& set, const EvaluateOptions& options,
                                      ProgressSink* sink) {
  const auto start = std::chrono::steady_clock::now();
  const std::vector<data::TokenizedSample>& samples = set.dataset.samples;
  if (samples.empty()) return absl::InvalidArgumentError(absl::StrCat("eval set ", set.name, " has no samples"));
  // Batches in file order, whole samples, at most batch_tokens each (a longer sample alone).
  std::vector<data::MicroBatch> batches;
  data::MicroBatch current;
  for (const data::TokenizedSample& sample : samples) {
    const int64_t n = static_cast<int64_t>(sample.ids.size());
    if (!current.samples.empty() && current.tokens + n > options.batch_tokens) {
      batches.push_back(std::move(current));
      current = data::MicroBatch();
    }
    current.samples.push_back(&sample);
    current.tokens += n;
  }
  if (!current.samples.empty()) batches.push_back(std::move(current));

  double loss_sum = 0.0;
  int64_t targets = 0;
  for (size_t i = 0; i < batches.size(); ++i) {
    ST_ASSIGN_OR_RETURN(model::Batch batch, data::MakeBatch(model.backend(), batches[i]));
    ST_ASSIGN_OR_RETURN(model::ForwardResult result, model.Forward(batch));
    loss_sum += result.loss * static_cast<double>(result.num_targets);
    targets += result.num_targets;
    const double running = targets > 0 ? loss_sum / targets : 0.0;
    ST_RETURN_IF_ERROR(Report(sink, static_cast<int64_t>(i) + 1, static_cast<int64_t>(batches.size()),
                              SecondsSince(start), {{absl::StrCat("loss/", set.name), running}},
                              i + 1 == batches.size()
                                  ? absl::StrFormat("%s %s: perplexity %.4f over %d tokens", options.label,
                                                    set.name, std::exp(running), targets)
                                  : std::string()));
  }
  if (targets == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval set ", set.name, ": no scored tokens (every sample is masked); perplexity is undefined"));
  }
  EvalResult result;
  result.mean_loss = loss_sum / static_cast<double>(targets);
  result.value = std::exp(result.mean_loss);
  result.tokens = targets;
  result.total = static_cast<int64_t>(samples.size());
  result.seconds = SecondsSince(start);
  return result;
}

absl::StatusOr<EvalResult> ExactMatch(model::LlamaModel& model, const EvalSet& set, const data::Tokenizer& tokenizer,
                                      const EvaluateOptions& options, ProgressSink* sink) {
  const auto start = std::chrono::steady_clock::now();
  if (set.prompts.empty()) return absl::InvalidArgumentError(absl::StrCat("eval set ", set.name, " has no prompts"));
  EvalResult result;
  const int64_t total = static_cast<int64_t>(set.prompts.size());
  for (int64_t i = 0; i < total; ++i) {
    const data::PromptAnswer& item = set.prompts[i];
    ST_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                        model.GenerateGreedy(item.prompt_ids, set.max_new_tokens, options.stop_ids));
    const std::string generated = tokenizer.Decode(ids, data::SkipSpecialTokens::kYes);
    const bool correct = ExtractFinalAnswer(generated) == ExtractFinalAnswer(item.answer);
    result.correct += correct;
    if (static_cast<int>(result.examples.size()) < options.examples_kept) {
      const std::string prompt = tokenizer.Decode(item.prompt_ids, data::SkipSpecialTokens::kYes);
      EvalExample example;
      example.prompt_tail = prompt.size() > 160 ? prompt.substr(prompt.size() - 160) : prompt;
      example.generated = generated;
      example.reference = item.answer;
      example.correct = correct;
      result.examples.push_back(std::move(example));
    }
    const double accuracy = static_cast<double>(result.correct) / static_cast<double>(i + 1);
    ST_RETURN_IF_ERROR(Report(sink, i + 1, total, SecondsSince(start), {{absl::StrCat("accuracy/", set.name), accuracy}},
                              i + 1 == total ? absl::StrFormat("%s %s: exact match %d/%d (%.1f%%)", options.label,
                                                               set.name, result.correct, total, 100.0 * accuracy)
                                             : std::string()));
  }
  result.total = total;
  result.value = static_cast<double>(result.correct) / static_cast<double>(total);
  result.seconds = SecondsSince(start);
  return result;
}

}  // namespace

absl::string_view EvalMetricName(EvalMetric metric) {
  return metric == EvalMetric::kPerplexity ? "perplexity" : "exact_match";
}

absl::string_view EvalRoleName(EvalRole role) { return role == EvalRole::kTask ? "task" : "knowledge"; }

std::string ExtractFinalAnswer(absl::string_view text) {
  const size_t mark = text.rfind("####");
  if (mark != absl::string_view::npos) text = text.substr(mark + 4);
  return std::string(absl::StripAsciiWhitespace(text));
}

absl::StatusOr<EvalResult> Evaluate(model::LlamaModel& model, const EvalSet& set, const data::Tokenizer& tokenizer,
                                    const EvaluateOptions& options, ProgressSink* sink) {
  absl::StatusOr<EvalResult> result = set.metric == EvalMetric::kPerplexity
                                          ? Perplexity(model, set, options, sink)
                                          : ExactMatch(model, set, tokenizer, options, sink);
  if (!result.ok()) return result.status();
  result->name = set.name;
  result->metric = set.metric;
  result->role = set.role;
  return result;
}

}  // namespace sigmatune::train
