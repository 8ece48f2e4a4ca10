// Tokenizer::FromJson / FromJsonFile: tokenizer.json -> TokenizerModel (see tokenizer.h).
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/data/tokenizer.h"

namespace sigmatune::data {
namespace {

using Json = nlohmann::json;

constexpr char kGpt2Pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// Error helper: "<source>: field '<field>': <what>".
class Errors {
 public:
  explicit Errors(absl::string_view source) : source_(source) {}
  absl::Status Bad(absl::string_view field, absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": field '", field, "': ", what));
  }
  absl::Status Unsupported(absl::string_view field, absl::string_view what) const {
    return absl::UnimplementedError(absl::StrCat(
        source_, ": field '", field, "': ", what,
        " is not supported by this byte-level BPE tokenizer (GPT-2 / SmolLM2 style); use a "
        "tokenizer.json of that family"));
  }

 private:
  std::string source_;
};

// Reads an optional boolean member (absent or null -> fallback).
absl::StatusOr<bool> GetBool(const Json& obj, const char* key, bool fallback,
                             const std::string& field, const Errors& err) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) return err.Bad(absl::StrCat(field, ".", key), "expected true or false");
  return it->get<bool>();
}

// True when member key is absent, null, or an empty string.
bool AbsentOrEmpty(const Json& obj, const char* key) {
  const auto it = obj.find(key);
  return it == obj.end() || it->is_null() || (it->is_string() && it->get_ref<const std::string&>().empty());
}

absl::Status ParseByteLevel(const Json& pt, const std::string& field, bool need_regex,
                            TokenizerModel* model, const Errors& err) {
  ST_ASSIGN_OR_RETURN(const bool prefix, GetBool(pt, "add_prefix_space", true, field, err));
  ST_ASSIGN_OR_RETURN(const bool use_regex, GetBool(pt, "use_regex", true, field, err));
  if (use_regex != need_regex) {
    return err.Unsupported(absl::StrCat(field, ".use_regex"),
                           need_regex ? "use_regex = false without a preceding GPT-2 Split"
                                      : "use_regex = true after a Split");
  }
  model->prefix_space = prefix ? PrefixSpace::kYes : PrefixSpace::kNo;
  return absl::OkStatus();
}

absl::Status ParsePreTokenizer(const Json& root, TokenizerModel* model, const Errors& err) {
  const auto it = root.find("pre_tokenizer");
  if (it == root.end() || it->is_null()) {
    return err.Unsupported("pre_tokenizer", "a missing pre_tokenizer");
  }
  const auto type_of = [](const Json& j) -> std::string {
    if (!j.is_object()) return "";
    const auto t = j.find("type");
    return t != j.end() && t->is_string() ? t->get<std::string>() : "";
  };
  const std::string type = type_of(*it);
  if (type == "ByteLevel") {
    model->pre_tokenizer = PreTokenizerKind::kByteLevel;
    return ParseByteLevel(*it, "pre_tokenizer", /*need_regex=*/true, model, err);
  }
  if (type != "Sequence") {
    return err.Unsupported("pre_tokenizer.type", absl::StrCat("\"", type, "\""));
  }
  const auto list = it->find("pretokenizers");
  if (list == it->end() || !list->is_array()) {
    return err.Bad("pre_tokenizer.pretokenizers", "expected an array");
  }
  // Accepted: [Digits{individual}, ByteLevel{regex}], [Split{GPT-2}, ByteLevel{no regex}],
  // [ByteLevel{regex}].
  bool digits = false;
  bool split = false;
  bool byte_level = false;
  for (size_t i = 0; i < list->size(); ++i) {
    const Json& p = (*list)[i];
    const std::string field = absl::StrCat("pre_tokenizer.pretokenizers[", i, "]");
    const std::string t = type_of(p);
    if (t == "Digits" && i == 0) {
      ST_ASSIGN_OR_RETURN(const bool individual,
                          GetBool(p, "individual_digits", false, field, err));
      if (!individual) return err.Unsupported(field, "Digits with individual_digits = false");
      digits = true;
    } else if (t == "Split" && !byte_level && !split) {
      const auto pattern = p.find("pattern");
      const Json* regex = nullptr;
      if (pattern != p.end() && pattern->is_object()) {
        const auto r = pattern->find("Regex");
        if (r != pattern->end() && r->is_string()) regex = &*r;
      }
      const auto behavior = p.find("behavior");
      ST_ASSIGN_OR_RETURN(const bool invert, GetBool(p, "invert", false, field, err));
      if (regex == nullptr || regex->get<std::string>() != kGpt2Pattern || invert ||
          behavior == p.end() || !behavior->is_string() || behavior->get<std::string>() != "Isolated") {
        return err.Unsupported(field, "a Split other than the GPT-2 pattern (Isolated)");
      }
      split = true;
    } else if (t == "ByteLevel" && !byte_level) {
      ST_RETURN_IF_ERROR(ParseByteLevel(p, field, /*need_regex=*/!split, model, err));
      byte_level = true;
    } else {
      return err.Unsupported(absl::StrCat(field, ".type"),
                             absl::StrCat("\"", t, "\" at this position"));
    }
  }
  if (!byte_level) return err.Unsupported("pre_tokenizer", "a Sequence without ByteLevel");
  model->pre_tokenizer =
      digits ? PreTokenizerKind::kDigitsThenByteLevel : PreTokenizerKind::kByteLevel;
  return absl::OkStatus();
}

