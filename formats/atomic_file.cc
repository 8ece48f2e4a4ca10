#include "formats/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"

namespace sigmatune::formats {
namespace {

std::string ErrnoText(int err) { return std::strerror(err); }

// "dir" and "name" of a path; "." for a bare file name.
std::pair<std::string, std::string> SplitPath(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return {".", path};
  if (slash == 0) return {"/", path.substr(1)};
  return {path.substr(0, slash), path.substr(slash + 1)};
}

absl::Status FsyncDirectory(const std::string& dir, const std::string& path) {
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    return absl::InternalError(absl::StrCat("writing ", path, ": cannot open directory ", dir,
                                            " to fsync it: ", ErrnoText(errno)));
  }
  const int rc = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  if (rc != 0) {
    return absl::InternalError(
        absl::StrCat("writing ", path, ": fsync of directory ", dir, " failed: ", ErrnoText(err)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<AtomicFileWriter> AtomicFileWriter::Open(const std::string& path) {
  if (path.empty() || path.back() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("atomic write: '", path, "' is not a file path; pass a path that names a file"));
  }
  const auto [dir, name] = SplitPath(path);
  std::string templ = absl::StrCat(dir, "/.", name, ".tmp.XXXXXX");
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  const int fd = ::mkostemp(buf.data(), O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return absl::FailedPreconditionError(
        absl::StrCat("writing ", path, ": cannot create a temporary file in directory ", dir, ": ",
                     ErrnoText(err), "; check that the directory exists and is writable"));
  }
  // mkstemp makes the file 0600; a finished file is an ordinary 0644 one.
  ::fchmod(fd, 0644);
  return AtomicFileWriter(path, std::string(buf.data()), fd);
}

AtomicFileWriter::AtomicFileWriter(std::string path, std::string temp_path, int fd)
    : path_(std::move(path)), temp_path_(std::move(temp_path)), fd_(fd) {}

AtomicFileWriter::AtomicFileWriter(AtomicFileWriter&& other) noexcept
    : path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      fd_(std::exchange(other.fd_, -1)),
      size_(other.size_),
      error_(std::move(other.error_)) {
  other.temp_path_.clear();
}

AtomicFileWriter& AtomicFileWriter::operator=(AtomicFileWriter&& other) noexcept {
  if (this != &other) {
    Abandon();
    path_ = std::move(other.path_);
    temp_path_ = std::move(other.temp_path_);
    other.temp_path_.clear();
    fd_ = std::exchange(other.fd_, -1);
    size_ = other.size_;
    error_ = std::move(other.error_);
  }
  return *this;
}

AtomicFileWriter::~AtomicFileWriter() { Abandon(); }

void AtomicFileWriter::Abandon() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!temp_path_.empty()) {
    ::unlink(temp_path_.c_str());
    temp_path_.clear();
  }
}

absl::Status AtomicFileWriter::Append(absl::string_view bytes) {
  ST_RETURN_IF_ERROR(error_);
  if (fd_ < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("writing ", path_, ": Append after Commit or on a moved-from writer"));
  }
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    const ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      error_ = absl::InternalError(absl::StrCat("writing ", path_, " (temporary file ", temp_path_,
                                                ") failed after ", size_, " bytes: ",
                                                ErrnoText(errno), "; check free space"));
      Abandon();
      return error_;
    }
    p += n;
    left -= static_cast<size_t>(n);
    size_ += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Commit() {
  ST_RETURN_IF_ERROR(error_);
  if (fd_ < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("writing ", path_, ": Commit called twice or on a moved-from writer"));
  }
  if (::fsync(fd_) != 0) {
    error_ = absl::InternalError(
        absl::StrCat("writing ", path_, ": fsync of ", temp_path_, " failed: ", ErrnoText(errno)));
    Abandon();
    return error_;
  }
  if (::close(fd_) != 0) {
    fd_ = -1;
    error_ = absl::InternalError(
        absl::StrCat("writing ", path_, ": close of ", temp_path_, " failed: ", ErrnoText(errno)));
    Abandon();
    return error_;
  }
  fd_ = -1;
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    error_ = absl::InternalError(absl::StrCat("writing ", path_, ": rename from ", temp_path_,
                                              " failed: ", ErrnoText(errno),
                                              "; the previous file (if any) is unchanged"));
    Abandon();
    return error_;
  }
  temp_path_.clear();  // now the real file; never unlink it
  return FsyncDirectory(SplitPath(path_).first, path_);
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents) {
  ST_ASSIGN_OR_RETURN(AtomicFileWriter writer, AtomicFileWriter::Open(path));
  ST_RETURN_IF_ERROR(writer.Append(contents));
  return writer.Commit();
}

absl::Status CreateDirectoryDurably(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("output directory path is empty; pass a directory");
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(dir, ec)) return absl::OkStatus();
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) {
    return absl::FailedPreconditionError(absl::StrCat(dir, ": cannot create the directory: ",
                                                      ec ? ec.message() : "a file of that name exists",
                                                      "; choose a writable output path"));
  }
  std::string parent = fs::path(dir).lexically_normal().parent_path().string();
  if (parent.empty()) parent = ".";
  const int fd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    if (err == EACCES) return absl::PermissionDeniedError(absl::StrCat(path, ": ", std::strerror(err)));
    return absl::InternalError(absl::StrCat("cannot read ", path, ": ", std::strerror(err)));
  }
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat("reading ", path, " failed"));
  return out.str();
}

bool RegularFileExists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec);
}

}  // namespace sigmatune::formats
