// CovarianceCollector: CorDA's calibration statistics (METHODS.md §4), as a model::ModelObserver.
//
// For every requested input site (layer, InputSite) it accumulates, over all calibration samples,
//     C = (1/N) sum_t (X_t / mu_t)^T (X_t / mu_t),   mu_t = |max(X_t)|,   N = number of samples,
// exactly PEFT's covariance (its hook divides each sample by its signed maximum's absolute value
// and counts hook calls), with three differences that make it cheaper and safer:
//  - one matrix per distinct input, not per module: q/k/v share kAttnIn and gate/up share kMlpIn,
//    so a LLaMA layer needs at most 4 matrices where PEFT keeps 7;
//  - a packed batch of many samples costs one SYRK per site (the samples are the segments of the
//    batch's cu_seqlens; each is scaled by its own mu on the device first), and nothing waits on the
//    host per sample: bad samples (mu zero or not finite, or a non-finite entry) are counted on
//    the device and reported by Finish;
//  - tokens outside every segment (padding) are excluded. PEFT's hook sees padded batches whole;
//    its examples run batch size 1, where there is no padding, and then the two agree.
// Accumulation is f32 (PEFT's default) or f64 (Accumulation::kF64), whatever the activation dtype.
//
// Usage: Create; for each packed calibration batch: BeginBatch(batch.cu_seqlens), then
// model.Observe(batch, &collector); then Finish() once. Not thread safe.
#ifndef SIGMATUNE_KERNELS_PEFT_COVARIANCE_COLLECTOR_H_
#define SIGMATUNE_KERNELS_PEFT_COVARIANCE_COLLECTOR_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"

namespace sigmatune::peft {

using SiteKey = std::pair<int64_t, model::InputSite>;  // (layer, input site)

// "attn_in", "attn_out", "mlp_in", "mlp_act".
std::string InputSiteName(model::InputSite site);
// "model.layers.3.attn_in": the name a covariance is stored under.
std::string SiteTensorName(const SiteKey& key);
// The distinct input sites read by the given linears, sorted.
std::vector<SiteKey> SitesOf(const std::vector<std::pair<int64_t, model::LinearKind>>& linears);

enum class Accumulation { kF32, kF64 };

struct CovarianceSet {
  std::map<SiteKey, Tensor> covariance;  // [n, n] on the backend's device, normalised by samples
  int64_t samples = 0;                   // N
  int64_t tokens = 0;                    // rows accumulated per site
};

class CovarianceCollector final : public model::ModelObserver {
 public:
  // `sites` must be non-empty, with layers in [0, config.num_layers). The backend must outlive it.
  static absl::StatusOr<std::unique_ptr<CovarianceCollector>> Create(model::ModelBackend* backend,
                                                                     const model::LlamaConfig& config,
                                                                     std::vector<SiteKey> sites,
                                                                     Accumulation accumulation);

  // The samples of the next forward pass: cu_seqlens i32 [S + 1] on the CPU (a Batch's). Every
  // requested site must then be observed exactly once before the next BeginBatch or Finish.
  absl::Status BeginBatch(const Tensor& cu_seqlens);
  absl::Status OnLinearInput(int64_t layer, model::InputSite site, const Tensor& x) override;

  // Symmetrises, divides by N and checks. Errors name the layer and site: no samples at all, a
  // site never observed (FailedPrecondition: PEFT divides by zero there), bad samples
  // (InvalidArgument with their count: PEFT raises on the first), or a non-finite sum (overflow).
  absl::StatusOr<CovarianceSet> Finish();

  // The distributed form of Finish, for a group whose ranks each see some of the samples: the
  // symmetrised, NOT normalised sums with this collector's sample and token counts. Zero samples
  // (a rank with no share of a small calibration set) give zero matrices instead of an error; the
  // other checks of Finish hold. The caller sums the sets over ranks (in the accumulation dtype)
  // and applies NormalizeCovariance with the total sample count: on one rank this equals Finish
  // bit for bit.
  absl::StatusOr<CovarianceSet> FinishPartial();

 private:
  struct Site {
    Tensor sum;      // [n, n], upper triangle accumulated
    int64_t calls = 0;
  };
  CovarianceCollector(model::ModelBackend* backend, DType dtype) : backend_(backend), dtype_(dtype) {}

  model::ModelBackend* backend_;
  DType dtype_;
  std::map<SiteKey, Site> sites_;
  std::map<int64_t, Tensor> scratch_;  // by width n: [rows, n] in dtype_
  Tensor bad_;                         // i32 [1] on the device
  Tensor cu_seqlens_;
  int64_t batches_ = 0;
  int64_t samples_ = 0;
  int64_t tokens_ = 0;
  bool finished_ = false;
};

// Divides a summed covariance (of `samples` samples in all) by the count and checks it: the last
// step of Finish. InvalidArgument naming `name` when samples < 1 or a value is not finite.
absl::Status NormalizeCovariance(model::ModelBackend& backend, const std::string& name, int64_t samples, Tensor* sum);

}  // namespace sigmatune::peft

#endif  // SIGMATUNE_KERNELS_PEFT_COVARIANCE_COLLECTOR_H_
