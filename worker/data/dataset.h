// Training / evaluation datasets from JSONL files: each record becomes token ids plus a loss mask
// (../shared/FORMATS.md section 6).
//
//   SampleEncoder enc{&tokenizer, &chat_template, /*bos_ids=*/{}, /*eos_id=*/0};
//   ST_ASSIGN_OR_RETURN(Dataset ds, LoadDataset({.path = "train.jsonl"}, enc));
//
// Contract:
//  - One JSON object per line; blank (whitespace-only) lines are skipped; line numbers are 1-based
//    and every error about a record is InvalidArgument starting with "<path>:<line>: ". A missing
//    file is NotFound naming it; a file with no records is InvalidArgument "<path>: no records".
//  - TokenizedSample::targets[t] == ids[t] when token t is trained (its loss is the prediction of
//    ids[t] from ids[..t-1]), else -100. targets[0] is always -100: nothing predicts the first token.
//  - Rendering and masks per format (train_on_input kYes trains every token):
//      text        bos + text + eos                          all trained
//      completion  bos + prompt | completion + eos            completion + eos trained
//      alpaca      bos + template | output + eos              output + eos trained
//      chat        bos + the chat template's rendering        each assistant content + the
//                                                             template's end-of-turn token(s)
//      sharegpt    as chat (human -> user, gpt -> assistant, system -> system)
//      segments    each segment's text                        label == true segments
//      tokenized   input_ids (attention_mask 0 dropped)       labels != -100 (absent: all)
//    "|" marks pieces that are tokenized separately and concatenated (as torchtune does), so a
//    trained span always starts on a token boundary. The chat pieces come from rendering prefixes
//    of the conversation: the text before assistant message i is Render(messages[0, i),
//    GenerationPrompt::kYes); the end-of-turn tokens are the leading special tokens of the text
//    the template puts after an assistant content (for ChatML "<|im_end|>", not the "\n").
//  - The Alpaca template is exactly torchtune's / FORMATS.md's, with and without an input block.
//  - A sample longer than max_seq_len is an error unless LongSamples::kTruncate (then its first
//    max_seq_len tokens are kept). A sample with no trained token is kept and counted; a sample
//    with no token at all is an error.
//  - LoadPromptAnswerSet gives, for exact-match evaluation, the ids of everything before the
//    trained part (tokenized exactly as for training) and the reference answer text.
// Pure functions of their inputs and the file; thread-compatible.
#ifndef SIGMATUNE_WORKER_DATA_DATASET_H_
#define SIGMATUNE_WORKER_DATA_DATASET_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/data/tokenizer.h"
#include "worker/data/tokenizer_chat_template.h"

namespace sigmatune::data {

// The JSONL record shapes. kAuto picks one per record by its keys.
enum class RecordFormat { kAuto, kText, kCompletion, kAlpaca, kChat, kShareGpt, kSegments, kTokenized };

// "auto", "text", "completion", "alpaca", "chat", "sharegpt", "segments", "tokenized".
absl::StatusOr<RecordFormat> ParseRecordFormat(absl::string_view name);
// The inverse of ParseRecordFormat.
absl::string_view RecordFormatName(RecordFormat format);

// Whether the prompt / user / system / untrained-segment tokens are trained too.
enum class TrainOnInput { kNo, kYes };
// What to do with a sample longer than max_seq_len.
enum class LongSamples { kError, kTruncate };

// How text becomes ids for one model.
struct SampleEncoder {
  const Tokenizer* tokenizer = nullptr;
  // nullptr: chat/sharegpt records are an error naming the file and line.
  const ChatTemplate* chat_template = nullptr;
  // Put before each text/completion/alpaca/chat sample (not segments/tokenized); empty for SmolLM2.
  std::vector<int32_t> bos_ids;
  // Appended after text/completion/alpaca samples and trained; < 0: none.
  int32_t eos_id = -1;
};

struct DatasetOptions {
  std::string path;
  RecordFormat format = RecordFormat::kAuto;
  TrainOnInput train_on_input = TrainOnInput::kNo;
  int64_t max_samples = 0;  // 0: all records
  int64_t max_seq_len = 2048;
  LongSamples long_samples = LongSamples::kError;
};

struct TokenizedSample {
  std::vector<int32_t> ids;
  std::vector<int32_t> targets;  // ids[t] where token t is trained, else -100 (targets[0] == -100)
  int64_t line = 0;              // 1-based line of the record
};

struct Dataset {
  std::vector<TokenizedSample> samples;
  int64_t records = 0;            // records read (== samples.size())
  int64_t untrained_samples = 0;  // samples without any trained token
  int64_t truncated_samples = 0;  // samples cut to max_seq_len
  int64_t tokens = 0;             // sum of ids.size()
  int64_t trained_tokens = 0;     // sum of the targets != -100
};

// Reads and tokenizes a JSONL dataset (see the contract above). The encoder's tokenizer must be set.
absl::StatusOr<Dataset> LoadDataset(const DatasetOptions& options, const SampleEncoder& encoder);

struct PromptAnswer {
  std::vector<int32_t> prompt_ids;  // bos + everything before the trained part
  std::string answer;               // last assistant content / completion / output
  int64_t line = 0;
};

// Prompt/answer pairs for exact-match evaluation from completion, alpaca, chat or sharegpt records
// (kAuto picks among them; text/segments/tokenized records are InvalidArgument naming the file).
// A chat's prompt is the conversation up to its last assistant turn rendered with the generation
// prompt; messages after that turn are ignored. train_on_input is ignored. A prompt longer than
// max_seq_len is an error unless kTruncate (then its LAST max_seq_len ids are kept).
absl::StatusOr<std::vector<PromptAnswer>> LoadPromptAnswerSet(const DatasetOptions& options,
                                                              const SampleEncoder& encoder);

}  // namespace sigmatune::data

#endif  // SIGMATUNE_WORKER_DATA_DATASET_H_
