#include "worker/comm/mpi_communicator.h"

#include <sched.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "kernels/base/check.h"
#include "kernels/base/status_macros.h"

namespace sigmatune::comm {
namespace {

// Large enough to keep MPI's own byte counts far from INT_MAX.
constexpr int64_t kDefaultMaxChunkBytes = int64_t{1} << 30;
// The one tag of point-to-point messages: a message is its length word then its chunks, and MPI
// keeps messages of one (source, tag, communicator) in order.
constexpr int kMessageTag = 1;
// Wait() spins (MPI_Test, then sched_yield) this long before it starts sleeping, then sleeps from
// kFirstNap up to kLongestNap. Open MPI progresses a non-blocking operation only inside MPI_Test,
// so a large reduction makes one fragment of progress per test: napping from the start made the
// covariance reductions of SmolLM2 (~400 MB) take 100 s instead of 1 s (bench/scaling_bench.py).
// Peers that are present finish well within the spin; naps only save CPU while a peer is busy
// elsewhere (the leader evaluating, a slower rank).
constexpr absl::Duration kSpin = absl::Seconds(5);
constexpr absl::Duration kFirstNap = absl::Microseconds(50);
constexpr absl::Duration kLongestNap = absl::Milliseconds(1);

template <typename T>
MPI_Datatype MpiType();
template <>
MPI_Datatype MpiType<float>() {
  return MPI_FLOAT;
}
template <>
MPI_Datatype MpiType<double>() {
  return MPI_DOUBLE;
}
template <>
MPI_Datatype MpiType<int64_t>() {
  return MPI_INT64_T;
}
template <>
MPI_Datatype MpiType<char>() {
  return MPI_BYTE;
}

std::string MpiErrorText(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(rc, text, &length) != MPI_SUCCESS) return absl::StrCat("MPI error code ", rc);
  return std::string(text, length);
}

bool EnvSet(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0';
}

bool MpiAlive() {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

template <typename T>
bool Overlap(const T* a, size_t a_size, const T* b, size_t b_size) {
  if (a_size == 0 || b_size == 0) return false;
  const std::less<const T*> less;
  return less(a, b + b_size) && less(b, a + a_size);
}

// The int per-rank counts (and offsets) of a contiguous split of `total` elements.
std::vector<int> PartCounts(int64_t total, int parts) {
  std::vector<int> counts(parts);
  for (int r = 0; r < parts; ++r) counts[r] = static_cast<int>(ShardOf(total, parts, r).size());
  return counts;
}
std::vector<int> PartOffsets(int64_t total, int parts) {
  std::vector<int> offsets(parts);
  for (int r = 0; r < parts; ++r) offsets[r] = static_cast<int>(ShardOf(total, parts, r).begin);
  return offsets;
}

}  // namespace

bool StartedByMpiLauncher() {
  // Open MPI, PMIx (Open MPI 5, Slurm), PMI-1/2 (MPICH/Hydra, Intel MPI, Slurm), MVAPICH.
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "PMI_SIZE",
                           "MPI_LOCALNRANKS", "MPI_LOCALRANKID", "MV2_COMM_WORLD_RANK"}) {
    if (EnvSet(name)) return true;
  }
  return false;
}

// ---- MpiEnvironment ----------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<MpiEnvironment>> MpiEnvironment::Init(int* argc, char*** argv) {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (finalized) {
    return absl::FailedPreconditionError(
        "MPI was already finalised in this process and cannot start again: create one MpiEnvironment at the "
        "start of main and keep it alive until the process ends");
  }
  if (initialized) {
    return absl::FailedPreconditionError(
        "MPI is already initialised in this process: create exactly one MpiEnvironment (at the start of main) "
        "and do not call MPI_Init yourself");
  }
  int provided = 0;
  const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  if (rc != MPI_SUCCESS) {
    return absl::UnavailableError(absl::StrCat("MPI_Init_thread failed (", MpiErrorText(rc),
                                               "): start the worker with mpirun, and check the MPI installation "
                                               "with `ompi_info`"));
  }
  if (provided < MPI_THREAD_FUNNELED) {
    MPI_Finalize();
    return absl::FailedPreconditionError(
        absl::StrCat("this MPI library offers thread level ", provided,
                     " but sigmatune needs MPI_THREAD_FUNNELED: use an MPI built with thread support"));
  }
  return absl::WrapUnique(new MpiEnvironment());
}

