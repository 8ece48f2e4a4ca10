#include "worker/checkpoint/checkpoint.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/base/check.h"
#include "kernels/base/fingerprint.h"
#include "nlohmann/json.hpp"

namespace sigmatune::checkpoint {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Plain (non-atomic) overwrite, for damaging checkpoints on purpose.
void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
  ASSERT_TRUE(out.good()) << path;
}

// A fresh, not yet existing checkpoint root under the test's temporary directory.
std::string FreshRoot(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const fs::path dir = fs::path(tmp ? tmp : "/tmp") / "checkpoint_test" / name;
  fs::remove_all(dir);
  return dir.string();
}

// Names in `dir`, sorted.
std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

int CountTmpDirs(const std::string& root) {
  int n = 0;
  for (const std::string& name : Entries(root)) n += absl::StrContains(name, ".tmp");
  return n;
}

// Every byte value, NULs included, with a step-dependent twist.
std::string Binary(int64_t step, size_t size) {
  std::string bytes(size, '\0');
  for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>((i * 7 + step) & 0xff);
  return bytes;
}

std::map<std::string, std::string> FilesFor(int64_t step) {
  return {{"adapter.safetensors", Binary(step, 4096)},
          {"optimizer.safetensors", Binary(step + 1, 10000)},
          {"trainer_state.json", absl::StrCat("{\"step\": ", step, "}")}};
}

CheckpointStore OpenOrDie(const std::string& root, int keep = 2) {
  absl::StatusOr<CheckpointStore> store = CheckpointStore::Open(root, CheckpointOptions{keep});
  ST_CHECK(store.ok()) << store.status();
  return *std::move(store);
}

LoadedCheckpoint LoadOrDie(const CheckpointStore& store) {
  absl::StatusOr<std::optional<LoadedCheckpoint>> loaded = store.LoadLatest();
  ST_CHECK(loaded.ok()) << loaded.status();
  ST_CHECK(loaded->has_value()) << "no checkpoint in " << store.root();
  return **std::move(loaded);
}

std::string StepDir(const CheckpointStore& store, int64_t step) {
  return absl::StrCat(store.root(), "/", StepDirName(step));
}

// A pid that belonged to a process which has exited and been reaped.
pid_t DeadPid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}

TEST(CheckpointStoreTest, RoundTripsBinaryFilesAndWritesTheLayout) {
  const std::string root = FreshRoot("roundtrip");
  CheckpointStore store = OpenOrDie(root);
  EXPECT_TRUE(fs::is_directory(root));
  absl::StatusOr<std::optional<LoadedCheckpoint>> empty = store.LoadLatest();
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_FALSE(empty->has_value());

  const int64_t before = absl::ToUnixSeconds(absl::Now());
  const auto files = FilesFor(100);
  ASSERT_TRUE(store.Save(100, files).ok());
  const LoadedCheckpoint loaded = LoadOrDie(store);
  EXPECT_EQ(loaded.step, 100);
  EXPECT_EQ(loaded.dir, root + "/step-00000100");
  EXPECT_EQ(loaded.files, files);
  EXPECT_TRUE(loaded.warnings.empty()) << absl::StrJoin(loaded.warnings, "\n");

  EXPECT_EQ(Entries(root), (std::vector<std::string>{"latest", "step-00000100"}));
  EXPECT_EQ(ReadAll(root + "/latest"), "step-00000100\n");
  EXPECT_EQ(Entries(root + "/step-00000100"),
            (std::vector<std::string>{"adapter.safetensors", "manifest.json",
                                      "optimizer.safetensors", "trainer_state.json"}));
  const nlohmann::json manifest =
      nlohmann::json::parse(ReadAll(root + "/step-00000100/manifest.json"));
  EXPECT_EQ(manifest["format"], "sigmatune-checkpoint/1");
  EXPECT_EQ(manifest["step"], 100);
  EXPECT_GE(manifest["created"].get<int64_t>(), before);
  EXPECT_LE(manifest["created"].get<int64_t>(), absl::ToUnixSeconds(absl::Now()));
  ASSERT_EQ(manifest["files"].size(), 3u);
  for (const auto& entry : manifest["files"]) {
    const std::string name = entry["name"];
    ASSERT_EQ(files.count(name), 1u) << name;
    EXPECT_EQ(entry["size"].get<uint64_t>(), files.at(name).size());
    EXPECT_EQ(entry["checksum"], Fingerprint().Update(files.at(name)).Hex());
  }
  EXPECT_EQ(store.ListSteps(), std::vector<int64_t>{100});
}

