#include "worker/data/tokenizer_pretokenize.h"

#include <array>

#include "kernels/base/check.h"
#include "worker/data/unicode_tables.h"

namespace sigmatune::data {
namespace {

// Length of the well-formed UTF-8 sequence at bytes[pos], or 0 when it is ill-formed; then
// *bad_length is the length of its maximal subpart (Unicode 3.9, Table 3-7), at least 1.
size_t WellFormedLength(absl::string_view bytes, size_t pos, size_t* bad_length) {
  const auto at = [&](size_t i) { return static_cast<unsigned char>(bytes[i]); };
  const unsigned char lead = at(pos);
  *bad_length = 1;
  if (lead < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 3;
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 4;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (size_t k = 1; k < need; ++k) {
    if (pos + k >= bytes.size()) {
      *bad_length = k;
      return 0;
    }
    const unsigned char b = at(pos + k);
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      *bad_length = k;
      return 0;
    }
  }
  return need;
}

struct ByteTables {
  std::array<char32_t, 256> to_unicode;
  std::array<int16_t, 0x144> to_byte;  // every mapped code point is below U+0144
};

ByteTables MakeByteTables() {
  ByteTables t;
  t.to_byte.fill(-1);
  char32_t next = 0x100;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    t.to_unicode[b] = printable ? static_cast<char32_t>(b) : next++;
    t.to_byte[t.to_unicode[b]] = static_cast<int16_t>(b);
  }
  return t;
}

const ByteTables& Tables() {
  static const ByteTables* const tables = new ByteTables(MakeByteTables());
  return *tables;
}

// Character classes of the GPT-2 pattern.
enum class CharClass { kLetter, kNumber, kSpace, kOther };

CharClass Classify(char32_t c) {
  if (IsLetter(c)) return CharClass::kLetter;
  if (IsNumber(c)) return CharClass::kNumber;
  if (IsWhiteSpace(c)) return CharClass::kSpace;
  return CharClass::kOther;
}

// Length of a contraction ('s 't 're 've 'm 'll 'd) at text[pos], or 0.
size_t ContractionLength(absl::string_view text, size_t pos) {
  if (text[pos] != '\'' || pos + 1 >= text.size()) return 0;
  const char c = text[pos + 1];
  if (c == 's' || c == 't' || c == 'm' || c == 'd') return 2;
  if (pos + 2 < text.size()) {
    const char d = text[pos + 2];
    if ((c == 'r' && d == 'e') || (c == 'v' && d == 'e') || (c == 'l' && d == 'l')) return 3;
  }
  return 0;
}

}  // namespace

char32_t DecodeUtf8At(absl::string_view text, size_t pos, size_t* length) {
  const auto at = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = at(pos);
  if (lead < 0x80) {
    *length = 1;
    return lead;
  }
  if (lead < 0xE0) {
    *length = 2;
    return (static_cast<char32_t>(lead & 0x1F) << 6) | (at(pos + 1) & 0x3F);
  }
  if (lead < 0xF0) {
    *length = 3;
    return (static_cast<char32_t>(lead & 0x0F) << 12) | ((at(pos + 1) & 0x3F) << 6) |
           (at(pos + 2) & 0x3F);
  }
  *length = 4;
  return (static_cast<char32_t>(lead & 0x07) << 18) | ((at(pos + 1) & 0x3F) << 12) |
         ((at(pos + 2) & 0x3F) << 6) | (at(pos + 3) & 0x3F);
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

bool IsValidUtf8(absl::string_view text, size_t* error_offset) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t bad = 0;
    const size_t n = WellFormedLength(text, pos, &bad);
    if (n == 0) {
      if (error_offset != nullptr) *error_offset = pos;
      return false;
    }
    pos += n;
  }
  return true;
}

std::string Utf8Lossy(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t bad = 0;
    const size_t n = WellFormedLength(bytes, pos, &bad);
    if (n == 0) {
      out.append("\xEF\xBF\xBD");
      pos += bad;
    } else {
      out.append(bytes.data() + pos, n);
      pos += n;
    }
  }
  return out;
}

char32_t ByteToUnicode(unsigned char byte) { return Tables().to_unicode[byte]; }

int UnicodeToByte(char32_t c) {
  const ByteTables& t = Tables();
  return c < t.to_byte.size() ? t.to_byte[c] : -1;
}

std::string BytesToUnicodeString(absl::string_view text) {
  std::string out;
  out.reserve(text.size() * 2);
  for (const char ch : text) AppendUtf8(ByteToUnicode(static_cast<unsigned char>(ch)), &out);
  return out;
}

void SplitGpt2(absl::string_view text, std::vector<absl::string_view>* pieces) {
  // Decode once into code points with their byte offsets.
  std::vector<char32_t> cps;
  std::vector<size_t> offsets;
  cps.reserve(text.size());
  offsets.reserve(text.size() + 1);
  for (size_t pos = 0; pos < text.size();) {
    size_t len = 0;
    ST_CHECK(static_cast<unsigned char>(text[pos]) < 0x80 ||
             (static_cast<unsigned char>(text[pos]) >= 0xC2 &&
              static_cast<unsigned char>(text[pos]) <= 0xF4))
        << "SplitGpt2 needs valid UTF-8";
    const char32_t c = DecodeUtf8At(text, pos, &len);
    ST_CHECK_LE(pos + len, text.size()) << "SplitGpt2 needs valid UTF-8";
    cps.push_back(c);
    offsets.push_back(pos);
    pos += len;
  }
  offsets.push_back(text.size());
  const size_t n = cps.size();
  std::vector<CharClass> cls(n);
  for (size_t i = 0; i < n; ++i) cls[i] = Classify(cps[i]);

  size_t i = 0;
  while (i < n) {
    size_t end = i;
    const size_t contraction = ContractionLength(text, offsets[i]);
    if (contraction > 0) {
      end = i + contraction;  // contractions are ASCII: one code point per byte
    } else {
      // ` ?X+` for X in L, N, [^\s\p{L}\p{N}]: an optional U+0020 then a run of one class.
      size_t start = i;
      if (cps[i] == U' ' && i + 1 < n && cls[i + 1] != CharClass::kSpace) start = i + 1;
      if (cls[start] != CharClass::kSpace) {
        const CharClass c = cls[start];
        end = start + 1;
        while (end < n && cls[end] == c) ++end;
      } else {
        // Whitespace run [i, run_end): `\s+(?!\S)` keeps the last whitespace for the next piece
        // when a non-space follows, unless the run is one character (then `\s+` takes it).
        size_t run_end = i + 1;
        while (run_end < n && cls[run_end] == CharClass::kSpace) ++run_end;
        end = (run_end == n || run_end - i == 1) ? run_end : run_end - 1;
      }
    }
    pieces->push_back(text.substr(offsets[i], offsets[end] - offsets[i]));
    i = end;
  }
}

void SplitDigits(absl::string_view text, std::vector<absl::string_view>* pieces) {
  size_t run_start = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t len = 0;
    const char32_t c = DecodeUtf8At(text, pos, &len);
    ST_CHECK_LE(pos + len, text.size()) << "SplitDigits needs valid UTF-8";
    if (IsNumber(c)) {
      if (pos > run_start) pieces->push_back(text.substr(run_start, pos - run_start));
      pieces->push_back(text.substr(pos, len));
      run_start = pos + len;
    }
    pos += len;
  }
  if (run_start < text.size()) pieces->push_back(text.substr(run_start));
}

}  // namespace sigmatune::data
