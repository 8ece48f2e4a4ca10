// Fuzz target: the safetensors parser and reader over arbitrary bytes (build_defs/fuzz.bzl).
// Every input must give either a clean error or a reader whose tensors can all be read.
#include <cstddef>
#include <cstdint>
#include <string>

#include "formats/safetensors.h"
#include "kernels/base/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using sigmatune::formats::SafetensorsReader;
  absl::StatusOr<SafetensorsReader> reader =
      SafetensorsReader::FromBuffer(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  if (!reader.ok()) {
    ST_CHECK(!reader.status().message().empty());
    return 0;
  }
  uint64_t checksum = 0;
  for (const std::string& name : reader->names()) {
    absl::StatusOr<absl::string_view> raw = reader->RawBytes(name);
    ST_CHECK(raw.ok()) << raw.status().ToString();
    for (char c : *raw) checksum += static_cast<unsigned char>(c);
    absl::StatusOr<sigmatune::Tensor> t = reader->GetTensor(name);
    if (t.ok()) {
      ST_CHECK_EQ(t->nbytes(), raw->size());
    } else {
      ST_CHECK(t.status().code() == absl::StatusCode::kUnimplemented) << t.status().ToString();
    }
  }
  // A valid file re-serialises (raw tensors) into a file that parses again.
  std::map<std::string, sigmatune::formats::RawTensor> raw_tensors;
  for (const auto& e : reader->entries()) {
    raw_tensors[e.name] = {e.dtype, e.shape, *reader->RawBytes(e.name)};
  }
  absl::StatusOr<std::string> again = sigmatune::formats::SerializeSafetensors(raw_tensors, reader->metadata());
  if (again.ok()) {
    absl::StatusOr<SafetensorsReader> reread = SafetensorsReader::FromBuffer(*again, "fuzz-again");
    ST_CHECK(reread.ok()) << reread.status().ToString();
    ST_CHECK_EQ(reread->entries().size(), reader->entries().size());
  }
  return checksum == 0xFFFFFFFFFFFFFFFFull ? 1 : 0;
}
