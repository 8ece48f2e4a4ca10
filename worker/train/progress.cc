#include "worker/train/progress.h"

#include <chrono>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "formats/atomic_file.h"
#include "kernels/base/check.h"
#include "kernels/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace sigmatune::train {
namespace {

constexpr absl::string_view kPhaseNames[kNumPhases] = {"load",  "calibrate",  "decompose", "evaluate",
                                                       "train", "checkpoint", "export",    "done"};

constexpr int kBarCells = 20;

int PhaseIndex(Phase phase) {
  const int i = static_cast<int>(phase);
  ST_CHECK(i >= 0 && i < kNumPhases) << "bad Phase " << i;
  return i;
}

bool HasProgress(const ProgressEvent& e) { return e.step > 0 || e.total_steps > 0 || !e.scalars.empty(); }
bool IsLastStep(const ProgressEvent& e) { return e.total_steps > 0 && e.step >= e.total_steps; }

// Display columns of UTF-8 text (code points; everything we print is one column wide).
size_t Columns(absl::string_view s) {
  size_t n = 0;
  for (const char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

std::string FormatScalar(absl::string_view name, double v) {
  if (name == "tokens_per_s") return absl::StrFormat("%.0f tok/s", v);
  if (name == "lr") return absl::StrFormat("lr %.1e", v);
  if (name == "grad_norm") return absl::StrFormat("gnorm %.4g", v);
  return absl::StrFormat("%s %.4g", name, v);
}

}  // namespace

double UnixSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

absl::string_view PhaseName(Phase phase) { return kPhaseNames[PhaseIndex(phase)]; }

// ---- EtaEstimator ----

double EtaEstimator::Update(Phase phase, int64_t step, int64_t total, double elapsed_s) {
  if (total <= 0) return -1;
  State& s = states_[PhaseIndex(phase)];
  if (!s.started || step < s.last_step || elapsed_s < s.last_elapsed) {
    s = State{true, step, elapsed_s, -1};
    return -1;
  }
  if (step > s.last_step) {
    const double sample = (elapsed_s - s.last_elapsed) / static_cast<double>(step - s.last_step);
    s.seconds_per_step =
        s.seconds_per_step < 0 ? sample : kAlpha * sample + (1 - kAlpha) * s.seconds_per_step;
    s.last_step = step;
    s.last_elapsed = elapsed_s;
  }
  if (s.seconds_per_step < 0) return -1;
  return static_cast<double>(std::max<int64_t>(total - step, 0)) * s.seconds_per_step;
}

std::string FormatDuration(double seconds) {
  if (seconds < 0 || !std::isfinite(seconds)) return "?";
  const int64_t s = std::llround(seconds);
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  if (s < 86400) return absl::StrFormat("%dh%02dm", s / 3600, s % 3600 / 60);
  return absl::StrFormat("%dd%02dh", s / 86400, s % 86400 / 3600);
}

// ---- TerminalProgress ----

std::unique_ptr<TerminalProgress> TerminalProgress::Create(FILE* out, double min_interval_s) {
  ST_CHECK(out != nullptr);
  const TerminalMode mode = ::isatty(::fileno(out)) ? TerminalMode::kInteractive : TerminalMode::kLines;
  return std::make_unique<TerminalProgress>(out, mode, min_interval_s);
}

TerminalProgress::TerminalProgress(FILE* out, TerminalMode mode, double min_interval_s)
    : out_(out), mode_(mode), min_interval_s_(min_interval_s) {
  ST_CHECK(out_ != nullptr);
  last_printed_.fill(-1);
}

std::string TerminalProgress::FormatLine(const ProgressEvent& e, double eta_s) const {
  std::string line = absl::StrCat("[", PhaseName(e.phase), "]");
  if (e.step > 0 || e.total_steps > 0) {
    absl::StrAppend(&line, " step ", e.step);
    if (e.total_steps > 0) absl::StrAppend(&line, "/", e.total_steps);
  }
  if (e.total_steps > 0) {
    const double frac = std::clamp(static_cast<double>(e.step) / e.total_steps, 0.0, 1.0);
    if (mode_ == TerminalMode::kInteractive) {
      const int full = static_cast<int>(frac * kBarCells);
      line += " \u2595";                                                           // ▕
      for (int i = 0; i < kBarCells; ++i) line += i < full ? "\u2588" : "\u2591";  // █ ░
      line += "\u258F";                                                            // ▏
    }
    absl::StrAppend(&line, " ", static_cast<int>(frac * 100), "%");
  }
  for (const auto& [name, value] : e.scalars) absl::StrAppend(&line, " ", FormatScalar(name, value));
  if (IsLastStep(e)) {
    absl::StrAppend(&line, " done in ", FormatDuration(e.elapsed_s));
  } else if (eta_s >= 0) {
    absl::StrAppend(&line, " ETA ", FormatDuration(eta_s));
  }
  if (!e.message.empty()) absl::StrAppend(&line, HasProgress(e) ? " | " : " ", e.message);
  return line;
}

absl::Status TerminalProgress::Write(const std::string& text) {
  if (std::fputs(text.c_str(), out_) < 0 || std::fflush(out_) != 0) {
    return absl::UnavailableError(
        absl::StrCat("progress output: writing the progress line failed: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status TerminalProgress::OnInteractive(const ProgressEvent& e, double eta_s) {
  std::string out;
  // Commit the open line when another phase starts, or before a message line of its own.
  if (open_phase_.has_value() && (*open_phase_ != e.phase || (!e.message.empty() && !HasProgress(e)))) {
    out += "\n";
    open_phase_.reset();
    open_columns_ = 0;
  }
  const std::string line = FormatLine(e, eta_s);
  const size_t columns = Columns(line);
  if (open_phase_.has_value()) out += "\r";
  out += line;
  if (open_columns_ > columns) out.append(open_columns_ - columns, ' ');
  if (IsLastStep(e) || !e.message.empty() || e.phase == Phase::kDone) {
    out += "\n";
    open_phase_.reset();
    open_columns_ = 0;
  } else {
    open_phase_ = e.phase;
    open_columns_ = columns;
  }
  return Write(out);
}

absl::Status TerminalProgress::OnLines(const ProgressEvent& e, double eta_s) {
  double& last = last_printed_[PhaseIndex(e.phase)];
  const bool print = last < 0 || e.elapsed_s < last || e.elapsed_s - last >= min_interval_s_ ||
                     IsLastStep(e) || !e.message.empty() || e.phase == Phase::kDone;
  if (!print) return absl::OkStatus();
  last = e.elapsed_s;
  return Write(FormatLine(e, eta_s) + "\n");
}

absl::Status TerminalProgress::OnEvent(const ProgressEvent& event) {
  const double eta_s = eta_.Update(event.phase, event.step, event.total_steps, event.elapsed_s);
  return mode_ == TerminalMode::kInteractive ? OnInteractive(event, eta_s) : OnLines(event, eta_s);
}

absl::Status TerminalProgress::Flush() {
  if (std::fflush(out_) != 0) {
    return absl::UnavailableError(absl::StrCat("progress output: flush failed: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// ---- JsonlMetricsWriter ----

absl::StatusOr<std::unique_ptr<JsonlMetricsWriter>> JsonlMetricsWriter::Create(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    const absl::Status st = formats::CreateDirectoryDurably(path.substr(0, slash));
    if (!st.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, ": cannot create the metrics file's directory: ", st.message()));
    }
  }
  FILE* f = std::fopen(path.c_str(), "ae");
  if (f == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": cannot open the metrics file for appending: ", std::strerror(errno),
                     "; choose a writable output directory"));
  }
  return std::unique_ptr<JsonlMetricsWriter>(new JsonlMetricsWriter(path, f));
}

JsonlMetricsWriter::~JsonlMetricsWriter() { std::fclose(file_); }

absl::Status JsonlMetricsWriter::OnEvent(const ProgressEvent& e) {
  nlohmann::ordered_json j;
  j["time"] = e.wall_time;
  j["phase"] = std::string(PhaseName(e.phase));
  j["step"] = e.step;
  j["total_steps"] = e.total_steps;
  j["elapsed_s"] = e.elapsed_s;
  for (const auto& [name, value] : e.scalars) {
    if (j.contains(name) || name == "message") {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": scalar '", name, "' of a ", PhaseName(e.phase),
                       " event clashes with a metrics field or another scalar; rename it"));
    }
    j[name] = value;  // NaN/Inf are written as null
  }
  if (!e.message.empty()) j["message"] = e.message;
  // Invalid UTF-8 in a message is replaced (U+FFFD) rather than thrown about.
  const std::string line = j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    const int err = errno;
    std::clearerr(file_);
    return absl::UnavailableError(absl::StrCat(path_, ": appending a metrics record failed: ",
                                               std::strerror(err), "; check free space and permissions"));
  }
  return absl::OkStatus();
}

absl::Status JsonlMetricsWriter::Flush() {
  if (std::fflush(file_) != 0) {
    const int err = errno;
    std::clearerr(file_);
    return absl::UnavailableError(
        absl::StrCat(path_, ": flushing the metrics file failed: ", std::strerror(err)));
  }
  return absl::OkStatus();
}

// ---- TensorBoardSink ----

absl::StatusOr<std::unique_ptr<TensorBoardSink>> TensorBoardSink::Create(const std::string& logdir,
                                                                         absl::string_view hostname,
                                                                         double wall_time, Resumed resumed,
                                                                         int64_t resume_step) {
  ST_ASSIGN_OR_RETURN(std::unique_ptr<formats::TfEventsWriter> writer,
                      formats::TfEventsWriter::Create(logdir, hostname, wall_time));
  if (resumed == Resumed::kYes) ST_RETURN_IF_ERROR(writer->AddSessionStart(resume_step, wall_time));
  return std::unique_ptr<TensorBoardSink>(new TensorBoardSink(std::move(writer)));
}

absl::Status TensorBoardSink::OnEvent(const ProgressEvent& e) {
  for (const auto& [name, value] : e.scalars) {
    ST_RETURN_IF_ERROR(writer_->AddScalar(absl::StrCat(PhaseName(e.phase), "/", name), e.step, e.wall_time,
                                          static_cast<float>(value)));
  }
  return absl::OkStatus();
}

absl::Status TensorBoardSink::Flush() { return writer_->Flush(); }

// ---- FanOutSink ----

FanOutSink::FanOutSink(std::vector<std::unique_ptr<ProgressSink>> sinks) : sinks_(std::move(sinks)) {
  for (const auto& s : sinks_) ST_CHECK(s != nullptr);
}

void FanOutSink::Add(std::unique_ptr<ProgressSink> sink) {
  ST_CHECK(sink != nullptr);
  sinks_.push_back(std::move(sink));
}

absl::Status FanOutSink::OnEvent(const ProgressEvent& event) {
  absl::Status first;
  for (const auto& s : sinks_) first.Update(s->OnEvent(event));
  return first;
}

absl::Status FanOutSink::Flush() {
  absl::Status first;
  for (const auto& s : sinks_) first.Update(s->Flush());
  return first;
}

}  // namespace sigmatune::train
