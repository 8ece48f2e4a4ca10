// JSONL datasets -> token ids and loss masks (see dataset.h).
#include "worker/data/dataset.h"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/types/span.h"
#include "kernels/base/check.h"
#include "kernels/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace sigmatune::data {
namespace {

using Json = nlohmann::json;

constexpr int32_t kIgnore = -100;

constexpr char kAlpacaWithInput[] =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n";
constexpr char kAlpacaNoInput[] =
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n";

// The keys each format needs, for error messages.
absl::string_view FormatKeys(RecordFormat format) {
  switch (format) {
    case RecordFormat::kText:
      return "{\"text\": string}";
    case RecordFormat::kCompletion:
      return "{\"prompt\": string, \"completion\": string}";
    case RecordFormat::kAlpaca:
      return "{\"instruction\": string, \"input\": string (optional), \"output\": string}";
    case RecordFormat::kChat:
      return "{\"messages\": [{\"role\": \"system\"|\"user\"|\"assistant\", \"content\": string}, ...]}";
    case RecordFormat::kShareGpt:
      return "{\"conversations\": [{\"from\": \"system\"|\"human\"|\"gpt\", \"value\": string}, ...]}";
    case RecordFormat::kSegments:
      return "{\"segments\": [{\"text\": string, \"label\": true|false}, ...]}";
    case RecordFormat::kTokenized:
      return "{\"input_ids\": [int, ...], \"labels\": [int or -100, ...] (optional), \"attention_mask\": "
             "[0|1, ...] (optional)}";
    case RecordFormat::kAuto:
      break;
  }
  return "one of the formats";
}

constexpr RecordFormat kConcreteFormats[] = {RecordFormat::kText,     RecordFormat::kCompletion,
                                             RecordFormat::kAlpaca,   RecordFormat::kChat,
                                             RecordFormat::kShareGpt, RecordFormat::kSegments,
                                             RecordFormat::kTokenized};

// "<path>:<line>: " prefixed errors about one record.
class RecordErrors {
 public:
  RecordErrors(const std::string& path, int64_t line, RecordFormat format)
      : path_(path), line_(line), format_(format) {}

  absl::Status Bad(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(path_, ":", line_, ": ", what));
  }
  // A missing or wrong-typed key: says what the format needs.
  absl::Status BadKey(absl::string_view key, absl::string_view what) const {
    return Bad(absl::StrCat("key '", key, "' ", what, "; a ", RecordFormatName(format_), " record is ",
                            FormatKeys(format_)));
  }
  int64_t line() const { return line_; }
  const std::string& path() const { return path_; }

 private:
  const std::string& path_;
  int64_t line_;
  RecordFormat format_;
};

// A required string member.
absl::StatusOr<const std::string*> GetString(const Json& obj, const char* key, absl::string_view field,
                                             const RecordErrors& err) {
  const auto it = obj.find(key);
  if (it == obj.end()) return err.BadKey(field, "is missing");
  if (!it->is_string()) return err.BadKey(field, absl::StrCat("must be a string, got ", it->type_name()));
  return &it->get_ref<const std::string&>();
}

// A required non-empty array member.
absl::StatusOr<const Json*> GetArray(const Json& obj, const char* key, const RecordErrors& err) {
  const auto it = obj.find(key);
  if (it == obj.end()) return err.BadKey(key, "is missing");
  if (!it->is_array()) return err.BadKey(key, absl::StrCat("must be an array, got ", it->type_name()));
  if (it->empty()) return err.BadKey(key, "is an empty array");
  return &*it;
}

// An integer in [lo, hi], or an error naming field.
absl::StatusOr<int64_t> GetInt(const Json& v, int64_t lo, int64_t hi, absl::string_view field,
                               const RecordErrors& err) {
  if (!v.is_number_integer()) return err.BadKey(field, absl::StrCat("must be an integer, got ", v.dump()));
  int64_t value = 0;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return err.BadKey(field, absl::StrCat("is out of range [", lo, ", ", hi, "]: ", u));
    }
    value = static_cast<int64_t>(u);
  } else {
    value = v.get<int64_t>();
  }
  if (value < lo || value > hi) {
    return err.BadKey(field, absl::StrCat("is out of range [", lo, ", ", hi, "]: ", value));
  }
  return value;
}

