// ShardedAdamW: on one rank it is AdamW; on 1, 2 and 3 ranks (threads of a LocalGroup) the same
// gradients give the same parameters and moments; a NaN gradient fails every rank and changes
// nothing; shard files written on one world size resume on another (and AdamW's single-process
// file still loads); bad, missing and overlapping shard files are refused, naming the file.
//
// The gradients are small integers split unevenly over the ranks, so every sum (the gradient's
// and the squared norm's) is exact in any order and the results agree bit for bit across world
// sizes.
#include "worker/train/sharded_optimizer.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "formats/safetensors.h"
#include "gtest/gtest.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/tensor.h"
#include "kernels/model/backend.h"
#include "kernels/testing/status.h"
#include "worker/comm/communicator.h"
#include "worker/comm/local_communicator.h"
#include "worker/train/optimizer.h"

namespace sigmatune::train {
namespace {

using Files = std::vector<std::pair<std::string, std::string>>;

// 173 elements: 87 + 86 on 2 ranks, 58 + 58 + 57 on 3, splitting parameters in the middle.
std::vector<Shape> DefaultShapes() { return {{7, 3}, {111}, {1}, {4, 2, 5}}; }

// Parameters and gradients owned by one rank.
struct Model {
  std::vector<std::string> names;
  std::vector<Tensor> values, grads;

