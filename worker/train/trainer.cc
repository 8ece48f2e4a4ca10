#include "worker/train/trainer.h"

#include <chrono>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "formats/safetensors.h"
#include "kernels/base/check.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace sigmatune::train {
namespace {

constexpr char kAdapterFile[] = "adapter.safetensors";
constexpr char kStateFile[] = "trainer_state.json";
// Optimizer state files: "optimizer-<rank>-of-<size>.safetensors", or the single-process
// "optimizer.safetensors" of older checkpoints.
constexpr char kOptimizerPrefix[] = "optimizer";
constexpr char kOptimizerSuffix[] = ".safetensors";

// The dropout seed of adapter `index` in micro-batch `micro` of optimizer step `step`.
uint64_t DropoutSeed(uint64_t seed, int64_t step, int64_t micro, size_t index) {
  return SplitMix64(SplitMix64(SplitMix64(seed ^ 0x5eedda7aull) + static_cast<uint64_t>(step)) +
                  (static_cast<uint64_t>(micro) << 32) + index);
}

std::string ParamName(const TrainableLinear& linear, absl::string_view which) {
  return absl::StrCat(linear.target.name(), ".", which);
}

// A rank's outcome as one message: "O" + payload, or "E<code>:<message>".
std::string EncodeOutcome(const absl::Status& status, absl::string_view payload) {
  if (status.ok()) return absl::StrCat("O", payload);
  return absl::StrCat("E", static_cast<int>(status.code()), ":", status.message());
}
absl::StatusOr<std::string> DecodeOutcome(const std::string& bytes) {
  if (!bytes.empty() && bytes[0] == 'O') return bytes.substr(1);
  const size_t colon = bytes.find(':');
  int code = 0;
  if (bytes.empty() || bytes[0] != 'E' || colon == std::string::npos ||
      !absl::SimpleAtoi(absl::string_view(bytes).substr(1, colon - 1), &code) || code <= 0 || code > 16) {
    return absl::InternalError("a peer sent a malformed checkpoint message");
  }
  return absl::Status(static_cast<absl::StatusCode>(code), bytes.substr(colon + 1));
}

std::string EncodeEntries(const std::vector<checkpoint::FileEntry>& entries) {
  nlohmann::json list = nlohmann::json::array();
  for (const checkpoint::FileEntry& e : entries) {
    list.push_back({{"name", e.name}, {"size", e.size}, {"checksum", e.checksum}});
  }
  return list.dump();
}
absl::StatusOr<std::vector<checkpoint::FileEntry>> DecodeEntries(const std::string& bytes) {
  const nlohmann::json list = nlohmann::json::parse(bytes, nullptr, false);
  if (list.is_discarded() || !list.is_array()) return absl::InternalError("a peer sent malformed file entries");
  std::vector<checkpoint::FileEntry> entries;
  for (const nlohmann::json& e : list) {
    if (!e.is_object() || !e.contains("name") || !e["name"].is_string() || !e.contains("size") ||
        !e["size"].is_number_unsigned() || !e.contains("checksum") || !e["checksum"].is_string()) {
      return absl::InternalError("a peer sent a malformed file entry");
    }
    entries.push_back({e["name"].get<std::string>(), e["size"].get<uint64_t>(), e["checksum"].get<std::string>()});
  }
  return entries;
}

}  // namespace

