#include "kernels/testing/golden.h"

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace sigmatune::testing {
namespace {

absl::StatusOr<DType> SafetensorsDType(const std::string& name) {
  if (name == "F32") return DType::kF32;
  if (name == "F64") return DType::kF64;
  if (name == "BF16") return DType::kBF16;
  if (name == "F16") return DType::kF16;
  if (name == "I32") return DType::kI32;
  if (name == "I64") return DType::kI64;
  return absl::InvalidArgumentError(absl::StrCat("unsupported safetensors dtype ", name));
}

}  // namespace

std::string RunfilePath(const std::string& workspace_relative) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  if (srcdir == nullptr || workspace == nullptr) return workspace_relative;
  return absl::StrCat(srcdir, "/", workspace, "/", workspace_relative);
}

absl::StatusOr<std::map<std::string, Tensor>> LoadGolden(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("golden file ", path, " cannot be opened"));
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 8) return absl::DataLossError(absl::StrCat(path, ": shorter than the 8-byte header length"));
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);  // little-endian host
  if (header_len > bytes.size() - 8) {
    return absl::DataLossError(absl::StrCat(path, ": header length ", header_len, " exceeds the file"));
  }
  const nlohmann::json header =
      nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return absl::DataLossError(absl::StrCat(path, ": header is not a JSON object"));
  }
  const size_t data_start = 8 + header_len;
  std::map<std::string, Tensor> tensors;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    if (!entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets")) {
      return absl::DataLossError(absl::StrCat(path, ": tensor '", name, "' lacks dtype/shape/data_offsets"));
    }
    auto dtype = SafetensorsDType(entry["dtype"].get<std::string>());
    if (!dtype.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "': ", dtype.status().message()));
    Shape shape = entry["shape"].get<std::vector<int64_t>>();
    const auto offsets = entry["data_offsets"].get<std::vector<uint64_t>>();
    const uint64_t expected = static_cast<uint64_t>(NumElements(shape)) * SizeOf(*dtype);
    if (offsets.size() != 2 || offsets[1] < offsets[0] || offsets[1] - offsets[0] != expected ||
        data_start + offsets[1] > bytes.size()) {
      return absl::DataLossError(absl::StrCat(path, ": tensor '", name, "' has bad data_offsets for ",
                                              ShapeToString(shape)));
    }
    Tensor t = Tensor::Empty(shape, *dtype);
    if (expected > 0) std::memcpy(t.raw_data(), bytes.data() + data_start + offsets[0], expected);
    tensors.emplace(name, std::move(t));
  }
  return tensors;
}

}  // namespace sigmatune::testing
