#include "server/auth/auth.h"

#include <errno.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace sigmatune::server {
namespace {

constexpr absl::string_view kHashPrefix = "sha256:";
constexpr size_t kHashHexDigits = 64;

std::string Hex(const unsigned char* bytes, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(kDigits[bytes[i] >> 4]);
    out.push_back(kDigits[bytes[i] & 0xf]);
  }
  return out;
}

// realpath(3) as a string; errno is left set on failure.
bool RealPath(const std::string& path, std::string* out) {
  std::unique_ptr<char, decltype(&free)> resolved(realpath(path.c_str(), nullptr), &free);
  if (resolved == nullptr) return false;
  *out = resolved.get();
  return true;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Canonical absolute directory, or a message saying why not.
absl::StatusOr<std::string> CanonicalDirectory(absl::string_view root) {
  if (root.empty()) return absl::InvalidArgumentError("empty data root");
  std::string resolved;
  if (!RealPath(std::string(root), &resolved)) {
    const int err = errno;
    if (err == ENOENT) {
      return absl::InvalidArgumentError(absl::StrCat("data root '", root, "' does not exist"));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("data root '", root, "': ", std::strerror(err)));
  }
  if (!IsDirectory(resolved)) {
    return absl::InvalidArgumentError(absl::StrCat("data root '", root, "' is not a directory"));
  }
  return resolved;
}

bool IsInside(absl::string_view path, absl::string_view root) {
  if (root == "/") return absl::StartsWith(path, "/");
  if (!absl::StartsWith(path, root)) return false;
  return path.size() == root.size() || path[root.size()] == '/';
}

bool InsideSomeRoot(absl::string_view path, absl::Span<const std::string> roots) {
  for (const std::string& root : roots) {
    if (IsInside(path, root)) return true;
  }
  return false;
}

// The syntactic checks that need no file system. Returns "" when `path` passes.
std::string SyntaxProblem(absl::string_view path) {
  if (path.empty()) return "empty path";
  for (unsigned char c : path) {
    if (c < 0x20 || c == 0x7f) return "control characters are not allowed in paths";
  }
  if (path.find('\\') != absl::string_view::npos) return "backslashes are not allowed in paths";
  for (size_t i = 0; i + 2 < path.size(); ++i) {
    if (path[i] == '%' && absl::ascii_isxdigit(path[i + 1]) && absl::ascii_isxdigit(path[i + 2])) {
      return "percent-encoded bytes are not allowed in paths";
    }
  }
  if (path[0] == '~') return "'~' paths are not allowed; give a path relative to the data root";
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == "..") return "'..' components are not allowed in paths";
  }
  return "";
}

// `path` with empty and "." components removed ("/a//./b/" -> "/a/b"); `path` is absolute.
std::string LexicallyNormal(absl::string_view path) {
  std::string out;
  for (absl::string_view part : absl::StrSplit(path, '/', absl::SkipEmpty())) {
    if (part == ".") continue;
    absl::StrAppend(&out, "/", part);
  }
  return out.empty() ? "/" : out;
}