Trainer::Trainer(model::LlamaModel* model, std::vector<TrainableLinear> linears, data::DataLoader* loader,
                 TrainerOptions options, ProgressSink* sink, checkpoint::CheckpointStore* store,
                 comm::Communicator* comm)
    : model_(model),
      linears_(std::move(linears)),
      loader_(loader),
      options_(std::move(options)),
      sink_(sink),
      store_(store),
      comm_(comm) {}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(model::LlamaModel* model,
                                                         std::vector<TrainableLinear> linears,
                                                         data::DataLoader* loader, TrainerOptions options,
                                                         ProgressSink* sink, checkpoint::CheckpointStore* store,
                                                         comm::Communicator* comm) {
  ST_CHECK(model != nullptr && loader != nullptr && comm != nullptr);
  if (linears.empty()) return absl::InvalidArgumentError("trainer: no adapted linears to train");
  if (options.total_steps < 1 || options.accumulation < 1 || options.logging_steps < 1 || options.save_steps < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "trainer: total_steps (%d), accumulation (%d) and logging_steps (%d) must be >= 1, save_steps (%d) >= 0",
        options.total_steps, options.accumulation, options.logging_steps, options.save_steps));
  }
  std::unique_ptr<Trainer> trainer(
      new Trainer(model, std::move(linears), loader, std::move(options), sink, store, comm));
  std::vector<ShardedAdamW::Param> params;
  for (TrainableLinear& linear : trainer->linears_) {
    ST_CHECK(linear.adapter != nullptr);
    peft::LowRankAdapter& a = *linear.adapter;
    params.push_back({ParamName(linear, "lora_A"), &a.a(), &a.grad_a()});
    params.push_back({ParamName(linear, "lora_B"), &a.b(), &a.grad_b()});
    if (a.has_diagonal() == peft::HasDiagonal::kYes) {
      params.push_back({ParamName(linear, "lora_diag"), &a.d(), &a.grad_d()});
    }
  }
  ST_ASSIGN_OR_RETURN(trainer->optimizer_,
                      ShardedAdamW::Create(&model->backend(), comm, std::move(params), trainer->options_.adamw));
  return trainer;
}

absl::Status Trainer::Emit(const ProgressEvent& event) {
  if (sink_ == nullptr || !comm_->is_leader()) return absl::OkStatus();
  return sink_->OnEvent(event);
}

absl::StatusOr<double> Trainer::StepOnce(int64_t* tokens, double* grad_norm, double* reg_value, double* lr) {
  model::ModelBackend& backend = model_->backend();
  const int64_t accumulation = options_.accumulation;
  // Every rank draws every micro-batch of the step (the loaders are identical), so N is known here.
  std::vector<data::MicroBatch> micros;
  double total_targets = 0.0;
  int64_t step_tokens = 0;
  for (int64_t i = 0; i < accumulation; ++i) {
    micros.push_back(loader_->Next());
    total_targets += static_cast<double>(micros.back().trained_tokens);
    step_tokens += micros.back().tokens;
  }
  *tokens = step_tokens;

  // This rank's micro-batches; sums[i] = loss_i * n_i (the loss itself when it is not finite), 0
  // for the other ranks' micro-batches.
  std::vector<double> sums(static_cast<size_t>(accumulation), 0.0);
  for (int64_t i = comm_->rank(); i < accumulation; i += comm_->size()) {
    for (size_t j = 0; j < linears_.size(); ++j) {
      linears_[j].adapter->set_dropout_seed(DropoutSeed(options_.seed, step_, i, j));
    }
    ST_ASSIGN_OR_RETURN(model::Batch batch, data::MakeBatch(backend, micros[i]));
    ST_ASSIGN_OR_RETURN(model::ForwardResult result, model_->Forward(batch));
    if (!std::isfinite(result.loss)) {
      sums[i] = result.loss;
      break;  // the step fails on every rank after the reduction below
    }
    if (result.num_targets == 0) continue;
    sums[i] = result.loss * static_cast<double>(result.num_targets);
    ST_RETURN_IF_ERROR(
        model_->Backward(nullptr, static_cast<double>(result.num_targets) / total_targets).status());
  }
  ST_RETURN_IF_ERROR(AllReduceScalars(*comm_, backend, absl::MakeSpan(sums)));
  double loss_sum = 0.0;
  for (int64_t i = 0; i < accumulation; ++i) {
    if (!std::isfinite(sums[i])) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "training diverged: the loss is %f at step %d (micro-batch %d); lower optimizer.learning_rate or check "
          "the data",
          sums[i], step_ + 1, i + 1));
    }
    loss_sum += sums[i];
  }
  const double loss = total_targets > 0 ? loss_sum / total_targets : 0.0;

  *reg_value = 0.0;
  if (options_.regularizer == Regularizer::kKasa && comm_->is_leader()) {  // once for the group
    for (TrainableLinear& linear : linears_) {
      peft::LowRankAdapter& a = *linear.adapter;
      ST_ASSIGN_OR_RETURN(peft::KasaRegularizerValue value,
                          peft::KasaRegularizer(backend, options_.kasa, a.a(), a.b(), a.d(), &a.grad_a(),
                                                &a.grad_b(), &a.grad_d()));
      *reg_value += value.total;
    }
  }
  *lr = options_.adamw.lr * LearningRateFactor(options_.schedule, step_);
  absl::StatusOr<ShardedAdamW::StepStats> stats = optimizer_->Step(*lr, 1.0);
  if (!stats.ok()) {
    return absl::Status(stats.status().code(),
                        absl::StrCat("step ", step_ + 1, " (loss ", loss, "): ", stats.status().message()));
  }
  *grad_norm = stats->grad_norm;
  for (TrainableLinear& linear : linears_) ST_RETURN_IF_ERROR(linear.adapter->ZeroGrad());
  ++step_;
  return loss;
}