TEST(CheckpointStoreTest, OpenTrimsTrailingSlashAndReopens) {
  const std::string root = FreshRoot("reopen");
  ASSERT_TRUE(OpenOrDie(root + "/").Save(7, FilesFor(7)).ok());
  CheckpointStore again = OpenOrDie(root);
  EXPECT_EQ(again.root(), root);
  EXPECT_EQ(LoadOrDie(again).files, FilesFor(7));
}

TEST(CheckpointStoreTest, LatestMovesToEachNewCheckpoint) {
  CheckpointStore store = OpenOrDie(FreshRoot("latest_moves"), /*keep=*/5);
  for (const int64_t step : {0, 100, 200}) {
    ASSERT_TRUE(store.Save(step, FilesFor(step)).ok());
    EXPECT_EQ(ReadAll(store.root() + "/latest"), StepDirName(step) + "\n");
    const LoadedCheckpoint loaded = LoadOrDie(store);
    EXPECT_EQ(loaded.step, step);
    EXPECT_EQ(loaded.files, FilesFor(step));
  }
  EXPECT_EQ(store.ListSteps(), (std::vector<int64_t>{0, 100, 200}));
}

TEST(CheckpointStoreTest, PruningKeepsTheNewestKeep) {
  CheckpointStore two = OpenOrDie(FreshRoot("prune2"), /*keep=*/2);
  for (int64_t step = 1; step <= 5; ++step) ASSERT_TRUE(two.Save(step * 10, FilesFor(step)).ok());
  EXPECT_EQ(two.ListSteps(), (std::vector<int64_t>{40, 50}));
  EXPECT_EQ(CountTmpDirs(two.root()), 0);

  CheckpointStore three = OpenOrDie(FreshRoot("prune3"), /*keep=*/3);
  for (int64_t step = 1; step <= 5; ++step) ASSERT_TRUE(three.Save(step, FilesFor(step)).ok());
  EXPECT_EQ(three.ListSteps(), (std::vector<int64_t>{3, 4, 5}));
  EXPECT_EQ(LoadOrDie(three).step, 5);
}

TEST(CheckpointStoreTest, PruningNeverDeletesTheCheckpointLatestNames) {
  // Resuming from an older step and saving it again: it is below the `keep` newest, yet kept.
  CheckpointStore store = OpenOrDie(FreshRoot("prune_latest"), /*keep=*/2);
  for (const int64_t step : {10, 20, 30}) ASSERT_TRUE(store.Save(step, FilesFor(step)).ok());
  ASSERT_TRUE(store.Save(5, FilesFor(5)).ok());
  EXPECT_EQ(store.ListSteps(), (std::vector<int64_t>{5, 20, 30}));
  const LoadedCheckpoint loaded = LoadOrDie(store);
  EXPECT_EQ(loaded.step, 5);
  EXPECT_TRUE(loaded.warnings.empty());
}

