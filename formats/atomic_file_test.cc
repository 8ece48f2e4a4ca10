#include "formats/atomic_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "gtest/gtest.h"

namespace sigmatune::formats {
namespace {

namespace fs = std::filesystem;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A fresh directory under the test's temporary directory.
std::string MakeDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const fs::path dir = fs::path(tmp ? tmp : "/tmp") / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

// Names in `dir` other than `keep`.
int CountOthers(const std::string& dir, const std::string& keep) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += e.path().filename() != keep;
  return n;
}

TEST(AtomicFileTest, WritesContentAndLeavesNoTemp) {
  const std::string dir = MakeDir("write");
  const std::string path = dir + "/out.bin";
  const std::string contents("hello\0world", 11);
  ASSERT_TRUE(WriteFileAtomically(path, contents).ok());
  EXPECT_EQ(ReadAll(path), contents);
  EXPECT_EQ(CountOthers(dir, "out.bin"), 0);
  // Replacing an existing file.
  ASSERT_TRUE(WriteFileAtomically(path, "second").ok());
  EXPECT_EQ(ReadAll(path), "second");
  EXPECT_EQ(CountOthers(dir, "out.bin"), 0);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
}

TEST(AtomicFileTest, StreamingWriterCommits) {
  const std::string dir = MakeDir("stream");
  const std::string path = dir + "/big.bin";
  absl::StatusOr<AtomicFileWriter> w = AtomicFileWriter::Open(path);
  ASSERT_TRUE(w.ok()) << w.status();
  std::string expected;
  for (int i = 0; i < 100; ++i) {
    const std::string chunk(1000 + i, static_cast<char>('a' + i % 26));
    ASSERT_TRUE(w->Append(chunk).ok());
    expected += chunk;
  }
  EXPECT_EQ(w->size(), expected.size());
  EXPECT_FALSE(fs::exists(path));  // nothing visible before Commit
  ASSERT_TRUE(w->Commit().ok());
  EXPECT_EQ(ReadAll(path), expected);
  EXPECT_EQ(CountOthers(dir, "big.bin"), 0);
  // A second Commit is an error, not a crash.
  EXPECT_FALSE(w->Commit().ok());
}

TEST(AtomicFileTest, AbandonedWriterKeepsPreviousFileAndRemovesTemp) {
  const std::string dir = MakeDir("abandon");
  const std::string path = dir + "/keep.txt";
  ASSERT_TRUE(WriteFileAtomically(path, "old").ok());
  {
    absl::StatusOr<AtomicFileWriter> w = AtomicFileWriter::Open(path);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->Append("new contents").ok());
    EXPECT_TRUE(fs::exists(w->temp_path()));
    // Moving keeps one owner of the temporary file.
    AtomicFileWriter moved = *std::move(w);
    EXPECT_TRUE(fs::exists(moved.temp_path()));
  }
  EXPECT_EQ(ReadAll(path), "old");
  EXPECT_EQ(CountOthers(dir, "keep.txt"), 0);
}

TEST(AtomicFileTest, MissingDirectoryNamesThePath) {
  const std::string dir = MakeDir("missing");
  const std::string path = dir + "/no/such/dir/file.txt";
  const absl::Status s = WriteFileAtomically(path, "x");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(path), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("No such file or directory"), absl::string_view::npos) << s;
}

TEST(AtomicFileTest, FailedRenameKeepsTargetAndRemovesTemp) {
  // The target is a non-empty directory, so the final rename fails after the data was written.
  const std::string dir = MakeDir("rename");
  const std::string path = dir + "/target";
  fs::create_directories(path);
  { std::ofstream(path + "/inside.txt") << "previous"; }
  const absl::Status s = WriteFileAtomically(path, "new");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(path), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("rename"), absl::string_view::npos) << s;
  EXPECT_EQ(ReadAll(path + "/inside.txt"), "previous");
  EXPECT_EQ(CountOthers(dir, "target"), 0);  // no temporary file left behind
}

TEST(AtomicFileTest, UnwritableDirectoryKeepsPreviousFile) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores directory permissions";
  const std::string dir = MakeDir("readonly");
  const std::string path = dir + "/f.txt";
  ASSERT_TRUE(WriteFileAtomically(path, "old").ok());
  ASSERT_EQ(::chmod(dir.c_str(), 0500), 0);
  const absl::Status s = WriteFileAtomically(path, "new");
  ::chmod(dir.c_str(), 0700);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(path), absl::string_view::npos) << s;
  EXPECT_EQ(ReadAll(path), "old");
}

TEST(AtomicFileTest, RejectsDirectoryPath) {
  EXPECT_EQ(WriteFileAtomically("/tmp/", "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteFileAtomically("", "x").code(), absl::StatusCode::kInvalidArgument);
}

TEST(CreateDirectoryDurablyTest, CreatesNestedDirectoriesIdempotently) {
  const std::string base = MakeDir("create_dir");
  const std::string nested = base + "/a/b/c";
  ASSERT_TRUE(CreateDirectoryDurably(nested).ok());
  EXPECT_TRUE(fs::is_directory(nested));
  EXPECT_TRUE(CreateDirectoryDurably(nested).ok());
  EXPECT_TRUE(CreateDirectoryDurably(nested + "/").ok());
}

TEST(CreateDirectoryDurablyTest, RefusesEmptyPathsAndFilesInTheWay) {
  EXPECT_EQ(CreateDirectoryDurably("").code(), absl::StatusCode::kInvalidArgument);
  const std::string base = MakeDir("create_dir_file");
  const std::string file = base + "/taken";
  ASSERT_TRUE(WriteFileAtomically(file, "x").ok());
  const absl::Status status = CreateDirectoryDurably(file);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(status.message()).find(file), std::string::npos) << status;
}

TEST(ReadFileToStringTest, ReadsWholeFilesAndNamesMissingOnes) {
  const std::string path = ::testing::TempDir() + "/read_file_test.bin";
  const std::string bytes("a\0b\nc", 5);
  ASSERT_TRUE(WriteFileAtomically(path, bytes).ok());
  auto read = ReadFileToString(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, bytes);
  EXPECT_TRUE(RegularFileExists(path));
  EXPECT_FALSE(RegularFileExists(::testing::TempDir()));
  const absl::Status missing = ReadFileToString(path + ".missing").status();
  EXPECT_TRUE(absl::IsNotFound(missing)) << missing;
  EXPECT_NE(missing.message().find("read_file_test.bin.missing"), absl::string_view::npos);
}

}  // namespace
}  // namespace sigmatune::formats
