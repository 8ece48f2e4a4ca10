// SqliteJobStore: one SQLite connection, serialised by a mutex; every call is one
// BEGIN IMMEDIATE ... COMMIT transaction over cached prepared statements (ROLLBACK on any error).
//
// Schema (version 1):
//   meta(key TEXT PRIMARY KEY, value TEXT)            application marker and schema_version
//   jobs(name PK, tenant, request_id, create_seq, job BLOB, report_text, report_json)
//     UNIQUE (tenant, request_id) WHERE request_id != '', UNIQUE (create_seq)
//   events(name, sequence, event BLOB, PRIMARY KEY(name, sequence)) WITHOUT ROWID
// Jobs and events are serialized v1::Job / v1::JobEvent protos.
#include <sqlite3.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "kernels/base/check.h"
#include "kernels/base/status_macros.h"
#include "server/store/job_store.h"

namespace sigmatune::server {
namespace {

constexpr int kSchemaVersion = 1;
constexpr char kApplication[] = "sigmatune-coordinator job store";
constexpr int kBusyTimeoutMs = 10000;

constexpr char kSchemaSql[] = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS jobs(
  name TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  request_id TEXT,
  create_seq INTEGER NOT NULL,
  job BLOB NOT NULL,
  report_text TEXT,
  report_json TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_request ON jobs(tenant, request_id) WHERE request_id != '';
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_create_seq ON jobs(create_seq);
CREATE TABLE IF NOT EXISTS events(
  name TEXT,
  sequence INTEGER,
  event BLOB,
  PRIMARY KEY(name, sequence)) WITHOUT ROWID;
)sql";

// The statements a store prepares once and reuses.
enum class Sql {
  kBegin,
  kCommit,
  kRollback,
  kFindName,
  kFindRequest,
  kNextCreateSeq,
  kInsertJob,
  kInsertEvent,
  kJobKeys,
  kMaxEvent,
  kUpdateJob,
  kUpdateReport,
  kDropEvents,
  kLoadJobs,
  kLoadEvents,
  kJournalMode,
  kSynchronous,
  kCount,
};

constexpr std::array<const char*, static_cast<size_t>(Sql::kCount)> kSqlText = {
    "BEGIN IMMEDIATE",
    "COMMIT",
    "ROLLBACK",
    "SELECT 1 FROM jobs WHERE name = ?1",
    "SELECT name FROM jobs WHERE tenant = ?1 AND request_id = ?2 AND request_id != ''",
    "SELECT COALESCE(MAX(create_seq), 0) + 1 FROM jobs",
    "INSERT INTO jobs(name, tenant, request_id, create_seq, job) VALUES(?1, ?2, ?3, ?4, ?5)",
    "INSERT INTO events(name, sequence, event) VALUES(?1, ?2, ?3)",
    "SELECT tenant, request_id FROM jobs WHERE name = ?1",
    "SELECT MAX(sequence) FROM events WHERE name = ?1",
    "UPDATE jobs SET job = ?2 WHERE name = ?1",
    "UPDATE jobs SET report_text = ?2, report_json = ?3 WHERE name = ?1",
    "DELETE FROM events WHERE name = ?1 AND sequence <= ?2",
    "SELECT name, job, report_text, report_json FROM jobs ORDER BY create_seq",
    "SELECT name, sequence, event FROM events ORDER BY name, sequence",
    "PRAGMA journal_mode",
    "PRAGMA synchronous",
};

absl::StatusCode CodeOf(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_PROTOCOL:
    case SQLITE_PERM:
    case SQLITE_NOLFS:
      return absl::StatusCode::kUnavailable;
    case SQLITE_CORRUPT:
      return absl::StatusCode::kDataLoss;
    case SQLITE_NOTADB:
      return absl::StatusCode::kFailedPrecondition;
    case SQLITE_CONSTRAINT:
      return absl::StatusCode::kAlreadyExists;
    default:
      return absl::StatusCode::kInternal;
  }
}

std::string Serialize(const google::protobuf::Message& message) {
  std::string bytes;
  ST_CHECK(message.SerializeToString(&bytes)) << "cannot serialize a " << message.GetTypeName();
  return bytes;
}

absl::string_view ColumnText(sqlite3_stmt* stmt, int column) {
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, column));
  return text == nullptr ? absl::string_view() : absl::string_view(text, sqlite3_column_bytes(stmt, column));
}