// Resolves `path` (already syntactically clean) to a canonical absolute path inside `roots`, or
// returns InvalidArgument with the reason (no field name).
absl::StatusOr<std::string> Resolve(absl::string_view path, absl::Span<const std::string> roots,
                                    PathUse use) {
  if (roots.empty()) return absl::InvalidArgumentError("no data roots are configured");
  if (std::string problem = SyntaxProblem(path); !problem.empty()) {
    return absl::InvalidArgumentError(problem);
  }
  const std::string candidate =
      LexicallyNormal(path[0] == '/' ? std::string(path) : absl::StrCat(roots[0], "/", path));
  const std::string quoted = absl::StrCat("'", path, "'");

  std::string resolved;
  if (use == PathUse::kInput) {
    if (!RealPath(candidate, &resolved)) {
      const int err = errno;
      if (err == ENOENT || err == ENOTDIR) {
        return absl::InvalidArgumentError(absl::StrCat(quoted, " does not exist"));
      }
      return absl::InvalidArgumentError(absl::StrCat(quoted, ": ", std::strerror(err)));
    }
  } else {
    // Walk up to the nearest existing ancestor; the missing tail is appended to its real path.
    // A missing component must not be a (dangling) symlink: creating it would follow the link.
    std::string existing = candidate;
    std::string tail;
    while (!RealPath(existing, &resolved)) {
      const int err = errno;
      if (err != ENOENT) {
        return absl::InvalidArgumentError(absl::StrCat(quoted, ": ", std::strerror(err)));
      }
      struct stat st;
      if (lstat(existing.c_str(), &st) == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(quoted, " goes through a symlink that points nowhere"));
      }
      const size_t slash = existing.rfind('/');
      tail = tail.empty() ? existing.substr(slash + 1)
                          : absl::StrCat(existing.substr(slash + 1), "/", tail);
      existing = slash == 0 ? "/" : existing.substr(0, slash);
    }
    if (!tail.empty()) {
      if (!IsDirectory(resolved)) {
        return absl::InvalidArgumentError(
            absl::StrCat(quoted, ": '", existing, "' exists and is not a directory"));
      }
      resolved = resolved == "/" ? absl::StrCat("/", tail) : absl::StrCat(resolved, "/", tail);
    }
  }
  if (!InsideSomeRoot(resolved, roots)) {
    if (InsideSomeRoot(candidate, roots)) {
      return absl::InvalidArgumentError(
          absl::StrCat(quoted, " resolves through a symlink to outside every data root"));
    }
    return absl::InvalidArgumentError(absl::StrCat(quoted, " is outside every data root"));
  }
  return resolved;
}

bool ValidTenantName(absl::string_view name) {
  if (name.empty() || !absl::ascii_isalnum(name[0])) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_isalnum(c) || c == '_' || c == '-' || c == '.';
  });
}

bool ParseRole(absl::string_view text, Role* role) {
  if (text == "user") {
    *role = Role::kUser;
  } else if (text == "worker") {
    *role = Role::kWorker;
  } else {
    return false;
  }
  return true;
}

void AddUnique(std::vector<Role>* roles, Role role) {
  if (std::find(roles->begin(), roles->end(), role) == roles->end()) roles->push_back(role);
}

void AddUnique(std::vector<std::string>* roots, const std::string& root) {
  if (std::find(roots->begin(), roots->end(), root) == roots->end()) roots->push_back(root);
}

// Constant-time equality of two hash strings (always the same length when well-formed).
bool SameHash(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

bool Tenant::Has(Role role) const {
  return std::find(roles.begin(), roles.end(), role) != roles.end();
}

std::string HashToken(absl::string_view token) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), digest);
  return absl::StrCat(kHashPrefix, Hex(digest, sizeof(digest)));
}

absl::StatusOr<std::string> NewToken() {
  unsigned char bytes[32];
  size_t filled = 0;
  while (filled < sizeof(bytes)) {
    const ssize_t n = getrandom(bytes + filled, sizeof(bytes) - filled, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("getrandom: ", std::strerror(errno)));
    }
    filled += static_cast<size_t>(n);
  }
  return Hex(bytes, sizeof(bytes));
}

TenantRegistry TenantRegistry::Open() { return TenantRegistry(); }

