#pragma once
// Task losses, normalised by the global token count so that summing per-rank
// contributions gives the mean over the global batch.
#include "core/tensor.hpp"
#include "nn/batch.hpp"

namespace moesim {

struct LossResult {
  double sum = 0;      // local sum of per-token losses
  Index correct = 0;   // classification: local correct predictions
};

// Mean squared error (regression) or softmax cross-entropy in nats (classification).
// Fills dout with d(mean loss over B_global)/d(out) for the local rows.
template <class T>
LossResult task_loss(const Mat<T>& out, const Batch& batch, bool classification,
                     std::int64_t B_global, Mat<T>* dout);

}  // namespace moesim