// Ids and per-token trained flags of one sample while it is built, plus what exact-match
// evaluation needs.
struct Encoded {
  std::vector<int32_t> ids;
  std::vector<char> trained;
  bool has_answer = false;
  size_t prompt_len = 0;  // ids before the answer
  std::string answer;
};

class Encoder {
 public:
  Encoder(const SampleEncoder& enc, TrainOnInput train_on_input, const RecordErrors& err)
      : enc_(enc), all_(train_on_input == TrainOnInput::kYes), err_(err) {}

  void AddIds(absl::Span<const int32_t> ids, bool trained, Encoded* out) const {
    out->ids.insert(out->ids.end(), ids.begin(), ids.end());
    out->trained.insert(out->trained.end(), ids.size(), static_cast<char>(trained || all_));
  }
  absl::Status AddText(absl::string_view text, absl::string_view field, bool trained, Encoded* out) const {
    if (text.empty()) return absl::OkStatus();
    absl::StatusOr<std::vector<int32_t>> ids = enc_.tokenizer->Encode(text);
    if (!ids.ok()) return err_.Bad(absl::StrCat("field '", field, "': ", ids.status().message()));
    AddIds(*ids, trained, out);
    return absl::OkStatus();
  }
  void AddBos(Encoded* out) const { AddIds(enc_.bos_ids, false, out); }
  void AddEos(Encoded* out) const {
    if (enc_.eos_id >= 0) AddIds({enc_.eos_id}, true, out);
  }

  absl::Status Text(const Json& rec, Encoded* out) const {
    ST_ASSIGN_OR_RETURN(const std::string* text, GetString(rec, "text", "text", err_));
    AddBos(out);
    ST_RETURN_IF_ERROR(AddText(*text, "text", true, out));
    AddEos(out);
    return absl::OkStatus();
  }

  absl::Status Completion(const Json& rec, Encoded* out) const {
    ST_ASSIGN_OR_RETURN(const std::string* prompt, GetString(rec, "prompt", "prompt", err_));
    ST_ASSIGN_OR_RETURN(const std::string* completion, GetString(rec, "completion", "completion", err_));
    AddBos(out);
    ST_RETURN_IF_ERROR(AddText(*prompt, "prompt", false, out));
    SetAnswer(*completion, out);
    ST_RETURN_IF_ERROR(AddText(*completion, "completion", true, out));
    AddEos(out);
    return absl::OkStatus();
  }

  absl::Status Alpaca(const Json& rec, Encoded* out) const {
    ST_ASSIGN_OR_RETURN(const std::string* instruction, GetString(rec, "instruction", "instruction", err_));
    ST_ASSIGN_OR_RETURN(const std::string* output, GetString(rec, "output", "output", err_));
    std::string input;
    const auto it = rec.find("input");
    if (it != rec.end() && !it->is_null()) {
      if (!it->is_string()) {
        return err_.BadKey("input", absl::StrCat("must be a string, got ", it->type_name()));
      }
      input = it->get<std::string>();
    }
    const std::string prompt =
        input.empty()
            ? absl::StrCat(kAlpacaNoInput, "### Instruction:\n", *instruction, "\n\n### Response:\n")
            : absl::StrCat(kAlpacaWithInput, "### Instruction:\n", *instruction, "\n\n### Input:\n", input,
                           "\n\n### Response:\n");
    AddBos(out);
    ST_RETURN_IF_ERROR(AddText(prompt, "instruction", false, out));
    SetAnswer(*output, out);
    ST_RETURN_IF_ERROR(AddText(*output, "output", true, out));
    AddEos(out);
    return absl::OkStatus();
  }

  // messages / conversations -> ChatMessage list, then the chat encoding.
  absl::Status Chat(const Json& rec, RecordFormat format, Encoded* out) const {
    const bool sharegpt = format == RecordFormat::kShareGpt;
    const char* list_key = sharegpt ? "conversations" : "messages";
    const char* role_key = sharegpt ? "from" : "role";
    const char* content_key = sharegpt ? "value" : "content";
    ST_ASSIGN_OR_RETURN(const Json* list, GetArray(rec, list_key, err_));
    std::vector<ChatMessage> messages;
    for (size_t i = 0; i < list->size(); ++i) {
      const Json& m = (*list)[i];
      const std::string at = absl::StrCat(list_key, "[", i, "]");
      if (!m.is_object()) return err_.BadKey(at, absl::StrCat("must be an object, got ", m.type_name()));
      ST_ASSIGN_OR_RETURN(const std::string* role, GetString(m, role_key, absl::StrCat(at, ".", role_key), err_));
      ST_ASSIGN_OR_RETURN(const std::string* content,
                          GetString(m, content_key, absl::StrCat(at, ".", content_key), err_));
      std::string mapped;
      if (sharegpt) {
        if (*role == "human") mapped = "user";
        if (*role == "gpt") mapped = "assistant";
        if (*role == "system") mapped = "system";
      } else if (*role == "system" || *role == "user" || *role == "assistant") {
        mapped = *role;
      }
      if (mapped.empty()) {
        return err_.Bad(absl::StrCat("field '", at, ".", role_key, "': unknown role '", *role, "'; use ",
                                     sharegpt ? "system, human or gpt" : "system, user or assistant"));
      }
      messages.push_back({std::move(mapped), *content});
    }
    return EncodeChat(messages, list_key, out);
  }

