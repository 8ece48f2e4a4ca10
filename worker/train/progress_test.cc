#include "worker/train/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "formats/tfevents.h"
#include "gtest/gtest.h"
#include "kernels/testing/status.h"
#include "nlohmann/json.hpp"

namespace sigmatune::train {
namespace {

std::string TempDir(const std::string& name) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/progress_test/", name);
  std::filesystem::remove_all(dir);
  return dir;
}

// A FILE* whose contents can be read back at any time.
class CapturedFile {
 public:
  CapturedFile() : f_(std::tmpfile()) {}
  ~CapturedFile() { std::fclose(f_); }
  FILE* get() const { return f_; }
  std::string Text() const {
    std::fflush(f_);
    std::string s(static_cast<size_t>(std::ftell(f_)), '\0');
    EXPECT_EQ(::pread(::fileno(f_), s.data(), s.size(), 0), static_cast<ssize_t>(s.size()));
    return s;
  }

 private:
  FILE* f_;
};

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

// The 20-cell bar's inside with `full` cells filled.
std::string Bar(int full) {
  std::string bar;
  for (int i = 0; i < 20; ++i) bar += i < full ? "\u2588" : "\u2591";
  return bar;
}

size_t Columns(const std::string& s) {
  size_t n = 0;
  for (const char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

ProgressEvent TrainStep(int64_t step, int64_t total, double elapsed_s) {
  ProgressEvent e;
  e.phase = Phase::kTrain;
  e.step = step;
  e.total_steps = total;
  e.wall_time = 1700000000.0 + elapsed_s;
  e.elapsed_s = elapsed_s;
  e.scalars = {{"loss", 2.314}, {"lr", 1.9e-4}, {"tokens_per_s", 1234.4}};
  return e;
}

ProgressEvent Message(Phase phase, const std::string& text, double elapsed_s = 0) {
  ProgressEvent e;
  e.phase = phase;
  e.elapsed_s = elapsed_s;
  e.message = text;
  return e;
}

TEST(ProgressTest, PhaseNames) {
  const std::vector<std::string> want = {"load",  "calibrate",  "decompose", "evaluate",
                                         "train", "checkpoint", "export",    "done"};
  for (int i = 0; i < kNumPhases; ++i) EXPECT_EQ(PhaseName(static_cast<Phase>(i)), want[i]);
}

TEST(ProgressTest, FormatDuration) {
  EXPECT_EQ(FormatDuration(-1), "?");
  EXPECT_EQ(FormatDuration(0), "0s");
  EXPECT_EQ(FormatDuration(44.6), "45s");
  EXPECT_EQ(FormatDuration(192), "3m12s");
  EXPECT_EQ(FormatDuration(3600 + 125), "1h02m");
  EXPECT_EQ(FormatDuration(2 * 86400 + 3 * 3600 + 59), "2d03h");
}

TEST(EtaEstimatorTest, SmoothedSecondsPerStep) {
  EtaEstimator eta;
  EXPECT_EQ(eta.Update(Phase::kTrain, 0, 100, 0.0), -1);                 // first event: reference point
  EXPECT_DOUBLE_EQ(eta.Update(Phase::kTrain, 10, 100, 20.0), 90 * 2.0);  // s = 2
  // Another phase in between keeps training's estimate.
  EXPECT_EQ(eta.Update(Phase::kEvaluate, 0, 4, 0.0), -1);
  EXPECT_DOUBLE_EQ(eta.Update(Phase::kEvaluate, 2, 4, 1.0), 2 * 0.5);
  EXPECT_DOUBLE_EQ(eta.Update(Phase::kTrain, 20, 100, 30.0), 80 * 1.7);  // 0.3 * 1 + 0.7 * 2
  EXPECT_DOUBLE_EQ(eta.Update(Phase::kTrain, 20, 100, 31.0), 80 * 1.7);  // no step: unchanged
  // The event without a step did not move the reference point (elapsed 30): sample (50-30)/10 = 2.
  EXPECT_NEAR(eta.Update(Phase::kTrain, 30, 100, 50.0), 70 * (0.3 * 2 + 0.7 * 1.7), 1e-9);
  EXPECT_EQ(eta.Update(Phase::kTrain, 100, 100, 150.0), 0);
  EXPECT_EQ(eta.Update(Phase::kTrain, 40, 0, 60.0), -1);  // total unknown
  // Steps going backwards: a new run of the phase, unknown again, then a fresh average.
  EXPECT_EQ(eta.Update(Phase::kTrain, 5, 100, 1.0), -1);
  EXPECT_DOUBLE_EQ(eta.Update(Phase::kTrain, 6, 100, 1.5), 94 * 0.5);
}

TEST(TerminalProgressTest, FactoryPicksLinesModeForAFile) {
  CapturedFile f;
  EXPECT_EQ(TerminalProgress::Create(f.get())->mode(), TerminalMode::kLines);
}

TEST(TerminalProgressTest, LinesModeIsRateLimitedPerPhaseAndKeepsLastStepAndMessages) {
  CapturedFile f;
  TerminalProgress p(f.get(), TerminalMode::kLines, /*min_interval_s=*/5.0);
  ASSERT_TRUE(p.OnEvent(Message(Phase::kCalibrate, "calibrating 128 samples")).ok());
  for (int step = 1; step <= 12; ++step) {
    ASSERT_TRUE(p.OnEvent(TrainStep(step, 12, step)).ok());  // one step per second
    if (step == 3) {
      // An evaluation run in between: its own limiter; does not disturb training's.
      ProgressEvent ev;
      ev.phase = Phase::kEvaluate;
      ev.step = 1;
      ev.total_steps = 2;
      ev.elapsed_s = 0.5;
      ASSERT_TRUE(p.OnEvent(ev).ok());
      ev.step = 2;
      ev.elapsed_s = 1.0;
      ev.scalars = {{"ppl/knowledge", 12.3456}};
      ASSERT_TRUE(p.OnEvent(ev).ok());
    }
    if (step == 8) {
      ASSERT_TRUE(p.OnEvent(Message(Phase::kTrain, "saved checkpoint-8", 8.2)).ok());
    }
  }
  const std::vector<std::string> lines = Lines(f.Text());
  ASSERT_EQ(lines.size(), 7u) << f.Text();
  EXPECT_EQ(lines[0], "[calibrate] calibrating 128 samples");
  EXPECT_EQ(lines[1], "[train] step 1/12 8% loss 2.314 lr 1.9e-04 1234 tok/s");  // first: no ETA yet
  EXPECT_EQ(lines[2], "[evaluate] step 1/2 50%");
  EXPECT_EQ(lines[3], "[evaluate] step 2/2 100% ppl/knowledge 12.35 done in 1s");
  EXPECT_EQ(lines[4], "[train] step 6/12 50% loss 2.314 lr 1.9e-04 1234 tok/s ETA 6s");  // 5 s later
  EXPECT_EQ(lines[5], "[train] saved checkpoint-8");
  // Step 12 is 3.8 s after the message line, printed because it is the last step.
  EXPECT_EQ(lines[6], "[train] step 12/12 100% loss 2.314 lr 1.9e-04 1234 tok/s done in 12s");
  for (const std::string& l : lines) EXPECT_EQ(l.find('\r'), std::string::npos);
}

TEST(TerminalProgressTest, InteractiveModeRedrawsOneLine) {
  CapturedFile f;
  TerminalProgress p(f.get(), TerminalMode::kInteractive);
  ASSERT_TRUE(p.OnEvent(TrainStep(1, 4, 10)).ok());
  ASSERT_TRUE(p.OnEvent(TrainStep(2, 4, 20)).ok());
  std::string text = f.Text();
  EXPECT_EQ(text.find('\n'), std::string::npos) << text;
  const std::string second = text.substr(text.rfind('\r') + 1);
  EXPECT_EQ(second,
            "[train] step 2/4 \u2595" + Bar(10) + "\u258F 50% loss 2.314 lr 1.9e-04 1234 tok/s ETA 20s");
  EXPECT_EQ(text.find("[train] step 1/4"), 0u);

  // A shorter line is padded over the longer one it replaces.
  ProgressEvent short_event = TrainStep(3, 4, 30);
  short_event.scalars.clear();
  ASSERT_TRUE(p.OnEvent(short_event).ok());
  text = f.Text();
  const std::string third = text.substr(text.rfind('\r') + 1);
  const std::string third_line = "[train] step 3/4 \u2595" + Bar(15) + "\u258F 75% ETA 10s";
  ASSERT_LT(Columns(third_line), Columns(second));
  EXPECT_EQ(third, third_line + std::string(Columns(second) - Columns(third_line), ' '));
  EXPECT_EQ(text.find('\n'), std::string::npos);

  // A message event: the progress line is committed, the message gets its own line.
  ASSERT_TRUE(p.OnEvent(Message(Phase::kTrain, "saved checkpoint-3", 31)).ok());
  text = f.Text();
  EXPECT_TRUE(absl::EndsWith(text, "\n[train] saved checkpoint-3\n")) << text;

  // The last step ends its line; the next phase starts a fresh one.
  ASSERT_TRUE(p.OnEvent(TrainStep(4, 4, 40)).ok());
  text = f.Text();
  EXPECT_EQ(text.back(), '\n');
  EXPECT_NE(text.find("[train] step 4/4"), std::string::npos);
  EXPECT_NE(text.find("100% loss 2.314 lr 1.9e-04 1234 tok/s done in 40s\n"), std::string::npos);

  ProgressEvent ex;
  ex.phase = Phase::kExport;
  ex.step = 1;
  ex.total_steps = 3;
  ASSERT_TRUE(p.OnEvent(ex).ok());
  ex.phase = Phase::kDone;
  ex.step = ex.total_steps = 0;
  ex.message = "wrote /out/adapter";
  ASSERT_TRUE(p.OnEvent(ex).ok());
  text = f.Text();
  // The export line (left open at 1/3) is committed before the done line.
  EXPECT_NE(text.find("[export] step 1/3"), std::string::npos);
  EXPECT_TRUE(absl::EndsWith(text, "\n[done] wrote /out/adapter\n")) << text;
}

TEST(TerminalProgressTest, WriteErrorIsAStatus) {
  FILE* full = std::fopen("/dev/full", "w");
  if (full == nullptr) GTEST_SKIP() << "no /dev/full";
  TerminalProgress p(full, TerminalMode::kLines);
  EXPECT_ERROR_MENTIONS(p.OnEvent(TrainStep(1, 2, 1)), "progress output");
  std::fclose(full);
}

std::vector<nlohmann::json> ReadJsonl(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line)) {
    out.push_back(nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false));
    EXPECT_FALSE(out.back().is_discarded()) << line;
  }
  return out;
}