absl::string_view ColumnBlob(sqlite3_stmt* stmt, int column) {
  const auto* blob = static_cast<const char*>(sqlite3_column_blob(stmt, column));
  return blob == nullptr ? absl::string_view() : absl::string_view(blob, sqlite3_column_bytes(stmt, column));
}

// Resets a cached statement (and its bindings) when the call that used it is done.
class Use {
 public:
  explicit Use(sqlite3_stmt* stmt) : stmt_(stmt) {}
  ~Use() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  Use(const Use&) = delete;
  Use& operator=(const Use&) = delete;

  sqlite3_stmt* get() const { return stmt_; }
  // Text and blobs are copied (SQLITE_TRANSIENT): the arguments may be temporaries.
  void Text(int index, absl::string_view text) {
    sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
  }
  void Blob(int index, absl::string_view bytes) {
    sqlite3_bind_blob(stmt_, index, bytes.data(), static_cast<int>(bytes.size()), SQLITE_TRANSIENT);
  }
  void Int(int index, int64_t value) { sqlite3_bind_int64(stmt_, index, value); }

 private:
  sqlite3_stmt* stmt_;
};

// Whether a step produced a row.
enum class Row { kNone, kOne };

}  // namespace

struct SqliteJobStore::Impl {
  Impl(std::string path, sqlite3* db) : path(std::move(path)), db(db) { statements.fill(nullptr); }
  ~Impl() {
    for (sqlite3_stmt* stmt : statements) sqlite3_finalize(stmt);
    sqlite3_close_v2(db);
  }

  absl::Status Error(int rc, absl::string_view what) const {
    const char* message = (db != nullptr && sqlite3_errcode(db) == rc) ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    return absl::Status(CodeOf(rc), absl::StrFormat("job store %s: %s: %s (SQLite code %d)", path, what, message, rc));
  }

  absl::StatusOr<sqlite3_stmt*> Statement(Sql sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    sqlite3_stmt*& stmt = statements[static_cast<size_t>(sql)];
    if (stmt == nullptr) {
      const char* text = kSqlText[static_cast<size_t>(sql)];
      const int rc = sqlite3_prepare_v3(db, text, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
      if (rc != SQLITE_OK) {
        sqlite3_finalize(stmt);
        stmt = nullptr;
        return Error(rc, absl::StrCat("preparing \"", text, "\""));
      }
    }
    return stmt;
  }

  // Steps once: a row, or done.
  absl::StatusOr<Row> Step(const Use& use, absl::string_view what) {
    const int rc = sqlite3_step(use.get());
    if (rc == SQLITE_ROW) return Row::kOne;
    if (rc == SQLITE_DONE) return Row::kNone;
    return Error(rc, what);
  }

  absl::Status Exec(Sql sql, absl::string_view what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    ST_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, Statement(sql));
    Use use(stmt);
    return Step(use, what).status();
  }

