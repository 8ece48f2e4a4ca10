// MpiCommunicator under mpirun (mpi_communicator_test.sh runs it on 1, 2 and 3 ranks): exact
// integer sums for every collective, the chunked paths, point-to-point order, the group's shape,
// and the failure contract (a timeout breaks the communicator; later calls fail fast).
// Every rank runs the same tests in the same order. Two DISABLED_ tests are modes the script
// selects with --gtest_also_run_disabled_tests: a rank that dies (SIGKILL) or calls Abort.
#include "worker/comm/mpi_communicator.h"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace sigmatune::comm {
namespace {

// Long enough never to fire in a healthy run, short enough that a desynchronised test fails
// instead of hanging.
constexpr absl::Duration kTestTimeout = absl::Seconds(30);

std::unique_ptr<MpiCommunicator> MakeComm(absl::Duration timeout = kTestTimeout) {
  CommOptions options;
  options.timeout = timeout;
  absl::StatusOr<std::unique_ptr<MpiCommunicator>> comm = MpiCommunicator::Create(options);
  if (!comm.ok()) {
    ADD_FAILURE() << comm.status();
    return nullptr;
  }
  return *std::move(comm);
}

// Element i of rank r's input in the sum tests: integers, so every sum is exact.
double Value(int r, int64_t i) { return static_cast<double>((r + 1) * 1000 + i); }
// Sum over ranks of Value(r, i).
double SumOfValues(int n, int64_t i) { return static_cast<double>(1000 * n * (n + 1) / 2 + n * i); }

// Runs every collective with integer data; `chunk_bytes` > 0 forces the chunked paths.
void CheckCollectives(MpiCommunicator& c, int64_t chunk_bytes, size_t broadcast_bytes) {
  if (chunk_bytes > 0) c.SetMaxChunkBytesForTesting(chunk_bytes);
  const int n = c.size();
  const int r = c.rank();

  std::vector<int64_t> i64 = {r + 1, int64_t{1000000000000} * r, -7};
  ASSERT_TRUE(c.AllReduceSum(absl::MakeSpan(i64)).ok());
  EXPECT_EQ(i64, (std::vector<int64_t>{n * (n + 1) / 2, int64_t{1000000000000} * n * (n - 1) / 2, -7 * n}));

  for (int64_t length : {0, 1, 7, 100}) {
    std::vector<float> f(length);
    std::vector<double> d(length);
    for (int64_t i = 0; i < length; ++i) f[i] = static_cast<float>(Value(r, i));
    for (int64_t i = 0; i < length; ++i) d[i] = Value(r, i) * 1e6;
    ASSERT_TRUE(c.AllReduceSum(absl::MakeSpan(f)).ok());
    ASSERT_TRUE(c.AllReduceSum(absl::MakeSpan(d)).ok());
    for (int64_t i = 0; i < length; ++i) {
      EXPECT_EQ(f[i], static_cast<float>(SumOfValues(n, i))) << "f32 element " << i;
      EXPECT_EQ(d[i], SumOfValues(n, i) * 1e6) << "f64 element " << i;
    }
  }

  // ReduceSum to the last rank (non-zero when n > 1): the others keep their input.
  const int root = n - 1;
  std::vector<float> f(9);
  std::vector<double> d(9);
  for (int64_t i = 0; i < 9; ++i) f[i] = static_cast<float>(Value(r, i));
  for (int64_t i = 0; i < 9; ++i) d[i] = Value(r, i);
  ASSERT_TRUE(c.ReduceSum(root, absl::MakeSpan(f)).ok());
  ASSERT_TRUE(c.ReduceSum(root, absl::MakeSpan(d)).ok());
  for (int64_t i = 0; i < 9; ++i) {
    const double expected = r == root ? SumOfValues(n, i) : Value(r, i);
    EXPECT_EQ(f[i], static_cast<float>(expected)) << "ReduceSum f32 element " << i << " on rank " << r;
    EXPECT_EQ(d[i], expected) << "ReduceSum f64 element " << i << " on rank " << r;
  }

  // Uneven parts: 3n + 1 elements, and fewer elements than ranks.
  for (int64_t total : {int64_t{3} * n + 1, int64_t{n - 1}, int64_t{0}}) {
    const ShardRange mine = ShardOf(total, n, r);
    std::vector<float> fin(total);
    std::vector<double> din(total);
    for (int64_t i = 0; i < total; ++i) fin[i] = static_cast<float>(Value(r, i));
    for (int64_t i = 0; i < total; ++i) din[i] = Value(r, i);
    std::vector<float> fout(mine.size(), -1.0f);
    std::vector<double> dout(mine.size(), -1.0);
    ASSERT_TRUE(c.ReduceScatterSum(absl::MakeConstSpan(fin), absl::MakeSpan(fout)).ok());
    ASSERT_TRUE(c.ReduceScatterSum(absl::MakeConstSpan(din), absl::MakeSpan(dout)).ok());
    for (int64_t i = 0; i < mine.size(); ++i) {
      EXPECT_EQ(fout[i], static_cast<float>(SumOfValues(n, mine.begin + i))) << "total " << total << " i " << i;
      EXPECT_EQ(dout[i], SumOfValues(n, mine.begin + i)) << "total " << total << " i " << i;
    }

    // AllGather: element i of the whole vector is 10 * i + 1, each rank holding its part.
    std::vector<float> fpart(mine.size());
    std::vector<double> dpart(mine.size());
    for (int64_t i = 0; i < mine.size(); ++i) fpart[i] = static_cast<float>(10 * (mine.begin + i) + 1);
    for (int64_t i = 0; i < mine.size(); ++i) dpart[i] = static_cast<double>(10 * (mine.begin + i) + 1);
    std::vector<float> fall(total, -1.0f);
    std::vector<double> dall(total, -1.0);
    ASSERT_TRUE(c.AllGather(absl::MakeConstSpan(fpart), absl::MakeSpan(fall)).ok());
    ASSERT_TRUE(c.AllGather(absl::MakeConstSpan(dpart), absl::MakeSpan(dall)).ok());
    for (int64_t i = 0; i < total; ++i) {
      EXPECT_EQ(fall[i], static_cast<float>(10 * i + 1)) << "total " << total << " i " << i;
      EXPECT_EQ(dall[i], static_cast<double>(10 * i + 1)) << "total " << total << " i " << i;
    }
    // In place: the input already sits at this rank's place in the output.
    std::vector<double> inplace(total, -1.0);
    for (int64_t i = 0; i < mine.size(); ++i) inplace[mine.begin + i] = dpart[i];
    ASSERT_TRUE(c.AllGather(absl::MakeConstSpan(inplace.data() + mine.begin, mine.size()), absl::MakeSpan(inplace))
                    .ok());
    EXPECT_EQ(inplace, dall);
  }

  // Broadcast from the last rank, then of nothing from rank 0.
  std::string big;
  if (r == root) {
    big.resize(broadcast_bytes);
    for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 131 + 7) % 251);
  } else {
    big = "stale";
  }
  ASSERT_TRUE(c.Broadcast(root, &big).ok());
  ASSERT_EQ(big.size(), broadcast_bytes);
  bool same = true;
  for (size_t i = 0; i < big.size(); ++i) same = same && big[i] == static_cast<char>((i * 131 + 7) % 251);
  EXPECT_TRUE(same) << "the broadcast bytes differ from root's";
  std::string empty = r == 0 ? "" : "stale";
  ASSERT_TRUE(c.Broadcast(0, &empty).ok());
  EXPECT_EQ(empty, "");

  // Gather (built on Send/Recv) to the last rank: rank i sends i + 1 copies of its name.
  std::string mine;
  for (int i = 0; i <= r; ++i) absl::StrAppend(&mine, "rank", r, ";");
  std::vector<std::string> all = {"untouched"};
  ASSERT_TRUE(c.Gather(root, mine, &all).ok());
  if (r == root) {
    ASSERT_EQ(all.size(), static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      std::string expected;
      for (int j = 0; j <= i; ++j) absl::StrAppend(&expected, "rank", i, ";");
      EXPECT_EQ(all[i], expected);
    }
  } else {
    EXPECT_EQ(all, std::vector<std::string>{"untouched"});
  }
  EXPECT_TRUE(c.Barrier().ok());
}

