#include "kernels/model/llama.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"

namespace sigmatune::model {

using kernels::Transpose;

struct LlamaModel::LayerActivations {
  Tensor h_in;              // [T, d] the layer's input (residual stream)
  Tensor xn1;               // [T, d] input_layernorm(h_in)
  Tensor q, k, v;           // [T, H*hd], [T, KV*hd] x2; q and k after RoPE
  Tensor attn;              // [T, H*hd] attention output
  Tensor lse;               // [T, H] f32
  Tensor h_mid;             // [T, d] h_in + o_proj(attn)
  Tensor xn2;               // [T, d] post_attention_layernorm(h_mid)
  Tensor gate, up, act;     // [T, I]

  void KeepOnlyInput() {
    Tensor keep = std::move(h_in);
    *this = LayerActivations();
    h_in = std::move(keep);
  }
};

namespace {

absl::Status Positive(int64_t value, const char* field) {
  if (value > 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("llama config: ", field, " must be positive, got ", value));
}


// Queries q [n, H, hd] at positions p0 .. p0+n-1 attend causally to cache positions 0 .. p0+i
// (GQA: head h reads kv head h / (H / KV)). out [n, H*hd]. fp32, the CPU reference of decoding.
void CachedAttention(const float* q, int64_t n, int64_t p0, const std::vector<float>& cache_k,
                     const std::vector<float>& cache_v, int64_t heads, int64_t kv_heads,
                     int64_t hd, float* out) {
  const int64_t group = heads / kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<float> scores;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t keys = p0 + i + 1;
    scores.resize(keys);
    for (int64_t h = 0; h < heads; ++h) {
      const float* qi = q + (i * heads + h) * hd;
      const int64_t kvh = h / group;
      float max_score = -INFINITY;
      for (int64_t j = 0; j < keys; ++j) {
        const float* kj = cache_k.data() + (j * kv_heads + kvh) * hd;
        float dot = 0.0f;
        for (int64_t c = 0; c < hd; ++c) dot += qi[c] * kj[c];
        scores[j] = dot * scale;
        max_score = std::max(max_score, scores[j]);
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < keys; ++j) {
        scores[j] = std::exp(scores[j] - max_score);
        sum += scores[j];
      }
      float* oi = out + (i * heads + h) * hd;
      std::fill(oi, oi + hd, 0.0f);
      for (int64_t j = 0; j < keys; ++j) {
        const float p = scores[j] / sum;
        const float* vj = cache_v.data() + (j * kv_heads + kvh) * hd;
        for (int64_t c = 0; c < hd; ++c) oi[c] += p * vj[c];
      }
    }
  }
}

}  // namespace

// The KV cache of one layer for greedy decoding: roped keys and values of every position so far.
struct LlamaModel::KvCache {
  std::vector<float> k, v;  // [positions, kv_heads * head_dim]
};

absl::Status LlamaConfig::Validate() const {
  ST_RETURN_IF_ERROR(Positive(vocab_size, "vocab_size"));
  ST_RETURN_IF_ERROR(Positive(hidden_size, "hidden_size"));
  ST_RETURN_IF_ERROR(Positive(intermediate_size, "intermediate_size"));
  ST_RETURN_IF_ERROR(Positive(num_layers, "num_hidden_layers"));
  ST_RETURN_IF_ERROR(Positive(num_heads, "num_attention_heads"));
  ST_RETURN_IF_ERROR(Positive(num_kv_heads, "num_key_value_heads"));
  ST_RETURN_IF_ERROR(Positive(head_dim, "head_dim"));
  if (num_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("llama config: num_attention_heads ", num_heads,
                                                   " is not a multiple of num_key_value_heads ", num_kv_heads));
  }
  if (rope.head_dim != head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("llama config: rope.head_dim ", rope.head_dim, " differs from head_dim ", head_dim));
  }
  if (!(rms_norm_eps > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("llama config: rms_norm_eps must be positive, got ", rms_norm_eps));
  }
  return kernels::RopeInvFreq(rope).status();
}

