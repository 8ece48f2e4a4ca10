// The checkpoint store of a training job: a directory of numbered checkpoints that survives
// crashes, full disks and half-written files.
//
// Layout under the root:
//   step-00000100/            one complete checkpoint: the caller's files plus manifest.json =
//                             {"format": "sigmatune-checkpoint/1", "step": 100,
//                              "created": <unix seconds>,
//                              "files": [{"name", "size", "checksum"}, ...]}
//                             (checksum: Fingerprint hex of the file's bytes, kernels/base).
//   latest                    "step-00000100\n": the checkpoint to resume from.
//   step-00000200.tmp-<pid>   a checkpoint being written (or left behind by a crash).
//
// Contract:
//  - One writer group: one process, or one worker group whose leader alone publishes, writes into
//    a root at a time. Any number of readers may Open and LoadLatest meanwhile (Open and LoadLatest
//    never delete or write anything).
//  - Save (one process holding every file) writes every file atomically into the temporary
//    directory, the manifest last, renames the directory into place (replacing an existing
//    checkpoint of the same step only once the new one is complete), then moves `latest`, then
//    prunes. A crash at any point leaves `latest` naming a complete checkpoint (or, in the one
//    window of a same-step rewrite on a file system without RENAME_EXCHANGE, naming none, which
//    LoadLatest survives by falling back to an older one).
//  - Staged saving (a worker group whose ranks each write their own files into a root visible to
//    all of them): the leader calls BeginStaged (the temporary directory, as Save's) and tells the
//    ranks its path; every rank writes its files with WriteStagedFile (atomically) and hands the
//    returned FileEntry to the leader; the leader calls CommitStaged with every entry, which checks
//    that each file is there with the recorded size and checksum, then finishes exactly as Save
//    does (manifest last, rename, `latest`, prune), or AbortStaged when any rank failed. The same
//    crash safety holds: nothing is visible under a step name before CommitStaged's rename.
//  - On a failed Save or CommitStaged the temporary directory is removed, `latest` and every
//    earlier checkpoint are untouched, and the Status names the file, the errno text (or what
//    does not match) and the checkpoint that is intact.
//  - Pruning (after each successful Save, best effort: a failure to delete is retried at the next
//    Save and never fails the Save) keeps the `keep` highest-numbered complete checkpoints plus the
//    one `latest` names, and removes "step-*.tmp-*" directories whose process is gone.
//  - A checkpoint's files are opaque named blobs; names are [A-Za-z0-9._-]+, not starting with '.'
//    (hidden names are the temporary files of formats/atomic_file.h) and not "manifest.json".
//  - Errors are absl::Status (the disk is the outside world) and name the path and what to do.
#ifndef SIGMATUNE_WORKER_CHECKPOINT_CHECKPOINT_H_
#define SIGMATUNE_WORKER_CHECKPOINT_CHECKPOINT_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sigmatune::checkpoint {

struct CheckpointOptions {
  // How many complete checkpoints Save keeps (>= 1); the one `latest` names is always kept too.
  int keep = 2;
};

// One file of a checkpoint as its manifest records it.
struct FileEntry {
  std::string name;
  uint64_t size = 0;
  std::string checksum;  // Fingerprint hex of the bytes
};

struct LoadedCheckpoint {
  int64_t step = 0;
  std::string dir;                           // absolute or as given: <root>/step-00000100
  std::map<std::string, std::string> files;  // name -> bytes; manifest.json excluded
  // One per skipped corrupt or partial checkpoint (and one for a missing or bad `latest`), naming
  // it and why, e.g. "checkpoint step-00000200 is corrupt (adapter.safetensors: checksum
  // mismatch); using step-00000100".
  std::vector<std::string> warnings;
};

class CheckpointStore {
 public:
  // Creates `root` (and its parents) if missing. FailedPrecondition naming the path when a
  // non-directory is in the way or it cannot be created; InvalidArgument for an empty root or
  // keep < 1. Deletes nothing.
  static absl::StatusOr<CheckpointStore> Open(std::string root, CheckpointOptions options);