TEST(CheckpointStoreTest, FlippedByteFallsBackWithAWarningNamingTheFile) {
  CheckpointStore store = OpenOrDie(FreshRoot("flipped"));
  ASSERT_TRUE(store.Save(100, FilesFor(100)).ok());
  ASSERT_TRUE(store.Save(200, FilesFor(200)).ok());
  const std::string path = StepDir(store, 200) + "/adapter.safetensors";
  std::string bytes = ReadAll(path);
  bytes[1234] ^= 0x01;
  WriteAll(path, bytes);

  const LoadedCheckpoint loaded = LoadOrDie(store);
  EXPECT_EQ(loaded.step, 100);
  EXPECT_EQ(loaded.files, FilesFor(100));
  ASSERT_EQ(loaded.warnings.size(), 1u);
  EXPECT_EQ(loaded.warnings[0],
            "checkpoint step-00000200 is corrupt (adapter.safetensors: checksum mismatch); using "
            "step-00000100");
}

TEST(CheckpointStoreTest, MissingOrResizedFileFallsBack) {
  CheckpointStore store = OpenOrDie(FreshRoot("missing"), /*keep=*/3);
  for (const int64_t step : {100, 200, 300}) ASSERT_TRUE(store.Save(step, FilesFor(step)).ok());
  fs::remove(StepDir(store, 300) + "/optimizer.safetensors");
  WriteAll(StepDir(store, 200) + "/trainer_state.json", "{\"step\": 200, \"extra\": 1}");

  const LoadedCheckpoint loaded = LoadOrDie(store);
  EXPECT_EQ(loaded.step, 100);
  ASSERT_EQ(loaded.warnings.size(), 2u);
  EXPECT_THAT(loaded.warnings[0],
              HasSubstr("step-00000300 is corrupt (optimizer.safetensors: missing)"));
  EXPECT_THAT(loaded.warnings[1], HasSubstr("step-00000200 is corrupt (trainer_state.json: "));
  EXPECT_THAT(loaded.warnings[1], HasSubstr("the manifest says"));
  EXPECT_THAT(loaded.warnings[1], HasSubstr("using step-00000100"));
}

TEST(CheckpointStoreTest, TruncatedOrMissingManifestFallsBack) {
  CheckpointStore store = OpenOrDie(FreshRoot("manifest"), /*keep=*/3);
  for (const int64_t step : {100, 200, 300}) ASSERT_TRUE(store.Save(step, FilesFor(step)).ok());
  const std::string manifest = StepDir(store, 300) + "/manifest.json";
  const std::string text = ReadAll(manifest);
  WriteAll(manifest, text.substr(0, text.size() / 2));
  fs::remove(StepDir(store, 200) + "/manifest.json");

  const LoadedCheckpoint loaded = LoadOrDie(store);
  EXPECT_EQ(loaded.step, 100);
  ASSERT_EQ(loaded.warnings.size(), 2u);
  EXPECT_THAT(loaded.warnings[0], HasSubstr("step-00000300 is corrupt (manifest.json: not a JSON"));
  EXPECT_THAT(loaded.warnings[1], HasSubstr("step-00000200 is corrupt (manifest.json: missing"));
}

TEST(CheckpointStoreTest, ManifestOfAnotherStepIsRejected) {
  CheckpointStore store = OpenOrDie(FreshRoot("wrong_step"));
  ASSERT_TRUE(store.Save(100, FilesFor(100)).ok());
  fs::copy(StepDir(store, 100), StepDir(store, 300));  // a directory copied by hand
  WriteAll(store.root() + "/latest", "step-00000300\n");
  const LoadedCheckpoint loaded = LoadOrDie(store);
  EXPECT_EQ(loaded.step, 100);
  ASSERT_EQ(loaded.warnings.size(), 1u);
  EXPECT_THAT(loaded.warnings[0], HasSubstr("step-00000300 is corrupt (manifest.json: \"step\""));
}