absl::Status ParsePostProcessor(const Json& root, TokenizerModel* model, const Errors& err) {
  const auto it = root.find("post_processor");
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  const auto type = it->find("type");
  const std::string t = type != it->end() && type->is_string() ? type->get<std::string>() : "";
  if (t == "ByteLevel") return absl::OkStatus();  // offsets only
  if (t != "TemplateProcessing") {
    return err.Unsupported("post_processor.type", absl::StrCat("\"", t, "\""));
  }
  const auto single = it->find("single");
  const auto specials = it->find("special_tokens");
  if (single == it->end() || !single->is_array()) {
    return err.Bad("post_processor.single", "expected an array");
  }
  bool seen_sequence = false;
  for (size_t i = 0; i < single->size(); ++i) {
    const Json& piece = (*single)[i];
    const std::string field = absl::StrCat("post_processor.single[", i, "]");
    if (piece.is_object() && piece.contains("Sequence")) {
      seen_sequence = true;
      continue;
    }
    const Json* special = nullptr;
    if (piece.is_object()) {
      const auto s = piece.find("SpecialToken");
      if (s != piece.end() && s->is_object()) {
        const auto id = s->find("id");
        if (id != s->end() && id->is_string()) special = &*id;
      }
    }
    if (special == nullptr) return err.Bad(field, "expected {\"Sequence\": ...} or {\"SpecialToken\": {\"id\": ...}}");
    const std::string name = special->get<std::string>();
    if (specials == it->end() || !specials->is_object() || !specials->contains(name)) {
      return err.Bad("post_processor.special_tokens",
                     absl::StrCat("has no entry \"", name, "\" used by ", field));
    }
    const Json& entry = (*specials)[name];
    const auto ids = entry.is_object() ? entry.find("ids") : entry.end();
    if (!entry.is_object() || ids == entry.end() || !ids->is_array()) {
      return err.Bad(absl::StrCat("post_processor.special_tokens.", name, ".ids"),
                     "expected an array of ids");
    }
    for (const Json& id : *ids) {
      if (!id.is_number_integer()) {
        return err.Bad(absl::StrCat("post_processor.special_tokens.", name, ".ids"),
                       "expected integer ids");
      }
      (seen_sequence ? model->suffix_ids : model->prefix_ids).push_back(id.get<int32_t>());
    }
  }
  return absl::OkStatus();
}

