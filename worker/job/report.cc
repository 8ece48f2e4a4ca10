#include "worker/job/report.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "formats/atomic_file.h"
#include "kernels/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace sigmatune::job {
namespace {

nlohmann::json ResultJson(const train::EvalResult& r) {
  nlohmann::json j = {{"name", r.name},
                      {"role", std::string(train::EvalRoleName(r.role))},
                      {"metric", std::string(train::EvalMetricName(r.metric))},
                      {"value", r.value},
                      {"mean_loss", r.mean_loss},
                      {"tokens", r.tokens},
                      {"correct", r.correct},
                      {"total", r.total},
                      {"seconds", r.seconds}};
  nlohmann::json examples = nlohmann::json::array();
  for (const train::EvalExample& e : r.examples) {
    examples.push_back({{"prompt_tail", e.prompt_tail},
                        {"generated", e.generated},
                        {"reference", e.reference},
                        {"correct", e.correct}});
  }
  j["examples"] = examples;
  return j;
}

std::string FormatValue(train::EvalMetric metric, double value) {
  return metric == train::EvalMetric::kExactMatch ? absl::StrFormat("%.1f%%", 100.0 * value)
                                                  : absl::StrFormat("%.3f", value);
}

std::string FormatChange(train::EvalMetric metric, double before, double after) {
  if (metric == train::EvalMetric::kExactMatch) return absl::StrFormat("%+.1f pts", 100.0 * (after - before));
  return absl::StrFormat("%+.1f%%", 100.0 * (after - before) / before);
}

}  // namespace

std::string EvalResultsToJson(const std::vector<train::EvalResult>& results, const std::string& identity) {
  nlohmann::json j = {{"identity", identity}, {"results", nlohmann::json::array()}};
  for (const train::EvalResult& r : results) j["results"].push_back(ResultJson(r));
  return j.dump(2) + "\n";
}

absl::StatusOr<std::vector<train::EvalResult>> ParseEvalResults(const std::string& json, const std::string& identity) {
  const nlohmann::json j = nlohmann::json::parse(json, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("identity") || !j["identity"].is_string() ||
      !j.contains("results") || !j["results"].is_array()) {
    return absl::InvalidArgumentError("eval results file does not parse");
  }
  if (j["identity"].get<std::string>() != identity) {
    return absl::FailedPreconditionError("eval results of another job");
  }
  std::vector<train::EvalResult> results;
  for (const nlohmann::json& r : j["results"]) {
    if (!r.is_object() || !r.contains("name") || !r["name"].is_string() || !r.contains("value") ||
        !r["value"].is_number() || !r.contains("metric") || !r["metric"].is_string() || !r.contains("role") ||
        !r["role"].is_string()) {
      return absl::InvalidArgumentError("eval results file: a result lacks name/value/metric/role");
    }
    train::EvalResult e;
    e.name = r["name"].get<std::string>();
    e.value = r["value"].get<double>();
    e.metric = r["metric"].get<std::string>() == "exact_match" ? train::EvalMetric::kExactMatch
                                                               : train::EvalMetric::kPerplexity;
    e.role = r["role"].get<std::string>() == "knowledge" ? train::EvalRole::kKnowledge : train::EvalRole::kTask;
    if (r.contains("mean_loss") && r["mean_loss"].is_number()) e.mean_loss = r["mean_loss"].get<double>();
    if (r.contains("tokens") && r["tokens"].is_number_integer()) e.tokens = r["tokens"].get<int64_t>();
    if (r.contains("correct") && r["correct"].is_number_integer()) e.correct = r["correct"].get<int64_t>();
    if (r.contains("total") && r["total"].is_number_integer()) e.total = r["total"].get<int64_t>();
    if (r.contains("seconds") && r["seconds"].is_number()) e.seconds = r["seconds"].get<double>();
    if (r.contains("examples") && r["examples"].is_array()) {
      for (const nlohmann::json& x : r["examples"]) {
        if (!x.is_object()) continue;
        train::EvalExample ex;
        if (x.contains("prompt_tail") && x["prompt_tail"].is_string()) ex.prompt_tail = x["prompt_tail"];
        if (x.contains("generated") && x["generated"].is_string()) ex.generated = x["generated"];
        if (x.contains("reference") && x["reference"].is_string()) ex.reference = x["reference"];
        if (x.contains("correct") && x["correct"].is_boolean()) ex.correct = x["correct"];
        e.examples.push_back(std::move(ex));
      }
    }
    results.push_back(std::move(e));
  }
  return results;
}

