#include "worker/job/adapters.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "formats/safetensors.h"
#include "kernels/base/fingerprint.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"

namespace sigmatune::job {
namespace {

absl::Status Emit(train::ProgressSink* sink, train::Phase phase, int64_t step, int64_t total, double elapsed,
                  std::string message) {
  if (sink == nullptr) return absl::OkStatus();
  train::ProgressEvent event;
  event.phase = phase;
  event.step = step;
  event.total_steps = total;
  event.wall_time = train::UnixSeconds();
  event.elapsed_s = elapsed;
  event.message = std::move(message);
  return sink->OnEvent(event);
}

double Since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// A copy that owns its memory (reader views die with the reader).
Tensor OwnedCopy(const Tensor& view) {
  Tensor owned = Tensor::Empty(view.shape(), view.dtype());
  owned.CopyFrom(view);
  return owned;
}

// The seed of target `index` (SplitMix64 adds the increment itself; the offset keeps the seeds of
// jobs already run unchanged).
uint64_t TargetSeed(uint64_t seed, size_t index) {
  constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ull;
  return SplitMix64(seed * kGolden + 0x1234567ull + index - kGolden);
}

absl::StatusOr<Tensor> CastTo(model::ModelBackend& backend, const Tensor& t, DType dtype) {
  if (!t.defined() || t.dtype() == dtype) return t;
  ST_ASSIGN_OR_RETURN(Tensor out, backend.Allocate(t.shape(), dtype));
  ST_RETURN_IF_ERROR(backend.Cast(t, &out));
  return out;
}

}  // namespace

std::string SamplesFingerprint(const std::vector<std::vector<int32_t>>& samples) {
  Fingerprint fp;
  fp.UpdateField("sigmatune calibration samples 1");
  fp.UpdateInt(static_cast<int64_t>(samples.size()));
  for (const std::vector<int32_t>& s : samples) {
    fp.UpdateInt(static_cast<int64_t>(s.size()));
    fp.Update(s.data(), s.size() * sizeof(int32_t));
  }
  return fp.Hex();
}

absl::StatusOr<peft::CovarianceSet> Calibrate(model::LlamaModel& model, const std::vector<peft::SiteKey>& sites,
                                              const std::vector<std::vector<int32_t>>& samples,
                                              const CalibrateOptions& options, train::ProgressSink* sink,
                                              std::vector<std::string>* notes) {
  model::ModelBackend& backend = model.backend();
  const auto start = std::chrono::steady_clock::now();
  std::map<std::string, peft::SiteKey> by_name;
  for (const peft::SiteKey& site : sites) by_name[peft::SiteTensorName(site)] = site;

  if (!options.cache_path.empty()) {
    absl::StatusOr<formats::CovarianceFile> cached = formats::ReadCovarianceFile(options.cache_path, options.key);
    if (cached.ok()) {
      peft::CovarianceSet set;
      set.samples = cached->samples;
      set.tokens = cached->tokens;
      for (auto& [name, tensor] : cached->covariance) {
        auto it = by_name.find(name);
        if (it == by_name.end()) continue;
        ST_ASSIGN_OR_RETURN(set.covariance[it->second], backend.Upload(OwnedCopy(tensor)));
      }
      if (set.covariance.size() == sites.size()) {
        notes->push_back(absl::StrCat("calibration: reused the covariance cache ", options.cache_path));
        ST_RETURN_IF_ERROR(Emit(sink, train::Phase::kCalibrate, 1, 1, Since(start),
                                absl::StrCat("reused cached covariances ", options.cache_path)));
        return set;
      }
    } else if (!absl::IsNotFound(cached.status())) {
      notes->push_back(absl::StrCat("calibration: cache not used (", cached.status().message(), ")"));
    }
  }

  ST_ASSIGN_OR_RETURN(auto collector,
                      peft::CovarianceCollector::Create(&backend, model.config(), sites, options.accumulation));
  // Whole samples in order, at most batch_tokens per batch.
  std::vector<std::vector<std::vector<int32_t>>> batches;
  int64_t tokens = 0;
  for (const std::vector<int32_t>& sample : samples) {
    if (sample.empty()) continue;
    const int64_t n = static_cast<int64_t>(sample.size());
    if (batches.empty() || tokens + n > options.batch_tokens) {
      batches.emplace_back();
      tokens = 0;
    }
    batches.back().push_back(sample);
    tokens += n;
  }
  if (batches.empty()) return absl::InvalidArgumentError("calibration: no non-empty samples");
  for (size_t i = 0; i < batches.size(); ++i) {
    ST_ASSIGN_OR_RETURN(model::Batch batch, model::PackCausalLmBatch(backend, batches[i]));
    ST_RETURN_IF_ERROR(collector->BeginBatch(batch.cu_seqlens));
    ST_RETURN_IF_ERROR(model.Observe(batch, collector.get()));
    ST_RETURN_IF_ERROR(Emit(sink, train::Phase::kCalibrate, static_cast<int64_t>(i) + 1,
                            static_cast<int64_t>(batches.size()), Since(start), ""));
  }
  ST_ASSIGN_OR_RETURN(peft::CovarianceSet set, collector->Finish());
  ST_RETURN_IF_ERROR(Emit(sink, train::Phase::kCalibrate, static_cast<int64_t>(batches.size()),
                          static_cast<int64_t>(batches.size()), Since(start),
                          absl::StrFormat("%d samples, %d tokens, %d covariance matrices", set.samples, set.tokens,
                                          set.covariance.size())));
  if (!options.cache_path.empty()) {
    formats::CovarianceFile file;
    file.key = options.key;
    file.samples = set.samples;
    file.tokens = set.tokens;
    for (const auto& [site, tensor] : set.covariance) {
      ST_ASSIGN_OR_RETURN(file.covariance[peft::SiteTensorName(site)], backend.Download(tensor));
    }
    const absl::Status written = formats::WriteCovarianceFile(options.cache_path, file);
    notes->push_back(written.ok() ? absl::StrCat("calibration: cached the covariances in ", options.cache_path)
                                  : absl::StrCat("calibration: could not cache the covariances (",
                                                 written.message(), "); the job goes on"));
  }
  return set;
}

absl::Status CheckRankFits(const model::LlamaConfig& config, const peft::AdapterOptions& options,
                           const std::vector<peft::TargetModule>& targets) {
  if (options.method == peft::Method::kLora) return absl::OkStatus();
  for (const peft::TargetModule& target : targets) {
    const int64_t hd = config.head_dim;
    int64_t out = 0, in = 0;
    switch (target.kind) {
      case model::LinearKind::kQ: out = config.num_heads * hd; in = config.hidden_size; break;
      case model::LinearKind::kK:
      case model::LinearKind::kV: out = config.num_kv_heads * hd; in = config.hidden_size; break;
      case model::LinearKind::kO: out = config.hidden_size; in = config.num_heads * hd; break;
      case model::LinearKind::kGate:
      case model::LinearKind::kUp: out = config.intermediate_size; in = config.hidden_size; break;
      case model::LinearKind::kDown: out = config.hidden_size; in = config.intermediate_size; break;
    }
    const int64_t k = std::min(out, in);
    if (options.rank > k) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "method.rank %d is larger than %s, which is [%d, %d]: %s needs rank <= min(out, in) = %d; lower the rank "
          "or leave that module out of target_modules",
          options.rank, target.name(), out, in, peft::MethodName(options.method), k));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<train::TrainedLinear>> Decompose(model::ModelBackend& backend,
                                                            const model::LlamaWeights& weights,
                                                            const peft::AdapterOptions& options,
                                                            const std::vector<peft::TargetModule>& targets,
                                                            const peft::CovarianceSet* covariance, uint64_t seed,
                                                            train::ProgressSink* sink) {
  const auto start = std::chrono::steady_clock::now();
  std::map<peft::SiteKey, Tensor> damped;
  std::vector<train::TrainedLinear> linears;
  for (size_t i = 0; i < targets.size(); ++i) {
    const peft::TargetModule& target = targets[i];
    const std::string name = target.name();
    const Tensor& w = weights.layers[target.layer].linear(target.kind);
    const Tensor* c = nullptr;
    if (peft::NeedsCovariance(options.method)) {
      if (covariance == nullptr) return absl::InvalidArgumentError(absl::StrCat(name, ": CorDA needs covariances"));
      const peft::SiteKey site{target.layer, model::InputSiteOf(target.kind)};
      auto it = damped.find(site);
      if (it == damped.end()) {
        auto found = covariance->covariance.find(site);
        if (found == covariance->covariance.end()) {
          return absl::InternalError(absl::StrCat(name, ": no covariance for ", peft::SiteTensorName(site)));
        }
        ST_ASSIGN_OR_RETURN(peft::DampedCovariance d,
                            peft::DampCovariance(backend, peft::SiteTensorName(site), found->second));
        it = damped.emplace(site, std::move(d.c_d)).first;
      }
      c = &it->second;
    }
    // The init runs in the covariance's dtype when it is wider (f64 accumulation), then rounds once.
    const DType compute = c != nullptr ? c->dtype() : w.dtype();
    ST_ASSIGN_OR_RETURN(Tensor wc, CastTo(backend, w, compute));
    ST_ASSIGN_OR_RETURN(peft::AdapterInit init,
                        peft::InitializeAdapter(backend, options, name, wc, c, TargetSeed(seed, i)));
    if (compute != w.dtype()) {
      for (Tensor* t : {&init.a, &init.b, &init.d, &init.w_res, &init.tail_u, &init.tail_s, &init.tail_vt}) {
        ST_ASSIGN_OR_RETURN(*t, CastTo(backend, *t, w.dtype()));
      }
    }
    train::TrainedLinear linear;
    linear.target = target;
    linear.a = init.a;
    linear.b = init.b;
    linear.d = init.d;
    linear.init = std::move(init);
    linears.push_back(std::move(linear));
    ST_RETURN_IF_ERROR(Emit(sink, train::Phase::kDecompose, static_cast<int64_t>(i) + 1,
                            static_cast<int64_t>(targets.size()), Since(start),
                            i + 1 == targets.size()
                                ? absl::StrFormat("%s adapters for %d modules", peft::MethodName(options.method),
                                                  targets.size())
                                : std::string()));
  }
  return linears;
}

absl::Status WriteDecomposition(const std::string& path, const std::string& identity,
                                const peft::AdapterOptions& options, const std::vector<train::TrainedLinear>& linears,
                                model::ModelBackend& backend) {
  std::map<std::string, Tensor> tensors;
  auto add = [&](const std::string& name, const Tensor& t) -> absl::Status {
    if (!t.defined()) return absl::OkStatus();
    ST_ASSIGN_OR_RETURN(tensors[name], backend.Download(t));
    return absl::OkStatus();
  };
  std::string scale;
  for (const train::TrainedLinear& linear : linears) {
    const std::string m = linear.target.name();
    const peft::AdapterInit& init = linear.init;
    ST_RETURN_IF_ERROR(add(m + ".a", init.a));
    ST_RETURN_IF_ERROR(add(m + ".b", init.b));
    ST_RETURN_IF_ERROR(add(m + ".d", init.d));
    if (peft::ChangesBase(options.method)) ST_RETURN_IF_ERROR(add(m + ".w_res", init.w_res));
    ST_RETURN_IF_ERROR(add(m + ".tail_u", init.tail_u));
    ST_RETURN_IF_ERROR(add(m + ".tail_s", init.tail_s));
    ST_RETURN_IF_ERROR(add(m + ".tail_vt", init.tail_vt));
    scale = absl::StrFormat("%.17g", init.scale);
  }
  return formats::WriteSafetensors(path, tensors, {{"format", "pt"}, {"identity", identity}, {"scale", scale}});
}

absl::StatusOr<std::vector<train::TrainedLinear>> ReadDecomposition(const std::string& path,
                                                                    const std::string& identity,
                                                                    const model::LlamaWeights& weights,
                                                                    const peft::AdapterOptions& options,
                                                                    const std::vector<peft::TargetModule>& targets,
                                                                    model::ModelBackend& backend) {
  ST_ASSIGN_OR_RETURN(formats::SafetensorsReader reader, formats::SafetensorsReader::Open(path));
  auto it = reader.metadata().find("identity");
  if (it == reader.metadata().end() || it->second != identity) {
    return absl::FailedPreconditionError(absl::StrCat(path, " belongs to another job"));
  }
  double scale = 0.0;
  auto scale_it = reader.metadata().find("scale");
  if (scale_it == reader.metadata().end() || !absl::SimpleAtod(scale_it->second, &scale)) {
    return absl::DataLossError(absl::StrCat(path, ": no scale in the metadata"));
  }
  auto get = [&](const std::string& name, bool required, Tensor* out) -> absl::Status {
    if (!reader.Contains(name)) {
      if (required) return absl::DataLossError(absl::StrCat(path, " lacks ", name));
      *out = Tensor();
      return absl::OkStatus();
    }
    ST_ASSIGN_OR_RETURN(Tensor view, reader.GetTensor(name));
    ST_ASSIGN_OR_RETURN(*out, backend.Upload(OwnedCopy(view)));
    return absl::OkStatus();
  };
  const bool kasa = options.method == peft::Method::kKasa;
  std::vector<train::TrainedLinear> linears;
  for (const peft::TargetModule& target : targets) {
    const std::string m = target.name();
    train::TrainedLinear linear;
    linear.target = target;
    peft::AdapterInit& init = linear.init;
    init.scale = scale;
    ST_RETURN_IF_ERROR(get(m + ".a", true, &init.a));
    ST_RETURN_IF_ERROR(get(m + ".b", true, &init.b));
    ST_RETURN_IF_ERROR(get(m + ".d", kasa, &init.d));
    if (peft::ChangesBase(options.method)) {
      ST_RETURN_IF_ERROR(get(m + ".w_res", true, &init.w_res));
    } else {
      init.w_res = weights.layers[target.layer].linear(target.kind);
    }
    ST_RETURN_IF_ERROR(get(m + ".tail_u", kasa, &init.tail_u));
    ST_RETURN_IF_ERROR(get(m + ".tail_s", kasa, &init.tail_s));
    ST_RETURN_IF_ERROR(get(m + ".tail_vt", kasa, &init.tail_vt));
    linear.a = init.a;
    linear.b = init.b;
    linear.d = init.d;
    linears.push_back(std::move(linear));
  }
  return linears;
}

}  // namespace sigmatune::job
