#include "worker/comm/local_communicator.h"

#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "kernels/base/check.h"

namespace sigmatune::comm {

struct LocalGroup::State {
  State(int n, CommOptions o)
      : size(n), options(o), staged(n), op(n), entered(n, 0), left(n, 0), mailbox(n * n) {}
  const int size;
  const CommOptions options;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> staged;  // each rank's input bytes of the current collective
  std::vector<std::string> op;      // what each rank called (mismatches are programmer errors)
  std::vector<int64_t> entered;     // collectives each rank has entered
  std::vector<int64_t> left;        // collectives each rank has finished reading
  std::vector<std::deque<std::string>> mailbox;  // [source * size + dest]
  absl::Status aborted;                           // the first Abort
};

class LocalGroup::Rank final : public Communicator {
 public:
  Rank(std::shared_ptr<State> state, int rank) : state_(std::move(state)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return state_->size; }
  int local_rank() const override { return rank_; }
  int local_size() const override { return state_->size; }
  std::string name() const override { return "threads"; }

  absl::Status AllReduceSum(absl::Span<double> v) override { return AllReduce("AllReduceSum<f64>", v); }
  absl::Status AllReduceSum(absl::Span<float> v) override { return AllReduce("AllReduceSum<f32>", v); }
  absl::Status AllReduceSum(absl::Span<int64_t> v) override { return AllReduce("AllReduceSum<i64>", v); }
  absl::Status ReduceSum(int root, absl::Span<double> v) override { return Reduce("ReduceSum<f64>", root, v); }
  absl::Status ReduceSum(int root, absl::Span<float> v) override { return Reduce("ReduceSum<f32>", root, v); }
  absl::Status ReduceScatterSum(absl::Span<const float> in, absl::Span<float> out) override {
    return ReduceScatter("ReduceScatterSum<f32>", in, out);
  }
  absl::Status ReduceScatterSum(absl::Span<const double> in, absl::Span<double> out) override {
    return ReduceScatter("ReduceScatterSum<f64>", in, out);
  }
  absl::Status AllGather(absl::Span<const float> in, absl::Span<float> out) override {
    return AllGatherImpl("AllGather<f32>", in, out);
  }
  absl::Status AllGather(absl::Span<const double> in, absl::Span<double> out) override {
    return AllGatherImpl("AllGather<f64>", in, out);
  }

  absl::Status Broadcast(int root, std::string* bytes) override {
    ST_CHECK(bytes != nullptr);
    ST_CHECK(root >= 0 && root < size()) << "Broadcast root " << root;
    return Collective(absl::StrCat("Broadcast(root ", root, ")"), rank_ == root ? *bytes : std::string(),
                      [&](const std::vector<std::string>& all) { *bytes = all[root]; });
  }
  absl::Status Barrier() override {
    return Collective("Barrier", std::string(), [](const std::vector<std::string>&) {});
  }

  absl::Status Send(int dest, const std::string& bytes) override {
    ST_CHECK(dest >= 0 && dest < size() && dest != rank_) << "Send to " << dest;
    std::lock_guard<std::mutex> lock(state_->mu);
    if (!broken_.ok()) return Broken();
    if (!state_->aborted.ok()) return Fail(state_->aborted);
    state_->mailbox[rank_ * size() + dest].push_back(bytes);
    state_->cv.notify_all();
    return absl::OkStatus();
  }
  absl::Status Recv(int source, std::string* bytes) override {
    ST_CHECK(bytes != nullptr && source >= 0 && source < size() && source != rank_) << "Recv from " << source;
    std::unique_lock<std::mutex> lock(state_->mu);
    if (!broken_.ok()) return Broken();
    const int64_t call = ++p2p_calls_;
    std::deque<std::string>& box = state_->mailbox[source * size() + rank_];
    const absl::Time deadline = absl::Now() + state_->options.timeout;
    while (box.empty()) {
      if (!state_->aborted.ok()) return Fail(state_->aborted);
      if (!WaitUntil(lock, deadline)) {
        return Fail(absl::DeadlineExceededError(
            absl::StrCat("rank ", rank_, ": Recv #", call, " from rank ", source, " timed out after ",
                         absl::FormatDuration(state_->options.timeout), ": rank ", source, " sent nothing")));
      }
    }
    *bytes = std::move(box.front());
    box.pop_front();
    return absl::OkStatus();
  }

