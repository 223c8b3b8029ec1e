#pragma once
// A plain, serial, token-by-token MoE layer over the whole global batch, in double.
// It is the reference the expert-parallel MoeLayer is tested against: no MPI, no
// dispatch layout, no GEMMs, every formula written out once.
#include <vector>

#include "core/tensor.hpp"
#include "moe/router.hpp"

namespace moesim {

struct ReferenceExpert {
  Mat<double> w1, b1, w2, b2;  // D x F, 1 x F, F x D, 1 x D
};

struct ReferenceMoe {
  Mat<double> router;                 // D x E
  std::vector<ReferenceExpert> experts;
  int K = 1;
  double capacity_factor = 0;         // 0 = dropless
  double aux_loss_weight = 0;
  bool switch_gate = false;           // K = 1, gate = full-softmax probability
  double z_loss_weight = 0;
  // Other gates (switch_gate above is the same as gate = kSwitch).
  GateKind gate = GateKind::kTopK;
  bool pre_softmax = false;           // topk: gate = p_e of the chosen (--router-pre-softmax)
  Mat<double> router_noise;           // noisy top-k: W_noise, D x E
  Mat<double> noise;                  // noisy top-k: the draws eps, B x E (empty: no noise)
  double importance_weight = 0, load_weight = 0;
  std::vector<double> bias;           // selection bias per expert (empty: none)
  int sinkhorn_iters = 8;             // sbase
  Mat<double> hash_planes;            // hash on the input: D x 16 (empty: hash the position)
  std::uint64_t hash_seed = 1;
  int hash_layer = 0;
  std::vector<ReferenceExpert> shared;  // always-active experts, weight 1
  bool sigmoid_scores = false;        // topk: --score-function sigmoid
  bool drop_by_probs = false;         // --drop-policy probs
  long min_capacity = 0;              // --min-capacity
  Mat<double> jitter;                 // --router-jitter: the factors, B x D (empty: none)

  struct Forward {
    Mat<double> y;                    // B x D
    double aux_loss = 0;              // E * sum f_e P_e (unweighted)
    double z_loss = 0;                // mean of logsumexp(logits)^2 (unweighted)
    double importance_loss = 0, load_loss = 0;  // noisy top-k (unweighted)
    std::vector<std::vector<int>> chosen;   // per token: experts by descending logit
    std::vector<std::vector<double>> gate;  // per token: softmax over chosen logits
    std::vector<std::vector<char>> kept;    // per token and choice
    std::vector<long> expert_tokens;        // kept assignments per expert
    long dropped = 0;
    std::vector<int> next_choice;           // per token: the (K+1)-th expert by score
    std::vector<double> dimportance, dload; // d CV^2 / d importance_e, d load_e
  };
  struct Grads {
    Mat<double> dx, drouter;
    Mat<double> drouter_noise;
    std::vector<ReferenceExpert> dexperts, dshared;
  };

  Forward forward(const Mat<double>& x) const;
  // Gradient of sum(dy .* y) + aux_loss_weight * aux_loss + z_loss_weight * z_loss
  // (+ importance and load losses for noisy top-k; f treated as constant). The Switch
  // loss trains topk, switch and sbase routers only, as in MoeLayer.
  Grads backward(const Mat<double>& x, const Forward& fw, const Mat<double>& dy) const;
};

// The mixture of expert predictions after a dense or constant gate, token by token:
// f_k = head(rmsnorm(h + shared(x) + expert_k(x))), losses as in moe/mixture.hpp.
struct ReferenceMixture {
  Mat<double> gain;            // 1 x D, final norm
  Mat<double> head_w, head_b;  // D x O, 1 x O
  bool per_expert = false, classification = false;

  struct Result {
    double loss = 0;  // mean over the B tokens
    Mat<double> dx, dh, drouter, dgain, dhead_w, dhead_b;
    std::vector<ReferenceExpert> dexperts, dshared;
  };
  // x: the MoE layer's input (B x D), h: the residual stream (B x D); y (B x O) for
  // regression, label (B) for classification.
  Result run(const ReferenceMoe& moe, const Mat<double>& x, const Mat<double>& h,
             const Mat<double>& y, const std::vector<int>& label) const;
};

}  // namespace moesim
