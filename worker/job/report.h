// The job report: what the model learned (task sets) and what it kept (knowledge sets), before and
// after training, with the training summary and the phase times.
//
//   report.json  {"job", "method", "base_model", "device", "identity", "train": {...},
//                 "eval": [{"name", "role", "metric", "before", "after", "change"}], "times": {...},
//                 "exports": {...}, "notes": [...]}
//   report.txt   the same as a short table (also printed at the end of a run).
// The "before" evaluation is saved separately (eval_before.json) so that a resumed job reports the
// numbers of the original model without recomputing them; it carries the job identity and is only
// reused by the same job.
#ifndef SIGMATUNE_WORKER_JOB_REPORT_H_
#define SIGMATUNE_WORKER_JOB_REPORT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sigmatune/v1/job.pb.h"
#include "worker/job/run_job.h"
#include "worker/train/evaluate.h"

namespace sigmatune::job {

std::string EvalResultsToJson(const std::vector<train::EvalResult>& results, const std::string& identity);
// FailedPrecondition for another identity, InvalidArgument for a file that does not parse.
absl::StatusOr<std::vector<train::EvalResult>> ParseEvalResults(const std::string& json, const std::string& identity);

// The text table of a result (before/after per eval set).
std::string ReportTable(const v1::JobSpec& spec, const JobResult& result);

// Writes report.json and report.txt into spec.output_dir atomically; *text receives the table.
absl::Status WriteReport(const v1::JobSpec& spec, const JobResult& result, const std::string& identity,
                         std::string* text);

}  // namespace sigmatune::job

#endif  // SIGMATUNE_WORKER_JOB_REPORT_H_
