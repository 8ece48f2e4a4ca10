#include "kernels/ops/cpu_context.h"

#include <atomic>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace sigmatune::kernels {
namespace {

TEST(CpuContextTest, ParallelForCoversEveryIndexOnce) {
  for (int threads : {1, 2, 3, 8}) {
    CpuContext ctx(threads);
    EXPECT_EQ(ctx.num_threads(), threads);
    for (int64_t n : {0, 1, 2, 7, 100, 4097}) {
      for (int64_t grain : {1, 3, 64, 10000}) {
        SCOPED_TRACE(::testing::Message() << threads << " threads, n " << n << ", grain " << grain);
        std::vector<std::atomic<int>> hits(n);
        std::atomic<int> ranges{0};
        ctx.ParallelFor(n, grain, [&](int64_t begin, int64_t end) {
          EXPECT_LT(begin, end);
          if (end - begin < grain) EXPECT_EQ(end - begin, n);  // only a lone range is short
          for (int64_t i = begin; i < end; ++i) hits[i]++;
          ranges++;
        });
        for (int64_t i = 0; i < n; ++i) EXPECT_EQ(hits[i].load(), 1) << i;
        EXPECT_LE(ranges.load(), threads);
      }
    }
  }
}

TEST(CpuContextTest, NestedCallsRunSeriallyAndNullRunsInline) {
  CpuContext ctx(2);
  std::atomic<int64_t> sum{0};
  ctx.ParallelFor(4, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      ctx.ParallelFor(10, 1, [&](int64_t b, int64_t e) { sum += (e - b) * (i + 1); });
    }
  });
  EXPECT_EQ(sum.load(), 10 * (1 + 2 + 3 + 4));
  int64_t calls = 0, covered = 0;
  ParallelFor(nullptr, 5, 1, [&](int64_t b, int64_t e) {
    ++calls;
    covered += e - b;
  });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(covered, 5);
  ParallelFor(nullptr, 0, 1, [&](int64_t, int64_t) { ++calls; });
  EXPECT_EQ(calls, 1);
}

TEST(CpuContextTest, ManyCallsInARow) {
  CpuContext ctx(2);
  int64_t total = 0;
  for (int call = 0; call < 2000; ++call) {
    std::atomic<int64_t> sum{0};
    ctx.ParallelFor(64, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) sum += i;
    });
    total += sum.load();
  }
  EXPECT_EQ(total, 2000 * (63 * 64 / 2));
}

TEST(CpuContextTest, WorkspaceIsAlignedAndGrows) {
  CpuContext ctx(1);
  auto* a = static_cast<char*>(ctx.Workspace(100));
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 64, 0u);
  a[99] = 1;
  EXPECT_EQ(ctx.Workspace(50), a);  // big enough already: the same block
  auto* b = static_cast<char*>(ctx.Workspace(1 << 20));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % 64, 0u);
  b[(1 << 20) - 1] = 1;
  const CpuScratch<double> own(nullptr, 10), shared(&ctx, 10);
  own.data()[9] = 1.0;
  EXPECT_EQ(static_cast<void*>(shared.data()), static_cast<void*>(b));
}

}  // namespace
}  // namespace sigmatune::kernels
