#pragma once
// What one MoE layer and its router are built from, and the invariants they need
// (asserted where they are built, DeepEP's Config style).
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.hpp"
#include "moe/dispatch/registry.hpp"
#include "moe/gates/registry.hpp"

namespace moesim {

enum class HashKey { kInput, kPosition };

// How the router scores experts (--score-function): the softmax over the E logits, or
// DeepSeek-V3's sigmoid of each logit (topk only; its gate weights are the chosen
// scores normalised to sum 1 when K > 1).
enum class ScoreFunction { kSoftmax, kSigmoid };
ScoreFunction parse_score_function(const std::string& name);  // ConfigError on unknown names

// Which assignments an expert over capacity keeps (--drop-policy): the first in the global
// (choice, token) order, or those with the largest gate weight (ties to the lower global
// token), Megatron-LM's "probs".
enum class DropPolicy { kPosition, kProbs };
// Where an expert group's N ranks hold the E experts, as the expert at each slot (group rank r
// holds slots [r E/N, (r+1) E/N)) from --expert-placement: `contiguous` (empty: slot = expert),
// `round-robin` (expert e on rank e mod N) or the experts listed slot by slot ("4,5,0,1,...", a
// permutation of 0..E-1: e.g. one that keeps a node's likely experts on it). ConfigError when
// the text is none of these.
std::vector<int> expert_order_for(const std::string& placement, int experts, int group_size);
DropPolicy parse_drop_policy(const std::string& name);  // ConfigError on unknown names

struct RouterOptions {
  GateKind gate = GateKind::kTopK;
  bool fp64 = false;              // compute logits, softmax, selection and gradients in fp64
  bool bias_selection = false;    // --balance bias: per-expert bias added for selection only
  double importance_weight = 0;   // noisy top-k: w * CV(importance)^2
  double load_weight = 0;         // noisy top-k: w * CV(load)^2
  int sinkhorn_iters = 8;         // S-BASE
  HashKey hash_key = HashKey::kInput;
  bool pre_softmax = false;       // topk: gate = softmax over all E logits of the chosen (Megatron)
  ScoreFunction score = ScoreFunction::kSoftmax;  // topk: softmax, or sigmoid (DeepSeek-V3)
  // --router-jitter eps: while training, the router's input is multiplied elementwise by
  // U(1 - eps, 1 + eps) drawn from (seed, layer, step, global token, feature) (Switch).
  double jitter = 0;
  std::uint64_t seed = 1;         // noise and hash keys
  int layer_id = 0;
};

// How load is balanced: the gate's auxiliary loss (Switch's, or noisy top-k's importance
// and load losses), DeepSeek-V3's selection bias, or not at all.
enum class BalanceKind { kAux, kBias, kNone };
BalanceKind parse_balance(const std::string& name);  // ConfigError on unknown names

struct MoeLayerConfig {
  Index d_model = 16;
  Index d_ff = 32;
  int experts = 4;            // E
  int top_k = 2;              // K
  double capacity_factor = 1.25;  // 0 = dropless
  std::int64_t min_capacity = 0;  // --min-capacity: a capacity is at least this (when not dropless)
  DropPolicy drop_policy = DropPolicy::kPosition;
  double aux_loss_weight = 0.01;  // Switch load-balancing loss weight
  double z_loss_weight = 0.0;     // ST-MoE router z-loss weight
  double router_init_scale = 0.1;
  GateKind gate = GateKind::kTopK;  // kDense / kConstant: K = E, capacity does not apply
  int shared_experts = 0;           // always-active replicated experts, D -> d_ff -> D
  DispatchAlgo dispatch = DispatchAlgo::kAlltoallv;
  // N (--ep-size): ranks per expert group; tokens are exchanged inside a group of N,
  // each group holds all E experts (comm/expert_groups.hpp). 0: gcd(E, P).
  int ep_size = 0;
  // --ranks-per-node G: nodes are G consecutive ranks (virtual nodes, so one machine runs every
  // multi-node path); 0: the ranks that share memory (MPI_COMM_TYPE_SHARED).
  int ranks_per_node = 0;
  bool on_gpu = false;  // --device cuda: the experts' FFN on each rank's GPU (device/ffn_engine)
  std::vector<int> expert_order;  // --expert-placement: the expert at each slot; empty: contiguous
  // Routing options (docs/gates.md); the layer fills in seed and layer id.
  double eval_capacity_factor = -1;  // < 0: the training capacity factor
  BalanceKind balance = BalanceKind::kAux;
  double bias_update_rate = 1e-3;    // --balance bias: b_e += rate * sign(mean load - load_e)
  RouterOptions router;

  // ConfigError (one line, the cli's words) unless a layer on `ranks` ranks can be built
  // from this. `granularity`: E and K are the user's values times this (--granularity),
  // so messages can name the values the user gave.
  void validate(int ranks, int granularity = 1) const;

  // Empty, or why the router of this layer gets no gradient from the task loss (gate weights
  // that are constant: topk or noisy-topk choosing one expert without --router-pre-softmax),
  // one line in the cli's words. Gates without a trained router (hash, constant) and E = 1
  // (nothing to route) give none.
  std::string router_warning() const;

  // N on `ranks` ranks: ep_size, or gcd(E, P) when it is 0.
  int ep_size_for(int ranks) const;
};

}  // namespace moesim
