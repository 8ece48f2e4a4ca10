#include "worker/checkpoint/checkpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "formats/atomic_file.h"
#include "formats/json_util.h"
#include "kernels/base/fingerprint.h"
#include "kernels/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace sigmatune::checkpoint {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

constexpr char kManifestName[] = "manifest.json";
constexpr char kFormat[] = "sigmatune-checkpoint/1";
constexpr char kLatestName[] = "latest";
constexpr char kStepPrefix[] = "step-";
constexpr char kTmpMarker[] = ".tmp-";
// formats/atomic_file.h names its temporary files ".<name>.tmp.<random>".
constexpr char kLatestTempPrefix[] = ".latest.tmp.";
constexpr size_t kMaxManifestBytes = size_t{16} << 20;
constexpr size_t kMaxLatestBytes = 4096;
constexpr int kMaxManifestDepth = 8;
constexpr size_t kMaxNameLength = 255;  // NAME_MAX

std::string ErrnoText(int err) { return std::strerror(err); }

std::string JoinPath(const std::string& dir, absl::string_view name) {
  return absl::StrCat(dir, "/", name);
}

// InvalidArgument unless `name` may name a file of a checkpoint (see the header).
absl::Status ValidateFileName(absl::string_view name) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint file name \"", absl::CHexEscape(name.substr(0, 80)), "\" ", why,
        "; use a plain file name of letters, digits, '.', '_' and '-' (e.g. adapter.safetensors)"));
  };
  if (name.empty()) return bad("is empty");
  if (name.size() > kMaxNameLength) return bad("is longer than 255 characters");
  for (const char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return bad("holds a character other than [A-Za-z0-9._-]");
    }
  }
  if (name.front() == '.') return bad("starts with '.' (hidden names are for temporary files)");
  if (name == kManifestName) return bad("is reserved for the checkpoint's own manifest");
  return absl::OkStatus();
}

// The step of a complete checkpoint directory name: "step-" and at least 8 digits, exactly as
// StepDirName writes it (so one step has one name).
std::optional<int64_t> ParseStepDirName(absl::string_view name) {
  if (!absl::ConsumePrefix(&name, kStepPrefix) || name.empty()) return std::nullopt;
  for (const char c : name) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return std::nullopt;
  }
  int64_t step = 0;
  if (!absl::SimpleAtoi(name, &step) || step < 0) return std::nullopt;
  if (StepDirName(step).substr(sizeof(kStepPrefix) - 1) != name) return std::nullopt;
  return step;
}

// A temporary directory ("step-*.tmp-<pid>[-suffix]"); its pid, or 0 when unparsable.
std::optional<int64_t> ParseTmpDirPid(absl::string_view name) {
  if (!absl::StartsWith(name, kStepPrefix)) return std::nullopt;
  const size_t at = name.find(kTmpMarker);
  if (at == absl::string_view::npos) return std::nullopt;
  absl::string_view rest = name.substr(at + sizeof(kTmpMarker) - 1);
  size_t digits = 0;
  while (digits < rest.size() && absl::ascii_isdigit(static_cast<unsigned char>(rest[digits]))) {
    ++digits;
  }
  int64_t pid = 0;
  if (digits == 0 || digits > 18 || !absl::SimpleAtoi(rest.substr(0, digits), &pid)) return 0;
  return pid;
}

bool ProcessAlive(int64_t pid) {
  if (pid <= 0 || pid > INT_MAX) return false;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

struct RootScan {
  std::vector<int64_t> steps;          // complete checkpoint directories, ascending
  std::vector<std::string> tmp_dirs;   // "step-*.tmp-*" directories
  std::vector<std::string> tmp_files;  // leftover temporary files of `latest`
};

absl::StatusOr<RootScan> ScanRoot(const std::string& root) {
  RootScan scan;
  std::error_code ec;
  fs::directory_iterator it(root, ec);
  const fs::directory_iterator end;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code type_ec;
    const bool is_dir = it->is_directory(type_ec) && !type_ec;
    if (is_dir) {
      if (std::optional<int64_t> step = ParseStepDirName(name)) {
        scan.steps.push_back(*step);
      } else if (ParseTmpDirPid(name).has_value()) {
        scan.tmp_dirs.push_back(name);
      }
    } else if (absl::StartsWith(name, kLatestTempPrefix)) {
      scan.tmp_files.push_back(name);
    }
  }
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint root ", root, " cannot be listed: ", ec.message(),
                     "; check that the directory exists and is readable"));
  }
  std::sort(scan.steps.begin(), scan.steps.end());
  return scan;
}