  std::vector<AdamW::Param> Params() {
    std::vector<AdamW::Param> out;
    for (size_t i = 0; i < names.size(); ++i) out.push_back({names[i], &values[i], &grads[i]});
    return out;
  }
  int64_t total() const {
    int64_t n = 0;
    for (const Tensor& v : values) n += v.numel();
    return n;
  }
  // Every value, flat, in double.
  std::vector<double> Flat() const {
    std::vector<double> out;
    for (const Tensor& v : values) {
      for (int64_t i = 0; i < v.numel(); ++i) out.push_back(GetAsDouble(v, i));
    }
    return out;
  }
  // Sets the flat element k of the gradients.
  void SetGrad(int64_t k, double g) {
    for (Tensor& t : grads) {
      if (k < t.numel()) {
        if (t.dtype() == DType::kF32) {
          t.data<float>()[k] = static_cast<float>(g);
        } else {
          t.data<double>()[k] = g;
        }
        return;
      }
      k -= t.numel();
    }
  }
};

// Exactly representable starting values.
Model MakeModel(DType dt, const std::vector<Shape>& shapes = DefaultShapes()) {
  Model m;
  int64_t k = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    m.names.push_back(absl::StrCat("layers.", i, ".lora_", i % 2 ? "B" : "A"));
    Tensor v = Tensor::Zeros(shapes[i], dt);
    for (int64_t j = 0; j < v.numel(); ++j, ++k) {
      const double x = static_cast<double>((k * 37) % 101 - 50) / 64.0;
      if (dt == DType::kF32) {
        v.data<float>()[j] = static_cast<float>(x);
      } else {
        v.data<double>()[j] = x;
      }
    }
    m.values.push_back(v);
    m.grads.push_back(Tensor::Zeros(shapes[i], dt));
  }
  return m;
}

// The group's gradient of element k at `step` is an integer in [-48, 48] (scaled norm about 93 on
// odd steps, 186 on even ones); rank r of `size` holds a share of it (small integers; the last
// rank the rest).
double GlobalGrad(int64_t step, int64_t k) {
  return static_cast<double>(((k * 31 + step * 17) % 49 - 24) * (step % 2 + 1));
}
double ShareOf(int64_t step, int64_t k, int rank, int size) {
  if (size == 1) return GlobalGrad(step, k);
  if (rank < size - 1) return static_cast<double>((k * 7 + rank * 13 + step) % 9 - 4);
  double rest = GlobalGrad(step, k);
  for (int r = 0; r < size - 1; ++r) rest -= ShareOf(step, k, r, size);
  return rest;
}
void SetShares(Model* m, int64_t step, int rank, int size) {
  const int64_t n = m->total();
  for (int64_t k = 0; k < n; ++k) m->SetGrad(k, ShareOf(step, k, rank, size));
}

// max_grad_norm 120: the integer gradients are clipped on even steps only.
AdamWOptions TestOptions(double max_grad_norm = 120.0) {
  AdamWOptions o;
  o.lr = 1e-2;
  o.beta1 = 0.85;
  o.beta2 = 0.99;
  o.eps = 1e-6;
  o.weight_decay = 0.01;
  o.max_grad_norm = max_grad_norm;
  return o;
}
double Lr(int64_t step) { return 1e-2 * (1.0 - 0.05 * static_cast<double>(step)); }
constexpr double kGradScale = 0.5;

// What a group ends with: the parameters (every rank's, checked equal), the moments assembled
// from every rank's part, the step, the stats of each step and each rank's shard file.
struct Outcome {
  std::vector<double> params;
  std::vector<double> exp_avg, exp_avg_sq;
  int64_t step = 0;
  std::vector<double> grad_norms, clip_coefs;
  Files shards;
  bool ranks_agree = true;
};

struct GroupRun {
  int size = 1;
  DType dtype = DType::kF32;
  std::vector<Shape> shapes = DefaultShapes();
  int64_t first_step = 0;  // steps first_step + 1 .. last_step are taken
  int64_t last_step = 3;
  const Files* load = nullptr;             // restored (at first_step) before stepping
  const std::vector<double>* start = nullptr;  // parameter values to start from
};

// Runs `run` on a LocalGroup; ASSERTs every rank succeeded.
Outcome RunGroup(const GroupRun& run) {
  Outcome out;
  std::mutex mu;
  std::vector<std::vector<double>> params(run.size);
  out.shards.resize(run.size);
  int64_t total = 0;
  for (const Shape& s : run.shapes) total += NumElements(s);
  out.exp_avg.assign(total, std::nan(""));
  out.exp_avg_sq.assign(total, std::nan(""));
  const std::vector<absl::Status> statuses =
      comm::LocalGroup::Run(run.size, [&](comm::Communicator& comm) -> absl::Status {
    model::CpuBackend backend(1);
    Model m = MakeModel(run.dtype, run.shapes);
    if (run.start != nullptr) {
      int64_t k = 0;
      for (Tensor& v : m.values) {
        for (int64_t j = 0; j < v.numel(); ++j, ++k) {
          if (v.dtype() == DType::kF32) {
            v.data<float>()[j] = static_cast<float>((*run.start)[k]);
          } else {
            v.data<double>()[j] = (*run.start)[k];
          }
        }
      }
    }
    ST_ASSIGN_OR_RETURN(auto opt, ShardedAdamW::Create(&backend, &comm, m.Params(), TestOptions()));
    if (run.load != nullptr) ST_RETURN_IF_ERROR(opt->LoadShards(*run.load, run.first_step));
    std::vector<double> norms, coefs;
    for (int64_t step = run.first_step + 1; step <= run.last_step; ++step) {
      SetShares(&m, step, comm.rank(), comm.size());
      ST_ASSIGN_OR_RETURN(const AdamW::StepStats stats, opt->Step(Lr(step), kGradScale));
      norms.push_back(stats.grad_norm);
      coefs.push_back(stats.clip_coef);
    }
    ST_ASSIGN_OR_RETURN(const ShardedAdamW::PartState state, opt->LocalState());
    ST_ASSIGN_OR_RETURN(std::string shard, opt->SerializeShard());
    std::lock_guard<std::mutex> lock(mu);
    params[comm.rank()] = m.Flat();
    for (int64_t k = state.range.begin; k < state.range.end; ++k) {
      out.exp_avg[k] = GetAsDouble(state.exp_avg, k - state.range.begin);
      out.exp_avg_sq[k] = GetAsDouble(state.exp_avg_sq, k - state.range.begin);
    }
    out.shards[comm.rank()] = {ShardedAdamW::ShardFileName(comm.rank(), comm.size()), std::move(shard)};
    if (comm.is_leader()) {
      out.step = opt->step();
      out.grad_norms = norms;
      out.clip_coefs = coefs;
    }
    return absl::OkStatus();
  });
  for (int r = 0; r < run.size; ++r) EXPECT_TRUE(statuses[r].ok()) << "rank " << r << ": " << statuses[r];
  out.params = params[0];
  for (int r = 1; r < run.size; ++r) out.ranks_agree = out.ranks_agree && params[r] == params[0];
  return out;
}

// Bitwise equality of two vectors of doubles (NaN never equals).
::testing::AssertionResult Same(const std::vector<double>& got, const std::vector<double>& want, const char* what) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << what << ": " << got.size() << " vs " << want.size() << " elements";
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(got[i] == want[i])) {
      return ::testing::AssertionFailure() << what << "[" << i << "]: " << got[i] << " vs " << want[i];
    }
  }
  return ::testing::AssertionSuccess();
}

