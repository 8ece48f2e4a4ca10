// Writes sample TensorBoard event files for the interoperability check against TensorBoard's own
// reader (tools/tfevents_check.py, docs/progress-and-metrics.md):
//
//   tfevents_demo LOGDIR EXPECTED_JSON
//
// LOGDIR gets two event files: an interrupted run (train/loss and train/lr at steps 1..10,
// eval/ppl/knowledge at steps 5 and 10) and its resumption from a checkpoint at step 6 (SessionLog
// START at step 7, then train/loss and train/lr at steps 7..12). EXPECTED_JSON gets what TensorBoard
// must show: the points of the first run with step >= 7 purged, then the resumed run's points:
//   {"file_version": "brain.Event:2", "scalars": {tag: [[step, wall_time, value], ...]}}
// Values are float32 (as stored); exits non-zero with the error on failure.
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "formats/tfevents.h"
#include "nlohmann/json.hpp"

namespace sigmatune::formats {
namespace {

constexpr double kStart = 1700000000.0;

struct Point {
  int64_t step;
  double wall_time;
  float value;
};

absl::Status Run(const std::string& logdir, const std::string& expected_path) {
  std::map<std::string, std::vector<Point>> expected;
  const auto add = [&](TfEventsWriter& w, const std::string& tag, int64_t step, double t, float v,
                       bool survives) -> absl::Status {
    if (survives) expected[tag].push_back({step, t, v});
    return w.AddScalar(tag, step, t, v);
  };
  {
    auto first = TfEventsWriter::Create(logdir, "demo-host", kStart);
    if (!first.ok()) return first.status();
    for (int64_t step = 1; step <= 10; ++step) {
      const double t = kStart + step;
      const bool survives = step < 7;  // purged by the resumed run's SessionLog START at step 7
      absl::Status st = add(**first, "train/loss", step, t, 3.0f - 0.1f * step, survives);
      if (st.ok()) st = add(**first, "train/lr", step, t, 2e-4f * step / 10, survives);
      if (st.ok() && step % 5 == 0) st = add(**first, "eval/ppl/knowledge", step, t, 20.0f - step, survives);
      if (!st.ok()) return st;
    }
  }
  {
    const double resumed = kStart + 100;
    auto second = TfEventsWriter::Create(logdir, "demo-host", resumed);
    if (!second.ok()) return second.status();
    absl::Status st = (*second)->AddSessionStart(7, resumed);
    for (int64_t step = 7; step <= 12 && st.ok(); ++step) {
      const double t = resumed + step;
      st = add(**second, "train/loss", step, t, 10.0f + step + 0.25f, true);
      if (st.ok()) st = add(**second, "train/lr", step, t, 1e-5f * step, true);
    }
    if (st.ok()) st = (*second)->Flush();
    if (!st.ok()) return st;
  }
  nlohmann::json j;
  j["file_version"] = kTfEventsFileVersion;
  j["scalars"] = nlohmann::json::object();
  for (const auto& [tag, points] : expected) {
    for (const Point& p : points) {
      j["scalars"][tag].push_back({p.step, p.wall_time, static_cast<double>(p.value)});
    }
  }
  std::ofstream out(expected_path);
  out << j.dump(1) << "\n";
  out.close();
  if (!out) return absl::UnavailableError(expected_path + ": cannot write the expected scalars");
  return absl::OkStatus();
}

}  // namespace
}  // namespace sigmatune::formats

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s LOGDIR EXPECTED_JSON\n", argv[0]);
    return 2;
  }
  const absl::Status st = sigmatune::formats::Run(argv[1], argv[2]);
  if (!st.ok()) {
    std::fprintf(stderr, "tfevents_demo: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s and %s\n", argv[1], argv[2]);
  return 0;
}
