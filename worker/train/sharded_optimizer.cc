#include "worker/train/sharded_optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "formats/safetensors.h"
#include "kernels/base/check.h"
#include "kernels/base/fingerprint.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/adamw.h"

namespace sigmatune::train {
namespace {

// Added to the total norm before dividing, as torch.nn.utils.clip_grad_norm_ (and AdamW).
constexpr double kClipEpsilon = 1e-6;
constexpr char kFormatKey[] = "sigmatune_optimizer";
constexpr char kFormat[] = "adamw-zero1/1";
constexpr char kExpAvg[] = "exp_avg";
constexpr char kExpAvgSq[] = "exp_avg_sq";

template <typename T>
absl::Span<T> MutableSpan(const Tensor& t) {
  return absl::MakeSpan(static_cast<T*>(t.raw_data()), static_cast<size_t>(t.numel()));
}
template <typename T>
absl::Span<const T> ConstSpan(const Tensor& t) {
  return absl::MakeConstSpan(static_cast<const T*>(t.raw_data()), static_cast<size_t>(t.numel()));
}

absl::Status ReduceScatter(comm::Communicator& comm, const Tensor& input, const Tensor& output) {
  if (input.dtype() == DType::kF32) return comm.ReduceScatterSum(ConstSpan<float>(input), MutableSpan<float>(output));
  return comm.ReduceScatterSum(ConstSpan<double>(input), MutableSpan<double>(output));
}

absl::Status Gather(comm::Communicator& comm, const Tensor& input, const Tensor& output) {
  if (input.dtype() == DType::kF32) return comm.AllGather(ConstSpan<float>(input), MutableSpan<float>(output));
  return comm.AllGather(ConstSpan<double>(input), MutableSpan<double>(output));
}

std::string LayoutFingerprint(const std::vector<AdamW::Param>& params, DType dtype) {
  Fingerprint f;
  f.UpdateField("sigmatune-zero1-layout/1").UpdateField(DTypeName(dtype));
  f.UpdateInt(static_cast<int64_t>(params.size()));
  for (const AdamW::Param& p : params) {
    f.UpdateField(p.name).UpdateInt(p.value->rank());
    for (const int64_t d : p.value->shape()) f.UpdateInt(d);
  }
  return f.Hex();
}

// DataLoss naming `what` unless every element of the CPU tensor `t` is finite (and >= 0).
template <typename T>
absl::Status CheckMomentsOf(const Tensor& t, bool non_negative, const std::string& what) {
  const T* data = t.data<T>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (!std::isfinite(data[i]) || (non_negative && data[i] < 0)) {
      return absl::DataLossError(absl::StrCat(what, ": element ", i, " is ", static_cast<double>(data[i]),
                                              non_negative ? " (must be finite and >= 0)" : " (must be finite)"));
    }
  }
  return absl::OkStatus();
}
absl::Status CheckMoments(const Tensor& t, bool non_negative, const std::string& what) {
  return t.dtype() == DType::kF32 ? CheckMomentsOf<float>(t, non_negative, what)
                                  : CheckMomentsOf<double>(t, non_negative, what);
}

// A validated source of moments for the flat elements [begin, end).
struct Piece {
  std::string file;
  int64_t begin = 0;
  int64_t end = 0;
  Tensor exp_avg;     // 1-D contiguous CPU tensors of end - begin elements
  Tensor exp_avg_sq;
};

// What a shard file says about itself.
struct ShardInfo {
  Piece piece;
  int64_t world = 0;
  int64_t rank = 0;
};

absl::StatusOr<int64_t> MetadataInt(const formats::SafetensorsReader& reader, const std::string& file,
                                    const char* key) {
  auto it = reader.metadata().find(key);
  int64_t value = 0;
  if (it == reader.metadata().end() || !absl::SimpleAtoi(it->second, &value)) {
    return absl::DataLossError(absl::StrCat("optimizer shard ", file, ": metadata \"", key,
                                            "\" is missing or not an integer; the file is damaged"));
  }
  return value;
}

// A moment tensor of `reader` as a contiguous CPU tensor of `shape` and `dtype`.
absl::StatusOr<Tensor> MomentTensor(const formats::SafetensorsReader& reader, const std::string& file,
                                    const std::string& name, const Shape& shape, DType dtype, bool non_negative) {
  absl::StatusOr<Tensor> t = reader.GetTensor(name);
  if (!t.ok()) {
    return absl::DataLossError(absl::StrCat("optimizer state ", file, ": ", t.status().message()));
  }
  if (t->dtype() != dtype) {
    return absl::FailedPreconditionError(absl::StrCat("optimizer state ", file, ": tensor ", name, " is ",
                                                      DTypeName(t->dtype()), ", this job's parameters are ",
                                                      DTypeName(dtype)));
  }
  if (t->shape() != shape) {
    return absl::DataLossError(absl::StrCat("optimizer state ", file, ": tensor ", name, " has shape ",
                                            ShapeToString(t->shape()), ", expected ", ShapeToString(shape)));
  }
  Tensor dense = t->is_contiguous() ? *t : t->Contiguous();
  ST_RETURN_IF_ERROR(CheckMoments(dense, non_negative, absl::StrCat("optimizer state ", file, ", tensor ", name)));
  return dense;
}

}  // namespace

