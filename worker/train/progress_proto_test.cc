#include "worker/train/progress_proto.h"

#include "gtest/gtest.h"

namespace sigmatune::train {
namespace {

TEST(ProgressProtoTest, EveryPhaseRoundTrips) {
  for (int i = 0; i < kNumPhases; ++i) {
    const Phase phase = static_cast<Phase>(i);
    const v1::JobPhase proto = PhaseToProto(phase);
    EXPECT_NE(proto, v1::JOB_PHASE_UNSPECIFIED) << PhaseName(phase);
    ASSERT_TRUE(PhaseFromProto(proto).has_value());
    EXPECT_EQ(*PhaseFromProto(proto), phase);
  }
  EXPECT_FALSE(PhaseFromProto(v1::JOB_PHASE_UNSPECIFIED).has_value());
  EXPECT_FALSE(PhaseFromProto(static_cast<v1::JobPhase>(99)).has_value());
}

TEST(ProgressProtoTest, EventRoundTrips) {
  ProgressEvent event;
  event.phase = Phase::kTrain;
  event.step = 12;
  event.total_steps = 100;
  event.wall_time = 1700000012.25;
  event.elapsed_s = 31.5;
  event.scalars = {{"loss", 2.25}, {"lr", 1.9e-4}, {"tokens_per_s", 1234}};
  event.message = "checkpoint step 12 saved";
  const v1::Progress proto = ProgressToProto(event);
  EXPECT_EQ(proto.phase(), v1::JOB_PHASE_TRAIN);
  EXPECT_EQ(proto.time().seconds(), 1700000012);
  EXPECT_EQ(proto.time().nanos(), 250000000);
  const std::optional<ProgressEvent> back = ProgressFromProto(proto);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->phase, event.phase);
  EXPECT_EQ(back->step, event.step);
  EXPECT_EQ(back->total_steps, event.total_steps);
  EXPECT_DOUBLE_EQ(back->wall_time, event.wall_time);
  EXPECT_EQ(back->elapsed_s, event.elapsed_s);
  EXPECT_EQ(back->scalars, event.scalars);
  EXPECT_EQ(back->message, event.message);
}

TEST(ProgressProtoTest, FromProtoCleansUp) {
  v1::Progress proto;
  EXPECT_FALSE(ProgressFromProto(proto).has_value());  // no phase: no progress yet
  proto.set_phase(v1::JOB_PHASE_EVALUATE);
  proto.set_step(-3);
  for (double value : {1.0, 2.0}) {
    v1::Scalar* s = proto.add_scalars();
    s->set_name("ppl/knowledge");
    s->set_value(value);
  }
  const std::optional<ProgressEvent> event = ProgressFromProto(proto);
  ASSERT_TRUE(event.has_value());
  EXPECT_EQ(event->step, 0);
  ASSERT_EQ(event->scalars.size(), 1u);
  EXPECT_EQ(event->scalars[0].second, 1.0);
}

}  // namespace
}  // namespace sigmatune::train
