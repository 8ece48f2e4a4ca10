// WorkPlan: which rank of a worker group calibrates-owns and decomposes which layers.
//
// The unit of work is an item: for the covariance methods (CorDA), the targets that read one input
// site (q/k/v share the attention input, gate/up the MLP input; the covariance is damped once per
// site), otherwise one target. An item's cost is the solver's, sum over its targets of
// out * in * min(out, in) (DESIGN.md). Items are assigned largest first to the least loaded rank
// (ties: the lower rank; equal costs: the earlier item), the LPT rule, whose makespan is within
// 4/3 of the best possible. The plan is a pure function of (config, targets, method, world size),
// so every rank computes the same one without talking.
#ifndef SIGMATUNE_WORKER_JOB_WORK_PLAN_H_
#define SIGMATUNE_WORKER_JOB_WORK_PLAN_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kernels/model/llama.h"
#include "kernels/peft/covariance_collector.h"
#include "kernels/peft/method.h"
#include "kernels/peft/targets.h"

namespace sigmatune::job {

// [out, in] of a linear of the model.
struct LinearShape {
  int64_t out = 0;
  int64_t in = 0;
};
LinearShape ShapeOf(const model::LlamaConfig& config, model::LinearKind kind);

struct WorkItem {
  std::vector<size_t> targets;         // indices into the job's target list, ascending
  std::optional<peft::SiteKey> site;   // the shared covariance (covariance methods)
  double cost = 0;
  int owner = 0;
};

struct WorkPlan {
  int world_size = 1;
  std::vector<WorkItem> items;      // in target order (by first target)
  std::vector<double> load;         // per rank: the sum of its items' costs
  std::vector<int> target_owner;    // per target index
  std::map<peft::SiteKey, int> site_owner;

  // max load / mean load (1 = perfectly balanced).
  double Imbalance() const;
  // "rank 0: 12 modules (41%), rank 1: ..." for logs.
  std::string Describe() const;
};

// CHECKs world_size >= 1.
WorkPlan PlanWork(const model::LlamaConfig& config, const std::vector<peft::TargetModule>& targets,
                  peft::Method method, int world_size);

}  // namespace sigmatune::job

#endif  // SIGMATUNE_WORKER_JOB_WORK_PLAN_H_
