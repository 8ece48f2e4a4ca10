// CorDA adapter build on the CPU or a GPU, phase by phase: calibration covariances over a set of
// samples, damping + decomposition of every targeted linear, writing the PEFT adapter directory.
// bench/corda_vs_peft.py runs this and PEFT's preprocess_corda + get_peft_model + save_pretrained
// on the same model, samples and rank, side by side, and compares the adapters.
//   bazel build -c opt //bench:corda_bench
//   bazel-bin/bench/corda_bench <model.gguf | hf_dir> <calib.safetensors> <rank> <ipm|kpm> <out_dir>
//       [batch_tokens=2048] [device=cpu|cuda]
// calib.safetensors holds calib_ids i32 [T] and calib_cu_seqlens i32 [S + 1] (the samples).
// Samples are packed into batches of at most batch_tokens tokens (a longer sample is one batch).
// device (worker/job/device.h): cpu (default) is the fp32 CpuBackend with OpenBLAS's thread count;
// cuda is GPU 0 through sigmatune::job::OpenJobBackend: bf16 weights and activations, f32 covariance
// accumulation on the device, the decomposition in f32 on the bf16 weight cast to f32, f32 adapters
// (W_res rounded back to bf16), as the worker's Decompose does. Without a usable GPU (or in a build
// without CUDA) cuda prints the FailedPrecondition and exits 1. GPU run:
//   bazel-bin/bench/corda_bench <model> <calib.safetensors> 16 ipm /tmp/out 2048 cuda
// or bench/corda_vs_peft.py ... --device cuda. Every phase timer stops after backend.Synchronize().
// Prints one line per phase and a final "sigmatune corda: total <s> s, peak RSS <MiB> MiB"; on cuda
// a first "sigmatune device: cuda:0 ..." line, and the final line ends with ", peak GPU <MiB> MiB"
// (the high watermark of the device's default memory pool, which every tensor of the CudaBackend
// comes from, weights included; cuBLAS/cuSOLVER workspaces from plain cudaMalloc are not in it).
#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "formats/peft_adapter.h"
#include "formats/safetensors.h"
#include "kernels/base/status_macros.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"
#include "kernels/peft/covariance_collector.h"
#include "kernels/peft/init.h"
#include "worker/job/device.h"
#include "worker/model/llama_loader.h"

namespace sigmatune {
namespace {

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

double PeakRssMiB() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;
}

// `t` in `dtype` (the same tensor when it already is).
absl::StatusOr<Tensor> CastTo(model::ModelBackend& backend, const Tensor& t, DType dtype) {
  if (!t.defined() || t.dtype() == dtype) return t;
  ST_ASSIGN_OR_RETURN(Tensor out, backend.Allocate(t.shape(), dtype));
  ST_RETURN_IF_ERROR(backend.Cast(t, &out));
  return out;
}

absl::Status Run(const std::string& model_path, const std::string& calib_path, int64_t rank, const std::string& mode,
                 const std::string& out_dir, int64_t batch_tokens, const std::string& device) {
  if (device != "cpu" && device != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("device must be cpu or cuda, got \"", device, "\""));
  }
  ST_ASSIGN_OR_RETURN(job::JobBackend job_backend, job::OpenJobBackend(device, /*num_threads=*/0, /*local_rank=*/0));
  model::ModelBackend& backend = *job_backend.backend;
  const bool on_gpu = !backend.device().is_cpu();
  if (on_gpu) {
    std::printf("sigmatune device: %s (%s weights and activations, f32 covariances and adapters)\n",
                job_backend.device.c_str(), std::string(DTypeName(backend.activation_dtype())).c_str());
  }
  auto start = std::chrono::steady_clock::now();
  const bool gguf = model_path.size() > 5 && model_path.substr(model_path.size() - 5) == ".gguf";
  ST_ASSIGN_OR_RETURN(LoadedLlama loaded,
                      gguf ? LoadLlamaFromGguf(model_path, backend) : LoadLlamaFromHfDirectory(model_path, backend));
  ST_ASSIGN_OR_RETURN(auto llama, model::LlamaModel::Create(loaded.config, loaded.weights, &backend));
  ST_RETURN_IF_ERROR(backend.Synchronize());
  std::printf("sigmatune load: %.3f s (not counted)\n", Seconds(start));

  ST_ASSIGN_OR_RETURN(formats::SafetensorsReader calib, formats::SafetensorsReader::Open(calib_path));
  ST_ASSIGN_OR_RETURN(Tensor ids, calib.GetTensor("calib_ids"));
  ST_ASSIGN_OR_RETURN(Tensor cu, calib.GetTensor("calib_cu_seqlens"));
  std::vector<std::vector<int32_t>> samples;
  for (int64_t s = 0; s + 1 < cu.numel(); ++s) {
    samples.emplace_back(ids.data<int32_t>() + cu.data<int32_t>()[s], ids.data<int32_t>() + cu.data<int32_t>()[s + 1]);
  }
  std::vector<std::pair<int64_t, model::LinearKind>> linears;
  for (int64_t l = 0; l < loaded.config.num_layers; ++l) {
    for (model::LinearKind kind : model::kAllLinears) linears.push_back({l, kind});
  }

