// Progress reporting of a training job: the producer (the job's phases) fills ProgressEvents and
// hands them to a ProgressSink; the sinks show them on a terminal, append them to metrics.jsonl and
// write TensorBoard scalars. See docs/progress-and-metrics.md for what the user sees.
//
// Contract:
//  - Sinks never read a clock: times come from the event (wall_time, elapsed_s), so output is a pure
//    function of the event sequence (and tests are deterministic).
//  - Within one run of a phase, step and elapsed_s do not decrease. A phase may run again later
//    (evaluation during training); its elapsed_s then restarts near 0, which sinks treat as a new
//    run of that phase.
//  - OnEvent returns an error when the output cannot be written; the Status names the file (or
//    "progress output" for the terminal). What to do about it (abort the job, or drop the sink and
//    carry on) is the caller's decision.
//  - Sinks are not thread-safe; report from one thread (and from rank 0 only).
#ifndef SIGMATUNE_WORKER_TRAIN_PROGRESS_H_
#define SIGMATUNE_WORKER_TRAIN_PROGRESS_H_

#include <array>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "formats/tfevents.h"

namespace sigmatune::train {

enum class Phase { kLoad, kCalibrate, kDecompose, kEvaluate, kTrain, kCheckpoint, kExport, kDone };
inline constexpr int kNumPhases = 8;

// "load", "calibrate", "decompose", "evaluate", "train", "checkpoint", "export", "done".
// Seconds since the Unix epoch (ProgressEvent::wall_time).
double UnixSeconds();

absl::string_view PhaseName(Phase phase);

struct ProgressEvent {
  Phase phase = Phase::kLoad;
  int64_t step = 0;
  int64_t total_steps = 0;  // 0: unknown
  double wall_time = 0;     // unix seconds
  double elapsed_s = 0;     // since the phase began
  // In the order given, e.g. {"loss", ..}, {"lr", ..}, {"grad_norm", ..}, {"tokens_per_s", ..};
  // for evaluation {"ppl/knowledge", ..}. Names are unique within an event.
  std::vector<std::pair<std::string, double>> scalars;
  std::string message;  // free text, e.g. "calibrating 128 samples"; empty for a plain step
};

class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  virtual absl::Status OnEvent(const ProgressEvent& event) = 0;
  virtual absl::Status Flush() { return absl::OkStatus(); }
};

// Remaining seconds of a phase from a smoothed step time, tracked per phase (so evaluation runs in
// between do not reset training's estimate). Only events with total > 0 count; others give -1. The
// first event of a phase (or of a new run of it: step or elapsed_s went backwards) sets the
// reference point and gives -1 (unknown). Each later event that
// advanced the step updates an exponential moving average of seconds per step,
//   s = alpha * (elapsed - elapsed_prev) / (step - step_prev) + (1 - alpha) * s   (alpha 0.3; the
// first sample initialises s), and the ETA is max(total - step, 0) * s. An event that did not
// advance the step returns the last estimate.
class EtaEstimator {
 public:
  static constexpr double kAlpha = 0.3;
  double Update(Phase phase, int64_t step, int64_t total, double elapsed_s);

 private:
  struct State {
    bool started = false;
    int64_t last_step = 0;
    double last_elapsed = 0;
    double seconds_per_step = -1;  // < 0: no sample yet
  };
  std::array<State, kNumPhases> states_{};
};

// "45s", "3m12s", "1h02m", "2d03h"; "?" for a negative (unknown) value.
std::string FormatDuration(double seconds);

enum class TerminalMode {
  // A TTY: one line per phase, redrawn in place with '\r' and padded over the previous text; a
  // newline ends it when the phase reaches total_steps, when a message event comes, or when another
  // phase starts.
  kInteractive,
  // Not a TTY (CI logs, files): one plain line per event, but per phase at most one per
  // min_interval_s of elapsed_s, always the first event of a run of the phase, the last step
  // (step >= total_steps > 0) and every message event.
  kLines,
};

// Line layout (scalars in the event's order; fields that are unknown are left out):
//   [train] step 12/100 ▕██▌                 ▏ 12% loss 2.314 lr 1.9e-04 gnorm 0.8213 1234 tok/s ETA 3m12s
//   [calibrate] calibrating 128 samples
// kLines omits the bar. Scalars: "tokens_per_s" as "<n> tok/s", "lr" as %.1e, "grad_norm" as
// "gnorm", others as "<name> %.4g".
class TerminalProgress final : public ProgressSink {
 public:
  static constexpr double kDefaultMinIntervalS = 5.0;

