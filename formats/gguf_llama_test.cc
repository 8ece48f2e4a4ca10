// LLaMA GGUF helpers: names, the q/k permutation against transformers' reverse permute and
// llama.cpp's forward permute (permute.gguf), config and tokenizer metadata (tiny_llama.gguf).
#include "formats/gguf_llama.h"

#include <cstring>
#include <string>

#include "formats/gguf_dequant.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/testing/golden.h"

namespace sigmatune {
namespace {

using ::testing::HasSubstr;

std::string Fixture(const std::string& name) {
  return testing::RunfilePath("tests/testdata/formats/gguf/" + name);
}

Tensor Load(const GgufFile& f, const std::string& name) {
  auto t = DequantizeTensor(f, name, DType::kF32);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : Tensor();
}

bool SameBits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

TEST(GgufNames, MapsLlamaNamesBothWays) {
  const std::pair<const char*, const char*> cases[] = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"},
      {"blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"},
      {"blk.12.attn_q.weight", "model.layers.12.self_attn.q_proj.weight"},
      {"blk.3.attn_k.weight", "model.layers.3.self_attn.k_proj.weight"},
      {"blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj.weight"},
      {"blk.3.attn_output.weight", "model.layers.3.self_attn.o_proj.weight"},
      {"blk.29.ffn_norm.weight", "model.layers.29.post_attention_layernorm.weight"},
      {"blk.29.ffn_gate.weight", "model.layers.29.mlp.gate_proj.weight"},
      {"blk.29.ffn_up.weight", "model.layers.29.mlp.up_proj.weight"},
      {"blk.29.ffn_down.weight", "model.layers.29.mlp.down_proj.weight"},
      {"blk.1.attn_q.bias", "model.layers.1.self_attn.q_proj.bias"},
  };
  for (const auto& [gguf, hf] : cases) {
    EXPECT_EQ(*GgufToHfName(gguf), hf);
    EXPECT_EQ(*HfToGgufName(hf, TiedEmbeddings::kNo), gguf);
  }
  EXPECT_EQ(*HfToGgufName("lm_head.weight", TiedEmbeddings::kYes), "token_embd.weight");
  for (const char* bad : {"blk.x.attn_q.weight", "blk..attn_q.weight", "blk.1.attn_qq.weight",
                          "rope_freqs.weight", "blk.1.attn_q", ""}) {
    auto r = GgufToHfName(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound) << bad;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(std::string("'") + bad + "'"));
  }
  EXPECT_FALSE(HfToGgufName("model.layers.1.self_attn.rotary.weight", TiedEmbeddings::kNo).ok());
}

