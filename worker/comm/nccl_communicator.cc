#include "worker/comm/nccl_communicator.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "kernels/base/check.h"
#include "kernels/base/status_macros.h"

namespace sigmatune::comm {
namespace {

// Polling: spin this long, then sleep from kFirstNap up to kLongestNap between queries.
constexpr absl::Duration kSpin = absl::Microseconds(200);
constexpr absl::Duration kFirstNap = absl::Microseconds(50);
constexpr absl::Duration kLongestNap = absl::Milliseconds(1);

template <typename T>
ncclDataType_t NcclType();
template <>
ncclDataType_t NcclType<float>() {
  return ncclFloat32;
}
template <>
ncclDataType_t NcclType<double>() {
  return ncclFloat64;
}
template <>
ncclDataType_t NcclType<int64_t>() {
  return ncclInt64;
}

// Sleeps between polls: not at all at first, then longer and longer up to kLongestNap, never
// past `deadline`.
class Backoff {
 public:
  explicit Backoff(absl::Time deadline) : deadline_(deadline), spin_until_(absl::Now() + kSpin) {}
  // False once the deadline has passed.
  bool Pause() {
    const absl::Time now = absl::Now();
    if (now >= deadline_) return false;
    if (now < spin_until_) return true;
    absl::SleepFor(std::min(nap_, deadline_ - now));
    nap_ = std::min(nap_ * 2, kLongestNap);
    return true;
  }

