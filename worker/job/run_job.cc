#include "worker/job/run_job.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "formats/atomic_file.h"
#include "kernels/base/fingerprint.h"
#include "kernels/base/status_macros.h"
#include "kernels/model/backend.h"
#include "kernels/peft/adapter.h"
#include "kernels/peft/covariance_collector.h"
#include "nlohmann/json.hpp"
#include "worker/checkpoint/checkpoint.h"
#include "worker/data/dataset.h"
#include "worker/data/loader.h"
#include "worker/job/adapters.h"
#include "worker/job/device.h"
#include "worker/job/model_bundle.h"
#include "worker/job/report.h"
#include "worker/job/spec.h"
#include "worker/job/work_plan.h"
#include "worker/train/optimizer.h"
#include "worker/train/schedule.h"

namespace sigmatune::job {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Prefixes an error with the phase it happened in (keeps the code).
absl::Status InPhase(absl::string_view phase, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(phase, ": ", status.message()));
}
template <typename T>
absl::StatusOr<T> InPhase(absl::string_view phase, absl::StatusOr<T> value) {
  if (value.ok()) return value;
  return InPhase(phase, value.status());
}

absl::Status Message(train::ProgressSink* sink, train::Phase phase, std::string message) {
  train::ProgressEvent event;
  event.phase = phase;
  event.wall_time = train::UnixSeconds();
  event.message = std::move(message);
  return sink->OnEvent(event);
}

// The fields that change the numbers a job produces (what a checkpoint must agree with).
std::string JobIdentity(const v1::JobSpec& spec, const std::string& model_fingerprint) {
  v1::JobSpec copy = spec;
  copy.clear_name();
  copy.clear_base_model();
  copy.clear_eval_datasets();
  copy.clear_save_steps();
  copy.clear_save_total_limit();
  copy.clear_logging_steps();
  copy.clear_output_dir();
  copy.clear_cache_dir();
  copy.clear_export_merged();
  copy.clear_device();
  copy.clear_num_threads();
  copy.clear_world_size();
  Fingerprint fp;
  fp.UpdateField("sigmatune job identity 1");
  fp.UpdateField(model_fingerprint);
  fp.UpdateField(SpecToJson(copy));
  return fp.Hex();
}

absl::StatusOr<data::RecordFormat> Format(const std::string& name) {
  return data::ParseRecordFormat(name.empty() ? "auto" : name);
}

absl::StatusOr<data::Dataset> LoadTrainingData(const v1::JobSpec& spec, const data::SampleEncoder& encoder) {
  data::Dataset all;
  for (const v1::DatasetSpec& ds : spec.datasets()) {
    data::DatasetOptions options;
    options.path = ds.path();
    ST_ASSIGN_OR_RETURN(options.format, Format(ds.format()));
    options.train_on_input = ds.train_on_input() ? data::TrainOnInput::kYes : data::TrainOnInput::kNo;
    options.max_samples = ds.max_samples();
    options.max_seq_len = spec.sequence_len();
    options.long_samples = spec.truncate_long_samples() ? data::LongSamples::kTruncate : data::LongSamples::kError;
    ST_ASSIGN_OR_RETURN(data::Dataset one, data::LoadDataset(options, encoder));
    for (data::TokenizedSample& s : one.samples) all.samples.push_back(std::move(s));
    all.records += one.records;
    all.untrained_samples += one.untrained_samples;
    all.truncated_samples += one.truncated_samples;
    all.tokens += one.tokens;
    all.trained_tokens += one.trained_tokens;
  }
  if (all.trained_tokens == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "datasets: no token is trained (", all.samples.size(),
        " samples, every one masked); check the record format, or set train_on_input: true"));
  }
  return all;
}

