#pragma once
// What a router decides for the n local tokens of one MoE layer, and what a forward
// pass needs to know beyond its local tokens.
#include <cstdint>
#include <vector>

#include "comm/communicator.hpp"
#include "core/tensor.hpp"

namespace moesim {

template <class T>
struct Routing {
  Index n = 0;
  int K = 0, E = 0;         // K: choice slots per token (E for expert choice)
  std::vector<int> expert;  // n*K, per token the chosen experts by descending score
  Mat<T> gate;              // n x K gate weights
  Mat<T> probs;             // n x E, softmax over all logits (load-balancing loss)
  std::vector<double> lse;  // n, log-sum-exp of the logits (router z-loss)
  // n, each token's entropy of `probs` (nats) while they are the softmax of the logits, from
  // its logits and lse with no log per expert; empty where a gate made probs something else.
  std::vector<double> entropy;
  // Expert choice: the router already decided which slots are kept (capacity exactly
  // applied); empty otherwise.
  std::vector<char> preselected;
  double importance_loss = 0, load_loss = 0;  // noisy top-k, global, unweighted
  int expert_of(Index t, int j) const { return expert[static_cast<std::size_t>(t * K + j)]; }
  // The expert with the largest gate (ties: the earlier choice); under expert choice the
  // most probable expert that took the token, or the most probable overall if none did.
  int top_expert(Index t) const {
    Index j = 0;
    if (gate.row(t).maxCoeff(&j) > T(0)) return expert_of(t, static_cast<int>(j));
    probs.row(t).maxCoeff(&j);
    return static_cast<int>(j);
  }
};

struct RouteContext {
  const Communicator* comm = nullptr;  // needed by noisy-topk (training), sbase, expert-choice
  std::int64_t B = 0;                  // global tokens
  std::int64_t first_token = 0;        // global index of local token 0
  std::int64_t step = 0;
  bool training = false;
  std::int64_t capacity = 0;           // expert choice: tokens per expert
  Index chunk = 0;                     // rows per product block (core/row_chunks.hpp); 0: all
};

// The hash gate's expert for a key; a pure function of (seed, layer, key).
int hash_expert(std::uint64_t seed, int layer_id, std::uint64_t key, int E);
// The hash gate's fixed projections of the layer input (D x 16, N(0, 1)).
Mat<double> hash_planes(std::uint64_t seed, int layer_id, Index d_model);
// Noisy top-k's standard normal draw for (global token, expert) at a step.
double router_noise(std::uint64_t seed, int layer_id, std::int64_t step, std::int64_t token, int expert);
// --router-jitter's factor U(1 - eps, 1 + eps) for (global token, feature) at a step.
double router_jitter(std::uint64_t seed, int layer_id, std::int64_t step, std::int64_t token, Index feature,
                     double eps);

}  // namespace moesim
