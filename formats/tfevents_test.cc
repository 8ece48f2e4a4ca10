#include "formats/tfevents.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/testing/status.h"

namespace sigmatune::formats {
namespace {

std::string TempDir(const std::string& name) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/tfevents_test/", name);
  std::filesystem::remove_all(dir);
  return dir;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

std::string Bytes(std::initializer_list<int> b) {
  std::string s;
  for (int x : b) s.push_back(static_cast<char>(x));
  return s;
}

TEST(Crc32cTest, KnownVectors) {
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(""), 0u);
  EXPECT_EQ(Crc32c("a"), 0xC1D04330u);
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);  // RFC 3720 B.4
  const uint32_t c = 0xE3069283u;
  EXPECT_EQ(MaskedCrc32c("123456789"), ((c >> 15) | (c << 17)) + 0xA282EAD8u);
  EXPECT_EQ(MaskedCrc32c("123456789"), 0xC78AB0E5u);
}

// FORMATS.md §7: 09 <f64> 10 <varint> 2A <len> [0A <len> [0A <len> "train/loss" 15 <f32>]], framed
// as u64 length | masked CRC of it | event | masked CRC of the event. CRCs computed independently
// (bitwise CRC-32C in Python).
TEST(TfEventsTest, ScalarRecordBytesAreExact) {
  const std::string event = tfevents_internal::EncodeScalarEvent("train/loss", 12, 1700000000.5, 2.5f);
  const std::string expected_event =
      Bytes({0x09, 0x00, 0x00, 0x20, 0x40, 0xfc, 0x54, 0xd9, 0x41,  // wall_time 1700000000.5
             0x10, 0x0c,                                            // step 12
             0x2a, 0x13,                                            // summary, 19 bytes
             0x0a, 0x11,                                            // value, 17 bytes
             0x0a, 0x0a}) +                                         // tag, 10 bytes
      "train/loss" +
      Bytes({0x15, 0x00, 0x00, 0x20, 0x40});  // simple_value 2.5f
  EXPECT_EQ(event, expected_event);
  const std::string expected_record = Bytes({0x20, 0, 0, 0, 0, 0, 0, 0, 0x29, 0xed, 0xa9, 0x50}) +
                                      expected_event + Bytes({0x65, 0xa7, 0x5b, 0xee});
  EXPECT_EQ(tfevents_internal::FrameRecord(event), expected_record);
}

TEST(TfEventsTest, SessionStartAndFileVersionBytes) {
  EXPECT_EQ(tfevents_internal::EncodeSessionStartEvent(300, 0.0),
            Bytes({0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0xac, 0x02, 0x3a, 0x02, 0x08, 0x01}));
  EXPECT_EQ(tfevents_internal::EncodeFileVersionEvent(0.0),
            Bytes({0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x1a, 0x0d}) + "brain.Event:2");
}

TEST(TfEventsTest, WrittenFileReadsBack) {
  const std::string dir = TempDir("roundtrip") + "/nested/tensorboard";
  auto w = TfEventsWriter::Create(dir, "host-a", 1700000000.75);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->path(), dir + "/events.out.tfevents.1700000000.host-a");
  ASSERT_TRUE((*w)->AddScalar("train/loss", 1, 1700000001.0, 2.25f).ok());
  ASSERT_TRUE((*w)->AddScalar("eval/ppl/knowledge", 1, 1700000001.5, 12.5f).ok());
  ASSERT_TRUE((*w)->AddSessionStart(1, 1700000002.0).ok());
  ASSERT_TRUE((*w)->AddScalar("train/loss", 0, 1700000002.0, -0.0f).ok());
  ASSERT_TRUE((*w)->AddScalar("train/loss", int64_t{1} << 40, 1700000003.0, 1e-30f).ok());
  ASSERT_TRUE((*w)->Flush().ok());

  auto events = ReadTfEvents((*w)->path());
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 6u);
  const auto& e = *events;
  EXPECT_EQ(e[0].offset, 0u);
  EXPECT_EQ(e[0].file_version, "brain.Event:2");
  EXPECT_EQ(e[0].wall_time, 1700000000.75);
  EXPECT_TRUE(e[0].values.empty());
  EXPECT_FALSE(e[0].session_log.has_value());

  EXPECT_EQ(e[1].step, 1);
  EXPECT_EQ(e[1].wall_time, 1700000001.0);
  ASSERT_EQ(e[1].values.size(), 1u);
  EXPECT_EQ(e[1].values[0].tag, "train/loss");
  EXPECT_EQ(e[1].values[0].simple_value, 2.25f);
  EXPECT_EQ(e[2].values[0].tag, "eval/ppl/knowledge");
  EXPECT_EQ(e[2].values[0].simple_value, 12.5f);

  EXPECT_EQ(e[3].step, 1);
  EXPECT_EQ(e[3].session_log, SessionStatus::kStart);
  EXPECT_TRUE(e[3].values.empty());

  EXPECT_EQ(e[4].step, 0);
  EXPECT_TRUE(std::signbit(*e[4].values[0].simple_value));
  EXPECT_EQ(e[5].step, int64_t{1} << 40);
  EXPECT_EQ(e[5].values[0].simple_value, 1e-30f);
  EXPECT_GT(e[5].offset, e[4].offset);
}

