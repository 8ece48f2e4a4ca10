#include "worker/job/spec_parse.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/descriptor.h"
#include "kernels/base/check.h"
#include "nlohmann/json.hpp"
#include "yaml-cpp/yaml.h"

namespace sigmatune::job::internal {
namespace {

using ::google::protobuf::Descriptor;
using ::google::protobuf::EnumValueDescriptor;
using ::google::protobuf::FieldDescriptor;
using ::google::protobuf::Message;
using ::google::protobuf::Reflection;

using Problems = std::vector<SpecProblem>;

// Optimal string alignment distance (Levenshtein with adjacent transpositions), case-insensitive.
int EditDistance(absl::string_view a_in, absl::string_view b_in) {
  const std::string a = absl::AsciiStrToLower(a_in);
  const std::string b = absl::AsciiStrToLower(b_in);
  std::vector<std::vector<int>> d(a.size() + 1, std::vector<int>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = static_cast<int>(i);
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = static_cast<int>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      const int cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

constexpr int kMaxSuggestionDistance = 2;

// ---------------------------------------------------------------------------------------------
// A syntax-neutral tree: both parsers produce it, one descriptor-guided converter consumes it.

// How a scalar was written; it decides which field types the scalar may fill.
enum class ScalarKind {
  kYamlPlain,   // YAML without quotes or tag: 8, 2e-4, true, all-linear
  kYamlQuoted,  // YAML in quotes or with an explicit tag: "8", '123', !!str 5
  kJsonString,
  kJsonNumber,
  kJsonBool,
};

struct Entry;

struct Node {
  enum class Kind { kNull, kScalar, kSequence, kMapping };
  Kind kind = Kind::kNull;
  ScalarKind scalar_kind = ScalarKind::kYamlPlain;
  std::string text;            // kScalar: the scalar as written (JSON strings unescaped)
  std::vector<Node> items;     // kSequence
  std::vector<Entry> entries;  // kMapping, in document order, duplicate keys kept
  int line = 0;                // 1-based; 0 = unknown (JSON, YAML nulls)
};

struct Entry {
  std::string key;
  bool key_is_scalar = true;
  int line = 0;  // of the key
  Node value;
};

std::string AtLine(int line) { return line > 0 ? absl::StrCat(" (line ", line, ")") : std::string(); }

void AddProblem(Problems* problems, std::string path, std::string message, int line = 0) {
  problems->push_back(SpecProblem{std::move(path), absl::StrCat(message, AtLine(line))});
}

// ---------------------------------------------------------------------------------------------
// YAML -> Node (yaml-cpp throws; its exceptions stop here).

Node FromYaml(const YAML::Node& yaml) {
  Node node;
  const YAML::Mark mark = yaml.Mark();
  if (mark.line >= 0 && yaml.Type() != YAML::NodeType::Null) node.line = mark.line + 1;
  switch (yaml.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null:
      node.kind = Node::Kind::kNull;
      break;
    case YAML::NodeType::Scalar:
      node.kind = Node::Kind::kScalar;
      node.text = yaml.Scalar();
      node.scalar_kind = yaml.Tag() == "?" ? ScalarKind::kYamlPlain : ScalarKind::kYamlQuoted;
      break;
    case YAML::NodeType::Sequence:
      node.kind = Node::Kind::kSequence;
      for (const YAML::Node& item : yaml) node.items.push_back(FromYaml(item));
      break;
    case YAML::NodeType::Map:
      node.kind = Node::Kind::kMapping;
      for (const auto& key_value : yaml) {
        Entry entry;
        entry.key_is_scalar = key_value.first.IsScalar();
        if (entry.key_is_scalar) entry.key = key_value.first.Scalar();
        if (key_value.first.Mark().line >= 0) entry.line = key_value.first.Mark().line + 1;
        entry.value = FromYaml(key_value.second);
        node.entries.push_back(std::move(entry));
      }
      break;
  }
  return node;
}

ParseOutcome ParseYaml(absl::string_view text, Node* root, Problems* problems) {
  try {
    const std::vector<YAML::Node> documents = YAML::LoadAll(std::string(text));
    if (documents.empty()) {
      AddProblem(problems, "", "the spec is empty: write the job's fields (base_model, method, datasets, ...)");
      return ParseOutcome::kSyntaxError;
    }
    if (documents.size() > 1) {
      AddProblem(problems, "",
                 absl::StrCat("the file holds ", documents.size(),
                              " YAML documents (separated by ---); a job spec is one document"));
      return ParseOutcome::kSyntaxError;
    }
    *root = FromYaml(documents[0]);
  } catch (const YAML::Exception& e) {
    AddProblem(problems, "",
               absl::StrCat("invalid YAML at line ", e.mark.line + 1, ", column ", e.mark.column + 1, ": ", e.msg));
    return ParseOutcome::kSyntaxError;
  } catch (const std::exception& e) {
    AddProblem(problems, "", absl::StrCat("invalid YAML: ", e.what()));
    return ParseOutcome::kSyntaxError;
  }
  return ParseOutcome::kParsed;
}

// ---------------------------------------------------------------------------------------------
// JSON -> Node through nlohmann's SAX interface (keeps duplicate keys, which its DOM drops).

class JsonTreeBuilder {
 public:
  using Json = nlohmann::json;

  bool null() { return Add(Node()); }
  bool boolean(bool value) { return Add(Scalar(value ? "true" : "false", ScalarKind::kJsonBool)); }
  bool number_integer(Json::number_integer_t value) {
    return Add(Scalar(absl::StrCat(value), ScalarKind::kJsonNumber));
  }
  bool number_unsigned(Json::number_unsigned_t value) {
    return Add(Scalar(absl::StrCat(value), ScalarKind::kJsonNumber));
  }
  bool number_float(Json::number_float_t /*value*/, const Json::string_t& text) {
    return Add(Scalar(text, ScalarKind::kJsonNumber));
  }
  bool string(Json::string_t& value) { return Add(Scalar(value, ScalarKind::kJsonString)); }
  bool binary(Json::binary_t& /*value*/) { return Add(Node()); }  // not produced by JSON text
  bool start_object(std::size_t /*elements*/) { return Open(Node::Kind::kMapping); }
  bool key(Json::string_t& key) {
    keys_.back() = key;
    return true;
  }
  bool end_object() { return Close(); }
  bool start_array(std::size_t /*elements*/) { return Open(Node::Kind::kSequence); }
  bool end_array() { return Close(); }
  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/, const nlohmann::detail::exception& e) {
    error_ = e.what();
    return false;
  }

  const std::string& error() const { return error_; }
  Node TakeRoot() { return std::move(root_); }

 private:
  static Node Scalar(std::string text, ScalarKind kind) {
    Node node;
    node.kind = Node::Kind::kScalar;
    node.scalar_kind = kind;
    node.text = std::move(text);
    return node;
  }
  bool Open(Node::Kind kind) {
    // A job spec is a few levels deep; this bounds the recursion over the tree.
    constexpr size_t kMaxDepth = 100;
    if (open_.size() >= kMaxDepth) {
      error_ = absl::StrCat("lists and mappings nested more than ", kMaxDepth, " levels deep");
      return false;
    }
    open_.emplace_back();
    open_.back().kind = kind;
    keys_.emplace_back();
    return true;
  }
  bool Close() {
    Node node = std::move(open_.back());
    open_.pop_back();
    keys_.pop_back();
    return Add(std::move(node));
  }
  bool Add(Node node) {
    if (open_.empty()) {
      root_ = std::move(node);
    } else if (open_.back().kind == Node::Kind::kSequence) {
      open_.back().items.push_back(std::move(node));
    } else {
      Entry entry;
      entry.key = keys_.back();
      entry.value = std::move(node);
      open_.back().entries.push_back(std::move(entry));
    }
    return true;
  }

  std::vector<Node> open_;         // containers being filled, innermost last
  std::vector<std::string> keys_;  // the pending key of each open container
  Node root_;
  std::string error_;
};

ParseOutcome ParseJson(absl::string_view text, Node* root, Problems* problems) {
  JsonTreeBuilder builder;
  bool ok = false;
  try {
    ok = nlohmann::json::sax_parse(text.begin(), text.end(), &builder);
  } catch (const std::exception& e) {
    AddProblem(problems, "", absl::StrCat("invalid JSON: ", e.what()));
    return ParseOutcome::kSyntaxError;
  }
  if (!ok) {
    // "[json.exception.parse_error.101] parse error at line 3, column 5: syntax error while ..."
    absl::string_view message = builder.error();
    const size_t bracket = message.find("] ");
    if (absl::StartsWith(message, "[json.exception") && bracket != absl::string_view::npos) {
      message.remove_prefix(bracket + 2);
    }
    AddProblem(problems, "", absl::StrCat("invalid JSON: ", message));
    return ParseOutcome::kSyntaxError;
  }
  *root = builder.TakeRoot();
  return ParseOutcome::kParsed;
}

// ---------------------------------------------------------------------------------------------
// Node -> message, guided by the descriptor.

// Names other trainers (axolotl, torchtune, PEFT) use, with where the value goes here.
struct ForeignName {
  absl::string_view message;  // the descriptor's name the key was found in
  absl::string_view key;
  absl::string_view hint;
};

constexpr ForeignName kForeignNames[] = {
    {"JobSpec", "adapter", "the method goes in method.type (lora, pissa, milora, corda_ipm, corda_kpm, kasa)"},
    {"JobSpec", "lora_r", "sigmatune's name is method.rank"},
    {"JobSpec", "lora_rank", "sigmatune's name is method.rank"},
    {"JobSpec", "lora_alpha", "sigmatune's name is method.alpha"},
    {"JobSpec", "lora_dropout", "sigmatune's name is method.dropout"},
    {"JobSpec", "lora_target_modules", "sigmatune's name is method.target_modules"},
    {"JobSpec", "lora_attn_modules", "sigmatune's name is method.target_modules"},
    {"JobSpec", "lora_target_linear", "write method.target_modules: all-linear instead"},
    {"JobSpec", "peft_use_rslora", "sigmatune's name is method.use_rslora"},
    {"JobSpec", "use_rslora", "sigmatune's name is method.use_rslora"},
    {"JobSpec", "learning_rate", "sigmatune's name is optimizer.learning_rate"},
    {"JobSpec", "lr", "sigmatune's name is optimizer.learning_rate"},
    {"JobSpec", "weight_decay", "sigmatune's name is optimizer.weight_decay"},
    {"JobSpec", "max_grad_norm", "sigmatune's name is optimizer.max_grad_norm"},
    {"JobSpec", "warmup_steps", "sigmatune's name is lr_scheduler.warmup_steps"},
    {"JobSpec", "num_warmup_steps", "sigmatune's name is lr_scheduler.warmup_steps"},
    {"JobSpec", "warmup_ratio", "sigmatune's name is lr_scheduler.warmup_ratio"},
    {"JobSpec", "epochs", "sigmatune's name is num_epochs"},
    {"JobSpec", "batch_size", "sigmatune's name is micro_batch_size"},
    {"JobSpec", "max_seq_len", "sigmatune's name is sequence_len"},
    {"JobSpec", "dataset", "sigmatune's name is datasets (a list of {path, format})"},
    {"JobSpec", "model", "sigmatune's name is base_model"},
    {"JobSpec", "val_set_size", "list evaluation files in eval_datasets instead"},
    {"MethodSpec", "r", "sigmatune's name is rank"},
    {"MethodSpec", "lora_r", "sigmatune's name is rank"},
    {"MethodSpec", "lora_rank", "sigmatune's name is rank"},
    {"MethodSpec", "lora_alpha", "sigmatune's name is alpha"},
    {"MethodSpec", "lora_dropout", "sigmatune's name is dropout"},
    {"MethodSpec", "adapter", "sigmatune's name is type"},
    {"MethodSpec", "method", "sigmatune's name is type"},
    {"OptimizerSpec", "lr", "sigmatune's name is learning_rate"},
    {"OptimizerSpec", "eps", "sigmatune's name is epsilon"},
    {"OptimizerSpec", "betas", "write beta1 and beta2"},
    {"SchedulerSpec", "num_warmup_steps", "sigmatune's name is warmup_steps"},
    {"DatasetSpec", "type",
     "sigmatune's name is format (auto, text, completion, alpaca, chat, sharegpt, "
     "segments, tokenized)"},
    {"DatasetSpec", "data_files", "sigmatune's name is path (one JSONL file per entry)"},
    {"EvalSetSpec", "type",
     "sigmatune's name is format (auto, text, completion, alpaca, chat, sharegpt, "
     "segments, tokenized)"},
};

std::string FieldNameList(const Descriptor* descriptor) {
  std::vector<std::string> names;
  for (int i = 0; i < descriptor->field_count(); ++i) names.push_back(descriptor->field(i)->name());
  return absl::StrJoin(names, ", ");
}

std::string UnknownFieldMessage(const Descriptor* descriptor, absl::string_view key) {
  const std::string head = absl::StrCat("unknown field \"", key, "\"");
  for (const ForeignName& foreign : kForeignNames) {
    if (foreign.message == descriptor->name() && foreign.key == key) return absl::StrCat(head, "; ", foreign.hint);
  }
  std::vector<std::string> candidates;
  for (int i = 0; i < descriptor->field_count(); ++i) {
    candidates.push_back(descriptor->field(i)->name());
    candidates.push_back(descriptor->field(i)->json_name());
  }
  const std::string closest = ClosestWord(key, candidates);
  if (!closest.empty()) {
    const FieldDescriptor* field = descriptor->FindFieldByName(closest);
    for (int i = 0; field == nullptr && i < descriptor->field_count(); ++i) {
      if (descriptor->field(i)->json_name() == closest) field = descriptor->field(i);
    }
    return absl::StrCat(head, "; did you mean \"", field->name(), "\"?");
  }
  return absl::StrCat(head, "; the fields here are: ", FieldNameList(descriptor));
}

const FieldDescriptor* FindField(const Descriptor* descriptor, absl::string_view key) {
  const FieldDescriptor* field = descriptor->FindFieldByName(std::string(key));
  for (int i = 0; field == nullptr && i < descriptor->field_count(); ++i) {
    if (descriptor->field(i)->json_name() == key) field = descriptor->field(i);
  }
  return field;
}

// "a list", "a mapping", "the JSON number 5", "\"abc\"".
std::string DescribeNode(const Node& node) {
  switch (node.kind) {
    case Node::Kind::kNull:
      return "nothing (null)";
    case Node::Kind::kSequence:
      return "a list";
    case Node::Kind::kMapping:
      return "a mapping";
    case Node::Kind::kScalar:
      break;
  }
  if (node.scalar_kind == ScalarKind::kJsonNumber) return absl::StrCat("the number ", node.text);
  if (node.scalar_kind == ScalarKind::kJsonBool) return absl::StrCat("the boolean ", node.text);
  return Quoted(node.text);
}

// What a field holds, for "expected ..." messages.
std::string DescribeType(const FieldDescriptor* field) {
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_STRING:
      return "a string";
    case FieldDescriptor::CPPTYPE_INT32:
    case FieldDescriptor::CPPTYPE_INT64:
    case FieldDescriptor::CPPTYPE_UINT32:
    case FieldDescriptor::CPPTYPE_UINT64:
      return "a whole number";
    case FieldDescriptor::CPPTYPE_DOUBLE:
    case FieldDescriptor::CPPTYPE_FLOAT:
      return "a number";
    case FieldDescriptor::CPPTYPE_BOOL:
      return "true or false";
    case FieldDescriptor::CPPTYPE_ENUM:
      return "one of the names of " + field->enum_type()->name();
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return absl::StrCat("a mapping (fields: ", FieldNameList(field->message_type()), ")");
  }
  return "a value";
}

// [+-]? (digits (. digits*)? | . digits) ([eE] [+-]? digits)?
bool IsDecimalNumber(absl::string_view s) {
  size_t i = 0;
  auto digits = [&] {
    const size_t start = i;
    while (i < s.size() && absl::ascii_isdigit(static_cast<unsigned char>(s[i]))) ++i;
    return i - start;
  };
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  size_t mantissa = digits();
  if (i < s.size() && s[i] == '.') {
    ++i;
    mantissa += digits();
  }
  if (mantissa == 0) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    if (digits() == 0) return false;
  }
  return i == s.size();
}

// A number as YAML (1.2 core schema and yaml-cpp: 2e-4, .5, .inf, -.inf, .nan) or the proto3 JSON
// mapping (a number, or a string holding one, "NaN", "Infinity", "-Infinity") writes it.
std::optional<double> ParseDouble(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == ".inf" || lower == "+.inf" || lower == "inf" || lower == "infinity") {
    return std::numeric_limits<double>::infinity();
  }
  if (lower == "-.inf" || lower == "-inf" || lower == "-infinity") return -std::numeric_limits<double>::infinity();
  if (lower == ".nan" || lower == "nan") return std::numeric_limits<double>::quiet_NaN();
  double value = 0;
  if (!IsDecimalNumber(text) || !absl::SimpleAtod(text, &value)) return std::nullopt;
  return value;
}

