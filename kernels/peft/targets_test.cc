#include "kernels/peft/targets.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/testing/status.h"

namespace sigmatune::peft {
namespace {

using model::LinearKind;
using ::testing::ElementsAre;

std::vector<TargetModule> MustResolve(const TargetModulesSpec& spec, int64_t layers) {
  auto r = ResolveTargetModules(spec, layers);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : std::vector<TargetModule>();
}

TEST(TargetsTest, SuffixNamesSelectEveryLayer) {
  EXPECT_THAT(MustResolve(TargetModulesSpec::List({"v_proj", "q_proj"}), 2),
              ElementsAre(TargetModule{0, LinearKind::kQ}, TargetModule{0, LinearKind::kV},
                          TargetModule{1, LinearKind::kQ}, TargetModule{1, LinearKind::kV}));
}

TEST(TargetsTest, LongerSuffixesAndFullNames) {
  EXPECT_THAT(MustResolve(TargetModulesSpec::List({"self_attn.o_proj",
                                                   "model.layers.1.mlp.down_proj"}),
                          3),
              ElementsAre(TargetModule{0, LinearKind::kO}, TargetModule{1, LinearKind::kO},
                          TargetModule{1, LinearKind::kDown}, TargetModule{2, LinearKind::kO}));
  // "layers.1.mlp.down_proj" must not also select layer 11.
  EXPECT_THAT(MustResolve(TargetModulesSpec::List({"layers.1.mlp.down_proj"}), 12),
              ElementsAre(TargetModule{1, LinearKind::kDown}));
}

TEST(TargetsTest, DuplicatesCollapse) {
  EXPECT_THAT(MustResolve(TargetModulesSpec::List({"q_proj", "self_attn.q_proj", "q_proj"}), 1),
              ElementsAre(TargetModule{0, LinearKind::kQ}));
}

TEST(TargetsTest, AllLinear) {
  const std::vector<TargetModule> all = MustResolve(TargetModulesSpec::String("all-linear"), 2);
  ASSERT_EQ(all.size(), 14u);
  EXPECT_EQ(all.front(), (TargetModule{0, LinearKind::kQ}));
  EXPECT_EQ(all.back(), (TargetModule{1, LinearKind::kDown}));
  // PEFT lower-cases the shorthand.
  EXPECT_EQ(MustResolve(TargetModulesSpec::String("ALL-LINEAR"), 2), all);
}

TEST(TargetsTest, RegexIsAFullMatch) {
  EXPECT_THAT(MustResolve(TargetModulesSpec::String(R"(.*\.(q|v)_proj)"), 2),
              ElementsAre(TargetModule{0, LinearKind::kQ}, TargetModule{0, LinearKind::kV},
                          TargetModule{1, LinearKind::kQ}, TargetModule{1, LinearKind::kV}));
  EXPECT_THAT(MustResolve(TargetModulesSpec::String(R"(model\.layers\.1\.mlp\.(gate|up)_proj)"), 2),
              ElementsAre(TargetModule{1, LinearKind::kGate}, TargetModule{1, LinearKind::kUp}));
  // "q_proj" as a single string is a pattern: it must match the whole name, so nothing matches.
  EXPECT_ERROR_MENTIONS(ResolveTargetModules(TargetModulesSpec::String("q_proj"), 2).status(),
                        "\"q_proj\"", "matches no module", "available module suffixes",
                        "gate_proj");
}

TEST(TargetsTest, UnknownNameIsAnError) {
  const absl::Status st =
      ResolveTargetModules(TargetModulesSpec::List({"q_proj", "q_porj"}), 2).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_ERROR_MENTIONS(st, "\"q_porj\"", "matches no module", "q_proj, k_proj, v_proj, o_proj",
                        "down_proj");
  EXPECT_ERROR_MENTIONS(
      ResolveTargetModules(TargetModulesSpec::List({"model.layers.2.mlp.up_proj"}), 2).status(),
      "model.layers.2.mlp.up_proj", "2-layer");
  EXPECT_ERROR_MENTIONS(ResolveTargetModules(TargetModulesSpec::List({""}), 2).status(),
                        "matches no module");
}

TEST(TargetsTest, EmptyListIsAnError) {
  EXPECT_ERROR_MENTIONS(ResolveTargetModules(TargetModulesSpec::List({}), 2).status(),
                        "empty list", "q_proj");
}

TEST(TargetsTest, UnsupportedModulesAreErrors) {
  EXPECT_ERROR_MENTIONS(ResolveTargetModules(TargetModulesSpec::List({"lm_head"}), 2).status(),
                        "lm_head", "does not adapt");
  EXPECT_ERROR_MENTIONS(
      ResolveTargetModules(TargetModulesSpec::List({"embed_tokens"}), 2).status(),
      "model.embed_tokens", "embedding");
  EXPECT_ERROR_MENTIONS(ResolveTargetModules(TargetModulesSpec::List({"self_attn"}), 2).status(),
                        "model.layers.0.self_attn", "not a Linear");
  EXPECT_ERROR_MENTIONS(
      ResolveTargetModules(TargetModulesSpec::List({"input_layernorm"}), 2).status(),
      "RMSNorm");
  // ".*" also selects containers, norms and lm_head.
  EXPECT_ERROR_MENTIONS(ResolveTargetModules(TargetModulesSpec::String(".*"), 2).status(),
                        "the pattern selects module", "model");
  EXPECT_ERROR_MENTIONS(
      ResolveTargetModules(TargetModulesSpec::String(R"(.*mlp.*)"), 1).status(),
      "model.layers.0.mlp'");
}

TEST(TargetsTest, BadRegexIsAnError) {
  EXPECT_ERROR_MENTIONS(ResolveTargetModules(TargetModulesSpec::String("(q_proj"), 2).status(),
                        "\"(q_proj\"", "not a usable regular expression");
  EXPECT_ERROR_MENTIONS(
      ResolveTargetModules(TargetModulesSpec::String(std::string(5000, 'a')), 2).status(),
      "5000 characters");
}

TEST(TargetsTest, WriteBackValue) {
  const std::vector<TargetModule> all = MustResolve(TargetModulesSpec::String("all-linear"), 3);
  EXPECT_THAT(PeftTargetModulesValue(all, 3),
              ElementsAre("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                          "v_proj"));
  // A projection adapted in some layers only is written by full name.
  const std::vector<TargetModule> some = {{0, LinearKind::kV}, {1, LinearKind::kV},
                                          {2, LinearKind::kV}, {1, LinearKind::kDown},
                                          {1, LinearKind::kDown}};
  const std::vector<std::string> value = PeftTargetModulesValue(some, 3);
  EXPECT_THAT(value, ElementsAre("model.layers.1.mlp.down_proj", "v_proj"));
  EXPECT_THAT(MustResolve(TargetModulesSpec::List(value), 3),
              ElementsAre(TargetModule{0, LinearKind::kV}, TargetModule{1, LinearKind::kV},
                          TargetModule{1, LinearKind::kDown}, TargetModule{2, LinearKind::kV}));
  EXPECT_TRUE(PeftTargetModulesValue({}, 3).empty());
}

TEST(TargetsTest, WriteBackRoundTripsEverySubsetOfOneLayerModel) {
  // Every subset of the 7 projections of a 2-layer model, in layer 0 only or in both layers.
  for (int mask = 1; mask < (1 << 7); ++mask) {
    for (int layers_mask : {1, 3}) {
      std::vector<TargetModule> targets;
      for (int64_t l = 0; l < 2; ++l) {
        if (!(layers_mask & (1 << l))) continue;
        for (int k = 0; k < 7; ++k) {
          if (mask & (1 << k)) targets.push_back({l, model::kAllLinears[k]});
        }
      }
      EXPECT_EQ(MustResolve(TargetModulesSpec::List(PeftTargetModulesValue(targets, 2)), 2),
                targets)
          << "mask " << mask << " layers " << layers_mask;
    }
  }
}

TEST(TargetsTest, NamesAndDebugString) {
  EXPECT_EQ(LinearSuffix(LinearKind::kGate), "gate_proj");
  EXPECT_EQ((TargetModule{3, LinearKind::kDown}).name(), "model.layers.3.mlp.down_proj");
  EXPECT_EQ(TargetModulesSpec::List({"a", "b"}).DebugString(), "[\"a\", \"b\"]");
  EXPECT_EQ(TargetModulesSpec::String("x.*").DebugString(), "\"x.*\"");
}

}  // namespace
}  // namespace sigmatune::peft
