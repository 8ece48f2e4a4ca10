// CHECK macros for programmer errors (broken invariants inside the project, never bad input:
// bad input gets an absl::Status). A failed check prints file:line, the condition and an optional
// streamed message to stderr, then aborts.
//
//   ST_CHECK(ptr != nullptr) << "while building " << name;
//   ST_CHECK_EQ(a.rank(), 2);
#ifndef SIGMATUNE_KERNELS_BASE_CHECK_H_
#define SIGMATUNE_KERNELS_BASE_CHECK_H_

#include <sstream>

namespace sigmatune::internal {

// Collects the message of a failed check and aborts when destroyed.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition);
  CheckFailure(const CheckFailure&) = delete;
  CheckFailure& operator=(const CheckFailure&) = delete;
  [[noreturn]] ~CheckFailure();

  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

// Lets `ST_CHECK(c) << x` compile to nothing when c holds.
struct Voidify {
  void operator&(std::ostream&) {}
};

}  // namespace sigmatune::internal

#define ST_CHECK(condition)                           \
  (condition) ? (void)0                               \
              : ::sigmatune::internal::Voidify() &    \
                    ::sigmatune::internal::CheckFailure(__FILE__, __LINE__, #condition).stream()

#define ST_CHECK_OP_(a, op, b) ST_CHECK((a)op(b)) << "(" << (a) << " vs " << (b) << ") "
#define ST_CHECK_EQ(a, b) ST_CHECK_OP_(a, ==, b)
#define ST_CHECK_NE(a, b) ST_CHECK_OP_(a, !=, b)
#define ST_CHECK_LT(a, b) ST_CHECK_OP_(a, <, b)
#define ST_CHECK_LE(a, b) ST_CHECK_OP_(a, <=, b)
#define ST_CHECK_GT(a, b) ST_CHECK_OP_(a, >, b)
#define ST_CHECK_GE(a, b) ST_CHECK_OP_(a, >=, b)

#endif  // SIGMATUNE_KERNELS_BASE_CHECK_H_
