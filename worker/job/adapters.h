// The calibrate and decompose phases of a job: CorDA's covariance statistics (with the on-disk
// cache of formats/covariance_file.h) and every targeted linear's adapter initialisation
// (peft::InitializeAdapter), saved once per job so a resumed job continues from the very same
// decomposition.
//
// Both run on a worker group (comm::Communicator; a group of one is the single-process job):
//  - Calibrate: sample j is observed by rank j % size (whole samples in order, packed into batches
//    of at most batch_tokens tokens); every rank's partial sums are then reduced to the rank that
//    owns the site (WorkPlan::site_owner), not all-reduced, and normalised by the group's sample
//    count there. It returns the covariances of this rank's sites only. The cache is one file per
//    site under cache_dir, keyed by (model, calibration data, site, accumulation), so a job with
//    another world size, rank or method reuses whatever sites it owns; every owner reads and writes
//    its own sites, and the group recomputes when any owner misses. A cache that cannot be written
//    is a note, not an error. The peak resident memory of every rank is reported (note + event).
//  - Decompose: each rank initialises the targets it owns (WorkPlan::target_owner) from the
//    ORIGINAL weights (damping each CorDA site once, shared by the linears reading it); the seed of
//    target i is a pure function of (seed, i), so the result does not depend on the world size. The
//    owners then broadcast every target's initialisation in target order, so every rank returns the
//    full set. Errors name the module (a rank larger than the layer, a zero singular value, NaN
//    statistics).
//  - Progress events go to `sink` (pass nullptr on the ranks that do not report).
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
#include "worker/comm/communicator.h"
#include "worker/job/work_plan.h"
#include "worker/train/export.h"
#include "worker/train/progress.h"

namespace sigmatune::job {

// Fingerprint of calibration samples (ids and boundaries).
std::string SamplesFingerprint(const std::vector<std::vector<int32_t>>& samples);

struct CalibrateOptions {
  peft::Accumulation accumulation = peft::Accumulation::kF32;
  int64_t batch_tokens = 4096;
  std::string cache_dir;  // empty: no cache
  formats::CovarianceFileKey key;  // key.sites: every site of the job
};

// The cache file of one site: <cache_dir>/covariance-<content key of (key with that site only)>.safetensors.
std::string CovarianceCachePath(const std::string& cache_dir, const formats::CovarianceFileKey& key,
                                const std::string& site_name);

// `plan` must come from PlanWork for this job and comm.size(); `sites` are all the job's sites.
absl::StatusOr<peft::CovarianceSet> Calibrate(model::LlamaModel& model, comm::Communicator& comm,
                                              const WorkPlan& plan, const std::vector<peft::SiteKey>& sites,
                                              const std::vector<std::vector<int32_t>>& samples,
                                              const CalibrateOptions& options, train::ProgressSink* sink,
                                              std::vector<std::string>* notes);

// Initial adapters of every target (trained a/b/d start as the init's). `covariance` holds (at
// least) the sites this rank owns; nullptr for methods without covariance.
absl::StatusOr<std::vector<train::TrainedLinear>> Decompose(model::ModelBackend& backend, comm::Communicator& comm,
                                                            const WorkPlan& plan, const model::LlamaWeights& weights,
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