InputSite InputSiteOf(LinearKind kind) {
  switch (kind) {
    case LinearKind::kQ:
    case LinearKind::kK:
    case LinearKind::kV:
      return InputSite::kAttnIn;
    case LinearKind::kO:
      return InputSite::kAttnOut;
    case LinearKind::kGate:
    case LinearKind::kUp:
      return InputSite::kMlpIn;
    case LinearKind::kDown:
      return InputSite::kMlpAct;
  }
  return InputSite::kAttnIn;
}

std::string LinearName(int64_t layer, LinearKind kind) {
  const char* suffix = "";
  switch (kind) {
    case LinearKind::kQ:
      suffix = "self_attn.q_proj";
      break;
    case LinearKind::kK:
      suffix = "self_attn.k_proj";
      break;
    case LinearKind::kV:
      suffix = "self_attn.v_proj";
      break;
    case LinearKind::kO:
      suffix = "self_attn.o_proj";
      break;
    case LinearKind::kGate:
      suffix = "mlp.gate_proj";
      break;
    case LinearKind::kUp:
      suffix = "mlp.up_proj";
      break;
    case LinearKind::kDown:
      suffix = "mlp.down_proj";
      break;
  }
  return absl::StrCat("model.layers.", layer, ".", suffix);
}

const Tensor& LayerWeights::linear(LinearKind kind) const {
  switch (kind) {
    case LinearKind::kQ:
      return q;
    case LinearKind::kK:
      return k;
    case LinearKind::kV:
      return v;
    case LinearKind::kO:
      return o;
    case LinearKind::kGate:
      return gate;
    case LinearKind::kUp:
      return up;
    case LinearKind::kDown:
      return down;
  }
  return q;
}

absl::Status ValidateWeights(const LlamaConfig& config, const LlamaWeights& weights, const ModelBackend& backend) {
  const DType dtype = backend.activation_dtype();
  auto check = [&](const Tensor& t, const std::string& name, const Shape& shape) -> absl::Status {
    if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat("llama weights: ", name, " is missing"));
    if (t.shape() != shape || t.dtype() != dtype || t.device() != backend.device() || !t.is_contiguous()) {
      return absl::InvalidArgumentError(absl::StrCat("llama weights: ", name, " is ", t.DebugString(),
                                                     ", expected contiguous ", DTypeName(dtype),
                                                     ShapeToString(shape), " on ", backend.device().ToString()));
    }
    return absl::OkStatus();
  };
  const int64_t d = config.hidden_size, inter = config.intermediate_size;
  const int64_t qd = config.num_heads * config.head_dim, kvd = config.num_kv_heads * config.head_dim;
  ST_RETURN_IF_ERROR(check(weights.embed, "model.embed_tokens.weight", {config.vocab_size, d}));
  if (static_cast<int64_t>(weights.layers.size()) != config.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("llama weights: ", weights.layers.size(), " layers, config says ",
                                                   config.num_layers));
  }
  for (int64_t l = 0; l < config.num_layers; ++l) {
    const LayerWeights& w = weights.layers[l];
    const std::string p = absl::StrCat("model.layers.", l, ".");
    ST_RETURN_IF_ERROR(check(w.input_norm, p + "input_layernorm.weight", {d}));
    ST_RETURN_IF_ERROR(check(w.post_norm, p + "post_attention_layernorm.weight", {d}));
    const Shape shapes[] = {{qd, d}, {kvd, d}, {kvd, d}, {d, qd}, {inter, d}, {inter, d}, {d, inter}};
    for (size_t i = 0; i < kAllLinears.size(); ++i) {
      ST_RETURN_IF_ERROR(check(w.linear(kAllLinears[i]), LinearName(l, kAllLinears[i]) + ".weight", shapes[i]));
    }
  }
  ST_RETURN_IF_ERROR(check(weights.final_norm, "model.norm.weight", {d}));
  return check(weights.lm_head, "lm_head.weight", {config.vocab_size, d});
}