TEST(MpiCommunicatorTest, ShapeComesFromMpi) {
  std::unique_ptr<MpiCommunicator> c = MakeComm();
  ASSERT_NE(c, nullptr);
  int world_rank = -1;
  int world_size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  EXPECT_EQ(c->rank(), world_rank);
  EXPECT_EQ(c->size(), world_size);
  EXPECT_EQ(c->name(), "mpi");
  EXPECT_EQ(c->memory(), MemorySpace::kHost);
  EXPECT_EQ(c->is_leader(), world_rank == 0);
  EXPECT_FALSE(c->hostname().empty());
  EXPECT_GE(c->local_rank(), 0);
  EXPECT_LT(c->local_rank(), c->local_size());
  EXPECT_LE(c->local_size(), c->size());

  // Every rank learns every rank's host; local rank and size must agree with them.
  std::vector<std::string> hosts;
  ASSERT_TRUE(c->Gather(0, c->hostname(), &hosts).ok());
  std::string joined = absl::StrJoin(hosts, "\n");
  ASSERT_TRUE(c->Broadcast(0, &joined).ok());
  hosts = absl::StrSplit(joined, '\n');
  ASSERT_EQ(hosts.size(), static_cast<size_t>(c->size()));
  int same_host = 0;
  int same_host_before_me = 0;
  for (int r = 0; r < c->size(); ++r) {
    if (hosts[r] != c->hostname()) continue;
    ++same_host;
    if (r < c->rank()) ++same_host_before_me;
  }
  EXPECT_EQ(c->local_size(), same_host);
  EXPECT_EQ(c->local_rank(), same_host_before_me);
  if (same_host == c->size()) {  // one host, as under the test script
    EXPECT_EQ(c->local_size(), c->size());
    EXPECT_EQ(c->local_rank(), c->rank());
  }
  std::vector<int64_t> leaders = {c->local_rank() == 0 ? 1 : 0};
  ASSERT_TRUE(c->AllReduceSum(absl::MakeSpan(leaders)).ok());
  const std::set<std::string> distinct(hosts.begin(), hosts.end());
  EXPECT_EQ(leaders[0], static_cast<int64_t>(distinct.size())) << "one local leader per host";
}