  // Runs `body` in BEGIN IMMEDIATE ... COMMIT; rolls back when anything fails.
  template <typename Body>
  absl::Status Transaction(absl::string_view what, Body body) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    ST_RETURN_IF_ERROR(Exec(Sql::kBegin, absl::StrCat(what, ": BEGIN")));
    absl::Status status = body();
    if (status.ok()) status = Exec(Sql::kCommit, absl::StrCat(what, ": COMMIT"));
    if (!status.ok() && sqlite3_get_autocommit(db) == 0) {
      // Some errors roll back by themselves; otherwise undo everything of this call.
      absl::Status rollback = Exec(Sql::kRollback, absl::StrCat(what, ": ROLLBACK"));
      if (!rollback.ok()) {
        return absl::Status(status.code(), absl::StrCat(status.message(), "; and then ", rollback.message()));
      }
    }
    return status;
  }

  // One-shot SQL outside the statement cache (schema set-up).
  absl::Status ExecScript(const char* sql, absl::string_view what) {
    const int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
    return rc == SQLITE_OK ? absl::OkStatus() : Error(rc, what);
  }

  absl::Status NotOurs(absl::string_view why) const {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s is not a sigmatune job store (%s); move it away or choose another path", path, why));
  }

  // Reads meta[key] into *value; false when the row is missing.
  absl::StatusOr<bool> MetaValue(const char* key, std::string* value) {
    sqlite3_stmt* raw = nullptr;
    const int rc = sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = ?1", -1, &raw, nullptr);
    std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> stmt(raw, sqlite3_finalize);
    if (rc == SQLITE_ERROR) return NotOurs(absl::StrCat("its meta table has another layout: ", sqlite3_errmsg(db)));
    if (rc != SQLITE_OK) return Error(rc, "reading the meta table");
    Use use(stmt.get());
    use.Text(1, key);
    ST_ASSIGN_OR_RETURN(const Row row, Step(use, "reading the meta table"));
    if (row == Row::kNone) return false;
    *value = std::string(ColumnText(stmt.get(), 0));
    return true;
  }

  // Creates the schema in an empty database or checks the marker and version of an existing one.
  absl::Status CreateOrCheckSchema() {
    // BEGIN IMMEDIATE reads the file's header: a file that is not a database fails here.
    int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
    if ((rc & 0xff) == SQLITE_NOTADB) return NotOurs(absl::StrCat("not a SQLite database: ", sqlite3_errmsg(db)));
    if (rc != SQLITE_OK) return Error(rc, "BEGIN");
    absl::Status status = [&]() -> absl::Status {
      sqlite3_stmt* raw = nullptr;
      rc = sqlite3_prepare_v2(db, "SELECT COUNT(*), SUM(name = 'meta') FROM sqlite_master WHERE type = 'table'", -1,
                              &raw, nullptr);
      std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> stmt(raw, sqlite3_finalize);
      if ((rc & 0xff) == SQLITE_NOTADB) return NotOurs(absl::StrCat("not a SQLite database: ", sqlite3_errmsg(db)));
      if (rc != SQLITE_OK) return Error(rc, "reading the schema");
      Use use(stmt.get());
      ST_ASSIGN_OR_RETURN(const Row row, Step(use, "reading the schema"));
      ST_CHECK(row == Row::kOne);
      const int64_t tables = sqlite3_column_int64(stmt.get(), 0);
      const int64_t meta = sqlite3_column_int64(stmt.get(), 1);
      if (tables == 0) {
        ST_RETURN_IF_ERROR(ExecScript(kSchemaSql, "creating the schema"));
        const std::string insert =
            absl::StrFormat("INSERT INTO meta(key, value) VALUES('application', '%s'), ('schema_version', '%d')",
                            kApplication, kSchemaVersion);
        return ExecScript(insert.c_str(), "writing the meta table");
      }
      if (meta == 0) return NotOurs("a SQLite database without a meta table");
      std::string application;
      ST_ASSIGN_OR_RETURN(const bool has_application, MetaValue("application", &application));
      if (!has_application || application != kApplication) {
        return NotOurs(absl::StrFormat("its meta table names application '%s'", application));
      }
      std::string version_text;
      ST_ASSIGN_OR_RETURN(const bool has_version, MetaValue("schema_version", &version_text));
      int version = 0;
      if (!has_version || !absl::SimpleAtoi(version_text, &version) || version < 1) {
        return NotOurs(absl::StrFormat("bad schema_version '%s'", version_text));
      }
      if (version > kSchemaVersion) {
        return absl::FailedPreconditionError(
            absl::StrFormat("job store %s has schema_version %d, newer than the %d this coordinator supports; "
                            "run a newer coordinator",
                            path, version, kSchemaVersion));
      }
      return ExecScript(kSchemaSql, "checking the schema");
    }();
    if (status.ok()) status = ExecScript("COMMIT", "COMMIT");
    if (!status.ok() && sqlite3_get_autocommit(db) == 0) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    return status;
  }

  absl::Status Configure() {
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &raw, nullptr);
    std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> stmt(raw, sqlite3_finalize);
    if (rc != SQLITE_OK) return Error(rc, "setting journal_mode=WAL");
    Use use(stmt.get());
    ST_ASSIGN_OR_RETURN(const Row row, Step(use, "setting journal_mode=WAL"));
    const std::string mode = row == Row::kOne ? std::string(ColumnText(stmt.get(), 0)) : "";
    if (mode != "wal") {
      return absl::FailedPreconditionError(
          absl::StrFormat("job store %s: journal_mode=WAL is not possible here (SQLite kept '%s')", path, mode));
    }
    return ExecScript("PRAGMA synchronous = FULL", "setting synchronous=FULL");
  }

  const std::string path;
  sqlite3* const db;
  absl::Mutex mu;
  std::array<sqlite3_stmt*, static_cast<size_t>(Sql::kCount)> statements ABSL_GUARDED_BY(mu);
};

SqliteJobStore::SqliteJobStore(std::string path, std::unique_ptr<Impl> impl)
    : path_(std::move(path)), impl_(std::move(impl)) {}

SqliteJobStore::~SqliteJobStore() = default;