TEST(CheckpointStoreTest, BadLatestFallsBackToTheNewestThatVerifies) {
  CheckpointStore store = OpenOrDie(FreshRoot("bad_latest"));
  ASSERT_TRUE(store.Save(100, FilesFor(100)).ok());
  ASSERT_TRUE(store.Save(200, FilesFor(200)).ok());
  const std::string latest = store.root() + "/latest";

  WriteAll(latest, "step-00000300\n");
  LoadedCheckpoint loaded = LoadOrDie(store);
  EXPECT_EQ(loaded.step, 200);
  ASSERT_EQ(loaded.warnings.size(), 1u);
  EXPECT_EQ(loaded.warnings[0],
            latest + " names step-00000300, which does not exist; using step-00000200");

  WriteAll(latest, "../../etc\n");
  loaded = LoadOrDie(store);
  EXPECT_EQ(loaded.step, 200);
  ASSERT_EQ(loaded.warnings.size(), 1u);
  EXPECT_THAT(loaded.warnings[0], HasSubstr("not a checkpoint name"));

  fs::remove(latest);
  loaded = LoadOrDie(store);
  EXPECT_EQ(loaded.step, 200);
  ASSERT_EQ(loaded.warnings.size(), 1u);
  EXPECT_EQ(loaded.warnings[0], latest + " missing; using step-00000200");

  // `latest` naming an older, good checkpoint wins over a newer one.
  WriteAll(latest, "step-00000100\n");
  loaded = LoadOrDie(store);
  EXPECT_EQ(loaded.step, 100);
  EXPECT_TRUE(loaded.warnings.empty());
}

TEST(CheckpointStoreTest, AllCorruptIsDataLossListingEachProblem) {
  CheckpointStore store = OpenOrDie(FreshRoot("all_corrupt"));
  ASSERT_TRUE(store.Save(100, FilesFor(100)).ok());
  ASSERT_TRUE(store.Save(200, FilesFor(200)).ok());
  fs::remove(StepDir(store, 100) + "/adapter.safetensors");
  WriteAll(StepDir(store, 200) + "/manifest.json", "{");

  const absl::StatusOr<std::optional<LoadedCheckpoint>> loaded = store.LoadLatest();
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss);
  const std::string message(loaded.status().message());
  EXPECT_THAT(message, HasSubstr(store.root()));
  EXPECT_THAT(message, HasSubstr("step-00000200 is corrupt (manifest.json"));
  EXPECT_THAT(message, HasSubstr("step-00000100 is corrupt (adapter.safetensors: missing)"));
}

TEST(CheckpointStoreTest, VanishedRootIsAnErrorNotAnEmptyStore) {
  const std::string root = FreshRoot("vanished");
  CheckpointStore store = OpenOrDie(root);
  fs::remove_all(root);
  const absl::StatusOr<std::optional<LoadedCheckpoint>> loaded = store.LoadLatest();
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr(root));
  EXPECT_TRUE(store.ListSteps().empty());
}

TEST(CheckpointStoreTest, LeftoverTmpDirIsIgnoredThenCleaned) {
  CheckpointStore store = OpenOrDie(FreshRoot("leftover"));
  ASSERT_TRUE(store.Save(100, FilesFor(100)).ok());
  // A crashed writer's partial checkpoint: a file, no manifest.
  const std::string stale = absl::StrCat(store.root(), "/step-00000200.tmp-", DeadPid());
  fs::create_directories(stale);
  WriteAll(stale + "/adapter.safetensors", "partial");
  // A pruned directory whose deletion was cut short, and a crashed write of `latest`.
  const std::string half_pruned = store.root() + "/step-00000050.tmp-x-prune";
  fs::create_directories(half_pruned);
  WriteAll(store.root() + "/.latest.tmp.AbC123", "step-000");
  // Another live process's checkpoint in progress (the parent of this test) is left alone.
  const std::string live = absl::StrCat(store.root(), "/step-00000300.tmp-", ::getppid());
  fs::create_directories(live);

  EXPECT_EQ(store.ListSteps(), std::vector<int64_t>{100});
  LoadedCheckpoint loaded = LoadOrDie(store);
  EXPECT_EQ(loaded.step, 100);
  EXPECT_TRUE(loaded.warnings.empty());
  // Opening (as a reader would) deletes nothing.
  OpenOrDie(store.root());
  EXPECT_TRUE(fs::exists(stale));

  ASSERT_TRUE(store.Save(200, FilesFor(200)).ok());
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_FALSE(fs::exists(half_pruned));
  EXPECT_FALSE(fs::exists(store.root() + "/.latest.tmp.AbC123"));
  EXPECT_TRUE(fs::exists(live));
  loaded = LoadOrDie(store);
  EXPECT_EQ(loaded.step, 200);
  EXPECT_EQ(loaded.files, FilesFor(200));
}

