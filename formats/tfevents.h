// TensorBoard event files (../shared/FORMATS.md §7): a writer for scalar summaries and a small
// reader for tests and tools. No protobuf dependency: the few Event/Summary fields are encoded by
// hand in the protobuf wire format.
//
// Contract:
//  - File: <logdir>/events.out.tfevents.<int(wall_time)>.<hostname>. `logdir` is created with its
//    parents. If that name is taken (a second writer in the same second on the same host), ".1",
//    ".2", ... is appended; the name still contains "tfevents" and sorts after the first file, as
//    TensorBoard's directory loader expects. An existing file is never appended to.
//  - Record: u64 LE length n | u32 masked CRC32C of those 8 bytes | n-byte Event | u32 masked
//    CRC32C of the Event. The first record is Event{wall_time, file_version: "brain.Event:2"}.
//  - Every Add* writes one whole record with a single write(2) (retrying EINTR and short writes), so
//    a reader (TensorBoard polls the file while a job runs) sees it at once; Flush() also fsyncs.
//  - brain.Event:2 means TensorBoard discards out-of-order steps only on SessionLog{START}: a
//    resumed run calls AddSessionStart(resume_step) first, which drops the stale points with
//    step >= resume_step that the interrupted run wrote after its last checkpoint.
//  - Errors are absl::Status naming the file. After a failed write the writer is poisoned (the file
//    may end in a torn record) and every later call returns the first error.
//  - Not thread-safe; write from one thread (and from rank 0 only).
//
// ReadTfEvents checks both CRCs of every record; a mismatch, a truncated record or an undecodable
// Event is DataLoss naming the file and the byte offset of the record. (TensorBoard itself waits for
// a truncated tail to be completed; this reader is for finished files.)
#ifndef SIGMATUNE_FORMATS_TFEVENTS_H_
#define SIGMATUNE_FORMATS_TFEVENTS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sigmatune::formats {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF).
uint32_t Crc32c(absl::string_view data);
// The TFRecord mask of Crc32c(data): ((c >> 15) | (c << 17)) + 0xA282EAD8 (mod 2^32).
uint32_t MaskedCrc32c(absl::string_view data);

inline constexpr char kTfEventsFileVersion[] = "brain.Event:2";

// tensorflow.SessionLog.SessionStatus.
enum class SessionStatus : int { kUnspecified = 0, kStart = 1, kStop = 2, kCheckpoint = 3 };

// One Summary.Value; simple_value is absent for values of other kinds (tensor, image, ...).
struct TfSummaryValue {
  std::string tag;
  std::optional<float> simple_value;
};

// The decoded fields of one Event record; unknown fields are skipped.
struct TfEvent {
  uint64_t offset = 0;  // byte offset of the record in the file
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;  // set on the first event only
  std::vector<TfSummaryValue> values;
  std::optional<SessionStatus> session_log;  // set when the event carries a SessionLog
};

class TfEventsWriter {
 public:
  // Creates `logdir` (with parents) and a new event file in it (see the file contract above), and
  // writes the file_version event stamped `wall_time`. `hostname` must be non-empty and must not
  // contain '/'.
  static absl::StatusOr<std::unique_ptr<TfEventsWriter>> Create(const std::string& logdir,
                                                                absl::string_view hostname, double wall_time);

  TfEventsWriter(const TfEventsWriter&) = delete;
  TfEventsWriter& operator=(const TfEventsWriter&) = delete;
  ~TfEventsWriter();

  // Event{wall_time, step, summary {value {tag, simple_value}}}.
  absl::Status AddScalar(absl::string_view tag, int64_t step, double wall_time, float value);
  // Event{wall_time, step, session_log {status: START}}: TensorBoard purges the points of every tag
  // with step >= `step` read before it. Call once when a resumed run starts, before its scalars.
  absl::Status AddSessionStart(int64_t step, double wall_time);
  // fsync (records are already in the file; this makes them durable).
  absl::Status Flush();

  const std::string& path() const { return path_; }

 private:
  TfEventsWriter(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  absl::Status WriteRecord(absl::string_view event);

  std::string path_;
  int fd_ = -1;
  absl::Status error_;  // first failure; sticky
};

// Reads every record of an event file (see the reader contract above).
absl::StatusOr<std::vector<TfEvent>> ReadTfEvents(const std::string& path);

namespace tfevents_internal {
// The serialised Event of AddScalar / AddSessionStart / the file_version record, and the framing of
// a record; exposed for byte-exact tests.
std::string EncodeScalarEvent(absl::string_view tag, int64_t step, double wall_time, float value);
std::string EncodeSessionStartEvent(int64_t step, double wall_time);
std::string EncodeFileVersionEvent(double wall_time);
std::string FrameRecord(absl::string_view event);
}  // namespace tfevents_internal

}  // namespace sigmatune::formats

#endif  // SIGMATUNE_FORMATS_TFEVENTS_H_
