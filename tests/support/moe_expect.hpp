#pragma once
// Checks of an expert-parallel MoeLayer's gradients against its serial reference
// (support/moe_reference.hpp).
#include <algorithm>
#include <vector>

#include "core/shard.hpp"
#include "moe/moe_layer.hpp"
#include "moe/reference_moe.hpp"
#include "support/test_support.hpp"

namespace moesim::test {

// COLLECTIVE. A replicated gradient summed over ranks (what the trainer's all-reduce does).
inline Mat<double> summed(const Mat<double>& g) {
  Mat<double> s = g;
  world().allreduce_sum(s.data(), static_cast<int>(s.size()));
  return s;
}

// COLLECTIVE. An expert gradient summed over the expert's replicas (one per expert group,
// --ep-size), what the trainer's all-reduce does; the gradient itself when N = P.
inline Mat<double> replica_summed(const MoeLayer<double>& layer, const Mat<double>& g) {
  Mat<double> s = g;
  layer.expert_groups().replicas().allreduce_sum(s.data(), static_cast<int>(s.size()));
  return s;
}

// COLLECTIVE. Every local expert's gradients (summed over its replicas) against the
// reference's for its global index; the shared experts' (replicated) summed over ranks.
inline void expect_expert_grads(MoeLayer<double>& layer, const std::vector<ReferenceExpert>& dexperts,
                                const std::vector<ReferenceExpert>& dshared, double abs_tol, double rel_tol) {
  for (int le = 0; le < layer.local_experts(); ++le) {
    const ReferenceExpert& de = dexperts[static_cast<std::size_t>(layer.global_expert(le))];
    Ffn<double>& ex = layer.local_expert(le);
    MOESIM_EXPECT_CLOSE_ALL_RANKS(replica_summed(layer, ex.w1().grad), de.w1, abs_tol, rel_tol, "expert dW1");
    MOESIM_EXPECT_CLOSE_ALL_RANKS(replica_summed(layer, ex.b1().grad), de.b1, abs_tol, rel_tol, "expert db1");
    MOESIM_EXPECT_CLOSE_ALL_RANKS(replica_summed(layer, ex.w2().grad), de.w2, abs_tol, rel_tol, "expert dW2");
    MOESIM_EXPECT_CLOSE_ALL_RANKS(replica_summed(layer, ex.b2().grad), de.b2, abs_tol, rel_tol, "expert db2");
  }
  for (std::size_t s = 0; s < dshared.size(); ++s) {
    Ffn<double>& se = layer.shared_expert(static_cast<int>(s));
    MOESIM_EXPECT_CLOSE_ALL_RANKS(summed(se.w1().grad), dshared[s].w1, abs_tol, rel_tol, "shared dW1");
    MOESIM_EXPECT_CLOSE_ALL_RANKS(summed(se.b1().grad), dshared[s].b1, abs_tol, rel_tol, "shared db1");
    MOESIM_EXPECT_CLOSE_ALL_RANKS(summed(se.w2().grad), dshared[s].w2, abs_tol, rel_tol, "shared dW2");
    MOESIM_EXPECT_CLOSE_ALL_RANKS(summed(se.b2().grad), dshared[s].b2, abs_tol, rel_tol, "shared db2");
  }
}

// COLLECTIVE. The layer's output on this rank's tokens (rows `sh` of the global batch) and its
// statistics against the serial reference's forward pass.
inline void expect_forward_matches(const MoeLayer<double>& layer, const Mat<double>& y,
                                   const ReferenceMoe::Forward& fw, const Shard& sh, double abs_tol,
                                   double rel_tol) {
  MOESIM_EXPECT_CLOSE_ALL_RANKS(y, fw.y.middleRows(sh.first, sh.count), abs_tol, rel_tol, "Y");
  EXPECT_NEAR(layer.stats().aux_loss, fw.aux_loss, 1e-12);
  EXPECT_NEAR(layer.stats().z_loss, fw.z_loss, 1e-12 * std::max(1.0, fw.z_loss));
  EXPECT_NEAR(layer.stats().importance_loss, fw.importance_loss, 1e-12);
  EXPECT_NEAR(layer.stats().load_loss, fw.load_loss, 1e-12);
  EXPECT_EQ(layer.stats().dropped, fw.dropped);
  for (std::size_t e = 0; e < fw.expert_tokens.size(); ++e)
    EXPECT_EQ(layer.stats().expert_tokens[e], fw.expert_tokens[e]) << "expert " << e;
}

}  // namespace moesim::test
