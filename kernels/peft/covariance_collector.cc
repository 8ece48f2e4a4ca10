#include "kernels/peft/covariance_collector.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"

namespace sigmatune::peft {

using model::InputSite;

std::string InputSiteName(InputSite site) {
  switch (site) {
    case InputSite::kAttnIn:
      return "attn_in";
    case InputSite::kAttnOut:
      return "attn_out";
    case InputSite::kMlpIn:
      return "mlp_in";
    case InputSite::kMlpAct:
      return "mlp_act";
  }
  return "unknown";
}

std::string SiteTensorName(const SiteKey& key) {
  return absl::StrCat("model.layers.", key.first, ".", InputSiteName(key.second));
}

std::vector<SiteKey> SitesOf(const std::vector<std::pair<int64_t, model::LinearKind>>& linears) {
  std::set<SiteKey> sites;
  for (const auto& [layer, kind] : linears) sites.insert({layer, model::InputSiteOf(kind)});
  return {sites.begin(), sites.end()};
}

absl::StatusOr<std::unique_ptr<CovarianceCollector>> CovarianceCollector::Create(model::ModelBackend* backend,
                                                                                 const model::LlamaConfig& config,
                                                                                 std::vector<SiteKey> sites,
                                                                                 Accumulation accumulation) {
  ST_CHECK(backend != nullptr);
  if (sites.empty()) return absl::InvalidArgumentError("covariance collection needs at least one layer input");
  const DType dtype = accumulation == Accumulation::kF64 ? DType::kF64 : DType::kF32;
  std::unique_ptr<CovarianceCollector> c(new CovarianceCollector(backend, dtype));
  for (const SiteKey& key : sites) {
    if (key.first < 0 || key.first >= config.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("covariance requested for layer ", key.first,
                                                     " but the model has ", config.num_layers, " layers"));
    }
    int64_t n = config.hidden_size;
    if (key.second == InputSite::kAttnOut) n = config.num_heads * config.head_dim;
    if (key.second == InputSite::kMlpAct) n = config.intermediate_size;
    Site& site = c->sites_[key];
    if (site.sum.defined()) continue;  // listed twice
    ST_ASSIGN_OR_RETURN(site.sum, backend->Zeros({n, n}, dtype));
  }
  ST_ASSIGN_OR_RETURN(c->bad_, backend->Zeros({1}, DType::kI32));
  return c;
}

absl::Status CovarianceCollector::BeginBatch(const Tensor& cu_seqlens) {
  if (finished_) return absl::FailedPreconditionError("CovarianceCollector::BeginBatch after Finish");
  if (!cu_seqlens.defined() || cu_seqlens.dtype() != DType::kI32 || cu_seqlens.rank() != 1 ||
      cu_seqlens.dim(0) < 1 || !cu_seqlens.device().is_cpu() || !cu_seqlens.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration batch cu_seqlens must be a contiguous CPU i32 [num_samples + 1], got ",
                     cu_seqlens.defined() ? cu_seqlens.DebugString() : "nothing"));
  }
  const int32_t* cu = cu_seqlens.data<int32_t>();
  int64_t samples = 0;
  for (int64_t s = 0; s + 1 < cu_seqlens.dim(0); ++s) {
    if (cu[s + 1] < cu[s] || cu[s] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("calibration batch cu_seqlens must be non-decreasing from 0; "
                                                     "entry ", s + 1, " is ", cu[s + 1], " after ", cu[s]));
    }
    if (cu[s + 1] > cu[s]) ++samples;
  }
  cu_seqlens_ = cu_seqlens;
  ++batches_;
  samples_ += samples;
  tokens_ += cu[cu_seqlens.dim(0) - 1] - cu[0];
  return absl::OkStatus();
}

