#include "formats/tfevents.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "formats/atomic_file.h"
#include "kernels/base/status_macros.h"

namespace sigmatune::formats {
namespace {

constexpr std::array<uint32_t, 256> MakeCrc32cTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}

constexpr std::array<uint32_t, 256> kCrc32cTable = MakeCrc32cTable();
static_assert(kCrc32cTable[1] == 0xF26B8303u, "CRC-32C table");

// Protobuf wire types.
constexpr int kVarint = 0;
constexpr int kFixed64 = 1;
constexpr int kLengthDelimited = 2;
constexpr int kFixed32 = 5;

// ---- encoding ----

void PutVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void PutFixed32(uint32_t v, std::string* out) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

void PutFixed64(uint64_t v, std::string* out) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

void PutTag(int field, int wire_type, std::string* out) {
  PutVarint(static_cast<uint64_t>(field) << 3 | wire_type, out);
}

void PutBytesField(int field, absl::string_view bytes, std::string* out) {
  PutTag(field, kLengthDelimited, out);
  PutVarint(bytes.size(), out);
  out->append(bytes.data(), bytes.size());
}

// Event fields 1 (wall_time) and 2 (step). proto3 omits a zero step, as TensorFlow does.
std::string EventHeader(int64_t step, double wall_time) {
  std::string e;
  uint64_t bits;
  std::memcpy(&bits, &wall_time, sizeof(bits));
  PutTag(1, kFixed64, &e);
  PutFixed64(bits, &e);
  if (step != 0) {
    PutTag(2, kVarint, &e);
    PutVarint(static_cast<uint64_t>(step), &e);
  }
  return e;
}

// ---- decoding ----

class WireReader {
 public:
  explicit WireReader(absl::string_view data) : data_(data) {}
  bool done() const { return pos_ == data_.size(); }

  bool Varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) return false;
      const uint8_t b = static_cast<uint8_t>(data_[pos_++]);
      *v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }
  bool Fixed(int bytes, uint64_t* v) {
    if (data_.size() - pos_ < static_cast<size_t>(bytes)) return false;
    *v = 0;
    for (int i = 0; i < bytes; ++i)
      *v |= static_cast<uint64_t>(static_cast<uint8_t>(data_[pos_ + i])) << (8 * i);
    pos_ += bytes;
    return true;
  }
  bool Bytes(absl::string_view* out) {
    uint64_t n;
    if (!Varint(&n) || n > data_.size() - pos_) return false;
    *out = data_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  bool Tag(int* field, int* wire_type) {
    uint64_t t;
    if (!Varint(&t)) return false;
    *field = static_cast<int>(t >> 3);
    *wire_type = static_cast<int>(t & 7);
    return *field > 0;
  }
  bool Skip(int wire_type) {
    uint64_t v;
    absl::string_view s;
    switch (wire_type) {
      case kVarint:
        return Varint(&v);
      case kFixed64:
        return Fixed(8, &v);
      case kLengthDelimited:
        return Bytes(&s);
      case kFixed32:
        return Fixed(4, &v);
      default:
        return false;  // groups are not used by these messages
    }
  }

 private:
  absl::string_view data_;
  size_t pos_ = 0;
};

// Each Decode* returns an empty string on success, else what is malformed.
std::string DecodeValue(absl::string_view bytes, TfSummaryValue* value) {
  WireReader r(bytes);
  while (!r.done()) {
    int field, wt;
    if (!r.Tag(&field, &wt)) return "bad tag in Summary.Value";
    if (field == 1 && wt == kLengthDelimited) {
      absl::string_view tag;
      if (!r.Bytes(&tag)) return "bad Summary.Value.tag";
      value->tag = std::string(tag);
    } else if (field == 2 && wt == kFixed32) {
      uint64_t bits;
      if (!r.Fixed(4, &bits)) return "bad Summary.Value.simple_value";
      const uint32_t b32 = static_cast<uint32_t>(bits);
      float f;
      std::memcpy(&f, &b32, sizeof(f));
      value->simple_value = f;
    } else if (!r.Skip(wt)) {
      return absl::StrCat("bad field ", field, " in Summary.Value");
    }
  }
  return "";
}