absl::StatusOr<std::map<std::string, std::string>> Trainer::CheckpointFiles() const {
  std::map<std::string, std::string> files;
  ST_ASSIGN_OR_RETURN(files[ShardedAdamW::ShardFileName(comm_->rank(), comm_->size())],
                      optimizer_->SerializeShard());
  if (!comm_->is_leader()) return files;
  model::ModelBackend& backend = model_->backend();
  std::map<std::string, Tensor> adapter;
  for (const ShardedAdamW::Param& param : optimizer_->params()) {
    ST_ASSIGN_OR_RETURN(adapter[param.name], backend.Download(*param.value));
  }
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  ST_ASSIGN_OR_RETURN(files[kAdapterFile], formats::SerializeSafetensors(adapter, metadata));
  const data::LoaderPosition position = loader_->position();
  nlohmann::json state = {{"step", step_},
                          {"optimizer_step", optimizer_->step()},
                          {"epoch", position.epoch},
                          {"index", position.index},
                          {"tokens_seen", tokens_seen_},
                          {"seed", options_.seed},
                          {"total_steps", options_.total_steps},
                          {"world_size", comm_->size()},
                          {"identity", options_.identity}};
  files[kStateFile] = state.dump(2) + "\n";
  return files;
}

absl::Status Trainer::Restore(const checkpoint::LoadedCheckpoint& checkpoint) {
  const std::string where = checkpoint.dir;
  for (const char* name : {kAdapterFile, kStateFile}) {
    if (checkpoint.files.count(name) == 0) {
      return absl::DataLossError(absl::StrCat("checkpoint ", where, " has no ", name));
    }
  }
  std::vector<std::pair<std::string, std::string>> optimizer_files;
  for (const auto& [name, bytes] : checkpoint.files) {
    if (absl::StartsWith(name, kOptimizerPrefix) && absl::EndsWith(name, kOptimizerSuffix)) {
      optimizer_files.emplace_back(absl::StrCat(where, "/", name), bytes);
    }
  }
  if (optimizer_files.empty()) {
    return absl::DataLossError(absl::StrCat("checkpoint ", where,
                                            " has no optimizer state (optimizer-<rank>-of-<size>.safetensors)"));
  }
  const nlohmann::json state = nlohmann::json::parse(checkpoint.files.at(kStateFile), nullptr, false);
  if (state.is_discarded() || !state.is_object() || !state.contains("step") || !state["step"].is_number_integer() ||
      !state.contains("epoch") || !state["epoch"].is_number_integer() || !state.contains("index") ||
      !state["index"].is_number_integer() || !state.contains("identity") || !state["identity"].is_string()) {
    return absl::DataLossError(absl::StrCat(where, "/", kStateFile, " does not parse or lacks step/epoch/index/identity"));
  }
  if (state["identity"].get<std::string>() != options_.identity) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", where, " belongs to another job (identity ", state["identity"].get<std::string>(),
        ", this job ", options_.identity, "); use a new output_dir or remove the old checkpoints"));
  }
  ST_ASSIGN_OR_RETURN(formats::SafetensorsReader adapter,
                      formats::SafetensorsReader::FromBuffer(checkpoint.files.at(kAdapterFile),
                                                             absl::StrCat(where, "/", kAdapterFile)));
  // Everything is checked before anything changes.
  std::vector<Tensor> values;
  for (const ShardedAdamW::Param& param : optimizer_->params()) {
    absl::StatusOr<Tensor> host = adapter.GetTensor(param.name);
    if (!host.ok()) return absl::DataLossError(absl::StrCat(where, "/", kAdapterFile, ": ", host.status().message()));
    if (host->shape() != param.value->shape() || host->dtype() != param.value->dtype()) {
      return absl::FailedPreconditionError(absl::StrCat(where, "/", kAdapterFile, ": ", param.name,
                                                        " has another shape or dtype than this job's adapter"));
    }
    values.push_back(*std::move(host));
  }
  const int64_t optimizer_step =
      state.contains("optimizer_step") && state["optimizer_step"].is_number_integer() ? state["optimizer_step"].get<int64_t>()
                                                                                      : state["step"].get<int64_t>();
  ST_RETURN_IF_ERROR(optimizer_->LoadShards(optimizer_files, optimizer_step));
  ST_RETURN_IF_ERROR(loader_->Restore({state["epoch"].get<int64_t>(), state["index"].get<int64_t>()}));
  model::ModelBackend& backend = model_->backend();
  for (size_t i = 0; i < values.size(); ++i) {
    ST_ASSIGN_OR_RETURN(Tensor device, backend.Upload(values[i]));
    ST_RETURN_IF_ERROR(backend.Copy(device, optimizer_->params()[i].value));
  }
  step_ = state["step"].get<int64_t>();
  tokens_seen_ = state.contains("tokens_seen") && state["tokens_seen"].is_number_integer()
                     ? state["tokens_seen"].get<int64_t>()
                     : 0;
  return absl::OkStatus();
}

