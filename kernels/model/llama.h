// The LLaMA-family decoder (LLaMA 2/3, Mistral-style, SmolLM2): forward, backward with a frozen
// base, and greedy generation with a KV cache, on any ModelBackend.
//
// Batches are packed: T tokens of several sequences back to back, described by cu_seqlens
// (i32 [num_seqs + 1], on the CPU), positions (i32 [T], restarting at 0 in each sequence) and
// labels (i32 [T]; labels[t] is the target of token t, already shifted; -100 = ignored).
// Attention never crosses a sequence boundary.
//
// Two extension points:
//  - ModelObserver sees, during Forward, the input of every linear layer once per InputSite (q/k/v
//    share kAttnIn, gate/up share kMlpIn: the covariance collector needs one matrix per site), and
//    during Backward the gradient of every linear's output and of every site's input.
//  - A LinearAdapter per linear (SetAdapter) adds to the layer's output in Forward and, in Backward,
//    produces its own parameter gradients and adds its contribution to the input gradient. The base
//    weights are frozen: no weight gradients are ever formed.
//
// Contract: weights live on the backend's device in the HF [out, in] layout; tensors passed to
// observers/adapters are valid only during the call. A model is not thread safe. Forward keeps the
// activations Backward needs (Recompute::kPerLayer keeps only each layer's input and recomputes
// the rest during Backward); Backward consumes them.
#ifndef SIGMATUNE_KERNELS_MODEL_LLAMA_H_
#define SIGMATUNE_KERNELS_MODEL_LLAMA_H_

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"
#include "kernels/model/backend.h"
#include "kernels/ops/rope.h"

namespace sigmatune::model {

enum class Embeddings { kTied, kSeparate };

struct LlamaConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  double rms_norm_eps = 1e-6;
  kernels::RopeConfig rope;  // rope.head_dim == head_dim
  Embeddings embeddings = Embeddings::kSeparate;

  // InvalidArgument naming the field for sizes that do not fit together.
  absl::Status Validate() const;
};

enum class LinearKind { kQ, kK, kV, kO, kGate, kUp, kDown };
inline constexpr std::array<LinearKind, 7> kAllLinears = {LinearKind::kQ,    LinearKind::kK,  LinearKind::kV,
                                                          LinearKind::kO,    LinearKind::kGate, LinearKind::kUp,
                                                          LinearKind::kDown};
// Which tensor a linear reads.
enum class InputSite { kAttnIn, kAttnOut, kMlpIn, kMlpAct };
InputSite InputSiteOf(LinearKind kind);
// HF module name: "model.layers.3.self_attn.q_proj", "model.layers.3.mlp.down_proj".
std::string LinearName(int64_t layer, LinearKind kind);

struct LayerWeights {
  Tensor input_norm;          // [hidden]
  Tensor q, k, v, o;          // [heads*hd, hidden], [kv*hd, hidden] x2, [hidden, heads*hd]
  Tensor post_norm;           // [hidden]
  Tensor gate, up, down;      // [inter, hidden] x2, [hidden, inter]
  const Tensor& linear(LinearKind kind) const;
};

struct LlamaWeights {
  Tensor embed;       // [vocab, hidden]
  std::vector<LayerWeights> layers;
  Tensor final_norm;  // [hidden]
  Tensor lm_head;     // [vocab, hidden]; the same tensor as embed when tied
};

// Checks every weight's presence, dtype (the backend's activation dtype), device and shape;
// errors name the HF tensor name, its shape and the expected one.
absl::Status ValidateWeights(const LlamaConfig& config, const LlamaWeights& weights, const ModelBackend& backend);

class ModelObserver {
 public:
  virtual ~ModelObserver() = default;
  // x [T, in]: the input of the linears at `site` of `layer`.
  virtual absl::Status OnLinearInput(int64_t layer, InputSite site, const Tensor& x) { return absl::OkStatus(); }
  // dy [T, out]: d loss / d (output of the linear), adapters included.
  virtual absl::Status OnLinearOutputGrad(int64_t layer, LinearKind kind, const Tensor& dy) {
    return absl::OkStatus();
  }
  // dx [T, in]: d loss / d (input at `site`), summed over the linears reading it.
  virtual absl::Status OnLinearInputGrad(int64_t layer, InputSite site, const Tensor& dx) {
    return absl::OkStatus();
  }
};

class LinearAdapter {
 public:
  virtual ~LinearAdapter() = default;
  // y [T, out] holds x W^T; add the adapter's output to it.
  virtual absl::Status Forward(const Tensor& x, Tensor* y) = 0;
  // Accumulate the adapter's parameter gradients from (x, dy) and ADD d(adapter)/dx to dx [T, in].
  virtual absl::Status Backward(const Tensor& x, const Tensor& dy, Tensor* dx) = 0;
};

