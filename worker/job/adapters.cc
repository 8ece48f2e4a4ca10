#include "worker/job/adapters.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "kernels/base/check.h"
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

// Sums `t` (on `backend`) over the group into `owner`'s copy (host memory in between when the
// backend is not the CPU).
absl::Status ReduceToOwner(model::ModelBackend& backend, comm::Communicator& comm, int owner, Tensor* t) {
  if (comm.size() == 1) return absl::OkStatus();
  Tensor host = t->device().is_cpu() ? *t : Tensor();
  if (!host.defined()) {
    ST_ASSIGN_OR_RETURN(host, backend.Download(*t));
  }
  ST_CHECK(host.is_contiguous());
  const size_t n = static_cast<size_t>(host.numel());
  if (host.dtype() == DType::kF64) {
    ST_RETURN_IF_ERROR(comm.ReduceSum(owner, absl::MakeSpan(host.data<double>(), n)));
  } else {
    ST_CHECK(host.dtype() == DType::kF32) << "covariances are f32 or f64";
    ST_RETURN_IF_ERROR(comm.ReduceSum(owner, absl::MakeSpan(host.data<float>(), n)));
  }
  if (comm.rank() == owner && !t->device().is_cpu()) {
    ST_ASSIGN_OR_RETURN(Tensor device, backend.Upload(host));
    ST_RETURN_IF_ERROR(backend.Copy(device, t));
  }
  return absl::OkStatus();
}

// Every rank's peak resident memory, reported by the leader: "<phase>: peak memory per rank ...".
absl::Status ReportPeakMemory(comm::Communicator& comm, const std::string& phase, train::ProgressSink* sink,
                              std::vector<std::string>* notes) {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  std::vector<int64_t> peak(comm.size(), 0);
  peak[comm.rank()] = static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux: kilobytes
  ST_RETURN_IF_ERROR(comm.AllReduceSum(absl::MakeSpan(peak)));
  std::vector<std::string> parts;
  for (int r = 0; r < comm.size(); ++r) {
    parts.push_back(absl::StrFormat("rank %d %.0f MiB", r, static_cast<double>(peak[r]) / (1 << 20)));
  }
  const std::string message = absl::StrCat(phase, ": peak memory (RSS) per rank: ", absl::StrJoin(parts, ", "));
  if (comm.is_leader()) notes->push_back(message);
  return Emit(sink, train::Phase::kCalibrate, 0, 0, 0, message);
}

// The dtype of an adapter's parameters on a weight of `weight`'s dtype: f32 on a half-precision
// model (AdamW steps f32 and f64 only), the weight's own otherwise.
DType ParamDTypeFor(DType weight) {
  return weight == DType::kBF16 || weight == DType::kF16 ? DType::kF32 : weight;
}

// The tensors of an init by name: what the broadcast of a module carries.
std::vector<std::pair<const char*, Tensor*>> InitTensors(peft::AdapterInit& init) {
  return {{"a", &init.a},           {"b", &init.b},           {"d", &init.d},          {"w_res", &init.w_res},
          {"tail_u", &init.tail_u}, {"tail_s", &init.tail_s}, {"tail_vt", &init.tail_vt}};
}

// One target's initialisation as bytes (the broadcast from its owner) and back. W_res travels only
// for the methods that change the base (LoRA's is W, which every rank has).
absl::StatusOr<std::string> SerializeInit(model::ModelBackend& backend, peft::Method method, peft::AdapterInit& init) {
  std::map<std::string, Tensor> tensors;
  for (const auto& [name, t] : InitTensors(init)) {
    if (!t->defined() || (t == &init.w_res && !peft::ChangesBase(method))) continue;
    ST_ASSIGN_OR_RETURN(tensors[name], backend.Download(*t));
  }
  return formats::SerializeSafetensors(tensors, {{"scale", absl::StrFormat("%.17g", init.scale)}});
}

