// OpenJobBackend: the spec's device names pick the CPU or the rank's GPU. On a machine without a
// usable GPU (every build machine) "auto" falls back to the CPU with a notice and "cuda" is a clear
// error; on a GPU machine "auto" and "cuda" give the bf16 CUDA backend of the local rank's GPU.
#include "worker/job/device.h"

#include "gtest/gtest.h"
#include "kernels/base/backend.h"
#include "kernels/testing/status.h"

namespace sigmatune::job {
namespace {

bool HaveGpu() { return ChooseBackend().visible_gpus > 0; }

TEST(OpenJobBackendTest, CpuIsTheFp32CpuBackend) {
  absl::StatusOr<JobBackend> opened = OpenJobBackend("cpu", 1, 0);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(opened->device, "cpu");
  EXPECT_TRUE(opened->backend->device().is_cpu());
  EXPECT_EQ(opened->backend->activation_dtype(), DType::kF32);
  EXPECT_TRUE(opened->notice.empty());
  // A host backend reports no device memory.
  EXPECT_EQ(opened->backend->PeakDeviceBytes().status().code(), absl::StatusCode::kUnimplemented);
}

TEST(OpenJobBackendTest, AutoUsesTheGpuWhenThereIsOneElseSaysWhy) {
  absl::StatusOr<JobBackend> opened = OpenJobBackend("auto", 1, 0);
  ASSERT_TRUE(opened.ok()) << opened.status();
  if (HaveGpu()) {
    EXPECT_EQ(opened->device, "cuda:0");
    EXPECT_EQ(opened->backend->activation_dtype(), DType::kBF16);
    EXPECT_TRUE(opened->notice.empty());
  } else {
    EXPECT_EQ(opened->device, "cpu");
    EXPECT_NE(opened->notice.find("device: auto runs on the CPU"), std::string::npos) << opened->notice;
    EXPECT_NE(opened->notice.find(ChooseBackend().reason), std::string::npos) << opened->notice;
  }
}

TEST(OpenJobBackendTest, CudaWithoutAGpuIsAClearError) {
  if (HaveGpu()) GTEST_SKIP() << "this machine has a GPU (see CudaTakesTheLocalRanksGpu)";
  const std::string reason = ChooseBackend().reason;
  EXPECT_ERROR_MENTIONS(OpenJobBackend("cuda", 1, 0).status(), "device: cuda was asked for", reason.c_str(),
                        "use device: cpu or auto");
}

TEST(OpenJobBackendTest, CudaTakesTheLocalRanksGpu) {
  const BackendChoice choice = ChooseBackend();
  if (choice.visible_gpus == 0) GTEST_SKIP() << "no GPU: " << choice.reason;
  absl::StatusOr<JobBackend> opened = OpenJobBackend("cuda", 1, choice.visible_gpus - 1);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(opened->device, Device::Cuda(choice.visible_gpus - 1).ToString());
  // One rank more per host than GPUs: refused, naming the counts.
  EXPECT_ERROR_MENTIONS(OpenJobBackend("cuda", 1, choice.visible_gpus).status(), "has no GPU of its own",
                        "one GPU per local rank");
}

TEST(OpenJobBackendTest, UnknownDeviceIsInvalid) {
  EXPECT_ERROR_MENTIONS(OpenJobBackend("tpu", 1, 0).status(), "device must be auto, cpu or cuda", "tpu");
}

}  // namespace
}  // namespace sigmatune::job
