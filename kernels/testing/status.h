// Status expectations for tests.
//
//   EXPECT_ERROR_MENTIONS(LoadModelConfig(path).status(), "config.json", "num_attention_heads");
// fails unless the status is an error whose message contains every listed part (errors must
// name the file, the field and what is wrong).
#ifndef SIGMATUNE_KERNELS_TESTING_STATUS_H_
#define SIGMATUNE_KERNELS_TESTING_STATUS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

#define EXPECT_ERROR_MENTIONS(status, ...)                                  \
  do {                                                                     \
    const absl::Status st_status_ = (status);                              \
    EXPECT_FALSE(st_status_.ok());                                         \
    for (const char* part : {__VA_ARGS__}) {                               \
      EXPECT_NE(st_status_.message().find(part), absl::string_view::npos)  \
          << "'" << part << "' not in: " << st_status_.message();          \
    }                                                                      \
  } while (0)

#endif  // SIGMATUNE_KERNELS_TESTING_STATUS_H_