TEST(CheckpointStoreTest, RewritingTheSameStepReplacesIt) {
  CheckpointStore store = OpenOrDie(FreshRoot("rewrite"));
  ASSERT_TRUE(store.Save(100, FilesFor(100)).ok());
  ASSERT_TRUE(store.Save(200, FilesFor(200)).ok());
  // Resumed from 100 and reached 200 again, with fewer files this time.
  const std::map<std::string, std::string> again = {{"adapter.safetensors", Binary(999, 777)}};
  ASSERT_TRUE(store.Save(200, again).ok());
  LoadedCheckpoint loaded = LoadOrDie(store);
  EXPECT_EQ(loaded.step, 200);
  EXPECT_EQ(loaded.files, again);
  EXPECT_TRUE(loaded.warnings.empty());
  EXPECT_EQ(Entries(StepDir(store, 200)),
            (std::vector<std::string>{"adapter.safetensors", "manifest.json"}));
  EXPECT_EQ(store.ListSteps(), (std::vector<int64_t>{100, 200}));
  EXPECT_EQ(CountTmpDirs(store.root()), 0);

  // Rewriting the step `latest` names.
  ASSERT_TRUE(store.Save(200, FilesFor(200)).ok());
  loaded = LoadOrDie(store);
  EXPECT_EQ(loaded.files, FilesFor(200));
  EXPECT_EQ(CountTmpDirs(store.root()), 0);
}

