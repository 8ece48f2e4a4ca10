// Status propagation helpers for absl::Status / absl::StatusOr.
//
//   ST_RETURN_IF_ERROR(WriteFile(path));
//   ST_ASSIGN_OR_RETURN(Tensor t, LoadTensor(path));
#ifndef SIGMATUNE_KERNELS_BASE_STATUS_MACROS_H_
#define SIGMATUNE_KERNELS_BASE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define ST_RETURN_IF_ERROR(expr)                  \
  do {                                            \
    ::absl::Status st_status_ = (expr);           \
    if (!st_status_.ok()) return st_status_;      \
  } while (0)

#define ST_CONCAT_INNER_(a, b) a##b
#define ST_CONCAT_(a, b) ST_CONCAT_INNER_(a, b)

#define ST_ASSIGN_OR_RETURN(lhs, expr) \
  ST_ASSIGN_OR_RETURN_IMPL_(ST_CONCAT_(st_statusor_, __LINE__), lhs, expr)

#define ST_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                              \
  if (!statusor.ok()) return statusor.status();        \
  lhs = std::move(statusor).value()

#endif  // SIGMATUNE_KERNELS_BASE_STATUS_MACROS_H_
