// Where tests find large model files that are never committed (tools/get_smollm2.sh fetches them).
// Tests that need one GTEST_SKIP with the reason when it is absent.
#ifndef SIGMATUNE_KERNELS_TESTING_MODEL_FILES_H_
#define SIGMATUNE_KERNELS_TESTING_MODEL_FILES_H_

#include <string>

namespace sigmatune::testing {

// SmolLM2-135M-Instruct Q4_1 GGUF: $SIGMATUNE_SMOLLM2_GGUF (pass it with --test_env), else
// ~/.cache/sigmatune/models/SmolLM2-135M-Instruct.Q4_1.gguf (home from the password database,
// since Bazel points $HOME at the test's temp directory). Returns "" when absent and says where it
// looked in `tried`.
std::string FindSmolLM2Gguf(std::string* tried);

}  // namespace sigmatune::testing

#endif  // SIGMATUNE_KERNELS_TESTING_MODEL_FILES_H_
