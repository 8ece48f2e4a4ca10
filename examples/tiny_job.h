// The tiny example job that end-to-end tests share: the tiny LLaMA of examples/models/tiny-llama
// (made by //examples:make_tiny_model) on a small slice of the example data, paths taken from the
// test's runfiles (//examples:data and //examples:tiny_llama must be in the test's data).
#ifndef SIGMATUNE_EXAMPLES_TINY_JOB_H_
#define SIGMATUNE_EXAMPLES_TINY_JOB_H_

#include <string>
#include <vector>

#include "sigmatune/v1/job.pb.h"

namespace sigmatune::examples {

// `method` at rank 4, alpha 8 on `targets`; CorDA methods calibrate on examples/data/
// calibration.jsonl (16 samples of <= 128 tokens); training on the first 64 arithmetic chats with
// sample packing; evaluation on 3 arithmetic prompts (exact match, 8 new tokens) and 4 knowledge
// passages (perplexity); AdamW lr 5e-3, cosine schedule with 1 warmup step; one compute thread.
// Steps, batch, seed, checkpoints and directories are the caller's, as is every override.
v1::JobSpec TinyJobSpec(const std::string& name, const std::string& method, const std::vector<std::string>& targets);

// Copies the tiny model to <root>/models/tiny-llama and the example data (arith-train.jsonl,
// arith-test.jsonl, knowledge.jsonl) to <root>/data/ as real files (the runfiles are symlinks,
// which a coordinator's data-root check resolves outside the root). CHECK-fails when a copy fails.
void CopyTinyExampleTo(const std::string& root);

}  // namespace sigmatune::examples

#endif  // SIGMATUNE_EXAMPLES_TINY_JOB_H_
