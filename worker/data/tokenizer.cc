#include "worker/data/tokenizer.h"

#include <algorithm>
#include <queue>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "kernels/base/check.h"
#include "worker/data/tokenizer_pretokenize.h"
#include "worker/data/unicode_tables.h"

namespace sigmatune::data {
namespace {

constexpr size_t kMaxCacheEntries = 1 << 16;
constexpr size_t kMaxCachedWordBytes = 256;

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// Rust's char::is_whitespace (the White_Space property) on the code point at text[pos].
bool IsSpaceAt(absl::string_view text, size_t pos, size_t* len) {
  return IsWhiteSpace(DecodeUtf8At(text, pos, len));
}

// The last code point of text[0, end) is a word character (alphanumeric or '_').
bool EndsWithWord(absl::string_view text, size_t end) {
  if (end == 0) return false;
  size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  size_t len = 0;
  const char32_t c = DecodeUtf8At(text, start, &len);
  return c == U'_' || IsLetter(c) || IsNumber(c);
}

bool StartsWithWord(absl::string_view text, size_t start) {
  if (start >= text.size()) return false;
  size_t len = 0;
  const char32_t c = DecodeUtf8At(text, start, &len);
  return c == U'_' || IsLetter(c) || IsNumber(c);
}

}  // namespace

struct Tokenizer::Cache {
  absl::Mutex mutex;
  absl::flat_hash_map<std::string, std::vector<int32_t>> words ABSL_GUARDED_BY(mutex);
};

Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<Tokenizer> Tokenizer::FromData(const TokenizerData& data,
                                              absl::string_view source_name) {
  TokenizerModel model;
  model.vocab = data.tokens;
  model.pre_tokenizer = data.pre_tokenizer;
  model.prefix_ids = data.prefix_ids;
  model.suffix_ids = data.suffix_ids;
  if (!data.token_types.empty() && data.token_types.size() != data.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source_name, ": token_types has ", data.token_types.size(), " entries but tokens has ",
        data.tokens.size(), "; they must have one entry per token id"));
  }
  model.merges.reserve(data.merges.size());
  for (size_t i = 0; i < data.merges.size(); ++i) {
    const std::string& m = data.merges[i];
    const size_t space = m.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == m.size() ||
        m.find(' ', space + 1) != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          source_name, ": merges[", i, "] = \"", m,
          "\" is not two tokens separated by one space; check the tokenizer merges"));
    }
    model.merges.emplace_back(m.substr(0, space), m.substr(space + 1));
  }
  for (size_t id = 0; id < data.token_types.size(); ++id) {
    const TokenType type = data.token_types[id];
    if (type != TokenType::kControl && type != TokenType::kUserDefined) continue;
    AddedToken added;
    added.id = static_cast<int32_t>(id);
    added.content = data.tokens[id];
    added.special = type == TokenType::kControl;
    model.added_tokens.push_back(std::move(added));
  }
  return FromModel(std::move(model), source_name);
}

