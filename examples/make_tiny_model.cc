// make_tiny_model: writes the tiny LLaMA checkpoint of the examples (examples/models/tiny-llama),
// a complete Hugging Face model directory that transformers, our loader and our tokenizer read.
//
//   bazel run //examples:make_tiny_model -- --out=examples/models/tiny-llama --seed=7
//
// Flags (--name=value): --out (required), --seed (default 7), --arith_train and --knowledge
// (defaults examples/data/arith-train.jsonl and examples/data/knowledge.jsonl). Relative paths are
// resolved against $BUILD_WORKSPACE_DIRECTORY when `bazel run` sets it, else the current directory.
//
// Contract:
//  - Tokenizer (tokenizer.json): byte-level BPE as SmolLM2's (GPT-2 byte mapping, pre-tokenizer
//    Sequence[Digits{individual_digits}, ByteLevel{add_prefix_space: false}], ByteLevel decoder).
//    Ids 0-2 are the special added tokens <|endoftext|>, <|im_start|>, <|im_end|>; ids 3-258 the
//    256 bytes in byte order; then the learned merges. The merges are trained here on the
//    arithmetic training chats (rendered with the plain ChatML template, special tokens cut out)
//    and the knowledge passages, pre-tokenized with worker/data's own splitters (so training and
//    encoding see the same words): repeatedly merge the most frequent adjacent pair, ties broken
//    by the smaller (left, right) token text in byte order, until 480 byte+merge tokens exist.
//  - Model (config.json + model.safetensors, f32): LlamaForCausalLM, hidden 64, intermediate
//    176, 2 layers, 4 heads, 2 kv heads, head_dim 16, vocab = tokenizer size, tied embeddings,
//    rope_theta 1e4, rms_norm_eps 1e-5, 1024 positions. Every non-norm weight is
//    0.02 * Rng(seed).Normal() (kernels/base/rng.h), drawn tensor by tensor in sorted-name order,
//    row-major; norms are 1.
//  - tokenizer_config.json (chat_template = the plain ChatML template that worker/data's
//    ChatTemplate recognises as kChatML, eos <|im_end|>) and generation_config.json.
//  - Deterministic: the same seed and data files give byte-identical files. Every file is written
//    atomically (formats/atomic_file.h); other files in --out are left alone.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "formats/atomic_file.h"
#include "formats/hf_config.h"
#include "formats/hf_model_writer.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/tensor.h"
#include "nlohmann/json.hpp"
#include "worker/data/tokenizer_chat_template.h"
#include "worker/data/tokenizer_pretokenize.h"