  // Writes checkpoint `step` (>= 0) holding `files` (see the name rules above; InvalidArgument
  // otherwise), makes it `latest`, then prunes. Saving a step that exists replaces it.
  absl::Status Save(int64_t step, const std::map<std::string, std::string>& files);

  // Staged saving by a worker group (see the contract). The leader: creates and returns the
  // temporary directory of checkpoint `step` (>= 0; an earlier attempt's directory of this
  // process is cleared first). InvalidArgument for a negative step; the file system's error naming
  // the directory otherwise.
  absl::StatusOr<std::string> BeginStaged(int64_t step);
  // Any rank: writes `bytes` atomically as `name` (see the name rules) into `staged_dir` and
  // returns its manifest entry. InvalidArgument for a bad name; the file system's error naming the
  // file otherwise.
  static absl::StatusOr<FileEntry> WriteStagedFile(const std::string& staged_dir, const std::string& name,
                                                   const std::string& bytes);
  // The leader: verifies that `staged_dir` (BeginStaged's for `step`) holds exactly the files of
  // `entries`, each with its size and checksum, then writes the manifest and publishes the
  // checkpoint as Save does, makes it `latest` and prunes. InvalidArgument (nothing removed) for a
  // directory that is not this store's temporary directory of `step` or a bad or repeated name;
  // DataLoss naming the file for a missing, resized, changed or unlisted file; the file system's
  // error otherwise. On every error but InvalidArgument the staged directory is removed and
  // `latest` and the earlier checkpoints are untouched.
  absl::Status CommitStaged(int64_t step, const std::string& staged_dir, const std::vector<FileEntry>& entries);
  // The leader, when a rank failed before CommitStaged: removes the staged directory (best effort;
  // Prune finishes it otherwise). Does nothing for a path that is not a temporary directory of
  // this store.
  void AbortStaged(const std::string& staged_dir);

  // The newest checkpoint that verifies (manifest parses, every listed file exists with the
  // recorded size and checksum): first the one `latest` names, then every step-* directory from
  // the highest step down. Each one skipped adds a warning; `latest` missing, unparsable or naming
  // a missing directory is a warning, not an error. nullopt when there is no checkpoint at all;
  // DataLoss listing each problem when checkpoints exist but none verifies; FailedPrecondition
  // when the root cannot be listed (it is never mistaken for "no checkpoint").
  absl::StatusOr<std::optional<LoadedCheckpoint>> LoadLatest() const;

  // Steps of the complete (non-temporary) checkpoint directories, ascending, not verified. Empty
  // when the root cannot be listed.
  std::vector<int64_t> ListSteps() const;

  const std::string& root() const { return root_; }

 private:
  CheckpointStore(std::string root, CheckpointOptions options)
      : root_(std::move(root)), options_(options) {}

  // This process's temporary directory of `step`.
  std::string TempDirFor(int64_t step) const;
  // Writes the manifest of `entries` into the complete `tmp_dir`, renames it into place and moves
  // `latest`; on error the caller removes `tmp_dir`.
  absl::Status Publish(int64_t step, const std::vector<FileEntry>& entries, const std::string& tmp_dir);
  // The error of a failed save of `step`: `why`, the cleanup, and the checkpoint that is intact.
  absl::Status SaveFailed(int64_t step, const std::optional<int64_t>& previous, const absl::Status& why,
                          bool cleanup_failed) const;
  // Deletes old checkpoints and stale temporary directories; best effort.
  void Prune(int64_t latest_step) const;
  // The step `latest` names when that directory exists, else the highest complete step.
  std::optional<int64_t> PreviousStep() const;

  std::string root_;
  CheckpointOptions options_;
};

// "step-00000100" (at least 8 digits). Exposed for tools and tests.
std::string StepDirName(int64_t step);

}  // namespace sigmatune::checkpoint

#endif  // SIGMATUNE_WORKER_CHECKPOINT_CHECKPOINT_H_
