#include "worker/train/trainer.h"

#include <chrono>
#include <cmath>
#include <utility>

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
constexpr char kOptimizerFile[] = "optimizer.safetensors";
constexpr char kStateFile[] = "trainer_state.json";

// The dropout seed of adapter `index` in micro-batch `micro` of optimizer step `step`.
uint64_t DropoutSeed(uint64_t seed, int64_t step, int64_t micro, size_t index) {
  return SplitMix64(SplitMix64(SplitMix64(seed ^ 0x5eedda7aull) + static_cast<uint64_t>(step)) +
                  (static_cast<uint64_t>(micro) << 32) + index);
}

std::string ParamName(const TrainableLinear& linear, absl::string_view which) {
  return absl::StrCat(linear.target.name(), ".", which);
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
  std::vector<AdamW::Param> params;
  for (TrainableLinear& linear : trainer->linears_) {
    ST_CHECK(linear.adapter != nullptr);
    peft::LowRankAdapter& a = *linear.adapter;
    params.push_back({ParamName(linear, "lora_A"), &a.a(), &a.grad_a()});
    params.push_back({ParamName(linear, "lora_B"), &a.b(), &a.grad_b()});
    if (a.has_diagonal() == peft::HasDiagonal::kYes) {
      params.push_back({ParamName(linear, "lora_diag"), &a.d(), &a.grad_d()});
    }
  }
  ST_ASSIGN_OR_RETURN(trainer->optimizer_, AdamW::Create(&model->backend(), std::move(params), trainer->options_.adamw));
  return trainer;
}

absl::Status Trainer::Emit(const ProgressEvent& event) {
  if (sink_ == nullptr || !comm_->is_leader()) return absl::OkStatus();
  return sink_->OnEvent(event);
}

absl::StatusOr<double> Trainer::StepOnce(int64_t* tokens, double* grad_norm, double* reg_value, double* lr) {
  model::ModelBackend& backend = model_->backend();
  std::vector<data::MicroBatch> micros;
  double counts[2] = {0, 0};  // trained tokens, tokens
  for (int64_t i = 0; i < options_.accumulation; ++i) {
    micros.push_back(loader_->Next());
    counts[0] += static_cast<double>(micros.back().trained_tokens);
    counts[1] += static_cast<double>(micros.back().tokens);
  }
  ST_RETURN_IF_ERROR(comm_->AllReduceSum(absl::MakeSpan(counts, 2)));
  const double total_targets = counts[0];
  *tokens = static_cast<int64_t>(counts[1]);

  double loss_sum = 0.0;
  for (int64_t i = 0; i < options_.accumulation; ++i) {
    for (size_t j = 0; j < linears_.size(); ++j) {
      linears_[j].adapter->set_dropout_seed(DropoutSeed(options_.seed, step_, i, j));
    }
    ST_ASSIGN_OR_RETURN(model::Batch batch, data::MakeBatch(backend, micros[i]));
    ST_ASSIGN_OR_RETURN(model::ForwardResult result, model_->Forward(batch));
    if (!std::isfinite(result.loss)) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "training diverged: the loss is %f at step %d (micro-batch %d); lower optimizer.learning_rate or check "
          "the data",
          result.loss, step_ + 1, i + 1));
    }
    if (result.num_targets == 0) continue;
    loss_sum += result.loss * static_cast<double>(result.num_targets);
    ST_RETURN_IF_ERROR(
        model_->Backward(nullptr, static_cast<double>(result.num_targets) / total_targets).status());
  }
  double loss_total[1] = {loss_sum};
  ST_RETURN_IF_ERROR(comm_->AllReduceSum(absl::MakeSpan(loss_total, 1)));
  const double loss = total_targets > 0 ? loss_total[0] / total_targets : 0.0;

  *reg_value = 0.0;
  if (options_.regularizer == Regularizer::kKasa) {
    for (TrainableLinear& linear : linears_) {
      peft::LowRankAdapter& a = *linear.adapter;
      ST_ASSIGN_OR_RETURN(peft::KasaRegularizerValue value,
                          peft::KasaRegularizer(backend, options_.kasa, a.a(), a.b(), a.d(), &a.grad_a(),
                                                &a.grad_b(), &a.grad_d()));
      *reg_value += value.total;
    }
  }
  *lr = options_.adamw.lr * LearningRateFactor(options_.schedule, step_);
  absl::StatusOr<AdamW::StepStats> stats = optimizer_->Step(*lr, 1.0);
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
  model::ModelBackend& backend = model_->backend();
  std::map<std::string, Tensor> adapter;
  for (const AdamW::Param& param : optimizer_->params()) {
    ST_ASSIGN_OR_RETURN(adapter[param.name], backend.Download(*param.value));
  }
  ST_ASSIGN_OR_RETURN(auto optimizer, optimizer_->StateTensors());
  std::map<std::string, std::string> files;
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  ST_ASSIGN_OR_RETURN(files[kAdapterFile], formats::SerializeSafetensors(adapter, metadata));
  ST_ASSIGN_OR_RETURN(files[kOptimizerFile], formats::SerializeSafetensors(optimizer, metadata));
  const data::LoaderPosition position = loader_->position();
  nlohmann::json state = {{"step", step_},
                          {"optimizer_step", optimizer_->step()},
                          {"epoch", position.epoch},
                          {"index", position.index},
                          {"tokens_seen", tokens_seen_},
                          {"seed", options_.seed},
                          {"total_steps", options_.total_steps},
                          {"identity", options_.identity}};
  files[kStateFile] = state.dump(2) + "\n";
  return files;
}

