// Fuzz target: the config.json parser over arbitrary bytes (build_defs/fuzz.bzl). Every input must
// give either a clean error or a config whose expected tensor shapes can be computed.
#include <cstddef>
#include <cstdint>

#include "formats/hf_config.h"
#include "kernels/base/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<sigmatune::formats::ModelConfig> config = sigmatune::formats::ParseModelConfig(
      absl::string_view(reinterpret_cast<const char*>(data), size), "fuzz/config.json");
  if (!config.ok()) {
    ST_CHECK(!config.status().message().empty());
    return 0;
  }
  ST_CHECK(config->num_attention_heads % config->num_key_value_heads == 0);
  // Small configs only: a fuzzed num_hidden_layers may be 2^31.
  if (config->num_hidden_layers <= 64) {
    const auto shapes = sigmatune::formats::ExpectedTensorShapes(*config);
    ST_CHECK(sigmatune::formats::CheckCheckpointAgainstConfig(*config, shapes, "fuzz").ok());
  }
  return 0;
}
