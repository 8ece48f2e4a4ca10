#include "kernels/testing/model_files.h"

#include <pwd.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

namespace sigmatune::testing {

std::string FindSmolLM2Gguf(std::string* tried) {
  constexpr char kFileName[] = "SmolLM2-135M-Instruct.Q4_1.gguf";
  if (const char* env = std::getenv("SIGMATUNE_SMOLLM2_GGUF"); env != nullptr && *env != '\0') {
    *tried = std::string("$SIGMATUNE_SMOLLM2_GGUF=") + env;
    return std::ifstream(env).good() ? std::string(env) : std::string();
  }
  std::string home;
  if (const passwd* pw = getpwuid(getuid()); pw != nullptr && pw->pw_dir != nullptr) {
    home = pw->pw_dir;
  } else if (const char* h = std::getenv("HOME")) {
    home = h;
  }
  const std::string path = home + "/.cache/sigmatune/models/" + kFileName;
  *tried = path + " (run tools/get_smollm2.sh, or set $SIGMATUNE_SMOLLM2_GGUF with --test_env)";
  return std::ifstream(path).good() ? path : std::string();
}

}  // namespace sigmatune::testing