absl::Status FsyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("cannot open directory ", dir, " to fsync it: ", ErrnoText(errno)));
  }
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) {
    return absl::InternalError(
        absl::StrCat("fsync of directory ", dir, " failed: ", ErrnoText(err)));
  }
  return absl::OkStatus();
}

// The whole file, failing (with a short reason, not naming the path) when it is missing, larger
// than `max_bytes` or unreadable.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path, size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError("missing");
    return absl::UnavailableError(absl::StrCat("cannot be opened: ", ErrnoText(err)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::UnavailableError("is not a regular file");
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    return absl::OutOfRangeError(absl::StrCat("is ", st.st_size, " bytes, more than expected"));
  }
  std::string bytes(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t n = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return absl::UnavailableError(absl::StrCat("cannot be read: ", ErrnoText(err)));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  bytes.resize(got);
  return bytes;
}

std::string Checksum(absl::string_view bytes) { return Fingerprint().Update(bytes).Hex(); }

// What `latest` says, and what is wrong with it (empty when it names an existing checkpoint).
struct LatestPointer {
  std::optional<int64_t> step;
  std::string problem;
};

LatestPointer ReadLatest(const std::string& root, const std::vector<int64_t>& steps) {
  LatestPointer latest;
  const std::string path = JoinPath(root, kLatestName);
  absl::StatusOr<std::string> text = ReadWholeFile(path, kMaxLatestBytes);
  if (!text.ok()) {
    latest.problem = absl::StrCat(path, " ", text.status().message());
    return latest;
  }
  const absl::string_view name = absl::StripAsciiWhitespace(*text);
  const std::optional<int64_t> step = ParseStepDirName(name);
  if (!step) {
    latest.problem = absl::StrCat(path, " holds \"", absl::CHexEscape(name.substr(0, 64)),
                                  "\", not a checkpoint name");
    return latest;
  }
  if (!std::binary_search(steps.begin(), steps.end(), *step)) {
    latest.problem = absl::StrCat(path, " names ", name, ", which does not exist");
    return latest;
  }
  latest.step = step;
  return latest;
}

// The files of the checkpoint in `dir` when it verifies; otherwise DataLoss whose message lists
// the problems ("adapter.safetensors: checksum mismatch; trainer_state.json: missing").
absl::StatusOr<std::map<std::string, std::string>> VerifyCheckpoint(const std::string& dir,
                                                                    int64_t step) {
  auto fail = [](absl::string_view why) { return absl::DataLossError(why); };
  absl::StatusOr<std::string> text = ReadWholeFile(JoinPath(dir, kManifestName), kMaxManifestBytes);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) {
      return fail("manifest.json: missing; the save did not finish");
    }
    return fail(absl::StrCat("manifest.json: ", text.status().message()));
  }
  if (!formats::JsonNestingWithin(*text, kMaxManifestDepth)) {
    return fail("manifest.json: nested too deeply; not a checkpoint manifest");
  }
  const Json manifest =
      Json::parse(text->begin(), text->end(), nullptr, /*allow_exceptions=*/false);
  if (manifest.is_discarded() || !manifest.is_object()) {
    return fail("manifest.json: not a JSON object (truncated?)");
  }
  const auto format = manifest.find("format");
  if (format == manifest.end() || !format->is_string() || format->get<std::string>() != kFormat) {
    return fail(absl::StrCat("manifest.json: \"format\" is not \"", kFormat, "\""));
  }
  const auto manifest_step = manifest.find("step");
  if (manifest_step == manifest.end() || !manifest_step->is_number_integer() ||
      manifest_step->get<int64_t>() != step) {
    return fail(
        absl::StrCat("manifest.json: \"step\" is not ", step, " as the directory name says"));
  }
  const auto entries = manifest.find("files");
  if (entries == manifest.end() || !entries->is_array()) {
    return fail("manifest.json: no \"files\" list");
  }

  std::map<std::string, std::string> files;
  std::vector<std::string> problems;
  for (const Json& entry : *entries) {
    if (!entry.is_object()) return fail("manifest.json: a \"files\" entry is not an object");
    const auto name = entry.find("name");
    const auto size = entry.find("size");
    const auto checksum = entry.find("checksum");
    if (name == entry.end() || !name->is_string() || size == entry.end() ||
        !size->is_number_unsigned() || checksum == entry.end() || !checksum->is_string()) {
      return fail("manifest.json: a \"files\" entry lacks a string name, a size or a checksum");
    }
    const std::string file_name = name->get<std::string>();
    if (!ValidateFileName(file_name).ok()) {
      return fail(absl::StrCat("manifest.json: lists a bad file name \"",
                               absl::CHexEscape(file_name.substr(0, 80)), "\""));
    }
    if (files.count(file_name) != 0) {
      return fail(absl::StrCat("manifest.json: lists ", file_name, " twice"));
    }
    const uint64_t want_size = size->get<uint64_t>();
    const std::string path = JoinPath(dir, file_name);
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      const int err = errno;
      problems.push_back(absl::StrCat(file_name, ": ", err == ENOENT ? "missing" : ErrnoText(err)));
      continue;
    }
    if (static_cast<uint64_t>(st.st_size) != want_size) {
      problems.push_back(absl::StrCat(file_name, ": ", st.st_size, " bytes, the manifest says ",
                                      want_size, " (truncated?)"));
      continue;
    }
    absl::StatusOr<std::string> bytes = ReadWholeFile(path, static_cast<size_t>(want_size));
    if (!bytes.ok()) {
      problems.push_back(absl::StrCat(file_name, ": ", bytes.status().message()));
      continue;
    }
    if (bytes->size() != want_size) {
      problems.push_back(absl::StrCat(file_name, ": read ", bytes->size(),
                                      " bytes, the manifest says ", want_size));
      continue;
    }
    if (Checksum(*bytes) != checksum->get<std::string>()) {
      problems.push_back(absl::StrCat(file_name, ": checksum mismatch"));
      continue;
    }
    files.emplace(file_name, *std::move(bytes));
  }
  if (!problems.empty()) return fail(absl::StrJoin(problems, "; "));
  return files;
}