absl::StatusOr<std::vector<train::EvalSet>> LoadEvalSets(const v1::JobSpec& spec, const data::SampleEncoder& encoder) {
  std::vector<train::EvalSet> sets;
  for (const v1::EvalSetSpec& es : spec.eval_datasets()) {
    train::EvalSet set;
    set.name = es.name();
    set.role = es.role() == "knowledge" ? train::EvalRole::kKnowledge : train::EvalRole::kTask;
    set.max_new_tokens = es.max_new_tokens();
    data::DatasetOptions options;
    options.path = es.path();
    ST_ASSIGN_OR_RETURN(options.format, Format(es.format()));
    options.max_samples = es.max_samples();
    options.max_seq_len = spec.sequence_len();
    options.long_samples = data::LongSamples::kTruncate;
    if (es.metric() == "exact_match") {
      set.metric = train::EvalMetric::kExactMatch;
      ST_ASSIGN_OR_RETURN(set.prompts, data::LoadPromptAnswerSet(options, encoder));
    } else {
      set.metric = train::EvalMetric::kPerplexity;
      ST_ASSIGN_OR_RETURN(set.dataset, data::LoadDataset(options, encoder));
    }
    sets.push_back(std::move(set));
  }
  return sets;
}

absl::StatusOr<std::vector<std::vector<int32_t>>> LoadCalibration(const v1::JobSpec& spec,
                                                                  const data::SampleEncoder& encoder) {
  data::DatasetOptions options;
  options.path = spec.calibration().path();
  ST_ASSIGN_OR_RETURN(options.format, Format(spec.calibration().format()));
  options.train_on_input = data::TrainOnInput::kYes;
  options.max_samples = spec.calibration().num_samples();
  options.max_seq_len = spec.calibration().max_seq_len();
  options.long_samples = data::LongSamples::kTruncate;
  ST_ASSIGN_OR_RETURN(data::Dataset ds, data::LoadDataset(options, encoder));
  std::vector<std::vector<int32_t>> samples;
  for (data::TokenizedSample& s : ds.samples) samples.push_back(std::move(s.ids));
  return samples;
}

absl::StatusOr<std::vector<train::EvalResult>> EvaluateAll(model::LlamaModel& model,
                                                           const std::vector<train::EvalSet>& sets,
                                                           const ModelBundle& bundle, int64_t batch_tokens,
                                                           const std::string& label, train::ProgressSink* sink) {
  std::vector<train::EvalResult> results;
  train::EvaluateOptions options;
  options.batch_tokens = batch_tokens;
  options.stop_ids = bundle.stop_ids;
  options.label = label;
  for (const train::EvalSet& set : sets) {
    ST_ASSIGN_OR_RETURN(train::EvalResult result, train::Evaluate(model, set, bundle.tokenizer, options, sink));
    results.push_back(std::move(result));
  }
  return results;
}

// Forwards to a sink it does not own.
class Forward final : public train::ProgressSink {
 public:
  explicit Forward(train::ProgressSink* to) : to_(to) {}
  absl::Status OnEvent(const train::ProgressEvent& event) override { return to_->OnEvent(event); }
  absl::Status Flush() override { return to_->Flush(); }

 private:
  train::ProgressSink* to_;
};

// The job's sinks: the terminal (unless off), <out>/metrics.jsonl, <out>/tensorboard/<name>/ and
// the caller's extra sink.
absl::StatusOr<std::unique_ptr<train::FanOutSink>> OpenSinks(const v1::JobSpec& spec, const RunOptions& options,
                                                             train::Resumed resumed, int64_t resume_step) {
  auto fan = std::make_unique<train::FanOutSink>();
  if (options.terminal == TerminalOutput::kAuto) fan->Add(train::TerminalProgress::Create(stderr));
  ST_ASSIGN_OR_RETURN(auto jsonl, train::JsonlMetricsWriter::Create(absl::StrCat(spec.output_dir(), "/metrics.jsonl")));
  fan->Add(std::move(jsonl));
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  ST_ASSIGN_OR_RETURN(auto tensorboard,
                      train::TensorBoardSink::Create(absl::StrCat(spec.output_dir(), "/tensorboard/", spec.name()),
                                                     host, train::UnixSeconds(), resumed, resume_step));
  fan->Add(std::move(tensorboard));
  if (options.extra_sink != nullptr) fan->Add(std::make_unique<Forward>(options.extra_sink));
  return fan;
}

