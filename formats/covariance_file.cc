#include "formats/covariance_file.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "formats/safetensors.h"
#include "kernels/base/fingerprint.h"
#include "kernels/base/status_macros.h"

namespace sigmatune::formats {
namespace {

std::vector<std::string> Sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

absl::StatusOr<DType> AccumulationDType(const std::string& accumulation, const std::string& where) {
  if (accumulation == "f32") return DType::kF32;
  if (accumulation == "f64") return DType::kF64;
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": accumulation must be \"f32\" or \"f64\", got \"", accumulation, "\""));
}

template <typename T>
bool AllFinite(const Tensor& t) {
  const T* p = t.data<T>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (!std::isfinite(p[i])) return false;
  }
  return true;
}

}  // namespace

std::string CovarianceFileKey::ContentKey() const {
  Fingerprint f;
  f.UpdateField(kCovarianceFormatVersion).UpdateField(model).UpdateField(data).UpdateField(accumulation);
  for (const std::string& s : Sorted(sites)) f.UpdateField(s);
  return f.Hex();
}

absl::Status WriteCovarianceFile(const std::string& path, const CovarianceFile& file) {
  ST_ASSIGN_OR_RETURN(const DType dtype, AccumulationDType(file.key.accumulation, path));
  const std::vector<std::string> sites = Sorted(file.key.sites);
  if (sites.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": a covariance file needs sites"));
  if (file.covariance.size() != sites.size()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", file.covariance.size(), " covariances for ",
                                                   sites.size(), " sites"));
  }
  for (const std::string& s : sites) {
    auto it = file.covariance.find(s);
    if (it == file.covariance.end()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": no covariance for site ", s));
    }
    const Tensor& c = it->second;
    if (!c.device().is_cpu() || c.dtype() != dtype || c.rank() != 2 || c.dim(0) != c.dim(1)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": covariance ", s, " must be a square CPU ",
                                                     file.key.accumulation, " matrix, got ", c.DebugString()));
    }
  }
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"},
      {"sigmatune.covariance", kCovarianceFormatVersion},
      {"model", file.key.model},
      {"data", file.key.data},
      {"sites", absl::StrJoin(sites, ",")},
      {"accumulation", file.key.accumulation},
      {"samples", absl::StrCat(file.samples)},
      {"tokens", absl::StrCat(file.tokens)},
      {"content_key", file.key.ContentKey()},
  };
  return WriteSafetensors(path, file.covariance, metadata);
}

absl::StatusOr<CovarianceFile> ReadCovarianceFile(const std::string& path, const CovarianceFileKey& expected) {
  ST_ASSIGN_OR_RETURN(SafetensorsReader reader, SafetensorsReader::Open(path));
  const auto& meta = reader.metadata();
  auto field = [&](const std::string& name) -> absl::StatusOr<std::string> {
    auto it = meta.find(name);
    if (it == meta.end()) {
      return absl::DataLossError(absl::StrCat(path, " is not a sigmatune covariance file: metadata \"", name,
                                              "\" is missing; delete it to recompute the covariances"));
    }
    return it->second;
  };
  ST_ASSIGN_OR_RETURN(const std::string version, field("sigmatune.covariance"));
  if (version != kCovarianceFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(path, " holds covariances of format \"", version,
                                                      "\"; this build computes \"", kCovarianceFormatVersion,
                                                      "\": recompute them"));
  }
  CovarianceFile out;
  ST_ASSIGN_OR_RETURN(out.key.model, field("model"));
  ST_ASSIGN_OR_RETURN(out.key.data, field("data"));
  ST_ASSIGN_OR_RETURN(out.key.accumulation, field("accumulation"));
  ST_ASSIGN_OR_RETURN(const std::string sites, field("sites"));
  out.key.sites = absl::StrSplit(sites, ',', absl::SkipEmpty());
  const std::vector<std::string> want_sites = Sorted(expected.sites);
  const std::pair<const char*, bool> checks[] = {
      {"model", out.key.model == expected.model},
      {"data", out.key.data == expected.data},
      {"accumulation", out.key.accumulation == expected.accumulation},
      {"sites", out.key.sites == want_sites},
  };
  for (const auto& [name, same] : checks) {
    if (!same) {
      return absl::FailedPreconditionError(absl::StrCat(path, " was computed for another ", name,
                                                        " (its \"", name, "\" differs from this job's); it cannot "
                                                        "be reused"));
    }
  }
  ST_ASSIGN_OR_RETURN(const std::string key, field("content_key"));
  if (key != out.key.ContentKey()) {
    return absl::DataLossError(absl::StrCat(path, ": content_key does not match its own fields (edited or "
                                            "damaged file); delete it to recompute the covariances"));
  }
  ST_ASSIGN_OR_RETURN(const std::string samples, field("samples"));
  ST_ASSIGN_OR_RETURN(const std::string tokens, field("tokens"));
  if (!absl::SimpleAtoi(samples, &out.samples) || !absl::SimpleAtoi(tokens, &out.tokens) || out.samples <= 0) {
    return absl::DataLossError(absl::StrCat(path, ": bad samples/tokens metadata \"", samples, "\"/\"", tokens, "\""));
  }
  ST_ASSIGN_OR_RETURN(const DType dtype, AccumulationDType(out.key.accumulation, path));
  if (reader.names().size() != out.key.sites.size()) {
    return absl::DataLossError(absl::StrCat(path, " holds ", reader.names().size(), " tensors for ",
                                            out.key.sites.size(), " sites"));
  }
  for (const std::string& s : out.key.sites) {
    if (!reader.Contains(s)) return absl::DataLossError(absl::StrCat(path, ": covariance ", s, " is missing"));
    ST_ASSIGN_OR_RETURN(Tensor view, reader.GetTensor(s));
    if (view.dtype() != dtype || view.rank() != 2 || view.dim(0) != view.dim(1)) {
      return absl::DataLossError(absl::StrCat(path, ": covariance ", s, " must be a square ", out.key.accumulation,
                                              " matrix, got ", view.DebugString()));
    }
    Tensor c = view.Contiguous();  // own the bytes: the mapping closes with the reader
    const bool finite = dtype == DType::kF32 ? AllFinite<float>(c) : AllFinite<double>(c);
    if (!finite) return absl::DataLossError(absl::StrCat(path, ": covariance ", s, " holds NaN/Inf"));
    out.covariance[s] = std::move(c);
  }
  return out;
}

}  // namespace sigmatune::formats
