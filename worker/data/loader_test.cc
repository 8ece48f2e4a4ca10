#include "worker/data/loader.h"

#include <algorithm>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/model/backend.h"
#include "kernels/testing/status.h"
#include "worker/data/dataset.h"

namespace sigmatune::data {
namespace {

// n samples; sample i has lengths[i % lengths.size()] tokens, ids 1000*i + t, all trained but the first.
Dataset MakeDataset(int n, const std::vector<int>& lengths) {
  Dataset ds;
  for (int i = 0; i < n; ++i) {
    TokenizedSample s;
    s.line = i + 1;
    const int len = lengths[i % lengths.size()];
    for (int t = 0; t < len; ++t) {
      s.ids.push_back(1000 * i + t);
      s.targets.push_back(t == 0 ? -100 : 1000 * i + t);
    }
    ds.tokens += len;
    ds.trained_tokens += len - 1;
    ds.samples.push_back(std::move(s));
  }
  ds.records = n;
  return ds;
}

std::vector<int64_t> Lines(const MicroBatch& m) {
  std::vector<int64_t> lines;
  for (const TokenizedSample* s : m.samples) lines.push_back(s->line);
  return lines;
}

std::vector<std::vector<int64_t>> Take(DataLoader& loader, int n) {
  std::vector<std::vector<int64_t>> out;
  for (int i = 0; i < n; ++i) out.push_back(Lines(loader.Next()));
  return out;
}

LoaderOptions Opts(int64_t mbs, int64_t seq, Packing packing, uint64_t seed = 42) {
  LoaderOptions o;
  o.micro_batch_size = mbs;
  o.sequence_len = seq;
  o.packing = packing;
  o.seed = seed;
  return o;
}

TEST(DataLoaderTest, SameSeedSameOrderOtherSeedOtherOrder) {
  const Dataset ds = MakeDataset(20, {3, 5, 8});
  absl::StatusOr<DataLoader> a = DataLoader::Create(&ds, Opts(3, 16, Packing::kNo, 7));
  absl::StatusOr<DataLoader> b = DataLoader::Create(&ds, Opts(3, 16, Packing::kNo, 7));
  absl::StatusOr<DataLoader> c = DataLoader::Create(&ds, Opts(3, 16, Packing::kNo, 8));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  const auto ta = Take(*a, 20), tb = Take(*b, 20), tc = Take(*c, 20);
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
  // Not the identity order.
  std::vector<int64_t> first;
  for (int i = 0; i < 7; ++i) first.insert(first.end(), ta[i].begin(), ta[i].end());
  std::vector<int64_t> sorted = first;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_NE(first, sorted);
}

TEST(DataLoaderTest, EverySampleOncePerEpochWithoutPacking) {
  const Dataset ds = MakeDataset(10, {4});
  absl::StatusOr<DataLoader> loader = DataLoader::Create(&ds, Opts(3, 8, Packing::kNo));
  ASSERT_TRUE(loader.ok()) << loader.status();
  std::vector<std::vector<int64_t>> epochs;
  for (int64_t e = 0; e < 3; ++e) {
    ASSERT_EQ(loader->MicroBatchesInEpoch(e), 4);
    std::vector<int64_t> seen;
    for (int64_t i = 0; i < 4; ++i) {
      EXPECT_EQ(loader->position().epoch, i == 0 && e > 0 ? e - 1 : e);
      const MicroBatch m = loader->Next();
      EXPECT_EQ(m.samples.size(), i < 3 ? 3u : 1u);
      EXPECT_EQ(m.tokens, 4 * static_cast<int64_t>(m.samples.size()));
      EXPECT_EQ(m.trained_tokens, 3 * static_cast<int64_t>(m.samples.size()));
      const auto lines = Lines(m);
      seen.insert(seen.end(), lines.begin(), lines.end());
    }
    EXPECT_EQ(loader->position().epoch, e);
    EXPECT_EQ(loader->position().index, 4);
    std::vector<int64_t> sorted = seen;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
    epochs.push_back(seen);
  }
  EXPECT_NE(epochs[0], epochs[1]);  // a new shuffle per epoch
  EXPECT_NE(epochs[1], epochs[2]);
}

TEST(DataLoaderTest, PackingKeepsSamplesWholeAndWithinBudget) {
  const Dataset ds = MakeDataset(50, {3, 17, 9, 30, 1, 12, 25});
  const int64_t budget = 2 * 32;
  absl::StatusOr<DataLoader> loader = DataLoader::Create(&ds, Opts(2, 32, Packing::kYes, 3));
  ASSERT_TRUE(loader.ok()) << loader.status();
  for (int64_t e = 0; e < 2; ++e) {
    const int64_t count = loader->MicroBatchesInEpoch(e);
    std::vector<MicroBatch> micros;
    std::multiset<int64_t> seen;
    for (int64_t i = 0; i < count; ++i) micros.push_back(loader->Next());
    for (size_t i = 0; i < micros.size(); ++i) {
      const MicroBatch& m = micros[i];
      ASSERT_FALSE(m.samples.empty());
      int64_t tokens = 0;
      for (const TokenizedSample* s : m.samples) {
        // Whole samples from the dataset itself.
        ASSERT_GE(s, ds.samples.data());
        ASSERT_LT(s, ds.samples.data() + ds.samples.size());
        tokens += s->ids.size();
        seen.insert(s->line);
      }
      EXPECT_EQ(m.tokens, tokens);
      EXPECT_LE(m.tokens, budget);
      // Greedy: the next micro-batch's first sample did not fit.
      if (i + 1 < micros.size()) {
        EXPECT_GT(m.tokens + static_cast<int64_t>(micros[i + 1].samples[0]->ids.size()), budget);
      }
    }
    EXPECT_EQ(seen.size(), 50u);
    EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), 50u);
    EXPECT_LT(count, 50);  // packing does pack
    EXPECT_EQ(loader->position().index, count);
  }
}

