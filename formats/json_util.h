// Helpers for parsing untrusted JSON (nlohmann::json is recursive: bound the nesting first).
#ifndef SIGMATUNE_FORMATS_JSON_UTIL_H_
#define SIGMATUNE_FORMATS_JSON_UTIL_H_

#include "absl/strings/string_view.h"

namespace sigmatune::formats {

// False when `text` nests objects/arrays deeper than `max_depth` (strings are skipped, escapes
// honoured). A cheap pre-check before handing attacker-controlled text to a recursive parser.
bool JsonNestingWithin(absl::string_view text, int max_depth);

}  // namespace sigmatune::formats

#endif  // SIGMATUNE_FORMATS_JSON_UTIL_H_
