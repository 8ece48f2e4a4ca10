#include "kernels/base/backend.h"

#include "gtest/gtest.h"

#if SIGMATUNE_WITH_CUDA
#include "kernels/base/gpu_context.h"
#endif

namespace sigmatune {
namespace {

TEST(BackendTest, ChoiceIsConsistentWithTheMachine) {
  const BackendChoice choice = ChooseBackend();
  EXPECT_FALSE(choice.reason.empty());
  const std::string notice = BackendNotice(choice);
  EXPECT_NE(notice.find(choice.device.ToString()), std::string::npos) << notice;
  EXPECT_EQ(notice.find('\n'), std::string::npos) << "the notice is one line";
#if SIGMATUNE_WITH_CUDA
  EXPECT_EQ(choice.cuda_build, CudaBuild::kCompiledIn);
  // The backend picks CUDA exactly when a context can be created on device 0.
  auto ctx = GpuContext::Create(0);
  EXPECT_EQ(choice.device.is_cuda(), ctx.ok()) << ctx.status();
  if (!ctx.ok()) {
    EXPECT_EQ(ctx.status().code(), absl::StatusCode::kUnavailable) << ctx.status();
    EXPECT_EQ(choice.visible_gpus, 0);
  }
#else
  EXPECT_EQ(choice.cuda_build, CudaBuild::kNotCompiled);
  EXPECT_TRUE(choice.device.is_cpu());
#endif
}

}  // namespace
}  // namespace sigmatune
