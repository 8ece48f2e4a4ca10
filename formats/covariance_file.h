// Covariance files: a finished set of calibration covariances (kernels/peft/covariance_collector.h)
// saved as safetensors, so a later job on the same model and calibration data (with another rank,
// CorDA mode or method) skips calibration.
//
// Layout: one tensor per input site, named as the collector names it ("model.layers.3.attn_in"),
// [n, n] f32 or f64 (the accumulation dtype), already divided by the sample count; metadata
// (strings): "format" = "pt", "sigmatune.covariance" = kCovarianceFormatVersion, "model", "data",
// "sites" (comma-separated, sorted), "accumulation", "samples", "tokens", and "content_key", the
// fingerprint of all the identity fields.
//
// Reading checks the file against the key the caller expects: any identity field that differs is
// FailedPrecondition naming the field (the file belongs to another model, data set or layer set),
// and a file that is damaged (missing or extra tensors, wrong shapes or dtypes, NaN/Inf) is
// DataLoss naming the file and tensor. Writing is atomic (temp, fsync, rename).
#ifndef SIGMATUNE_FORMATS_COVARIANCE_FILE_H_
#define SIGMATUNE_FORMATS_COVARIANCE_FILE_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"

namespace sigmatune::formats {

// Bumped whenever the statistics' definition changes (normalisation, masking), so old files are
// recomputed rather than silently reused.
inline constexpr char kCovarianceFormatVersion[] = "1 (per-sample |max| scaling, mean over samples, no padding)";

struct CovarianceFileKey {
  std::string model;                // fingerprint of the base model (config and weights)
  std::string data;                 // fingerprint of the calibration token ids and sample boundaries
  std::vector<std::string> sites;   // site tensor names; sorted by ContentKey and the writer
  std::string accumulation;         // "f32" or "f64"
  // Fingerprint of the version and every field above.
  std::string ContentKey() const;
};

struct CovarianceFile {
  CovarianceFileKey key;
  int64_t samples = 0;
  int64_t tokens = 0;
  std::map<std::string, Tensor> covariance;  // CPU tensors, by site name
};

// `covariance` must hold exactly key.sites, CPU square matrices of the accumulation dtype.
absl::Status WriteCovarianceFile(const std::string& path, const CovarianceFile& file);
absl::StatusOr<CovarianceFile> ReadCovarianceFile(const std::string& path, const CovarianceFileKey& expected);

}  // namespace sigmatune::formats

#endif  // SIGMATUNE_FORMATS_COVARIANCE_FILE_H_
