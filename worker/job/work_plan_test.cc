// The decomposition plan: items group the targets of one covariance site, every target has one
// owner, the LPT rule balances the solver cost, and the plan is the same on every call.
#include "worker/job/work_plan.h"

#include <set>

#include "gtest/gtest.h"

namespace sigmatune::job {
namespace {

model::LlamaConfig SmolLike() {
  model::LlamaConfig config;
  config.num_layers = 30;
  config.hidden_size = 576;
  config.intermediate_size = 1536;
  config.num_heads = 9;
  config.num_kv_heads = 3;
  config.head_dim = 64;
  return config;
}

std::vector<peft::TargetModule> AllLinears(int64_t layers) {
  std::vector<peft::TargetModule> targets;
  for (int64_t l = 0; l < layers; ++l) {
    for (model::LinearKind k : {model::LinearKind::kQ, model::LinearKind::kK, model::LinearKind::kV,
                                model::LinearKind::kO, model::LinearKind::kGate, model::LinearKind::kUp,
                                model::LinearKind::kDown}) {
      targets.push_back({l, k});
    }
  }
  return targets;
}

TEST(WorkPlanTest, CordaGroupsTheTargetsOfOneSite) {
  const auto targets = AllLinears(30);
  const WorkPlan plan = PlanWork(SmolLike(), targets, peft::Method::kCordaKpm, 3);
  EXPECT_EQ(plan.items.size(), 30u * 4u);  // attn_in, attn_out, mlp_in, mlp_act per layer
  for (const WorkItem& item : plan.items) {
    ASSERT_TRUE(item.site.has_value());
    for (size_t t : item.targets) {
      EXPECT_EQ(targets[t].layer, item.site->first);
      EXPECT_EQ(model::InputSiteOf(targets[t].kind), item.site->second);
      EXPECT_EQ(plan.target_owner[t], item.owner);
    }
    EXPECT_EQ(plan.site_owner.at(*item.site), item.owner);
  }
}

TEST(WorkPlanTest, BalancesTheSolverCost) {
  const auto targets = AllLinears(30);
  for (int world : {1, 2, 3, 4, 7}) {
    for (peft::Method method : {peft::Method::kPissa, peft::Method::kCordaIpm}) {
      const WorkPlan plan = PlanWork(SmolLike(), targets, method, world);
      ASSERT_EQ(static_cast<int>(plan.load.size()), world);
      std::set<int> owners(plan.target_owner.begin(), plan.target_owner.end());
      EXPECT_EQ(static_cast<int>(owners.size()), world) << "every rank gets work";
      EXPECT_LT(plan.Imbalance(), 1.1) << world << " ranks: " << plan.Describe();
    }
  }
  EXPECT_EQ(PlanWork(SmolLike(), targets, peft::Method::kPissa, 1).Imbalance(), 1.0);
}

TEST(WorkPlanTest, LargestFirstToTheLeastLoaded) {
  // Two down_proj (cost 576*1536*576 each) and four q_proj (576^3 each) on 2 ranks: the two large
  // items go to different ranks, then the small ones fill the gaps evenly.
  const std::vector<peft::TargetModule> targets = {{0, model::LinearKind::kQ},    {0, model::LinearKind::kDown},
                                                   {1, model::LinearKind::kQ},    {1, model::LinearKind::kDown},
                                                   {2, model::LinearKind::kQ},    {3, model::LinearKind::kQ}};
  const WorkPlan plan = PlanWork(SmolLike(), targets, peft::Method::kPissa, 2);
  EXPECT_EQ(plan.target_owner[1], 0);
  EXPECT_EQ(plan.target_owner[3], 1);
  EXPECT_DOUBLE_EQ(plan.load[0], plan.load[1]);
  EXPECT_NE(plan.Describe().find("rank 1: 3 modules (50%)"), std::string::npos) << plan.Describe();
  // Pure function: the same plan again.
  const WorkPlan again = PlanWork(SmolLike(), targets, peft::Method::kPissa, 2);
  EXPECT_EQ(again.target_owner, plan.target_owner);
}

}  // namespace
}  // namespace sigmatune::job