absl::StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Open(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("job store: empty database path");
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrFormat("job store %s: cannot create directory %s: %s", path, parent.string(), ec.message()));
    }
  }
  sqlite3* db = nullptr;
  const int rc =
      sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  auto impl = std::make_unique<Impl>(path, db);  // closes db whatever happens next
  if (rc != SQLITE_OK) return impl->Error(rc, "opening");
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, kBusyTimeoutMs);
  ST_RETURN_IF_ERROR(impl->CreateOrCheckSchema());
  ST_RETURN_IF_ERROR(impl->Configure());
  return std::unique_ptr<SqliteJobStore>(new SqliteJobStore(path, std::move(impl)));
}

absl::Status SqliteJobStore::Create(const v1::Job& job, const v1::JobEvent& first_event) {
  if (job.name().empty()) return absl::InvalidArgumentError(absl::StrCat("job store ", path_, ": a job needs a name"));
  if (first_event.sequence() < 1) {
    return absl::InvalidArgumentError(absl::StrFormat("job store %s: the first event of %s has sequence %d (< 1)",
                                                      path_, job.name(), first_event.sequence()));
  }
  Impl& s = *impl_;
  absl::MutexLock lock(&s.mu);
  const std::string what = absl::StrCat("creating ", job.name());
  return s.Transaction(what, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) -> absl::Status {
    {
      ST_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, s.Statement(Sql::kFindName));
      Use use(stmt);
      use.Text(1, job.name());
      ST_ASSIGN_OR_RETURN(const Row row, s.Step(use, what));
      if (row == Row::kOne) return absl::AlreadyExistsError(absl::StrFormat("job %s already exists", job.name()));
    }
    if (!job.request_id().empty()) {
      ST_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, s.Statement(Sql::kFindRequest));
      Use use(stmt);
      use.Text(1, job.tenant());
      use.Text(2, job.request_id());
      ST_ASSIGN_OR_RETURN(const Row row, s.Step(use, what));
      if (row == Row::kOne) {
        return absl::AlreadyExistsError(absl::StrFormat("request_id '%s' of tenant '%s' already created %s",
                                                        job.request_id(), job.tenant(), ColumnText(stmt, 0)));
      }
    }
    int64_t create_seq = 0;
    {
      ST_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, s.Statement(Sql::kNextCreateSeq));
      Use use(stmt);
      ST_ASSIGN_OR_RETURN(const Row row, s.Step(use, what));
      ST_CHECK(row == Row::kOne);
      create_seq = sqlite3_column_int64(stmt, 0);
    }
    {
      ST_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, s.Statement(Sql::kInsertJob));
      Use use(stmt);
      use.Text(1, job.name());
      use.Text(2, job.tenant());
      use.Text(3, job.request_id());
      use.Int(4, create_seq);
      use.Blob(5, Serialize(job));
      ST_RETURN_IF_ERROR(s.Step(use, what).status());
    }
    ST_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, s.Statement(Sql::kInsertEvent));
    Use use(stmt);
    use.Text(1, job.name());
    use.Int(2, first_event.sequence());
    use.Blob(3, Serialize(first_event));
    return s.Step(use, what).status();
  });
}