TEST(CheckpointStoreTest, BadArgumentsWriteNothing) {
  CheckpointStore store = OpenOrDie(FreshRoot("bad_args"));
  const std::vector<std::string> bad_names = {
      "",          "manifest.json",      "a/b", "..", ".", ".hidden", "sp ace",
      "../escape", std::string(256, 'a')};
  for (const std::string& name : bad_names) {
    const absl::Status st = store.Save(1, {{name, "x"}});
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << "\"" << name << "\": " << st;
  }
  EXPECT_EQ(store.Save(-1, FilesFor(1)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Entries(store.root()).empty());
  EXPECT_EQ(CheckpointStore::Open(FreshRoot("keep0"), CheckpointOptions{0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckpointStore::Open("", CheckpointOptions{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CheckpointStoreTest, AFileWhereTheRootShouldBeIsAClearError) {
  const std::string root = FreshRoot("root_is_file");
  fs::create_directories(fs::path(root).parent_path());
  WriteAll(root, "not a directory");
  absl::StatusOr<CheckpointStore> store = CheckpointStore::Open(root, CheckpointOptions{});
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(store.status().message()), HasSubstr(root));
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("not a directory"));

  // A root below a regular file.
  store = CheckpointStore::Open(root + "/sub", CheckpointOptions{});
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(store.status().message()), HasSubstr(root + "/sub"));
  EXPECT_EQ(ReadAll(root), "not a directory");
}

// Exit codes of the disk-full child.
enum class ChildResult {
  kGotTheRightError = 0,
  kSaveSucceeded = 10,
  kVagueError = 11,
  kOpenFailed = 12,
  kSetupFailed = 13
};

TEST(CheckpointStoreTest, DiskFullLeavesThePreviousCheckpointIntact) {
  CheckpointStore store = OpenOrDie(FreshRoot("disk_full"));
  ASSERT_TRUE(store.Save(100, FilesFor(100)).ok());
  const std::string latest_before = ReadAll(store.root() + "/latest");
  constexpr rlim_t kLimit = 64 * 1024;

  std::fflush(nullptr);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Writes past kLimit fail with EFBIG instead of killing the process.
    const struct rlimit limit = {kLimit, kLimit};
    if (::signal(SIGXFSZ, SIG_IGN) == SIG_ERR || ::setrlimit(RLIMIT_FSIZE, &limit) != 0) {
      ::_exit(static_cast<int>(ChildResult::kSetupFailed));
    }
    absl::StatusOr<CheckpointStore> child =
        CheckpointStore::Open(store.root(), CheckpointOptions{});
    if (!child.ok()) ::_exit(static_cast<int>(ChildResult::kOpenFailed));
    // adapter.safetensors fits; optimizer.safetensors (sorted after it) does not.
    const absl::Status st = child->Save(200, {{"adapter.safetensors", Binary(200, 1000)},
                                              {"optimizer.safetensors", Binary(200, 1 << 20)},
                                              {"trainer_state.json", "{}"}});
    if (st.ok()) ::_exit(static_cast<int>(ChildResult::kSaveSucceeded));
    std::fprintf(stderr, "child's Save error: %s\n", st.ToString().c_str());
    const std::string message(st.message());
    const bool names_all = absl::StrContains(message, "optimizer.safetensors") &&
                           absl::StrContains(message, std::strerror(EFBIG)) &&
                           absl::StrContains(message, "previous checkpoint (step 100") &&
                           absl::StrContains(message, "intact");
    ::_exit(
        static_cast<int>(names_all ? ChildResult::kGotTheRightError : ChildResult::kVagueError));
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child crashed (signal " << WTERMSIG(status) << ")";
  ASSERT_EQ(WEXITSTATUS(status), static_cast<int>(ChildResult::kGotTheRightError))
      << "10: Save succeeded past the size limit; 11: its error did not name the file, EFBIG and "
         "the intact step 100; 12/13: setup failed";

  EXPECT_EQ(ReadAll(store.root() + "/latest"), latest_before);
  EXPECT_EQ(CountTmpDirs(store.root()), 0) << absl::StrJoin(Entries(store.root()), " ");
  EXPECT_EQ(store.ListSteps(), std::vector<int64_t>{100});
  const LoadedCheckpoint loaded = LoadOrDie(store);
  EXPECT_EQ(loaded.step, 100);
  EXPECT_EQ(loaded.files, FilesFor(100));
  EXPECT_TRUE(loaded.warnings.empty());

  // With room again, the same step saves.
  ASSERT_TRUE(store.Save(200, FilesFor(200)).ok());
  EXPECT_EQ(LoadOrDie(store).step, 200);
}

// The files of one checkpoint as three ranks write them: the leader the adapter, the state and its
// optimizer shard, the others their shards.
std::vector<std::map<std::string, std::string>> RankFilesFor(int64_t step) {
  std::vector<std::map<std::string, std::string>> ranks(3);
  ranks[0] = {{"adapter.safetensors", Binary(step, 4096)},
              {"trainer_state.json", absl::StrCat("{\"step\": ", step, "}")},
              {"optimizer-0-of-3.safetensors", Binary(step + 1, 3000)}};
  ranks[1] = {{"optimizer-1-of-3.safetensors", Binary(step + 2, 3000)}};
  ranks[2] = {{"optimizer-2-of-3.safetensors", Binary(step + 3, 2999)}};
  return ranks;
}

std::map<std::string, std::string> AllFiles(const std::vector<std::map<std::string, std::string>>& ranks) {
  std::map<std::string, std::string> all;
  for (const auto& files : ranks) all.insert(files.begin(), files.end());
  return all;
}

// Every rank's files written into `staged` (each rank on its own thread); the entries in rank order.
std::vector<FileEntry> WriteRanks(const std::string& staged,
                                  const std::vector<std::map<std::string, std::string>>& ranks) {
  std::vector<std::vector<FileEntry>> per_rank(ranks.size());
  std::vector<std::thread> threads;
  for (size_t r = 0; r < ranks.size(); ++r) {
    threads.emplace_back([&, r] {
      for (const auto& [name, bytes] : ranks[r]) {
        absl::StatusOr<FileEntry> entry = CheckpointStore::WriteStagedFile(staged, name, bytes);
        ST_CHECK(entry.ok()) << entry.status();
        per_rank[r].push_back(*entry);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  std::vector<FileEntry> entries;
  for (const auto& e : per_rank) entries.insert(entries.end(), e.begin(), e.end());
  return entries;
}

TEST(CheckpointStoreTest, StagedCheckpointOfThreeRanksLoads) {
  const std::string root = FreshRoot("staged");
  CheckpointStore store = OpenOrDie(root, /*keep=*/2);
  for (const int64_t step : {100, 200, 300}) {
    absl::StatusOr<std::string> staged = store.BeginStaged(step);
    ASSERT_TRUE(staged.ok()) << staged.status();
    EXPECT_TRUE(absl::StartsWith(*staged, absl::StrCat(root, "/", StepDirName(step), ".tmp-"))) << *staged;
    EXPECT_TRUE(fs::is_directory(*staged));
    const auto ranks = RankFilesFor(step);
    const std::vector<FileEntry> entries = WriteRanks(*staged, ranks);
    EXPECT_EQ(entries[0].size, 4096u);
    EXPECT_EQ(entries[0].checksum, Fingerprint().Update(ranks[0].at("adapter.safetensors")).Hex());
    const absl::Status committed = store.CommitStaged(step, *staged, entries);
    ASSERT_TRUE(committed.ok()) << committed;
    EXPECT_FALSE(fs::exists(*staged));
    const LoadedCheckpoint loaded = LoadOrDie(store);
    EXPECT_EQ(loaded.step, step);
    EXPECT_EQ(loaded.files, AllFiles(ranks));
    EXPECT_TRUE(loaded.warnings.empty()) << absl::StrJoin(loaded.warnings, "\n");
    EXPECT_EQ(ReadAll(root + "/latest"), StepDirName(step) + "\n");
  }
  // Pruned as Save prunes; no temporary directory left.
  EXPECT_EQ(store.ListSteps(), (std::vector<int64_t>{200, 300}));
  EXPECT_EQ(CountTmpDirs(root), 0);
  const nlohmann::json manifest = nlohmann::json::parse(ReadAll(root + "/step-00000300/manifest.json"));
  EXPECT_EQ(manifest["format"], "sigmatune-checkpoint/1");
  EXPECT_EQ(manifest["step"], 300);
  EXPECT_EQ(manifest["files"].size(), 5u);
  // Rewriting a step through the staged path replaces it.
  absl::StatusOr<std::string> again = store.BeginStaged(300);
  ASSERT_TRUE(again.ok());
  auto ranks = RankFilesFor(301);
  ASSERT_TRUE(store.CommitStaged(300, *again, WriteRanks(*again, ranks)).ok());
  EXPECT_EQ(LoadOrDie(store).files, AllFiles(ranks));
  EXPECT_EQ(CountTmpDirs(root), 0);
}

TEST(CheckpointStoreTest, BadStagedFilesFailTheCommitAndKeepLatest) {
  struct Case {
    std::string what;
    std::function<void(const std::string& staged, std::vector<FileEntry>* entries)> damage;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"a rank's file is missing",
       [](const std::string& staged, std::vector<FileEntry>*) {
         fs::remove(staged + "/optimizer-1-of-3.safetensors");
       },
       {"optimizer-1-of-3.safetensors: missing"}},
      {"a file was corrupted after its rank wrote it",
       [](const std::string& staged, std::vector<FileEntry>*) {
         std::string bytes = ReadAll(staged + "/optimizer-2-of-3.safetensors");
         bytes[1000] ^= 0x40;
         WriteAll(staged + "/optimizer-2-of-3.safetensors", bytes);
       },
       {"optimizer-2-of-3.safetensors: checksum mismatch"}},
      {"a file was truncated",
       [](const std::string& staged, std::vector<FileEntry>*) {
         fs::resize_file(staged + "/adapter.safetensors", 100);
       },
       {"adapter.safetensors: 100 bytes", "4096"}},
      {"a rank's entry was lost",
       [](const std::string&, std::vector<FileEntry>* entries) { entries->pop_back(); },
       {"optimizer-2-of-3.safetensors", "reported by no rank"}},
      {"an entry names a file nobody wrote",
       [](const std::string&, std::vector<FileEntry>* entries) {
         entries->push_back({"optimizer-3-of-3.safetensors", 10, "00"});
       },
       {"optimizer-3-of-3.safetensors: missing"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    CheckpointStore store = OpenOrDie(FreshRoot("staged_bad"));
    ASSERT_TRUE(store.Save(100, FilesFor(100)).ok());
    absl::StatusOr<std::string> staged = store.BeginStaged(200);
    ASSERT_TRUE(staged.ok()) << staged.status();
    std::vector<FileEntry> entries = WriteRanks(*staged, RankFilesFor(200));
    c.damage(*staged, &entries);
    const absl::Status committed = store.CommitStaged(200, *staged, entries);
    EXPECT_EQ(committed.code(), absl::StatusCode::kDataLoss) << committed;
    for (const std::string& part : c.parts) EXPECT_THAT(std::string(committed.message()), HasSubstr(part));
    EXPECT_THAT(std::string(committed.message()), HasSubstr("previous checkpoint (step 100"));
    EXPECT_EQ(ReadAll(store.root() + "/latest"), "step-00000100\n");
    EXPECT_EQ(store.ListSteps(), std::vector<int64_t>{100});
    EXPECT_EQ(CountTmpDirs(store.root()), 0);
    const LoadedCheckpoint loaded = LoadOrDie(store);
    EXPECT_EQ(loaded.step, 100);
    EXPECT_EQ(loaded.files, FilesFor(100));
  }
}

TEST(CheckpointStoreTest, StagedArgumentsAreCheckedAndAbortCleansUp) {
  const std::string root = FreshRoot("staged_args");
  CheckpointStore store = OpenOrDie(root);
  EXPECT_EQ(store.BeginStaged(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckpointStore::WriteStagedFile(root, "manifest.json", "x").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckpointStore::WriteStagedFile(root, "../escape", "x").status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::string> staged = store.BeginStaged(7);
  ASSERT_TRUE(staged.ok());
  const std::vector<FileEntry> entries = WriteRanks(*staged, RankFilesFor(7));
  // Another step's directory, or a directory outside the root: refused, nothing removed.
  EXPECT_EQ(store.CommitStaged(8, *staged, entries).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.CommitStaged(7, root + "/elsewhere", entries).code(), absl::StatusCode::kInvalidArgument);
  std::vector<FileEntry> twice = entries;
  twice.push_back(entries[0]);
  EXPECT_THAT(std::string(store.CommitStaged(7, *staged, twice).message()), HasSubstr("two ranks"));
  EXPECT_TRUE(fs::is_directory(*staged));
  // A rank failed: the leader aborts; nothing is published.
  store.AbortStaged(root + "/not-a-staged-dir");  // ignored
  store.AbortStaged(*staged);
  EXPECT_FALSE(fs::exists(*staged));
  EXPECT_TRUE(store.ListSteps().empty());
  absl::StatusOr<std::optional<LoadedCheckpoint>> none = store.LoadLatest();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  // A write into a directory that is gone names the file.
  EXPECT_THAT(std::string(CheckpointStore::WriteStagedFile(*staged, "adapter.safetensors", "x").status().message()),
              HasSubstr("adapter.safetensors"));
}

}  // namespace
}  // namespace sigmatune::checkpoint