// A whole number: decimal digits with an optional sign; a JSON number may also be written as an
// integral float (8.0, 1e3), as the proto3 JSON mapping allows.
std::optional<int64_t> ParseInteger(const Node& node) {
  absl::string_view text = node.text;
  size_t i = (!text.empty() && (text[0] == '+' || text[0] == '-')) ? 1 : 0;
  bool all_digits = i < text.size();
  for (; i < text.size(); ++i) all_digits = all_digits && absl::ascii_isdigit(static_cast<unsigned char>(text[i]));
  int64_t value = 0;
  if (all_digits && absl::SimpleAtoi(text, &value)) return value;
  if (node.scalar_kind == ScalarKind::kJsonNumber) {
    const std::optional<double> number = ParseDouble(text);
    if (number && std::isfinite(*number) && std::trunc(*number) == *number && std::fabs(*number) < 9.2e18) {
      return static_cast<int64_t>(*number);
    }
  }
  return std::nullopt;
}

std::optional<bool> ParseBool(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "true" || lower == "yes" || lower == "on") return true;
  if (lower == "false" || lower == "no" || lower == "off") return false;
  return std::nullopt;
}

// Stores a scalar into `field` (Set for a singular field, Add for a repeated one). Returns the
// problem ("expected ..., got ...") or "" on success.
std::string StoreScalar(const Node& node, const FieldDescriptor* field, Message* message) {
  const Reflection* reflection = message->GetReflection();
  const bool repeated = field->is_repeated();
  const bool json = node.scalar_kind == ScalarKind::kJsonString || node.scalar_kind == ScalarKind::kJsonNumber ||
                    node.scalar_kind == ScalarKind::kJsonBool;
  const std::string expected_got = absl::StrCat("expected ", DescribeType(field), ", got ", DescribeNode(node));
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_STRING:
      if (node.scalar_kind == ScalarKind::kJsonNumber || node.scalar_kind == ScalarKind::kJsonBool) {
        return absl::StrCat(expected_got, " (put it in quotes)");
      }
      if (repeated) {
        reflection->AddString(message, field, node.text);
      } else {
        reflection->SetString(message, field, node.text);
      }
      return "";
    case FieldDescriptor::CPPTYPE_INT32:
    case FieldDescriptor::CPPTYPE_INT64:
    case FieldDescriptor::CPPTYPE_UINT32:
    case FieldDescriptor::CPPTYPE_UINT64: {
      if (node.scalar_kind == ScalarKind::kJsonBool) return expected_got;
      const std::optional<int64_t> value = ParseInteger(node);
      if (!value) return expected_got;
      const auto cpp_type = field->cpp_type();
      const int64_t low = (cpp_type == FieldDescriptor::CPPTYPE_INT32)   ? std::numeric_limits<int32_t>::min()
                          : (cpp_type == FieldDescriptor::CPPTYPE_INT64) ? std::numeric_limits<int64_t>::min()
                                                                         : 0;
      const int64_t high = (cpp_type == FieldDescriptor::CPPTYPE_INT32)    ? std::numeric_limits<int32_t>::max()
                           : (cpp_type == FieldDescriptor::CPPTYPE_UINT32) ? std::numeric_limits<uint32_t>::max()
                                                                           : std::numeric_limits<int64_t>::max();
      if (*value < low || *value > high) {
        return absl::StrCat("expected a whole number from ", low, " to ", high, ", got ", DescribeNode(node));
      }
      switch (cpp_type) {
        case FieldDescriptor::CPPTYPE_INT32:
          repeated ? reflection->AddInt32(message, field, static_cast<int32_t>(*value))
                   : reflection->SetInt32(message, field, static_cast<int32_t>(*value));
          break;
        case FieldDescriptor::CPPTYPE_INT64:
          repeated ? reflection->AddInt64(message, field, *value) : reflection->SetInt64(message, field, *value);
          break;
        case FieldDescriptor::CPPTYPE_UINT32:
          repeated ? reflection->AddUInt32(message, field, static_cast<uint32_t>(*value))
                   : reflection->SetUInt32(message, field, static_cast<uint32_t>(*value));
          break;
        default:
          repeated ? reflection->AddUInt64(message, field, static_cast<uint64_t>(*value))
                   : reflection->SetUInt64(message, field, static_cast<uint64_t>(*value));
          break;
      }
      return "";
    }
    case FieldDescriptor::CPPTYPE_DOUBLE:
    case FieldDescriptor::CPPTYPE_FLOAT: {
      if (node.scalar_kind == ScalarKind::kJsonBool) return expected_got;
      const std::optional<double> value = ParseDouble(node.text);
      if (!value) return expected_got;
      if (field->cpp_type() == FieldDescriptor::CPPTYPE_DOUBLE) {
        repeated ? reflection->AddDouble(message, field, *value) : reflection->SetDouble(message, field, *value);
      } else {
        repeated ? reflection->AddFloat(message, field, static_cast<float>(*value))
                 : reflection->SetFloat(message, field, static_cast<float>(*value));
      }
      return "";
    }
    case FieldDescriptor::CPPTYPE_BOOL: {
      // JSON booleans must be JSON booleans; YAML takes true/false/yes/no/on/off in any case.
      if (json && node.scalar_kind != ScalarKind::kJsonBool) return expected_got;
      const std::optional<bool> value = ParseBool(node.text);
      if (!value) return expected_got;
      repeated ? reflection->AddBool(message, field, *value) : reflection->SetBool(message, field, *value);
      return "";
    }
    case FieldDescriptor::CPPTYPE_ENUM: {
      const EnumValueDescriptor* value = field->enum_type()->FindValueByName(node.text);
      if (value == nullptr) {
        int64_t number = 0;
        if (node.scalar_kind == ScalarKind::kJsonNumber && absl::SimpleAtoi(node.text, &number) &&
            number >= std::numeric_limits<int32_t>::min() && number <= std::numeric_limits<int32_t>::max()) {
          value = field->enum_type()->FindValueByNumber(static_cast<int>(number));
        }
      }
      if (value == nullptr) return expected_got;
      repeated ? reflection->AddEnum(message, field, value) : reflection->SetEnum(message, field, value);
      return "";
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      break;
  }
  ST_CHECK(false) << "StoreScalar called for message field " << field->full_name();
  return "";
}