absl::Status AllReduceScalars(comm::Communicator& comm, model::ModelBackend& backend, absl::Span<double> values) {
  if (values.empty()) return absl::OkStatus();
  if (comm.memory() == comm::MemorySpace::kHost) return comm.AllReduceSum(values);
  const int64_t n = static_cast<int64_t>(values.size());
  ST_ASSIGN_OR_RETURN(
      const Tensor device,
      backend.Upload(Tensor::FromVector<double>({n}, std::vector<double>(values.begin(), values.end()))));
  ST_RETURN_IF_ERROR(comm.AllReduceSum(MutableSpan<double>(device)));
  ST_ASSIGN_OR_RETURN(const Tensor host, backend.Download(device));
  std::copy(host.data<double>(), host.data<double>() + n, values.begin());
  return absl::OkStatus();
}

std::string ShardedAdamW::ShardFileName(int rank, int size) {
  return absl::StrCat("optimizer-", rank, "-of-", size, ".safetensors");
}

absl::StatusOr<std::unique_ptr<ShardedAdamW>> ShardedAdamW::Create(model::ModelBackend* backend,
                                                                   comm::Communicator* comm, std::vector<Param> params,
                                                                   AdamWOptions options) {
  ST_CHECK(backend != nullptr && comm != nullptr);
  ST_RETURN_IF_ERROR(ValidateAdamWOptions(options));
  ST_RETURN_IF_ERROR(ValidateAdamWParams(backend->device(), params));
  const DType dtype = params.front().value->dtype();
  for (const Param& p : params) {
    if (p.value->dtype() != dtype) {
      return absl::InvalidArgumentError(absl::StrCat("ShardedAdamW: parameter '", p.name, "' is ",
                                                     DTypeName(p.value->dtype()), ", '", params.front().name,
                                                     "' is ", DTypeName(dtype), "; all must have one dtype"));
    }
  }
  const bool on_device = comm->memory() == comm::MemorySpace::kDevice;
  if (on_device && backend->device().is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat("ShardedAdamW: the ", comm->name(),
                                                   " communicator needs device memory, the backend is on the CPU"));
  }
  std::unique_ptr<ShardedAdamW> opt(new ShardedAdamW());
  opt->backend_ = backend;
  opt->comm_ = comm;
  opt->options_ = options;
  opt->dtype_ = dtype;
  for (const Param& p : params) {
    opt->offsets_.push_back(opt->total_);
    opt->total_ += p.value->numel();
  }
  opt->offsets_.push_back(opt->total_);
  opt->range_ = comm::ShardOf(opt->total_, comm->size(), comm->rank());
  opt->layout_ = LayoutFingerprint(params, dtype);
  opt->params_ = std::move(params);
  auto allocate_flat = [&](int64_t n) -> absl::StatusOr<Tensor> {
    if (on_device && n > 0) return backend->Zeros({n}, dtype);
    return Tensor::Zeros({n}, dtype);
  };
  ST_ASSIGN_OR_RETURN(opt->flat_grad_, allocate_flat(opt->total_));
  ST_ASSIGN_OR_RETURN(opt->flat_param_, allocate_flat(opt->total_));
  ST_ASSIGN_OR_RETURN(opt->grad_part_, allocate_flat(opt->range_.size()));
  ST_ASSIGN_OR_RETURN(opt->param_part_, allocate_flat(opt->range_.size()));
  if (opt->range_.size() > 0) {
    ST_ASSIGN_OR_RETURN(opt->exp_avg_, backend->Zeros({opt->range_.size()}, dtype));
    ST_ASSIGN_OR_RETURN(opt->exp_avg_sq_, backend->Zeros({opt->range_.size()}, dtype));
  }
  return opt;
}