namespace sigmatune::examples {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

// The plain ChatML template: the exact text of kChatMLTemplate in
// worker/data/tokenizer_chat_template.cc (ChatTemplate::FromJinja -> kChatML).
constexpr char kChatMLTemplate[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

constexpr const char* kSpecialTokens[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
constexpr int32_t kNumSpecial = 3;
constexpr int32_t kFirstByteId = kNumSpecial;      // ids 3..258: the bytes
constexpr int32_t kBaseAndMergeTokens = 480;       // bytes + merge tokens
constexpr int32_t kBosId = 1;                      // <|im_start|>
constexpr int32_t kEosId = 2;                      // <|im_end|>
constexpr int32_t kPadId = 0;                      // <|endoftext|>
constexpr int64_t kMaxPositions = 1024;
constexpr double kInitStd = 0.02;

struct Options {
  std::string out;
  uint64_t seed = 7;
  std::string arith_train = "examples/data/arith-train.jsonl";
  std::string knowledge = "examples/data/knowledge.jsonl";
};

std::string ResolvePath(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  const char* workspace = std::getenv("BUILD_WORKSPACE_DIRECTORY");
  if (workspace == nullptr || *workspace == '\0') return path;
  return absl::StrCat(workspace, "/", path);
}

absl::StatusOr<Options> ParseArgs(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    const size_t eq = arg.find('=');
    if (!absl::StartsWith(arg, "--") || eq == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument '", arg, "'; flags are --name=value"));
    }
    const absl::string_view name = arg.substr(2, eq - 2);
    const std::string value(arg.substr(eq + 1));
    if (name == "out") {
      options.out = value;
    } else if (name == "seed") {
      if (!absl::SimpleAtoi(value, &options.seed)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--seed='", value, "' is not a non-negative integer"));
      }
    } else if (name == "arith_train") {
      options.arith_train = value;
    } else if (name == "knowledge") {
      options.knowledge = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown flag --", name, "; known: --out, --seed, --arith_train, --knowledge"));
    }
  }
  if (options.out.empty()) return absl::InvalidArgumentError("--out=<directory> is required");
  options.out = ResolvePath(options.out);
  options.arith_train = ResolvePath(options.arith_train);
  options.knowledge = ResolvePath(options.knowledge);
  return options;
}

// The JSON records of a JSONL file (blank lines skipped).
absl::StatusOr<std::vector<Json>> ReadJsonl(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open; check the path"));
  std::vector<Json> records;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Json j = Json::parse(line, /*cb=*/nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", line_no, ": not a JSON object"));
    }
    records.push_back(std::move(j));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return records;
}

// Appends the pieces of `text` between occurrences of the special tokens.
void AppendWithoutSpecials(absl::string_view text, std::vector<std::string>* out) {
  size_t start = 0;
  while (start < text.size()) {
    size_t best = absl::string_view::npos;
    size_t best_len = 0;
    for (const char* special : kSpecialTokens) {
      const size_t at = text.find(special, start);
      if (at < best) {
        best = at;
        best_len = absl::string_view(special).size();
      }
    }
    const size_t end = best == absl::string_view::npos ? text.size() : best;
    if (end > start) out->emplace_back(text.substr(start, end - start));
    if (best == absl::string_view::npos) break;
    start = best + best_len;
  }
}

// The plain texts the tokenizer is trained on: every chat of `arith_path` as the model sees it
// (ChatML, special tokens removed) and every {"text"} of `knowledge_path`.
absl::StatusOr<std::vector<std::string>> TrainingTexts(const std::string& arith_path,
                                                       const std::string& knowledge_path) {
  std::vector<std::string> texts;
  const data::ChatTemplate chatml(data::ChatTemplateKind::kChatML);
  ST_ASSIGN_OR_RETURN(const std::vector<Json> chats, ReadJsonl(arith_path));
  for (size_t i = 0; i < chats.size(); ++i) {
    const auto messages = chats[i].find("messages");
    if (messages == chats[i].end() || !messages->is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(arith_path, ": record ", i + 1, " has no \"messages\" array"));
    }
    std::vector<data::ChatMessage> turns;
    for (const Json& m : *messages) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string() ||
          !m.contains("content") || !m["content"].is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(
            arith_path, ": record ", i + 1, ": each message needs string role and content"));
      }
      turns.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    AppendWithoutSpecials(chatml.Render(turns, data::GenerationPrompt::kNo), &texts);
  }
  ST_ASSIGN_OR_RETURN(const std::vector<Json> passages, ReadJsonl(knowledge_path));
  for (size_t i = 0; i < passages.size(); ++i) {
    const auto text = passages[i].find("text");
    if (text == passages[i].end() || !text->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(knowledge_path, ": record ", i + 1, " has no \"text\" string"));
    }
    texts.push_back(text->get<std::string>());
  }
  for (const std::string& t : texts) {
    size_t bad = 0;
    if (!data::IsValidUtf8(t, &bad)) {
      return absl::InvalidArgumentError(
          absl::StrCat("training text is not valid UTF-8 at byte ", bad, ": ", t.substr(0, 40)));
    }
  }
  return texts;
}

// Pre-tokenizes like Tokenizer::EncodePlain with kDigitsThenByteLevel and no prefix space; counts
// the words (raw bytes).
std::map<std::string, int64_t> CountWords(const std::vector<std::string>& texts) {
  std::map<std::string, int64_t> counts;
  std::vector<absl::string_view> digits;
  std::vector<absl::string_view> words;
  for (const std::string& text : texts) {
    digits.clear();
    data::SplitDigits(text, &digits);
    for (const absl::string_view piece : digits) {
      words.clear();
      data::SplitGpt2(piece, &words);
      for (const absl::string_view w : words) ++counts[std::string(w)];
    }
  }
  return counts;
}

struct Bpe {
  std::vector<std::string> vocab;  // id -> token text (byte-level mapped); specials first
  std::vector<std::pair<std::string, std::string>> merges;  // by rank
};