void ExpectSameOutcome(const Outcome& got, const Outcome& want) {
  EXPECT_TRUE(got.ranks_agree);
  EXPECT_EQ(got.step, want.step);
  EXPECT_TRUE(Same(got.params, want.params, "params"));
  EXPECT_TRUE(Same(got.exp_avg, want.exp_avg, "exp_avg"));
  EXPECT_TRUE(Same(got.exp_avg_sq, want.exp_avg_sq, "exp_avg_sq"));
}

TEST(ShardedAdamWTest, OneRankIsAdamW) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    model::CpuBackend backend(1);
    comm::SingleProcessCommunicator single;
    Model a = MakeModel(dt), b = MakeModel(dt);
    // The scaled norms below are 14, 29 and 43: clipped at 30 on a third of the steps.
    auto reference = AdamW::Create(&backend, a.Params(), TestOptions(30.0));
    auto sharded = ShardedAdamW::Create(&backend, &single, b.Params(), TestOptions(30.0));
    ASSERT_TRUE(reference.ok()) << reference.status();
    ASSERT_TRUE(sharded.ok()) << sharded.status();
    // Gradients that are not integers, so that rounding would show.
    int clipped = 0;
    for (int64_t step = 1; step <= 6; ++step) {
      for (Model* m : {&a, &b}) {
        for (int64_t k = 0; k < m->total(); ++k) m->SetGrad(k, std::sin(0.37 * k + step) * (step % 3 + 1) * 3.1);
      }
      auto want = (*reference)->Step(Lr(step), kGradScale);
      auto got = (*sharded)->Step(Lr(step), kGradScale);
      ASSERT_TRUE(want.ok()) << want.status();
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->grad_norm, want->grad_norm);
      EXPECT_EQ(got->clip_coef, want->clip_coef);
      EXPECT_EQ(got->lr, want->lr);
      clipped += want->clip_coef < 1;
      // Bit for bit: the same norm, the same elementwise kernel.
      EXPECT_TRUE(Same(b.Flat(), a.Flat(), "params"));
    }
    EXPECT_GT(clipped, 0);
    EXPECT_LT(clipped, 6);
    auto want_state = (*reference)->StateTensors();
    auto got_state = (*sharded)->LocalState();
    ASSERT_TRUE(want_state.ok() && got_state.ok());
    EXPECT_EQ((*sharded)->step(), 6);
    EXPECT_EQ(got_state->range.begin, 0);
    EXPECT_EQ(got_state->range.end, a.total());
    int64_t k = 0;
    for (const std::string& name : a.names) {
      const Tensor& m = want_state->at(name + ".exp_avg");
      const Tensor& v = want_state->at(name + ".exp_avg_sq");
      for (int64_t j = 0; j < m.numel(); ++j, ++k) {
        ASSERT_EQ(GetAsDouble(got_state->exp_avg, k), GetAsDouble(m, j)) << name << " " << j;
        ASSERT_EQ(GetAsDouble(got_state->exp_avg_sq, k), GetAsDouble(v, j)) << name << " " << j;
      }
    }
  }
}

TEST(ShardedAdamWTest, SameResultOnOneTwoAndThreeRanks) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    GroupRun run;
    run.dtype = dt;
    run.last_step = 5;
    run.size = 1;
    const Outcome one = RunGroup(run);
    ASSERT_EQ(one.grad_norms.size(), 5u);
    for (int size : {2, 3}) {
      SCOPED_TRACE(::testing::Message() << size << " ranks");
      run.size = size;
      const Outcome many = RunGroup(run);
      ExpectSameOutcome(many, one);
      EXPECT_EQ(many.grad_norms, one.grad_norms);
      EXPECT_EQ(many.clip_coefs, one.clip_coefs);
    }
    // The test exercises clipping both ways.
    int clipped = 0;
    for (double c : one.clip_coefs) clipped += c < 1;
    EXPECT_GT(clipped, 0);
    EXPECT_LT(clipped, 5);
  }
}

