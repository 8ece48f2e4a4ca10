#include "bench/ratio_reporter.h"

#include <cstdio>

#include "absl/strings/str_split.h"

namespace sigmatune::bench {

void RatioReporter::ReportRuns(const std::vector<Run>& runs) {
  for (const Run& run : runs) {
    if (run.run_type == Run::RT_Iteration && run.iterations > 0) {
      times_[run.benchmark_name()] = run.GetAdjustedRealTime();
    }
  }
  ConsoleReporter::ReportRuns(runs);
}

void RatioReporter::PrintRatios() const {
  std::printf("\n%-22s %-12s %-10s %12s %12s %8s\n", "op", "args", "anchor", "ours", "anchor", "ours/anchor");
  for (const auto& [name, ours] : times_) {
    std::vector<std::string> parts = absl::StrSplit(name, absl::MaxSplits('/', 2));
    if (parts.size() != 3 || parts[1] != "ours") continue;
    for (const auto& [other, anchor] : times_) {
      std::vector<std::string> o = absl::StrSplit(other, absl::MaxSplits('/', 2));
      if (o.size() != 3 || o[0] != parts[0] || o[2] != parts[2] || o[1] == "ours") continue;
      std::printf("%-22s %-12s %-10s %12.3f %12.3f %8.3f\n", parts[0].c_str(), parts[2].c_str(), o[1].c_str(),
                  ours / 1e6, anchor / 1e6, ours / anchor);
    }
  }
  std::printf("(times in ms per iteration, real time)\n");
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