TEST(JsonlMetricsWriterTest, WritesParsableRecordsAndAppendsOnReopen) {
  const std::string path = TempDir("jsonl") + "/out/metrics.jsonl";
  {
    auto w = JsonlMetricsWriter::Create(path);
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_EQ((*w)->path(), path);
    ProgressEvent e = TrainStep(12, 100, 31.25);
    e.scalars.push_back({"grad_norm", std::numeric_limits<double>::quiet_NaN()});
    ASSERT_TRUE((*w)->OnEvent(e).ok());
    // Flushed per record: readable before the writer is closed.
    const auto records = ReadJsonl(path);
    ASSERT_EQ(records.size(), 1u);
    const nlohmann::json& r = records[0];
    EXPECT_EQ(r["time"].get<double>(), 1700000031.25);
    EXPECT_EQ(r["phase"], "train");
    EXPECT_EQ(r["step"], 12);
    EXPECT_EQ(r["total_steps"], 100);
    EXPECT_EQ(r["elapsed_s"].get<double>(), 31.25);
    EXPECT_EQ(r["loss"].get<double>(), 2.314);
    EXPECT_EQ(r["lr"].get<double>(), 1.9e-4);
    EXPECT_EQ(r["tokens_per_s"].get<double>(), 1234.4);
    EXPECT_TRUE(r["grad_norm"].is_null());
    EXPECT_FALSE(r.contains("message"));
    ASSERT_TRUE((*w)->OnEvent(Message(Phase::kCheckpoint, "saved \xff checkpoint-12", 2)).ok());
  }
  {
    auto w = JsonlMetricsWriter::Create(path);
    ASSERT_TRUE(w.ok()) << w.status();
    ProgressEvent e;
    e.phase = Phase::kEvaluate;
    e.step = 12;
    e.scalars = {{"ppl/knowledge", 12.5}};
    ASSERT_TRUE((*w)->OnEvent(e).ok());
    ASSERT_TRUE((*w)->Flush().ok());
  }
  const auto records = ReadJsonl(path);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0]["step"], 12);
  EXPECT_EQ(records[1]["phase"], "checkpoint");
  EXPECT_EQ(records[1]["message"], "saved \xef\xbf\xbd checkpoint-12");  // invalid UTF-8 replaced
  EXPECT_EQ(records[2]["phase"], "evaluate");
  EXPECT_EQ(records[2]["ppl/knowledge"].get<double>(), 12.5);
  EXPECT_EQ(records[2]["total_steps"], 0);
}