std::string DecodeSummary(absl::string_view bytes, std::vector<TfSummaryValue>* values) {
  WireReader r(bytes);
  while (!r.done()) {
    int field, wt;
    if (!r.Tag(&field, &wt)) return "bad tag in Summary";
    if (field == 1 && wt == kLengthDelimited) {
      absl::string_view v;
      if (!r.Bytes(&v)) return "bad Summary.value";
      values->emplace_back();
      std::string err = DecodeValue(v, &values->back());
      if (!err.empty()) return err;
    } else if (!r.Skip(wt)) {
      return absl::StrCat("bad field ", field, " in Summary");
    }
  }
  return "";
}

std::string DecodeSessionLog(absl::string_view bytes, std::optional<SessionStatus>* status) {
  WireReader r(bytes);
  *status = SessionStatus::kUnspecified;
  while (!r.done()) {
    int field, wt;
    if (!r.Tag(&field, &wt)) return "bad tag in SessionLog";
    if (field == 1 && wt == kVarint) {
      uint64_t s;
      if (!r.Varint(&s)) return "bad SessionLog.status";
      *status = static_cast<SessionStatus>(static_cast<int>(s));
    } else if (!r.Skip(wt)) {
      return absl::StrCat("bad field ", field, " in SessionLog");
    }
  }
  return "";
}

std::string DecodeEvent(absl::string_view bytes, TfEvent* event) {
  WireReader r(bytes);
  while (!r.done()) {
    int field, wt;
    if (!r.Tag(&field, &wt)) return "bad tag in Event";
    uint64_t v;
    absl::string_view s;
    if (field == 1 && wt == kFixed64) {
      if (!r.Fixed(8, &v)) return "bad Event.wall_time";
      std::memcpy(&event->wall_time, &v, sizeof(v));
    } else if (field == 2 && wt == kVarint) {
      if (!r.Varint(&v)) return "bad Event.step";
      event->step = static_cast<int64_t>(v);
    } else if (field == 3 && wt == kLengthDelimited) {
      if (!r.Bytes(&s)) return "bad Event.file_version";
      event->file_version = std::string(s);
    } else if (field == 5 && wt == kLengthDelimited) {
      if (!r.Bytes(&s)) return "bad Event.summary";
      std::string err = DecodeSummary(s, &event->values);
      if (!err.empty()) return err;
    } else if (field == 7 && wt == kLengthDelimited) {
      if (!r.Bytes(&s)) return "bad Event.session_log";
      std::string err = DecodeSessionLog(s, &event->session_log);
      if (!err.empty()) return err;
    } else if (!r.Skip(wt)) {
      return absl::StrCat("bad field ", field, " in Event");
    }
  }
  return "";
}

uint64_t LoadLe(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

}  // namespace

uint32_t Crc32c(absl::string_view data) {
  uint32_t c = 0xFFFFFFFFu;
  for (const char ch : data) c = kCrc32cTable[(c ^ static_cast<uint8_t>(ch)) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t MaskedCrc32c(absl::string_view data) {
  const uint32_t c = Crc32c(data);
  return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

namespace tfevents_internal {

std::string EncodeScalarEvent(absl::string_view tag, int64_t step, double wall_time, float value) {
  std::string v;
  PutBytesField(1, tag, &v);
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  PutTag(2, kFixed32, &v);
  PutFixed32(bits, &v);
  std::string summary;
  PutBytesField(1, v, &summary);
  std::string e = EventHeader(step, wall_time);
  PutBytesField(5, summary, &e);
  return e;
}

std::string EncodeSessionStartEvent(int64_t step, double wall_time) {
  std::string log;
  PutTag(1, kVarint, &log);
  PutVarint(static_cast<uint64_t>(SessionStatus::kStart), &log);
  std::string e = EventHeader(step, wall_time);
  PutBytesField(7, log, &e);
  return e;
}

std::string EncodeFileVersionEvent(double wall_time) {
  std::string e = EventHeader(0, wall_time);
  PutBytesField(3, kTfEventsFileVersion, &e);
  return e;
}

std::string FrameRecord(absl::string_view event) {
  std::string rec;
  rec.reserve(event.size() + 16);
  PutFixed64(event.size(), &rec);
  PutFixed32(MaskedCrc32c(rec), &rec);
  rec.append(event.data(), event.size());
  PutFixed32(MaskedCrc32c(event), &rec);
  return rec;
}

}  // namespace tfevents_internal

absl::StatusOr<std::unique_ptr<TfEventsWriter>> TfEventsWriter::Create(const std::string& logdir,
                                                                       absl::string_view hostname,
                                                                       double wall_time) {
  if (hostname.empty() || absl::StrContains(hostname, "/")) {
    return absl::InvalidArgumentError(
        absl::StrCat("TensorBoard event file in ", logdir, ": host name '", hostname,
                     "' is not usable in a file name; pass a non-empty name without '/'"));
  }
  ST_RETURN_IF_ERROR(CreateDirectoryDurably(logdir));
  const std::string base =
      absl::StrCat(logdir, "/events.out.tfevents.", static_cast<int64_t>(wall_time), ".", hostname);
  std::string path = base;
  int fd = -1;
  for (int attempt = 0; attempt < 1000; ++attempt) {
    path = attempt == 0 ? base : absl::StrCat(base, ".", attempt);
    fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0 || errno != EEXIST) break;
  }
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": cannot create the TensorBoard event file: ", std::strerror(errno),
                     "; check that ", logdir, " is a writable directory"));
  }
  std::unique_ptr<TfEventsWriter> writer(new TfEventsWriter(path, fd));
  ST_RETURN_IF_ERROR(writer->WriteRecord(tfevents_internal::EncodeFileVersionEvent(wall_time)));
  return writer;
}

