#include "worker/job/work_plan.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "kernels/base/check.h"

namespace sigmatune::job {

LinearShape ShapeOf(const model::LlamaConfig& config, model::LinearKind kind) {
  const int64_t hd = config.head_dim;
  switch (kind) {
    case model::LinearKind::kQ: return {config.num_heads * hd, config.hidden_size};
    case model::LinearKind::kK:
    case model::LinearKind::kV: return {config.num_kv_heads * hd, config.hidden_size};
    case model::LinearKind::kO: return {config.hidden_size, config.num_heads * hd};
    case model::LinearKind::kGate:
    case model::LinearKind::kUp: return {config.intermediate_size, config.hidden_size};
    case model::LinearKind::kDown: return {config.hidden_size, config.intermediate_size};
  }
  return {};
}

double WorkPlan::Imbalance() const {
  const double total = std::accumulate(load.begin(), load.end(), 0.0);
  if (total <= 0) return 1.0;
  return *std::max_element(load.begin(), load.end()) / (total / static_cast<double>(load.size()));
}

std::string WorkPlan::Describe() const {
  const double total = std::accumulate(load.begin(), load.end(), 0.0);
  std::vector<int> modules(world_size, 0);
  for (int owner : target_owner) ++modules[owner];
  std::vector<std::string> parts;
  for (int r = 0; r < world_size; ++r) {
    parts.push_back(absl::StrFormat("rank %d: %d modules (%.0f%%)", r, modules[r],
                                    total > 0 ? 100.0 * load[r] / total : 0.0));
  }
  return absl::StrCat(absl::StrJoin(parts, ", "), absl::StrFormat("; imbalance %.2f", Imbalance()));
}

WorkPlan PlanWork(const model::LlamaConfig& config, const std::vector<peft::TargetModule>& targets,
                  peft::Method method, int world_size) {
  ST_CHECK(world_size >= 1) << "world size " << world_size;
  WorkPlan plan;
  plan.world_size = world_size;
  plan.load.assign(world_size, 0.0);
  plan.target_owner.assign(targets.size(), 0);
  const bool by_site = peft::NeedsCovariance(method);
  std::map<peft::SiteKey, size_t> item_of_site;
  for (size_t i = 0; i < targets.size(); ++i) {
    const LinearShape shape = ShapeOf(config, targets[i].kind);
    const double cost = static_cast<double>(shape.out) * static_cast<double>(shape.in) *
                        static_cast<double>(std::min(shape.out, shape.in));
    size_t item = plan.items.size();
    if (by_site) {
      const peft::SiteKey site{targets[i].layer, model::InputSiteOf(targets[i].kind)};
      auto [it, inserted] = item_of_site.emplace(site, plan.items.size());
      item = it->second;
      if (inserted) {
        plan.items.emplace_back();
        plan.items.back().site = site;
      }
    } else {
      plan.items.emplace_back();
    }
    plan.items[item].targets.push_back(i);
    plan.items[item].cost += cost;
  }
  std::vector<size_t> order(plan.items.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return plan.items[a].cost > plan.items[b].cost; });
  for (size_t index : order) {
    WorkItem& item = plan.items[index];
    item.owner = static_cast<int>(std::min_element(plan.load.begin(), plan.load.end()) - plan.load.begin());
    plan.load[item.owner] += item.cost;
    for (size_t t : item.targets) plan.target_owner[t] = item.owner;
    if (item.site.has_value()) plan.site_owner[*item.site] = item.owner;
  }
  return plan;
}

}  // namespace sigmatune::job
