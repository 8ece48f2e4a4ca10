// sysinfo: what this build of sigmatune was compiled with and which compute backend it picks on
// this machine. Prints the one-line backend notice, then the BuildInfo message as text.
//   bazel run //tools:sysinfo
// On a machine without a GPU driver it reports the CPU backend and the CUDA runtime's reason;
// it never fails for lack of a GPU.
#include <cstdio>
#include <string>

#include "google/protobuf/text_format.h"
#include "kernels/base/backend.h"
#include "sigmatune/v1/build_info.pb.h"

namespace sigmatune {
namespace {

constexpr char kVersion[] = "0.1.0-dev";

int Main() {
  const BackendChoice choice = ChooseBackend();
  std::printf("%s\n", BackendNotice(choice).c_str());
  v1::BuildInfo info;
  info.set_version(kVersion);
  info.set_cuda_compiled(choice.cuda_build == CudaBuild::kCompiledIn);
  info.set_backend(choice.device.ToString());
  info.set_backend_reason(choice.reason);
  std::string text;
  google::protobuf::TextFormat::PrintToString(info, &text);
  std::printf("%s", text.c_str());
  return 0;
}

}  // namespace
}  // namespace sigmatune

int main() { return sigmatune::Main(); }
