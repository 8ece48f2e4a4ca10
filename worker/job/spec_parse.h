// Internal to //worker/job:spec (spec.h is the interface): job spec text, YAML or JSON, into a
// protobuf message, guided by the message's descriptor.
//
// Contract:
//  - Both syntaxes become one tree that is walked beside the descriptor: each value takes the type
//    of the field it lands in (spec.h describes the rules); keys are a field's proto name or its
//    json_name.
//  - Every problem is appended to `problems` with its path ("method.rank", "datasets[1].path") and,
//    for YAML, its line: unknown fields (with a suggestion), wrong types, nulls, duplicate keys.
//  - kSyntaxError when the text is not one YAML/JSON document (the problem has an empty path and
//    the line and column); the message is then untouched. Otherwise kParsed, with every value that
//    converted stored, even when there were problems elsewhere.
//  - No exceptions escape (yaml-cpp's are caught inside).
#ifndef SIGMATUNE_WORKER_JOB_SPEC_PARSE_H_
#define SIGMATUNE_WORKER_JOB_SPEC_PARSE_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"
#include "worker/job/spec.h"

namespace sigmatune::job::internal {

enum class ParseOutcome { kParsed, kSyntaxError };

ParseOutcome ParseSpecText(absl::string_view text, SpecSyntax syntax, google::protobuf::Message* message,
                           std::vector<SpecProblem>* problems);

// The closest of `candidates` to `word` within an edit distance of 2 (case-insensitive; an adjacent
// transposition counts 1), or "" when none is that close.
std::string ClosestWord(absl::string_view word, const std::vector<std::string>& candidates);

// `text` in double quotes, cut after 60 characters, for messages.
std::string Quoted(absl::string_view text);

}  // namespace sigmatune::job::internal

#endif  // SIGMATUNE_WORKER_JOB_SPEC_PARSE_H_