absl::Status ShardedAdamW::ToFlat(const Tensor& src, Tensor dst) const {
  if (dst.device() == backend_->device()) return backend_->Copy(src, &dst);
  ST_ASSIGN_OR_RETURN(const Tensor host, backend_->Download(src));
  dst.CopyFrom(host);
  return absl::OkStatus();
}

absl::Status ShardedAdamW::FromFlat(const Tensor& src, Tensor* dst) const {
  if (src.device() == backend_->device()) return backend_->Copy(src, dst);
  ST_ASSIGN_OR_RETURN(const Tensor uploaded, backend_->Upload(src));
  return backend_->Copy(uploaded, dst);
}

absl::StatusOr<ShardedAdamW::StepStats> ShardedAdamW::Step(double lr, double grad_scale) {
  if (!(std::isfinite(lr) && lr >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat("ShardedAdamW::Step: lr must be finite and >= 0, got ", lr));
  }
  if (!(std::isfinite(grad_scale) && grad_scale > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ShardedAdamW::Step: grad_scale must be finite and > 0, got ", grad_scale));
  }
  const int64_t b = range_.begin;
  const int64_t e = range_.end;
  // 1. This rank's part of the group's summed gradient.
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t n = offsets_[i + 1] - offsets_[i];
    if (n == 0) continue;
    ST_RETURN_IF_ERROR(ToFlat(params_[i].grad->Reshape({n}), flat_grad_.Slice(0, offsets_[i], offsets_[i + 1])));
  }
  ST_RETURN_IF_ERROR(ReduceScatter(*comm_, flat_grad_, grad_part_));
  Tensor grad_device = grad_part_;
  if (range_.size() > 0 && grad_part_.device() != backend_->device()) {
    ST_ASSIGN_OR_RETURN(grad_device, backend_->Upload(grad_part_));
  }
  // 2. The global norm: per-parameter segment sums in parameter order (exactly AdamW's on one rank).
  double sum_of_squares[1] = {0.0};
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t lo = std::max(offsets_[i], b);
    const int64_t hi = std::min(offsets_[i + 1], e);
    if (lo >= hi) continue;
    ST_ASSIGN_OR_RETURN(const double sum, backend_->SumOfSquares(grad_device.Slice(0, lo - b, hi - b)));
    sum_of_squares[0] += sum;
  }
  ST_RETURN_IF_ERROR(AllReduceScalars(*comm_, *backend_, absl::MakeSpan(sum_of_squares, 1)));
  StepStats stats;
  stats.lr = lr;
  stats.grad_norm = grad_scale * std::sqrt(sum_of_squares[0]);
  if (!std::isfinite(stats.grad_norm)) {
    return absl::FailedPreconditionError(absl::StrCat("gradient norm is NaN/Inf at step ", step_ + 1, " (",
                                                      stats.grad_norm, "); no parameter was changed"));
  }
  if (options_.max_grad_norm > 0) {
    stats.clip_coef = std::min(1.0, options_.max_grad_norm / (stats.grad_norm + kClipEpsilon));
  }
  // 3. The update of this rank's part.
  if (range_.size() > 0) {
    for (size_t i = 0; i < params_.size(); ++i) {
      const int64_t lo = std::max(offsets_[i], b);
      const int64_t hi = std::min(offsets_[i + 1], e);
      if (lo >= hi) continue;
      const int64_t n = offsets_[i + 1] - offsets_[i];
      ST_RETURN_IF_ERROR(ToFlat(params_[i].value->Reshape({n}).Slice(0, lo - offsets_[i], hi - offsets_[i]),
                                param_part_.Slice(0, lo - b, hi - b)));
    }
    Tensor param_device = param_part_;
    if (param_part_.device() != backend_->device()) {
      ST_ASSIGN_OR_RETURN(param_device, backend_->Upload(param_part_));
    }
    kernels::AdamWStepArgs args;
    args.lr = lr;
    args.beta1 = options_.beta1;
    args.beta2 = options_.beta2;
    args.eps = options_.eps;
    args.weight_decay = options_.weight_decay;
    args.grad_scale = grad_scale * stats.clip_coef;
    args.step = step_ + 1;
    const absl::Status status = backend_->AdamWStep(&param_device, grad_device, &exp_avg_, &exp_avg_sq_, args);
    if (!status.ok()) {
      return absl::Status(status.code(), absl::StrCat("ShardedAdamW step ", step_ + 1, ", elements [", b, ", ", e,
                                                      ") on rank ", comm_->rank(), ": ", status.message()));
    }
    if (param_device.raw_data() != param_part_.raw_data()) {
      ST_ASSIGN_OR_RETURN(const Tensor host, backend_->Download(param_device));
      param_part_.CopyFrom(host);
    }
  }
  // 4. Every rank gets every updated part.
  ST_RETURN_IF_ERROR(Gather(*comm_, param_part_, flat_param_));
  for (size_t i = 0; i < params_.size(); ++i) {
    if (offsets_[i + 1] == offsets_[i]) continue;
    ST_RETURN_IF_ERROR(
        FromFlat(flat_param_.Slice(0, offsets_[i], offsets_[i + 1]).Reshape(params_[i].value->shape()),
                 params_[i].value));
  }
  ++step_;
  return stats;
}