// Standard BPE training over the counted words (see the contract for the tie rule).
Bpe TrainBpe(const std::map<std::string, int64_t>& word_counts) {
  Bpe bpe;
  for (const char* s : kSpecialTokens) bpe.vocab.emplace_back(s);
  for (int b = 0; b < 256; ++b) {
    std::string t;
    data::AppendUtf8(data::ByteToUnicode(static_cast<unsigned char>(b)), &t);
    bpe.vocab.push_back(std::move(t));
  }
  absl::flat_hash_map<std::string, int32_t> token_to_id;
  for (size_t id = 0; id < bpe.vocab.size(); ++id) {
    token_to_id[bpe.vocab[id]] = static_cast<int32_t>(id);
  }
  struct Word {
    std::vector<int32_t> symbols;
    int64_t count;
  };
  std::vector<Word> words;
  words.reserve(word_counts.size());
  for (const auto& [text, count] : word_counts) {
    Word w{{}, count};
    for (const char c : text) w.symbols.push_back(kFirstByteId + static_cast<unsigned char>(c));
    words.push_back(std::move(w));
  }
  auto pair_key = [](int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  };
  int32_t base_and_merge = 256;
  while (base_and_merge < kBaseAndMergeTokens) {
    absl::flat_hash_map<uint64_t, int64_t> pair_counts;
    for (const Word& w : words) {
      for (size_t i = 0; i + 1 < w.symbols.size(); ++i) {
        pair_counts[pair_key(w.symbols[i], w.symbols[i + 1])] += w.count;
      }
    }
    if (pair_counts.empty()) break;
    // Highest count; ties: smaller (left text, right text) in byte order. A total order, so the
    // hash map's iteration order does not matter.
    uint64_t best = 0;
    int64_t best_count = -1;
    for (const auto& [key, count] : pair_counts) {
      const int32_t a = static_cast<int32_t>(key >> 32);
      const int32_t b = static_cast<int32_t>(key & 0xffffffffu);
      bool better = count > best_count;
      if (!better && count == best_count) {
        const int32_t ba = static_cast<int32_t>(best >> 32);
        const int32_t bb = static_cast<int32_t>(best & 0xffffffffu);
        better = std::make_pair(bpe.vocab[a], bpe.vocab[b]) <
                 std::make_pair(bpe.vocab[ba], bpe.vocab[bb]);
      }
      if (better) {
        best = key;
        best_count = count;
      }
    }
    const int32_t left = static_cast<int32_t>(best >> 32);
    const int32_t right = static_cast<int32_t>(best & 0xffffffffu);
    const std::string merged = bpe.vocab[left] + bpe.vocab[right];
    int32_t merged_id;
    if (const auto it = token_to_id.find(merged); it != token_to_id.end()) {
      merged_id = it->second;  // another pair already made this text: reuse its id
    } else {
      merged_id = static_cast<int32_t>(bpe.vocab.size());
      bpe.vocab.push_back(merged);
      token_to_id[merged] = merged_id;
      ++base_and_merge;
    }
    bpe.merges.emplace_back(bpe.vocab[left], bpe.vocab[right]);
    for (Word& w : words) {
      std::vector<int32_t>& s = w.symbols;
      size_t out = 0;
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == left && s[i + 1] == right) {
          s[out++] = merged_id;
          ++i;
        } else {
          s[out++] = s[i];
        }
      }
      s.resize(out);
    }
  }
  return bpe;
}

OrderedJson AddedTokenJson(int32_t id) {
  OrderedJson t;
  t["id"] = id;
  t["content"] = kSpecialTokens[id];
  t["single_word"] = false;
  t["lstrip"] = false;
  t["rstrip"] = false;
  t["normalized"] = false;
  t["special"] = true;
  return t;
}

// tokenizer.json in the layout `tokenizers` writes (key order as there).
std::string TokenizerJson(const Bpe& bpe) {
  OrderedJson root;
  root["version"] = "1.0";
  root["truncation"] = nullptr;
  root["padding"] = nullptr;
  root["added_tokens"] = OrderedJson::array();
  for (int32_t id = 0; id < kNumSpecial; ++id) root["added_tokens"].push_back(AddedTokenJson(id));
  root["normalizer"] = nullptr;
  OrderedJson digits;
  digits["type"] = "Digits";
  digits["individual_digits"] = true;
  OrderedJson byte_level;
  byte_level["type"] = "ByteLevel";
  byte_level["add_prefix_space"] = false;
  byte_level["trim_offsets"] = true;
  byte_level["use_regex"] = true;
  OrderedJson pre;
  pre["type"] = "Sequence";
  pre["pretokenizers"] = OrderedJson::array({digits, byte_level});
  root["pre_tokenizer"] = pre;
  OrderedJson post;
  post["type"] = "ByteLevel";
  post["add_prefix_space"] = true;
  post["trim_offsets"] = false;
  post["use_regex"] = true;
  root["post_processor"] = post;
  OrderedJson decoder;
  decoder["type"] = "ByteLevel";
  decoder["add_prefix_space"] = true;
  decoder["trim_offsets"] = true;
  decoder["use_regex"] = true;
  root["decoder"] = decoder;
  OrderedJson model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = nullptr;
  model["continuing_subword_prefix"] = "";
  model["end_of_word_suffix"] = "";
  model["fuse_unk"] = false;
  model["byte_fallback"] = false;
  model["ignore_merges"] = false;
  OrderedJson vocab = OrderedJson::object();
  for (size_t id = 0; id < bpe.vocab.size(); ++id) vocab[bpe.vocab[id]] = id;
  model["vocab"] = vocab;
  OrderedJson merges = OrderedJson::array();
  for (const auto& [a, b] : bpe.merges) merges.push_back(OrderedJson::array({a, b}));
  model["merges"] = merges;
  root["model"] = model;
  return root.dump(2) + "\n";
}