  absl::Status Segments(const Json& rec, Encoded* out) const {
    ST_ASSIGN_OR_RETURN(const Json* list, GetArray(rec, "segments", err_));
    for (size_t i = 0; i < list->size(); ++i) {
      const Json& s = (*list)[i];
      const std::string at = absl::StrCat("segments[", i, "]");
      if (!s.is_object()) return err_.BadKey(at, absl::StrCat("must be an object, got ", s.type_name()));
      ST_ASSIGN_OR_RETURN(const std::string* text, GetString(s, "text", at + ".text", err_));
      const auto label = s.find("label");
      if (label == s.end()) return err_.BadKey(at + ".label", "is missing");
      if (!label->is_boolean()) {
        return err_.BadKey(at + ".label", absl::StrCat("must be true or false, got ", label->dump()));
      }
      ST_RETURN_IF_ERROR(AddText(*text, at + ".text", label->get<bool>(), out));
    }
    return absl::OkStatus();
  }

  absl::Status Tokenized(const Json& rec, Encoded* out) const {
    ST_ASSIGN_OR_RETURN(const Json* ids, GetArray(rec, "input_ids", err_));
    const Json* labels = OptionalArray(rec, "labels");
    const Json* mask = OptionalArray(rec, "attention_mask");
    for (const auto& [key, arr] : {std::pair<const char*, const Json*>{"labels", labels}, {"attention_mask", mask}}) {
      if (arr == nullptr) continue;
      if (!arr->is_array()) return err_.BadKey(key, absl::StrCat("must be an array, got ", arr->type_name()));
      if (arr->size() != ids->size()) {
        return err_.BadKey(key, absl::StrCat("has ", arr->size(), " entries but input_ids has ", ids->size(),
                                             "; they must have one entry per token"));
      }
    }
    const int64_t vocab = enc_.tokenizer->vocab_size();
    for (size_t t = 0; t < ids->size(); ++t) {
      ST_ASSIGN_OR_RETURN(const int64_t id,
                          GetInt((*ids)[t], 0, vocab - 1, absl::StrCat("input_ids[", t, "]"), err_));
      if (mask != nullptr) {
        ST_ASSIGN_OR_RETURN(const int64_t m, GetInt((*mask)[t], 0, 1, absl::StrCat("attention_mask[", t, "]"), err_));
        if (m == 0) continue;
      }
      bool trained = true;
      if (labels != nullptr) {
        ST_ASSIGN_OR_RETURN(const int64_t label,
                            GetInt((*labels)[t], kIgnore, vocab - 1, absl::StrCat("labels[", t, "]"), err_));
        if (label != kIgnore && label != id) {
          return err_.BadKey(absl::StrCat("labels[", t, "]"),
                             absl::StrCat("is ", label, " but input_ids[", t, "] is ", id,
                                          "; labels are unshifted (Hugging Face convention): each is the token's "
                                          "own id or -100"));
        }
        trained = label != kIgnore;
      }
      AddIds({static_cast<int32_t>(id)}, trained, out);
    }
    return absl::OkStatus();
  }

 private:
  static const Json* OptionalArray(const Json& rec, const char* key) {
    const auto it = rec.find(key);
    return it == rec.end() || it->is_null() ? nullptr : &*it;
  }

  static void SetAnswer(const std::string& answer, Encoded* out) {
    out->has_answer = true;
    out->prompt_len = out->ids.size();
    out->answer = answer;
  }

