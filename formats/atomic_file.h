// Atomic file writes: a reader of `path` sees either the old file or the complete new one, never a
// torn mix, even across a crash or power loss.
//
// Contract:
//  - The bytes go to a temporary file in the same directory as `path` (".<name>.tmp.<random>"),
//    which is written, fsync'ed, renamed over `path`, and then the directory is fsync'ed.
//  - On any failure the temporary file is removed and `path` is left exactly as it was.
//  - Errors are absl::Status (the file system is the outside world) and name the path and the
//    errno text; callers add what they were writing.
//  - Not thread-safe per object; distinct writers may target distinct paths concurrently. Two
//    writers racing on one path both succeed and the last rename wins.
#ifndef SIGMATUNE_FORMATS_ATOMIC_FILE_H_
#define SIGMATUNE_FORMATS_ATOMIC_FILE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sigmatune::formats {

// Writes `contents` to `path` atomically (see the contract above).
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

// The whole file `path`: NotFound naming it when it does not exist, PermissionDenied / Internal
// (with the errno text) when it cannot be read.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);
// Whether `path` names an existing regular file.
bool RegularFileExists(const std::string& path);

// mkdir -p `dir`, then fsyncs its parent so a newly created entry is durable. InvalidArgument for an
// empty path; FailedPrecondition naming `dir` when it cannot be created (or a file has its name).
absl::Status CreateDirectoryDurably(const std::string& dir);

// Streaming variant for files too large to hold in memory:
//
//   ST_ASSIGN_OR_RETURN(AtomicFileWriter w, AtomicFileWriter::Open(path));
//   ST_RETURN_IF_ERROR(w.Append(header));
//   ST_RETURN_IF_ERROR(w.Append(data));
//   ST_RETURN_IF_ERROR(w.Commit());
//
// Destroying a writer that was not committed (or whose Commit failed) removes the temporary file.
// After an error from Append the writer is poisoned: later Appends and Commit return that error.
class AtomicFileWriter {
 public:
  // Creates the temporary file next to `path`. Fails (naming the directory) if the directory is
  // missing or not writable.
  static absl::StatusOr<AtomicFileWriter> Open(const std::string& path);

  AtomicFileWriter(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter& operator=(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  ~AtomicFileWriter();

  // Appends bytes (retrying short writes and EINTR).
  absl::Status Append(absl::string_view bytes);
  // fsync, rename over the final path, fsync the directory. At most once.
  absl::Status Commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }
  // Bytes appended so far.
  uint64_t size() const { return size_; }

 private:
  AtomicFileWriter(std::string path, std::string temp_path, int fd);
  void Abandon();  // closes and unlinks the temporary file, if any

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  absl::Status error_;  // first failure; sticky
};

}  // namespace sigmatune::formats

#endif  // SIGMATUNE_FORMATS_ATOMIC_FILE_H_
