// Golden fixtures: named tensors in a safetensors file made by a script under tools/ with
// PyTorch (see tests/testdata/README.md for the versions used). Test-only: reads files.
#ifndef SIGMATUNE_KERNELS_TESTING_GOLDEN_H_
#define SIGMATUNE_KERNELS_TESTING_GOLDEN_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"

namespace sigmatune::testing {

// Loads every tensor of a safetensors file (F32, F64, BF16, F16, I32, I64) onto the CPU.
// Errors name the file and what is wrong with it.
absl::StatusOr<std::map<std::string, Tensor>> LoadGolden(const std::string& path);

// Path of a runfile given its workspace-relative path (e.g. "tests/testdata/ops/eigh.safetensors"),
// using $TEST_SRCDIR/$TEST_WORKSPACE under `bazel test` and the path itself otherwise.
std::string RunfilePath(const std::string& workspace_relative);

}  // namespace sigmatune::testing

#endif  // SIGMATUNE_KERNELS_TESTING_GOLDEN_H_