absl::StatusOr<TenantRegistry> TenantRegistry::LoadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot read tenants file '", path, "': ", std::strerror(errno)));
  }
  TenantRegistry registry;
  registry.enabled_ = true;
  std::vector<std::string> problems;
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    const std::string where = absl::StrCat(path, ":", line_no, ": ");
    absl::string_view text = line;
    if (size_t hash = text.find('#'); hash != absl::string_view::npos) text = text.substr(0, hash);
    std::vector<absl::string_view> fields =
        absl::StrSplit(text, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (fields.empty()) continue;
    if (fields.size() < 3 || fields.size() > 4) {
      problems.push_back(absl::StrCat(where, "expected '<tenant> <role> sha256:<64 hex digits> "
                                             "[<root>,...]', got ",
                                      fields.size(), " field", fields.size() == 1 ? "" : "s"));
      continue;
    }
    const size_t before = problems.size();
    if (!ValidTenantName(fields[0])) {
      problems.push_back(absl::StrCat(where, "tenant name '", fields[0],
                                      "' must be letters, digits, '_', '-' or '.' and start "
                                      "with a letter or digit"));
    }
    Role role = Role::kUser;
    if (!ParseRole(fields[1], &role)) {
      problems.push_back(
          absl::StrCat(where, "role must be user or worker, got '", fields[1], "'"));
    }
    std::string hash = absl::AsciiStrToLower(fields[2]);
    absl::string_view digits = hash;
    if (!absl::ConsumePrefix(&digits, kHashPrefix) || digits.size() != kHashHexDigits ||
        !std::all_of(digits.begin(), digits.end(),
                     [](char c) { return absl::ascii_isxdigit(c); })) {
      problems.push_back(absl::StrCat(where,
                                      "token hash must be 'sha256:' followed by 64 hex digits "
                                      "(HashToken of the token)"));
    }
    std::vector<std::string> roots;
    if (fields.size() == 4) {
      for (absl::string_view root : absl::StrSplit(fields[3], ',')) {
        if (root.empty() || root[0] != '/') {
          problems.push_back(
              absl::StrCat(where, "data root '", root, "' must be an absolute directory"));
          continue;
        }
        absl::StatusOr<std::string> canonical = CanonicalDirectory(root);
        if (!canonical.ok()) {
          problems.push_back(absl::StrCat(where, canonical.status().message()));
          continue;
        }
        AddUnique(&roots, *canonical);
      }
    }
    if (problems.size() != before) continue;

    // Roots belong to the tenant (the union over its lines); roles to the token.
    bool merged = false;
    for (Entry& entry : registry.entries_) {
      if (entry.tenant.name == fields[0]) {
        for (const std::string& root : roots) AddUnique(&entry.tenant.roots, root);
      }
      if (entry.hash == hash) {
        if (entry.tenant.name != fields[0]) {
          problems.push_back(absl::StrCat(where, "the same token hash is already given to tenant '",
                                          entry.tenant.name, "'"));
        } else {
          AddUnique(&entry.tenant.roles, role);
        }
        merged = true;
      }
    }
    if (merged) continue;
    Entry entry;
    entry.hash = std::move(hash);
    entry.tenant.name = std::string(fields[0]);
    entry.tenant.roles = {role};
    entry.tenant.roots = std::move(roots);
    for (const Entry& other : registry.entries_) {
      if (other.tenant.name == entry.tenant.name) {
        for (const std::string& root : other.tenant.roots) AddUnique(&entry.tenant.roots, root);
      }
    }
    registry.entries_.push_back(std::move(entry));
  }
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat("error reading tenants file '", path, "'"));
  }
  if (!problems.empty()) return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
  return registry;
}

void TenantRegistry::AddToken(const std::string& tenant, Role role, absl::string_view token) {
  if (!enabled_) return;
  const std::string hash = HashToken(token);
  std::vector<std::string> roots;
  for (Entry& entry : entries_) {
    if (entry.tenant.name != tenant) continue;
    for (const std::string& root : entry.tenant.roots) AddUnique(&roots, root);
    if (entry.hash == hash) {
      AddUnique(&entry.tenant.roles, role);
      return;
    }
  }
  Entry entry;
  entry.hash = hash;
  entry.tenant.name = tenant;
  entry.tenant.roles = {role};
  entry.tenant.roots = std::move(roots);
  entries_.push_back(std::move(entry));
}