 private:
  const absl::Time deadline_;
  const absl::Time spin_until_;
  absl::Duration nap_ = kFirstNap;
};

}  // namespace

struct NcclCommunicator::Call {
  std::string what;  // "AllReduceSum<f32>[100] (collective #3)"
  absl::Time deadline;
};

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(CommOptions options) {
  ST_ASSIGN_OR_RETURN(std::unique_ptr<MpiCommunicator> control, MpiCommunicator::Create(options));
  std::unique_ptr<NcclCommunicator> comm = absl::WrapUnique(new NcclCommunicator(std::move(control), options));
  ST_RETURN_IF_ERROR(comm->Init());
  return comm;
}

NcclCommunicator::NcclCommunicator(std::unique_ptr<MpiCommunicator> control, CommOptions options)
    : control_(std::move(control)), options_(options) {}

absl::Status NcclCommunicator::Init() {
  // Every rank learns whether every rank has its GPU, so none waits for a peer that gave up.
  int count = 0;
  absl::Status device_status;
  const cudaError_t counted = cudaGetDeviceCount(&count);
  if (counted != cudaSuccess) {
    device_status = absl::UnavailableError(
        absl::StrCat(Who(), ": NCCL needs a CUDA device, but none can be used: ", cudaGetErrorString(counted)));
  } else if (local_size() > count) {
    device_status = absl::FailedPreconditionError(absl::StrCat(
        Who(), ": NCCL needs one GPU per local rank, but ", local_size(), " ranks run on host ", control_->hostname(),
        " and it has ", count, " CUDA device(s); start at most ", count, " ranks per host"));
  } else if (const cudaError_t set = cudaSetDevice(local_rank()); set != cudaSuccess) {
    device_status = absl::UnavailableError(
        absl::StrCat(Who(), ": cudaSetDevice(", local_rank(), ") failed: ", cudaGetErrorString(set)));
  }
  std::vector<int64_t> failed = {device_status.ok() ? 0 : 1};
  ST_RETURN_IF_ERROR(Control(control_->AllReduceSum(absl::MakeSpan(failed))));
  if (!device_status.ok()) return Fail(device_status);
  if (failed[0] > 0) {
    return Fail(absl::FailedPreconditionError(
        absl::StrCat(Who(), ": ", failed[0], " rank(s) could not select their GPU (see their errors)")));
  }
  device_ = local_rank();
  const Call setup{"NCCL communicator set-up", absl::Now() + options_.timeout};
  ST_RETURN_IF_ERROR(CheckCuda(setup, cudaStreamCreate(&stream_), "cudaStreamCreate"));

  // Rank 0 makes the id and broadcasts it over MPI (an empty id when it could not).
  std::string id_bytes;
  absl::Status id_status;
  if (rank() == 0) {
    ncclUniqueId id;
    const ncclResult_t made = ncclGetUniqueId(&id);
    if (made == ncclSuccess) {
      id_bytes.assign(reinterpret_cast<const char*>(&id), sizeof(id));
    } else {
      id_status = absl::UnavailableError(
          absl::StrCat(Who(), ": ncclGetUniqueId failed: ", ncclGetErrorString(made)));
    }
  }
  ST_RETURN_IF_ERROR(Control(control_->Broadcast(0, &id_bytes)));
  if (!id_status.ok()) return Fail(id_status);
  if (id_bytes.size() != sizeof(ncclUniqueId)) {
    return Fail(absl::UnavailableError(absl::StrCat(Who(), ": rank 0 could not create the NCCL id")));
  }
  ncclUniqueId id;
  std::memcpy(&id, id_bytes.data(), sizeof(id));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // calls return at once; Enqueue and Finish poll with the deadline
  return Enqueue(setup, ncclCommInitRankConfig(&comm_, size(), id, rank(), &config));
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ != nullptr) {
    // Every call waited for its work, so finalising only has to reach quiescence with the peers;
    // should that not happen within the timeout, the communicator is aborted instead.
    bool finalized = false;
    const ncclResult_t started = ncclCommFinalize(comm_);
    if (started == ncclSuccess || started == ncclInProgress) {
      Backoff backoff(absl::Now() + options_.timeout);
      ncclResult_t state = ncclInProgress;
      while (ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state == ncclInProgress && backoff.Pause()) {
      }
      finalized = state == ncclSuccess;
    }
    if (finalized) {
      ncclCommDestroy(comm_);
    } else {
      ncclCommAbort(comm_);
    }
    comm_ = nullptr;
  }
  if (scratch_ != nullptr) cudaFree(scratch_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

std::string NcclCommunicator::Who() const {
  return absl::StrCat("rank ", rank(), " (host ", control_->hostname(), ")");
}

NcclCommunicator::Call NcclCommunicator::Begin(const std::string& op) {
  return Call{absl::StrCat(op, " (collective #", ++collectives_, ")"), absl::Now() + options_.timeout};
}

absl::Status NcclCommunicator::Fail(absl::Status status) {
  if (comm_ != nullptr) {
    ncclCommAbort(comm_);  // ends whatever the device still runs for this communicator
    comm_ = nullptr;
  }
  if (broken_.ok()) broken_ = status;
  return status;
}

absl::Status NcclCommunicator::Broken() const {
  return absl::FailedPreconditionError(
      absl::StrCat(Who(), ": the communicator failed earlier and cannot be used again (", broken_.message(), ")"));
}

absl::Status NcclCommunicator::Control(absl::Status status) {
  if (!status.ok()) return Fail(std::move(status));
  return status;
}

absl::Status NcclCommunicator::CheckCuda(const Call& call, cudaError_t code, const char* what) {
  if (code == cudaSuccess) return absl::OkStatus();
  return Fail(absl::InternalError(
      absl::StrCat(Who(), ": ", call.what, ": ", what, " failed: ", cudaGetErrorString(code))));
}

absl::Status NcclCommunicator::Enqueue(const Call& call, ncclResult_t result) {
  // comm_ can only be null here after a failed ncclCommInitRankConfig.
  auto nccl_error = [&](ncclResult_t code) {
    const char* last = comm_ != nullptr ? ncclGetLastError(comm_) : nullptr;
    return absl::UnavailableError(absl::StrCat(Who(), ": ", call.what, " failed: ", ncclGetErrorString(code),
                                               last != nullptr && last[0] != '\0' ? absl::StrCat(" (", last, ")")
                                                                                   : std::string()));
  };
  if (result == ncclSuccess) return absl::OkStatus();
  if (result != ncclInProgress || comm_ == nullptr) return Fail(nccl_error(result));
  Backoff backoff(call.deadline);
  while (true) {
    ncclResult_t state = ncclInProgress;
    const ncclResult_t queried = ncclCommGetAsyncError(comm_, &state);
    if (queried != ncclSuccess) return Fail(nccl_error(queried));
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) return Fail(nccl_error(state));
    if (!backoff.Pause()) {
      return Fail(absl::DeadlineExceededError(absl::StrCat(Who(), ": ", call.what, " did not complete within ",
                                                           absl::FormatDuration(options_.timeout),
                                                           "; a peer is dead or stuck")));
    }
  }
}

absl::Status NcclCommunicator::Finish(const Call& call) {
  Backoff backoff(call.deadline);
  while (true) {
    const cudaError_t query = cudaStreamQuery(stream_);
    if (query == cudaSuccess) return absl::OkStatus();
    if (query != cudaErrorNotReady) return CheckCuda(call, query, "cudaStreamQuery");
    ncclResult_t state = ncclSuccess;
    const ncclResult_t queried = ncclCommGetAsyncError(comm_, &state);
    if (queried != ncclSuccess || (state != ncclSuccess && state != ncclInProgress)) {
      const ncclResult_t code = queried != ncclSuccess ? queried : state;
      const char* last = ncclGetLastError(comm_);
      return Fail(absl::UnavailableError(absl::StrCat(
          Who(), ": ", call.what, " failed: ", ncclGetErrorString(code),
          last != nullptr && last[0] != '\0' ? absl::StrCat(" (", last, ")") : std::string())));
    }
    if (!backoff.Pause()) {
      return Fail(absl::DeadlineExceededError(absl::StrCat(Who(), ": ", call.what, " did not complete within ",
                                                           absl::FormatDuration(options_.timeout),
                                                           "; a peer is dead or stuck")));
    }
  }
}

absl::Status NcclCommunicator::EnsureScratch(const Call& call, size_t bytes) {
  if (bytes <= scratch_bytes_) return absl::OkStatus();
  // The stream is idle between calls, so the old buffer is no longer in use.
  if (scratch_ != nullptr) cudaFree(scratch_);
  scratch_ = nullptr;
  scratch_bytes_ = 0;
  const cudaError_t code = cudaMalloc(&scratch_, bytes);
  if (code == cudaErrorMemoryAllocation) {
    scratch_ = nullptr;
    return Fail(absl::ResourceExhaustedError(absl::StrCat(Who(), ": ", call.what, ": no room for ", bytes,
                                                          " bytes of padded scratch on device ", device_)));
  }
  ST_RETURN_IF_ERROR(CheckCuda(call, code, "cudaMalloc"));
  scratch_bytes_ = bytes;
  return absl::OkStatus();
}

// ---- Collectives -------------------------------------------------------------------------------

template <typename T>
absl::Status NcclCommunicator::AllReduceImpl(const char* op, absl::Span<T> values) {
  if (!broken_.ok()) return Broken();
  const Call call = Begin(absl::StrCat(op, "[", values.size(), "]"));
  if (values.empty()) return absl::OkStatus();
  ST_RETURN_IF_ERROR(CheckCuda(call, cudaSetDevice(device_), "cudaSetDevice"));
  ST_RETURN_IF_ERROR(
      Enqueue(call, ncclAllReduce(values.data(), values.data(), values.size(), NcclType<T>(), ncclSum, comm_, stream_)));
  return Finish(call);
}

template <typename T>
absl::Status NcclCommunicator::ReduceImpl(const char* op, int root, absl::Span<T> values) {
  ST_CHECK(root >= 0 && root < size()) << op << " root " << root << " in a group of " << size();
  if (!broken_.ok()) return Broken();
  const Call call = Begin(absl::StrCat(op, "[", values.size(), "](root ", root, ")"));
  if (values.empty()) return absl::OkStatus();
  ST_RETURN_IF_ERROR(CheckCuda(call, cudaSetDevice(device_), "cudaSetDevice"));
  // In place: NCCL writes the receive buffer on the root only.
  ST_RETURN_IF_ERROR(Enqueue(
      call, ncclReduce(values.data(), values.data(), values.size(), NcclType<T>(), ncclSum, root, comm_, stream_)));
  return Finish(call);
}

template <typename T>
absl::Status NcclCommunicator::ReduceScatterImpl(const char* op, absl::Span<const T> input, absl::Span<T> output) {
  const int64_t total = static_cast<int64_t>(input.size());
  const int n = size();
  const ShardRange mine = ShardOf(total, n, rank());
  ST_CHECK(static_cast<int64_t>(output.size()) == mine.size())
      << op << ": output holds " << output.size() << " elements, this rank's part " << mine.size();
  if (!broken_.ok()) return Broken();
  const Call call = Begin(absl::StrCat(op, "[", total, "]"));
  if (total == 0) return absl::OkStatus();
  ST_RETURN_IF_ERROR(CheckCuda(call, cudaSetDevice(device_), "cudaSetDevice"));
  const size_t part = static_cast<size_t>(ShardOf(total, n, 0).size());  // the largest part
  if (total % n == 0) {
    ST_RETURN_IF_ERROR(
        Enqueue(call, ncclReduceScatter(input.data(), output.data(), part, NcclType<T>(), ncclSum, comm_, stream_)));
    return Finish(call);
  }
  // Equal parts for NCCL: part r at r * `part` of the scratch (the padding slots are summed but
  // never read), then this rank's sum from the slot after them.
  ST_RETURN_IF_ERROR(EnsureScratch(call, (n + 1) * part * sizeof(T)));
  T* const padded = static_cast<T*>(scratch_);
  T* const sum = padded + n * part;
  for (int r = 0; r < n; ++r) {
    const ShardRange p = ShardOf(total, n, r);
    if (p.size() == 0) continue;
    ST_RETURN_IF_ERROR(CheckCuda(call,
                                 cudaMemcpyAsync(padded + r * part, input.data() + p.begin, p.size() * sizeof(T),
                                                 cudaMemcpyDeviceToDevice, stream_),
                                 "cudaMemcpyAsync"));
  }
  ST_RETURN_IF_ERROR(Enqueue(call, ncclReduceScatter(padded, sum, part, NcclType<T>(), ncclSum, comm_, stream_)));
  if (mine.size() > 0) {
    ST_RETURN_IF_ERROR(CheckCuda(
        call, cudaMemcpyAsync(output.data(), sum, mine.size() * sizeof(T), cudaMemcpyDeviceToDevice, stream_),
        "cudaMemcpyAsync"));
  }
  return Finish(call);
}

template <typename T>
absl::Status NcclCommunicator::AllGatherImpl(const char* op, absl::Span<const T> input, absl::Span<T> output) {
  const int64_t total = static_cast<int64_t>(output.size());
  const int n = size();
  const ShardRange mine = ShardOf(total, n, rank());
  ST_CHECK(static_cast<int64_t>(input.size()) == mine.size())
      << op << ": input holds " << input.size() << " elements, this rank's part " << mine.size();
  if (!broken_.ok()) return Broken();
  const Call call = Begin(absl::StrCat(op, "[", total, "]"));
  if (total == 0) return absl::OkStatus();
  ST_RETURN_IF_ERROR(CheckCuda(call, cudaSetDevice(device_), "cudaSetDevice"));
  const size_t part = static_cast<size_t>(ShardOf(total, n, 0).size());  // the largest part
  if (total % n == 0) {
    ST_RETURN_IF_ERROR(Enqueue(call, ncclAllGather(input.data(), output.data(), part, NcclType<T>(), comm_, stream_)));
    return Finish(call);
  }
  // Equal parts for NCCL: this rank's part padded in the first slot of the scratch, every rank's
  // padded part after it, then each part copied to its place.
  ST_RETURN_IF_ERROR(EnsureScratch(call, (n + 1) * part * sizeof(T)));
  T* const send = static_cast<T*>(scratch_);
  T* const gathered = send + part;
  if (mine.size() > 0) {
    ST_RETURN_IF_ERROR(CheckCuda(
        call, cudaMemcpyAsync(send, input.data(), mine.size() * sizeof(T), cudaMemcpyDeviceToDevice, stream_),
        "cudaMemcpyAsync"));
  }
  ST_RETURN_IF_ERROR(Enqueue(call, ncclAllGather(send, gathered, part, NcclType<T>(), comm_, stream_)));
  for (int r = 0; r < n; ++r) {
    const ShardRange p = ShardOf(total, n, r);
    if (p.size() == 0) continue;
    ST_RETURN_IF_ERROR(CheckCuda(call,
                                 cudaMemcpyAsync(output.data() + p.begin, gathered + r * part, p.size() * sizeof(T),
                                                 cudaMemcpyDeviceToDevice, stream_),
                                 "cudaMemcpyAsync"));
  }
  return Finish(call);
}

absl::Status NcclCommunicator::AllReduceSum(absl::Span<double> values) {
  return AllReduceImpl("AllReduceSum<f64>", values);
}
absl::Status NcclCommunicator::AllReduceSum(absl::Span<float> values) {
  return AllReduceImpl("AllReduceSum<f32>", values);
}
absl::Status NcclCommunicator::AllReduceSum(absl::Span<int64_t> values) {
  return AllReduceImpl("AllReduceSum<i64>", values);
}
absl::Status NcclCommunicator::ReduceSum(int root, absl::Span<double> values) {
  return ReduceImpl("ReduceSum<f64>", root, values);
}
absl::Status NcclCommunicator::ReduceSum(int root, absl::Span<float> values) {
  return ReduceImpl("ReduceSum<f32>", root, values);
}
absl::Status NcclCommunicator::ReduceScatterSum(absl::Span<const float> input, absl::Span<float> output) {
  return ReduceScatterImpl("ReduceScatterSum<f32>", input, output);
}
absl::Status NcclCommunicator::ReduceScatterSum(absl::Span<const double> input, absl::Span<double> output) {
  return ReduceScatterImpl("ReduceScatterSum<f64>", input, output);
}
absl::Status NcclCommunicator::AllGather(absl::Span<const float> input, absl::Span<float> output) {
  return AllGatherImpl("AllGather<f32>", input, output);
}
absl::Status NcclCommunicator::AllGather(absl::Span<const double> input, absl::Span<double> output) {
  return AllGatherImpl("AllGather<f64>", input, output);
}

// ---- Control plane (MPI, host strings) ---------------------------------------------------------

absl::Status NcclCommunicator::Broadcast(int root, std::string* bytes) {
  if (!broken_.ok()) return Broken();
  return Control(control_->Broadcast(root, bytes));
}
absl::Status NcclCommunicator::Barrier() {
  if (!broken_.ok()) return Broken();
  return Control(control_->Barrier());
}
absl::Status NcclCommunicator::Send(int dest, const std::string& bytes) {
  if (!broken_.ok()) return Broken();
  return Control(control_->Send(dest, bytes));
}
absl::Status NcclCommunicator::Recv(int source, std::string* bytes) {
  if (!broken_.ok()) return Broken();
  return Control(control_->Recv(source, bytes));
}

void NcclCommunicator::Abort(const absl::Status& why) {
  if (comm_ != nullptr) {
    ncclCommAbort(comm_);
    comm_ = nullptr;
  }
  control_->Abort(why);
}

}  // namespace sigmatune::comm
