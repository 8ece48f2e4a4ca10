#include "client/format.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/job_client.h"
#include "google/protobuf/util/json_util.h"
#include "worker/train/progress_proto.h"

namespace sigmatune::client {
namespace {

constexpr absl::string_view kStatePrefix = "JOB_STATE_";

bool HasTime(const google::protobuf::Timestamp& t) { return t.seconds() != 0 || t.nanos() != 0; }

std::string StepText(const v1::Job& job) {
  if (!job.has_progress() || job.progress().phase() == v1::JOB_PHASE_UNSPECIFIED) return "-";
  const v1::Progress& p = job.progress();
  if (p.total_steps() > 0) return absl::StrCat(p.step(), "/", p.total_steps());
  return absl::StrCat(p.step());
}

std::string Age(const google::protobuf::Timestamp& t, absl::Time now) {
  if (!HasTime(t)) return "-";
  return train::FormatDuration(absl::ToDoubleSeconds(now - TimeFromProto(t)));
}

// "2026-11-22 10:15:03 UTC (3m12s ago)".
std::string TimeText(const google::protobuf::Timestamp& t, absl::Time now) {
  return absl::StrCat(absl::FormatTime("%Y-%m-%d %H:%M:%S %Z", TimeFromProto(t), absl::LocalTimeZone()), " (",
                      Age(t, now), " ago)");
}

std::string ScalarsText(const google::protobuf::RepeatedPtrField<v1::Scalar>& scalars) {
  std::vector<std::string> parts;
  for (const v1::Scalar& s : scalars) parts.push_back(absl::StrFormat("%s %.4g", s.name(), s.value()));
  return absl::StrJoin(parts, ", ");
}

void Line(std::string* out, absl::string_view key, absl::string_view value) {
  if (value.empty()) return;
  absl::StrAppend(out, absl::StrFormat("%-10s %s\n", absl::StrCat(key, ":"), value));
}

}  // namespace

std::string StateName(v1::JobState state) {
  std::string name = v1::JobState_Name(state);
  if (name.empty()) return absl::StrCat("STATE_", static_cast<int>(state));
  return std::string(absl::StripPrefix(name, kStatePrefix));
}

absl::StatusOr<v1::JobState> ParseState(absl::string_view text) {
  std::string upper = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(text));
  if (!absl::StartsWith(upper, kStatePrefix)) upper = absl::StrCat(kStatePrefix, upper);
  v1::JobState state = v1::JOB_STATE_UNSPECIFIED;
  if (!v1::JobState_Parse(upper, &state) || state == v1::JOB_STATE_UNSPECIFIED) {
    return absl::InvalidArgumentError(absl::StrCat("unknown job state \"", text,
                                                   "\"; use queued, running, succeeded, failed or cancelled"));
  }
  return state;
}

absl::StatusOr<std::vector<v1::JobState>> ParseStates(absl::string_view text) {
  std::vector<v1::JobState> states;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    absl::StatusOr<v1::JobState> state = ParseState(part);
    if (!state.ok()) return state.status();
    states.push_back(*state);
  }
  return states;
}

std::string PhaseText(v1::JobPhase phase) {
  const std::optional<train::Phase> p = train::PhaseFromProto(phase);
  return p.has_value() ? std::string(train::PhaseName(*p)) : "-";
}

absl::Time TimeFromProto(const google::protobuf::Timestamp& timestamp) {
  return absl::FromUnixSeconds(timestamp.seconds()) + absl::Nanoseconds(timestamp.nanos());
}

std::optional<double> FindScalar(const v1::Progress& progress, absl::string_view name) {
  for (const v1::Scalar& s : progress.scalars()) {
    if (s.name() == name) return s.value();
  }
  return std::nullopt;
}