  // Phase 1: calibration.
  const auto total_start = std::chrono::steady_clock::now();
  start = total_start;
  ST_ASSIGN_OR_RETURN(auto collector, peft::CovarianceCollector::Create(&backend, loaded.config,
                                                                        peft::SitesOf(linears),
                                                                        peft::Accumulation::kF32));
  int64_t batches = 0;
  for (size_t s = 0; s < samples.size();) {
    std::vector<std::vector<int32_t>> batch_samples;
    int64_t tokens = 0;
    while (s < samples.size() && (batch_samples.empty() || tokens + int64_t(samples[s].size()) <= batch_tokens)) {
      tokens += samples[s].size();
      batch_samples.push_back(samples[s++]);
    }
    ST_ASSIGN_OR_RETURN(model::Batch batch, model::PackCausalLmBatch(backend, batch_samples));
    ST_RETURN_IF_ERROR(collector->BeginBatch(batch.cu_seqlens));
    ST_RETURN_IF_ERROR(llama->Observe(batch, collector.get()));
    ++batches;
  }
  ST_ASSIGN_OR_RETURN(peft::CovarianceSet set, collector->Finish());
  ST_RETURN_IF_ERROR(backend.Synchronize());
  std::printf("sigmatune calibrate: %.3f s (%lld samples, %lld tokens, %lld batches, %zu covariances)\n",
              Seconds(start), static_cast<long long>(set.samples), static_cast<long long>(set.tokens),
              static_cast<long long>(batches), set.covariance.size());

  // Phase 2: damping (once per input site) and decomposition (per linear).
  start = std::chrono::steady_clock::now();
  peft::AdapterOptions options;
  options.method = mode == "kpm" ? peft::Method::kCordaKpm : peft::Method::kCordaIpm;
  options.rank = rank;
  options.alpha = static_cast<double>(rank);
  std::map<peft::SiteKey, Tensor> damped;
  int doublings = 0;
  for (const auto& [key, c] : set.covariance) {
    ST_ASSIGN_OR_RETURN(peft::DampedCovariance d, peft::DampCovariance(backend, peft::SiteTensorName(key), c));
    doublings += d.doublings;
    damped[key] = d.c_d;
  }
  ST_RETURN_IF_ERROR(backend.Synchronize());
  const double damping_s = Seconds(start);
  std::map<model::LinearKind, double> init_s;
  set.covariance.clear();
  formats::PeftAdapter adapter;
  ST_ASSIGN_OR_RETURN(adapter.config, formats::PeftConfigForOptions(options, model_path,
                                                                    {"q_proj", "k_proj", "v_proj", "o_proj",
                                                                     "gate_proj", "up_proj", "down_proj"}));
  for (const auto& [layer, kind] : linears) {
    const std::string name = model::LinearName(layer, kind);
    const Tensor& w = loaded.weights.layers[layer].linear(kind);
    const Tensor& c = damped.at({layer, model::InputSiteOf(kind)});
    const auto init_start = std::chrono::steady_clock::now();
    // As worker/job/adapters.cc's Decompose: the init runs in the covariance's dtype (a bf16 weight
    // is cast to it; an f32 one is used as is), the adapter stays f32 and W_res goes back to the
    // weight's dtype.
    ST_ASSIGN_OR_RETURN(Tensor wc, CastTo(backend, w, c.dtype()));
    ST_ASSIGN_OR_RETURN(peft::AdapterInit init,
                        peft::InitializeAdapter(backend, options, name, wc, &c, /*seed=*/0));
    ST_ASSIGN_OR_RETURN(init.w_res, CastTo(backend, init.w_res, w.dtype()));
    adapter.modules[name] = {init.a, init.b, Tensor()};
    ST_RETURN_IF_ERROR(backend.Synchronize());
    init_s[kind] += Seconds(init_start);
  }
  std::printf("sigmatune decompose: %.3f s (%zu linears, %zu dampings %.3f s, %d doublings; init s by kind q k v o "
              "gate up down: %.2f %.2f %.2f %.2f %.2f %.2f %.2f)\n",
              Seconds(start), linears.size(), damped.size(), damping_s, doublings, init_s[model::LinearKind::kQ],
              init_s[model::LinearKind::kK], init_s[model::LinearKind::kV], init_s[model::LinearKind::kO],
              init_s[model::LinearKind::kGate], init_s[model::LinearKind::kUp], init_s[model::LinearKind::kDown]);

  // Phase 3: the adapter directory (the factors to the host first; a no-op on the CPU).
  start = std::chrono::steady_clock::now();
  for (auto& [name, module] : adapter.modules) {
    ST_ASSIGN_OR_RETURN(module.lora_a, backend.Download(module.lora_a));
    ST_ASSIGN_OR_RETURN(module.lora_b, backend.Download(module.lora_b));
  }
  ST_RETURN_IF_ERROR(formats::WritePeftAdapter(out_dir, adapter));
  ST_RETURN_IF_ERROR(backend.Synchronize());
  std::printf("sigmatune write: %.3f s\n", Seconds(start));
  if (on_gpu) {
    ST_ASSIGN_OR_RETURN(const int64_t gpu_bytes, backend.PeakDeviceBytes());
    const double gpu_mib = static_cast<double>(gpu_bytes) / (1024.0 * 1024.0);
    std::printf("sigmatune corda: total %.3f s, peak RSS %.0f MiB, peak GPU %.0f MiB\n", Seconds(total_start),
                PeakRssMiB(), gpu_mib);
  } else {
    std::printf("sigmatune corda: total %.3f s, peak RSS %.0f MiB\n", Seconds(total_start), PeakRssMiB());
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace sigmatune

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr,
                 "usage: corda_bench <model.gguf | hf_dir> <calib.safetensors> <rank> <ipm|kpm> <out_dir> "
                 "[batch_tokens=2048] [device=cpu|cuda]\n");
    return 2;
  }
  const absl::Status status = sigmatune::Run(argv[1], argv[2], std::atoll(argv[3]), argv[4], argv[5],
                                             argc > 6 ? std::atoll(argv[6]) : 2048, argc > 7 ? argv[7] : "cpu");
  if (!status.ok()) {
    std::fprintf(stderr, "corda_bench: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
