#pragma once
// Task losses, normalised by the global token count so that summing per-rank
// contributions gives the mean over the global batch.
#include "core/fixed_sum.hpp"
#include "core/tensor.hpp"
#include "nn/batch.hpp"

namespace moesim {

struct LossResult {
  FixedSum sum;        // local sum of per-token losses, exact (rank-count invariant totals)
  Index correct = 0;   // classification: local correct predictions
};

// Mean squared error (regression) or softmax cross-entropy in nats (classification).
// Fills dout with d(mean loss over B_global)/d(out) for the local rows.
template <class T>
LossResult task_loss(const Mat<T>& out, const Batch& batch, bool classification,
                     std::int64_t B_global, Mat<T>* dout);

}  // namespace moesim
