// The adapter methods sigmatune builds (../shared/METHODS.md is the specification) and the options
// every part of kernels/peft shares.
//
// Notation (METHODS.md): W [m, n] the frozen weight in the HF [out, in] layout, k = min(m, n),
// r the rank, A [r, n] (PEFT lora_A), B [m, r] (PEFT lora_B), s the scale, W_res the frozen
// residual base after initialisation. The adapter adds s * B diag(d) A x (d only for KaSA).
#ifndef SIGMATUNE_KERNELS_PEFT_METHOD_H_
#define SIGMATUNE_KERNELS_PEFT_METHOD_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sigmatune::peft {

enum class Method {
  kLora,      // §1: A Kaiming-uniform, B = 0, W_res = W
  kPissa,     // §2: top-r SVD of W (full SVD, or randomized with niter > 0)
  kMilora,    // §3: bottom-r SVD of W
  kCordaIpm,  // §4: top-r left singular subspace of W C_d (instruction-previewed)
  kCordaKpm,  // §4: bottom-r left singular subspace of W C_d (knowledge-preserved)
  kKasa,      // §5: W_res = top-(k-r) truncation of W; A Kaiming, B = 0, d ~ N(0, 1)
};

// "lora", "pissa", "milora", "corda_ipm", "corda_kpm", "kasa".
absl::string_view MethodName(Method method);
absl::StatusOr<Method> ParseMethod(absl::string_view name);
// CorDA needs the covariance of each targeted layer's input.
bool NeedsCovariance(Method method);
// Every method but LoRA changes the base weight (W_res != W).
bool ChangesBase(Method method);

enum class Scaling {
  kStandard,         // s = alpha / r
  kRankStabilized,   // rsLoRA: s = alpha / sqrt(r)
};

// Which KaSA orthogonality regulariser (METHODS.md §5).
enum class KasaRegularizerForm {
  kPeft,       // beta * sum d^2 + gamma * (||B^T B - I_r||_F + ||A A^T - I_r||_F), summed over layers
  kReference,  // the KaSA repository: the same with ||A^T A - I_n||_F + ||B B^T - I_m||_F, and the
               // total divided by the number of adapted layers
};

struct AdapterOptions {
  Method method = Method::kLora;
  int64_t rank = 8;
  double alpha = 8.0;
  Scaling scaling = Scaling::kStandard;
  double dropout = 0.0;  // on the adapter branch's input only, 0 <= dropout < 1
  int pissa_niter = 0;   // PiSSA: 0 = full SVD, K > 0 = randomized SVD with K subspace iterations
  double kasa_beta = 1e-4;
  double kasa_gamma = 1e-3;
  KasaRegularizerForm kasa_form = KasaRegularizerForm::kPeft;

  // InvalidArgument naming the field (rank >= 1, alpha > 0, 0 <= dropout < 1, niter >= 0, beta/gamma >= 0).
  absl::Status Validate() const;
};

// s = alpha / r, or alpha / sqrt(r) with rsLoRA.
double AdapterScale(const AdapterOptions& options);

}  // namespace sigmatune::peft

#endif  // SIGMATUNE_KERNELS_PEFT_METHOD_H_