absl::Status Trainer::SaveStaged() {
  // 1. The leader begins the checkpoint; every rank learns its directory (or the leader's error).
  std::string begun;
  if (comm_->is_leader()) {
    absl::StatusOr<std::string> dir = store_->BeginStaged(step_);
    begun = EncodeOutcome(dir.status(), dir.ok() ? *dir : "");
  }
  ST_RETURN_IF_ERROR(comm_->Broadcast(0, &begun));
  ST_ASSIGN_OR_RETURN(const std::string staged_dir, DecodeOutcome(begun));

  // 2. Every rank writes its files and reports their entries (or its error) to the leader.
  absl::Status written = absl::OkStatus();
  std::vector<checkpoint::FileEntry> entries;
  absl::StatusOr<std::map<std::string, std::string>> files = CheckpointFiles();
  if (files.ok()) {
    for (const auto& [name, bytes] : *files) {
      absl::StatusOr<checkpoint::FileEntry> entry =
          checkpoint::CheckpointStore::WriteStagedFile(staged_dir, name, bytes);
      if (!entry.ok()) {
        written = entry.status();
        break;
      }
      entries.push_back(*std::move(entry));
    }
  } else {
    written = files.status();
  }
  std::vector<std::string> reports;
  ST_RETURN_IF_ERROR(comm_->Gather(0, EncodeOutcome(written, written.ok() ? EncodeEntries(entries) : ""), &reports));

  // 3. The leader commits (or aborts) and every rank returns its verdict.
  std::string outcome;
  if (comm_->is_leader()) {
    absl::Status committed = absl::OkStatus();
    std::vector<checkpoint::FileEntry> all;
    for (size_t r = 0; r < reports.size() && committed.ok(); ++r) {
      absl::StatusOr<std::string> report = DecodeOutcome(reports[r]);
      absl::StatusOr<std::vector<checkpoint::FileEntry>> rank_entries =
          report.ok() ? DecodeEntries(*report) : absl::StatusOr<std::vector<checkpoint::FileEntry>>(report.status());
      if (!rank_entries.ok()) {
        committed = absl::Status(rank_entries.status().code(),
                                 absl::StrFormat("saving checkpoint step %d: rank %d of %d failed: %s", step_, r,
                                                 comm_->size(), rank_entries.status().message()));
      } else {
        all.insert(all.end(), rank_entries->begin(), rank_entries->end());
      }
    }
    if (committed.ok()) committed = store_->CommitStaged(step_, staged_dir, all);
    if (!committed.ok()) store_->AbortStaged(staged_dir);
    outcome = EncodeOutcome(committed, "");
  }
  ST_RETURN_IF_ERROR(comm_->Broadcast(0, &outcome));
  return DecodeOutcome(outcome).status();
}