TEST(JsonlMetricsWriterTest, ScalarClashingWithAFieldIsRejected) {
  auto w = JsonlMetricsWriter::Create(TempDir("clash") + "/metrics.jsonl");
  ASSERT_TRUE(w.ok());
  ProgressEvent e;
  e.scalars = {{"step", 1.0}};
  EXPECT_EQ((*w)->OnEvent(e).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_ERROR_MENTIONS((*w)->OnEvent(e), "metrics.jsonl", "'step'");
  e.scalars = {{"loss", 1.0}, {"loss", 2.0}};
  EXPECT_ERROR_MENTIONS((*w)->OnEvent(e), "'loss'");
}

TEST(JsonlMetricsWriterTest, WriteErrorsNameTheFile) {
  const std::string dir = TempDir("jsonl_errors");
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/regular_file") << "x";
  EXPECT_ERROR_MENTIONS(JsonlMetricsWriter::Create(dir + "/regular_file/metrics.jsonl").status(),
                        "regular_file/metrics.jsonl");
  if (::access("/dev/full", W_OK) != 0) GTEST_SKIP() << "no /dev/full";
  auto w = JsonlMetricsWriter::Create("/dev/full");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_ERROR_MENTIONS((*w)->OnEvent(TrainStep(1, 2, 1)), "/dev/full", "appending a metrics record failed");
}

TEST(TensorBoardSinkTest, WritesPhaseTaggedScalars) {
  const std::string logdir = TempDir("tb") + "/tensorboard";
  std::string path;
  {
    auto sink = TensorBoardSink::Create(logdir, "host", 1700000000.0, Resumed::kYes, 5);
    ASSERT_TRUE(sink.ok()) << sink.status();
    path = (*sink)->path();
    ASSERT_TRUE((*sink)->OnEvent(TrainStep(5, 10, 1)).ok());
    ASSERT_TRUE((*sink)->OnEvent(Message(Phase::kCheckpoint, "saved")).ok());  // nothing written
    ProgressEvent ev;
    ev.phase = Phase::kEvaluate;
    ev.step = 5;
    ev.wall_time = 1700000003.0;
    ev.scalars = {{"ppl/knowledge", 12.5}};
    ASSERT_TRUE((*sink)->OnEvent(ev).ok());
    ASSERT_TRUE((*sink)->Flush().ok());
  }
  auto events = formats::ReadTfEvents(path);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 6u);  // file_version, START, 3 train scalars, 1 eval scalar
  EXPECT_EQ((*events)[0].file_version, "brain.Event:2");
  EXPECT_EQ((*events)[1].session_log, formats::SessionStatus::kStart);
  EXPECT_EQ((*events)[1].step, 5);
  const std::vector<std::string> tags = {"train/loss", "train/lr", "train/tokens_per_s",
                                         "evaluate/ppl/knowledge"};
  const std::vector<float> values = {2.314f, 1.9e-4f, 1234.4f, 12.5f};
  for (size_t i = 0; i < tags.size(); ++i) {
    const formats::TfEvent& e = (*events)[2 + i];
    EXPECT_EQ(e.step, 5);
    ASSERT_EQ(e.values.size(), 1u);
    EXPECT_EQ(e.values[0].tag, tags[i]);
    EXPECT_EQ(e.values[0].simple_value, values[i]);
  }
  EXPECT_EQ((*events)[2].wall_time, 1700000001.0);
  EXPECT_EQ((*events)[5].wall_time, 1700000003.0);
}

