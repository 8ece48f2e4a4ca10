// A Google Benchmark reporter that, after the normal console output, prints for every pair of
// runs named "<Op>/ours/<args>" and "<Op>/<anchor>/<args>" the ratio of their real times, so a
// benchmark run shows our wrapper's overhead against the raw library call side by side.
#ifndef SIGMATUNE_BENCH_RATIO_REPORTER_H_
#define SIGMATUNE_BENCH_RATIO_REPORTER_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"

namespace sigmatune::bench {

class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override;
  // Prints "op  args  ours  anchor  ratio" rows; call after RunSpecifiedBenchmarks.
  void PrintRatios() const;

 private:
  // run name (without aggregate suffix) -> real time per iteration, in the benchmark's unit.
  std::map<std::string, double> times_;
  // run names whose time is a median over repetitions.
  std::set<std::string> medians_;
};

// Runs the registered benchmarks with the ratio table at the end. Returns the exit code.
int RunBenchmarksWithRatios(int argc, char** argv);

}  // namespace sigmatune::bench

#endif  // SIGMATUNE_BENCH_RATIO_REPORTER_H_