  // kInteractive when isatty(fileno(out)), else kLines.
  static std::unique_ptr<TerminalProgress> Create(FILE* out = stderr,
                                                  double min_interval_s = kDefaultMinIntervalS);
  // `out` is not owned and must outlive the sink.
  TerminalProgress(FILE* out, TerminalMode mode, double min_interval_s = kDefaultMinIntervalS);

  absl::Status OnEvent(const ProgressEvent& event) override;
  absl::Status Flush() override;  // fflush

  TerminalMode mode() const { return mode_; }

 private:
  // The text of one event without the bar (kLines) or with it (kInteractive).
  std::string FormatLine(const ProgressEvent& event, double eta_s) const;
  absl::Status OnInteractive(const ProgressEvent& event, double eta_s);
  absl::Status OnLines(const ProgressEvent& event, double eta_s);
  absl::Status Write(const std::string& text);

  FILE* out_;
  TerminalMode mode_;
  double min_interval_s_;
  EtaEstimator eta_;
  // kInteractive: the phase of the line being redrawn and its width in columns (0: none open).
  std::optional<Phase> open_phase_;
  size_t open_columns_ = 0;
  // kLines: elapsed_s of the last printed line, per phase (< 0: none in this run of the phase).
  std::array<double, kNumPhases> last_printed_{};
  std::optional<Phase> last_phase_;
};

// Appends one JSON object per event to a file (<output>/metrics.jsonl) and fflushes it:
//   {"time":1700000012.5,"phase":"train","step":12,"total_steps":100,"elapsed_s":31.2,
//    "loss":2.314,"lr":0.00019,...,"message":"..."}
// "time", "phase", "step", "total_steps" (0: unknown) and "elapsed_s" are always present, then the
// scalars by name (non-finite values as null), then "message" when non-empty. A scalar named like
// one of those keys is InvalidArgument. Opening an existing file appends (a resumed job continues
// its file; readers take the last record per (phase, step)).
class JsonlMetricsWriter final : public ProgressSink {
 public:
  // Creates the parent directories and opens `path` for appending.
  static absl::StatusOr<std::unique_ptr<JsonlMetricsWriter>> Create(const std::string& path);
  JsonlMetricsWriter(const JsonlMetricsWriter&) = delete;
  JsonlMetricsWriter& operator=(const JsonlMetricsWriter&) = delete;
  ~JsonlMetricsWriter() override;

  absl::Status OnEvent(const ProgressEvent& event) override;
  absl::Status Flush() override;

  const std::string& path() const { return path_; }

 private:
  JsonlMetricsWriter(std::string path, FILE* file) : path_(std::move(path)), file_(file) {}
  std::string path_;
  FILE* file_;
};

enum class Resumed { kNo, kYes };

// Every scalar of an event as the TensorBoard scalar "<phase>/<name>" ("train/loss",
// "evaluate/ppl/knowledge") at event.step and event.wall_time (as float32). Messages and events
// without scalars write nothing.
class TensorBoardSink final : public ProgressSink {
 public:
  // A new event file in `logdir` (formats/tfevents.h). Resumed::kYes first writes a SessionLog
  // START at `resume_step` (the first step the resumed run will report), so TensorBoard drops the
  // points the interrupted run wrote from that step on.
  static absl::StatusOr<std::unique_ptr<TensorBoardSink>> Create(const std::string& logdir,
                                                                 absl::string_view hostname, double wall_time,
                                                                 Resumed resumed, int64_t resume_step = 0);

  absl::Status OnEvent(const ProgressEvent& event) override;
  absl::Status Flush() override;  // fsync of the event file

  const std::string& path() const { return writer_->path(); }

 private:
  explicit TensorBoardSink(std::unique_ptr<formats::TfEventsWriter> writer) : writer_(std::move(writer)) {}
  std::unique_ptr<formats::TfEventsWriter> writer_;
};

// Forwards every event (and Flush) to all of its sinks, which it owns, in the order given. Returns
// the first error, but still forwards to the sinks after a failing one.
class FanOutSink final : public ProgressSink {
 public:
  FanOutSink() = default;
  explicit FanOutSink(std::vector<std::unique_ptr<ProgressSink>> sinks);
  void Add(std::unique_ptr<ProgressSink> sink);

  absl::Status OnEvent(const ProgressEvent& event) override;
  absl::Status Flush() override;

 private:
  std::vector<std::unique_ptr<ProgressSink>> sinks_;
};

}  // namespace sigmatune::train

#endif  // SIGMATUNE_WORKER_TRAIN_PROGRESS_H_