// A sink that never fails the job: the first error of each kind becomes a note (metrics are not
// worth losing a training run for; checkpoints are what must not be lost).
class TolerantSink final : public train::ProgressSink {
 public:
  TolerantSink(train::ProgressSink* inner, std::vector<std::string>* notes) : inner_(inner), notes_(notes) {}
  absl::Status OnEvent(const train::ProgressEvent& event) override {
    const absl::Status status = inner_->OnEvent(event);
    if (!status.ok() && !warned_) {
      warned_ = true;
      notes_->push_back(absl::StrCat("progress output failed (", status.message(), "); training goes on"));
      std::fprintf(stderr, "sigmatune: warning: %s\n", notes_->back().c_str());
    }
    return absl::OkStatus();
  }
  absl::Status Flush() override { return inner_->Flush(); }

 private:
  train::ProgressSink* inner_;
  std::vector<std::string>* notes_;
  bool warned_ = false;
};

// Between phases the ranks take the stop decision together (training takes it after every step):
// true when any rank's stop flag is set. Every rank calls it at the same point (a collective).
absl::StatusOr<bool> AnyRankStopped(comm::Communicator& comm, const std::atomic<bool>* stop) {
  int64_t flag[1] = {stop != nullptr && stop->load() ? 1 : 0};
  ST_RETURN_IF_ERROR(comm.AllReduceSum(absl::MakeSpan(flag, 1)));
  return flag[0] > 0;
}

// The weights on the CPU (export reads host tensors): themselves on the CPU backend, else a
// download of each (the tied lm_head stays the same tensor as the embedding).
absl::StatusOr<model::LlamaWeights> OnHost(const model::LlamaWeights& weights, model::ModelBackend& backend) {
  if (backend.device().is_cpu()) return weights;
  model::LlamaWeights host = weights;
  auto down = [&](Tensor* t) -> absl::Status {
    ST_ASSIGN_OR_RETURN(*t, backend.Download(*t));
    return absl::OkStatus();
  };
  const bool tied = weights.lm_head.raw_data() == weights.embed.raw_data();
  ST_RETURN_IF_ERROR(down(&host.embed));
  for (model::LayerWeights& layer : host.layers) {
    for (Tensor* t : {&layer.input_norm, &layer.q, &layer.k, &layer.v, &layer.o, &layer.post_norm, &layer.gate,
                      &layer.up, &layer.down}) {
      ST_RETURN_IF_ERROR(down(t));
    }
  }
  ST_RETURN_IF_ERROR(down(&host.final_norm));
  if (tied) {
    host.lm_head = host.embed;
  } else {
    ST_RETURN_IF_ERROR(down(&host.lm_head));
  }
  return host;
}

}  // namespace