TfEventsWriter::~TfEventsWriter() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status TfEventsWriter::WriteRecord(absl::string_view event) {
  if (!error_.ok()) return error_;
  const std::string rec = tfevents_internal::FrameRecord(event);
  size_t done = 0;
  while (done < rec.size()) {
    const ssize_t n = ::write(fd_, rec.data() + done, rec.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      error_ = absl::UnavailableError(absl::StrCat(
          path_, ": writing a TensorBoard record failed: ", n < 0 ? std::strerror(errno) : "no progress",
          "; check free space and permissions (later records are not written)"));
      return error_;
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status TfEventsWriter::AddScalar(absl::string_view tag, int64_t step, double wall_time, float value) {
  return WriteRecord(tfevents_internal::EncodeScalarEvent(tag, step, wall_time, value));
}

absl::Status TfEventsWriter::AddSessionStart(int64_t step, double wall_time) {
  return WriteRecord(tfevents_internal::EncodeSessionStartEvent(step, wall_time));
}

absl::Status TfEventsWriter::Flush() {
  if (!error_.ok()) return error_;
  if (::fsync(fd_) != 0 && errno != EINVAL) {  // EINVAL: a special file that cannot be synced
    error_ = absl::UnavailableError(
        absl::StrCat(path_, ": fsync of the TensorBoard event file failed: ", std::strerror(errno)));
    return error_;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<TfEvent>> ReadTfEvents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat(path, ": cannot open the TensorBoard event file: ", std::strerror(errno)));
  }
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string data = buf.str();
  std::vector<TfEvent> events;
  size_t pos = 0;
  while (pos < data.size()) {
    const auto loss = [&](absl::string_view what) {
      return absl::DataLossError(absl::StrCat(path, ": record at byte offset ", pos, ": ", what,
                                              "; the event file is damaged or was cut short"));
    };
    if (data.size() - pos < 12) {
      return loss(absl::StrCat("truncated header (", data.size() - pos, " of 12 bytes)"));
    }
    const char* p = data.data() + pos;
    if (static_cast<uint32_t>(LoadLe(p + 8, 4)) != MaskedCrc32c(absl::string_view(p, 8))) {
      return loss("length CRC mismatch");
    }
    const uint64_t n = LoadLe(p, 8);
    if (n > data.size() - pos - 12 || data.size() - pos - 12 - n < 4) {
      return loss(absl::StrCat("truncated (", n, "-byte event, ", data.size() - pos, " bytes left)"));
    }
    const absl::string_view payload(p + 12, n);
    if (static_cast<uint32_t>(LoadLe(p + 12 + n, 4)) != MaskedCrc32c(payload)) {
      return loss("event CRC mismatch");
    }
    TfEvent event;
    event.offset = pos;
    const std::string err = DecodeEvent(payload, &event);
    if (!err.empty()) return loss(err);
    events.push_back(std::move(event));
    pos += 12 + n + 4;
  }
  return events;
}

}  // namespace sigmatune::formats