std::string ReportTable(const v1::JobSpec& spec, const JobResult& result) {
  std::string text = absl::StrFormat("job %s: %s rank %d on %s (%s%s)\n", spec.name(), spec.method().type(),
                                     spec.method().rank(), spec.base_model(), result.device,
                                     result.world_size > 1 ? absl::StrFormat(", %d ranks", result.world_size) : "");
  text += absl::StrFormat("train: %d steps, final loss %.4f, %.0f tokens/s\n", result.train.steps_done,
                          result.train.last_loss, result.train.tokens_per_second);
  if (!result.after.empty()) {
    text += absl::StrFormat("%-14s %-10s %-12s %10s %10s %12s\n", "set", "role", "metric", "before", "after", "change");
    for (size_t i = 0; i < result.after.size(); ++i) {
      const train::EvalResult& a = result.after[i];
      const bool have_before = i < result.before.size();
      const double before = have_before ? result.before[i].value : NAN;
      text += absl::StrFormat("%-14s %-10s %-12s %10s %10s %12s\n", a.name, train::EvalRoleName(a.role),
                              train::EvalMetricName(a.metric), have_before ? FormatValue(a.metric, before) : "-",
                              FormatValue(a.metric, a.value),
                              have_before ? FormatChange(a.metric, before, a.value) : "-");
    }
  }
  std::string times = "time:";
  double total = 0.0;
  for (const PhaseTime& t : result.times) {
    absl::StrAppendFormat(&times, " %s %.1fs", t.phase, t.seconds);
    total += t.seconds;
  }
  absl::StrAppendFormat(&times, " (total %.1fs)\n", total);
  return text + times;
}

absl::Status WriteReport(const v1::JobSpec& spec, const JobResult& result, const std::string& identity,
                         std::string* text) {
  nlohmann::json j;
  j["job"] = spec.name();
  j["method"] = spec.method().type();
  j["rank"] = spec.method().rank();
  j["base_model"] = spec.base_model();
  j["device"] = result.device;
  j["world_size"] = result.world_size;
  j["identity"] = identity;
  j["resumed"] = result.resumed;
  j["train"] = {{"steps", result.train.steps_done},
                {"total_steps", result.total_steps},
                {"final_loss", result.train.last_loss},
                {"losses", result.train.losses},
                {"tokens", result.train.tokens},
                {"seconds", result.train.seconds},
                {"tokens_per_second", result.train.tokens_per_second}};
  nlohmann::json eval = nlohmann::json::array();
  for (size_t i = 0; i < result.after.size(); ++i) {
    nlohmann::json e = ResultJson(result.after[i]);
    e["after"] = result.after[i].value;
    if (i < result.before.size()) {
      e["before"] = result.before[i].value;
      e["before_examples"] = ResultJson(result.before[i])["examples"];
    }
    eval.push_back(e);
  }
  j["eval"] = eval;
  nlohmann::json times = nlohmann::json::object();
  for (const PhaseTime& t : result.times) times[t.phase] = t.seconds;
  j["times"] = times;
  j["exports"] = {{"adapter", result.exports.adapter},
                  {"residual_base", result.exports.residual_base},
                  {"adapter_lora", result.exports.adapter_lora},
                  {"merged", result.exports.merged}};
  j["notes"] = result.notes;
  *text = ReportTable(spec, result);
  ST_RETURN_IF_ERROR(formats::WriteFileAtomically(absl::StrCat(spec.output_dir(), "/report.json"), j.dump(2) + "\n"));
  return formats::WriteFileAtomically(absl::StrCat(spec.output_dir(), "/report.txt"), *text);
}

}  // namespace sigmatune::job