absl::StatusOr<JobResult> RunJob(const v1::JobSpec& spec, const RunOptions& options) {
  ST_RETURN_IF_ERROR(ProblemsToStatus(spec.name(), ValidateJobSpec(spec, FileChecks::kNo)));
  comm::SingleProcessCommunicator single;
  comm::Communicator* comm = options.comm != nullptr ? options.comm : &single;
  const bool leader = comm->is_leader();
  JobResult result;
  result.output_dir = spec.output_dir();
  result.world_size = comm->size();
  const std::string out = spec.output_dir();
  ST_RETURN_IF_ERROR(formats::CreateDirectoryDurably(out));
  if (leader) ST_RETURN_IF_ERROR(formats::WriteFileAtomically(absl::StrCat(out, "/job.json"), SpecToJson(spec)));

  // Checkpoints are looked at first: the sinks need to know whether this is a resume.
  checkpoint::CheckpointOptions checkpoint_options;
  checkpoint_options.keep = static_cast<int>(spec.save_total_limit());
  ST_ASSIGN_OR_RETURN(checkpoint::CheckpointStore store,
                      checkpoint::CheckpointStore::Open(absl::StrCat(out, "/checkpoints"), checkpoint_options));
  ST_ASSIGN_OR_RETURN(std::optional<checkpoint::LoadedCheckpoint> latest, store.LoadLatest());
  if (latest.has_value()) {
    for (const std::string& w : latest->warnings) result.notes.push_back(w);
  }
  result.resumed = latest.has_value();
  // Every rank must resume from the same checkpoint (the output directory is shared).
  std::string agreed = latest.has_value() ? absl::StrCat(latest->step) : "none";
  ST_RETURN_IF_ERROR(comm->Broadcast(0, &agreed));
  if (agreed != (latest.has_value() ? absl::StrCat(latest->step) : "none")) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "rank %d sees checkpoint %s in %s but the leader sees %s: the output_dir must be one directory shared by "
        "every rank (a network file system or one volume)",
        comm->rank(), latest.has_value() ? absl::StrCat("step ", latest->step) : "none", store.root(), agreed));
  }
  // Only the leader reports (terminal, metrics.jsonl, TensorBoard, the caller's sink).
  std::unique_ptr<train::FanOutSink> sinks = std::make_unique<train::FanOutSink>();
  if (leader) {
    ST_ASSIGN_OR_RETURN(sinks, OpenSinks(spec, options, result.resumed ? train::Resumed::kYes : train::Resumed::kNo,
                                         result.resumed ? latest->step : 0));
  }
  TolerantSink tolerant(sinks.get(), &result.notes);
  train::ProgressSink* sink = &tolerant;
  for (const std::string& w : result.notes) ST_RETURN_IF_ERROR(Message(sink, train::Phase::kLoad, "warning: " + w));
  // A stop between phases returns what is done: every phase's output is written atomically, so
  // nothing is half-written and the newest checkpoint (if any) stays the one to resume from.
  const int64_t resume_step = latest.has_value() ? latest->step : 0;
  auto stopped_after = [&](train::Phase phase, absl::string_view what) -> absl::StatusOr<bool> {
    ST_ASSIGN_OR_RETURN(const bool stop, AnyRankStopped(*comm, options.stop));
    if (!stop) return false;
    result.stopped_early = true;
    result.train.start_step = resume_step;
    result.train.steps_done = resume_step;
    result.train.last_checkpoint_step = latest.has_value() ? latest->step : -1;
    ST_RETURN_IF_ERROR(
        Message(sink, phase, absl::StrCat("stopped after ", what, "; run the same job again to resume")));
    ST_RETURN_IF_ERROR(sink->Flush());
    return true;
  };
  bool stop_now = false;

  // --- load ---
  auto phase_start = Clock::now();
  ST_ASSIGN_OR_RETURN(JobBackend opened, OpenJobBackend(spec.device(), spec.num_threads(), comm->local_rank()));
  std::unique_ptr<model::ModelBackend> backend = std::move(opened.backend);
  result.device = opened.device;
  if (!opened.notice.empty()) result.notes.push_back(opened.notice);
  ST_RETURN_IF_ERROR(Message(
      sink, train::Phase::kLoad,
      absl::StrCat("job ", spec.name(), ": loading ", spec.base_model(), " on ",
                   backend->device().is_cpu() ? std::string("the CPU") : result.device,
                   backend->device().is_cpu() ? "" : absl::StrCat(" (", DTypeName(backend->activation_dtype()), ")"),
                   opened.notice.empty() ? "" : absl::StrCat(" (", opened.notice, ")"),
                   comm->size() > 1 ? absl::StrCat(", ", comm->size(), " ranks over ", comm->name())
                                    : std::string())));
  ST_ASSIGN_OR_RETURN(ModelBundle bundle, InPhase("load", LoadModelBundle(spec.base_model(), *backend)));
  ST_ASSIGN_OR_RETURN(peft::AdapterOptions adapter_options, AdapterOptionsFromSpec(spec.method()));
  absl::StatusOr<std::vector<peft::TargetModule>> targets_or =
      peft::ResolveTargetModules(TargetModulesFromSpec(spec.method()), bundle.config.num_layers);
  if (!targets_or.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("method.target_modules: ", targets_or.status().message(), " (model ", spec.base_model(), ")"));
  }
  const std::vector<peft::TargetModule> targets = *std::move(targets_or);
  ST_RETURN_IF_ERROR(CheckRankFits(bundle.config, adapter_options, targets));

  data::SampleEncoder encoder;
  encoder.tokenizer = &bundle.tokenizer;
  encoder.chat_template = bundle.chat_template.has_value() ? &*bundle.chat_template : nullptr;
  encoder.bos_ids = bundle.bos_ids;
  encoder.eos_id = bundle.eos_id;
  ST_ASSIGN_OR_RETURN(data::Dataset train_data, InPhase("datasets", LoadTrainingData(spec, encoder)));
  ST_ASSIGN_OR_RETURN(std::vector<train::EvalSet> eval_sets,
                      InPhase("eval_datasets", LoadEvalSets(spec, encoder)));
  ST_ASSIGN_OR_RETURN(const std::string model_fp, ModelFingerprint(bundle, *backend));
  const std::string identity = JobIdentity(spec, model_fp);
  ST_RETURN_IF_ERROR(Message(
      sink, train::Phase::kLoad,
      absl::StrFormat("%d layers, hidden %d, vocab %d; %s rank %d on %d modules; %d training samples (%d tokens, %d "
                      "trained)",
                      bundle.config.num_layers, bundle.config.hidden_size, bundle.config.vocab_size,
                      peft::MethodName(adapter_options.method), adapter_options.rank, targets.size(),
                      train_data.samples.size(), train_data.tokens, train_data.trained_tokens)));
  result.times.push_back({"load", Since(phase_start)});
  ST_ASSIGN_OR_RETURN(stop_now, stopped_after(train::Phase::kLoad, "load"));
  if (stop_now) return result;
  const int64_t batch_tokens = spec.micro_batch_size() * spec.sequence_len();

  // --- evaluate before (on the original model; kept for resumes) ---
  phase_start = Clock::now();
  const std::string before_path = absl::StrCat(out, "/eval_before.json");
  bool have_before = !leader;  // the leader evaluates; the other ranks go on to the next collective
  if (leader && formats::RegularFileExists(before_path)) {
    absl::StatusOr<std::string> text = formats::ReadFileToString(before_path);
    if (text.ok()) {
      absl::StatusOr<std::vector<train::EvalResult>> parsed = ParseEvalResults(*text, identity);
      if (parsed.ok() && parsed->size() == eval_sets.size()) {
        result.before = *std::move(parsed);
        have_before = true;
        ST_RETURN_IF_ERROR(Message(sink, train::Phase::kEvaluate, "before: reused " + before_path));
      }
    }
  }
  if (!have_before && !eval_sets.empty()) {
    ST_ASSIGN_OR_RETURN(auto original, model::LlamaModel::Create(bundle.config, bundle.weights, backend.get()));
    ST_ASSIGN_OR_RETURN(result.before,
                        InPhase("evaluate (before)",
                                EvaluateAll(*original, eval_sets, bundle, batch_tokens, "before", sink)));
    ST_RETURN_IF_ERROR(formats::WriteFileAtomically(before_path, EvalResultsToJson(result.before, identity)));
  }
  result.times.push_back({"evaluate_before", Since(phase_start)});
  ST_ASSIGN_OR_RETURN(stop_now, stopped_after(train::Phase::kEvaluate, "evaluate (before)"));
  if (stop_now) return result;

  // --- calibrate + decompose (or the saved decomposition) ---
  const std::string decomposition_path = absl::StrCat(out, "/decomposition.safetensors");
  std::vector<train::TrainedLinear> linears;
  const WorkPlan plan = PlanWork(bundle.config, targets, adapter_options.method, comm->size());
  // The leader decides whether the saved decomposition is reused; every rank then reads it.
  std::string reuse = leader && formats::RegularFileExists(decomposition_path) ? "reuse" : "";
  ST_RETURN_IF_ERROR(comm->Broadcast(0, &reuse));
  if (!reuse.empty()) {
    absl::StatusOr<std::vector<train::TrainedLinear>> read =
        ReadDecomposition(decomposition_path, identity, bundle.weights, adapter_options, targets, *backend);
    if (read.ok()) {
      linears = *std::move(read);
      ST_RETURN_IF_ERROR(Message(sink, train::Phase::kDecompose, "reused " + decomposition_path));
    } else {
      result.notes.push_back(absl::StrCat("decomposition not reused (", read.status().message(), ")"));
    }
  }
  // All ranks recompute if any could not read it.
  int64_t missing[1] = {linears.empty() ? 1 : 0};
  ST_RETURN_IF_ERROR(comm->AllReduceSum(absl::MakeSpan(missing, 1)));
  if (missing[0] > 0) linears.clear();
  if (linears.empty()) {
    std::optional<peft::CovarianceSet> covariance;
    if (peft::NeedsCovariance(adapter_options.method)) {
      phase_start = Clock::now();
      ST_ASSIGN_OR_RETURN(auto samples, InPhase("calibration", LoadCalibration(spec, encoder)));
      std::vector<std::pair<int64_t, model::LinearKind>> pairs;
      for (const peft::TargetModule& t : targets) pairs.push_back({t.layer, t.kind});
      const std::vector<peft::SiteKey> sites = peft::SitesOf(pairs);
      CalibrateOptions calibrate;
      calibrate.accumulation =
          spec.calibration().accumulation() == "f64" ? peft::Accumulation::kF64 : peft::Accumulation::kF32;
      calibrate.batch_tokens = std::max<int64_t>(batch_tokens, spec.calibration().max_seq_len());
      calibrate.key.model = model_fp;
      calibrate.key.data = SamplesFingerprint(samples);
      for (const peft::SiteKey& s : sites) calibrate.key.sites.push_back(peft::SiteTensorName(s));
      calibrate.key.accumulation = spec.calibration().accumulation();
      if (spec.cache_dir() != "none") {
        ST_RETURN_IF_ERROR(formats::CreateDirectoryDurably(spec.cache_dir()));
        calibrate.cache_dir = spec.cache_dir();
      }
      ST_ASSIGN_OR_RETURN(auto original, model::LlamaModel::Create(bundle.config, bundle.weights, backend.get()));
      ST_ASSIGN_OR_RETURN(covariance, InPhase("calibrate", Calibrate(*original, *comm, plan, sites, samples, calibrate,
                                                                      sink, &result.notes)));
      result.times.push_back({"calibrate", Since(phase_start)});
      ST_ASSIGN_OR_RETURN(stop_now, stopped_after(train::Phase::kCalibrate, "calibrate"));
      if (stop_now) return result;
    }
    phase_start = Clock::now();
    ST_ASSIGN_OR_RETURN(linears, InPhase("decompose", Decompose(*backend, *comm, plan, bundle.weights,
                                                                adapter_options, targets,
                                                                covariance ? &*covariance : nullptr,
                                                                static_cast<uint64_t>(spec.seed()), sink)));
    covariance.reset();
    if (leader) {
      const absl::Status saved = WriteDecomposition(decomposition_path, identity, adapter_options, linears, *backend);
      if (!saved.ok()) return InPhase("decompose", saved);
    }
    result.times.push_back({"decompose", Since(phase_start)});
    ST_ASSIGN_OR_RETURN(stop_now, stopped_after(train::Phase::kDecompose, "decompose"));
    if (stop_now) return result;
  }

  // --- train ---
  phase_start = Clock::now();
  model::LlamaWeights residual = bundle.weights;
  for (const train::TrainedLinear& linear : linears) {
    model::LayerWeights& layer = residual.layers[linear.target.layer];
    Tensor* slot = nullptr;
    switch (linear.target.kind) {
      case model::LinearKind::kQ: slot = &layer.q; break;
      case model::LinearKind::kK: slot = &layer.k; break;
      case model::LinearKind::kV: slot = &layer.v; break;
      case model::LinearKind::kO: slot = &layer.o; break;
      case model::LinearKind::kGate: slot = &layer.gate; break;
      case model::LinearKind::kUp: slot = &layer.up; break;
      case model::LinearKind::kDown: slot = &layer.down; break;
    }
    *slot = linear.init.w_res;
  }
  ST_ASSIGN_OR_RETURN(auto model, model::LlamaModel::Create(bundle.config, residual, backend.get()));
  std::vector<std::unique_ptr<peft::LowRankAdapter>> adapters;
  std::vector<train::TrainableLinear> trainable;
  for (const train::TrainedLinear& linear : linears) {
    ST_ASSIGN_OR_RETURN(auto adapter, peft::LowRankAdapter::Create(backend.get(), linear.a, linear.b, linear.d,
                                                                   linear.init.scale, adapter_options.dropout));
    model->SetAdapter(linear.target.layer, linear.target.kind, adapter.get());
    trainable.push_back({linear.target, adapter.get()});
    adapters.push_back(std::move(adapter));
  }
  data::LoaderOptions loader_options;
  loader_options.micro_batch_size = spec.micro_batch_size();
  loader_options.sequence_len = spec.sequence_len();
  loader_options.packing = spec.sample_packing() ? data::Packing::kYes : data::Packing::kNo;
  loader_options.seed = static_cast<uint64_t>(spec.seed());
  ST_ASSIGN_OR_RETURN(data::DataLoader loader, data::DataLoader::Create(&train_data, loader_options));
  train::TrainerOptions trainer_options;
  if (spec.max_steps() > 0) {
    trainer_options.total_steps = spec.max_steps();
  } else {
    int64_t micro = 0;
    for (int64_t e = 0; e < spec.num_epochs(); ++e) micro += loader.MicroBatchesInEpoch(e);
    trainer_options.total_steps = std::max<int64_t>(1, micro / spec.gradient_accumulation_steps());
  }
  result.total_steps = trainer_options.total_steps;
  if (spec.gradient_accumulation_steps() < comm->size()) {
    result.notes.push_back(absl::StrFormat(
        "gradient_accumulation_steps (%d) is below the number of ranks (%d): %d rank(s) idle in every training step; "
        "the global batch is micro_batch_size x gradient_accumulation_steps whatever the world size",
        spec.gradient_accumulation_steps(), comm->size(), comm->size() - spec.gradient_accumulation_steps()));
    ST_RETURN_IF_ERROR(Message(sink, train::Phase::kTrain, "warning: " + result.notes.back()));
  }
  trainer_options.accumulation = spec.gradient_accumulation_steps();
  trainer_options.adamw.lr = spec.optimizer().learning_rate();
  trainer_options.adamw.beta1 = spec.optimizer().beta1();
  trainer_options.adamw.beta2 = spec.optimizer().beta2();
  trainer_options.adamw.eps = spec.optimizer().epsilon();
  trainer_options.adamw.weight_decay = spec.optimizer().weight_decay();
  trainer_options.adamw.max_grad_norm = spec.optimizer().max_grad_norm();
  ST_ASSIGN_OR_RETURN(trainer_options.schedule.kind, train::ParseScheduleKind(spec.lr_scheduler().type()));
  trainer_options.schedule.total_steps = trainer_options.total_steps;
  trainer_options.schedule.warmup_steps = train::WarmupStepsFor(
      spec.lr_scheduler().warmup_steps(), spec.lr_scheduler().warmup_ratio(), trainer_options.total_steps);
  trainer_options.save_steps = spec.save_steps();
  trainer_options.logging_steps = spec.logging_steps();
  trainer_options.seed = static_cast<uint64_t>(spec.seed());
  if (adapter_options.method == peft::Method::kKasa) {
    trainer_options.regularizer = train::Regularizer::kKasa;
    trainer_options.kasa.form = adapter_options.kasa_form;
    trainer_options.kasa.beta = adapter_options.kasa_beta;
    trainer_options.kasa.gamma = adapter_options.kasa_gamma;
    trainer_options.kasa.weight = adapter_options.kasa_form == peft::KasaRegularizerForm::kReference
                                      ? 1.0 / static_cast<double>(targets.size())
                                      : 1.0;
  }
  trainer_options.identity = identity;
  trainer_options.stop = options.stop;
  trainer_options.stop_after_step = options.stop_after_step;
  ST_ASSIGN_OR_RETURN(auto trainer, train::Trainer::Create(model.get(), trainable, &loader, trainer_options, sink,
                                                           &store, comm));
  if (latest.has_value()) {
    ST_RETURN_IF_ERROR(InPhase("resume", trainer->Restore(*latest)));
    ST_RETURN_IF_ERROR(Message(sink, train::Phase::kTrain,
                               absl::StrFormat("resumed from %s (step %d of %d)", latest->dir, latest->step,
                                               trainer_options.total_steps)));
  }
  absl::StatusOr<train::TrainSummary> summary = trainer->Run();
  if (!summary.ok()) {
    const std::vector<int64_t> steps = store.ListSteps();
    return absl::Status(summary.status().code(),
                        absl::StrCat("train: ", summary.status().message(),
                                     steps.empty() ? std::string(" (no checkpoint was written)")
                                                   : absl::StrCat(" (the newest checkpoint, step ", steps.back(),
                                                                  ", is intact in ", store.root(), ")")));
  }
  result.train = *std::move(summary);
  result.times.push_back({"train", Since(phase_start)});
  if (result.train.stopped_early) {
    result.stopped_early = true;
    ST_RETURN_IF_ERROR(Message(sink, train::Phase::kTrain,
                               absl::StrFormat("stopped at step %d of %d; run the same job again to resume",
                                               result.train.steps_done, trainer_options.total_steps)));
    ST_RETURN_IF_ERROR(sink->Flush());
    return result;
  }

  // The leader evaluates, exports and reports; the others wait for it so the group's exit status
  // is the whole job's.
  if (!leader) {
    ST_RETURN_IF_ERROR(comm->Barrier());
    return result;
  }

  // --- evaluate after ---
  phase_start = Clock::now();
  for (auto& adapter : adapters) adapter->set_mode(peft::AdapterMode::kEval);
  ST_ASSIGN_OR_RETURN(result.after, InPhase("evaluate (after)",
                                            EvaluateAll(*model, eval_sets, bundle, batch_tokens, "after", sink)));
  result.times.push_back({"evaluate_after", Since(phase_start)});

  // --- export ---
  phase_start = Clock::now();
  ST_RETURN_IF_ERROR(Message(sink, train::Phase::kExport, "writing the adapter, the plain LoRA and the merged model"));
  train::ExportInputs inputs;
  inputs.config = bundle.config;
  inputs.options = adapter_options;
  for (size_t i = 0; i < linears.size(); ++i) {
    train::TrainedLinear linear = linears[i];
    ST_ASSIGN_OR_RETURN(linear.a, backend->Download(adapters[i]->a()));
    ST_ASSIGN_OR_RETURN(linear.b, backend->Download(adapters[i]->b()));
    if (adapters[i]->d().defined()) {
      ST_ASSIGN_OR_RETURN(linear.d, backend->Download(adapters[i]->d()));
    }
    for (Tensor* t : {&linear.init.a, &linear.init.b, &linear.init.d, &linear.init.w_res, &linear.init.tail_u,
                      &linear.init.tail_s, &linear.init.tail_vt}) {
      if (!t->defined()) continue;
      ST_ASSIGN_OR_RETURN(*t, backend->Download(*t));
    }
    inputs.linears.push_back(std::move(linear));
  }
  ST_ASSIGN_OR_RETURN(inputs.weights, InPhase("export", OnHost(bundle.weights, *backend)));
  train::ExportOptions export_options;
  export_options.max_position_embeddings = bundle.max_position_embeddings;
  export_options.bos_token_id = bundle.bos_token_id;
  export_options.eos_token_ids = bundle.eos_token_ids;
  export_options.pad_token_id = bundle.pad_token_id;
  export_options.base_model_name_or_path = spec.base_model();
  const bool changes_base = peft::ChangesBase(adapter_options.method);
  result.exports.adapter = absl::StrCat(out, "/", train::kAdapterDir);
  result.exports.residual_base = changes_base ? absl::StrCat(out, "/", train::kResidualBaseDir) : "";
  result.exports.adapter_lora = absl::StrCat(out, "/", train::kAdapterLoraDir);
  ST_RETURN_IF_ERROR(InPhase("export", train::ValidateExportInputs(inputs, export_options)));
  ST_RETURN_IF_ERROR(InPhase("export", train::ExportNativeAdapter(inputs, export_options, result.exports.adapter,
                                                                  result.exports.residual_base)));
  ST_RETURN_IF_ERROR(InPhase("export", train::ExportPlainLora(inputs, export_options, result.exports.adapter_lora)));
  if (!spec.has_export_merged() || spec.export_merged()) {
    result.exports.merged = absl::StrCat(out, "/", train::kMergedDir);
    ST_RETURN_IF_ERROR(InPhase("export", train::ExportMerged(inputs, export_options, result.exports.merged)));
  }
  result.times.push_back({"export", Since(phase_start)});

  // --- report ---
  ST_RETURN_IF_ERROR(WriteReport(spec, result, identity, &result.report_text));
  ST_RETURN_IF_ERROR(Message(sink, train::Phase::kDone, absl::StrCat("report: ", out, "/report.json")));
  ST_RETURN_IF_ERROR(sink->Flush());
  ST_RETURN_IF_ERROR(comm->Barrier());
  return result;
}

}  // namespace sigmatune::job