TEST(GgufPermute, MatchesTransformersReversePermuteAndLlamaCppPermute) {
  auto f = GgufFile::Open(Fixture("permute.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  const int64_t n_head = *f->GetI64("test.n_head");
  const int64_t n_kv = *f->GetI64("test.n_head_kv");
  for (const auto& [tag, heads] : {std::make_pair("q", n_head), std::make_pair("k", n_kv)}) {
    const Tensor hf = Load(*f, std::string("hf.") + tag);
    const Tensor gguf = Load(*f, std::string("gguf.") + tag);
    const Tensor expected = Load(*f, std::string("unpermuted.") + tag);
    auto un = UnpermuteQkRows(gguf, heads, tag);
    ASSERT_TRUE(un.ok()) << un.status();
    EXPECT_TRUE(SameBits(*un, expected)) << tag;
    EXPECT_TRUE(SameBits(*un, hf)) << tag;
    auto re = PermuteQkRows(hf, heads, tag);
    ASSERT_TRUE(re.ok()) << re.status();
    EXPECT_TRUE(SameBits(*re, gguf)) << tag;
    // bf16 rows move the same way.
    auto un_bf = UnpermuteQkRows(gguf.To(DType::kBF16), heads, tag);
    ASSERT_TRUE(un_bf.ok());
    EXPECT_TRUE(SameBits(*un_bf, hf.To(DType::kBF16))) << tag;
  }
  // Using n_head for k (a classic mistake) gives a different matrix.
  auto wrong = UnpermuteQkRows(Load(*f, "gguf.k"), n_head, "k");
  if (wrong.ok()) {
    EXPECT_FALSE(SameBits(*wrong, Load(*f, "hf.k")));
  }
  auto bad = UnpermuteQkRows(Load(*f, "gguf.q"), 5, "blk.0.attn_q.weight");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("blk.0.attn_q.weight"));
}

TEST(GgufLlama, ReadsConfig) {
  auto f = GgufFile::Open(Fixture("tiny_llama.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  auto c = ReadLlamaConfig(*f);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "llama");
  EXPECT_EQ(c->context_length, 128);
  EXPECT_EQ(c->hidden_size, 16);
  EXPECT_EQ(c->num_layers, 2);
  EXPECT_EQ(c->intermediate_size, 24);
  EXPECT_EQ(c->num_heads, 4);
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_EQ(c->head_dim, 4);
  EXPECT_EQ(c->rope_dimension_count, 4);
  EXPECT_EQ(c->rms_norm_eps, static_cast<double>(1e-5f));
  EXPECT_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->vocab_size, 8);
  EXPECT_EQ(c->tied_embeddings, TiedEmbeddings::kYes);

  auto other = GgufFile::Open(Fixture("dequant.gguf"));
  ASSERT_TRUE(other.ok());
  auto missing = ReadLlamaConfig(*other);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("'sigmatune-test.context_length'"));
}

TEST(GgufLlama, ReadsTokenizerData) {
  auto f = GgufFile::Open(Fixture("tiny_llama.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  auto t = ReadTokenizerData(*f);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->model, "gpt2");
  EXPECT_EQ(t->pre, "smollm");
  EXPECT_EQ(t->tokens, (std::vector<std::string>{"<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                                 "a", "b", "ab", "\xc4\xa0" "a", "c"}));
  EXPECT_EQ(t->token_types, (std::vector<int32_t>{3, 3, 3, 1, 1, 1, 1, 1}));
  EXPECT_EQ(t->merges, (std::vector<std::string>{"a b", "\xc4\xa0 a"}));
  EXPECT_TRUE(t->scores.empty());
  EXPECT_EQ(t->bos_token_id, 1);
  EXPECT_EQ(t->eos_token_id, 2);
  EXPECT_EQ(t->padding_token_id, 2);
  EXPECT_FALSE(t->unknown_token_id.has_value());
  EXPECT_EQ(t->add_bos_token, false);
  EXPECT_EQ(t->chat_template, "{% for m in messages %}{{ m['content'] }}{% endfor %}");
}

TEST(GgufLlama, LoadsTensorsInHuggingFaceLayout) {
  auto f = GgufFile::Open(Fixture("tiny_llama.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  auto c = ReadLlamaConfig(*f);
  ASSERT_TRUE(c.ok()) << c.status();
  auto q = LoadLlamaTensor(*f, "model.layers.1.self_attn.q_proj.weight", *c, DType::kF32);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->shape(), (Shape{16, 16}));
  EXPECT_TRUE(SameBits(*q, *UnpermuteQkRows(Load(*f, "blk.1.attn_q.weight"), 4, "q")));
  auto k = LoadLlamaTensor(*f, "model.layers.0.self_attn.k_proj.weight", *c, DType::kF32);
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->shape(), (Shape{8, 16}));
  EXPECT_TRUE(SameBits(*k, *UnpermuteQkRows(Load(*f, "blk.0.attn_k.weight"), 2, "k")));
  auto down = LoadLlamaTensor(*f, "model.layers.0.mlp.down_proj.weight", *c, DType::kF32);
  ASSERT_TRUE(down.ok());
  EXPECT_EQ(down->shape(), (Shape{16, 24}));
  EXPECT_TRUE(SameBits(*down, Load(*f, "blk.0.ffn_down.weight")));
  auto head = LoadLlamaTensor(*f, "lm_head.weight", *c, DType::kBF16);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_TRUE(SameBits(*head, Load(*f, "token_embd.weight").To(DType::kBF16)));
  EXPECT_EQ(LoadLlamaTensor(*f, "model.layers.7.mlp.up_proj.weight", *c, DType::kF32)
                .status()
                .code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sigmatune
