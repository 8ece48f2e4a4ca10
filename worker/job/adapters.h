// The calibrate and decompose phases of a job: CorDA's covariance statistics (with the on-disk
// cache of formats/covariance_file.h) and every targeted linear's adapter initialisation
// (peft::InitializeAdapter), saved once per job so a resumed job continues from the very same
// decomposition.
//
// Contract:
//  - Calibrate runs Observe on packed batches of at most batch_tokens tokens (whole samples, in
//    order) and returns the finished set (tensors on the backend's device). With a cache path, a
//    file whose key matches is read instead (a note says so); after computing, the set is written
//    there atomically (a write failure is only a note: the cache is an optimisation).
//  - Decompose initialises each target from the ORIGINAL weights (damping each CorDA site once,
//    shared by the linears reading it). The seed of target i is a pure function of (seed, i).
//    Errors name the module (a rank larger than the layer, a zero singular value, NaN statistics).
//  - The decomposition file (safetensors) holds a, b, d, w_res (not for LoRA, whose W_res is W),
//    the KaSA tail and the scale per module, and its metadata holds `identity`; reading a file of
//    another identity or with missing tensors is an error (the caller recomputes).
#ifndef SIGMATUNE_WORKER_JOB_ADAPTERS_H_
#define SIGMATUNE_WORKER_JOB_ADAPTERS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "formats/covariance_file.h"
#include "kernels/model/llama.h"
#include "kernels/peft/covariance_collector.h"
#include "kernels/peft/init.h"
#include "kernels/peft/method.h"
#include "kernels/peft/targets.h"
#include "worker/train/export.h"
#include "worker/train/progress.h"

namespace sigmatune::job {

// Fingerprint of calibration samples (ids and boundaries).
std::string SamplesFingerprint(const std::vector<std::vector<int32_t>>& samples);

struct CalibrateOptions {
  peft::Accumulation accumulation = peft::Accumulation::kF32;
  int64_t batch_tokens = 4096;
  std::string cache_path;  // empty: no cache
  formats::CovarianceFileKey key;
};

absl::StatusOr<peft::CovarianceSet> Calibrate(model::LlamaModel& model, const std::vector<peft::SiteKey>& sites,
                                              const std::vector<std::vector<int32_t>>& samples,
                                              const CalibrateOptions& options, train::ProgressSink* sink,
                                              std::vector<std::string>* notes);

// Initial adapters of every target (trained a/b/d start as the init's).
absl::StatusOr<std::vector<train::TrainedLinear>> Decompose(model::ModelBackend& backend,
                                                            const model::LlamaWeights& weights,
                                                            const peft::AdapterOptions& options,
                                                            const std::vector<peft::TargetModule>& targets,
                                                            const peft::CovarianceSet* covariance, uint64_t seed,
                                                            train::ProgressSink* sink);

// Checks every target against the method before any work: rank <= min(out, in) for the SVD
// methods, with an error naming the first module that is too small and the largest usable rank.
absl::Status CheckRankFits(const model::LlamaConfig& config, const peft::AdapterOptions& options,
                           const std::vector<peft::TargetModule>& targets);

absl::Status WriteDecomposition(const std::string& path, const std::string& identity,
                                const peft::AdapterOptions& options, const std::vector<train::TrainedLinear>& linears,
                                model::ModelBackend& backend);
// Returns linears with init filled (trained a/b/d = the init's), tensors uploaded to the backend;
// for LoRA w_res is taken from `weights`.
absl::StatusOr<std::vector<train::TrainedLinear>> ReadDecomposition(const std::string& path,
                                                                    const std::string& identity,
                                                                    const model::LlamaWeights& weights,
                                                                    const peft::AdapterOptions& options,
                                                                    const std::vector<peft::TargetModule>& targets,
                                                                    model::ModelBackend& backend);

}  // namespace sigmatune::job

#endif  // SIGMATUNE_WORKER_JOB_ADAPTERS_H_