TEST(ShardedAdamWTest, MoreRanksThanElements) {
  GroupRun run;
  run.shapes = {{1}, {1}};
  run.last_step = 3;
  run.size = 1;
  const Outcome one = RunGroup(run);
  run.size = 3;  // rank 2 owns nothing
  const Outcome three = RunGroup(run);
  ExpectSameOutcome(three, one);
  // Its (empty) shard file still counts, and the state re-shards back onto one rank.
  GroupRun resume = run;
  resume.size = 1;
  resume.first_step = 3;
  resume.last_step = 5;
  resume.load = &three.shards;
  resume.start = &three.params;
  GroupRun straight = run;
  straight.size = 1;
  straight.last_step = 5;
  ExpectSameOutcome(RunGroup(resume), RunGroup(straight));
}

TEST(ShardedAdamWTest, NonFiniteGradientFailsEveryRankAndChangesNothing) {
  constexpr int kSize = 3;
  std::mutex mu;
  std::vector<std::string> messages(kSize);
  std::vector<bool> unchanged(kSize, false);
  const auto statuses = comm::LocalGroup::Run(kSize, [&](comm::Communicator& comm) -> absl::Status {
    model::CpuBackend backend(1);
    Model m = MakeModel(DType::kF32);
    ST_ASSIGN_OR_RETURN(auto opt, ShardedAdamW::Create(&backend, &comm, m.Params(), TestOptions()));
    SetShares(&m, 1, comm.rank(), comm.size());
    ST_RETURN_IF_ERROR(opt->Step(Lr(1), kGradScale).status());
    ST_ASSIGN_OR_RETURN(const ShardedAdamW::PartState before, opt->LocalState());
    const std::vector<double> params_before = m.Flat();
    SetShares(&m, 2, comm.rank(), comm.size());
    // Only rank 1 sees the NaN, in an element that rank 2 owns.
    if (comm.rank() == 1) m.SetGrad(m.total() - 2, std::nan(""));
    const absl::StatusOr<AdamW::StepStats> failed = opt->Step(Lr(2), kGradScale);
    if (failed.ok()) return absl::InternalError("the step with a NaN gradient succeeded");
    ST_ASSIGN_OR_RETURN(const ShardedAdamW::PartState after, opt->LocalState());
    std::lock_guard<std::mutex> lock(mu);
    messages[comm.rank()] = std::string(failed.status().message());
    unchanged[comm.rank()] =
        absl::IsFailedPrecondition(failed.status()) && opt->step() == 1 && m.Flat() == params_before &&
        std::memcmp(after.exp_avg.raw_data(), before.exp_avg.raw_data(), before.exp_avg.nbytes()) == 0 &&
        std::memcmp(after.exp_avg_sq.raw_data(), before.exp_avg_sq.raw_data(), before.exp_avg_sq.nbytes()) == 0;
    return absl::OkStatus();
  });
  for (int r = 0; r < kSize; ++r) {
    SCOPED_TRACE(::testing::Message() << "rank " << r);
    EXPECT_TRUE(statuses[r].ok()) << statuses[r];
    EXPECT_TRUE(unchanged[r]);
    EXPECT_NE(messages[r].find("gradient norm is NaN/Inf at step 2"), std::string::npos) << messages[r];
  }
}

// 3 steps on `from` ranks, saved, then 3 more on `to` ranks, equal the 6 steps on one rank.
void ExpectResharding(int from, int to) {
  SCOPED_TRACE(::testing::Message() << from << " ranks -> " << to);
  GroupRun first;
  first.size = from;
  first.last_step = 3;
  const Outcome saved = RunGroup(first);
  GroupRun second;
  second.size = to;
  second.first_step = 3;
  second.last_step = 6;
  second.load = &saved.shards;
  second.start = &saved.params;
  const Outcome resumed = RunGroup(second);
  GroupRun straight;
  straight.size = 1;
  straight.last_step = 6;
  ExpectSameOutcome(resumed, RunGroup(straight));
}

TEST(ShardedAdamWTest, ShardsWrittenOnOneWorldSizeResumeOnAnother) {
  ExpectResharding(3, 2);
  ExpectResharding(3, 1);
  ExpectResharding(1, 3);
  ExpectResharding(2, 3);
}

