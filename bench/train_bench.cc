// LoRA training throughput of the LLaMA engine: one training step = forward + loss + backward +
// AdamW step with gradient clipping + zero grad, on a fixed random batch of `sequences` sequences
// of `length` tokens, packed. LoRA on all 7 projections of every layer (peft::InitializeAdapter
// kLora: A Kaiming-uniform, B = 0; dropout 0), train::AdamW (weight decay 0, max_grad_norm 1.0).
// Step 0 warms up and is not timed.
//   device cpu (the default): the fp32 CPU backend with `threads` threads (and OpenBLAS's).
//   device cuda: GPU 0 through job::OpenJobBackend("cuda"): bf16 base weights and activations
//     with f32 LoRA parameters, gradients and AdamW state (as PEFT on a bf16 model); A is drawn on
//     the host exactly as on the CPU and uploaded in f32. Every phase is timed up to
//     ModelBackend::Synchronize() (the GPU's ops are asynchronous); `threads` is not used. Without
//     a usable GPU it prints the reason and exits 1.
// Prints, parseably:
//   sigmatune train: <tokens/s> tok/s, <s>/step, peak RSS <MiB> MiB (median of N steps, ...)
//   sigmatune phases (median s): forward <s> backward <s> optimizer <s> zero_grad <s>
//   sigmatune adapters (median s, inside forward/backward): forward <s> backward <s>
//   sigmatune loss: first <loss> last <loss>
// On cuda the first line reads "..., peak RSS <MiB> MiB, GPU peak <MiB> MiB (median of ...": the
// high-water mark of the device's default memory pool, which CudaBackend allocates every tensor
// from (cuBLAS's and the context's workspaces, allocated with cudaMalloc, are not in it); and the
// adapters line says the adapters are not timed apart (timing them would need a synchronisation
// per call, 420 per step, which would change what is measured).
// bench/train_vs_peft.py runs this and PyTorch + PEFT on the same model and batch shape, side by
// side, in separate processes.
//   bazel build -c opt //bench:train_bench
//   bazel-bin/bench/train_bench <model.gguf | hf_dir> [sequences=4] [length=128] [steps=20] [threads=2]
//       [lr=1e-4] [rank=16] [alpha=32] [device=cpu|cuda]
#include <cblas.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/base/dtype.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"
#include "kernels/peft/adapter.h"
#include "kernels/peft/init.h"
#include "kernels/peft/method.h"
#include "worker/job/device.h"
#include "worker/model/llama_loader.h"
#include "worker/train/optimizer.h"

namespace sigmatune {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

double PeakRssMiB() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;  // Linux: KiB
}