// tokenizer_config.json (keys sorted, as transformers writes them).
std::string TokenizerConfigJson() {
  OrderedJson root;
  root["add_bos_token"] = false;
  root["add_eos_token"] = false;
  root["add_prefix_space"] = false;
  OrderedJson decoder = OrderedJson::object();
  for (int32_t id = 0; id < kNumSpecial; ++id) {
    OrderedJson t;
    t["content"] = kSpecialTokens[id];
    t["lstrip"] = false;
    t["normalized"] = false;
    t["rstrip"] = false;
    t["single_word"] = false;
    t["special"] = true;
    decoder[std::to_string(id)] = t;
  }
  root["added_tokens_decoder"] = decoder;
  root["bos_token"] = kSpecialTokens[kBosId];
  root["chat_template"] = kChatMLTemplate;
  root["clean_up_tokenization_spaces"] = false;
  root["eos_token"] = kSpecialTokens[kEosId];
  root["model_max_length"] = kMaxPositions;
  root["pad_token"] = kSpecialTokens[kPadId];
  root["tokenizer_class"] = "GPT2Tokenizer";
  root["unk_token"] = kSpecialTokens[kPadId];
  return root.dump(2) + "\n";
}

std::string GenerationConfigJson() {
  OrderedJson root;
  root["bos_token_id"] = kBosId;
  root["eos_token_id"] = kEosId;
  root["pad_token_id"] = kPadId;
  return root.dump(2) + "\n";
}

formats::ModelConfig TinyConfig(int64_t vocab_size) {
  formats::ModelConfig c;
  c.model_type = "llama";
  c.architectures = {"LlamaForCausalLM"};
  c.layout = formats::ConfigLayout::kTransformersV4;
  c.hidden_size = 64;
  c.intermediate_size = 176;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.vocab_size = vocab_size;
  c.max_position_embeddings = kMaxPositions;
  c.rms_norm_eps = 1e-5;
  c.rope.theta = 10000.0;
  c.tie_word_embeddings = true;
  c.bos_token_id = kBosId;
  c.eos_token_ids = {kEosId};
  c.pad_token_id = kPadId;
  c.dtype = "float32";
  return c;
}

// Norms 1, everything else 0.02 * N(0, 1) from Rng(seed), in sorted-name order.
std::map<std::string, Tensor> TinyWeights(const formats::ModelConfig& config, uint64_t seed) {
  Rng rng(seed);
  std::map<std::string, Tensor> tensors;
  for (const auto& [name, shape] : formats::ExpectedTensorShapes(config)) {
    Tensor t = Tensor::Empty(shape, DType::kF32);
    float* data = t.data<float>();
    const bool norm = absl::EndsWith(name, "norm.weight");
    for (int64_t i = 0; i < t.numel(); ++i) {
      data[i] = norm ? 1.0f : static_cast<float>(kInitStd * rng.Normal());
    }
    tensors.emplace(name, std::move(t));
  }
  return tensors;
}

absl::Status Run(const Options& options) {
  ST_ASSIGN_OR_RETURN(const std::vector<std::string> texts,
                      TrainingTexts(options.arith_train, options.knowledge));
  const Bpe bpe = TrainBpe(CountWords(texts));
  const formats::ModelConfig config = TinyConfig(static_cast<int64_t>(bpe.vocab.size()));
  ST_RETURN_IF_ERROR(
      formats::WriteHfCheckpoint(options.out, config, TinyWeights(config, options.seed)));
  ST_RETURN_IF_ERROR(
      formats::WriteFileAtomically(options.out + "/tokenizer.json", TokenizerJson(bpe)));
  ST_RETURN_IF_ERROR(
      formats::WriteFileAtomically(options.out + "/tokenizer_config.json", TokenizerConfigJson()));
  ST_RETURN_IF_ERROR(formats::WriteFileAtomically(options.out + "/generation_config.json",
                                                  GenerationConfigJson()));
  std::cout << "make_tiny_model: wrote " << options.out << " (seed " << options.seed << ", vocab "
            << bpe.vocab.size() << ", " << bpe.merges.size() << " merges from " << texts.size()
            << " texts)\n";
  return absl::OkStatus();
}

}  // namespace
}  // namespace sigmatune::examples

int main(int argc, char** argv) {
  const absl::StatusOr<sigmatune::examples::Options> options =
      sigmatune::examples::ParseArgs(argc, argv);
  if (!options.ok()) {
    std::cerr << "make_tiny_model: " << options.status().message()
              << "\nusage: make_tiny_model --out=<dir> [--seed=7] [--arith_train=<jsonl>] "
                 "[--knowledge=<jsonl>]\n";
    return 2;
  }
  const absl::Status status = sigmatune::examples::Run(*options);
  if (!status.ok()) {
    std::cerr << "make_tiny_model: " << status << "\n";
    return 1;
  }
  return 0;
}