absl::StatusOr<Batch> PackCausalLmBatch(ModelBackend& backend, const std::vector<std::vector<int32_t>>& sequences) {
  std::vector<int32_t> ids, positions, labels, cu = {0};
  for (const auto& seq : sequences) {
    for (size_t t = 0; t < seq.size(); ++t) {
      ids.push_back(seq[t]);
      positions.push_back(static_cast<int32_t>(t));
      labels.push_back(t + 1 < seq.size() ? seq[t + 1] : -100);
    }
    cu.push_back(static_cast<int32_t>(ids.size()));
  }
  const int64_t n = static_cast<int64_t>(ids.size());
  Batch batch;
  ST_ASSIGN_OR_RETURN(batch.input_ids, backend.Upload(Tensor::FromVector<int32_t>({n}, ids)));
  ST_ASSIGN_OR_RETURN(batch.positions, backend.Upload(Tensor::FromVector<int32_t>({n}, positions)));
  ST_ASSIGN_OR_RETURN(batch.labels, backend.Upload(Tensor::FromVector<int32_t>({n}, labels)));
  batch.cu_seqlens = Tensor::FromVector<int32_t>({static_cast<int64_t>(cu.size())}, cu);
  return batch;
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Create(LlamaConfig config, LlamaWeights weights,
                                                               ModelBackend* backend) {
  ST_CHECK(backend != nullptr);
  ST_RETURN_IF_ERROR(config.Validate());
  ST_RETURN_IF_ERROR(ValidateWeights(config, weights, *backend));
  return std::unique_ptr<LlamaModel>(new LlamaModel(std::move(config), std::move(weights), backend));
}

LlamaModel::LlamaModel(LlamaConfig config, LlamaWeights weights, ModelBackend* backend)
    : config_(std::move(config)), weights_(std::move(weights)), backend_(backend) {
  adapters_.assign(config_.num_layers, {});
  for (auto& slots : adapters_) slots.fill(nullptr);
}

LlamaModel::~LlamaModel() = default;

void LlamaModel::SetAdapter(int64_t layer, LinearKind kind, LinearAdapter* adapter) {
  ST_CHECK(layer >= 0 && layer < config_.num_layers) << "layer " << layer;
  adapters_[layer][static_cast<int>(kind)] = adapter;
}

absl::Status LlamaModel::Linear(int64_t layer, LinearKind kind, const Tensor& x, Tensor* y) {
  ST_RETURN_IF_ERROR(
      backend_->Matmul(x, Transpose::kNo, weights_.layers[layer].linear(kind), Transpose::kYes, 1.0, 0.0, y));
  if (LinearAdapter* adapter = adapters_[layer][static_cast<int>(kind)]) ST_RETURN_IF_ERROR(adapter->Forward(x, y));
  return absl::OkStatus();
}

absl::Status LlamaModel::LinearBackward(int64_t layer, LinearKind kind, const Tensor& x, const Tensor& dy,
                                        double beta, Tensor* dx, ModelObserver* observer) {
  if (observer != nullptr) ST_RETURN_IF_ERROR(observer->OnLinearOutputGrad(layer, kind, dy));
  // dx (+)= dy W  ([T, out] x [out, in]); the frozen W gets no gradient.
  ST_RETURN_IF_ERROR(
      backend_->Matmul(dy, Transpose::kNo, weights_.layers[layer].linear(kind), Transpose::kNo, 1.0, beta, dx));
  if (LinearAdapter* adapter = adapters_[layer][static_cast<int>(kind)]) {
    ST_RETURN_IF_ERROR(adapter->Backward(x, dy, dx));
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::LayerForward(int64_t layer, const Batch& batch, Tensor& h, LayerActivations& a,
                                      ModelObserver* observer, KvCache* cache) {
  const LayerWeights& w = weights_.layers[layer];
  const int64_t t = h.dim(0), d = config_.hidden_size, hd = config_.head_dim;
  const int64_t heads = config_.num_heads, kv = config_.num_kv_heads, inter = config_.intermediate_size;
  const DType dt = backend_->activation_dtype();
  ModelBackend& b = *backend_;
  auto alloc = [&](const Shape& s, DType type) { return b.Allocate(s, type); };

  ST_ASSIGN_OR_RETURN(a.h_in, alloc({t, d}, dt));
  ST_RETURN_IF_ERROR(b.Copy(h, &a.h_in));
  ST_ASSIGN_OR_RETURN(a.xn1, alloc({t, d}, dt));
  ST_RETURN_IF_ERROR(b.RmsNormForward(h, w.input_norm, config_.rms_norm_eps, &a.xn1));
  if (observer != nullptr) ST_RETURN_IF_ERROR(observer->OnLinearInput(layer, InputSite::kAttnIn, a.xn1));
  ST_ASSIGN_OR_RETURN(a.q, alloc({t, heads * hd}, dt));
  ST_ASSIGN_OR_RETURN(a.k, alloc({t, kv * hd}, dt));
  ST_ASSIGN_OR_RETURN(a.v, alloc({t, kv * hd}, dt));
  ST_RETURN_IF_ERROR(Linear(layer, LinearKind::kQ, a.xn1, &a.q));
  ST_RETURN_IF_ERROR(Linear(layer, LinearKind::kK, a.xn1, &a.k));
  ST_RETURN_IF_ERROR(Linear(layer, LinearKind::kV, a.xn1, &a.v));
  Tensor q3 = a.q.Reshape({t, heads, hd}), k3 = a.k.Reshape({t, kv, hd}), v3 = a.v.Reshape({t, kv, hd});
  ST_RETURN_IF_ERROR(b.ApplyRope(q3, batch.positions, config_.rope, kernels::RopeDirection::kForward, &q3));
  ST_RETURN_IF_ERROR(b.ApplyRope(k3, batch.positions, config_.rope, kernels::RopeDirection::kForward, &k3));
  ST_ASSIGN_OR_RETURN(a.attn, alloc({t, heads * hd}, dt));
  ST_ASSIGN_OR_RETURN(a.lse, alloc({t, heads}, DType::kF32));
  Tensor attn3 = a.attn.Reshape({t, heads, hd});
  if (cache == nullptr) {
    ST_RETURN_IF_ERROR(b.AttentionForward(q3, k3, v3, batch.cu_seqlens, &attn3, &a.lse));
  } else {
    ST_CHECK(b.device().is_cpu() && dt == DType::kF32) << "the KV-cache decoder is CPU fp32 only";
    const int64_t cached = static_cast<int64_t>(cache->k.size()) / (kv * hd);
    cache->k.insert(cache->k.end(), a.k.data<float>(), a.k.data<float>() + a.k.numel());
    cache->v.insert(cache->v.end(), a.v.data<float>(), a.v.data<float>() + a.v.numel());
    CachedAttention(a.q.data<float>(), t, cached, cache->k, cache->v, heads, kv, hd, a.attn.data<float>());
  }
  if (observer != nullptr) ST_RETURN_IF_ERROR(observer->OnLinearInput(layer, InputSite::kAttnOut, a.attn));
  ST_ASSIGN_OR_RETURN(Tensor o, alloc({t, d}, dt));
  ST_RETURN_IF_ERROR(Linear(layer, LinearKind::kO, a.attn, &o));
  ST_RETURN_IF_ERROR(b.Axpy(1.0, o, &h));

  ST_ASSIGN_OR_RETURN(a.h_mid, alloc({t, d}, dt));
  ST_RETURN_IF_ERROR(b.Copy(h, &a.h_mid));
  ST_ASSIGN_OR_RETURN(a.xn2, alloc({t, d}, dt));
  ST_RETURN_IF_ERROR(b.RmsNormForward(h, w.post_norm, config_.rms_norm_eps, &a.xn2));
  if (observer != nullptr) ST_RETURN_IF_ERROR(observer->OnLinearInput(layer, InputSite::kMlpIn, a.xn2));
  ST_ASSIGN_OR_RETURN(a.gate, alloc({t, inter}, dt));
  ST_ASSIGN_OR_RETURN(a.up, alloc({t, inter}, dt));
  ST_RETURN_IF_ERROR(Linear(layer, LinearKind::kGate, a.xn2, &a.gate));
  ST_RETURN_IF_ERROR(Linear(layer, LinearKind::kUp, a.xn2, &a.up));
  ST_ASSIGN_OR_RETURN(a.act, alloc({t, inter}, dt));
  ST_RETURN_IF_ERROR(b.SwigluForward(a.gate, a.up, &a.act));
  if (observer != nullptr) ST_RETURN_IF_ERROR(observer->OnLinearInput(layer, InputSite::kMlpAct, a.act));
  ST_RETURN_IF_ERROR(Linear(layer, LinearKind::kDown, a.act, &o));  // o reused as the down output
  return b.Axpy(1.0, o, &h);
}

absl::Status LlamaModel::LayerBackward(int64_t layer, const Batch& batch, LayerActivations& a, Tensor& dh,
                                       ModelObserver* observer) {
  const LayerWeights& w = weights_.layers[layer];
  const int64_t t = dh.dim(0), d = config_.hidden_size, hd = config_.head_dim;
  const int64_t heads = config_.num_heads, kv = config_.num_kv_heads, inter = config_.intermediate_size;
  const DType dt = backend_->activation_dtype();
  ModelBackend& b = *backend_;

  // MLP: h_out = h_mid + down(silu(gate(xn2)) * up(xn2)); dh is d loss / d h_out.
  ST_ASSIGN_OR_RETURN(Tensor dact, b.Allocate({t, inter}, dt));
  ST_RETURN_IF_ERROR(LinearBackward(layer, LinearKind::kDown, a.act, dh, 0.0, &dact, observer));
  if (observer != nullptr) ST_RETURN_IF_ERROR(observer->OnLinearInputGrad(layer, InputSite::kMlpAct, dact));
  ST_ASSIGN_OR_RETURN(Tensor dgate, b.Allocate({t, inter}, dt));
  ST_ASSIGN_OR_RETURN(Tensor dup, b.Allocate({t, inter}, dt));
  ST_RETURN_IF_ERROR(b.SwigluBackward(a.gate, a.up, dact, &dgate, &dup));
  ST_ASSIGN_OR_RETURN(Tensor dxn, b.Allocate({t, d}, dt));
  ST_RETURN_IF_ERROR(LinearBackward(layer, LinearKind::kGate, a.xn2, dgate, 0.0, &dxn, observer));
  ST_RETURN_IF_ERROR(LinearBackward(layer, LinearKind::kUp, a.xn2, dup, 1.0, &dxn, observer));
  if (observer != nullptr) ST_RETURN_IF_ERROR(observer->OnLinearInputGrad(layer, InputSite::kMlpIn, dxn));
  ST_ASSIGN_OR_RETURN(Tensor dnorm, b.Allocate({t, d}, dt));
  ST_RETURN_IF_ERROR(b.RmsNormBackward(a.h_mid, w.post_norm, config_.rms_norm_eps, dxn, &dnorm));
  ST_RETURN_IF_ERROR(b.Axpy(1.0, dnorm, &dh));  // now d loss / d h_mid

  // Attention: h_mid = h_in + o(attention(rope(q(xn1)), rope(k(xn1)), v(xn1))).
  ST_ASSIGN_OR_RETURN(Tensor dattn, b.Allocate({t, heads * hd}, dt));
  ST_RETURN_IF_ERROR(LinearBackward(layer, LinearKind::kO, a.attn, dh, 0.0, &dattn, observer));
  if (observer != nullptr) ST_RETURN_IF_ERROR(observer->OnLinearInputGrad(layer, InputSite::kAttnOut, dattn));
  ST_ASSIGN_OR_RETURN(Tensor dq, b.Allocate({t, heads * hd}, dt));
  ST_ASSIGN_OR_RETURN(Tensor dk, b.Allocate({t, kv * hd}, dt));
  ST_ASSIGN_OR_RETURN(Tensor dv, b.Allocate({t, kv * hd}, dt));
  Tensor dq3 = dq.Reshape({t, heads, hd}), dk3 = dk.Reshape({t, kv, hd}), dv3 = dv.Reshape({t, kv, hd});
  ST_RETURN_IF_ERROR(b.AttentionBackward(a.q.Reshape({t, heads, hd}), a.k.Reshape({t, kv, hd}),
                                         a.v.Reshape({t, kv, hd}), batch.cu_seqlens, a.attn.Reshape({t, heads, hd}),
                                         a.lse, dattn.Reshape({t, heads, hd}), &dq3, &dk3, &dv3));
  ST_RETURN_IF_ERROR(b.ApplyRope(dq3, batch.positions, config_.rope, kernels::RopeDirection::kBackward, &dq3));
  ST_RETURN_IF_ERROR(b.ApplyRope(dk3, batch.positions, config_.rope, kernels::RopeDirection::kBackward, &dk3));
  ST_RETURN_IF_ERROR(LinearBackward(layer, LinearKind::kQ, a.xn1, dq, 0.0, &dxn, observer));
  ST_RETURN_IF_ERROR(LinearBackward(layer, LinearKind::kK, a.xn1, dk, 1.0, &dxn, observer));
  ST_RETURN_IF_ERROR(LinearBackward(layer, LinearKind::kV, a.xn1, dv, 1.0, &dxn, observer));
  if (observer != nullptr) ST_RETURN_IF_ERROR(observer->OnLinearInputGrad(layer, InputSite::kAttnIn, dxn));
  ST_RETURN_IF_ERROR(b.RmsNormBackward(a.h_in, w.input_norm, config_.rms_norm_eps, dxn, &dnorm));
  return b.Axpy(1.0, dnorm, &dh);  // now d loss / d h_in
}

namespace {

absl::Status CheckBatch(const Batch& batch) {
  if (!batch.input_ids.defined() || batch.input_ids.rank() != 1 || batch.input_ids.dtype() != DType::kI32) {
    return absl::InvalidArgumentError(absl::StrCat("batch input_ids must be i32 [T], got ",
                                                   batch.input_ids.DebugString()));
  }
  const int64_t t = batch.input_ids.dim(0);
  if (!batch.positions.defined() || batch.positions.shape() != Shape{t} || batch.positions.dtype() != DType::kI32) {
    return absl::InvalidArgumentError(absl::StrCat("batch positions must be i32 [", t, "], got ",
                                                   batch.positions.DebugString()));
  }
  if (batch.labels.defined() && (batch.labels.shape() != Shape{t} || batch.labels.dtype() != DType::kI32)) {
    return absl::InvalidArgumentError(absl::StrCat("batch labels must be i32 [", t, "], got ",
                                                   batch.labels.DebugString()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Tensor> LlamaModel::FinalHidden(const Batch& batch, ModelObserver* observer, Tensor* pre_norm) {
  ST_RETURN_IF_ERROR(CheckBatch(batch));
  const int64_t t = batch.input_ids.dim(0), d = config_.hidden_size;
  const DType dt = backend_->activation_dtype();
  ST_ASSIGN_OR_RETURN(Tensor h, backend_->Allocate({t, d}, dt));
  ST_RETURN_IF_ERROR(backend_->EmbeddingForward(weights_.embed, batch.input_ids, &h));
  const bool keep = pre_norm != nullptr;
  saved_.clear();
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    auto acts = std::make_unique<LayerActivations>();
    ST_RETURN_IF_ERROR(LayerForward(l, batch, h, *acts, observer));
    if (keep) {
      if (recompute_ == Recompute::kPerLayer) acts->KeepOnlyInput();
      saved_.push_back(std::move(acts));
    }
  }
  ST_ASSIGN_OR_RETURN(Tensor hn, backend_->Allocate({t, d}, dt));
  ST_RETURN_IF_ERROR(backend_->RmsNormForward(h, weights_.final_norm, config_.rms_norm_eps, &hn));
  if (keep) *pre_norm = h;
  return hn;
}

absl::StatusOr<ForwardResult> LlamaModel::Forward(const Batch& batch, ModelObserver* observer) {
  have_saved_ = false;
  if (!batch.labels.defined()) {
    return absl::InvalidArgumentError("LlamaModel::Forward needs batch.labels (use Logits for inference)");
  }
  ST_ASSIGN_OR_RETURN(const Tensor hn, FinalHidden(batch, observer, &saved_final_pre_norm_));
  // The lm_head is frozen, so its backward is only d hn = grad_scale * (softmax - onehot) @ lm_head:
  // form the unscaled product now, while the forward holds each chunk's logits, instead of
  // recomputing them in Backward.
  ST_ASSIGN_OR_RETURN(saved_dhidden_unit_, backend_->Allocate(hn.shape(), hn.dtype()));
  ST_ASSIGN_OR_RETURN(const kernels::CrossEntropyStats stats,
                      backend_->LmHeadCrossEntropyForward(hn, weights_.lm_head, batch.labels,
                                                          kernels::CrossEntropyOptions(), &saved_dhidden_unit_));
  batch_ = batch;
  have_saved_ = true;
  saved_count_ = stats.count;
  return ForwardResult{stats.loss, stats.count};
}

absl::StatusOr<Tensor> LlamaModel::Backward(ModelObserver* observer, double grad_scale) {
  if (!have_saved_) return absl::FailedPreconditionError("LlamaModel::Backward needs a Forward first");
  have_saved_ = false;
  const int64_t t = batch_.input_ids.dim(0), d = config_.hidden_size;
  const DType dt = backend_->activation_dtype();
  ST_ASSIGN_OR_RETURN(Tensor dhn, backend_->Zeros({t, d}, dt));
  // The loss is the mean over targets: each token's loss has weight 1 / count.
  const double per_token = saved_count_ > 0 ? grad_scale / static_cast<double>(saved_count_) : 0.0;
  ST_RETURN_IF_ERROR(backend_->Axpy(per_token, saved_dhidden_unit_, &dhn));
  saved_dhidden_unit_ = Tensor();
  ST_ASSIGN_OR_RETURN(Tensor dh, backend_->Allocate({t, d}, dt));
  ST_RETURN_IF_ERROR(
      backend_->RmsNormBackward(saved_final_pre_norm_, weights_.final_norm, config_.rms_norm_eps, dhn, &dh));
  for (int64_t l = config_.num_layers - 1; l >= 0; --l) {
    LayerActivations& acts = *saved_[l];
    if (recompute_ == Recompute::kPerLayer) {
      ST_ASSIGN_OR_RETURN(Tensor h, backend_->Allocate({t, d}, dt));
      ST_RETURN_IF_ERROR(backend_->Copy(acts.h_in, &h));
      ST_RETURN_IF_ERROR(LayerForward(l, batch_, h, acts, nullptr));
    }
    ST_RETURN_IF_ERROR(LayerBackward(l, batch_, acts, dh, observer));
    saved_[l].reset();
  }
  saved_.clear();
  saved_final_pre_norm_ = Tensor();
  return dh;
}

absl::Status LlamaModel::Observe(const Batch& batch, ModelObserver* observer) {
  have_saved_ = false;
  return FinalHidden(batch, observer, nullptr).status();
}

absl::StatusOr<Tensor> LlamaModel::Logits(const Batch& batch) {
  have_saved_ = false;
  ST_ASSIGN_OR_RETURN(Tensor hn, FinalHidden(batch, nullptr, nullptr));
  ST_ASSIGN_OR_RETURN(Tensor logits, backend_->Allocate({hn.dim(0), config_.vocab_size}, DType::kF32));
  ST_RETURN_IF_ERROR(backend_->Matmul(hn, Transpose::kNo, weights_.lm_head, Transpose::kYes, 1.0, 0.0, &logits));
  return logits;
}

absl::StatusOr<std::vector<int32_t>> LlamaModel::GenerateGreedy(const std::vector<int32_t>& prompt,
                                                                int64_t max_new_tokens,
                                                                const std::vector<int32_t>& stop_ids) {
  if (prompt.empty()) return absl::InvalidArgumentError("GenerateGreedy needs a non-empty prompt");
  have_saved_ = false;
  if (!backend_->device().is_cpu() || backend_->activation_dtype() != DType::kF32) {
    return GenerateGreedyWithoutCache(prompt, max_new_tokens, stop_ids);
  }
  const int64_t d = config_.hidden_size;
  std::vector<KvCache> caches(config_.num_layers);
  std::vector<int32_t> generated;
  std::vector<int32_t> step_ids = prompt;  // the prompt first (prefill), then one token per step
  int64_t position = 0;
  ModelBackend& b = *backend_;
  while (static_cast<int64_t>(generated.size()) < max_new_tokens) {
    const int64_t n = static_cast<int64_t>(step_ids.size());
    std::vector<int32_t> pos(n);
    for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(position + i);
    Batch step;
    step.input_ids = Tensor::FromVector<int32_t>({n}, step_ids);
    step.positions = Tensor::FromVector<int32_t>({n}, pos);
    Tensor h = Tensor::Empty({n, d}, DType::kF32);
    ST_RETURN_IF_ERROR(b.EmbeddingForward(weights_.embed, step.input_ids, &h));
    for (int64_t l = 0; l < config_.num_layers; ++l) {
      LayerActivations acts;
      ST_RETURN_IF_ERROR(LayerForward(l, step, h, acts, nullptr, &caches[l]));
    }
    // Only the last position's logits matter.
    const Tensor last = h.Slice(0, n - 1, n).Contiguous();
    Tensor hn = Tensor::Empty({1, d}, DType::kF32);
    ST_RETURN_IF_ERROR(b.RmsNormForward(last, weights_.final_norm, config_.rms_norm_eps, &hn));
    Tensor logits = Tensor::Empty({1, config_.vocab_size}, DType::kF32);
    ST_RETURN_IF_ERROR(b.Matmul(hn, Transpose::kNo, weights_.lm_head, Transpose::kYes, 1.0, 0.0, &logits));
    const float* row = logits.data<float>();
    const int32_t next = static_cast<int32_t>(std::max_element(row, row + config_.vocab_size) - row);
    generated.push_back(next);
    position += n;
    if (std::find(stop_ids.begin(), stop_ids.end(), next) != stop_ids.end()) break;
    step_ids = {next};
  }
  return generated;
}

absl::StatusOr<std::vector<int32_t>> LlamaModel::GenerateGreedyWithoutCache(const std::vector<int32_t>& prompt,
                                                                            int64_t max_new_tokens,
                                                                            const std::vector<int32_t>& stop_ids) {
  std::vector<int32_t> sequence = prompt;
  std::vector<int32_t> generated;
  ModelBackend& b = *backend_;
  while (static_cast<int64_t>(generated.size()) < max_new_tokens) {
    ST_ASSIGN_OR_RETURN(const Batch batch, PackCausalLmBatch(b, {sequence}));
    ST_ASSIGN_OR_RETURN(const Tensor hn, FinalHidden(batch, nullptr, nullptr));
    // Only the last position's logits matter: one row of hn against the lm_head.
    const int64_t n = hn.dim(0);
    const Tensor last = hn.Slice(0, n - 1, n);
    ST_ASSIGN_OR_RETURN(Tensor logits, b.Allocate({1, config_.vocab_size}, DType::kF32));
    ST_RETURN_IF_ERROR(b.Matmul(last, Transpose::kNo, weights_.lm_head, Transpose::kYes, 1.0, 0.0, &logits));
    ST_ASSIGN_OR_RETURN(const Tensor host, b.Download(logits));
    const float* row = host.data<float>();
    const int32_t next = static_cast<int32_t>(std::max_element(row, row + config_.vocab_size) - row);
    generated.push_back(next);
    if (std::find(stop_ids.begin(), stop_ids.end(), next) != stop_ids.end()) break;
    sequence.push_back(next);
  }
  return generated;
}

}  // namespace sigmatune::model