// Removes `dir` so that a crash half-way never leaves a half-deleted checkpoint under a step
// name: it is first renamed to a temporary name, which a later Prune finishes off.
void RemoveCheckpointDir(const std::string& root, const std::string& name) {
  const std::string doomed = JoinPath(root, absl::StrCat(name, kTmpMarker, ::getpid(), "-prune"));
  std::error_code ec;
  if (::rename(JoinPath(root, name).c_str(), doomed.c_str()) != 0) return;
  fs::remove_all(doomed, ec);
}

// The problems of `staged_dir` against `entries` ("x: missing; y: checksum mismatch"), empty when
// it holds exactly those files.
std::vector<std::string> StagedProblems(const std::string& staged_dir, const std::vector<FileEntry>& entries) {
  std::vector<std::string> problems;
  std::set<std::string> listed;
  for (const FileEntry& entry : entries) {
    listed.insert(entry.name);
    const std::string path = JoinPath(staged_dir, entry.name);
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      const int err = errno;
      problems.push_back(absl::StrCat(entry.name, ": ", err == ENOENT ? "missing" : ErrnoText(err)));
      continue;
    }
    if (static_cast<uint64_t>(st.st_size) != entry.size) {
      problems.push_back(absl::StrCat(entry.name, ": ", st.st_size, " bytes, its writer reported ", entry.size));
      continue;
    }
    absl::StatusOr<std::string> bytes = ReadWholeFile(path, static_cast<size_t>(entry.size));
    if (!bytes.ok()) {
      problems.push_back(absl::StrCat(entry.name, ": ", bytes.status().message()));
      continue;
    }
    if (bytes->size() != entry.size || Checksum(*bytes) != entry.checksum) {
      problems.push_back(absl::StrCat(entry.name, ": checksum mismatch (changed after its writer wrote it)"));
    }
  }
  std::error_code ec;
  fs::directory_iterator it(staged_dir, ec);
  const fs::directory_iterator end;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.empty() || name.front() == '.' || listed.count(name) != 0) continue;
    problems.push_back(absl::StrCat(name, ": in the staged directory but reported by no rank"));
  }
  if (ec) problems.push_back(absl::StrCat("the staged directory cannot be listed: ", ec.message()));
  return problems;
}

}  // namespace

std::string StepDirName(int64_t step) { return absl::StrFormat("%s%08d", kStepPrefix, step); }