std::string JoinPath(absl::string_view path, absl::string_view key) {
  return path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
}

void ConvertMessage(const Node& node, const std::string& path, int line, Message* message, Problems* problems);

// A mapping was expected for a message field; a scalar such as `lr_scheduler: cosine` gets a hint
// when the message has a `type` field.
void ReportNotAMapping(const Node& node, const std::string& path, int line, const Descriptor* descriptor,
                       Problems* problems) {
  std::string message =
      absl::StrCat("expected a mapping (fields: ", FieldNameList(descriptor), "), got ", DescribeNode(node));
  if (node.kind == Node::Kind::kScalar && descriptor->FindFieldByName("type") != nullptr) {
    absl::StrAppend(&message, "; did you mean {type: ", node.text, "}?");
  }
  AddProblem(problems, path, message, line);
}

void ConvertField(const Node& value, const std::string& path, int line, const FieldDescriptor* field, Message* message,
                  Problems* problems) {
  const Reflection* reflection = message->GetReflection();
  if (value.kind == Node::Kind::kNull) {
    AddProblem(problems, path, "has no value (null); give one or delete the key", line);
    return;
  }
  if (field->is_repeated()) {
    if (value.kind == Node::Kind::kSequence) {
      for (size_t i = 0; i < value.items.size(); ++i) {
        const Node& item = value.items[i];
        const std::string item_path = absl::StrCat(path, "[", i, "]");
        const int item_line = item.line > 0 ? item.line : line;
        if (item.kind == Node::Kind::kNull) {
          AddProblem(problems, item_path, "has no value (null)", item_line);
        } else if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
          ConvertMessage(item, item_path, item_line, reflection->AddMessage(message, field), problems);
        } else if (item.kind != Node::Kind::kScalar) {
          AddProblem(problems, item_path, absl::StrCat("expected ", DescribeType(field), ", got ", DescribeNode(item)),
                     item_line);
        } else if (std::string error = StoreScalar(item, field, message); !error.empty()) {
          AddProblem(problems, item_path, error, item_line);
        }
      }
      return;
    }
    if (value.kind == Node::Kind::kScalar && field->cpp_type() == FieldDescriptor::CPPTYPE_STRING) {
      // `target_modules: all-linear` is the one-element list.
      if (std::string error = StoreScalar(value, field, message); !error.empty()) {
        AddProblem(problems, path, error, line);
      }
      return;
    }
    const std::string element = field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE
                                    ? absl::StrCat("mappings (fields: ", FieldNameList(field->message_type()), ")")
                                    : DescribeType(field) + " values";
    AddProblem(problems, path, absl::StrCat("expected a list of ", element, ", got ", DescribeNode(value)), line);
    return;
  }
  if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
    if (value.kind != Node::Kind::kMapping) {
      ReportNotAMapping(value, path, line, field->message_type(), problems);
      return;
    }
    ConvertMessage(value, path, line, reflection->MutableMessage(message, field), problems);
    return;
  }
  if (value.kind != Node::Kind::kScalar) {
    AddProblem(problems, path,
               absl::StrCat("expected ", DescribeType(field), " (a single value), got ", DescribeNode(value)), line);
    return;
  }
  if (std::string error = StoreScalar(value, field, message); !error.empty()) AddProblem(problems, path, error, line);
}

