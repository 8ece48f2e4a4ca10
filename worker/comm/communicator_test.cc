// The group of one and the thread group: exact integer sums, every collective's layout, roots,
// point to point, and the failure contract (a timeout names the missing rank; an abort reaches
// every peer; a broken group fails fast).
#include "worker/comm/communicator.h"

#include <atomic>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/comm/local_communicator.h"

namespace sigmatune::comm {
namespace {

TEST(ShardOfTest, SplitsContiguouslyWithTheRemainderFirst) {
  EXPECT_EQ(ShardOf(10, 3, 0).begin, 0);
  EXPECT_EQ(ShardOf(10, 3, 0).end, 4);
  EXPECT_EQ(ShardOf(10, 3, 1).begin, 4);
  EXPECT_EQ(ShardOf(10, 3, 1).end, 7);
  EXPECT_EQ(ShardOf(10, 3, 2).begin, 7);
  EXPECT_EQ(ShardOf(10, 3, 2).end, 10);
  EXPECT_EQ(ShardOf(2, 3, 2).size(), 0);
  for (int parts = 1; parts <= 5; ++parts) {
    int64_t next = 0;
    for (int i = 0; i < parts; ++i) {
      EXPECT_EQ(ShardOf(17, parts, i).begin, next);
      next = ShardOf(17, parts, i).end;
    }
    EXPECT_EQ(next, 17);
  }
}

TEST(SingleProcessCommunicatorTest, CollectivesAreTheIdentity) {
  SingleProcessCommunicator comm;
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.size(), 1);
  EXPECT_TRUE(comm.is_leader());
  std::vector<double> v = {1, 2, 3};
  ASSERT_TRUE(comm.AllReduceSum(absl::MakeSpan(v)).ok());
  EXPECT_EQ(v, (std::vector<double>{1, 2, 3}));
  std::vector<float> in = {1, 2}, out(2);
  ASSERT_TRUE(comm.ReduceScatterSum(absl::MakeConstSpan(in), absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, in);
  std::string bytes = "abc";
  ASSERT_TRUE(comm.Broadcast(0, &bytes).ok());
  EXPECT_EQ(bytes, "abc");
  EXPECT_FALSE(comm.Broadcast(1, &bytes).ok());
  EXPECT_FALSE(comm.ReduceSum(1, absl::MakeSpan(v)).ok());
  EXPECT_FALSE(comm.Send(1, "x").ok());
  std::vector<std::string> all;
  ASSERT_TRUE(comm.Gather(0, "me", &all).ok());
  EXPECT_EQ(all, (std::vector<std::string>{"me"}));
  EXPECT_TRUE(comm.Barrier().ok());
}

// Every collective on 1..4 thread ranks with integer-valued data, so every sum is exact.
TEST(LocalGroupTest, CollectivesGiveExactSums) {
  for (int n = 1; n <= 4; ++n) {
    const std::vector<absl::Status> results = LocalGroup::Run(n, [n](Communicator& c) -> absl::Status {
      const int r = c.rank();
      EXPECT_EQ(c.size(), n);
      std::vector<int64_t> i64 = {r + 1, 1000000000000ll * r};
      if (auto s = c.AllReduceSum(absl::MakeSpan(i64)); !s.ok()) return s;
      EXPECT_EQ(i64[0], n * (n + 1) / 2);
      EXPECT_EQ(i64[1], 1000000000000ll * n * (n - 1) / 2);
      std::vector<double> d = {static_cast<double>(r), 1.0};
      if (auto s = c.AllReduceSum(absl::MakeSpan(d)); !s.ok()) return s;
      EXPECT_EQ(d[0], n * (n - 1) / 2);
      EXPECT_EQ(d[1], n);
      const int root = n - 1;
      std::vector<float> f = {static_cast<float>(r * 2), 3.0f};
      if (auto s = c.ReduceSum(root, absl::MakeSpan(f)); !s.ok()) return s;
      if (r == root) {
        EXPECT_EQ(f[0], n * (n - 1));
        EXPECT_EQ(f[1], 3 * n);
      } else {
        EXPECT_EQ(f[0], r * 2);  // untouched
      }
      // Reduce-scatter of 7 elements: element i sums to n * i + (0 + 1 + ... + n-1).
      std::vector<float> full(7);
      for (int i = 0; i < 7; ++i) full[i] = static_cast<float>(i + r);
      const ShardRange part = ShardOf(7, n, r);
      std::vector<float> mine(part.size());
      if (auto s = c.ReduceScatterSum(absl::MakeConstSpan(full), absl::MakeSpan(mine)); !s.ok()) return s;
      for (int64_t i = 0; i < part.size(); ++i) {
        EXPECT_EQ(mine[i], n * (part.begin + i) + n * (n - 1) / 2) << "rank " << r << " element " << i;
      }
      // All-gather puts every part back in place.
      std::vector<double> gathered(7, -1);
      std::vector<double> my_part;
      for (int64_t i = part.begin; i < part.end; ++i) my_part.push_back(100.0 * i);
      if (auto s = c.AllGather(absl::MakeConstSpan(my_part), absl::MakeSpan(gathered)); !s.ok()) return s;
      for (int i = 0; i < 7; ++i) EXPECT_EQ(gathered[i], 100.0 * i);
      std::string bytes = r == 0 ? std::string(100000, 'x') : "junk";
      if (auto s = c.Broadcast(0, &bytes); !s.ok()) return s;
      EXPECT_EQ(bytes, std::string(100000, 'x'));
      std::vector<std::string> all;
      if (auto s = c.Gather(0, absl::StrCat("rank", r), &all); !s.ok()) return s;
      if (r == 0) {
        if (static_cast<int>(all.size()) != n) return absl::InternalError("gather size");
        for (int q = 0; q < n; ++q) EXPECT_EQ(all[q], absl::StrCat("rank", q));
      }
      return c.Barrier();
    });
    for (int r = 0; r < n; ++r) EXPECT_TRUE(results[r].ok()) << "size " << n << " rank " << r << ": " << results[r];
  }
}

TEST(LocalGroupTest, PointToPointKeepsOrder) {
  const auto results = LocalGroup::Run(2, [](Communicator& c) -> absl::Status {
    if (c.rank() == 0) {
      for (int i = 0; i < 5; ++i) {
        if (auto s = c.Send(1, std::string(i + 1, 'a' + i)); !s.ok()) return s;
      }
      return absl::OkStatus();
    }
    for (int i = 0; i < 5; ++i) {
      std::string got;
      if (auto s = c.Recv(0, &got); !s.ok()) return s;
      EXPECT_EQ(got, std::string(i + 1, 'a' + i));
    }
    return absl::OkStatus();
  });
  EXPECT_TRUE(results[0].ok() && results[1].ok());
}

TEST(LocalGroupTest, ATimeoutNamesTheRankThatNeverCame) {
  CommOptions options;
  options.timeout = absl::Milliseconds(300);
  const auto results = LocalGroup::Run(
      3,
      [](Communicator& c) -> absl::Status {
        if (c.rank() == 2) return absl::OkStatus();  // "hangs": never joins (and does not fail)
        std::vector<double> v = {1};
        absl::Status s = c.AllReduceSum(absl::MakeSpan(v));
        EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
        EXPECT_NE(s.message().find("rank 2 did not join"), absl::string_view::npos) << s;
        // The group is broken from now on.
        absl::Status again = c.Barrier();
        EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition) << again;
        return absl::OkStatus();
      },
      options);
  for (const absl::Status& s : results) EXPECT_TRUE(s.ok()) << s;
}

TEST(LocalGroupTest, ARankThatFailsStopsItsPeersWithItsName) {
  CommOptions options;
  options.timeout = absl::Seconds(60);  // the abort must arrive long before this
  const auto results = LocalGroup::Run(
      3,
      [](Communicator& c) -> absl::Status {
        if (c.rank() == 1) return absl::DataLossError("disk on fire");
        std::string bytes;
        return c.Recv(1, &bytes);
      },
      options);
  EXPECT_EQ(results[1].code(), absl::StatusCode::kDataLoss);
  for (int r : {0, 2}) {
    EXPECT_EQ(results[r].code(), absl::StatusCode::kAborted) << results[r];
    EXPECT_NE(results[r].message().find("rank 1 aborted the group: disk on fire"), absl::string_view::npos)
        << results[r];
  }
}

}  // namespace
}  // namespace sigmatune::comm