TEST(ShardedAdamWTest, LoadsAdamWSingleProcessState) {
  // AdamW for 3 steps, its state saved as the old trainer did; 3 more steps on 3 ranks.
  model::CpuBackend backend(1);
  Model m = MakeModel(DType::kF32);
  auto reference = AdamW::Create(&backend, m.Params(), TestOptions());
  ASSERT_TRUE(reference.ok());
  for (int64_t step = 1; step <= 3; ++step) {
    SetShares(&m, step, 0, 1);
    ASSERT_TRUE((*reference)->Step(Lr(step), kGradScale).ok());
  }
  auto tensors = (*reference)->StateTensors();
  ASSERT_TRUE(tensors.ok());
  auto bytes = formats::SerializeSafetensors(*tensors, {{"format", "pt"}});
  ASSERT_TRUE(bytes.ok());
  const Files files = {{"optimizer.safetensors", *bytes}};
  const std::vector<double> params = m.Flat();
  GroupRun resume;
  resume.size = 3;
  resume.first_step = 3;
  resume.last_step = 6;
  resume.load = &files;
  resume.start = &params;
  GroupRun straight;
  straight.last_step = 6;
  ExpectSameOutcome(RunGroup(resume), RunGroup(straight));
}

// Each case: a damaged set of shard files; LoadShards on one rank fails mentioning `parts` and
// leaves the optimizer as it was.
TEST(ShardedAdamWTest, BadMissingAndOverlappingShardsNameTheFile) {
  GroupRun three;
  three.size = 3;
  const Outcome saved3 = RunGroup(three);
  GroupRun two;
  two.size = 2;
  const Outcome saved2 = RunGroup(two);
  GroupRun other;
  other.size = 3;
  other.shapes = {{7, 3}, {111}, {1}, {4, 2, 6}};
  const Outcome other_layout = RunGroup(other);
  ASSERT_EQ(saved3.shards.size(), 3u);

  struct Case {
    std::string what;
    Files files;
    std::vector<std::string> parts;
    absl::StatusCode code;
  };
  std::vector<Case> cases;
  {
    Files f = {saved3.shards[0], saved3.shards[2]};
    cases.push_back({"missing", f, {"optimizer-1-of-3.safetensors", "missing"}, absl::StatusCode::kDataLoss});
  }
  {
    Files f = saved3.shards;
    f.push_back({"copy-of-rank-1.safetensors", saved3.shards[1].second});
    cases.push_back({"duplicate", f, {"optimizer-1-of-3.safetensors", "copy-of-rank-1.safetensors", "overlap"},
                     absl::StatusCode::kDataLoss});
  }
  {
    Files f = saved3.shards;
    f[2] = saved2.shards[1];  // [87, 173) of 2 overlaps rank 1 of 3
    cases.push_back({"mixed world sizes", f, {"optimizer-1-of-2.safetensors"}, absl::StatusCode::kDataLoss});
  }
  {
    Files f = saved3.shards;
    f[1].second.resize(f[1].second.size() - 5);
    cases.push_back({"truncated", f, {"optimizer-1-of-3.safetensors"}, absl::StatusCode::kDataLoss});
  }
  {
    Files f = saved3.shards;
    f[0].second = "{not safetensors}";
    cases.push_back({"garbage", f, {"optimizer-0-of-3.safetensors"}, absl::StatusCode::kDataLoss});
  }
  {
    Files f = other_layout.shards;
    cases.push_back({"another layout", f, {"optimizer-0-of-3.safetensors", "other parameters"},
                     absl::StatusCode::kFailedPrecondition});
  }
  {
    // A NaN moment in an otherwise well-formed shard.
    auto reader = formats::SafetensorsReader::FromBuffer(saved3.shards[2].second, "x");
    ASSERT_TRUE(reader.ok());
    Tensor m = reader->GetTensor("exp_avg_sq")->Contiguous();
    m.data<float>()[3] = std::numeric_limits<float>::quiet_NaN();
    auto bytes = formats::SerializeSafetensors({{"exp_avg", *reader->GetTensor("exp_avg")}, {"exp_avg_sq", m}},
                                               reader->metadata());
    ASSERT_TRUE(bytes.ok());
    Files f = saved3.shards;
    f[2].second = *bytes;
    cases.push_back({"nan", f, {"optimizer-2-of-3.safetensors", "exp_avg_sq", "element 3"},
                     absl::StatusCode::kDataLoss});
  }
  cases.push_back({"none", {}, {"no optimizer state"}, absl::StatusCode::kDataLoss});

  for (int size : {1, 2}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(::testing::Message() << c.what << " on " << size << " ranks");
      std::mutex mu;
      std::vector<absl::Status> errors(size);
      const auto statuses = comm::LocalGroup::Run(size, [&](comm::Communicator& comm) -> absl::Status {
        model::CpuBackend backend(1);
        Model m = MakeModel(DType::kF32);
        ST_ASSIGN_OR_RETURN(auto opt, ShardedAdamW::Create(&backend, &comm, m.Params(), TestOptions()));
        SetShares(&m, 1, comm.rank(), comm.size());
        ST_RETURN_IF_ERROR(opt->Step(Lr(1), kGradScale).status());
        ST_ASSIGN_OR_RETURN(const ShardedAdamW::PartState before, opt->LocalState());
        const absl::Status loaded = opt->LoadShards(c.files, 3);
        if (loaded.ok()) return absl::InternalError("loaded");
        ST_ASSIGN_OR_RETURN(const ShardedAdamW::PartState after, opt->LocalState());
        if (opt->step() != 1 ||
            std::memcmp(after.exp_avg.raw_data(), before.exp_avg.raw_data(), before.exp_avg.nbytes()) != 0 ||
            std::memcmp(after.exp_avg_sq.raw_data(), before.exp_avg_sq.raw_data(), before.exp_avg_sq.nbytes()) != 0) {
          return absl::InternalError("a failed LoadShards changed the state");
        }
        std::lock_guard<std::mutex> lock(mu);
        errors[comm.rank()] = loaded;
        return absl::OkStatus();
      });
      for (int r = 0; r < size; ++r) {
        EXPECT_TRUE(statuses[r].ok()) << "rank " << r << ": " << statuses[r];
        EXPECT_EQ(errors[r].code(), c.code) << "rank " << r << ": " << errors[r];
        for (const std::string& part : c.parts) {
          EXPECT_NE(errors[r].message().find(part), absl::string_view::npos)
              << "rank " << r << ": '" << part << "' not in: " << errors[r].message();
        }
      }
    }
  }
  // A shard of another step.
  model::CpuBackend rank_backend(1);
  comm::SingleProcessCommunicator single;
  Model m = MakeModel(DType::kF32);
  auto opt = ShardedAdamW::Create(&rank_backend, &single, m.Params(), TestOptions());
  ASSERT_TRUE(opt.ok());
  EXPECT_ERROR_MENTIONS((*opt)->LoadShards(saved3.shards, 4), "optimizer-0-of-3.safetensors", "step 3");
  EXPECT_TRUE((*opt)->LoadShards(saved3.shards, 3).ok());
  EXPECT_EQ((*opt)->step(), 3);
}