absl::Status Trainer::Save(TrainSummary* summary) {
  if (store_ == nullptr) return absl::OkStatus();
  if (summary->last_checkpoint_step == step_) return absl::OkStatus();
  const auto start = std::chrono::steady_clock::now();
  ST_RETURN_IF_ERROR(SaveStaged());
  summary->last_checkpoint_step = step_;
  ProgressEvent event;
  event.phase = Phase::kCheckpoint;
  event.step = step_;
  event.total_steps = options_.total_steps;
  event.wall_time = UnixSeconds();
  event.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  event.message = absl::StrFormat("checkpoint step %d saved in %s", step_, store_->root());
  return Emit(event);
}

absl::StatusOr<TrainSummary> Trainer::Run() {
  TrainSummary summary;
  summary.start_step = step_;
  for (TrainableLinear& linear : linears_) {
    linear.adapter->set_mode(peft::AdapterMode::kTrain);
    ST_RETURN_IF_ERROR(linear.adapter->ZeroGrad());
  }
  const auto start = std::chrono::steady_clock::now();
  while (step_ < options_.total_steps) {
    int64_t tokens = 0;
    double grad_norm = 0.0, reg = 0.0, lr = 0.0;
    ST_ASSIGN_OR_RETURN(const double loss, StepOnce(&tokens, &grad_norm, &reg, &lr));
    summary.losses.push_back(loss);
    summary.last_loss = loss;
    summary.tokens += tokens;
    tokens_seen_ += tokens;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (step_ % options_.logging_steps == 0 || step_ == options_.total_steps) {
      ProgressEvent event;
      event.phase = Phase::kTrain;
      event.step = step_;
      event.total_steps = options_.total_steps;
      event.wall_time = UnixSeconds();
      event.elapsed_s = elapsed;
      event.scalars = {{"loss", loss},
                       {"lr", lr},
                       {"grad_norm", grad_norm},
                       {"tokens_per_s", elapsed > 0 ? static_cast<double>(summary.tokens) / elapsed : 0.0},
                       {"epoch", static_cast<double>(loader_->position().epoch)}};
      if (options_.regularizer != Regularizer::kNone) event.scalars.push_back({"regularizer", reg});
      ST_RETURN_IF_ERROR(Emit(event));
    }
    bool stop = (options_.stop != nullptr && options_.stop->load()) ||
                (options_.stop_after_step >= 0 && step_ >= options_.stop_after_step);
    if (comm_->size() > 1) {
      // The ranks may see a signal at different steps: they stop together when any of them asks.
      double flag[1] = {stop ? 1.0 : 0.0};
      ST_RETURN_IF_ERROR(AllReduceScalars(*comm_, model_->backend(), absl::MakeSpan(flag, 1)));
      stop = flag[0] > 0;
    }
    if (step_ == options_.total_steps || stop || (options_.save_steps > 0 && step_ % options_.save_steps == 0)) {
      ST_RETURN_IF_ERROR(Save(&summary));
    }
    if (stop && step_ < options_.total_steps) {
      summary.stopped_early = true;
      break;
    }
  }
  summary.steps_done = step_;
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  summary.tokens_per_second = summary.seconds > 0 ? static_cast<double>(summary.tokens) / summary.seconds : 0.0;
  return summary;
}

}  // namespace sigmatune::train