TEST(TfEventsTest, SecondWriterInTheSameSecondGetsANewFile) {
  const std::string dir = TempDir("same_second");
  auto a = TfEventsWriter::Create(dir, "h", 100.0);
  auto b = TfEventsWriter::Create(dir, "h", 100.9);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ((*a)->path(), dir + "/events.out.tfevents.100.h");
  EXPECT_EQ((*b)->path(), dir + "/events.out.tfevents.100.h.1");
  EXPECT_LT((*a)->path(), (*b)->path());
}

TEST(TfEventsTest, FlippedByteIsDetected) {
  const std::string dir = TempDir("flip");
  std::string path;
  {
    auto w = TfEventsWriter::Create(dir, "h", 5.0);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->AddScalar("train/loss", 3, 6.0, 1.0f).ok());
    path = (*w)->path();
  }
  const std::string good = ReadAll(path);
  const size_t first = 12 + tfevents_internal::EncodeFileVersionEvent(5.0).size() + 4;
  ASSERT_EQ(good.size(),
            first + 12 + tfevents_internal::EncodeScalarEvent("train/loss", 3, 6.0, 1.0f).size() + 4);
  // A byte of the second record's payload, of its length, and of its trailing CRC.
  for (size_t at : {first + 20, first + 1, good.size() - 1}) {
    std::string bad = good;
    bad[at] ^= 0x10;
    WriteAll(path, bad);
    const absl::Status st = ReadTfEvents(path).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << at;
    EXPECT_ERROR_MENTIONS(st, path.c_str(), absl::StrCat("byte offset ", first).c_str(), "CRC mismatch");
  }
}

TEST(TfEventsTest, TruncatedTailIsDetected) {
  const std::string dir = TempDir("truncated");
  std::string path;
  {
    auto w = TfEventsWriter::Create(dir, "h", 5.0);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->AddScalar("train/loss", 3, 6.0, 1.0f).ok());
    path = (*w)->path();
  }
  const std::string good = ReadAll(path);
  const size_t first = 12 + tfevents_internal::EncodeFileVersionEvent(5.0).size() + 4;
  for (size_t cut : {good.size() - 1, first + 13, first + 5}) {
    WriteAll(path, good.substr(0, cut));
    const absl::Status st = ReadTfEvents(path).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << cut;
    EXPECT_ERROR_MENTIONS(st, path.c_str(), absl::StrCat("byte offset ", first).c_str(), "truncated");
  }
  // Cut at a record boundary: a valid (shorter) file.
  WriteAll(path, good.substr(0, first));
  auto events = ReadTfEvents(path);
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_EQ(events->size(), 1u);
}

TEST(TfEventsTest, UndecodableEventIsDataLoss) {
  const std::string dir = TempDir("garbage");
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/events.out.tfevents.1.h";
  // Valid framing around an Event with a length-delimited field that overruns the payload.
  WriteAll(path, tfevents_internal::FrameRecord(Bytes({0x2a, 0x7f, 0x00})));
  EXPECT_ERROR_MENTIONS(ReadTfEvents(path).status(), path.c_str(), "byte offset 0", "Event.summary");
}

TEST(TfEventsTest, ErrorsNameTheFile) {
  const std::string dir = TempDir("errors");
  std::filesystem::create_directories(dir);
  const std::string file = dir + "/regular_file";
  WriteAll(file, "x");
  EXPECT_ERROR_MENTIONS(TfEventsWriter::Create(file + "/tb", "h", 1.0).status(), "regular_file");
  EXPECT_ERROR_MENTIONS(TfEventsWriter::Create(dir, "a/b", 1.0).status(), "a/b", "host name");
  EXPECT_ERROR_MENTIONS(TfEventsWriter::Create(dir, "", 1.0).status(), "host name");
  EXPECT_EQ(ReadTfEvents(dir + "/missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_ERROR_MENTIONS(ReadTfEvents(dir + "/missing").status(), "missing");
}

TEST(TfEventsTest, ExistingFileIsNeverAppendedTo) {
  const std::string dir = TempDir("existing");
  std::filesystem::create_directories(dir);
  const std::string taken = dir + "/events.out.tfevents.7.h";
  WriteAll(taken, "not an event file");
  auto w = TfEventsWriter::Create(dir, "h", 7.0);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->path(), taken + ".1");
  EXPECT_EQ(ReadAll(taken), "not an event file");
}

// RLIMIT_FSIZE makes write(2) fail with EFBIG once the file reaches the limit (SIGXFSZ ignored).
TEST(TfEventsTest, WriteErrorIsStickyAndNamesTheFile) {
  const std::string dir = TempDir("fsize");
  rlimit old;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  auto w = TfEventsWriter::Create(dir, "h", 7.0);
  ASSERT_TRUE(w.ok()) << w.status();
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old;
  small.rlim_cur = 100;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  absl::Status st;
  for (int step = 1; step < 10 && st.ok(); ++step) st = (*w)->AddScalar("train/loss", step, 8.0, 1.0f);
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_ERROR_MENTIONS(st, (*w)->path().c_str(), "writing a TensorBoard record failed");
  // Sticky: later calls return the same error even though writes would succeed again.
  EXPECT_EQ((*w)->AddScalar("train/loss", 20, 9.0, 1.0f), st);
  EXPECT_EQ((*w)->Flush(), st);
}

}  // namespace
}  // namespace sigmatune::formats