absl::StatusOr<Tokenizer> Tokenizer::FromModel(TokenizerModel model,
                                               absl::string_view source_name) {
  Tokenizer tok;
  if (model.vocab.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source_name, ": the vocabulary is empty; give a BPE vocabulary"));
  }
  tok.id_to_token_ = model.vocab;
  tok.token_to_id_.reserve(model.vocab.size());
  for (size_t id = 0; id < model.vocab.size(); ++id) {
    const std::string& token = model.vocab[id];
    if (token.empty()) continue;
    if (!IsValidUtf8(token)) {
      return absl::InvalidArgumentError(absl::StrCat(source_name, ": vocabulary token ", id,
                                                     " is not valid UTF-8"));
    }
    if (!tok.token_to_id_.emplace(token, static_cast<int32_t>(id)).second) {
      return absl::InvalidArgumentError(absl::StrCat(source_name, ": vocabulary token \"", token,
                                                     "\" appears twice (ids ",
                                                     tok.token_to_id_[token], " and ", id, ")"));
    }
  }
  for (const AddedToken& added : model.added_tokens) {
    if (added.id < 0 || added.content.empty() || !IsValidUtf8(added.content)) {
      return absl::InvalidArgumentError(absl::StrCat(
          source_name, ": added token id ", added.id,
          " needs a non-negative id and non-empty UTF-8 content"));
    }
    if (static_cast<size_t>(added.id) >= tok.id_to_token_.size()) {
      tok.id_to_token_.resize(added.id + 1);
    }
    tok.id_to_token_[added.id] = added.content;
    if (!tok.added_to_id_.emplace(added.content, added.id).second) {
      return absl::InvalidArgumentError(absl::StrCat(source_name, ": added token \"",
                                                     added.content, "\" appears twice"));
    }
  }
  tok.is_special_.assign(tok.id_to_token_.size(), 0);
  for (const AddedToken& added : model.added_tokens) {
    if (added.special) tok.is_special_[added.id] = 1;
    AddedMatcher& matcher = added.normalized ? tok.normalized_added_ : tok.raw_added_;
    matcher.tokens.push_back(added);
  }
  for (AddedMatcher* matcher : {&tok.raw_added_, &tok.normalized_added_}) {
    std::stable_sort(matcher->tokens.begin(), matcher->tokens.end(),
                     [](const AddedToken& a, const AddedToken& b) {
                       return a.content.size() > b.content.size();
                     });
    matcher->by_first_byte.assign(256, {});
    for (size_t i = 0; i < matcher->tokens.size(); ++i) {
      matcher->by_first_byte[static_cast<unsigned char>(matcher->tokens[i].content[0])]
          .push_back(static_cast<int>(i));
    }
  }
  tok.merges_.reserve(model.merges.size());
  for (size_t rank = 0; rank < model.merges.size(); ++rank) {
    const auto& [left, right] = model.merges[rank];
    const auto l = tok.token_to_id_.find(left);
    const auto r = tok.token_to_id_.find(right);
    const auto m = tok.token_to_id_.find(left + right);
    if (l == tok.token_to_id_.end() || r == tok.token_to_id_.end() ||
        m == tok.token_to_id_.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source_name, ": merges[", rank, "] = \"", left, " ", right, "\": \"",
          l == tok.token_to_id_.end() ? left : r == tok.token_to_id_.end() ? right : left + right,
          "\" is not in the vocabulary; merges and vocab do not belong together"));
    }
    // The first (lowest-rank) occurrence of a pair wins, as in HF.
    tok.merges_.emplace(PairKey(l->second, r->second),
                        std::make_pair(static_cast<int32_t>(rank), m->second));
  }
  tok.byte_to_id_.assign(256, -1);
  for (int b = 0; b < 256; ++b) {
    std::string s;
    AppendUtf8(ByteToUnicode(static_cast<unsigned char>(b)), &s);
    const auto it = tok.token_to_id_.find(s);
    if (it != tok.token_to_id_.end()) tok.byte_to_id_[b] = it->second;
  }
  const auto check_ids = [&](const std::vector<int32_t>& ids,
                             const char* what) -> absl::Status {
    for (const int32_t id : ids) {
      if (id < 0 || id >= tok.vocab_size() || tok.id_to_token_[id].empty()) {
        return absl::InvalidArgumentError(absl::StrCat(source_name, ": ", what, " id ", id,
                                                       " is not a token of the vocabulary"));
      }
    }
    return absl::OkStatus();
  };
  if (absl::Status s = check_ids(model.prefix_ids, "post-processor prefix"); !s.ok()) return s;
  if (absl::Status s = check_ids(model.suffix_ids, "post-processor suffix"); !s.ok()) return s;
  if (model.unk_id.has_value()) {
    if (absl::Status s = check_ids({*model.unk_id}, "unk_token"); !s.ok()) return s;
  }
  tok.pre_tokenizer_ = model.pre_tokenizer;
  tok.prefix_space_ = model.prefix_space;
  tok.ignore_merges_ = model.ignore_merges;
  tok.unk_id_ = model.unk_id;
  tok.prefix_ids_ = std::move(model.prefix_ids);
  tok.suffix_ids_ = std::move(model.suffix_ids);
  tok.cache_ = std::make_unique<Cache>();
  return tok;
}