absl::Status SqliteJobStore::Update(const JobUpdate& update) {
  const v1::Job& job = update.job;
  Impl& s = *impl_;
  absl::MutexLock lock(&s.mu);
  const std::string what = absl::StrCat("updating ", job.name());
  return s.Transaction(what, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) -> absl::Status {
    {
      ST_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, s.Statement(Sql::kJobKeys));
      Use use(stmt);
      use.Text(1, job.name());
      ST_ASSIGN_OR_RETURN(const Row row, s.Step(use, what));
      if (row == Row::kNone) {
        return absl::NotFoundError(absl::StrFormat("job store %s has no job %s", path_, job.name()));
      }
      if (ColumnText(stmt, 0) != job.tenant() || ColumnText(stmt, 1) != job.request_id()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("job %s: an update may not change its tenant or request_id ('%s', '%s' stored)", job.name(),
                            ColumnText(stmt, 0), ColumnText(stmt, 1)));
      }
    }
    {
      ST_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, s.Statement(Sql::kUpdateJob));
      Use use(stmt);
      use.Text(1, job.name());
      use.Blob(2, Serialize(job));
      ST_RETURN_IF_ERROR(s.Step(use, what).status());
    }
    int64_t last = 0;
    {
      ST_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, s.Statement(Sql::kMaxEvent));
      Use use(stmt);
      use.Text(1, job.name());
      ST_ASSIGN_OR_RETURN(const Row row, s.Step(use, what));
      if (row == Row::kOne) last = sqlite3_column_int64(stmt, 0);  // NULL (no events) reads as 0
    }
    for (const v1::JobEvent& event : update.events) {
      // Checked after the job row is written: a bad event undoes the whole call.
      if (event.sequence() <= last) {
        return absl::InvalidArgumentError(
            absl::StrFormat("job %s: event sequence %d is not greater than %d (stored or earlier in this update)",
                            job.name(), event.sequence(), last));
      }
      last = event.sequence();
      ST_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, s.Statement(Sql::kInsertEvent));
      Use use(stmt);
      use.Text(1, job.name());
      use.Int(2, event.sequence());
      use.Blob(3, Serialize(event));
      ST_RETURN_IF_ERROR(s.Step(use, what).status());
    }
    if (update.drop_events_through > 0) {
      ST_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, s.Statement(Sql::kDropEvents));
      Use use(stmt);
      use.Text(1, job.name());
      use.Int(2, update.drop_events_through);
      ST_RETURN_IF_ERROR(s.Step(use, what).status());
    }
    if (update.report.has_value()) {
      ST_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, s.Statement(Sql::kUpdateReport));
      Use use(stmt);
      use.Text(1, job.name());
      use.Text(2, update.report->text);
      use.Text(3, update.report->json);
      ST_RETURN_IF_ERROR(s.Step(use, what).status());
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<StoredJob>> SqliteJobStore::LoadAll() {
  Impl& s = *impl_;
  absl::MutexLock lock(&s.mu);
  std::vector<StoredJob> jobs;
  absl::Status status = s.Transaction("loading jobs", [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) -> absl::Status {
    absl::flat_hash_map<std::string, size_t> index;
    {
      ST_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, s.Statement(Sql::kLoadJobs));
      Use use(stmt);
      while (true) {
        ST_ASSIGN_OR_RETURN(const Row row, s.Step(use, "loading jobs"));
        if (row == Row::kNone) break;
        const absl::string_view name = ColumnText(stmt, 0);
        StoredJob& stored = jobs.emplace_back();
        const absl::string_view bytes = ColumnBlob(stmt, 1);
        if (!stored.job.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())) || stored.job.name() != name) {
          return absl::DataLossError(absl::StrFormat("job store %s: the row of job %s does not hold it", path_, name));
        }
        stored.report.text = std::string(ColumnText(stmt, 2));
        stored.report.json = std::string(ColumnText(stmt, 3));
        index[std::string(name)] = jobs.size() - 1;
      }
    }
    ST_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, s.Statement(Sql::kLoadEvents));
    Use use(stmt);
    while (true) {
      ST_ASSIGN_OR_RETURN(const Row row, s.Step(use, "loading events"));
      if (row == Row::kNone) break;
      const absl::string_view name = ColumnText(stmt, 0);
      const auto it = index.find(name);
      if (it == index.end()) continue;  // cannot happen: a job and its first event are created together
      v1::JobEvent& event = jobs[it->second].events.emplace_back();
      const absl::string_view bytes = ColumnBlob(stmt, 2);
      if (!event.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())) ||
          event.sequence() != sqlite3_column_int64(stmt, 1)) {
        return absl::DataLossError(absl::StrFormat("job store %s: event %d of job %s does not parse", path_,
                                                   sqlite3_column_int64(stmt, 1), name));
      }
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return jobs;
}

absl::StatusOr<std::string> SqliteJobStore::JournalMode() {
  Impl& s = *impl_;
  absl::MutexLock lock(&s.mu);
  ST_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, s.Statement(Sql::kJournalMode));
  Use use(stmt);
  ST_ASSIGN_OR_RETURN(const Row row, s.Step(use, "reading journal_mode"));
  if (row == Row::kNone) return s.Error(SQLITE_ERROR, "reading journal_mode: no row");
  return std::string(ColumnText(stmt, 0));
}

absl::StatusOr<int> SqliteJobStore::Synchronous() {
  Impl& s = *impl_;
  absl::MutexLock lock(&s.mu);
  ST_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, s.Statement(Sql::kSynchronous));
  Use use(stmt);
  ST_ASSIGN_OR_RETURN(const Row row, s.Step(use, "reading synchronous"));
  if (row == Row::kNone) return s.Error(SQLITE_ERROR, "reading synchronous: no row");
  return static_cast<int>(sqlite3_column_int64(stmt, 0));
}

}  // namespace sigmatune::server
