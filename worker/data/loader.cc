// DataLoader and MakeBatch (see loader.h).
#include "worker/data/loader.h"

#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/check.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/tensor.h"

namespace sigmatune::data {
namespace {

// Uniform in [0, n) without modulo bias (rejection of the top partial block).
uint64_t UniformBelow(Rng& rng, uint64_t n) {
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
  uint64_t x = rng.Next();
  while (x >= limit) x = rng.Next();
  return x % n;
}

}  // namespace

absl::StatusOr<DataLoader> DataLoader::Create(const Dataset* dataset, LoaderOptions options) {
  ST_CHECK(dataset != nullptr);
  if (dataset->samples.empty()) {
    return absl::InvalidArgumentError("the dataset has no samples; a data loader needs at least one");
  }
  if (options.micro_batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("micro_batch_size is ", options.micro_batch_size, "; it must be at least 1"));
  }
  if (options.sequence_len < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence_len is ", options.sequence_len, "; it must be at least 1"));
  }
  if (options.micro_batch_size > std::numeric_limits<int32_t>::max() / options.sequence_len) {
    return absl::InvalidArgumentError(absl::StrCat("micro_batch_size * sequence_len (", options.micro_batch_size,
                                                   " * ", options.sequence_len, ") exceeds 2^31 tokens"));
  }
  for (const TokenizedSample& s : dataset->samples) {
    ST_CHECK_EQ(s.ids.size(), s.targets.size());
    if (s.ids.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("the sample of line ", s.line, " has no tokens"));
    }
    if (static_cast<int64_t>(s.ids.size()) > options.sequence_len) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the sample of line ", s.line, " has ", s.ids.size(), " tokens, more than sequence_len ",
          options.sequence_len, "; load the dataset with max_seq_len <= sequence_len"));
    }
  }
  DataLoader loader(dataset, options);
  loader.plan_ = loader.MakePlan(0);
  return loader;
}

DataLoader::Plan DataLoader::MakePlan(int64_t epoch) const {
  const int64_t n = static_cast<int64_t>(dataset_->samples.size());
  Plan plan;
  plan.order.resize(n);
  for (int64_t i = 0; i < n; ++i) plan.order[i] = i;
  Rng rng(SplitMix64(options_.seed ^ SplitMix64(static_cast<uint64_t>(epoch) + 0x51a7e5eedULL)));
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(UniformBelow(rng, static_cast<uint64_t>(i) + 1));
    std::swap(plan.order[i], plan.order[j]);
  }
  if (options_.packing == Packing::kNo) {
    for (int64_t i = 0; i < n; i += options_.micro_batch_size) plan.starts.push_back(i);
  } else {
    const int64_t budget = options_.micro_batch_size * options_.sequence_len;
    int64_t used = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t len = static_cast<int64_t>(dataset_->samples[plan.order[i]].ids.size());
      if (i == 0 || used + len > budget) {
        plan.starts.push_back(i);
        used = 0;
      }
      used += len;
    }
  }
  plan.starts.push_back(n);
  return plan;
}

int64_t DataLoader::MicroBatchesInEpoch(int64_t epoch) const {
  if (options_.packing == Packing::kNo) {
    const int64_t n = static_cast<int64_t>(dataset_->samples.size());
    return (n + options_.micro_batch_size - 1) / options_.micro_batch_size;
  }
  if (epoch == epoch_) return static_cast<int64_t>(plan_.starts.size()) - 1;
  return static_cast<int64_t>(MakePlan(epoch).starts.size()) - 1;
}

MicroBatch DataLoader::Next() {
  if (index_ + 1 >= static_cast<int64_t>(plan_.starts.size())) {
    ++epoch_;
    index_ = 0;
    plan_ = MakePlan(epoch_);
  }
  MicroBatch micro;
  for (int64_t i = plan_.starts[index_]; i < plan_.starts[index_ + 1]; ++i) {
    const TokenizedSample& s = dataset_->samples[plan_.order[i]];
    micro.samples.push_back(&s);
    micro.tokens += static_cast<int64_t>(s.ids.size());
    for (int32_t t : s.targets) micro.trained_tokens += t != -100;
  }
  ++index_;
  return micro;
}

absl::Status DataLoader::Restore(LoaderPosition position) {
  if (position.epoch < 0 || position.index < 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot restore the data loader to epoch ", position.epoch,
                                                   ", index ", position.index, ": both must be >= 0"));
  }
  Plan plan = MakePlan(position.epoch);
  const int64_t count = static_cast<int64_t>(plan.starts.size()) - 1;
  if (position.index > count) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot restore the data loader to epoch ", position.epoch, ", index ", position.index,
        ": that epoch has only ", count, " micro-batches (was the checkpoint made with another dataset, batch size or packing?)"));
  }
  epoch_ = position.epoch;
  index_ = position.index;
  plan_ = std::move(plan);
  return absl::OkStatus();
}

absl::StatusOr<model::Batch> MakeBatch(model::ModelBackend& backend, const MicroBatch& micro) {
  if (micro.samples.empty()) return absl::InvalidArgumentError("MakeBatch: the micro-batch has no samples");
  std::vector<int32_t> ids, positions, labels, cu = {0};
  ids.reserve(micro.tokens);
  positions.reserve(micro.tokens);
  labels.reserve(micro.tokens);
  for (const TokenizedSample* s : micro.samples) {
    ST_CHECK(s != nullptr);
    ST_CHECK_EQ(s->ids.size(), s->targets.size());
    const size_t n = s->ids.size();
    for (size_t t = 0; t < n; ++t) {
      ids.push_back(s->ids[t]);
      positions.push_back(static_cast<int32_t>(t));
      labels.push_back(t + 1 < n ? s->targets[t + 1] : -100);
    }
    if (ids.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
      return absl::InvalidArgumentError("MakeBatch: the micro-batch has more than 2^31 tokens");
    }
    cu.push_back(static_cast<int32_t>(ids.size()));
  }
  const int64_t total = static_cast<int64_t>(ids.size());
  model::Batch batch;
  ST_ASSIGN_OR_RETURN(batch.input_ids, backend.Upload(Tensor::FromVector<int32_t>({total}, ids)));
  ST_ASSIGN_OR_RETURN(batch.positions, backend.Upload(Tensor::FromVector<int32_t>({total}, positions)));
  ST_ASSIGN_OR_RETURN(batch.labels, backend.Upload(Tensor::FromVector<int32_t>({total}, labels)));
  batch.cu_seqlens = Tensor::FromVector<int32_t>({static_cast<int64_t>(cu.size())}, cu);
  return batch;
}

}  // namespace sigmatune::data
