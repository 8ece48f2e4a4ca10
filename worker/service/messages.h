// The WorkerService messages (proto/sigmatune/v1/worker.proto) a worker group builds from what it
// has: the description of its devices for Join, progress events and the result of a run for
// ReportEvents. Pure functions, but for GatherDevices (a collective) and the reads of /proc and
// <output_dir>/report.json.
#ifndef SIGMATUNE_WORKER_SERVICE_MESSAGES_H_
#define SIGMATUNE_WORKER_SERVICE_MESSAGES_H_

#include <vector>

#include "absl/status/statusor.h"
#include "sigmatune/v1/coordinator.pb.h"
#include "sigmatune/v1/worker.pb.h"
#include "worker/comm/communicator.h"
#include "worker/job/run_job.h"
#include "worker/train/progress.h"

namespace sigmatune::service {

// This rank's device as Join describes it: kind "cpu", the CPU model ("model name" of
// /proc/cpuinfo, "cpu" when absent), MemTotal of /proc/meminfo in bytes (0 when absent), the host
// name.
v1::Device DescribeLocalDevice(int rank);

// Collective: every rank's DescribeLocalDevice at the leader, in rank order. The leader gets them
// all; the other ranks an empty vector. DataLoss when a description does not parse.
absl::StatusOr<std::vector<v1::Device>> GatherDevices(comm::Communicator& comm);

// The result reported for one run:
//  - FAILED with the message of a RunJob error;
//  - STOPPED when it stopped early ("stopped at step S of T", or "stopped before training"), with
//    the train metrics and the output_dir, metrics_jsonl and checkpoints artifacts;
//  - SUCCEEDED otherwise, with the metrics train/loss (when steps ran in this call),
//    train/start_step (> 0: resumed from a checkpoint), train/steps, train/total_steps,
//    train/tokens_per_s, resumed (0/1), time/<phase>, before/<metric>/<set> and after/<metric>/<set>
//    (<metric> "ppl" or "exact_match", the value perplexity or accuracy); the artifacts (the
//    exports, output_dir, and the paths of report.json, metrics.jsonl and checkpoints/ that exist);
//    the report text and the contents of <output_dir>/report.json.
v1::JobResult ToJobResult(const absl::StatusOr<job::JobResult>& result);

}  // namespace sigmatune::service

#endif  // SIGMATUNE_WORKER_SERVICE_MESSAGES_H_