TEST(ShardedAdamWTest, CreateRejectsMixedDtypesAndBadOptions) {
  model::CpuBackend backend(1);
  comm::SingleProcessCommunicator single;
  Model m = MakeModel(DType::kF32);
  m.values[1] = m.values[1].To(DType::kF64);
  m.grads[1] = m.grads[1].To(DType::kF64);
  EXPECT_ERROR_MENTIONS(ShardedAdamW::Create(&backend, &single, m.Params(), TestOptions()).status(), "one dtype");
  Model ok = MakeModel(DType::kF32);
  AdamWOptions bad = TestOptions();
  bad.beta1 = 1.5;
  EXPECT_ERROR_MENTIONS(ShardedAdamW::Create(&backend, &single, ok.Params(), bad).status(), "beta1");
  auto opt = ShardedAdamW::Create(&backend, &single, ok.Params(), TestOptions());
  ASSERT_TRUE(opt.ok());
  EXPECT_ERROR_MENTIONS((*opt)->Step(-1, 1).status(), "lr");
  EXPECT_ERROR_MENTIONS((*opt)->Step(1e-3, 0).status(), "grad_scale");
  EXPECT_EQ(ShardedAdamW::ShardFileName(1, 3), "optimizer-1-of-3.safetensors");
}

}  // namespace
}  // namespace sigmatune::train