void ConvertMessage(const Node& node, const std::string& path, int line, Message* message, Problems* problems) {
  const Descriptor* descriptor = message->GetDescriptor();
  if (node.kind != Node::Kind::kMapping) {
    if (path.empty()) {
      AddProblem(problems, "",
                 absl::StrCat("a job spec is a mapping of field names to values, got ", DescribeNode(node)), line);
    } else {
      ReportNotAMapping(node, path, line, descriptor, problems);
    }
    return;
  }
  struct Seen {
    const FieldDescriptor* field;
    std::string key;
    int line;
  };
  std::vector<Seen> seen;
  for (const Entry& entry : node.entries) {
    if (!entry.key_is_scalar) {
      AddProblem(problems, path, "a key must be a field name, not a list or mapping", entry.line);
      continue;
    }
    const FieldDescriptor* field = FindField(descriptor, entry.key);
    if (field == nullptr) {
      AddProblem(problems, JoinPath(path, entry.key), UnknownFieldMessage(descriptor, entry.key), entry.line);
      continue;
    }
    const std::string field_path = JoinPath(path, field->name());
    bool duplicate = false;
    for (const Seen& earlier : seen) {
      if (earlier.field != field) continue;
      duplicate = true;
      std::string message = absl::StrCat("duplicate key \"", entry.key, "\"");
      if (earlier.key != entry.key) absl::StrAppend(&message, " (the same field as \"", earlier.key, "\")");
      if (earlier.line > 0) absl::StrAppend(&message, ", first given on line ", earlier.line);
      absl::StrAppend(&message, "; keep one");
      AddProblem(problems, field_path, message, entry.line);
    }
    if (duplicate) continue;
    seen.push_back(Seen{field, entry.key, entry.line});
    const int value_line = entry.value.line > 0 ? entry.value.line : entry.line;
    ConvertField(entry.value, field_path, value_line, field, message, problems);
  }
}

}  // namespace

ParseOutcome ParseSpecText(absl::string_view text, SpecSyntax syntax, Message* message, Problems* problems) {
  Node root;
  const ParseOutcome outcome =
      syntax == SpecSyntax::kYaml ? ParseYaml(text, &root, problems) : ParseJson(text, &root, problems);
  if (outcome == ParseOutcome::kSyntaxError) return outcome;
  ConvertMessage(root, "", root.line, message, problems);
  return ParseOutcome::kParsed;
}

std::string ClosestWord(absl::string_view word, const std::vector<std::string>& candidates) {
  std::string best;
  int best_distance = kMaxSuggestionDistance + 1;
  for (const std::string& candidate : candidates) {
    const int distance = EditDistance(word, candidate);
    if (distance < best_distance) {
      best_distance = distance;
      best = candidate;
    }
  }
  return best;
}

std::string Quoted(absl::string_view text) {
  constexpr size_t kMaxShown = 60;
  if (text.size() > kMaxShown) return absl::StrCat("\"", text.substr(0, kMaxShown), "...\"");
  return absl::StrCat("\"", text, "\"");
}

}  // namespace sigmatune::job::internal