absl::Status Trainer::Restore(const checkpoint::LoadedCheckpoint& checkpoint) {
  const std::string where = checkpoint.dir;
  for (const char* name : {kAdapterFile, kOptimizerFile, kStateFile}) {
    if (checkpoint.files.count(name) == 0) {
      return absl::DataLossError(absl::StrCat("checkpoint ", where, " has no ", name));
    }
  }
  const nlohmann::json state = nlohmann::json::parse(checkpoint.files.at(kStateFile), nullptr, false);
  if (state.is_discarded() || !state.is_object() || !state.contains("step") || !state["step"].is_number_integer() ||
      !state.contains("epoch") || !state.contains("index") || !state.contains("identity") ||
      !state["identity"].is_string()) {
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
  model::ModelBackend& backend = model_->backend();
  for (const AdamW::Param& param : optimizer_->params()) {
    absl::StatusOr<Tensor> host = adapter.GetTensor(param.name);
    if (!host.ok()) return absl::DataLossError(absl::StrCat(where, "/", kAdapterFile, ": ", host.status().message()));
    if (host->shape() != param.value->shape() || host->dtype() != param.value->dtype()) {
      return absl::FailedPreconditionError(absl::StrCat(where, "/", kAdapterFile, ": ", param.name,
                                                        " has another shape or dtype than this job's adapter"));
    }
    ST_ASSIGN_OR_RETURN(Tensor device, backend.Upload(*host));
    ST_RETURN_IF_ERROR(backend.Copy(device, param.value));
  }
  ST_ASSIGN_OR_RETURN(formats::SafetensorsReader optimizer,
                      formats::SafetensorsReader::FromBuffer(checkpoint.files.at(kOptimizerFile),
                                                             absl::StrCat(where, "/", kOptimizerFile)));
  std::map<std::string, Tensor> tensors;
  for (const std::string& name : optimizer.names()) {
    ST_ASSIGN_OR_RETURN(tensors[name], optimizer.GetTensor(name));
  }
  const int64_t optimizer_step =
      state.contains("optimizer_step") && state["optimizer_step"].is_number_integer() ? state["optimizer_step"].get<int64_t>()
                                                                                      : state["step"].get<int64_t>();
  ST_RETURN_IF_ERROR(optimizer_->LoadState(tensors, optimizer_step));
  ST_RETURN_IF_ERROR(loader_->Restore({state["epoch"].get<int64_t>(), state["index"].get<int64_t>()}));
  step_ = state["step"].get<int64_t>();
  tokens_seen_ = state.contains("tokens_seen") && state["tokens_seen"].is_number_integer()
                     ? state["tokens_seen"].get<int64_t>()
                     : 0;
  return absl::OkStatus();
}

absl::Status Trainer::Save(TrainSummary* summary) {
  if (store_ == nullptr) return absl::OkStatus();
  if (summary->last_checkpoint_step == step_) return absl::OkStatus();
  const auto start = std::chrono::steady_clock::now();
  ST_ASSIGN_OR_RETURN(auto files, CheckpointFiles());
  if (comm_->is_leader()) ST_RETURN_IF_ERROR(store_->Save(step_, files));
  ST_RETURN_IF_ERROR(comm_->Barrier());
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
    const bool stop = (options_.stop != nullptr && options_.stop->load()) ||
                      (options_.stop_after_step >= 0 && step_ >= options_.stop_after_step);
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
