// Forward + backward throughput of the LLaMA engine on the CPU (fp32, frozen base weights), on a
// fixed random batch: `sequences` sequences of `length` tokens, packed. Prints one line:
//   sigmatune fwd+bwd: <tokens> tokens in <s> s per step = <tokens/s> tokens/s (median of N steps)
// bench/llama_vs_torch.py runs this and transformers on the same model and batch, side by side.
//   bazel run -c opt //bench:llama_bench -- <model.gguf | hf_dir> [sequences=4] [length=128] [steps=5]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/base/rng.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"
#include "worker/model/llama_loader.h"

int main(int argc, char** argv) {
  using namespace sigmatune;
  if (argc < 2) {
    std::fprintf(stderr, "usage: llama_bench <model.gguf | hf_dir> [sequences] [length] [steps]\n");
    return 2;
  }
  const std::string path = argv[1];
  const int sequences = argc > 2 ? std::atoi(argv[2]) : 4;
  const int length = argc > 3 ? std::atoi(argv[3]) : 128;
  const int steps = argc > 4 ? std::atoi(argv[4]) : 5;
  model::CpuBackend backend;
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
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (step > 0) times.push_back(s);
    loss = result->loss;
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  const int tokens = sequences * length;
  std::printf("sigmatune fwd+bwd: %d tokens in %.3f s per step = %.1f tokens/s (median of %d steps, loss %.4f)\n",
              tokens, median, tokens / median, steps, loss);
  return 0;
}
