// The coordinator's durable record of jobs: every job, the events Watch streams replay, and each
// finished job's report. The coordinator keeps its working set in memory and writes through this
// interface before it acknowledges anything; on start-up it reads everything back (LoadAll).
//
// Contract:
//  - Durability: when Create or Update returns OK the change survives a kill -9 of the process
//    (and, for SqliteJobStore, a power cut: WAL with synchronous=FULL). Each call is one
//    transaction: all of it is stored or none of it.
//  - Create: AlreadyExists when the job's name is taken, or when its request_id is non-empty and
//    the same tenant already has a job with that request_id (the message names the existing job).
//  - Update replaces the stored job (NotFound if it was never created), appends `events` (their
//    sequences must be greater than every stored one: InvalidArgument otherwise) and deletes the
//    stored events with sequence <= drop_events_through; with `report` it also stores the report.
//  - LoadAll returns every job in creation order (create_seq ascending), each with its retained
//    events in sequence order and its report (empty strings when none).
//  - Errors from the database are Unavailable/DataLoss/Internal with the database file's path and
//    SQLite's message. A database file of another program or a newer schema is FailedPrecondition.
//  - Thread-safe: calls may come from many threads (they are serialised inside).
#ifndef SIGMATUNE_SERVER_STORE_JOB_STORE_H_
#define SIGMATUNE_SERVER_STORE_JOB_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "sigmatune/v1/coordinator.pb.h"

namespace sigmatune::server {

struct JobReportText {
  std::string text;
  std::string json;
};

struct StoredJob {
  v1::Job job;
  std::vector<v1::JobEvent> events;  // retained events, ascending sequence
  JobReportText report;
};

struct JobUpdate {
  v1::Job job;
  std::vector<v1::JobEvent> events;
  int64_t drop_events_through = 0;  // delete stored events with sequence <= this (0: none)
  std::optional<JobReportText> report;
};

class JobStore {
 public:
  virtual ~JobStore() = default;
  virtual absl::StatusOr<std::vector<StoredJob>> LoadAll() = 0;
  virtual absl::Status Create(const v1::Job& job, const v1::JobEvent& first_event) = 0;
  virtual absl::Status Update(const JobUpdate& update) = 0;
};

// The SQLite implementation. Opening creates the file (and its parent directory) when missing,
// sets journal_mode=WAL and synchronous=FULL, and creates or checks the schema (a schema_version
// row in a meta table).
class SqliteJobStore final : public JobStore {
 public:
  static absl::StatusOr<std::unique_ptr<SqliteJobStore>> Open(const std::string& path);
  ~SqliteJobStore() override;
  SqliteJobStore(const SqliteJobStore&) = delete;
  SqliteJobStore& operator=(const SqliteJobStore&) = delete;

  absl::StatusOr<std::vector<StoredJob>> LoadAll() override;
  absl::Status Create(const v1::Job& job, const v1::JobEvent& first_event) override;
  absl::Status Update(const JobUpdate& update) override;

  // PRAGMA journal_mode and synchronous as SQLite reports them ("wal", 2), for tests.
  absl::StatusOr<std::string> JournalMode();
  absl::StatusOr<int> Synchronous();

  const std::string& path() const { return path_; }

 private:
  struct Impl;
  SqliteJobStore(std::string path, std::unique_ptr<Impl> impl);
  std::string path_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sigmatune::server

#endif  // SIGMATUNE_SERVER_STORE_JOB_STORE_H_
