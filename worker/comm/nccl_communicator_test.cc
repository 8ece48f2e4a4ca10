// NcclCommunicator: exact integer sums of the numeric collectives on device buffers (AllReduceSum,
// ReduceSum, ReduceScatterSum and AllGather with uneven parts) and the MPI control plane. Skips without a CUDA device (or in a CPU-only build). Run
// directly it is a group of one (MPI starts as a singleton); under `mpirun -np K` on a host with
// K GPUs the same checks cover K ranks and the padded paths.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"

#if SIGMATUNE_WITH_CUDA
#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/comm/mpi_communicator.h"
#include "worker/comm/nccl_communicator.h"
#endif

namespace sigmatune::comm {
namespace {

#if SIGMATUNE_WITH_CUDA

bool HasCudaDevice() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

// A device copy of a host vector, read back with Host().
template <typename T>
class DeviceVector {
 public:
  explicit DeviceVector(const std::vector<T>& host) : size_(host.size()) {
    if (size_ == 0) return;
    EXPECT_EQ(cudaMalloc(&data_, size_ * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(data_, host.data(), size_ * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceVector() {
    if (data_ != nullptr) cudaFree(data_);
  }
  DeviceVector(const DeviceVector&) = delete;
  DeviceVector& operator=(const DeviceVector&) = delete;

  absl::Span<T> span() { return absl::Span<T>(static_cast<T*>(data_), size_); }
  std::vector<T> Host() const {
    std::vector<T> host(size_);
    if (size_ > 0) {
      EXPECT_EQ(cudaMemcpy(host.data(), data_, size_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return host;
  }

 private:
  size_t size_;
  void* data_ = nullptr;
};

std::unique_ptr<NcclCommunicator> MakeComm() {
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm = NcclCommunicator::Create(CommOptions{absl::Seconds(60)});
  if (!comm.ok()) {
    ADD_FAILURE() << comm.status();
    return nullptr;
  }
  return *std::move(comm);
}

// Element i of rank r's input: integers, so every sum is exact.
double Value(int r, int64_t i) { return static_cast<double>((r + 1) * 1000 + i); }
double SumOfValues(int n, int64_t i) { return static_cast<double>(1000 * n * (n + 1) / 2 + n * i); }

TEST(NcclCommunicatorTest, ShapeAndControlPlane) {
  if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<NcclCommunicator> c = MakeComm();
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->name(), "nccl");
  EXPECT_EQ(c->memory(), MemorySpace::kDevice);
  EXPECT_EQ(c->device(), c->local_rank());
  std::string bytes = c->rank() == 0 ? "from rank 0" : "";
  ASSERT_TRUE(c->Broadcast(0, &bytes).ok());
  EXPECT_EQ(bytes, "from rank 0");
  std::vector<std::string> all;
  ASSERT_TRUE(c->Gather(0, std::to_string(c->rank()), &all).ok());
  if (c->rank() == 0) {
    ASSERT_EQ(all.size(), static_cast<size_t>(c->size()));
    for (int r = 0; r < c->size(); ++r) EXPECT_EQ(all[r], std::to_string(r));
  }
  EXPECT_TRUE(c->Barrier().ok());
}

TEST(NcclCommunicatorTest, AllReduceAndReduceGiveExactSums) {
  if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<NcclCommunicator> c = MakeComm();
  ASSERT_NE(c, nullptr);
  const int n = c->size();
  const int r = c->rank();
  constexpr int64_t kLength = 1000;
  std::vector<float> f(kLength);
  std::vector<double> d(kLength);
  std::vector<int64_t> i64(kLength);
  for (int64_t i = 0; i < kLength; ++i) {
    f[i] = static_cast<float>(Value(r, i));
    d[i] = Value(r, i) * 1e6;
    i64[i] = int64_t{1000000000000} * (r + 1) + i;
  }
  DeviceVector<float> df(f);
  DeviceVector<double> dd(d);
  DeviceVector<int64_t> di(i64);
  ASSERT_TRUE(c->AllReduceSum(df.span()).ok());
  ASSERT_TRUE(c->AllReduceSum(dd.span()).ok());
  ASSERT_TRUE(c->AllReduceSum(di.span()).ok());
  const std::vector<float> fs = df.Host();
  const std::vector<double> ds = dd.Host();
  const std::vector<int64_t> is = di.Host();
  for (int64_t i = 0; i < kLength; ++i) {
    ASSERT_EQ(fs[i], static_cast<float>(SumOfValues(n, i))) << i;
    ASSERT_EQ(ds[i], SumOfValues(n, i) * 1e6) << i;
    ASSERT_EQ(is[i], int64_t{1000000000000} * n * (n + 1) / 2 + n * i) << i;
  }

  // ReduceSum to the last rank: the others keep their input.
  const int root = n - 1;
  DeviceVector<double> reduced(d);
  ASSERT_TRUE(c->ReduceSum(root, reduced.span()).ok());
  const std::vector<double> rs = reduced.Host();
  for (int64_t i = 0; i < kLength; ++i) ASSERT_EQ(rs[i], r == root ? SumOfValues(n, i) * 1e6 : d[i]) << i;
}

TEST(NcclCommunicatorTest, ReduceScatterAndAllGatherKeepTheUnevenSplit) {
  if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<NcclCommunicator> c = MakeComm();
  ASSERT_NE(c, nullptr);
  const int n = c->size();
  const int r = c->rank();
  for (int64_t total : {int64_t{3} * n + 1, int64_t{4} * n, int64_t{n - 1}, int64_t{1001}}) {
    const ShardRange mine = ShardOf(total, n, r);
    std::vector<float> in(total);
    for (int64_t i = 0; i < total; ++i) in[i] = static_cast<float>(Value(r, i));
    DeviceVector<float> din(in);
    DeviceVector<float> dout(std::vector<float>(mine.size(), -1.0f));
    ASSERT_TRUE(c->ReduceScatterSum(absl::Span<const float>(din.span()), dout.span()).ok());
    const std::vector<float> out = dout.Host();
    for (int64_t i = 0; i < mine.size(); ++i) {
      ASSERT_EQ(out[i], static_cast<float>(SumOfValues(n, mine.begin + i))) << "total " << total << " i " << i;
    }

    std::vector<double> part(mine.size());
    for (int64_t i = 0; i < mine.size(); ++i) part[i] = static_cast<double>(10 * (mine.begin + i) + 1);
    DeviceVector<double> dpart(part);
    DeviceVector<double> dall(std::vector<double>(total, -1.0));
    ASSERT_TRUE(c->AllGather(absl::Span<const double>(dpart.span()), dall.span()).ok());
    const std::vector<double> all = dall.Host();
    for (int64_t i = 0; i < total; ++i) ASSERT_EQ(all[i], static_cast<double>(10 * i + 1)) << "total " << total;
  }
}

#else  // !SIGMATUNE_WITH_CUDA

TEST(NcclCommunicatorTest, NeedsACudaBuild) { GTEST_SKIP() << "built without the CUDA toolkit"; }

#endif

}  // namespace
}  // namespace sigmatune::comm

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
#if SIGMATUNE_WITH_CUDA
  // MPI (the control plane) starts only where the tests will run.
  std::unique_ptr<sigmatune::comm::MpiEnvironment> mpi;
  if (sigmatune::comm::HasCudaDevice()) {
    absl::StatusOr<std::unique_ptr<sigmatune::comm::MpiEnvironment>> started =
        sigmatune::comm::MpiEnvironment::Init(&argc, &argv);
    if (!started.ok()) {
      std::fprintf(stderr, "%s\n", started.status().ToString().c_str());
      return 2;
    }
    mpi = *std::move(started);
  }
#endif
  return RUN_ALL_TESTS();
}