// The backend's peak device memory in MiB; -1 on the CPU or where it cannot be read.
double GpuPeakMiB(const model::ModelBackend& backend) {
  const absl::StatusOr<int64_t> bytes = backend.PeakDeviceBytes();
  return bytes.ok() ? static_cast<double>(*bytes) / (1024.0 * 1024.0) : -1;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Times the adapter's own work inside the model's forward and backward (the rest is the frozen
// base); the timing is two clock reads per call, 420 calls per step.
class TimedAdapter final : public model::LinearAdapter {
 public:
  TimedAdapter(model::LinearAdapter* inner, double* forward_s, double* backward_s)
      : inner_(inner), forward_s_(forward_s), backward_s_(backward_s) {}
  absl::Status Forward(const Tensor& x, Tensor* y) override {
    const auto start = Clock::now();
    absl::Status status = inner_->Forward(x, y);
    *forward_s_ += Seconds(start);
    return status;
  }
  absl::Status Backward(const Tensor& x, const Tensor& dy, Tensor* dx) override {
    const auto start = Clock::now();
    absl::Status status = inner_->Backward(x, dy, dx);
    *backward_s_ += Seconds(start);
    return status;
  }

 private:
  model::LinearAdapter* inner_;
  double* forward_s_;
  double* backward_s_;
};

struct Options {
  std::string model_path;
  int sequences = 4;
  int length = 128;
  int steps = 20;
  int threads = 2;
  double lr = 1e-4;
  int64_t rank = 16;
  double alpha = 32.0;
  std::string device = "cpu";  // or "cuda"
};

// The LoRA init of one linear on a device backend whose weights are in a half-precision dtype:
// the init runs on the host in f32 (kLora draws A from Rng(seed) and sets B = 0 whatever W holds,
// so a zero W of the same shape gives the CPU run's A and B bit for bit) and A and B are uploaded
// as f32, the adapters' parameter dtype on a bf16 model.
absl::StatusOr<peft::AdapterInit> HostLoraInit(model::ModelBackend& backend, model::CpuBackend& host,
                                               const peft::AdapterOptions& options, const std::string& name,
                                               const Shape& w_shape, uint64_t seed) {
  const Tensor w = Tensor::Zeros(w_shape, DType::kF32);
  ST_ASSIGN_OR_RETURN(peft::AdapterInit init,
                      peft::InitializeAdapter(host, options, name, w, /*covariance=*/nullptr, seed));
  peft::AdapterInit out;
  ST_ASSIGN_OR_RETURN(out.a, backend.Upload(init.a));
  ST_ASSIGN_OR_RETURN(out.b, backend.Upload(init.b));
  out.scale = init.scale;
  return out;
}

absl::Status Run(const Options& opt) {
  const bool cuda = opt.device == "cuda";
  std::unique_ptr<model::ModelBackend> owned_backend;
  if (!cuda) {
    openblas_set_num_threads(opt.threads);
    owned_backend = std::make_unique<model::CpuBackend>(opt.threads);
  } else {
    ST_ASSIGN_OR_RETURN(job::JobBackend opened, job::OpenJobBackend("cuda", /*num_threads=*/0, /*local_rank=*/0));
    owned_backend = std::move(opened.backend);
  }
  model::ModelBackend& backend = *owned_backend;
  auto start = Clock::now();
  // The host backend of the device run's adapter init (HostLoraInit).
  std::unique_ptr<model::CpuBackend> host_backend = cuda ? std::make_unique<model::CpuBackend>(1) : nullptr;
  const std::string& path = opt.model_path;
  const bool gguf = path.size() > 5 && path.substr(path.size() - 5) == ".gguf";
  ST_ASSIGN_OR_RETURN(LoadedLlama loaded,
                      gguf ? LoadLlamaFromGguf(path, backend) : LoadLlamaFromHfDirectory(path, backend));
  ST_ASSIGN_OR_RETURN(auto llama, model::LlamaModel::Create(loaded.config, loaded.weights, &backend));

  // One LoRA adapter per linear, as PEFT's LoraConfig(r, lora_alpha, lora_dropout=0) on all 7 targets.
  peft::AdapterOptions adapter_options;
  adapter_options.method = peft::Method::kLora;
  adapter_options.rank = opt.rank;
  adapter_options.alpha = opt.alpha;
  adapter_options.dropout = 0.0;
  std::vector<std::unique_ptr<peft::LowRankAdapter>> adapters;
  std::vector<std::unique_ptr<TimedAdapter>> timed;
  double adapter_forward_s = 0, adapter_backward_s = 0;
  std::vector<train::AdamW::Param> params;
  int64_t trainable = 0;
  for (int64_t layer = 0; layer < loaded.config.num_layers; ++layer) {
    for (model::LinearKind kind : model::kAllLinears) {
      const std::string name = model::LinearName(layer, kind);
      const Tensor& w = loaded.weights.layers[layer].linear(kind);
      const uint64_t seed = static_cast<uint64_t>(adapters.size());
      peft::AdapterInit init;
      if (!cuda) {
        ST_ASSIGN_OR_RETURN(init, peft::InitializeAdapter(backend, adapter_options, name, w, /*covariance=*/nullptr,
                                                          seed));
      } else {
        ST_ASSIGN_OR_RETURN(init, HostLoraInit(backend, *host_backend, adapter_options, name, w.shape(), seed));
      }
      ST_ASSIGN_OR_RETURN(auto adapter, peft::LowRankAdapter::Create(&backend, init.a, init.b, Tensor(), init.scale,
                                                                     adapter_options.dropout));
      if (!cuda) {
        timed.push_back(std::make_unique<TimedAdapter>(adapter.get(), &adapter_forward_s, &adapter_backward_s));
        llama->SetAdapter(layer, kind, timed.back().get());
      } else {
        llama->SetAdapter(layer, kind, adapter.get());
      }
      params.push_back({name + ".lora_A", &adapter->a(), &adapter->grad_a()});
      params.push_back({name + ".lora_B", &adapter->b(), &adapter->grad_b()});
      trainable += adapter->a().numel() + adapter->b().numel();
      adapters.push_back(std::move(adapter));
    }
  }
  train::AdamWOptions adamw;
  adamw.lr = opt.lr;
  adamw.weight_decay = 0.0;
  adamw.max_grad_norm = 1.0;
  ST_ASSIGN_OR_RETURN(auto optimizer, train::AdamW::Create(&backend, params, adamw));
  ST_RETURN_IF_ERROR(backend.Synchronize());
  if (!cuda) {
    std::printf("sigmatune setup: %.3f s (not counted; %zu adapters, %lld trainable parameters, %d threads, "
                "peak RSS so far %.0f MiB)\n",
                Seconds(start), adapters.size(), static_cast<long long>(trainable), opt.threads, PeakRssMiB());
  } else {
    std::printf("sigmatune setup: %.3f s (not counted; %zu adapters, %lld trainable parameters, %s %s with %s "
                "adapters, peak RSS so far %.0f MiB, GPU peak so far %.0f MiB)\n",
                Seconds(start), adapters.size(), static_cast<long long>(trainable),
                backend.device().ToString().c_str(), std::string(DTypeName(backend.activation_dtype())).c_str(),
                adapters.empty() ? "no" : std::string(DTypeName(adapters.front()->a().dtype())).c_str(), PeakRssMiB(), GpuPeakMiB(backend));
  }

  // The same ids as bench/llama_bench.cc: Rng(1234).Next() % vocab, sequence by sequence.
  Rng rng(1234);
  std::vector<std::vector<int32_t>> batch_ids(opt.sequences, std::vector<int32_t>(opt.length));
  for (auto& seq : batch_ids) {
    for (int32_t& id : seq) id = static_cast<int32_t>(rng.Next() % loaded.config.vocab_size);
  }
  ST_ASSIGN_OR_RETURN(model::Batch batch, model::PackCausalLmBatch(backend, batch_ids));

  std::vector<double> step_s, forward_s, backward_s, optimizer_s, zero_s, adapter_fwd_s, adapter_bwd_s;
  double first_loss = 0, last_loss = 0, last_norm = 0;
  for (int step = 0; step <= opt.steps; ++step) {  // step 0 warms up
    adapter_forward_s = adapter_backward_s = 0;
    // Every phase ends when its ops have run: Synchronize() waits for a device backend's
    // asynchronous ops (and returns at once on the CPU).
    const auto step_start = Clock::now();
    auto phase = step_start;
    ST_ASSIGN_OR_RETURN(model::ForwardResult result, llama->Forward(batch));
    ST_RETURN_IF_ERROR(backend.Synchronize());
    const double fwd = Seconds(phase);
    phase = Clock::now();
    ST_RETURN_IF_ERROR(llama->Backward().status());
    ST_RETURN_IF_ERROR(backend.Synchronize());
    const double bwd = Seconds(phase);
    phase = Clock::now();
    ST_ASSIGN_OR_RETURN(train::AdamW::StepStats stats, optimizer->Step(opt.lr, /*grad_scale=*/1.0));
    ST_RETURN_IF_ERROR(backend.Synchronize());
    const double opt_s = Seconds(phase);
    phase = Clock::now();
    for (auto& adapter : adapters) ST_RETURN_IF_ERROR(adapter->ZeroGrad());
    ST_RETURN_IF_ERROR(backend.Synchronize());
    const double zero = Seconds(phase);
    const double total = Seconds(step_start);
    if (step == 0) first_loss = result.loss;
    last_loss = result.loss;
    last_norm = stats.grad_norm;
    if (step == 0) continue;
    step_s.push_back(total);
    forward_s.push_back(fwd);
    backward_s.push_back(bwd);
    optimizer_s.push_back(opt_s);
    zero_s.push_back(zero);
    adapter_fwd_s.push_back(adapter_forward_s);
    adapter_bwd_s.push_back(adapter_backward_s);
  }
  const double median = Median(step_s);
  const int tokens = opt.sequences * opt.length;
  char gpu_peak[64] = "";
  if (cuda) std::snprintf(gpu_peak, sizeof(gpu_peak), ", GPU peak %.0f MiB", GpuPeakMiB(backend));
  std::printf("sigmatune train: %.1f tok/s, %.4f s/step, peak RSS %.0f MiB%s (median of %d steps, %d tokens/step, "
              "min %.4f max %.4f s)\n",
              tokens / median, median, PeakRssMiB(), gpu_peak, opt.steps, tokens,
              *std::min_element(step_s.begin(), step_s.end()), *std::max_element(step_s.begin(), step_s.end()));
  std::printf("sigmatune phases (median s): forward %.4f backward %.4f optimizer %.4f zero_grad %.4f\n",
              Median(forward_s), Median(backward_s), Median(optimizer_s), Median(zero_s));
  if (!cuda) {
    std::printf("sigmatune adapters (median s, inside forward/backward): forward %.4f backward %.4f\n",
                Median(adapter_fwd_s), Median(adapter_bwd_s));
  } else {
    std::printf("sigmatune adapters (median s, inside forward/backward): not timed apart on %s (asynchronous ops)\n",
                backend.device().ToString().c_str());
  }
  std::printf("sigmatune loss: first %.4f last %.4f (grad norm at the last step %.4f)\n", first_loss, last_loss,
              last_norm);
  return absl::OkStatus();
}

}  // namespace
}  // namespace sigmatune

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: train_bench <model.gguf | hf_dir> [sequences=4] [length=128] [steps=20] [threads=2] "
                 "[lr=1e-4] [rank=16] [alpha=32] [device=cpu|cuda]\n");
    return 2;
  }
  sigmatune::Options opt;
  opt.model_path = argv[1];
  if (argc > 2) opt.sequences = std::atoi(argv[2]);
  if (argc > 3) opt.length = std::atoi(argv[3]);
  if (argc > 4) opt.steps = std::atoi(argv[4]);
  if (argc > 5) opt.threads = std::atoi(argv[5]);
  if (argc > 6) opt.lr = std::atof(argv[6]);
  if (argc > 7) opt.rank = std::atoll(argv[7]);
  if (argc > 8) opt.alpha = std::atof(argv[8]);
  if (argc > 9) opt.device = argv[9];
  if (opt.device != "cpu" && opt.device != "cuda") {
    std::fprintf(stderr, "train_bench: device must be cpu or cuda, got \"%s\"\n", opt.device.c_str());
    return 2;
  }
  if (opt.sequences < 1 || opt.length < 2 || opt.steps < 1 || opt.threads < 1 || opt.rank < 1) {
    std::fprintf(stderr, "train_bench: sequences >= 1, length >= 2, steps >= 1, threads >= 1, rank >= 1\n");
    return 2;
  }
  const absl::Status status = sigmatune::Run(opt);
  if (!status.ok()) {
    std::fprintf(stderr, "train_bench: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