absl::StatusOr<Tenant> TenantRegistry::Authenticate(absl::string_view authorization) const {
  if (!enabled_) return Tenant{"local", {Role::kUser, Role::kWorker}, {}};
  if (authorization.empty()) {
    return absl::UnauthenticatedError(
        "missing \"authorization\" metadata; send \"Bearer <token>\"");
  }
  // The scheme is case-insensitive (RFC 7235). Nothing of the value is echoed: a client that
  // forgot the scheme would otherwise see its token in the message.
  absl::string_view token = authorization;
  if (token.size() < 6 || !absl::EqualsIgnoreCase(token.substr(0, 6), "bearer") ||
      (token.size() > 6 && token[6] != ' ')) {
    return absl::UnauthenticatedError(
        "the \"authorization\" metadata is not a Bearer token; send \"Bearer <token>\"");
  }
  token = absl::StripAsciiWhitespace(token.substr(6));
  if (token.empty()) return absl::UnauthenticatedError("empty Bearer token");
  const std::string hash = HashToken(token);
  const Entry* found = nullptr;
  for (const Entry& entry : entries_) {  // no early exit: time does not depend on the position
    if (SameHash(entry.hash, hash) && found == nullptr) found = &entry;
  }
  if (found == nullptr) return absl::UnauthenticatedError("unknown token");
  return found->tenant;
}

absl::StatusOr<std::string> ResolveUnderRoots(absl::string_view field, absl::string_view path,
                                              absl::Span<const std::string> roots, PathUse use) {
  absl::StatusOr<std::string> resolved = Resolve(path, roots, use);
  if (!resolved.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", resolved.status().message()));
  }
  return resolved;
}

std::vector<std::pair<std::string, std::string>> ResolveSpecPaths(
    v1::JobSpec* spec, absl::Span<const std::string> roots, absl::string_view default_output_dir) {
  std::vector<std::pair<std::string, std::string>> problems;
  auto resolve = [&](const std::string& field, std::string* value, PathUse use) {
    absl::StatusOr<std::string> resolved = Resolve(*value, roots, use);
    if (resolved.ok()) {
      *value = *std::move(resolved);
    } else {
      problems.emplace_back(field, std::string(resolved.status().message()));
    }
  };
  // Empty inputs are left for the spec validator, which knows which ones the method requires.
  if (!spec->base_model().empty()) {
    resolve("base_model", spec->mutable_base_model(), PathUse::kInput);
  }
  if (spec->has_calibration() && !spec->calibration().path().empty()) {
    resolve("calibration.path", spec->mutable_calibration()->mutable_path(), PathUse::kInput);
  }
  for (int i = 0; i < spec->datasets_size(); ++i) {
    if (spec->datasets(i).path().empty()) continue;
    resolve(absl::StrCat("datasets[", i, "].path"), spec->mutable_datasets(i)->mutable_path(),
            PathUse::kInput);
  }
  for (int i = 0; i < spec->eval_datasets_size(); ++i) {
    if (spec->eval_datasets(i).path().empty()) continue;
    resolve(absl::StrCat("eval_datasets[", i, "].path"),
            spec->mutable_eval_datasets(i)->mutable_path(), PathUse::kInput);
  }
  if (spec->output_dir().empty()) spec->set_output_dir(std::string(default_output_dir));
  resolve("output_dir", spec->mutable_output_dir(), PathUse::kOutput);
  if (!spec->cache_dir().empty() && spec->cache_dir() != "none") {
    resolve("cache_dir", spec->mutable_cache_dir(), PathUse::kOutput);
  }
  return problems;
}

absl::StatusOr<std::vector<std::string>> CanonicalRoots(absl::Span<const std::string> roots) {
  std::vector<std::string> out;
  for (const std::string& root : roots) {
    absl::StatusOr<std::string> canonical = CanonicalDirectory(root);
    if (!canonical.ok()) return canonical.status();
    AddUnique(&out, *canonical);
  }
  return out;
}

}  // namespace sigmatune::server