absl::Status CovarianceCollector::OnLinearInput(int64_t layer, InputSite site, const Tensor& x) {
  auto it = sites_.find({layer, site});
  if (it == sites_.end()) return absl::OkStatus();
  if (!cu_seqlens_.defined()) {
    return absl::FailedPreconditionError("CovarianceCollector: call BeginBatch before each calibration forward pass");
  }
  Site& s = it->second;
  if (s.calls >= batches_) {
    return absl::FailedPreconditionError(absl::StrCat("CovarianceCollector: ", SiteTensorName(it->first),
                                                      " observed twice in one batch; call BeginBatch per batch"));
  }
  ++s.calls;
  const int64_t rows = x.dim(0), n = x.dim(1);
  if (n != s.sum.dim(0)) {
    return absl::InvalidArgumentError(absl::StrCat("input of ", SiteTensorName(it->first), " has width ", n,
                                                   ", expected ", s.sum.dim(0)));
  }
  Tensor& scratch = scratch_[n];
  if (!scratch.defined() || scratch.dim(0) < rows) {
    ST_ASSIGN_OR_RETURN(scratch, backend_->Allocate({rows, n}, dtype_));
  }
  Tensor y = scratch.Slice(0, 0, rows);
  ST_RETURN_IF_ERROR(backend_->ScaleSegmentsByAbsMax(x, cu_seqlens_, &y, &bad_));
  return backend_->AccumulateCovariance(y, 1.0, &s.sum, kernels::CovarianceFill::kUpperOnly);
}

absl::StatusOr<CovarianceSet> CovarianceCollector::Finish() {
  if (!finished_ && samples_ == 0) {
    finished_ = true;
    return absl::FailedPreconditionError(
        "covariance collection saw no calibration samples: the calibration data is empty (or every sample has "
        "length 0)");
  }
  ST_ASSIGN_OR_RETURN(CovarianceSet set, FinishPartial());
  for (auto& [key, sum] : set.covariance) {
    ST_RETURN_IF_ERROR(NormalizeCovariance(*backend_, SiteTensorName(key), set.samples, &sum));
  }
  return set;
}

absl::StatusOr<CovarianceSet> CovarianceCollector::FinishPartial() {
  if (finished_) return absl::FailedPreconditionError("CovarianceCollector::Finish called twice");
  finished_ = true;
  scratch_.clear();
  for (const auto& [key, site] : sites_) {
    if (site.calls != batches_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the input of ", SiteTensorName(key), " was observed in ", site.calls, " of ", batches_,
          " calibration batches; the layer is not reached by the forward pass (PEFT would divide by a zero count)"));
    }
  }
  ST_ASSIGN_OR_RETURN(Tensor bad, backend_->Download(bad_));
  if (const int32_t n_bad = bad.data<int32_t>()[0]; n_bad > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        n_bad, " (layer input, sample) pairs had an all-zero maximum or a NaN/Inf value during calibration; the model "
               "or the calibration data produce non-finite activations (PEFT raises \"Invalid value found in input\")"));
  }
  CovarianceSet out;
  out.samples = samples_;
  out.tokens = tokens_;
  for (auto& [key, site] : sites_) {
    ST_RETURN_IF_ERROR(backend_->SymmetrizeFromUpper(&site.sum));
    out.covariance[key] = std::move(site.sum);
  }
  sites_.clear();
  return out;
}

absl::Status NormalizeCovariance(model::ModelBackend& backend, const std::string& name, int64_t samples, Tensor* sum) {
  if (samples < 1) {
    return absl::InvalidArgumentError(absl::StrCat("the covariance of ", name, " has no calibration samples"));
  }
  // sum *= 1/N, as an in-place axpy: sum += (1/N - 1) * sum (elementwise, so aliasing is fine),
  // then mirror the upper triangle, so the result is exactly symmetric whatever rounding the
  // vectorised axpy applies at each position.
  ST_RETURN_IF_ERROR(backend.Axpy(1.0 / static_cast<double>(samples) - 1.0, *sum, sum));
  ST_RETURN_IF_ERROR(backend.SymmetrizeFromUpper(sum));
  ST_ASSIGN_OR_RETURN(const int64_t non_finite, backend.CountNonFinite(*sum));
  if (non_finite > 0) {
    return absl::InvalidArgumentError(absl::StrCat("the covariance of ", name, " holds ", non_finite,
                                                   " non-finite values after accumulation (overflow); use "
                                                   "f64 accumulation or fewer/shorter calibration samples"));
  }
  return absl::OkStatus();
}

}  // namespace sigmatune::peft