void Tokenizer::SplitAdded(absl::string_view text, const AddedMatcher& matcher,
                           std::vector<std::pair<absl::string_view, int32_t>>* out) const {
  if (matcher.tokens.empty()) {
    out->emplace_back(text, -1);
    return;
  }
  size_t start_offset = 0;  // end of the last emitted piece
  size_t pos = 0;
  while (pos < text.size()) {
    const AddedToken* found = nullptr;
    for (const int i : matcher.by_first_byte[static_cast<unsigned char>(text[pos])]) {
      const AddedToken& t = matcher.tokens[i];
      if (text.substr(pos, t.content.size()) == t.content) {
        found = &t;  // longest first
        break;
      }
    }
    if (found == nullptr) {
      ++pos;
      continue;
    }
    size_t start = pos;
    size_t stop = pos + found->content.size();
    if (found->single_word && (EndsWithWord(text, start) || StartsWithWord(text, stop))) {
      pos = stop;  // like HF: the match is dropped, the text it covered stays plain
      continue;
    }
    if (found->lstrip) {
      while (start > start_offset) {
        size_t p = start - 1;
        while (p > start_offset && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
        size_t len = 0;
        if (!IsSpaceAt(text, p, &len)) break;
        start = p;
      }
    }
    if (found->rstrip) {
      size_t len = 0;
      while (stop < text.size() && IsSpaceAt(text, stop, &len)) stop += len;
    }
    if (start > start_offset) out->emplace_back(text.substr(start_offset, start - start_offset), -1);
    out->emplace_back(text.substr(start, stop - start), found->id);
    start_offset = stop;
    pos = stop;
  }
  if (start_offset < text.size()) out->emplace_back(text.substr(start_offset), -1);
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(absl::string_view text,
                                                       AddSpecialTokens add_special) const {
  size_t bad = 0;
  if (!IsValidUtf8(text, &bad)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer: the text is not valid UTF-8 (first bad byte at offset ", bad,
        "); decode or clean the input before tokenizing"));
  }
  std::vector<int32_t> ids;
  if (add_special == AddSpecialTokens::kYes) ids = prefix_ids_;
  std::vector<std::pair<absl::string_view, int32_t>> raw_pieces;
  SplitAdded(text, raw_added_, &raw_pieces);
  std::vector<std::pair<absl::string_view, int32_t>> pieces;
  for (const auto& [piece, id] : raw_pieces) {
    if (id >= 0) {
      ids.push_back(id);
      continue;
    }
    pieces.clear();
    SplitAdded(piece, normalized_added_, &pieces);
    for (const auto& [inner, inner_id] : pieces) {
      if (inner_id >= 0) {
        ids.push_back(inner_id);
      } else {
        EncodePlain(inner, &ids);
      }
    }
  }
  if (add_special == AddSpecialTokens::kYes) {
    ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  }
  return ids;
}

void Tokenizer::EncodePlain(absl::string_view text, std::vector<int32_t>* ids) const {
  std::vector<absl::string_view> first;
  if (pre_tokenizer_ == PreTokenizerKind::kDigitsThenByteLevel) {
    SplitDigits(text, &first);
  } else {
    first.push_back(text);
  }
  std::vector<absl::string_view> words;
  std::string prefixed;
  for (const absl::string_view piece : first) {
    words.clear();
    if (prefix_space_ == PrefixSpace::kYes && !piece.empty() && piece[0] != ' ') {
      prefixed = absl::StrCat(" ", piece);
      SplitGpt2(prefixed, &words);
    } else {
      SplitGpt2(piece, &words);
    }
    for (const absl::string_view word : words) EncodeWord(word, ids);
  }
}

void Tokenizer::EncodeWord(absl::string_view word, std::vector<int32_t>* ids) const {
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    absl::MutexLock lock(&cache_->mutex);
    const auto it = cache_->words.find(word);
    if (it != cache_->words.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> result;
  if (ignore_merges_) {
    const auto it = token_to_id_.find(BytesToUnicodeString(word));
    if (it != token_to_id_.end()) result.push_back(it->second);
  }
  if (result.empty()) {
    // Symbols as a doubly linked list over the bytes of the word.
    struct Symbol {
      int32_t id;
      int prev;
      int next;
      bool alive;
    };
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    for (const char ch : word) {
      int32_t id = byte_to_id_[static_cast<unsigned char>(ch)];
      if (id < 0) {
        if (!unk_id_.has_value()) continue;  // HF drops characters it cannot map
        id = *unk_id_;
      }
      const int index = static_cast<int>(symbols.size());
      symbols.push_back({id, index - 1, index + 1, true});
    }
    if (!symbols.empty()) symbols.back().next = -1;
    struct Merge {
      int32_t rank;
      int pos;
      int32_t new_id;
      bool operator>(const Merge& o) const {
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::priority_queue<Merge, std::vector<Merge>, std::greater<Merge>> queue;
    const auto push_pair = [&](int pos) {
      const int next = symbols[pos].next;
      if (next < 0) return;
      const auto it = merges_.find(PairKey(symbols[pos].id, symbols[next].id));
      if (it != merges_.end()) queue.push({it->second.first, pos, it->second.second});
    };
    for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) push_pair(i);
    while (!queue.empty()) {
      const Merge top = queue.top();
      queue.pop();
      Symbol& cur = symbols[top.pos];
      if (!cur.alive || cur.next < 0) continue;
      const auto it = merges_.find(PairKey(cur.id, symbols[cur.next].id));
      if (it == merges_.end() || it->second.second != top.new_id) continue;  // stale entry
      Symbol& right = symbols[cur.next];
      cur.id = top.new_id;
      right.alive = false;
      cur.next = right.next;
      if (cur.next >= 0) symbols[cur.next].prev = top.pos;
      if (cur.prev >= 0) push_pair(cur.prev);
      push_pair(top.pos);
    }
    for (const Symbol& s : symbols) {
      if (s.alive) result.push_back(s.id);
    }
  }
  ids->insert(ids->end(), result.begin(), result.end());
  if (cacheable) {
    absl::MutexLock lock(&cache_->mutex);
    if (cache_->words.size() >= kMaxCacheEntries) cache_->words.clear();
    cache_->words.emplace(std::string(word), std::move(result));
  }
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, SkipSpecialTokens skip) const {
  std::string bytes;
  for (const int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || id_to_token_[id].empty()) continue;
    if (skip == SkipSpecialTokens::kYes && is_special_[id]) continue;
    const std::string& token = id_to_token_[id];
    // ByteLevel decoder: map every character back to its byte; a token with a character outside
    // the byte map is emitted as its own UTF-8 instead.
    const size_t mark = bytes.size();
    bool mapped = true;
    for (size_t pos = 0; pos < token.size();) {
      size_t len = 0;
      const int b = UnicodeToByte(DecodeUtf8At(token, pos, &len));
      if (b < 0) {
        mapped = false;
        break;
      }
      bytes.push_back(static_cast<char>(b));
      pos += len;
    }
    if (!mapped) {
      bytes.resize(mark);
      bytes.append(token);
    }
  }
  return Utf8Lossy(bytes);
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= vocab_size() || id_to_token_[id].empty()) return std::nullopt;
  return id_to_token_[id];
}

std::optional<int32_t> Tokenizer::TokenToId(absl::string_view token) const {
  if (const auto it = added_to_id_.find(token); it != added_to_id_.end()) return it->second;
  if (const auto it = token_to_id_.find(token); it != token_to_id_.end()) return it->second;
  return std::nullopt;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && is_special_[id] != 0;
}

}  // namespace sigmatune::data