absl::StatusOr<CheckpointStore> CheckpointStore::Open(std::string root, CheckpointOptions options) {
  if (root.empty()) {
    return absl::InvalidArgumentError("checkpoint root is empty; pass the checkpoint directory");
  }
  if (options.keep < 1) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint store ", root, ": keep is ",
                                                   options.keep, "; keep at least 1 checkpoint"));
  }
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  struct stat st;
  const int stat_err = ::stat(root.c_str(), &st) == 0 ? 0 : errno;
  if (stat_err == 0) {
    if (!S_ISDIR(st.st_mode)) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint root ", root,
                       " exists but is not a directory; remove it or choose another checkpoint "
                       "directory"));
    }
  } else if (stat_err != ENOENT) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint root ", root, " cannot be used: ", ErrnoText(stat_err),
                     "; choose a checkpoint directory whose parents are directories you can "
                     "write"));
  } else {
    const absl::Status created = formats::CreateDirectoryDurably(root);
    if (!created.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("checkpoint root: ", created.message()));
    }
  }
  // A root that cannot be listed would later look like "no checkpoint": refuse it now.
  ST_RETURN_IF_ERROR(ScanRoot(root).status());
  return CheckpointStore(std::move(root), options);
}

std::vector<int64_t> CheckpointStore::ListSteps() const {
  absl::StatusOr<RootScan> scan = ScanRoot(root_);
  if (!scan.ok()) return {};
  return std::move(scan->steps);
}

std::optional<int64_t> CheckpointStore::PreviousStep() const {
  absl::StatusOr<RootScan> scan = ScanRoot(root_);
  if (!scan.ok() || scan->steps.empty()) return std::nullopt;
  const LatestPointer latest = ReadLatest(root_, scan->steps);
  if (latest.step) return latest.step;
  return scan->steps.back();
}

std::string CheckpointStore::TempDirFor(int64_t step) const {
  return JoinPath(root_, absl::StrCat(StepDirName(step), kTmpMarker, ::getpid()));
}

absl::Status CheckpointStore::SaveFailed(int64_t step, const std::optional<int64_t>& previous,
                                         const absl::Status& why, bool cleanup_failed) const {
  const std::string intact = previous
                                 ? absl::StrCat("the previous checkpoint (step ", *previous, ", ",
                                                JoinPath(root_, StepDirName(*previous)),
                                                ") is intact and `latest` is unchanged")
                                 : std::string("no earlier checkpoint exists");
  return absl::Status(why.code(),
                      absl::StrCat("saving checkpoint step ", step, " in ", root_, " failed: ",
                                   why.message(), "; the partial checkpoint was removed",
                                   cleanup_failed ? " (or will be at the next save)" : "", " and ",
                                   intact, "; fix the cause (e.g. free disk space) and save again"));
}

absl::Status CheckpointStore::Save(int64_t step, const std::map<std::string, std::string>& files) {
  if (step < 0) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint store ", root_, ": step ", step,
                                                   " is negative; steps count from 0"));
  }
  for (const auto& [name, bytes] : files) ST_RETURN_IF_ERROR(ValidateFileName(name));

  const std::optional<int64_t> previous = PreviousStep();
  const std::string tmp_dir = TempDirFor(step);
  std::error_code ec;
  fs::remove_all(tmp_dir, ec);  // an earlier failed attempt of this process

  absl::Status written = formats::CreateDirectoryDurably(tmp_dir);
  std::vector<FileEntry> entries;
  for (auto it = files.begin(); written.ok() && it != files.end(); ++it) {
    absl::StatusOr<FileEntry> entry = WriteStagedFile(tmp_dir, it->first, it->second);
    if (entry.ok()) {
      entries.push_back(*std::move(entry));
    } else {
      written = entry.status();
    }
  }
  if (written.ok()) written = Publish(step, entries, tmp_dir);
  if (!written.ok()) {
    fs::remove_all(tmp_dir, ec);
    return SaveFailed(step, previous, written, static_cast<bool>(ec));
  }
  Prune(step);
  return absl::OkStatus();
}

absl::StatusOr<std::string> CheckpointStore::BeginStaged(int64_t step) {
  if (step < 0) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint store ", root_, ": step ", step,
                                                   " is negative; steps count from 0"));
  }
  const std::string tmp_dir = TempDirFor(step);
  std::error_code ec;
  fs::remove_all(tmp_dir, ec);  // an earlier failed attempt of this process
  const absl::Status created = formats::CreateDirectoryDurably(tmp_dir);
  if (!created.ok()) {
    return absl::Status(created.code(), absl::StrCat("starting checkpoint step ", step, " in ", root_,
                                                     " failed: ", created.message()));
  }
  return tmp_dir;
}

