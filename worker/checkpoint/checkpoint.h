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
//  - Single writer: one process Saves into a root at a time. Any number of readers may Open and
//    LoadLatest meanwhile (Open and LoadLatest never delete or write anything).
//  - Save writes every file atomically into the temporary directory, the manifest last, renames the
//    directory into place (replacing an existing checkpoint of the same step only once the new one
//    is complete), then moves `latest`, then prunes. A crash at any point leaves `latest` naming a
//    complete checkpoint (or, in the one window of a same-step rewrite on a file system without
//    RENAME_EXCHANGE, naming none, which LoadLatest survives by falling back to an older one).
//  - On a failed Save the temporary directory is removed, `latest` and every earlier checkpoint are
//    untouched, and the Status names the file, the errno text and the checkpoint that is intact.
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

  // Everything of Save after validation; on error the caller removes `tmp_dir`.
  absl::Status WriteAndPublish(int64_t step, const std::map<std::string, std::string>& files,
                               const std::string& tmp_dir);
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