TEST(MpiCommunicatorTest, StartedByTheLauncher) {
  // The script always runs this binary under mpirun.
  EXPECT_TRUE(StartedByMpiLauncher());
}

TEST(MpiCommunicatorTest, EnvironmentCannotStartTwice) {
  int argc = 0;
  char** argv = nullptr;
  absl::StatusOr<std::unique_ptr<MpiEnvironment>> again = MpiEnvironment::Init(&argc, &argv);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(again.status().message(), "already initialised")) << again.status();
}

TEST(MpiCommunicatorTest, CollectivesGiveExactSums) {
  std::unique_ptr<MpiCommunicator> c = MakeComm();
  ASSERT_NE(c, nullptr);
  CheckCollectives(*c, 0, 5 * 1000 * 1000);
}

// Tiny chunks: every operation runs as several MPI operations, and ReduceScatterSum/AllGather
// take the per-rank paths used above INT_MAX elements.
TEST(MpiCommunicatorTest, ChunkedCollectivesGiveExactSums) {
  for (int64_t chunk_bytes : {1, 8, 24}) {
    std::unique_ptr<MpiCommunicator> c = MakeComm();
    ASSERT_NE(c, nullptr);
    CheckCollectives(*c, chunk_bytes, 1001);
  }
}

TEST(MpiCommunicatorTest, PointToPointKeepsOrder) {
  std::unique_ptr<MpiCommunicator> c = MakeComm();
  ASSERT_NE(c, nullptr);
  if (c->size() < 2) GTEST_SKIP() << "needs 2 ranks";
  c->SetMaxChunkBytesForTesting(1 << 16);  // the 1 MB message travels in 16 chunks
  const std::vector<std::string> messages = {"", "first", std::string(1 << 20, 'x'), "last"};
  // Each rank sends every message to rank 0 and gets them back, in order; no two ranks send
  // large messages to each other before receiving.
  if (c->rank() == 0) {
    for (int source = 1; source < c->size(); ++source) {
      for (const std::string& expected : messages) {
        std::string got = "stale";
        ASSERT_TRUE(c->Recv(source, &got).ok());
        EXPECT_EQ(got, absl::StrCat(expected, source)) << "from rank " << source;
      }
    }
    for (int dest = 1; dest < c->size(); ++dest) {
      for (const std::string& message : messages) ASSERT_TRUE(c->Send(dest, message).ok());
    }
  } else {
    for (const std::string& message : messages) ASSERT_TRUE(c->Send(0, absl::StrCat(message, c->rank())).ok());
    for (const std::string& expected : messages) {
      std::string got;
      ASSERT_TRUE(c->Recv(0, &got).ok());
      EXPECT_EQ(got, expected);
    }
  }
  EXPECT_TRUE(c->Barrier().ok());
}

