// Who is calling, and which files a job of theirs may touch.
//
// Tenants file (--tenants_file), one tenant per line, '#' starts a comment:
//   <tenant> <role> sha256:<64 hex digits> [<root>[,<root>...]]
// role is "user" (JobService) or "worker" (WorkerService: worker groups joining). The hash is
// HashToken(token): tokens are never stored in clear. The optional roots replace the coordinator's
// --data_root list for that tenant's jobs. A tenant may have several lines (several tokens).
// Problems name the file and line ("tenants.txt:3: role must be user or worker, got 'admin'").
//
// Authentication: the "authorization" metadata must be "Bearer <token>". A missing header,
// another scheme or an unknown token is Unauthenticated with a message that says which (never the
// token); comparison is constant-time over the hashes. Without a tenants file (TenantRegistry::Open)
// every caller is the tenant "local" with both roles: only for a coordinator bound to loopback.
//
// Data roots: every path in a spec must resolve inside one of the caller's roots. Relative paths
// are taken relative to the first root. Rejected, with the field named: ".." components, a "~"
// prefix, percent-encoded bytes ("%2e", "%2F", ...), backslashes, control characters, absolute paths
// outside every root, and paths whose existing part resolves (symlinks followed, realpath) outside
// every root. Paths that must exist (inputs) must exist; outputs may be missing below an existing
// ancestor, which is checked instead.
#ifndef SIGMATUNE_SERVER_AUTH_AUTH_H_
#define SIGMATUNE_SERVER_AUTH_AUTH_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "sigmatune/v1/job.pb.h"

namespace sigmatune::server {

enum class Role { kUser, kWorker };

struct Tenant {
  std::string name;
  std::vector<Role> roles;
  std::vector<std::string> roots;  // canonical absolute directories; empty: the coordinator's

  bool Has(Role role) const;
};

// "sha256:<hex>" of the token's bytes.
std::string HashToken(absl::string_view token);

// 32 random bytes from the OS (getrandom), as 64 hex digits.
absl::StatusOr<std::string> NewToken();

class TenantRegistry {
 public:
  // Auth disabled: everyone is {"local", {kUser, kWorker}}.
  static TenantRegistry Open();
  static absl::StatusOr<TenantRegistry> LoadFile(const std::string& path);

  bool enabled() const { return enabled_; }

  // Adds a token (hashed before it is kept), e.g. the coordinator's own token for the worker
  // group it launches. On an Open() registry it is ignored (everyone is already allowed).
  void AddToken(const std::string& tenant, Role role, absl::string_view token);

  // From the value of the "authorization" metadata ("" when absent).
  absl::StatusOr<Tenant> Authenticate(absl::string_view authorization) const;

 private:
  struct Entry {
    std::string hash;
    Tenant tenant;
  };
  bool enabled_ = false;
  std::vector<Entry> entries_;
};

enum class PathUse { kInput, kOutput };

// One path of a spec resolved under `roots` (canonical absolute directories, at least one).
// `field` names it in errors ("datasets[0].path"). Returns the canonical absolute path
// (symlinks resolved) or InvalidArgument "<field>: <why>".
absl::StatusOr<std::string> ResolveUnderRoots(absl::string_view field, absl::string_view path,
                                              absl::Span<const std::string> roots, PathUse use);

// Resolves every path field of `spec` in place: base_model, calibration.path, datasets[].path,
// eval_datasets[].path (inputs), output_dir and cache_dir unless "none" (outputs). An empty
// output_dir becomes `default_output_dir` (relative to the first root); an empty cache_dir is left
// for job::ApplyDefaults. Returns every problem as (field, message); `spec` is only meaningful when
// the list is empty.
std::vector<std::pair<std::string, std::string>> ResolveSpecPaths(v1::JobSpec* spec,
                                                                  absl::Span<const std::string> roots,
                                                                  absl::string_view default_output_dir);

// Canonicalises --data_root values (each must exist and be a directory).
absl::StatusOr<std::vector<std::string>> CanonicalRoots(absl::Span<const std::string> roots);

}  // namespace sigmatune::server

#endif  // SIGMATUNE_SERVER_AUTH_AUTH_H_