  // Renders prefixes of the conversation to find where each assistant content starts and ends in
  // the full rendering; tokenizes the pieces between them separately.
  absl::Status EncodeChat(const std::vector<ChatMessage>& messages, absl::string_view list_key,
                          Encoded* out) const {
    if (enc_.chat_template == nullptr) {
      return err_.Bad(absl::StrCat("a ", list_key,
                                   " record needs a chat template but the model has no chat template; use "
                                   "completion, alpaca or segments records, or a model with a chat template"));
    }
    const ChatTemplate& tmpl = *enc_.chat_template;
    const std::string full = tmpl.Render(messages, GenerationPrompt::kNo);
    const absl::Span<const ChatMessage> all(messages);
    AddBos(out);
    size_t pos = 0;  // characters of `full` already tokenized
    bool any_assistant = false;
    for (size_t i = 0; i < messages.size(); ++i) {
      if (messages[i].role != "assistant") continue;
      any_assistant = true;
      const std::string& content = messages[i].content;
      const std::string before = tmpl.Render(all.subspan(0, i), GenerationPrompt::kYes);
      const std::string through = tmpl.Render(all.subspan(0, i + 1), GenerationPrompt::kNo);
      if (before.size() < pos || !absl::StartsWith(full, before) || !absl::StartsWith(through, before) ||
          through.compare(before.size(), content.size(), content) != 0 || !absl::StartsWith(full, through)) {
        return absl::InternalError(absl::StrCat(
            err_.path(), ":", err_.line(), ": the chat template does not render ", list_key, "[", i,
            "] verbatim after its generation prompt, so its loss mask cannot be found; report this template"));
      }
      const std::string at = absl::StrCat(list_key, "[", i, "]");
      ST_RETURN_IF_ERROR(AddText(absl::string_view(full).substr(pos, before.size() - pos), at, false, out));
      SetAnswer(content, out);
      ST_RETURN_IF_ERROR(AddText(content, at, true, out));
      // What the template puts after the content: its leading special tokens end the turn (trained).
      const absl::string_view tail = absl::string_view(through).substr(before.size() + content.size());
      absl::StatusOr<std::vector<int32_t>> tail_ids = enc_.tokenizer->Encode(tail);
      if (!tail_ids.ok()) return err_.Bad(absl::StrCat("field '", at, "': ", tail_ids.status().message()));
      size_t eot = 0;
      while (eot < tail_ids->size() && enc_.tokenizer->IsSpecial((*tail_ids)[eot])) ++eot;
      AddIds(absl::MakeConstSpan(*tail_ids).subspan(0, eot), true, out);
      AddIds(absl::MakeConstSpan(*tail_ids).subspan(eot), false, out);
      pos = through.size();
    }
    if (!any_assistant) {
      return err_.Bad(absl::StrCat("field '", list_key, "': the conversation has no ",
                                   list_key == "messages" ? "assistant" : "gpt",
                                   " turn, so there is nothing to train on; add one or drop the record"));
    }
    return AddText(absl::string_view(full).substr(pos), list_key, false, out);
  }

  const SampleEncoder& enc_;
  bool all_;
  const RecordErrors& err_;
};

// The format of a record: the explicit one, or by its keys.
absl::StatusOr<RecordFormat> DetectFormat(const Json& rec, RecordFormat requested, const RecordErrors& err) {
  if (requested != RecordFormat::kAuto) return requested;
  if (rec.contains("messages")) return RecordFormat::kChat;
  if (rec.contains("conversations")) return RecordFormat::kShareGpt;
  if (rec.contains("segments")) return RecordFormat::kSegments;
  if (rec.contains("input_ids")) return RecordFormat::kTokenized;
  if (rec.contains("instruction") && rec.contains("output")) return RecordFormat::kAlpaca;
  if (rec.contains("prompt") && rec.contains("completion")) return RecordFormat::kCompletion;
  if (rec.contains("text")) return RecordFormat::kText;
  std::vector<std::string> keys;
  for (auto it = rec.begin(); it != rec.end(); ++it) keys.push_back(it.key());
  std::vector<std::string> shapes;
  for (RecordFormat f : kConcreteFormats) shapes.push_back(absl::StrCat(RecordFormatName(f), " ", FormatKeys(f)));
  return err.Bad(absl::StrCat("cannot tell the record format from its keys [", absl::StrJoin(keys, ", "),
                              "]; a record must be one of: ", absl::StrJoin(shapes, "; "),
                              " (or set the dataset format explicitly)"));
}