absl::StatusOr<ShardedAdamW::PartState> ShardedAdamW::LocalState() const {
  PartState state;
  state.range = range_;
  if (range_.size() == 0) {
    state.exp_avg = Tensor::Zeros({0}, dtype_);
    state.exp_avg_sq = Tensor::Zeros({0}, dtype_);
    return state;
  }
  for (const auto& [device, host] : {std::make_pair(&exp_avg_, &state.exp_avg),
                                     std::make_pair(&exp_avg_sq_, &state.exp_avg_sq)}) {
    ST_ASSIGN_OR_RETURN(*host, backend_->Download(*device));
    // The CPU backend "downloads" without copying; a snapshot must not change with later steps.
    if (host->raw_data() == device->raw_data()) *host = host->Contiguous();
  }
  return state;
}

absl::StatusOr<std::string> ShardedAdamW::SerializeShard() const {
  ST_ASSIGN_OR_RETURN(PartState state, LocalState());
  const std::map<std::string, Tensor> tensors = {{kExpAvg, state.exp_avg}, {kExpAvgSq, state.exp_avg_sq}};
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"},
      {kFormatKey, kFormat},
      {"begin", absl::StrCat(range_.begin)},
      {"end", absl::StrCat(range_.end)},
      {"total", absl::StrCat(total_)},
      {"world_size", absl::StrCat(comm_->size())},
      {"rank", absl::StrCat(comm_->rank())},
      {"step", absl::StrCat(step_)},
      {"dtype", std::string(DTypeName(dtype_))},
      {"layout", layout_},
  };
  return formats::SerializeSafetensors(tensors, metadata);
}

