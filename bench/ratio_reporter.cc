#include "bench/ratio_reporter.h"

#include <cstdio>

#include "absl/strings/str_split.h"

namespace sigmatune::bench {

void RatioReporter::ReportRuns(const std::vector<Run>& runs) {
  for (const Run& run : runs) {
    if (run.error_occurred) continue;
    if (run.run_type == Run::RT_Iteration && run.iterations > 0) {
      // With repetitions the median (below) replaces these single runs.
      if (medians_.count(run.run_name.str()) == 0) times_[run.run_name.str()] = run.GetAdjustedRealTime();
    } else if (run.run_type == Run::RT_Aggregate && run.aggregate_name == "median") {
      medians_.insert(run.run_name.str());
      times_[run.run_name.str()] = run.GetAdjustedRealTime();
    }
  }
  ConsoleReporter::ReportRuns(runs);
}

void RatioReporter::PrintRatios() const {
  std::printf("\n%-12s %-8s %-10s %12s %12s %12s\n", "op", "size", "anchor", "ours", "anchor", "ours/anchor");
  for (const auto& [name, ours] : times_) {
    std::vector<std::string> parts = absl::StrSplit(name, absl::MaxSplits('/', 2));
    if (parts.size() != 3 || parts[1] != "ours") continue;
    for (const auto& [other, anchor] : times_) {
      std::vector<std::string> o = absl::StrSplit(other, absl::MaxSplits('/', 2));
      if (o.size() != 3 || o[0] != parts[0] || o[2] != parts[2] || o[1] == "ours") continue;
      const std::string size = parts[2].substr(0, parts[2].find('/'));
      std::printf("%-12s %-8s %-10s %12.3f %12.3f %12.3f\n", parts[0].c_str(), size.c_str(), o[1].c_str(), ours,
                  anchor, ours / anchor);
    }
  }
  std::printf("(real time per iteration in each benchmark's time unit; the median with --benchmark_repetitions)\n");
}

int RunBenchmarksWithRatios(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.PrintRatios();
  benchmark::Shutdown();
  return 0;
}

}  // namespace sigmatune::bench