absl::StatusOr<FileEntry> CheckpointStore::WriteStagedFile(const std::string& staged_dir,
                                                           const std::string& name,
                                                           const std::string& bytes) {
  ST_RETURN_IF_ERROR(ValidateFileName(name));
  const absl::Status st = formats::WriteFileAtomically(JoinPath(staged_dir, name), bytes);
  if (!st.ok()) return absl::Status(st.code(), absl::StrCat("file ", name, ": ", st.message()));
  FileEntry entry;
  entry.name = name;
  entry.size = static_cast<uint64_t>(bytes.size());
  entry.checksum = Checksum(bytes);
  return entry;
}

absl::Status CheckpointStore::CommitStaged(int64_t step, const std::string& staged_dir,
                                           const std::vector<FileEntry>& entries) {
  if (step < 0) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint store ", root_, ": step ", step,
                                                   " is negative; steps count from 0"));
  }
  const fs::path staged(staged_dir);
  if (staged.parent_path().string() != root_ ||
      !absl::StartsWith(staged.filename().string(), absl::StrCat(StepDirName(step), kTmpMarker))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint store ", root_, ": ", staged_dir, " is not a staged directory of step ", step,
        "; pass what BeginStaged(", step, ") returned"));
  }
  std::set<std::string> names;
  for (const FileEntry& entry : entries) {
    ST_RETURN_IF_ERROR(ValidateFileName(entry.name));
    if (!names.insert(entry.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint step ", step, ": two ranks reported the file ",
                                                     entry.name, "; every file must have one writer"));
    }
  }
  const std::optional<int64_t> previous = PreviousStep();
  absl::Status committed = absl::OkStatus();
  const std::vector<std::string> problems = StagedProblems(staged_dir, entries);
  if (!problems.empty()) {
    committed = absl::DataLossError(absl::StrCat("the staged files do not match what the ranks wrote: ",
                                                 absl::StrJoin(problems, "; ")));
  }
  if (committed.ok()) committed = Publish(step, entries, staged_dir);
  if (!committed.ok()) {
    std::error_code ec;
    fs::remove_all(staged_dir, ec);
    return SaveFailed(step, previous, committed, static_cast<bool>(ec));
  }
  Prune(step);
  return absl::OkStatus();
}

void CheckpointStore::AbortStaged(const std::string& staged_dir) {
  const fs::path staged(staged_dir);
  if (staged.parent_path().string() != root_ || !ParseTmpDirPid(staged.filename().string()).has_value()) return;
  std::error_code ec;
  fs::remove_all(staged, ec);
}

absl::Status CheckpointStore::Publish(int64_t step, const std::vector<FileEntry>& entries,
                                      const std::string& tmp_dir) {
  Json files = Json::array();
  for (const FileEntry& e : entries) {
    Json entry = Json::object();
    entry["name"] = e.name;
    entry["size"] = e.size;
    entry["checksum"] = e.checksum;
    files.push_back(std::move(entry));
  }
  Json manifest = Json::object();
  manifest["format"] = kFormat;
  manifest["step"] = step;
  manifest["created"] = absl::ToUnixSeconds(absl::Now());
  manifest["files"] = std::move(files);
  {
    const absl::Status st =
        formats::WriteFileAtomically(JoinPath(tmp_dir, kManifestName), manifest.dump(2) + "\n");
    if (!st.ok()) return absl::Status(st.code(), absl::StrCat("manifest.json: ", st.message()));
  }
  ST_RETURN_IF_ERROR(FsyncDir(tmp_dir));

  const std::string final_dir = JoinPath(root_, StepDirName(step));
  struct stat st;
  if (::lstat(final_dir.c_str(), &st) == 0) {
    // Rewriting a step (e.g. after a resume): swap the complete new directory with the old one in
    // one step, so the step's name never names nothing; tmp_dir then holds the old one.
    if (::renameat2(AT_FDCWD, tmp_dir.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) != 0) {
      const int err = errno;
      if (err != EINVAL && err != ENOSYS && err != ENOTSUP) {
        return absl::InternalError(absl::StrCat("swapping ", tmp_dir, " with the existing ",
                                                final_dir, " failed: ", ErrnoText(err)));
      }
      // No RENAME_EXCHANGE on this file system: move the old one aside, then the new one in.
      const std::string aside = tmp_dir + "-old";
      if (::rename(final_dir.c_str(), aside.c_str()) != 0) {
        return absl::InternalError(absl::StrCat("moving the existing ", final_dir, " aside to ",
                                                aside, " failed: ", ErrnoText(errno)));
      }
      if (::rename(tmp_dir.c_str(), final_dir.c_str()) != 0) {
        const int rename_err = errno;
        ::rename(aside.c_str(), final_dir.c_str());
        return absl::InternalError(absl::StrCat("renaming ", tmp_dir, " to ", final_dir,
                                                " failed: ", ErrnoText(rename_err)));
      }
      std::error_code ec;
      fs::remove_all(aside, ec);
    }
    std::error_code ec;
    fs::remove_all(tmp_dir, ec);  // the old checkpoint; Prune retries if this fails
  } else if (::rename(tmp_dir.c_str(), final_dir.c_str()) != 0) {
    return absl::InternalError(
        absl::StrCat("renaming ", tmp_dir, " to ", final_dir, " failed: ", ErrnoText(errno)));
  }
  {
    const absl::Status synced = FsyncDir(root_);
    if (!synced.ok()) {
      return absl::Status(synced.code(),
                          absl::StrCat(final_dir, " was written but ", synced.message()));
    }
  }
  const absl::Status pointed =
      formats::WriteFileAtomically(JoinPath(root_, kLatestName), StepDirName(step) + "\n");
  if (!pointed.ok()) {
    return absl::Status(pointed.code(), absl::StrCat(final_dir,
                                                     " was written but `latest` could not "
                                                     "be moved to it: ",
                                                     pointed.message()));
  }
  return absl::OkStatus();
}