TEST(DataLoaderTest, RestoreContinuesIdentically) {
  const Dataset ds = MakeDataset(11, {3, 17, 9, 30, 1, 12, 25});
  for (Packing packing : {Packing::kNo, Packing::kYes}) {
    SCOPED_TRACE(packing == Packing::kYes ? "packing" : "no packing");
    const LoaderOptions o = Opts(2, 32, packing, 11);
    absl::StatusOr<DataLoader> a = DataLoader::Create(&ds, o);
    ASSERT_TRUE(a.ok());
    Take(*a, 7);  // crosses an epoch boundary either way
    const LoaderPosition pos = a->position();
    EXPECT_GT(pos.epoch, 0);
    const auto want = Take(*a, 5);
    absl::StatusOr<DataLoader> b = DataLoader::Create(&ds, o);
    ASSERT_TRUE(b.ok());
    ASSERT_TRUE(b->Restore(pos).ok());
    EXPECT_EQ(b->position().epoch, pos.epoch);
    EXPECT_EQ(b->position().index, pos.index);
    EXPECT_EQ(Take(*b, 5), want);
    // Restoring to the end of an epoch rolls over like the original did.
    const LoaderPosition end{0, a->MicroBatchesInEpoch(0)};
    absl::StatusOr<DataLoader> c = DataLoader::Create(&ds, o);
    absl::StatusOr<DataLoader> d = DataLoader::Create(&ds, o);
    ASSERT_TRUE(c.ok() && d.ok());
    Take(*c, static_cast<int>(end.index));
    ASSERT_TRUE(d->Restore(end).ok());
    EXPECT_EQ(Take(*d, 3), Take(*c, 3));
  }
}