absl::StatusOr<peft::AdapterInit> ParseInit(model::ModelBackend& backend, const std::string& bytes,
                                            const std::string& module) {
  ST_ASSIGN_OR_RETURN(formats::SafetensorsReader reader,
                      formats::SafetensorsReader::FromBuffer(bytes, absl::StrCat("the broadcast init of ", module)));
  peft::AdapterInit init;
  auto scale = reader.metadata().find("scale");
  if (scale == reader.metadata().end() || !absl::SimpleAtod(scale->second, &init.scale)) {
    return absl::DataLossError(absl::StrCat("the broadcast init of ", module, " has no scale"));
  }
  for (const auto& [name, t] : InitTensors(init)) {
    if (!reader.Contains(name)) continue;
    ST_ASSIGN_OR_RETURN(Tensor view, reader.GetTensor(name));
    ST_ASSIGN_OR_RETURN(*t, backend.Upload(OwnedCopy(view)));
  }
  return init;
}

// The cache key of one site: the job's key restricted to it.
formats::CovarianceFileKey SiteKeyOf(const formats::CovarianceFileKey& key, const std::string& site_name) {
  formats::CovarianceFileKey one = key;
  one.sites = {site_name};
  return one;
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

std::string CovarianceCachePath(const std::string& cache_dir, const formats::CovarianceFileKey& key,
                                const std::string& site_name) {
  return absl::StrCat(cache_dir, "/covariance-", SiteKeyOf(key, site_name).ContentKey(), ".safetensors");
}

absl::StatusOr<peft::CovarianceSet> Calibrate(model::LlamaModel& model, comm::Communicator& comm,
                                              const WorkPlan& plan, const std::vector<peft::SiteKey>& sites,
                                              const std::vector<std::vector<int32_t>>& samples,
                                              const CalibrateOptions& options, train::ProgressSink* sink,
                                              std::vector<std::string>* notes) {
  ST_CHECK(plan.world_size == comm.size()) << "the plan is for " << plan.world_size << " ranks";
  model::ModelBackend& backend = model.backend();
  const auto start = std::chrono::steady_clock::now();
  std::vector<peft::SiteKey> mine;
  for (const peft::SiteKey& site : sites) {
    auto it = plan.site_owner.find(site);
    ST_CHECK(it != plan.site_owner.end()) << peft::SiteTensorName(site) << " has no owner";
    if (it->second == comm.rank()) mine.push_back(site);
  }

  // The cache: every owner looks for its sites; the group recomputes unless all of them hit.
  peft::CovarianceSet cached;
  int64_t misses[1] = {0};
  if (!options.cache_dir.empty()) {
    for (const peft::SiteKey& site : mine) {
      const std::string name = peft::SiteTensorName(site);
      absl::StatusOr<formats::CovarianceFile> file = formats::ReadCovarianceFile(
          CovarianceCachePath(options.cache_dir, options.key, name), SiteKeyOf(options.key, name));
      if (!file.ok()) {
        if (!absl::IsNotFound(file.status())) {
          notes->push_back(absl::StrCat("calibration: cache not used (", file.status().message(), ")"));
        }
        ++misses[0];
        continue;
      }
      ST_ASSIGN_OR_RETURN(cached.covariance[site], backend.Upload(OwnedCopy(file->covariance.at(name))));
      cached.samples = file->samples;
      cached.tokens = file->tokens;
    }
  } else {
    misses[0] = static_cast<int64_t>(mine.size());
  }
  ST_RETURN_IF_ERROR(comm.AllReduceSum(absl::MakeSpan(misses, 1)));
  if (misses[0] == 0) {
    notes->push_back(absl::StrCat("calibration: reused the covariance cache in ", options.cache_dir));
    ST_RETURN_IF_ERROR(Emit(sink, train::Phase::kCalibrate, 1, 1, Since(start),
                            absl::StrCat("reused cached covariances (", sites.size(), " sites) in ",
                                         options.cache_dir)));
    return cached;
  }
  cached = peft::CovarianceSet();

  // This rank's samples (j % size == rank), whole, in order, at most batch_tokens per batch.
  ST_ASSIGN_OR_RETURN(auto collector,
                      peft::CovarianceCollector::Create(&backend, model.config(), sites, options.accumulation));
  std::vector<std::vector<std::vector<int32_t>>> batches;
  int64_t tokens = 0, non_empty = 0;
  for (size_t j = 0; j < samples.size(); ++j) {
    const std::vector<int32_t>& sample = samples[j];
    if (sample.empty()) continue;
    ++non_empty;
    if (static_cast<int>(j % static_cast<size_t>(comm.size())) != comm.rank()) continue;
    const int64_t n = static_cast<int64_t>(sample.size());
    if (batches.empty() || tokens + n > options.batch_tokens) {
      batches.emplace_back();
      tokens = 0;
    }
    batches.back().push_back(sample);
    tokens += n;
  }
  if (non_empty == 0) return absl::InvalidArgumentError("calibration: no non-empty samples");
  for (size_t i = 0; i < batches.size(); ++i) {
    ST_ASSIGN_OR_RETURN(model::Batch batch, model::PackCausalLmBatch(backend, batches[i]));
    ST_RETURN_IF_ERROR(collector->BeginBatch(batch.cu_seqlens));
    ST_RETURN_IF_ERROR(model.Observe(batch, collector.get()));
    ST_RETURN_IF_ERROR(Emit(sink, train::Phase::kCalibrate, static_cast<int64_t>(i) + 1,
                            static_cast<int64_t>(batches.size()), Since(start), ""));
  }
  ST_ASSIGN_OR_RETURN(peft::CovarianceSet partial, collector->FinishPartial());
  int64_t counts[2] = {partial.samples, partial.tokens};
  ST_RETURN_IF_ERROR(comm.AllReduceSum(absl::MakeSpan(counts, 2)));

  // Each site's sums reduced to its owner (in site order, the same on every rank).
  peft::CovarianceSet set;
  set.samples = counts[0];
  set.tokens = counts[1];
  for (const peft::SiteKey& site : sites) {
    const int owner = plan.site_owner.at(site);
    Tensor& sum = partial.covariance.at(site);
    ST_RETURN_IF_ERROR(ReduceToOwner(backend, comm, owner, &sum));
    if (owner == comm.rank()) {
      ST_RETURN_IF_ERROR(peft::NormalizeCovariance(backend, peft::SiteTensorName(site), set.samples, &sum));
      set.covariance[site] = std::move(sum);
    }
    partial.covariance.erase(site);  // frees the non-owners' copy at once
  }
  ST_RETURN_IF_ERROR(ReportPeakMemory(comm, "calibrate", sink, notes));
  ST_RETURN_IF_ERROR(Emit(sink, train::Phase::kCalibrate, static_cast<int64_t>(batches.size()),
                          static_cast<int64_t>(batches.size()), Since(start),
                          absl::StrFormat("%d samples, %d tokens, %d covariance matrices on %d rank(s)", set.samples,
                                          set.tokens, sites.size(), comm.size())));
  if (!options.cache_dir.empty()) {
    int written = 0;
    for (const auto& [site, tensor] : set.covariance) {
      const std::string name = peft::SiteTensorName(site);
      formats::CovarianceFile file;
      file.key = SiteKeyOf(options.key, name);
      file.samples = set.samples;
      file.tokens = set.tokens;
      ST_ASSIGN_OR_RETURN(file.covariance[name], backend.Download(tensor));
      const absl::Status status =
          formats::WriteCovarianceFile(CovarianceCachePath(options.cache_dir, options.key, name), file);
      if (!status.ok()) {
        notes->push_back(absl::StrCat("calibration: could not cache the covariances (", status.message(),
                                      "); the job goes on"));
        break;
      }
      ++written;
    }
    if (written == static_cast<int>(set.covariance.size()) && written > 0) {
      notes->push_back(absl::StrCat("calibration: cached ", written, " covariances in ", options.cache_dir));
    }
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

absl::StatusOr<std::vector<train::TrainedLinear>> Decompose(model::ModelBackend& backend, comm::Communicator& comm,
                                                            const WorkPlan& plan, const model::LlamaWeights& weights,
                                                            const peft::AdapterOptions& options,
                                                            const std::vector<peft::TargetModule>& targets,
                                                            const peft::CovarianceSet* covariance, uint64_t seed,
                                                            train::ProgressSink* sink) {
  ST_CHECK(plan.world_size == comm.size() && plan.target_owner.size() == targets.size());
  const auto start = std::chrono::steady_clock::now();
  std::map<peft::SiteKey, Tensor> damped;
  std::vector<train::TrainedLinear> linears(targets.size());
  int64_t done = 0;
  int64_t own = 0;
  for (int owner : plan.target_owner) own += owner == comm.rank() ? 1 : 0;
  for (size_t i = 0; i < targets.size(); ++i) {
    if (plan.target_owner[i] != comm.rank()) continue;
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
    // The adapter's parameters are f32 on a half-precision (bf16) model and in the weight's dtype
    // otherwise; the init runs in the covariance's dtype when there is one (f64 accumulation) and
    // rounds once: the adapter to the parameters' dtype, W_res to the weight's.
    const DType param = ParamDTypeFor(w.dtype());
    const DType compute = c != nullptr ? c->dtype() : param;
    ST_ASSIGN_OR_RETURN(Tensor wc, CastTo(backend, w, compute));
    ST_ASSIGN_OR_RETURN(peft::AdapterInit init,
                        peft::InitializeAdapter(backend, options, name, wc, c, TargetSeed(seed, i)));
    for (const auto& [unused, t] : InitTensors(init)) {
      const DType want = t == &init.w_res ? w.dtype() : param;
      if (t->defined() && t->dtype() != want) {
        ST_ASSIGN_OR_RETURN(*t, CastTo(backend, *t, want));
      }
    }
    linears[i].init = std::move(init);
    ++done;
    ST_RETURN_IF_ERROR(Emit(sink, train::Phase::kDecompose, done, own, Since(start),
                            done == own && comm.size() > 1
                                ? absl::StrFormat("rank %d: %d of %d modules decomposed", comm.rank(), own,
                                                  targets.size())
                                : std::string()));
  }
  damped.clear();
  // Every target's init from its owner to everyone, in target order.
  if (comm.size() > 1) {
    for (size_t i = 0; i < targets.size(); ++i) {
      const int owner = plan.target_owner[i];
      std::string bytes;
      if (owner == comm.rank()) {
        ST_ASSIGN_OR_RETURN(bytes, SerializeInit(backend, options.method, linears[i].init));
      }
      ST_RETURN_IF_ERROR(comm.Broadcast(owner, &bytes));
      if (owner != comm.rank()) {
        ST_ASSIGN_OR_RETURN(linears[i].init, ParseInit(backend, bytes, targets[i].name()));
      }
    }
  }
  for (size_t i = 0; i < targets.size(); ++i) {
    train::TrainedLinear& linear = linears[i];
    linear.target = targets[i];
    if (!peft::ChangesBase(options.method) && !linear.init.w_res.defined()) {
      linear.init.w_res = weights.layers[targets[i].layer].linear(targets[i].kind);
    }
    linear.a = linear.init.a;
    linear.b = linear.init.b;
    linear.d = linear.init.d;
  }
  ST_RETURN_IF_ERROR(Emit(sink, train::Phase::kDecompose, static_cast<int64_t>(targets.size()),
                          static_cast<int64_t>(targets.size()), Since(start),
                          absl::StrFormat("%s adapters for %d modules (%s)", peft::MethodName(options.method),
                                          targets.size(), plan.Describe())));
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