void CheckpointStore::Prune(int64_t latest_step) const {
  absl::StatusOr<RootScan> scan = ScanRoot(root_);
  if (!scan.ok()) return;
  std::set<int64_t> kept(scan->steps.end() - std::min<size_t>(scan->steps.size(), options_.keep),
                         scan->steps.end());
  kept.insert(latest_step);
  for (const int64_t step : scan->steps) {
    if (kept.count(step) == 0) RemoveCheckpointDir(root_, StepDirName(step));
  }
  std::error_code ec;
  for (const std::string& name : scan->tmp_dirs) {
    const int64_t pid = ParseTmpDirPid(name).value_or(0);
    if (pid == ::getpid() || !ProcessAlive(pid)) fs::remove_all(JoinPath(root_, name), ec);
  }
  for (const std::string& name : scan->tmp_files) ::unlink(JoinPath(root_, name).c_str());
  FsyncDir(root_).IgnoreError();
}

absl::StatusOr<std::optional<LoadedCheckpoint>> CheckpointStore::LoadLatest() const {
  ST_ASSIGN_OR_RETURN(const RootScan scan, ScanRoot(root_));
  if (scan.steps.empty()) return std::optional<LoadedCheckpoint>();
  const LatestPointer latest = ReadLatest(root_, scan.steps);

  std::vector<int64_t> order;
  if (latest.step) order.push_back(*latest.step);
  for (auto it = scan.steps.rbegin(); it != scan.steps.rend(); ++it) {
    if (!latest.step || *it != *latest.step) order.push_back(*it);
  }

  std::vector<std::string> skipped;  // "checkpoint step-00000200 is corrupt (why)"
  for (const int64_t step : order) {
    const std::string name = StepDirName(step);
    const std::string dir = JoinPath(root_, name);
    absl::StatusOr<std::map<std::string, std::string>> files = VerifyCheckpoint(dir, step);
    if (!files.ok()) {
      skipped.push_back(
          absl::StrCat("checkpoint ", name, " is corrupt (", files.status().message(), ")"));
      continue;
    }
    LoadedCheckpoint loaded;
    loaded.step = step;
    loaded.dir = dir;
    loaded.files = *std::move(files);
    if (!latest.problem.empty()) {
      loaded.warnings.push_back(absl::StrCat(latest.problem, "; using ", name));
    }
    for (const std::string& why : skipped) {
      loaded.warnings.push_back(absl::StrCat(why, "; using ", name));
    }
    return std::optional<LoadedCheckpoint>(std::move(loaded));
  }
  if (!latest.problem.empty()) skipped.insert(skipped.begin(), latest.problem);
  return absl::DataLossError(absl::StrCat(
      "no checkpoint in ", root_, " verifies: ", absl::StrJoin(skipped, "; "),
      ". Restore a good checkpoint directory from a backup, or move the corrupt ones away to "
      "train from scratch"));
}

}  // namespace sigmatune::checkpoint