absl::Status ParseModel(const Json& root, TokenizerModel* model, const Errors& err) {
  const auto it = root.find("model");
  if (it == root.end() || !it->is_object()) return err.Bad("model", "expected an object");
  const Json& m = *it;
  const auto type = m.find("type");
  if (type != m.end() && !(type->is_string() && type->get<std::string>() == "BPE")) {
    return err.Unsupported("model.type", absl::StrCat(type->dump(), " (only \"BPE\")"));
  }
  if (const auto d = m.find("dropout"); d != m.end() && !d->is_null()) {
    if (!d->is_number() || d->get<double>() != 0.0) return err.Unsupported("model.dropout", "BPE dropout");
  }
  if (!AbsentOrEmpty(m, "continuing_subword_prefix")) {
    return err.Unsupported("model.continuing_subword_prefix", "a subword prefix");
  }
  if (!AbsentOrEmpty(m, "end_of_word_suffix")) {
    return err.Unsupported("model.end_of_word_suffix", "an end-of-word suffix");
  }
  ST_ASSIGN_OR_RETURN(const bool byte_fallback, GetBool(m, "byte_fallback", false, "model", err));
  if (byte_fallback) return err.Unsupported("model.byte_fallback", "byte_fallback = true");
  ST_ASSIGN_OR_RETURN(model->ignore_merges, GetBool(m, "ignore_merges", false, "model", err));

  const auto vocab = m.find("vocab");
  if (vocab == m.end() || !vocab->is_object() || vocab->empty()) {
    return err.Bad("model.vocab", "expected a non-empty object {token: id}");
  }
  for (const auto& [token, id] : vocab->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (1 << 24)) {
      return err.Bad(absl::StrCat("model.vocab[\"", token, "\"]"),
                     "expected an id in [0, 16777216)");
    }
    const size_t i = id.get<size_t>();
    if (i >= model->vocab.size()) model->vocab.resize(i + 1);
    if (!model->vocab[i].empty()) {
      return err.Bad(absl::StrCat("model.vocab[\"", token, "\"]"),
                     absl::StrCat("id ", i, " is also used by \"", model->vocab[i], "\""));
    }
    if (token.empty()) return err.Bad("model.vocab", "has an empty token");
    model->vocab[i] = token;
  }
  const auto merges = m.find("merges");
  if (merges == m.end() || !merges->is_array()) {
    return err.Bad("model.merges", "expected an array of \"a b\" strings or [\"a\", \"b\"] pairs");
  }
  model->merges.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const Json& e = (*merges)[i];
    const std::string field = absl::StrCat("model.merges[", i, "]");
    if (e.is_string()) {
      const std::string& s = e.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return err.Bad(field, absl::StrCat("\"", s, "\" is not two tokens separated by one space"));
      }
      model->merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      model->merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    } else {
      return err.Bad(field, "expected \"a b\" or [\"a\", \"b\"]");
    }
  }
  if (const auto unk = m.find("unk_token"); unk != m.end() && !unk->is_null()) {
    if (!unk->is_string()) return err.Bad("model.unk_token", "expected a string or null");
    const std::string name = unk->get<std::string>();
    const auto id = vocab->find(name);
    if (id == vocab->end()) {
      return err.Bad("model.unk_token", absl::StrCat("\"", name, "\" is not in model.vocab"));
    }
    model->unk_id = id->get<int32_t>();
  }
  return absl::OkStatus();
}

absl::Status ParseAddedTokens(const Json& root, TokenizerModel* model, const Errors& err) {
  const auto it = root.find("added_tokens");
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_array()) return err.Bad("added_tokens", "expected an array");
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& t = (*it)[i];
    const std::string field = absl::StrCat("added_tokens[", i, "]");
    if (!t.is_object()) return err.Bad(field, "expected an object");
    const auto id = t.find("id");
    const auto content = t.find("content");
    if (id == t.end() || !id->is_number_integer() || id->get<int64_t>() < 0 ||
        id->get<int64_t>() >= (1 << 24)) {
      return err.Bad(field + ".id", "expected an id in [0, 16777216)");
    }
    if (content == t.end() || !content->is_string() || content->get_ref<const std::string&>().empty()) {
      return err.Bad(field + ".content", "expected a non-empty string");
    }
    AddedToken a;
    a.id = id->get<int32_t>();
    a.content = content->get<std::string>();
    ST_ASSIGN_OR_RETURN(a.single_word, GetBool(t, "single_word", false, field, err));
    ST_ASSIGN_OR_RETURN(a.lstrip, GetBool(t, "lstrip", false, field, err));
    ST_ASSIGN_OR_RETURN(a.rstrip, GetBool(t, "rstrip", false, field, err));
    ST_ASSIGN_OR_RETURN(a.normalized, GetBool(t, "normalized", false, field, err));
    ST_ASSIGN_OR_RETURN(a.special, GetBool(t, "special", false, field, err));
    model->added_tokens.push_back(std::move(a));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::FromJson(absl::string_view json,
                                              absl::string_view source_name) {
  const Errors err(source_name);
  const Json root = Json::parse(json.begin(), json.end(), /*cb=*/nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source_name, ": not a JSON object; expected a Hugging Face tokenizer.json"));
  }
  for (const char* key : {"normalizer", "truncation", "padding"}) {
    const auto it = root.find(key);
    if (it != root.end() && !it->is_null()) {
      return err.Unsupported(key, absl::StrCat("a non-null ", key));
    }
  }
  const auto decoder = root.find("decoder");
  if (decoder == root.end() || !decoder->is_object() || !decoder->contains("type") ||
      (*decoder)["type"] != "ByteLevel") {
    return err.Unsupported("decoder", decoder == root.end() ? "a missing decoder"
                                                            : absl::StrCat(decoder->dump(), " (only ByteLevel)"));
  }
  TokenizerModel model;
  ST_RETURN_IF_ERROR(ParseModel(root, &model, err));
  ST_RETURN_IF_ERROR(ParsePreTokenizer(root, &model, err));
  ST_RETURN_IF_ERROR(ParsePostProcessor(root, &model, err));
  ST_RETURN_IF_ERROR(ParseAddedTokens(root, &model, err));
  return FromModel(std::move(model), source_name);
}

absl::StatusOr<Tokenizer> Tokenizer::FromJsonFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open the tokenizer.json file; check the path"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return FromJson(text.str(), path);
}

}  // namespace sigmatune::data