MpiEnvironment::~MpiEnvironment() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

// ---- MpiCommunicator ---------------------------------------------------------------------------

struct MpiCommunicator::Call {
  std::string what;  // "Barrier (collective #3)"
  absl::Time deadline;
};

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Create(CommOptions options) {
  if (!MpiAlive()) {
    return absl::FailedPreconditionError(
        "MpiCommunicator::Create: MPI is not initialised; create an MpiEnvironment (MpiEnvironment::Init) first "
        "and keep it alive while communicators exist");
  }
  MPI_Comm comm = MPI_COMM_NULL;
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  if (rc != MPI_SUCCESS) {
    return absl::UnavailableError(absl::StrCat("MpiCommunicator::Create: MPI_Comm_dup failed: ", MpiErrorText(rc)));
  }
  // From here on, errors on `comm` are returned instead of ending the process.
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  int rank = 0;
  int size = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  MPI_Comm local = MPI_COMM_NULL;
  rc = MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local);
  if (rc != MPI_SUCCESS) {
    MPI_Comm_free(&comm);
    return absl::UnavailableError(
        absl::StrCat("MpiCommunicator::Create: rank ", rank, ": MPI_Comm_split_type failed: ", MpiErrorText(rc)));
  }
  int local_rank = 0;
  int local_size = 0;
  MPI_Comm_rank(local, &local_rank);
  MPI_Comm_size(local, &local_size);
  MPI_Comm_free(&local);
  char host[MPI_MAX_PROCESSOR_NAME];
  int host_length = 0;
  if (MPI_Get_processor_name(host, &host_length) != MPI_SUCCESS) host_length = 0;
  std::string hostname(host, host_length);
  if (hostname.empty()) hostname = "unknown";
  return absl::WrapUnique(
      new MpiCommunicator(comm, options, rank, size, local_rank, local_size, std::move(hostname)));
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, CommOptions options, int rank, int size, int local_rank,
                                 int local_size, std::string hostname)
    : comm_(comm),
      options_(options),
      rank_(rank),
      size_(size),
      local_rank_(local_rank),
      local_size_(local_size),
      hostname_(std::move(hostname)),
      max_chunk_bytes_(kDefaultMaxChunkBytes) {}