struct Batch {
  Tensor input_ids;   // i32 [T], on the backend's device
  Tensor positions;   // i32 [T], on the backend's device
  Tensor cu_seqlens;  // i32 [num_seqs + 1], on the CPU
  Tensor labels;      // i32 [T], on the backend's device (may be undefined for Logits/Forward without loss)
};

// Builds a packed Batch on `backend` from host token sequences; labels are the next token of each
// sequence (-100 at each sequence's last token).
absl::StatusOr<Batch> PackCausalLmBatch(ModelBackend& backend, const std::vector<std::vector<int32_t>>& sequences);

enum class Recompute { kNone, kPerLayer };

struct ForwardResult {
  double loss = 0.0;         // mean over non-ignored labels (0 when there are none)
  int64_t num_targets = 0;
};

class LlamaModel {
 public:
  // The backend must outlive the model.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Create(LlamaConfig config, LlamaWeights weights,
                                                            ModelBackend* backend);

  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;
  ~LlamaModel();

  const LlamaConfig& config() const { return config_; }
  const LlamaWeights& weights() const { return weights_; }
  ModelBackend& backend() const { return *backend_; }

  // Not owned; nullptr clears the slot.
  void SetAdapter(int64_t layer, LinearKind kind, LinearAdapter* adapter);
  void set_recompute(Recompute recompute) { recompute_ = recompute; }

  // Loss over batch.labels; keeps what Backward needs (including the lm_head part of the gradient,
  // formed here while the logits are at hand: one [T, vocab] x [vocab, hidden] GEMM).
  absl::StatusOr<ForwardResult> Forward(const Batch& batch, ModelObserver* observer = nullptr);
  // d loss / d parameters of the adapters (via LinearAdapter::Backward). Returns d loss / d input
  // embeddings [T, hidden]. `grad_scale` multiplies the loss gradient (e.g. 1 / accumulation steps).
  absl::StatusOr<Tensor> Backward(ModelObserver* observer = nullptr, double grad_scale = 1.0);
  // A forward pass for the observer only (calibration): runs every layer, keeps nothing, computes
  // no loss (labels may be undefined).
  absl::Status Observe(const Batch& batch, ModelObserver* observer);
  // Full logits [T, vocab] (evaluation; no state kept).
  absl::StatusOr<Tensor> Logits(const Batch& batch);

  // Greedy decoding of one prompt: up to max_new_tokens ids, stopping after any id in stop_ids
  // (which is included). On the fp32 CPU backend with a KV cache; on other backends (CUDA) each
  // step reruns the whole sequence without a cache (quadratic in the length: the evaluation's short
  // answers only; a device KV cache is not written yet).
  absl::StatusOr<std::vector<int32_t>> GenerateGreedy(const std::vector<int32_t>& prompt, int64_t max_new_tokens,
                                                      const std::vector<int32_t>& stop_ids);
  // The same decoding without a cache on any backend: each step runs the whole sequence so far.
  // GenerateGreedy's path off the CPU, and the reference its cached decoder is tested against.
  absl::StatusOr<std::vector<int32_t>> GenerateGreedyWithoutCache(const std::vector<int32_t>& prompt,
                                                                  int64_t max_new_tokens,
                                                                  const std::vector<int32_t>& stop_ids);

 private:
  struct LayerActivations;
  struct KvCache;
  LlamaModel(LlamaConfig config, LlamaWeights weights, ModelBackend* backend);

  // One decoder layer on h [T, hidden] in place, filling `acts`. Without a cache, attention is
  // packed causal self-attention over batch.cu_seqlens; with one (decoding, CPU), the new roped
  // keys/values are appended to it and the T new tokens attend to everything cached so far.
  absl::Status LayerForward(int64_t layer, const Batch& batch, Tensor& h, LayerActivations& acts,
                            ModelObserver* observer, KvCache* cache = nullptr);
  absl::Status LayerBackward(int64_t layer, const Batch& batch, LayerActivations& acts, Tensor& dh,
                             ModelObserver* observer);
  absl::Status Linear(int64_t layer, LinearKind kind, const Tensor& x, Tensor* y);
  absl::Status LinearBackward(int64_t layer, LinearKind kind, const Tensor& x, const Tensor& dy, double beta,
                              Tensor* dx, ModelObserver* observer);
  absl::StatusOr<Tensor> FinalHidden(const Batch& batch, ModelObserver* observer, Tensor* pre_norm);

  LlamaConfig config_;
  LlamaWeights weights_;
  ModelBackend* backend_;
  Recompute recompute_ = Recompute::kNone;
  std::vector<std::array<LinearAdapter*, 7>> adapters_;
  // Saved by Forward for Backward.
  Batch batch_;
  std::vector<std::unique_ptr<LayerActivations>> saved_;
  Tensor saved_final_pre_norm_;
  Tensor saved_dhidden_unit_;  // d (sum of the token losses) / d (normed final hidden)
  int64_t saved_count_ = 0;
  bool have_saved_ = false;
};

}  // namespace sigmatune::model

#endif  // SIGMATUNE_KERNELS_MODEL_LLAMA_H_
