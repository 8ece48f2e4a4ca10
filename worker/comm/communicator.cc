#include "worker/comm/communicator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/base/check.h"
#include "kernels/base/status_macros.h"

namespace sigmatune::comm {
namespace {

template <typename T>
absl::Status CopyWhole(const char* op, absl::Span<const T> input, absl::Span<T> output) {
  ST_CHECK(input.size() == output.size()) << op << ": a group of one's part is the whole vector";
  std::copy(input.begin(), input.end(), output.begin());
  return absl::OkStatus();
}

}  // namespace

ShardRange ShardOf(int64_t total, int parts, int index) {
  ST_CHECK(total >= 0 && parts >= 1 && index >= 0 && index < parts);
  const int64_t base = total / parts;
  const int64_t extra = total % parts;
  ShardRange range;
  range.begin = index * base + std::min<int64_t>(index, extra);
  range.end = range.begin + base + (index < extra ? 1 : 0);
  return range;
}

absl::Status Communicator::Gather(int root, const std::string& mine, std::vector<std::string>* all) {
  ST_CHECK(all != nullptr && root >= 0 && root < size());
  if (rank() != root) return Send(root, mine);
  all->assign(size(), std::string());
  for (int r = 0; r < size(); ++r) {
    if (r == root) {
      (*all)[r] = mine;
    } else {
      ST_RETURN_IF_ERROR(Recv(r, &(*all)[r]));
    }
  }
  return absl::OkStatus();
}

absl::Status SingleProcessCommunicator::CheckRoot(const char* op, int root) {
  if (root != 0) return absl::InvalidArgumentError(absl::StrCat(op, ": root ", root, " is not a rank of a group of 1"));
  return absl::OkStatus();
}

absl::Status SingleProcessCommunicator::ReduceScatterSum(absl::Span<const float> input, absl::Span<float> output) {
  return CopyWhole("ReduceScatterSum", input, output);
}
absl::Status SingleProcessCommunicator::ReduceScatterSum(absl::Span<const double> input, absl::Span<double> output) {
  return CopyWhole("ReduceScatterSum", input, output);
}
absl::Status SingleProcessCommunicator::AllGather(absl::Span<const float> input, absl::Span<float> output) {
  return CopyWhole("AllGather", input, output);
}
absl::Status SingleProcessCommunicator::AllGather(absl::Span<const double> input, absl::Span<double> output) {
  return CopyWhole("AllGather", input, output);
}

absl::Status SingleProcessCommunicator::Broadcast(int root, std::string* bytes) {
  ST_CHECK(bytes != nullptr);
  return CheckRoot("Broadcast", root);
}

absl::Status SingleProcessCommunicator::Send(int dest, const std::string&) {
  return absl::UnimplementedError(absl::StrCat("Send to rank ", dest, ": a group of one has no peer"));
}
absl::Status SingleProcessCommunicator::Recv(int source, std::string*) {
  return absl::UnimplementedError(absl::StrCat("Recv from rank ", source, ": a group of one has no peer"));
}

}  // namespace sigmatune::comm
