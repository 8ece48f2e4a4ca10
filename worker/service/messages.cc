#include "worker/service/messages.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "formats/atomic_file.h"
#include "kernels/base/status_macros.h"

namespace sigmatune::service {
namespace {

std::string HostName() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) return "localhost";
  return host;
}

// The value after "key" and ':' on the first line of `path` that starts with key ("" when none).
std::string ProcField(const char* path, absl::string_view key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (!absl::StartsWith(line, key)) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    return std::string(absl::StripAsciiWhitespace(absl::string_view(line).substr(colon + 1)));
  }
  return "";
}

void AddScalar(google::protobuf::RepeatedPtrField<v1::Scalar>* to, std::string name, double value) {
  v1::Scalar* s = to->Add();
  s->set_name(std::move(name));
  s->set_value(value);
}

void AddEvalMetrics(const std::vector<train::EvalResult>& results, absl::string_view label, v1::JobResult* out) {
  for (const train::EvalResult& r : results) {
    const char* metric = r.metric == train::EvalMetric::kExactMatch ? "exact_match" : "ppl";
    AddScalar(out->mutable_metrics(), absl::StrCat(label, "/", metric, "/", r.name), r.value);
  }
}

std::string PathIfExists(const std::string& path) {
  std::error_code error;
  return std::filesystem::exists(path, error) ? path : std::string();
}

}  // namespace

v1::Device DescribeLocalDevice(int rank) {
  v1::Device device;
  device.set_rank(rank);
  device.set_host(HostName());
  device.set_kind("cpu");
  const std::string model = ProcField("/proc/cpuinfo", "model name");
  device.set_name(model.empty() ? "cpu" : model);
  // "MemTotal:       16342312 kB"
  int64_t kib = 0;
  std::string total = ProcField("/proc/meminfo", "MemTotal");
  absl::string_view digits = absl::StripAsciiWhitespace(absl::StripSuffix(total, "kB"));
  if (absl::SimpleAtoi(digits, &kib)) device.set_memory_bytes(kib * 1024);
  return device;
}

absl::StatusOr<std::vector<v1::Device>> GatherDevices(comm::Communicator& comm) {
  std::vector<std::string> all;
  ST_RETURN_IF_ERROR(comm.Gather(0, DescribeLocalDevice(comm.rank()).SerializeAsString(), &all));
  std::vector<v1::Device> devices;
  if (!comm.is_leader()) return devices;
  for (size_t r = 0; r < all.size(); ++r) {
    if (!devices.emplace_back().ParseFromString(all[r])) {
      return absl::DataLossError(absl::StrCat("the device description of rank ", r, " does not parse"));
    }
  }
  return devices;
}

v1::JobResult ToJobResult(const absl::StatusOr<job::JobResult>& result) {
  v1::JobResult out;
  if (!result.ok()) {
    out.set_outcome(v1::JobResult::OUTCOME_FAILED);
    out.set_message(std::string(result.status().message()));
    return out;
  }
  const job::JobResult& r = *result;
  const train::TrainSummary& t = r.train;
  if (!t.losses.empty()) AddScalar(out.mutable_metrics(), "train/loss", t.last_loss);
  AddScalar(out.mutable_metrics(), "train/start_step", static_cast<double>(t.start_step));
  AddScalar(out.mutable_metrics(), "train/steps", static_cast<double>(t.steps_done));
  AddScalar(out.mutable_metrics(), "train/total_steps", static_cast<double>(r.total_steps));
  if (t.tokens_per_second > 0) AddScalar(out.mutable_metrics(), "train/tokens_per_s", t.tokens_per_second);
  AddScalar(out.mutable_metrics(), "resumed", r.resumed ? 1.0 : 0.0);
  for (const job::PhaseTime& time : r.times) AddScalar(out.mutable_metrics(), "time/" + time.phase, time.seconds);
  v1::JobArtifacts* a = out.mutable_artifacts();
  a->set_output_dir(r.output_dir);
  a->set_metrics_jsonl(PathIfExists(r.output_dir + "/metrics.jsonl"));
  a->set_checkpoints(PathIfExists(r.output_dir + "/checkpoints"));
  if (r.stopped_early) {
    out.set_outcome(v1::JobResult::OUTCOME_STOPPED);
    out.set_message(r.total_steps > 0 ? absl::StrFormat("stopped at step %d of %d", t.steps_done, r.total_steps)
                                      : std::string("stopped before training"));
    return out;
  }
  out.set_outcome(v1::JobResult::OUTCOME_SUCCEEDED);
  AddEvalMetrics(r.before, "before", &out);
  AddEvalMetrics(r.after, "after", &out);
  a->set_adapter(r.exports.adapter);
  a->set_adapter_lora(r.exports.adapter_lora);
  a->set_residual_base(r.exports.residual_base);
  a->set_merged(r.exports.merged);
  a->set_report_json(PathIfExists(r.output_dir + "/report.json"));
  out.set_report_text(r.report_text);
  if (!a->report_json().empty()) {
    absl::StatusOr<std::string> json = formats::ReadFileToString(a->report_json());
    if (json.ok()) out.set_report_json(*std::move(json));
  }
  return out;
}

}  // namespace sigmatune::service
