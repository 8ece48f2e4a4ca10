// The single-process group: identity collectives, a bad root reported.
#include "worker/comm/communicator.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sigmatune::comm {
namespace {

TEST(SingleProcessCommunicatorTest, CollectivesAreTheIdentity) {
  SingleProcessCommunicator comm;
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.size(), 1);
  EXPECT_TRUE(comm.is_leader());
  std::vector<double> v = {1, 2, 3};
  ASSERT_TRUE(comm.AllReduceSum(absl::MakeSpan(v)).ok());
  EXPECT_EQ(v, (std::vector<double>{1, 2, 3}));
  std::string bytes = "abc";
  ASSERT_TRUE(comm.Broadcast(0, &bytes).ok());
  EXPECT_EQ(bytes, "abc");
  EXPECT_FALSE(comm.Broadcast(1, &bytes).ok());
  EXPECT_TRUE(comm.Barrier().ok());
}

}  // namespace
}  // namespace sigmatune::comm
