#pragma once
// The serial reference (moe/reference_moe.hpp) of an expert-parallel MoeLayer, for the
// tests that compare the two and for bench_moe's baseline. No GoogleTest here.
#include <cstdint>

#include "core/rng.hpp"
#include "moe/moe_layer.hpp"
#include "moe/reference_moe.hpp"
#include "support/random.hpp"

namespace moesim::test {

inline ReferenceExpert reference_of(Ffn<double>& f) {
  return {f.w1().value, f.b1().value, f.w2().value, f.b2().value};
}

// The reference of `layer`, built with (seed, layer_id): its router as it stands (weights,
// W_noise, selection biases, hash planes) and cfg's losses. Every expert is rebuilt the
// way MoeLayer builds it, from (seed, layer_id, e) alone, so the experts of other ranks
// are known too; they get random non-zero biases (keys bias_key + e and bias_key + 50 + e,
// so their gradients are exercised), copied into the layer's local experts. Shared
// experts are replicated: the layer's own copies are the reference's. Noise draws and
// --router-jitter factors depend on the batch and step and are the caller's to add.
inline ReferenceMoe make_reference(MoeLayer<double>& layer, const MoeLayerConfig& cfg,
                                   std::uint64_t seed, int layer_id,
                                   std::uint64_t bias_key = 900) {
  ReferenceMoe ref;
  ref.router = layer.router().weight().value;
  ref.gate = cfg.gate;
  ref.pre_softmax = cfg.router.pre_softmax;
  ref.sigmoid_scores = cfg.router.score == ScoreFunction::kSigmoid;
  ref.drop_by_probs = cfg.drop_policy == DropPolicy::kProbs;
  ref.min_capacity = static_cast<long>(cfg.min_capacity);
  ref.K = cfg.top_k;
  ref.capacity_factor = cfg.capacity_factor;
  ref.aux_loss_weight = cfg.balance == BalanceKind::kAux ? cfg.aux_loss_weight : 0.0;
  ref.z_loss_weight = cfg.z_loss_weight;
  ref.sinkhorn_iters = cfg.router.sinkhorn_iters;
  ref.hash_seed = seed;
  ref.hash_layer = layer_id;
  if (cfg.gate == GateKind::kHash && cfg.router.hash_key == HashKey::kInput)
    ref.hash_planes = hash_planes(seed, layer_id, cfg.d_model);
  if (cfg.gate == GateKind::kNoisyTopK) {
    ref.router_noise = layer.router().noise_weight().value;
    if (cfg.balance == BalanceKind::kAux) {
      ref.importance_weight = cfg.router.importance_weight;
      ref.load_weight = cfg.router.load_weight;
    }
  }
  if (cfg.balance == BalanceKind::kBias) ref.bias = layer.router().bias();
  for (int e = 0; e < cfg.experts; ++e) {
    Ffn<double> f("ref", cfg.d_model, cfg.d_ff, Placement::kExpertLocal);
    Rng rng(seed, Stream::kExpertInit, static_cast<std::uint64_t>(layer_id), static_cast<std::uint64_t>(e));
    f.init(rng);
    f.b1().value = random_matrix(1, cfg.d_ff, bias_key + static_cast<std::uint64_t>(e), 0.2);
    f.b2().value = random_matrix(1, cfg.d_model, bias_key + 50 + static_cast<std::uint64_t>(e), 0.2);
    ref.experts.push_back(reference_of(f));
  }
  for (int le = 0; le < layer.local_experts(); ++le) {
    const ReferenceExpert& re = ref.experts[static_cast<std::size_t>(layer.global_expert(le))];
    layer.local_expert(le).b1().value = re.b1;
    layer.local_expert(le).b2().value = re.b2;
  }
  for (int s = 0; s < cfg.shared_experts; ++s) ref.shared.push_back(reference_of(layer.shared_expert(s)));
  return ref;
}

}  // namespace moesim::test