std::string FormatJobTable(const std::vector<v1::Job>& jobs, absl::Time now) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"NAME", "STATE", "PHASE", "STEP", "AGE"});
  for (const v1::Job& job : jobs) {
    std::string state = StateName(job.state());
    if (job.cancel_requested() && !IsTerminal(job.state())) state += "*";
    rows.push_back({job.name(), state, PhaseText(job.progress().phase()), StepText(job),
                    Age(job.create_time(), now)});
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line.append(widths[i] - row[i].size() + 2, ' ');
    }
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

std::string FormatJobSummary(const v1::Job& job, absl::Time now) {
  std::string out;
  Line(&out, "name", job.name());
  std::string state = StateName(job.state());
  if (job.cancel_requested() && !IsTerminal(job.state())) state += " (cancel requested)";
  Line(&out, "state", state);
  if (job.has_spec()) {
    std::string spec = job.spec().name();
    if (!job.spec().method().type().empty()) {
      absl::StrAppend(&spec, spec.empty() ? "" : " ", "(", job.spec().method().type());
      if (job.spec().method().rank() > 0) absl::StrAppend(&spec, " rank ", job.spec().method().rank());
      spec += ")";
    }
    Line(&out, "spec", spec);
  }
  if (job.priority() != 0) Line(&out, "priority", absl::StrCat(job.priority()));
  if (job.has_progress() && job.progress().phase() != v1::JOB_PHASE_UNSPECIFIED) {
    const v1::Progress& p = job.progress();
    std::string phase = absl::StrCat(PhaseText(p.phase()), " step ", StepText(job));
    if (p.total_steps() > 0) {
      absl::StrAppend(&phase, absl::StrFormat(" (%d%%)", static_cast<int>(100.0 * p.step() / p.total_steps())));
    }
    Line(&out, "phase", phase);
    if (const std::optional<double> loss = FindScalar(p, "loss")) Line(&out, "loss", absl::StrFormat("%.4g", *loss));
    Line(&out, "progress", ScalarsText(p.scalars()));
    Line(&out, "message", p.message());
  }
  Line(&out, "reason", job.reason());
  if (job.attempt() > 0) {
    Line(&out, "attempt", absl::StrCat(job.attempt(), " (", job.restarts_left(), " restarts left)"));
  }
  Line(&out, "group", job.group());
  Line(&out, "tenant", job.tenant());
  Line(&out, "metrics", ScalarsText(job.metrics()));
  if (HasTime(job.create_time())) Line(&out, "created", TimeText(job.create_time(), now));
  if (HasTime(job.start_time())) Line(&out, "started", TimeText(job.start_time(), now));
  if (HasTime(job.end_time())) Line(&out, "ended", TimeText(job.end_time(), now));
  if (HasTime(job.start_time()) && HasTime(job.end_time())) {
    Line(&out, "took",
         train::FormatDuration(absl::ToDoubleSeconds(TimeFromProto(job.end_time()) - TimeFromProto(job.start_time()))));
  }
  const v1::JobArtifacts& a = job.artifacts();
  const std::pair<absl::string_view, const std::string*> artifacts[] = {
      {"output_dir", &a.output_dir()},       {"adapter", &a.adapter()},
      {"adapter_lora", &a.adapter_lora()},   {"residual_base", &a.residual_base()},
      {"merged", &a.merged()},               {"report_json", &a.report_json()},
      {"metrics_jsonl", &a.metrics_jsonl()}, {"checkpoints", &a.checkpoints()}};
  std::string listed;
  for (const auto& [key, value] : artifacts) {
    if (!value->empty()) absl::StrAppend(&listed, absl::StrFormat("  %-14s %s\n", absl::StrCat(key, ":"), *value));
  }
  if (!listed.empty()) absl::StrAppend(&out, "artifacts:\n", listed);
  return out;
}

absl::StatusOr<std::string> MessageToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  std::string json;
  const auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat("cannot print the ", message.GetTypeName(), " as JSON: ",
                                            status.ToString()));
  }
  if (json.empty() || json.back() != '\n') json += "\n";
  return json;
}

}  // namespace sigmatune::client
