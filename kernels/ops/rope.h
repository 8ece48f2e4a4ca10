// Rotary position embedding (RoPE) in Hugging Face's "rotate_half" layout, with optional llama3
// frequency scaling and partial rotary dimension.
//
// For x [tokens, heads, head_dim], positions i32 [tokens] (one per token, so packed sequences
// restart at 0), half = rotary_dim / 2, and for i < half with angle a = positions[t] * inv_freq[i]:
//   out[t, h, i]        = x[t, h, i] cos a - x[t, h, i + half] sin a
//   out[t, h, i + half] = x[t, h, i + half] cos a + x[t, h, i] sin a
// and out[.., j] = x[.., j] for j >= rotary_dim (partial rotary: the tail passes through).
// RopeDirection::kBackward rotates by -a: the gradient of the forward (a rotation is orthogonal).
//
// Precision (matches transformers as closely as we can; see RopeInvFreq):
//   the angle is the fp32 product float(position) * inv_freq[i], as LlamaRotaryEmbedding computes
//   it; cos/sin of that fp32 angle are evaluated in double (cpu) or with sincosf (cuda), and the
//   rotation is done in fp32 (f64 on cpu for f64 x) and rounded once to the output dtype. For bf16
//   x, HF rounds cos/sin and each product to bf16; we do not (differences ~1 bf16 ulp).
//
// Contract: x and out contiguous [tokens, heads, head_dim] of the same dtype on the backend's
// device; out may be x itself (in place). positions i32 [tokens] on the same device, >= 0 is not
// required (negative positions rotate backwards). Dtypes: cpu f32/f64; cuda f32/bf16.
#ifndef SIGMATUNE_KERNELS_OPS_ROPE_H_
#define SIGMATUNE_KERNELS_OPS_ROPE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

class CpuContext;

enum class RopeScaling { kNone, kLlama3 };
enum class RopeDirection { kForward, kBackward };

struct RopeConfig {
  double theta = 10000.0;  // rope_theta
  int64_t head_dim = 0;
  int64_t rotary_dim = 0;  // 0 means head_dim; else even and <= head_dim (int(head_dim * partial_rotary_factor))
  RopeScaling scaling = RopeScaling::kNone;
  // llama3 scaling (rope_scaling / rope_parameters of the HF config); used when scaling == kLlama3.
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

// The inverse frequencies, rotary_dim / 2 of them, as transformers computes them in float32:
//   default: inv_freq[i] = 1 / theta^(e_i) with e_i = float32(2i) / float32(rotary_dim) rounded to
//            float32 exactly as torch does; the power is taken in double and rounded once to float32
//            (a correctly rounded float32 pow), then the reciprocal is a float32 division, as in
//            torch's `1.0 / (base ** e)`. With transformers 5.23 / torch 2.15 this reproduces HF's
//            inv_freq bit for bit for the fixtures' configurations (see rope_test).
//   llama3:  _compute_llama3_parameters step by step in float32 arithmetic (wavelen = 2 pi / f,
//            low/high wavelength thresholds, the smooth interpolation), in the same operation order.
// InvalidArgument for a non-positive theta/head_dim, an odd or oversized rotary_dim, or llama3
// factors that are not positive with high_freq_factor > low_freq_factor.
absl::StatusOr<std::vector<float>> RopeInvFreq(const RopeConfig& config);

// Shape checks shared by both backends.
absl::Status CheckRope(const Tensor& x, const Tensor& positions, const RopeConfig& config, const Tensor& out);

namespace cpu {
// cos/sin are formed once per distinct position; ctx (may be null: serial) splits the tokens; the
// results do not depend on it.
absl::Status ApplyRope(const Tensor& x, const Tensor& positions, const RopeConfig& config, RopeDirection direction,
                       Tensor* out, CpuContext* ctx = nullptr);
}  // namespace cpu

namespace cuda {
// One thread per rotated pair; inv_freq travels as a kernel argument (rotary_dim <= 1024).
absl::Status ApplyRope(GpuContext& ctx, const Tensor& x, const Tensor& positions, const RopeConfig& config,
                       RopeDirection direction, Tensor* out);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_ROPE_H_