absl::Status ShardedAdamW::LoadShards(const std::vector<std::pair<std::string, std::string>>& files, int64_t step) {
  if (step < 0) return absl::InvalidArgumentError(absl::StrCat("ShardedAdamW: step must be >= 0, got ", step));
  if (files.empty()) return absl::DataLossError("the checkpoint has no optimizer state file");
  std::vector<ShardInfo> shards;
  std::vector<Piece> pieces;  // of the single-process format
  std::string legacy_file;
  for (const auto& [file, bytes] : files) {
    absl::StatusOr<formats::SafetensorsReader> reader = formats::SafetensorsReader::FromBuffer(bytes, file);
    if (!reader.ok()) {
      return absl::DataLossError(absl::StrCat("optimizer state ", file, " does not parse: ", reader.status().message()));
    }
    auto format = reader->metadata().find(kFormatKey);
    if (format == reader->metadata().end()) {
      // AdamW's single-process format: "<param>.exp_avg" / "<param>.exp_avg_sq".
      if (!reader->Contains(params_.front().name + ".exp_avg")) {
        return absl::DataLossError(absl::StrCat("optimizer state ", file, " is neither a ", kFormat,
                                                " shard nor AdamW state of this job's parameters (no tensor ",
                                                params_.front().name, ".exp_avg)"));
      }
      if (files.size() != 1) {
        return absl::FailedPreconditionError(
            absl::StrCat("optimizer state ", file, " is a single-process file but the checkpoint has ", files.size(),
                         " optimizer files; remove the stray ones"));
      }
      legacy_file = file;
      size_t expected = 0;
      for (size_t i = 0; i < params_.size(); ++i) {
        Piece piece;
        piece.file = file;
        piece.begin = offsets_[i];
        piece.end = offsets_[i + 1];
        const Shape& shape = params_[i].value->shape();
        ST_ASSIGN_OR_RETURN(const Tensor m,
                            MomentTensor(*reader, file, params_[i].name + ".exp_avg", shape, dtype_, false));
        ST_ASSIGN_OR_RETURN(const Tensor v,
                            MomentTensor(*reader, file, params_[i].name + ".exp_avg_sq", shape, dtype_, true));
        piece.exp_avg = m.Reshape({piece.end - piece.begin});
        piece.exp_avg_sq = v.Reshape({piece.end - piece.begin});
        pieces.push_back(std::move(piece));
        expected += 2;
      }
      if (reader->names().size() != expected) {
        return absl::FailedPreconditionError(absl::StrCat("optimizer state ", file, " holds ", reader->names().size(),
                                                          " tensors, this job's parameters need ", expected,
                                                          " (another adapter layout?)"));
      }
      continue;
    }
    if (format->second != kFormat) {
      return absl::FailedPreconditionError(absl::StrCat("optimizer shard ", file, " has format \"", format->second,
                                                        "\", this build reads \"", kFormat, "\""));
    }
    ShardInfo info;
    info.piece.file = file;
    ST_ASSIGN_OR_RETURN(info.piece.begin, MetadataInt(*reader, file, "begin"));
    ST_ASSIGN_OR_RETURN(info.piece.end, MetadataInt(*reader, file, "end"));
    ST_ASSIGN_OR_RETURN(const int64_t total, MetadataInt(*reader, file, "total"));
    ST_ASSIGN_OR_RETURN(info.world, MetadataInt(*reader, file, "world_size"));
    ST_ASSIGN_OR_RETURN(info.rank, MetadataInt(*reader, file, "rank"));
    ST_ASSIGN_OR_RETURN(const int64_t shard_step, MetadataInt(*reader, file, "step"));
    auto layout = reader->metadata().find("layout");
    if (layout == reader->metadata().end() || layout->second != layout_ || total != total_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "optimizer shard ", file, " was written for other parameters (layout ",
          layout == reader->metadata().end() ? std::string("missing") : layout->second, ", ", total,
          " elements; this job: ", layout_, ", ", total_, " elements); the checkpoint belongs to another adapter"));
    }
    if (info.world < 1 || info.rank < 0 || info.rank >= info.world || info.world > (int64_t{1} << 30)) {
      return absl::DataLossError(absl::StrCat("optimizer shard ", file, ": rank ", info.rank, " of ", info.world,
                                              " is not a rank of a group; the file is damaged"));
    }
    const comm::ShardRange expected =
        comm::ShardOf(total_, static_cast<int>(info.world), static_cast<int>(info.rank));
    if (info.piece.begin != expected.begin || info.piece.end != expected.end) {
      return absl::DataLossError(absl::StrCat("optimizer shard ", file, " holds elements [", info.piece.begin, ", ",
                                              info.piece.end, "), but rank ", info.rank, " of ", info.world,
                                              " owns [", expected.begin, ", ", expected.end, "); the file is damaged"));
    }
    if (shard_step != step) {
      return absl::DataLossError(absl::StrCat("optimizer shard ", file, " holds the state after step ", shard_step,
                                              ", the checkpoint says ", step, "; its files are from different saves"));
    }
    const Shape shape = {info.piece.end - info.piece.begin};
    ST_ASSIGN_OR_RETURN(info.piece.exp_avg, MomentTensor(*reader, file, kExpAvg, shape, dtype_, false));
    ST_ASSIGN_OR_RETURN(info.piece.exp_avg_sq, MomentTensor(*reader, file, kExpAvgSq, shape, dtype_, true));
    if (reader->names().size() != 2) {
      return absl::DataLossError(absl::StrCat("optimizer shard ", file, " holds ", reader->names().size(),
                                              " tensors, expected exp_avg and exp_avg_sq only"));
    }
    shards.push_back(std::move(info));
  }

  if (legacy_file.empty()) {
    // One shard per rank of one group.
    std::map<int64_t, const ShardInfo*> by_rank;
    for (const ShardInfo& s : shards) {
      if (s.world != shards.front().world) {
        return absl::DataLossError(absl::StrCat("optimizer shard ", s.piece.file, " was written by a group of ",
                                                s.world, " ranks, ", shards.front().piece.file, " by ",
                                                shards.front().world, "; the checkpoint mixes different saves"));
      }
      auto [it, inserted] = by_rank.emplace(s.rank, &s);
      if (!inserted) {
        return absl::DataLossError(absl::StrCat("optimizer shards ", it->second->piece.file, " and ", s.piece.file,
                                                " overlap: both hold rank ", s.rank, " of ", s.world));
      }
    }
    for (int64_t r = 0; r < shards.front().world; ++r) {
      if (by_rank.count(r) == 0) {
        return absl::DataLossError(absl::StrCat("the checkpoint has no optimizer shard of rank ", r, " of ",
                                                shards.front().world, " (",
                                                ShardFileName(static_cast<int>(r), static_cast<int>(shards.front().world)),
                                                " is missing)"));
      }
    }
    // Then they cover [0, total) exactly once (a safety net: implied by the checks above).
    std::vector<const ShardInfo*> order;
    for (const ShardInfo& s : shards) order.push_back(&s);
    std::sort(order.begin(), order.end(), [](const ShardInfo* x, const ShardInfo* y) {
      return std::make_pair(x->piece.begin, x->piece.end) < std::make_pair(y->piece.begin, y->piece.end);
    });
    int64_t covered = 0;
    const ShardInfo* previous = nullptr;
    for (const ShardInfo* s : order) {
      if (s->piece.begin == s->piece.end) continue;
      if (s->piece.begin > covered) {
        return absl::DataLossError(absl::StrCat(
            "optimizer shards leave elements [", covered, ", ", s->piece.begin, ") of ", total_, " uncovered (",
            previous ? absl::StrCat("between ", previous->piece.file, " and ") : std::string("before "),
            s->piece.file, "); a shard file of the checkpoint is missing"));
      }
      if (s->piece.begin < covered) {
        return absl::DataLossError(absl::StrCat("optimizer shard ", s->piece.file, " [", s->piece.begin, ", ",
                                                s->piece.end, ") overlaps ", previous->piece.file, " [",
                                                previous->piece.begin, ", ", previous->piece.end,
                                                "); the checkpoint mixes shards of different saves"));
      }
      covered = s->piece.end;
      previous = s;
    }
    if (covered != total_) {
      return absl::DataLossError(absl::StrCat("optimizer shards leave elements [", covered, ", ", total_,
                                              ") uncovered", previous ? absl::StrCat(" (after ", previous->piece.file, ")") : "",
                                              "; a shard file of the checkpoint is missing"));
    }
    for (ShardInfo& s : shards) pieces.push_back(std::move(s.piece));
  }

  // This rank's part, from every piece that overlaps it.
  const int64_t b = range_.begin;
  const int64_t e = range_.end;
  Tensor exp_avg = Tensor::Zeros({range_.size()}, dtype_);
  Tensor exp_avg_sq = Tensor::Zeros({range_.size()}, dtype_);
  for (const Piece& piece : pieces) {
    const int64_t lo = std::max(piece.begin, b);
    const int64_t hi = std::min(piece.end, e);
    if (lo >= hi) continue;
    exp_avg.Slice(0, lo - b, hi - b).CopyFrom(piece.exp_avg.Slice(0, lo - piece.begin, hi - piece.begin));
    exp_avg_sq.Slice(0, lo - b, hi - b).CopyFrom(piece.exp_avg_sq.Slice(0, lo - piece.begin, hi - piece.begin));
  }
  if (range_.size() > 0) {
    ST_ASSIGN_OR_RETURN(const Tensor m, backend_->Upload(exp_avg));
    ST_ASSIGN_OR_RETURN(const Tensor v, backend_->Upload(exp_avg_sq));
    ST_RETURN_IF_ERROR(backend_->Copy(m, &exp_avg_));
    ST_RETURN_IF_ERROR(backend_->Copy(v, &exp_avg_sq_));
  }
  step_ = step;
  return absl::OkStatus();
}

}  // namespace sigmatune::train
