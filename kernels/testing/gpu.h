// GPU presence for tests: the CUDA half of an op test skips cleanly (GTEST_SKIP) when this
// binary was built without CUDA or the machine has no usable device.
//
//   TEST(MatmulCudaTest, MatchesCpu) {
//     ST_GPU_CONTEXT_OR_SKIP(ctx);   // declares std::unique_ptr<GpuContext> ctx
//     ...
//   }
#ifndef SIGMATUNE_KERNELS_TESTING_GPU_H_
#define SIGMATUNE_KERNELS_TESTING_GPU_H_

#include <memory>
#include <string>

#include "gtest/gtest.h"

#if SIGMATUNE_WITH_CUDA
#include "kernels/base/gpu_context.h"
#endif

namespace sigmatune::testing {

// True when a CUDA device can be used by this binary. `why_not` gets the reason otherwise.
bool GpuAvailable(std::string* why_not);

}  // namespace sigmatune::testing

#if SIGMATUNE_WITH_CUDA
#define ST_GPU_CONTEXT_OR_SKIP(ctx)                                                 \
  std::unique_ptr<::sigmatune::GpuContext> ctx;                                     \
  do {                                                                              \
    std::string st_why_not_;                                                        \
    if (!::sigmatune::testing::GpuAvailable(&st_why_not_)) GTEST_SKIP() << st_why_not_; \
    auto st_ctx_ = ::sigmatune::GpuContext::Create(0);                              \
    ASSERT_TRUE(st_ctx_.ok()) << st_ctx_.status();                                  \
    ctx = std::move(st_ctx_).value();                                               \
  } while (0)
#endif

#endif  // SIGMATUNE_KERNELS_TESTING_GPU_H_
