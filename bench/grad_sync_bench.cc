// The data-parallel gradient synchronisation of one training step, on the ranks of an mpirun
// group: ShardedAdamW::Step (reduce-scatter of the adapter gradients, the global norm, this rank's
// AdamW part, all-gather of the parameters) against the raw Open MPI calls that move the same bytes
// (MPI_Reduce_scatter + MPI_Allgather on the flat f32 vector), side by side in one run.
//
// The parameters are the adapters of a LLaMA-shaped model (default: SmolLM2-135M, rank 16 on the
// 7 projections of 30 layers, 4.9 M f32), so the time can be set against the step's compute: it
// bounds what overlapping this communication with the backward pass could save.
//
//   bazel build //bench:grad_sync_bench
//   mpirun -np 2 --oversubscribe --bind-to none bazel-bin/bench/grad_sync_bench [--rank=16] [--steps=10]
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/check.h"
#include "kernels/model/backend.h"
#include "worker/comm/communicator.h"
#include "worker/comm/mpi_communicator.h"
#include "worker/train/sharded_optimizer.h"

ABSL_FLAG(int64_t, rank, 16, "adapter rank r");
ABSL_FLAG(int64_t, layers, 30, "decoder layers");
ABSL_FLAG(int64_t, hidden, 576, "hidden size");
ABSL_FLAG(int64_t, kv_dim, 192, "kv heads x head_dim");
ABSL_FLAG(int64_t, intermediate, 1536, "MLP size");
ABSL_FLAG(int, steps, 10, "timed steps per side (after one warm-up)");

namespace sigmatune {
namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Wall seconds of the slowest rank for each repetition of `body`, median over `steps`.
template <typename F>
double TimeCollective(int steps, F body) {
  std::vector<double> times;
  for (int i = 0; i <= steps; ++i) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto start = Clock::now();
    body();
    double mine = std::chrono::duration<double>(Clock::now() - start).count(), slowest = 0;
    MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (i > 0) times.push_back(slowest);  // the first is a warm-up
  }
  return Median(times);
}

int Main(int argc, char** argv) {
  auto env = comm::MpiEnvironment::Init(&argc, &argv);
  ST_CHECK(env.ok()) << env.status();
  auto comm = comm::MpiCommunicator::Create();
  ST_CHECK(comm.ok()) << comm.status();
  const int64_t r = absl::GetFlag(FLAGS_rank), d = absl::GetFlag(FLAGS_hidden), kv = absl::GetFlag(FLAGS_kv_dim);
  const int64_t inter = absl::GetFlag(FLAGS_intermediate);
  // (out, in) of q, k, v, o, gate, up, down.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{d, d},     {kv, d},    {kv, d},   {d, d},
                                                           {inter, d}, {inter, d}, {d, inter}};
  model::CpuBackend backend(1);
  std::vector<std::unique_ptr<Tensor>> tensors;
  std::vector<train::ShardedAdamW::Param> params;
  uint64_t seed = 1;
  auto add = [&](const std::string& name, const Shape& shape) {
    tensors.push_back(std::make_unique<Tensor>(Tensor::Zeros(shape, DType::kF32)));
    Tensor* value = tensors.back().get();
    tensors.push_back(std::make_unique<Tensor>(Tensor::Empty(shape, DType::kF32)));
    Tensor* grad = tensors.back().get();
    float* g = grad->data<float>();
    for (int64_t i = 0; i < grad->numel(); ++i) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      g[i] = static_cast<float>(static_cast<int64_t>(seed >> 40) % 2001 - 1000) * 1e-6f;
    }
    params.push_back({name, value, grad});
  };
  for (int64_t l = 0; l < absl::GetFlag(FLAGS_layers); ++l) {
    for (size_t k = 0; k < shapes.size(); ++k) {
      add(absl::StrCat(l, ".", k, ".lora_A"), {r, shapes[k].second});
      add(absl::StrCat(l, ".", k, ".lora_B"), {shapes[k].first, r});
    }
  }
  auto optimizer = train::ShardedAdamW::Create(&backend, comm->get(), params, train::AdamWOptions());
  ST_CHECK(optimizer.ok()) << optimizer.status();
  const int64_t total = (*optimizer)->total();
  const int size = (*comm)->size();
  const int steps = absl::GetFlag(FLAGS_steps);

  const double ours = TimeCollective(steps, [&] {
    auto stats = (*optimizer)->Step(1e-4, 1.0);
    ST_CHECK(stats.ok()) << stats.status();
  });

  // The anchor: the same bytes through MPI_Reduce_scatter + MPI_Allgatherv (uneven parts as ShardOf).
  std::vector<int> counts(size), displs(size);
  for (int p = 0; p < size; ++p) {
    const comm::ShardRange s = comm::ShardOf(total, size, p);
    counts[p] = static_cast<int>(s.size());
    displs[p] = static_cast<int>(s.begin);
  }
  std::vector<float> flat(total, 1e-3f), part(counts[(*comm)->rank()]), gathered(total);
  const double raw = TimeCollective(steps, [&] {
    MPI_Reduce_scatter(flat.data(), part.data(), counts.data(), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allgatherv(part.data(), counts[(*comm)->rank()], MPI_FLOAT, gathered.data(), counts.data(), displs.data(),
                   MPI_FLOAT, MPI_COMM_WORLD);
  });
  if ((*comm)->is_leader()) {
    std::printf("grad_sync_bench: %d ranks, %lld f32 adapter parameters (%.1f MiB), median of %d steps\n", size,
                static_cast<long long>(total), total * 4.0 / (1 << 20), steps);
    std::printf("  sigmatune ShardedAdamW::Step (sync + norm + AdamW part + gather): %8.2f ms\n", ours * 1e3);
    std::printf("  raw MPI_Reduce_scatter + MPI_Allgatherv of the same vector:    %8.2f ms\n", raw * 1e3);
    std::printf("  ratio ours / raw: %.2f\n", ours / raw);
  }
  return 0;
}

}  // namespace
}  // namespace sigmatune

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return sigmatune::Main(argc, argv);
}