TEST(DataLoaderTest, BadRestoreAndOptions) {
  const Dataset ds = MakeDataset(5, {4});
  absl::StatusOr<DataLoader> loader = DataLoader::Create(&ds, Opts(2, 8, Packing::kNo));
  ASSERT_TRUE(loader.ok());
  EXPECT_ERROR_MENTIONS(loader->Restore({0, 4}), "index 4", "only 3");
  EXPECT_ERROR_MENTIONS(loader->Restore({-1, 0}), "epoch -1");
  EXPECT_TRUE(loader->Restore({5, 3}).ok());
  const Dataset empty;
  EXPECT_EQ(DataLoader::Create(&empty, Opts(1, 8, Packing::kNo)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_ERROR_MENTIONS(DataLoader::Create(&ds, Opts(0, 8, Packing::kNo)).status(), "micro_batch_size");
  EXPECT_ERROR_MENTIONS(DataLoader::Create(&ds, Opts(1, 0, Packing::kNo)).status(), "sequence_len");
  EXPECT_ERROR_MENTIONS(DataLoader::Create(&ds, Opts(4, 3, Packing::kYes)).status(), "line 1", "4 tokens",
                        "sequence_len 3");
}

TEST(MakeBatchTest, LabelsPositionsAndCuSeqlensExact) {
  Dataset ds;
  ds.samples.push_back({{5, 6, 7, 8}, {-100, -100, 7, 8}, 1});
  ds.samples.push_back({{9, 10, 11}, {-100, 10, -100}, 2});
  ds.samples.push_back({{12}, {-100}, 3});
  MicroBatch micro;
  for (const auto& s : ds.samples) {
    micro.samples.push_back(&s);
    micro.tokens += s.ids.size();
  }
  model::CpuBackend backend(1);
  absl::StatusOr<model::Batch> batch = MakeBatch(backend, micro);
  ASSERT_TRUE(batch.ok()) << batch.status();
  auto vec = [](const Tensor& t) {
    EXPECT_EQ(t.dtype(), DType::kI32);
    EXPECT_TRUE(t.device().is_cpu());
    const int32_t* p = t.data<int32_t>();
    return std::vector<int32_t>(p, p + t.numel());
  };
  EXPECT_EQ(vec(batch->input_ids), (std::vector<int32_t>{5, 6, 7, 8, 9, 10, 11, 12}));
  EXPECT_EQ(vec(batch->positions), (std::vector<int32_t>{0, 1, 2, 3, 0, 1, 2, 0}));
  EXPECT_EQ(vec(batch->labels), (std::vector<int32_t>{-100, 7, 8, -100, 10, -100, -100, -100}));
  EXPECT_EQ(vec(batch->cu_seqlens), (std::vector<int32_t>{0, 4, 7, 8}));
  EXPECT_EQ(batch->input_ids.shape(), (Shape{8}));
  EXPECT_EQ(batch->cu_seqlens.shape(), (Shape{4}));
  EXPECT_FALSE(MakeBatch(backend, MicroBatch{}).ok());
}

TEST(MakeBatchTest, AgreesWithLoaderMicroBatches) {
  const Dataset ds = MakeDataset(9, {3, 6, 2});
  absl::StatusOr<DataLoader> loader = DataLoader::Create(&ds, Opts(2, 8, Packing::kYes));
  ASSERT_TRUE(loader.ok());
  model::CpuBackend backend(1);
  const MicroBatch m = loader->Next();
  absl::StatusOr<model::Batch> batch = MakeBatch(backend, m);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_EQ(batch->input_ids.numel(), m.tokens);
  EXPECT_EQ(batch->cu_seqlens.numel(), static_cast<int64_t>(m.samples.size()) + 1);
  int64_t labelled = 0;
  const int32_t* labels = batch->labels.data<int32_t>();
  for (int64_t t = 0; t < m.tokens; ++t) labelled += labels[t] != -100;
  EXPECT_EQ(labelled, m.trained_tokens);  // every trained token is some position's label
}

}  // namespace
}  // namespace sigmatune::data
