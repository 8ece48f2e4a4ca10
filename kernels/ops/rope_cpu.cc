#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/nn_util.h"
#include "kernels/ops/rope.h"

namespace sigmatune::kernels {
namespace {

constexpr char kOp[] = "rope";

template <typename T>
void Rotate(const T* x, const int32_t* positions, int64_t tokens, int64_t heads, int64_t head_dim,
            int64_t rotary_dim, const std::vector<float>& inv_freq, double sign, T* out) {
  const int64_t half = rotary_dim / 2;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(positions[t]) * inv_freq[i];  // fp32, as HF
      const T c = static_cast<T>(std::cos(static_cast<double>(angle)));
      const T s = static_cast<T>(sign * std::sin(static_cast<double>(angle)));
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t base = (t * heads + h) * head_dim;
        const T a = x[base + i], b = x[base + i + half];
        out[base + i] = a * c - b * s;
        out[base + i + half] = b * c + a * s;
      }
    }
    if (out != x) {
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t base = (t * heads + h) * head_dim;
        for (int64_t j = rotary_dim; j < head_dim; ++j) out[base + j] = x[base + j];
      }
    }
  }
}

}  // namespace

absl::StatusOr<std::vector<float>> RopeInvFreq(const RopeConfig& c) {
  const int64_t dim = c.rotary_dim == 0 ? c.head_dim : c.rotary_dim;
  if (!(c.theta > 0) || c.head_dim <= 0 || dim <= 0 || dim % 2 != 0 || dim > c.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("rope: need theta > 0, head_dim > 0 and an even rotary_dim <= "
                                                   "head_dim; got theta ",
                                                   c.theta, ", head_dim ", c.head_dim, ", rotary_dim ", dim));
  }
  std::vector<float> inv(dim / 2);
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(dim);  // torch: arange(float32) / dim
    // torch: 1.0 / (base ** e) in float32, i.e. the power rounded to float32, then a float32
    // reciprocal. The power is taken in double and rounded once (a correctly rounded powf).
    const float power = static_cast<float>(std::pow(c.theta, static_cast<double>(e)));
    inv[i] = 1.0f / power;
  }
  if (c.scaling == RopeScaling::kNone) return inv;
  if (!(c.factor > 0) || !(c.low_freq_factor > 0) || !(c.high_freq_factor > c.low_freq_factor) ||
      c.original_max_position_embeddings <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rope: llama3 scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and "
        "original_max_position_embeddings > 0; got factor ",
        c.factor, ", low_freq_factor ", c.low_freq_factor, ", high_freq_factor ", c.high_freq_factor,
        ", original_max_position_embeddings ", c.original_max_position_embeddings));
  }
  // Python scalars meet float32 tensors: they are rounded to float32 and the op runs in float32.
  const double old_len = static_cast<double>(c.original_max_position_embeddings);
  const float low_wavelen = static_cast<float>(old_len / c.low_freq_factor);
  const float high_wavelen = static_cast<float>(old_len / c.high_freq_factor);
  const float two_pi = static_cast<float>(6.283185307179586);  // 2 * math.pi
  const float factor = static_cast<float>(c.factor);
  const float low = static_cast<float>(c.low_freq_factor);
  const float range = static_cast<float>(c.high_freq_factor - c.low_freq_factor);
  const float old_len_f = static_cast<float>(old_len);
  for (float& f : inv) {
    const float wavelen = (1.0f / f) * two_pi;  // torch: scalar / tensor = reciprocal(tensor) * scalar
    float llama = wavelen > low_wavelen ? f / factor : f;
    const float smooth = ((1.0f / wavelen) * old_len_f - low) / range;
    const float smoothed = (1.0f - smooth) * llama / factor + smooth * llama;
    const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
    if (medium) llama = smoothed;
    f = llama;
  }
  return inv;
}

absl::Status CheckRope(const Tensor& x, const Tensor& positions, const RopeConfig& config, const Tensor& out) {
  ST_RETURN_IF_ERROR(nn::ExpectTensor(x, kOp, "x", {-1, -1, config.head_dim}, {DType::kF32, DType::kF64, DType::kBF16}));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(positions, kOp, "positions", {x.dim(0)}, {DType::kI32}));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(out, kOp, "out", x.shape(), {x.dtype()}));
  return absl::OkStatus();
}

namespace cpu {

absl::Status ApplyRope(const Tensor& x, const Tensor& positions, const RopeConfig& config, RopeDirection direction,
                       Tensor* out) {
  ST_CHECK(out != nullptr);
  ST_RETURN_IF_ERROR(CheckRope(x, positions, config, *out));
  ST_ASSIGN_OR_RETURN(const std::vector<float> inv_freq, RopeInvFreq(config));
  for (const auto& [t, what] : {std::pair<const Tensor*, const char*>{&x, "x"}, {&positions, "positions"}, {out, "out"}}) {
    ST_RETURN_IF_ERROR(nn::ExpectCpu(*t, kOp, what));
  }
  const double sign = direction == RopeDirection::kForward ? 1.0 : -1.0;
  const int64_t rotary_dim = 2 * static_cast<int64_t>(inv_freq.size());
  if (x.dtype() == DType::kF32) {
    Rotate(x.data<float>(), positions.data<int32_t>(), x.dim(0), x.dim(1), x.dim(2), rotary_dim, inv_freq, sign,
           out->data<float>());
  } else if (x.dtype() == DType::kF64) {
    Rotate(x.data<double>(), positions.data<int32_t>(), x.dim(0), x.dim(1), x.dim(2), rotary_dim, inv_freq, sign,
           out->data<double>());
  } else {
    return absl::InvalidArgumentError("cpu rope: x must be f32 or f64, got bf16");
  }
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
