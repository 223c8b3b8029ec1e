#pragma once
// The mixture of expert predictions (Jacobs, Jordan, Nowlan and Hinton 1991) for gates that weight
// every expert (dense, constant). Expert k's prediction f_k is the last MoE block's output
// with expert k alone, h + s(x) + u_k(x) (h the residual stream, s the shared experts),
// passed through the final norm and the head; the mixture predicts sum_k g_k f_k
// (regression) or sum_k g_k softmax(f_k) (classification).
//
// Losses per token (K = E experts, gates g_k summing to 1):
//   global      regression (y - sum_k g_k f_k)^2       classification -log sum_k g_k p_k(y)
//   per-expert  regression sum_k g_k (y - f_k)^2        classification -sum_k g_k log p_k(y)
// "global" is the ordinary loss of the combined prediction: every expert sees the same
// residual and they collapse; "per-expert" gives each expert its own error, weighted by
// its gate, and they specialise. For regression per-expert = global + sum_k g_k (f_k - fbar)^2.
#include <cstdint>
#include <string>

#include "core/fixed_sum.hpp"
#include "nn/batch.hpp"
#include "nn/layers.hpp"

namespace moesim {

enum class MixtureLoss { kNone, kGlobal, kPerExpert };
MixtureLoss parse_mixture_loss(const std::string& name);  // ConfigError on unknown names
const char* mixture_loss_name(MixtureLoss m);

struct MixtureLossResult {
  // Exact sums (core/fixed_sum.hpp), so that totals over ranks do not depend on the layout.
  FixedSum objective;   // local sum over tokens of the training loss above
  FixedSum prediction;  // local sum of the task loss of the mixture's prediction
  FixedSum spread;      // local sum of sum_k g_k ||q_k - qbar||^2, q = f (regression) or p
  Index correct = 0;      // classification: argmax of the mixture's probabilities
};

// F: n*K rows of expert predictions, token-major (row t*K + k); G: n x K gates.
// pred (n x O): regression sum_k g_k f_k; classification log sum_k g_k softmax(f_k), so
// that the ordinary task loss of pred is the mixture's loss. dF, dG (may be null): the
// gradients of objective / B_global.
template <class T>
MixtureLossResult mixture_loss(MixtureLoss kind, const Mat<T>& F, const Mat<T>& G,
                               const Batch& batch, bool classification, std::int64_t B_global,
                               Mat<T>* pred, Mat<T>* dF, Mat<T>* dG);

// Final norm and head applied to every branch h + U_k, then the loss above.
template <class T>
class MixtureTail {
 public:
  // h: n x D; U: n*K x D branch outputs of the MoE layer; G: n x K. chunk: tokens per
  // product block (nn/layers.hpp), K times as many branch rows.
  void forward(RmsNorm<T>& norm, Linear<T>& head, const Mat<T>& h, const Mat<T>& U,
               const Mat<T>& G, bool classification, Mat<T>& pred, Index chunk = 0);
  // Accumulates the norm's and head's gradients; returns dh, dU, dG.
  MixtureLossResult loss_backward(RmsNorm<T>& norm, Linear<T>& head, MixtureLoss kind,
                                  const Batch& batch, bool classification,
                                  std::int64_t B_global, Mat<T>& dh, Mat<T>& dU, Mat<T>& dG,
                                  Index chunk = 0);

 private:
  Mat<T> F_, G_;
};

}  // namespace moesim
