#include "formats/gguf_dequant.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/check.h"
#include "kernels/base/dtype.h"
#include "kernels/base/status_macros.h"

namespace sigmatune {
namespace {

float HalfAt(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return Float16ToFloat(Float16{bits});
}

// Block layouts per ggml-common.h; each mirrors gguf-py quants.py's float32 operation order.
// Q8_0 {f16 d; i8 q[32]}: x = q * d.
void Q8_0Block(const uint8_t* b, float* y) {
  const float d = HalfAt(b);
  const int8_t* q = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(q[j]) * d;
}

// Q4_0 {f16 d; u8 qs[16]}: low nibbles are elements 0..15, high nibbles 16..31; x = d * (q - 8).
void Q4_0Block(const uint8_t* b, float* y) {
  const float d = HalfAt(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 15) - 8);
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

// Q4_1 {f16 d; f16 m; u8 qs[16]}: x = d * q + m (two roundings, as numpy does).
void Q4_1Block(const uint8_t* b, float* y) {
  const float d = HalfAt(b);
  const float m = HalfAt(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    const float lo = d * static_cast<float>(qs[j] & 15);
    const float hi = d * static_cast<float>(qs[j] >> 4);
    y[j] = lo + m;
    y[j + 16] = hi + m;
  }
}

// Q4_K {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}: 8 sub-blocks of 32 with 6-bit scale/min.
// x = (d * sc) * q - (dmin * m).
void Q4_KBlock(const uint8_t* b, float* y) {
  const float d = HalfAt(b);
  const float dmin = HalfAt(b + 2);
  const uint8_t* s = b + 4;
  const uint8_t* qs = b + 16;
  for (int j = 0; j < 8; ++j) {
    uint8_t sc;
    uint8_t mn;
    if (j < 4) {
      sc = s[j] & 63;
      mn = s[j + 4] & 63;
    } else {
      sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
      mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
    const float dl = d * static_cast<float>(sc);
    const float ml = dmin * static_cast<float>(mn);
    const uint8_t* q = qs + 32 * (j / 2);
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) {
      const float prod = dl * static_cast<float>((q[l] >> shift) & 15);
      y[32 * j + l] = prod - ml;
    }
  }
}

// Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d} (d last): x = (d * sc[i/16]) * (q - 32).
void Q6_KBlock(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = HalfAt(b + 208);
  float ds[16];
  for (int i = 0; i < 16; ++i) ds[i] = d * static_cast<float>(sc[i]);
  for (int n = 0; n < 2; ++n) {
    const uint8_t* l8 = ql + 64 * n;
    const uint8_t* h8 = qh + 32 * n;
    float* o = y + 128 * n;
    const float* dsn = ds + 8 * n;
    for (int l = 0; l < 32; ++l) {
      const int h = h8[l];
      const int q0 = ((l8[l] & 15) | ((h & 3) << 4)) - 32;
      const int q1 = ((l8[l + 32] & 15) | (((h >> 2) & 3) << 4)) - 32;
      const int q2 = ((l8[l] >> 4) | (((h >> 4) & 3) << 4)) - 32;
      const int q3 = ((l8[l + 32] >> 4) | (((h >> 6) & 3) << 4)) - 32;
      o[l] = dsn[l / 16] * static_cast<float>(q0);
      o[l + 32] = dsn[2 + l / 16] * static_cast<float>(q1);
      o[l + 64] = dsn[4 + l / 16] * static_cast<float>(q2);
      o[l + 96] = dsn[6 + l / 16] * static_cast<float>(q3);
    }
  }
}

}  // namespace

void DequantizeBlocks(GgmlType type, absl::Span<const uint8_t> src, absl::Span<float> out) {
  ST_CHECK(GgmlTypeCanDequantize(type)) << "no dequantiser for " << GgmlTypeName(type);
  const GgmlTypeTraits& t = GgmlTraits(type);
  ST_CHECK_EQ(out.size() % t.block_elems, 0u);
  const size_t blocks = out.size() / t.block_elems;
  ST_CHECK_EQ(src.size(), blocks * t.block_bytes) << GgmlTypeName(type);
  const uint8_t* s = src.data();
  float* y = out.data();
  switch (type) {
    case GgmlType::kF32:
      if (!out.empty()) std::memcpy(y, s, out.size() * 4);
      return;
    case GgmlType::kF16:
      for (size_t i = 0; i < blocks; ++i) y[i] = HalfAt(s + 2 * i);
      return;
    case GgmlType::kBF16:
      for (size_t i = 0; i < blocks; ++i) {
        uint16_t bits;
        std::memcpy(&bits, s + 2 * i, 2);
        y[i] = BFloat16ToFloat(BFloat16{bits});
      }
      return;
    default:
      break;
  }
  void (*block_fn)(const uint8_t*, float*) = nullptr;
  switch (type) {
    case GgmlType::kQ8_0: block_fn = Q8_0Block; break;
    case GgmlType::kQ4_0: block_fn = Q4_0Block; break;
    case GgmlType::kQ4_1: block_fn = Q4_1Block; break;
    case GgmlType::kQ4_K: block_fn = Q4_KBlock; break;
    case GgmlType::kQ6_K: block_fn = Q6_KBlock; break;
    default: ST_CHECK(false) << "unreachable: " << GgmlTypeName(type);
  }
  for (size_t i = 0; i < blocks; ++i) block_fn(s + i * t.block_bytes, y + i * t.block_elems);
}

absl::StatusOr<Tensor> DequantizeTensor(const GgufFile& file, const GgufTensorInfo& info,
                                        DType out) {
  ST_CHECK(out == DType::kF32 || out == DType::kBF16)
      << "DequantizeTensor to " << DTypeName(out) << " (only f32 and bf16)";
  if (!GgmlTypeCanDequantize(info.type)) {
    return absl::UnimplementedError(absl::StrCat(
        "gguf ", file.path(), ": tensor '", info.name, "' has ggml type ", GgmlTypeName(info.type),
        ", which sigmatune cannot dequantise (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, "
        "Q6_K)"));
  }
  const GgufTensorBytes bytes = file.TensorBytes(info);
  if (out == DType::kF32) {
    Tensor t = Tensor::Empty(info.shape, DType::kF32);
    DequantizeBlocks(info.type, bytes.bytes,
                     absl::Span<float>(t.data<float>(), static_cast<size_t>(info.numel)));
    return t;
  }
  // bf16: dequantise one row (ggml_dims[0] elements, whole blocks) at a time into f32 scratch.
  Tensor t = Tensor::Empty(info.shape, DType::kBF16);
  const int64_t row = info.ggml_dims.empty() ? 1 : info.ggml_dims[0];
  if (info.numel == 0 || row == 0) return t;
  const int64_t rows = info.numel / row;
  const size_t row_bytes = bytes.bytes.size() / static_cast<size_t>(rows);
  std::vector<float> scratch(static_cast<size_t>(row));
  BFloat16* dst = t.data<BFloat16>();
  for (int64_t r = 0; r < rows; ++r) {
    DequantizeBlocks(info.type, bytes.bytes.subspan(static_cast<size_t>(r) * row_bytes, row_bytes),
                     absl::Span<float>(scratch));
    for (int64_t j = 0; j < row; ++j) dst[r * row + j] = FloatToBFloat16(scratch[j]);
  }
  return t;
}

absl::StatusOr<Tensor> DequantizeTensor(const GgufFile& file, absl::string_view name, DType out) {
  const GgufTensorInfo* info = file.FindTensor(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat("gguf ", file.path(), ": no tensor '", name, "'"));
  }
  return DequantizeTensor(file, *info, out);
}

}  // namespace sigmatune
