#include "worker/comm/communicator.h"

#include "absl/strings/str_cat.h"
#include "kernels/base/check.h"

namespace sigmatune::comm {

absl::Status SingleProcessCommunicator::Broadcast(int root, std::string* bytes) {
  ST_CHECK(bytes != nullptr);
  if (root != 0) return absl::InvalidArgumentError(absl::StrCat("Broadcast: root ", root, " is not a rank of a group of 1"));
  return absl::OkStatus();
}

}  // namespace sigmatune::comm