TEST(TensorBoardSinkTest, NotResumedHasNoSessionStartAndErrorsNameTheFile) {
  const std::string dir = TempDir("tb_errors");
  auto sink = TensorBoardSink::Create(dir + "/tb", "host", 1.0, Resumed::kNo);
  ASSERT_TRUE(sink.ok());
  auto events = formats::ReadTfEvents((*sink)->path());
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  std::ofstream(dir + "/regular_file") << "x";
  EXPECT_ERROR_MENTIONS(TensorBoardSink::Create(dir + "/regular_file/tb", "host", 1.0, Resumed::kNo).status(),
                        "regular_file/tb");
}

// Records the events it gets; fails every OnEvent when `fail` is set.
class FakeSink final : public ProgressSink {
 public:
  FakeSink(std::vector<std::string>* log, std::string name, bool fail)
      : log_(log), name_(std::move(name)), fail_(fail) {}
  absl::Status OnEvent(const ProgressEvent& event) override {
    log_->push_back(absl::StrCat(name_, ":", event.step));
    return fail_ ? absl::UnavailableError(name_ + " is broken") : absl::OkStatus();
  }
  absl::Status Flush() override {
    log_->push_back(name_ + ":flush");
    return fail_ ? absl::UnavailableError(name_ + " flush") : absl::OkStatus();
  }

 private:
  std::vector<std::string>* log_;
  std::string name_;
  bool fail_;
};

TEST(FanOutSinkTest, ForwardsToAllAndReturnsTheFirstError) {
  std::vector<std::string> log;
  std::vector<std::unique_ptr<ProgressSink>> sinks;
  sinks.push_back(std::make_unique<FakeSink>(&log, "a", false));
  sinks.push_back(std::make_unique<FakeSink>(&log, "b", true));
  FanOutSink fan(std::move(sinks));
  fan.Add(std::make_unique<FakeSink>(&log, "c", true));
  ProgressEvent e;
  e.step = 7;
  const absl::Status st = fan.OnEvent(e);
  EXPECT_EQ(st.message(), "b is broken");
  EXPECT_EQ(fan.Flush().message(), "b flush");
  EXPECT_EQ(log, (std::vector<std::string>{"a:7", "b:7", "c:7", "a:flush", "b:flush", "c:flush"}));
  FanOutSink empty;
  EXPECT_TRUE(empty.OnEvent(e).ok());
}

}  // namespace
}  // namespace sigmatune::train