// Parses one line into an object and encodes it.
absl::StatusOr<Encoded> EncodeRecord(absl::string_view line_text, const DatasetOptions& options,
                                     const SampleEncoder& encoder, const RecordErrors& line_err,
                                     RecordFormat* format_out) {
  const Json rec = Json::parse(line_text.begin(), line_text.end(), nullptr, /*allow_exceptions=*/false);
  if (rec.is_discarded()) {
    constexpr size_t kShow = 80;
    return line_err.Bad(absl::StrCat("not valid JSON (each non-blank line must be one JSON object): '",
                                     line_text.substr(0, kShow), line_text.size() > kShow ? "...'" : "'"));
  }
  if (!rec.is_object()) {
    return line_err.Bad(absl::StrCat("a record must be a JSON object, got ", rec.type_name()));
  }
  ST_ASSIGN_OR_RETURN(const RecordFormat format, DetectFormat(rec, options.format, line_err));
  *format_out = format;
  const RecordErrors err(line_err.path(), line_err.line(), format);
  const Encoder enc(encoder, options.train_on_input, err);
  Encoded out;
  switch (format) {
    case RecordFormat::kText:
      ST_RETURN_IF_ERROR(enc.Text(rec, &out));
      break;
    case RecordFormat::kCompletion:
      ST_RETURN_IF_ERROR(enc.Completion(rec, &out));
      break;
    case RecordFormat::kAlpaca:
      ST_RETURN_IF_ERROR(enc.Alpaca(rec, &out));
      break;
    case RecordFormat::kChat:
    case RecordFormat::kShareGpt:
      ST_RETURN_IF_ERROR(enc.Chat(rec, format, &out));
      break;
    case RecordFormat::kSegments:
      ST_RETURN_IF_ERROR(enc.Segments(rec, &out));
      break;
    case RecordFormat::kTokenized:
      ST_RETURN_IF_ERROR(enc.Tokenized(rec, &out));
      break;
    case RecordFormat::kAuto:
      ST_CHECK(false) << "DetectFormat returned kAuto";
  }
  if (out.ids.empty()) {
    return err.Bad("the record gives no tokens at all (empty text and no bos/eos); drop it");
  }
  return out;
}

// Calls fn(line_text, line_number) for each non-blank line, stopping after max_records calls
// (0: all) or at fn's first error. Missing file: NotFound.
absl::Status ForEachLine(const std::string& path, int64_t max_records,
                         const std::function<absl::Status(absl::string_view, int64_t)>& fn) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": dataset file not found; check the dataset path"));
  }
  if (std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": is a directory; the dataset path must name a .jsonl file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open the dataset file for reading"));
  std::string line;
  int64_t number = 0;
  int64_t records = 0;
  while (std::getline(in, line)) {
    ++number;
    absl::string_view text = absl::StripTrailingAsciiWhitespace(line);
    if (absl::StripLeadingAsciiWhitespace(text).empty()) continue;
    ST_RETURN_IF_ERROR(fn(text, number));
    if (max_records > 0 && ++records >= max_records) break;
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error after line ", number));
  return absl::OkStatus();
}

absl::Status CheckOptions(const DatasetOptions& options, const SampleEncoder& encoder) {
  ST_CHECK(encoder.tokenizer != nullptr) << "SampleEncoder.tokenizer must be set";
  if (options.max_seq_len < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.path, ": max_seq_len is ", options.max_seq_len, "; it must be at least 1"));
  }
  if (options.max_samples < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.path, ": max_samples is ", options.max_samples, "; use 0 for all or a positive count"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RecordFormat> ParseRecordFormat(absl::string_view name) {
  if (name == "auto") return RecordFormat::kAuto;
  for (RecordFormat f : kConcreteFormats) {
    if (name == RecordFormatName(f)) return f;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown dataset format '", name,
      "'; use one of auto, text, completion, alpaca, chat, sharegpt, segments, tokenized"));
}

absl::string_view RecordFormatName(RecordFormat format) {
  switch (format) {
    case RecordFormat::kAuto:
      return "auto";
    case RecordFormat::kText:
      return "text";
    case RecordFormat::kCompletion:
      return "completion";
    case RecordFormat::kAlpaca:
      return "alpaca";
    case RecordFormat::kChat:
      return "chat";
    case RecordFormat::kShareGpt:
      return "sharegpt";
    case RecordFormat::kSegments:
      return "segments";
    case RecordFormat::kTokenized:
      return "tokenized";
  }
  return "?";
}