  void Abort(const absl::Status& why) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->aborted.ok()) {
      state_->aborted = absl::AbortedError(absl::StrCat("rank ", rank_, " aborted the group: ", why.message()));
    }
    state_->cv.notify_all();
  }

 private:
  // Waits on the condition variable until `deadline`; false when it passed.
  bool WaitUntil(std::unique_lock<std::mutex>& lock, absl::Time deadline) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    state_->cv.wait_for(lock, absl::ToChronoNanoseconds(std::min(left, absl::Milliseconds(200))));
    return true;
  }
  absl::Status Fail(absl::Status status) {
    if (broken_.ok()) broken_ = status;
    return status;
  }
  absl::Status Broken() const {
    return absl::FailedPreconditionError(
        absl::StrCat("rank ", rank_, ": the group failed earlier (", broken_.message(), ")"));
  }

  // Names the ranks whose counter is below `call`.
  std::string Missing(const std::vector<int64_t>& counters, int64_t call) const {
    std::vector<int> missing;
    for (int r = 0; r < size(); ++r) {
      if (counters[r] < call) missing.push_back(r);
    }
    return absl::StrCat(missing.size() == 1 ? "rank " : "ranks ", absl::StrJoin(missing, ", "));
  }

  // The two-phase rendezvous every collective uses: post `input`, wait for every rank, let `finish`
  // read all inputs, wait until every rank has read them (the staged copies are then reusable).
  absl::Status Collective(const std::string& op, std::string input,
                          const std::function<void(const std::vector<std::string>&)>& finish) {
    std::unique_lock<std::mutex> lock(state_->mu);
    if (!broken_.ok()) return Broken();
    const int64_t call = ++calls_;
    const absl::Time deadline = absl::Now() + state_->options.timeout;
    state_->staged[rank_] = std::move(input);
    state_->op[rank_] = op;
    state_->entered[rank_] = call;
    state_->cv.notify_all();
    for (int phase = 0; phase < 2; ++phase) {
      std::vector<int64_t>& counters = phase == 0 ? state_->entered : state_->left;
      while (true) {
        bool all = true;
        for (int r = 0; r < size(); ++r) all = all && counters[r] >= call;
        if (all) break;
        if (!state_->aborted.ok()) return Fail(state_->aborted);
        if (!WaitUntil(lock, deadline)) {
          return Fail(absl::DeadlineExceededError(absl::StrCat(
              "rank ", rank_, ": ", op, " (collective #", call, ") timed out after ",
              absl::FormatDuration(state_->options.timeout), ": ", Missing(counters, call),
              phase == 0 ? " did not join it" : " did not finish it")));
        }
      }
      if (phase == 0) {
        for (int r = 0; r < size(); ++r) {
          ST_CHECK(state_->op[r] == op) << "collective mismatch at #" << call << ": rank " << rank_ << " called "
                                        << op << ", rank " << r << " called " << state_->op[r];
        }
        finish(state_->staged);
        state_->left[rank_] = call;
        state_->cv.notify_all();
      }
    }
    return absl::OkStatus();
  }

  template <typename T>
  static std::string Bytes(absl::Span<const T> v) {
    return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
  template <typename T>
  static const T* Elements(const std::string& bytes) {
    return reinterpret_cast<const T*>(bytes.data());
  }
  // out[i] = sum over ranks (in rank order) of element begin + i.
  template <typename T>
  void SumInto(const std::vector<std::string>& all, int64_t begin, absl::Span<T> out) {
    for (size_t i = 0; i < out.size(); ++i) {
      T sum = Elements<T>(all[0])[begin + i];
      for (int r = 1; r < size(); ++r) sum += Elements<T>(all[r])[begin + i];
      out[i] = sum;
    }
  }

  template <typename T>
  absl::Status AllReduce(const char* op, absl::Span<T> v) {
    return Collective(absl::StrCat(op, "[", v.size(), "]"), Bytes(absl::Span<const T>(v)),
                      [&](const std::vector<std::string>& all) { SumInto(all, 0, v); });
  }
  template <typename T>
  absl::Status Reduce(const char* op, int root, absl::Span<T> v) {
    ST_CHECK(root >= 0 && root < size()) << op << " root " << root;
    return Collective(absl::StrCat(op, "[", v.size(), "](root ", root, ")"), Bytes(absl::Span<const T>(v)),
                      [&](const std::vector<std::string>& all) {
                        if (rank_ == root) SumInto(all, 0, v);
                      });
  }
  template <typename T>
  absl::Status ReduceScatter(const char* op, absl::Span<const T> in, absl::Span<T> out) {
    const ShardRange part = ShardOf(static_cast<int64_t>(in.size()), size(), rank_);
    ST_CHECK(static_cast<int64_t>(out.size()) == part.size()) << op << ": output is not this rank's part";
    return Collective(absl::StrCat(op, "[", in.size(), "]"), Bytes(in),
                      [&](const std::vector<std::string>& all) { SumInto(all, part.begin, out); });
  }
  template <typename T>
  absl::Status AllGatherImpl(const char* op, absl::Span<const T> in, absl::Span<T> out) {
    const ShardRange part = ShardOf(static_cast<int64_t>(out.size()), size(), rank_);
    ST_CHECK(static_cast<int64_t>(in.size()) == part.size()) << op << ": input is not this rank's part";
    return Collective(absl::StrCat(op, "[", out.size(), "]"), Bytes(in), [&](const std::vector<std::string>& all) {
      for (int r = 0; r < size(); ++r) {
        const ShardRange p = ShardOf(static_cast<int64_t>(out.size()), size(), r);
        if (p.size() > 0) std::memcpy(out.data() + p.begin, all[r].data(), p.size() * sizeof(T));
      }
    });
  }

  std::shared_ptr<State> state_;
  const int rank_;
  int64_t calls_ = 0;
  int64_t p2p_calls_ = 0;
  absl::Status broken_;
};

LocalGroup::LocalGroup(int size, CommOptions options) : state_(std::make_shared<State>(size, options)) {
  ST_CHECK(size >= 1) << "LocalGroup size " << size;
  for (int r = 0; r < size; ++r) ranks_.push_back(std::make_unique<Rank>(state_, r));
}

LocalGroup::~LocalGroup() = default;

int LocalGroup::size() const { return state_->size; }

Communicator* LocalGroup::rank(int r) {
  ST_CHECK(r >= 0 && r < state_->size) << "rank " << r;
  return ranks_[r].get();
}

std::vector<absl::Status> LocalGroup::Run(int size, const std::function<absl::Status(Communicator&)>& fn,
                                          CommOptions options) {
  LocalGroup group(size, options);
  std::vector<absl::Status> results(size);
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      results[r] = fn(*group.rank(r));
      if (!results[r].ok()) group.rank(r)->Abort(results[r]);
    });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

}  // namespace sigmatune::comm