MpiCommunicator::~MpiCommunicator() {
  if (!MpiAlive()) return;  // MPI_Finalize released every communicator
  for (MPI_Request& request : abandoned_) {
    if (request == MPI_REQUEST_NULL) continue;
    int done = 0;
    if (MPI_Test(&request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) done = 0;
  }
  for (const MPI_Request& request : abandoned_) {
    // An operation of a failed call is still pending: freeing the communicator under it is erroneous,
    // so both stay allocated until the process ends.
    if (request != MPI_REQUEST_NULL) return;
  }
  MPI_Comm_free(&comm_);
}

void MpiCommunicator::SetMaxChunkBytesForTesting(int64_t bytes) {
  ST_CHECK(bytes >= 1) << "chunk bytes " << bytes;
  max_chunk_bytes_ = bytes;
}

std::string MpiCommunicator::Who() const { return absl::StrCat("rank ", rank_, " (host ", hostname_, ")"); }

MpiCommunicator::Call MpiCommunicator::BeginCollective(const std::string& op) {
  return Call{absl::StrCat(op, " (collective #", ++collectives_, ")"), absl::Now() + options_.timeout};
}

MpiCommunicator::Call MpiCommunicator::BeginMessage(const std::string& op) {
  return Call{absl::StrCat(op, " (point-to-point #", ++messages_, ")"), absl::Now() + options_.timeout};
}

int64_t MpiCommunicator::ChunkElements(size_t element_bytes) const {
  return std::max<int64_t>(1, std::min<int64_t>(INT_MAX, max_chunk_bytes_ / static_cast<int64_t>(element_bytes)));
}

absl::Status MpiCommunicator::Fail(absl::Status status) {
  if (broken_.ok()) broken_ = status;
  return status;
}

absl::Status MpiCommunicator::Broken() const {
  return absl::FailedPreconditionError(
      absl::StrCat(Who(), ": the communicator failed earlier and cannot be used again (", broken_.message(), ")"));
}

absl::Status MpiCommunicator::Post(const Call& call, int rc) {
  if (rc == MPI_SUCCESS) return absl::OkStatus();
  return Fail(absl::UnavailableError(absl::StrCat(Who(), ": ", call.what, " failed: ", MpiErrorText(rc))));
}

absl::Status MpiCommunicator::Wait(const Call& call, absl::Span<MPI_Request> requests, bool receives) {
  const absl::Time spin_until = absl::Now() + kSpin;
  absl::Duration nap = kFirstNap;
  absl::Status failure;
  while (failure.ok()) {
    bool all_done = true;
    for (MPI_Request& request : requests) {
      if (request == MPI_REQUEST_NULL) continue;
      int done = 0;
      const int rc = MPI_Test(&request, &done, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) {
        failure = absl::UnavailableError(absl::StrCat(Who(), ": ", call.what, " failed: ", MpiErrorText(rc)));
        break;
      }
      all_done = all_done && done;
    }
    if (!failure.ok()) break;
    if (all_done) return absl::OkStatus();
    const absl::Time now = absl::Now();
    if (now >= call.deadline) {
      failure = absl::DeadlineExceededError(absl::StrCat(Who(), ": ", call.what, " did not complete within ",
                                                         absl::FormatDuration(options_.timeout),
                                                         "; a peer is dead or stuck"));
      break;
    }
    if (now < spin_until) {
      sched_yield();
      continue;
    }
    absl::SleepFor(std::min(nap, call.deadline - now));
    nap = std::min(nap * 2, kLongestNap);
  }
  // A receive that has not matched yet can be withdrawn; everything else stays pending.
  for (MPI_Request& request : requests) {
    if (request == MPI_REQUEST_NULL) continue;
    if (receives && MPI_Cancel(&request) == MPI_SUCCESS) {
      int done = 0;
      if (MPI_Test(&request, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && done) continue;
    }
    abandoned_.push_back(request);
  }
  return Fail(failure);
}

// ---- Collectives -------------------------------------------------------------------------------

template <typename T>
absl::Status MpiCommunicator::AllReduceImpl(const char* op, absl::Span<T> values) {
  if (!broken_.ok()) return Broken();
  const Call call = BeginCollective(absl::StrCat(op, "[", values.size(), "]"));
  const int64_t total = static_cast<int64_t>(values.size());
  const int64_t chunk = ChunkElements(sizeof(T));
  for (int64_t begin = 0; begin < total; begin += chunk) {
    const int count = static_cast<int>(std::min(chunk, total - begin));
    if (begin == 0) ST_RETURN_IF_ERROR(Arrive(call));
    ST_RETURN_IF_ERROR(
        Post(call, MPI_Allreduce(MPI_IN_PLACE, values.data() + begin, count, MpiType<T>(), MPI_SUM, comm_)));
  }
  return absl::OkStatus();
}

absl::Status MpiCommunicator::Arrive(const Call& call) {
  if (size_ == 1) return absl::OkStatus();
  MPI_Request request = MPI_REQUEST_NULL;
  ST_RETURN_IF_ERROR(Post(call, MPI_Ibarrier(comm_, &request)));
  return Wait(call, absl::MakeSpan(&request, 1));
}

template <typename T>
absl::Status MpiCommunicator::ReduceImpl(const char* op, int root, absl::Span<T> values) {
  ST_CHECK(root >= 0 && root < size_) << op << " root " << root << " in a group of " << size_;
  if (!broken_.ok()) return Broken();
  const Call call = BeginCollective(absl::StrCat(op, "[", values.size(), "](root ", root, ")"));
  const int64_t total = static_cast<int64_t>(values.size());
  const int64_t chunk = ChunkElements(sizeof(T));
  for (int64_t begin = 0; begin < total; begin += chunk) {
    const int count = static_cast<int>(std::min(chunk, total - begin));
    T* const data = values.data() + begin;
    if (begin == 0) ST_RETURN_IF_ERROR(Arrive(call));
    // The root sums into its buffer; the others' buffers are only read.
    const int rc = rank_ == root ? MPI_Reduce(MPI_IN_PLACE, data, count, MpiType<T>(), MPI_SUM, root, comm_)
                                 : MPI_Reduce(data, nullptr, count, MpiType<T>(), MPI_SUM, root, comm_);
    ST_RETURN_IF_ERROR(Post(call, rc));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status MpiCommunicator::ReduceScatterImpl(const char* op, absl::Span<const T> input, absl::Span<T> output) {
  const int64_t total = static_cast<int64_t>(input.size());
  const ShardRange mine = ShardOf(total, size_, rank_);
  ST_CHECK(static_cast<int64_t>(output.size()) == mine.size())
      << op << ": output holds " << output.size() << " elements, this rank's part " << mine.size();
  ST_CHECK(!Overlap(input.data(), input.size(), output.data(), output.size())) << op << ": input and output overlap";
  if (!broken_.ok()) return Broken();
  const Call call = BeginCollective(absl::StrCat(op, "[", total, "]"));
  if (total == 0) return absl::OkStatus();
  const int64_t chunk = ChunkElements(sizeof(T));
  if (total <= chunk) {
    const std::vector<int> counts = PartCounts(total, size_);
    MPI_Request request = MPI_REQUEST_NULL;
    ST_RETURN_IF_ERROR(Post(call, MPI_Ireduce_scatter(input.data(), output.data(), counts.data(), MpiType<T>(),
                                                      MPI_SUM, comm_, &request)));
    return Wait(call, absl::MakeSpan(&request, 1));
  }
  // Too large for one call's int counts: reduce each rank's part to that rank, in chunks.
  for (int r = 0; r < size_; ++r) {
    const ShardRange part = ShardOf(total, size_, r);
    for (int64_t begin = 0; begin < part.size(); begin += chunk) {
      const int count = static_cast<int>(std::min(chunk, part.size() - begin));
      MPI_Request request = MPI_REQUEST_NULL;
      ST_RETURN_IF_ERROR(Post(call, MPI_Ireduce(input.data() + part.begin + begin,
                                                rank_ == r ? output.data() + begin : nullptr, count, MpiType<T>(),
                                                MPI_SUM, r, comm_, &request)));
      ST_RETURN_IF_ERROR(Wait(call, absl::MakeSpan(&request, 1)));
    }
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status MpiCommunicator::AllGatherImpl(const char* op, absl::Span<const T> input, absl::Span<T> output) {
  const int64_t total = static_cast<int64_t>(output.size());
  const ShardRange mine = ShardOf(total, size_, rank_);
  ST_CHECK(static_cast<int64_t>(input.size()) == mine.size())
      << op << ": input holds " << input.size() << " elements, this rank's part " << mine.size();
  // The input may already sit at its place in the output; any other overlap is a programmer error.
  const bool in_place = !input.empty() && input.data() == output.data() + mine.begin;
  ST_CHECK(in_place || !Overlap(input.data(), input.size(), output.data(), output.size()))
      << op << ": input overlaps output elsewhere than at this rank's part";
  if (!broken_.ok()) return Broken();
  const Call call = BeginCollective(absl::StrCat(op, "[", total, "]"));
  if (total == 0) return absl::OkStatus();
  const int64_t chunk = ChunkElements(sizeof(T));
  if (total <= chunk) {
    const std::vector<int> counts = PartCounts(total, size_);
    const std::vector<int> offsets = PartOffsets(total, size_);
    MPI_Request request = MPI_REQUEST_NULL;
    ST_RETURN_IF_ERROR(Post(call, MPI_Iallgatherv(in_place ? MPI_IN_PLACE : input.data(),
                                                  static_cast<int>(input.size()), MpiType<T>(), output.data(),
                                                  counts.data(), offsets.data(), MpiType<T>(), comm_, &request)));
    return Wait(call, absl::MakeSpan(&request, 1));
  }
  // Too large for one call's int offsets: every rank broadcasts its part, in chunks.
  if (!in_place && !input.empty()) std::memcpy(output.data() + mine.begin, input.data(), input.size() * sizeof(T));
  for (int r = 0; r < size_; ++r) {
    const ShardRange part = ShardOf(total, size_, r);
    ST_RETURN_IF_ERROR(ChunkedBroadcast(call, r, output.data() + part.begin, part.size()));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status MpiCommunicator::ChunkedBroadcast(const Call& call, int root, T* data, int64_t count) {
  const int64_t chunk = ChunkElements(sizeof(T));
  for (int64_t begin = 0; begin < count; begin += chunk) {
    const int n = static_cast<int>(std::min(chunk, count - begin));
    MPI_Request request = MPI_REQUEST_NULL;
    ST_RETURN_IF_ERROR(Post(call, MPI_Ibcast(data + begin, n, MpiType<T>(), root, comm_, &request)));
    ST_RETURN_IF_ERROR(Wait(call, absl::MakeSpan(&request, 1)));
  }
  return absl::OkStatus();
}

absl::Status MpiCommunicator::AllReduceSum(absl::Span<double> values) {
  return AllReduceImpl("AllReduceSum<f64>", values);
}
absl::Status MpiCommunicator::AllReduceSum(absl::Span<float> values) {
  return AllReduceImpl("AllReduceSum<f32>", values);
}
absl::Status MpiCommunicator::AllReduceSum(absl::Span<int64_t> values) {
  return AllReduceImpl("AllReduceSum<i64>", values);
}
absl::Status MpiCommunicator::ReduceSum(int root, absl::Span<double> values) {
  return ReduceImpl("ReduceSum<f64>", root, values);
}
absl::Status MpiCommunicator::ReduceSum(int root, absl::Span<float> values) {
  return ReduceImpl("ReduceSum<f32>", root, values);
}
absl::Status MpiCommunicator::ReduceScatterSum(absl::Span<const float> input, absl::Span<float> output) {
  return ReduceScatterImpl("ReduceScatterSum<f32>", input, output);
}
absl::Status MpiCommunicator::ReduceScatterSum(absl::Span<const double> input, absl::Span<double> output) {
  return ReduceScatterImpl("ReduceScatterSum<f64>", input, output);
}
absl::Status MpiCommunicator::AllGather(absl::Span<const float> input, absl::Span<float> output) {
  return AllGatherImpl("AllGather<f32>", input, output);
}
absl::Status MpiCommunicator::AllGather(absl::Span<const double> input, absl::Span<double> output) {
  return AllGatherImpl("AllGather<f64>", input, output);
}

absl::Status MpiCommunicator::Broadcast(int root, std::string* bytes) {
  ST_CHECK(bytes != nullptr);
  ST_CHECK(root >= 0 && root < size_) << "Broadcast root " << root << " in a group of " << size_;
  if (!broken_.ok()) return Broken();
  const Call call = BeginCollective(absl::StrCat("Broadcast(root ", root, ")"));
  header_ = rank_ == root ? static_cast<int64_t>(bytes->size()) : 0;
  MPI_Request request = MPI_REQUEST_NULL;
  ST_RETURN_IF_ERROR(Post(call, MPI_Ibcast(&header_, 1, MPI_INT64_T, root, comm_, &request)));
  ST_RETURN_IF_ERROR(Wait(call, absl::MakeSpan(&request, 1)));
  if (header_ < 0) {
    return Fail(absl::DataLossError(absl::StrCat(Who(), ": ", call.what, " received a negative length ", header_)));
  }
  if (rank_ != root) bytes->resize(static_cast<size_t>(header_));
  return ChunkedBroadcast(call, root, bytes->data(), header_);
}

absl::Status MpiCommunicator::Barrier() {
  if (!broken_.ok()) return Broken();
  const Call call = BeginCollective("Barrier");
  MPI_Request request = MPI_REQUEST_NULL;
  ST_RETURN_IF_ERROR(Post(call, MPI_Ibarrier(comm_, &request)));
  return Wait(call, absl::MakeSpan(&request, 1));
}

// ---- Point to point ----------------------------------------------------------------------------

absl::Status MpiCommunicator::Send(int dest, const std::string& bytes) {
  ST_CHECK(dest >= 0 && dest < size_ && dest != rank_) << "rank " << rank_ << ": Send to " << dest;
  if (!broken_.ok()) return Broken();
  const Call call = BeginMessage(absl::StrCat("Send to rank ", dest, " [", bytes.size(), " bytes]"));
  header_ = static_cast<int64_t>(bytes.size());
  std::vector<MPI_Request> requests;
  requests.reserve(1);
  requests.push_back(MPI_REQUEST_NULL);
  absl::Status posted = Post(call, MPI_Isend(&header_, 1, MPI_INT64_T, dest, kMessageTag, comm_, &requests[0]));
  const int64_t chunk = ChunkElements(1);
  for (int64_t begin = 0; posted.ok() && begin < header_; begin += chunk) {
    requests.push_back(MPI_REQUEST_NULL);
    posted = Post(call, MPI_Isend(bytes.data() + begin, static_cast<int>(std::min(chunk, header_ - begin)), MPI_BYTE,
                                  dest, kMessageTag, comm_, &requests.back()));
  }
  if (!posted.ok()) {
    for (MPI_Request request : requests) {
      if (request != MPI_REQUEST_NULL) abandoned_.push_back(request);
    }
    return posted;
  }
  return Wait(call, absl::MakeSpan(requests));
}

absl::Status MpiCommunicator::Recv(int source, std::string* bytes) {
  ST_CHECK(bytes != nullptr);
  ST_CHECK(source >= 0 && source < size_ && source != rank_) << "rank " << rank_ << ": Recv from " << source;
  if (!broken_.ok()) return Broken();
  const Call call = BeginMessage(absl::StrCat("Recv from rank ", source));
  MPI_Request header = MPI_REQUEST_NULL;
  ST_RETURN_IF_ERROR(Post(call, MPI_Irecv(&header_, 1, MPI_INT64_T, source, kMessageTag, comm_, &header)));
  ST_RETURN_IF_ERROR(Wait(call, absl::MakeSpan(&header, 1), /*receives=*/true));
  if (header_ < 0) {
    return Fail(absl::DataLossError(absl::StrCat(Who(), ": ", call.what, " received a negative length ", header_)));
  }
  bytes->resize(static_cast<size_t>(header_));
  std::vector<MPI_Request> requests;
  const int64_t chunk = ChunkElements(1);
  absl::Status posted;
  for (int64_t begin = 0; posted.ok() && begin < header_; begin += chunk) {
    requests.push_back(MPI_REQUEST_NULL);
    posted = Post(call, MPI_Irecv(bytes->data() + begin, static_cast<int>(std::min(chunk, header_ - begin)),
                                  MPI_BYTE, source, kMessageTag, comm_, &requests.back()));
  }
  if (!posted.ok()) {
    for (MPI_Request request : requests) {
      if (request != MPI_REQUEST_NULL) abandoned_.push_back(request);
    }
    return posted;
  }
  return Wait(call, absl::MakeSpan(requests), /*receives=*/true);
}

void MpiCommunicator::Abort(const absl::Status& why) {
  std::fprintf(stderr, "sigmatune: %s aborts the worker group: %s\n", Who().c_str(), why.ToString().c_str());
  std::fflush(stderr);
  MPI_Abort(comm_, 1);
  std::abort();  // MPI_Abort does not return; should it, the process still ends.
}

}  // namespace sigmatune::comm
