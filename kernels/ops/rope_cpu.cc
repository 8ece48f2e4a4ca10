#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/cpu_context.h"
#include "kernels/ops/nn_util.h"
#include "kernels/ops/rope.h"

namespace sigmatune::kernels {
namespace {

constexpr char kOp[] = "rope";

constexpr int64_t kGrainElements = 1 << 14;  // elements per thread at least

// cos and sign * sin of position * inv_freq[i] (angle in fp32, as HF; cos/sin in double, rounded to T).
template <typename T>
void CosSin(int32_t position, const std::vector<float>& inv_freq, double sign, T* c, T* s) {
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const float angle = static_cast<float>(position) * inv_freq[i];
    c[i] = static_cast<T>(std::cos(static_cast<double>(angle)));
    s[i] = static_cast<T>(sign * std::sin(static_cast<double>(angle)));
  }
}

// Tokens [begin, end); cs holds, per token t, cos at cs[t][0, half) and sin at cs[t][half, 2 half).
template <typename T>
void Rotate(const T* x, int64_t begin, int64_t end, int64_t heads, int64_t head_dim, int64_t rotary_dim,
            const T* const* cs, T* out) {
  const int64_t half = rotary_dim / 2;
  for (int64_t t = begin; t < end; ++t) {
    const T* c = cs[t];
    const T* s = cs[t] + half;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t base = (t * heads + h) * head_dim;
      const T* xa = x + base;
      const T* xb = x + base + half;
      T* oa = out + base;
      T* ob = out + base + half;
      for (int64_t i = 0; i < half; ++i) {
        const T a = xa[i], b = xb[i];
        oa[i] = a * c[i] - b * s[i];
        ob[i] = b * c[i] + a * s[i];
      }
      if (out != x) {
        for (int64_t j = rotary_dim; j < head_dim; ++j) out[base + j] = x[base + j];
      }
    }
  }
}

// cos/sin once per distinct position (packed sequences repeat positions), then the rotation.
template <typename T>
void Apply(const T* x, const int32_t* positions, int64_t tokens, int64_t heads, int64_t head_dim,
           const std::vector<float>& inv_freq, double sign, T* out, CpuContext* ctx) {
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  int32_t lo = 0, hi = -1;
  if (tokens > 0) lo = hi = positions[0];
  for (int64_t t = 1; t < tokens; ++t) {
    lo = std::min(lo, positions[t]);
    hi = std::max(hi, positions[t]);
  }
  const int64_t range = static_cast<int64_t>(hi) - lo + 1;
  const bool by_position = range <= tokens;  // else one row per token
  const int64_t table_rows = by_position ? range : tokens;
  std::vector<T> table(static_cast<size_t>(table_rows * 2 * half));
  std::vector<const T*> cs(tokens);
  for (int64_t r = 0; r < table_rows; ++r) {
    T* row = table.data() + r * 2 * half;
    CosSin(by_position ? static_cast<int32_t>(lo + r) : positions[r], inv_freq, sign, row, row + half);
  }
  for (int64_t t = 0; t < tokens; ++t) {
    cs[t] = table.data() + (by_position ? positions[t] - lo : t) * 2 * half;
  }
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(heads * head_dim, 1));
  ParallelFor(ctx, tokens, grain, [&](int64_t begin, int64_t end) {
    Rotate(x, begin, end, heads, head_dim, 2 * half, cs.data(), out);
  });
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
                       Tensor* out, CpuContext* ctx) {
  ST_CHECK(out != nullptr);
  ST_RETURN_IF_ERROR(CheckRope(x, positions, config, *out));
  ST_ASSIGN_OR_RETURN(const std::vector<float> inv_freq, RopeInvFreq(config));
  for (const auto& [t, what] : {std::pair<const Tensor*, const char*>{&x, "x"}, {&positions, "positions"}, {out, "out"}}) {
    ST_RETURN_IF_ERROR(nn::ExpectCpu(*t, kOp, what));
  }
  const double sign = direction == RopeDirection::kForward ? 1.0 : -1.0;
  if (x.dtype() == DType::kF32) {
    Apply(x.data<float>(), positions.data<int32_t>(), x.dim(0), x.dim(1), x.dim(2), inv_freq, sign,
          out->data<float>(), ctx);
  } else if (x.dtype() == DType::kF64) {
    Apply(x.data<double>(), positions.data<int32_t>(), x.dim(0), x.dim(1), x.dim(2), inv_freq, sign,
          out->data<double>(), ctx);
  } else {
    return absl::InvalidArgumentError("cpu rope: x must be f32 or f64, got bf16");
  }
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
