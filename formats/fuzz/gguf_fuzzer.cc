// Fuzz target for the GGUF reader: parse arbitrary bytes; when they parse, exercise every accessor,
// the llama config/tokenizer readers and dequantisation of every (small enough) tensor. Any
// crash, CHECK failure or sanitizer report is a bug: malformed input must give an absl::Status.
#include <cstddef>
#include <cstdint>
#include <string>

#include "formats/gguf.h"
#include "formats/gguf_dequant.h"
#include "formats/gguf_llama.h"

namespace {

constexpr int64_t kMaxDequantElems = int64_t{1} << 20;

void Walk(const sigmatune::GgufFile& f, const sigmatune::GgufValue& v, int depth) {
  using sigmatune::GgufValueType;
  switch (v.type) {
    case GgufValueType::kString:
      (void)f.StringValue(v).size();
      break;
    case GgufValueType::kArray:
      if (depth < 3 && v.count <= 4096) {
        for (const sigmatune::GgufValue& e : f.ArrayElements(v)) Walk(f, e, depth + 1);
      }
      break;
    case GgufValueType::kF32:
    case GgufValueType::kF64:
      (void)f.FloatValue(v);
      break;
    default:
      (void)f.IntValue(v);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = sigmatune::GgufFile::FromBytes(
      "fuzz.gguf", std::string(reinterpret_cast<const char*>(data), size));
  if (!file.ok()) return 0;
  const sigmatune::GgufFile& f = *file;
  for (const std::string& key : f.keys()) {
    Walk(f, *f.FindValue(key), 0);
    (void)f.GetU64(key);
    (void)f.GetI64(key);
    (void)f.GetF64(key);
    (void)f.GetString(key);
    (void)f.GetBool(key);
    (void)f.GetStringArray(key);
    (void)f.GetIntArray(key);
    (void)f.GetFloatArray(key);
  }
  auto config = sigmatune::ReadLlamaConfig(f);
  (void)sigmatune::ReadTokenizerData(f);
  for (const sigmatune::GgufTensorInfo& info : f.tensors()) {
    (void)sigmatune::GgufToHfName(info.name);
    if (info.numel > kMaxDequantElems) continue;
    for (sigmatune::DType dt : {sigmatune::DType::kF32, sigmatune::DType::kBF16}) {
      (void)sigmatune::DequantizeTensor(f, info, dt);
    }
    if (config.ok()) {
      auto hf = sigmatune::GgufToHfName(info.name);
      if (hf.ok()) (void)sigmatune::LoadLlamaTensor(f, *hf, *config, sigmatune::DType::kF32);
    }
  }
  return 0;
}