// The last rank sleeps 3 s before joining a Barrier whose timeout is 1 s: the others fail with
// DeadlineExceeded after about 1 s, and their next call fails at once.
TEST(MpiCommunicatorTest, TimeoutBreaksTheCommunicator) {
  std::unique_ptr<MpiCommunicator> c = MakeComm(absl::Seconds(1));
  ASSERT_NE(c, nullptr);
  if (c->size() < 2) GTEST_SKIP() << "needs 2 ranks";
  const int sleeper = c->size() - 1;
  if (c->rank() == sleeper) {
    absl::SleepFor(absl::Seconds(3));
    // The others' barriers are posted, so this one completes.
    EXPECT_TRUE(c->Barrier().ok());
  } else {
    const absl::Time start = absl::Now();
    const absl::Status first = c->Barrier();
    const absl::Duration took = absl::Now() - start;
    EXPECT_EQ(first.code(), absl::StatusCode::kDeadlineExceeded) << first;
    EXPECT_EQ(first.message(), absl::StrCat("rank ", c->rank(), " (host ", c->hostname(),
                                            "): Barrier (collective #1) did not complete within 1s; a peer "
                                            "is dead or stuck"));
    EXPECT_GE(took, absl::Seconds(1));
    EXPECT_LT(took, absl::Milliseconds(1800));

    const absl::Time again = absl::Now();
    std::vector<int64_t> v = {1};
    const absl::Status second = c->AllReduceSum(absl::MakeSpan(v));
    EXPECT_LT(absl::Now() - again, absl::Milliseconds(200));
    EXPECT_EQ(second.code(), absl::StatusCode::kFailedPrecondition) << second;
    EXPECT_TRUE(absl::StrContains(second.message(), first.message())) << second;
    std::string bytes;
    EXPECT_EQ(c->Broadcast(0, &bytes).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(v, std::vector<int64_t>{1});
  }
  // A new communicator over the same processes works (it also waits for the sleeper).
  std::unique_ptr<MpiCommunicator> fresh = MakeComm();
  ASSERT_NE(fresh, nullptr);
  std::vector<int64_t> one = {1};
  ASSERT_TRUE(fresh->AllReduceSum(absl::MakeSpan(one)).ok());
  EXPECT_EQ(one[0], fresh->size());
}

// Rank 0 waits for a message rank 1 never sends: DeadlineExceeded naming the peer, then broken.
TEST(MpiCommunicatorTest, RecvTimesOut) {
  std::unique_ptr<MpiCommunicator> c = MakeComm(absl::Milliseconds(500));
  ASSERT_NE(c, nullptr);
  if (c->size() < 2) GTEST_SKIP() << "needs 2 ranks";
  if (c->rank() == 0) {
    std::string bytes = "kept";
    const absl::Status status = c->Recv(1, &bytes);
    EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
    EXPECT_TRUE(absl::StrContains(status.message(), "Recv from rank 1 (point-to-point #1) did not complete within "
                                                    "500ms; a peer is dead or stuck"))
        << status;
    EXPECT_EQ(bytes, "kept");
    EXPECT_EQ(c->Send(1, "late").code(), absl::StatusCode::kFailedPrecondition);
  }
  std::unique_ptr<MpiCommunicator> fresh = MakeComm();
  ASSERT_NE(fresh, nullptr);
  EXPECT_TRUE(fresh->Barrier().ok());
}

// Modes for mpi_communicator_test.sh (run with --gtest_also_run_disabled_tests and a filter):
// rank 1 dies of SIGKILL / calls Abort after a first Barrier; the others wait in a second
// Barrier until mpirun ends them. Reaching the end of either test is a failure.
TEST(MpiCommunicatorDeathTest, DISABLED_KilledRank) {
  std::unique_ptr<MpiCommunicator> c = MakeComm(absl::Seconds(60));
  ASSERT_NE(c, nullptr);
  ASSERT_GE(c->size(), 2);
  ASSERT_TRUE(c->Barrier().ok());
  if (c->rank() == 1) std::raise(SIGKILL);
  const absl::Status status = c->Barrier();
  ADD_FAILURE() << "rank " << c->rank() << " outlived its killed peer: " << status;
}

TEST(MpiCommunicatorDeathTest, DISABLED_AbortingRank) {
  std::unique_ptr<MpiCommunicator> c = MakeComm(absl::Seconds(60));
  ASSERT_NE(c, nullptr);
  ASSERT_GE(c->size(), 2);
  ASSERT_TRUE(c->Barrier().ok());
  if (c->rank() == 1) c->Abort(absl::InternalError("deliberate test abort"));
  const absl::Status status = c->Barrier();
  ADD_FAILURE() << "rank " << c->rank() << " outlived its aborting peer: " << status;
}

}  // namespace
}  // namespace sigmatune::comm

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  absl::StatusOr<std::unique_ptr<sigmatune::comm::MpiEnvironment>> mpi =
      sigmatune::comm::MpiEnvironment::Init(&argc, &argv);
  if (!mpi.ok()) {
    std::fprintf(stderr, "%s\n", mpi.status().ToString().c_str());
    return 2;
  }
  return RUN_ALL_TESTS();
}
