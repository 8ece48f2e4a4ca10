// Forward + backward throughput of the LLaMA engine (frozen base weights) on a fixed random batch:
// `sequences` sequences of `length` tokens, packed. On `device` cpu (the default) the fp32 CPU
// backend (OpenBLAS's thread count: OPENBLAS_NUM_THREADS); on cuda GPU 0 through
// job::OpenJobBackend("cuda"): bf16 weights and activations, fp32 accumulation, every step timed
// up to ModelBackend::Synchronize(). Prints one line:
//   sigmatune fwd+bwd: <tokens> tokens in <s> s per step = <tokens/s> tokens/s (median of N steps, loss <l>)
// and on cuda the same line ending in ", cuda:0 bf16, GPU peak <MiB> MiB)" instead of ")": the
// high-water mark of the device's default memory pool, which CudaBackend allocates every tensor
// from (cuBLAS's and the context's workspaces, allocated with cudaMalloc, are not in it).
// Without a usable GPU, cuda prints the reason and exits 1.
// bench/llama_vs_torch.py runs this and transformers on the same model and batch, side by side.
//   bazel run -c opt //bench:llama_bench -- <model.gguf | hf_dir> [sequences=4] [length=128] [steps=5]
//       [device=cpu|cuda]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/base/dtype.h"
#include "kernels/base/rng.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"
#include "worker/job/device.h"
#include "worker/model/llama_loader.h"

namespace {

// The backend's peak device memory in MiB; -1 on the CPU or where it cannot be read.
double GpuPeakMiB(const sigmatune::model::ModelBackend& backend) {
  const absl::StatusOr<int64_t> bytes = backend.PeakDeviceBytes();
  return bytes.ok() ? static_cast<double>(*bytes) / (1024.0 * 1024.0) : -1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sigmatune;
  if (argc < 2 || argc > 6) {
    std::fprintf(stderr, "usage: llama_bench <model.gguf | hf_dir> [sequences] [length] [steps] [cpu|cuda]\n");
    return 2;
  }
  const std::string path = argv[1];
  const int sequences = argc > 2 ? std::atoi(argv[2]) : 4;
  const int length = argc > 3 ? std::atoi(argv[3]) : 128;
  const int steps = argc > 4 ? std::atoi(argv[4]) : 5;
  const std::string device = argc > 5 ? argv[5] : "cpu";
  if (device != "cpu" && device != "cuda") {
    std::fprintf(stderr, "llama_bench: device must be cpu or cuda, got \"%s\"\n", device.c_str());
    return 2;
  }
  std::unique_ptr<model::ModelBackend> owned_backend;
  if (device == "cpu") {
    owned_backend = std::make_unique<model::CpuBackend>();
  } else {
    auto opened = job::OpenJobBackend("cuda", /*num_threads=*/0, /*local_rank=*/0);
    if (!opened.ok()) {
      std::fprintf(stderr, "llama_bench: %s\n", std::string(opened.status().message()).c_str());
      return 1;
    }
    owned_backend = std::move(opened->backend);
  }
  model::ModelBackend& backend = *owned_backend;
  const bool gguf = path.size() > 5 && path.substr(path.size() - 5) == ".gguf";
  auto loaded = gguf ? LoadLlamaFromGguf(path, backend) : LoadLlamaFromHfDirectory(path, backend);
  if (!loaded.ok()) {
    std::fprintf(stderr, "llama_bench: %s\n", std::string(loaded.status().message()).c_str());
    return 1;
  }
  auto llama = model::LlamaModel::Create(loaded->config, loaded->weights, &backend);
  if (!llama.ok()) {
    std::fprintf(stderr, "llama_bench: %s\n", std::string(llama.status().message()).c_str());
    return 1;
  }
  // The same ids as bench/llama_vs_torch.py: Rng(1234).Next() % vocab, sequence by sequence.
  Rng rng(1234);
  std::vector<std::vector<int32_t>> batch_ids(sequences, std::vector<int32_t>(length));
  for (auto& seq : batch_ids) {
    for (int32_t& id : seq) id = static_cast<int32_t>(rng.Next() % loaded->config.vocab_size);
  }
  auto batch = model::PackCausalLmBatch(backend, batch_ids);
  if (!batch.ok()) return 1;
  std::vector<double> times;
  double loss = 0;
  for (int step = 0; step <= steps; ++step) {  // step 0 warms up
    // Nothing of the previous step is still running (a no-op on the CPU).
    if (absl::Status status = backend.Synchronize(); !status.ok()) {
      std::fprintf(stderr, "llama_bench: %s\n", std::string(status.message()).c_str());
      return 1;
    }
    const auto start = std::chrono::steady_clock::now();
    auto result = (*llama)->Forward(*batch);
    if (!result.ok()) {
      std::fprintf(stderr, "llama_bench: %s\n", std::string(result.status().message()).c_str());
      return 1;
    }
    auto grad = (*llama)->Backward();
    if (!grad.ok()) {
      std::fprintf(stderr, "llama_bench: %s\n", std::string(grad.status().message()).c_str());
      return 1;
    }
    // A device backend's ops are asynchronous: the step ends when they have run.
    if (absl::Status status = backend.Synchronize(); !status.ok()) {
      std::fprintf(stderr, "llama_bench: %s\n", std::string(status.message()).c_str());
      return 1;
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (step > 0) times.push_back(s);
    loss = result->loss;
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  const int tokens = sequences * length;
  std::string tail = ")";
  if (device == "cuda") {
    char buf[128];
    std::snprintf(buf, sizeof(buf), ", %s %s, GPU peak %.0f MiB)", backend.device().ToString().c_str(),
                  std::string(DTypeName(backend.activation_dtype())).c_str(), GpuPeakMiB(backend));
    tail = buf;
  }
  std::printf("sigmatune fwd+bwd: %d tokens in %.3f s per step = %.1f tokens/s (median of %d steps, loss %.4f%s\n",
              tokens, median, tokens / median, steps, loss, tail.c_str());
  return 0;
}