absl::StatusOr<Dataset> LoadDataset(const DatasetOptions& options, const SampleEncoder& encoder) {
  ST_RETURN_IF_ERROR(CheckOptions(options, encoder));
  Dataset ds;
  ST_RETURN_IF_ERROR(ForEachLine(
      options.path, options.max_samples, [&](absl::string_view text, int64_t line) -> absl::Status {
        const RecordErrors err(options.path, line, options.format);
        RecordFormat format = RecordFormat::kAuto;
        ST_ASSIGN_OR_RETURN(Encoded enc, EncodeRecord(text, options, encoder, err, &format));
        const int64_t n = static_cast<int64_t>(enc.ids.size());
        if (n > options.max_seq_len) {
          if (options.long_samples == LongSamples::kError) {
            return err.Bad(absl::StrCat("the sample is ", n, " tokens, longer than max_seq_len ", options.max_seq_len,
                                        "; raise sequence_len or set truncate_long_samples"));
          }
          enc.ids.resize(options.max_seq_len);
          enc.trained.resize(options.max_seq_len);
          ++ds.truncated_samples;
        }
        TokenizedSample sample;
        sample.line = line;
        sample.ids = std::move(enc.ids);
        sample.targets.resize(sample.ids.size(), kIgnore);
        int64_t trained = 0;
        for (size_t t = 1; t < sample.ids.size(); ++t) {
          if (enc.trained[t]) {
            sample.targets[t] = sample.ids[t];
            ++trained;
          }
        }
        if (trained == 0) ++ds.untrained_samples;
        ds.tokens += static_cast<int64_t>(sample.ids.size());
        ds.trained_tokens += trained;
        ++ds.records;
        ds.samples.push_back(std::move(sample));
        return absl::OkStatus();
      }));
  if (ds.samples.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(options.path, ": no records (the file is empty or blank)"));
  }
  return ds;
}

absl::StatusOr<std::vector<PromptAnswer>> LoadPromptAnswerSet(const DatasetOptions& options,
                                                              const SampleEncoder& encoder) {
  ST_RETURN_IF_ERROR(CheckOptions(options, encoder));
  auto no_answers = [&](RecordFormat f) {
    return absl::StrCat("exact_match evaluation needs prompt/answer records (completion, alpaca, chat or "
                        "sharegpt), but ",
                        RecordFormatName(f), " records have no answer; use another eval dataset or metric");
  };
  const RecordFormat requested = options.format;
  if (requested == RecordFormat::kText || requested == RecordFormat::kSegments ||
      requested == RecordFormat::kTokenized) {
    return absl::InvalidArgumentError(absl::StrCat(options.path, ": ", no_answers(requested)));
  }
  std::vector<PromptAnswer> out;
  ST_RETURN_IF_ERROR(ForEachLine(
      options.path, options.max_samples, [&](absl::string_view text, int64_t line) -> absl::Status {
        const RecordErrors err(options.path, line, requested);
        DatasetOptions plain = options;
        plain.train_on_input = TrainOnInput::kNo;
        RecordFormat format = RecordFormat::kAuto;
        absl::StatusOr<Encoded> enc = EncodeRecord(text, plain, encoder, err, &format);
        if (format == RecordFormat::kText || format == RecordFormat::kSegments ||
            format == RecordFormat::kTokenized) {
          return err.Bad(no_answers(format));
        }
        if (!enc.ok()) return enc.status();
        ST_CHECK(enc->has_answer);
        PromptAnswer pa;
        pa.line = line;
        pa.answer = std::move(enc->answer);
        pa.prompt_ids.assign(enc->ids.begin(), enc->ids.begin() + static_cast<std::ptrdiff_t>(enc->prompt_len));
        const int64_t n = static_cast<int64_t>(pa.prompt_ids.size());
        if (n > options.max_seq_len) {
          if (options.long_samples == LongSamples::kError) {
            return err.Bad(absl::StrCat("the prompt is ", n, " tokens, longer than max_seq_len ", options.max_seq_len,
                                        "; raise sequence_len or set truncate_long_samples"));
          }
          pa.prompt_ids.erase(pa.prompt_ids.begin(), pa.prompt_ids.end() - options.max_seq_len);
        }
        out.push_back(std::move(pa));
        return absl::OkStatus();
      }));
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(options.path, ": no records (the file is empty or blank)"));
  }
  return out;
}

}  // namespace sigmatune::data
