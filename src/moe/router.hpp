#pragma once
// Routers: which experts each token goes to, and with what gate weight.
//   kTopK        g = softmax over the K largest logits (Shazeer et al. 2017); for K = 1
//                the gate is the constant 1, so only the balancing loss trains the router.
//   kSwitch      K = 1, g = softmax probability of the chosen expert (Fedus et al. 2021).
//   kNoisyTopK   top-k over H = x W_g + eps * softplus(x W_noise), eps ~ N(0, 1) drawn
//                from (seed, step, global token, expert) while training (Shazeer et al.
//                2017), with its importance and load losses.
//   kExpertChoice each expert takes its C best tokens by softmax score over the global
//                batch (Zhou et al. 2022); a token gets 0..E experts, g = its score.
//   kHash        fixed map, no learned routing (Roller et al. 2021): the hash of the sign
//                pattern of 16 fixed random projections of the layer input, or of the
//                token's global position in the batch; g = 1 / K.
//   kSBase       top-k of the balanced plan that Sinkhorn iterations make from the router
//                scores over the global batch (Clark et al. 2022); g = softmax probability.
//   kDense       every token to every expert (K = E), g = softmax (Jacobs et al. 1991).
//   kConstant    every token to every expert, g = 1/E whatever the input (linear
//                interpolation, seed 003): logits are 0, nothing is trained.
// The router may compute in fp64 while the model is fp32 (weights keep the model's type).
#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "core/rng.hpp"
#include "nn/param.hpp"

namespace moesim {

// Routing decisions for the n local tokens of one MoE layer.
template <class T>
struct Routing {
  Index n = 0;
  int K = 0, E = 0;         // K: choice slots per token (E for expert choice)
  std::vector<int> expert;  // n*K, per token the chosen experts by descending score
  Mat<T> gate;              // n x K gate weights
  Mat<T> probs;             // n x E, softmax over all logits (load-balancing loss)
  std::vector<double> lse;  // n, log-sum-exp of the logits (router z-loss)
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

enum class GateKind { kTopK, kSwitch, kNoisyTopK, kExpertChoice, kHash, kSBase, kDense, kConstant };
// Gates that route every token to every expert (K = E, capacity does not apply).
inline bool gate_uses_all_experts(GateKind g) { return g == GateKind::kDense || g == GateKind::kConstant; }
GateKind parse_gate(const std::string& name);  // ConfigError on unknown names
const char* gate_name(GateKind g);
// Gates whose selection is learned per token, so a balancing loss or bias applies.
bool gate_is_token_choice(GateKind g);

enum class HashKey { kInput, kPosition };

struct RouterOptions {
  GateKind gate = GateKind::kTopK;
  bool fp64 = false;              // compute logits, softmax, selection and gradients in fp64
  bool bias_selection = false;    // --balance bias: per-expert bias added for selection only
  double importance_weight = 0;   // noisy top-k: w * CV(importance)^2
  double load_weight = 0;         // noisy top-k: w * CV(load)^2
  int sinkhorn_iters = 8;         // S-BASE
  HashKey hash_key = HashKey::kInput;
  std::uint64_t seed = 1;         // noise and hash keys
  int layer_id = 0;
};

// What a forward pass needs to know beyond its local tokens.
struct RouteContext {
  const Communicator* comm = nullptr;  // needed by noisy-topk (training), sbase, expert-choice
  std::int64_t B = 0;                  // global tokens
  std::int64_t first_token = 0;        // global index of local token 0
  std::int64_t step = 0;
  bool training = false;
  std::int64_t capacity = 0;           // expert choice: tokens per expert
};

// The hash router's expert for a key; a pure function of (seed, layer, key).
int hash_expert(std::uint64_t seed, int layer_id, std::uint64_t key, int E);
// The hash router's fixed projections of the layer input (D x 16, N(0, 1)).
Mat<double> hash_planes(std::uint64_t seed, int layer_id, Index d_model);
// Noisy top-k's standard normal draw for (global token, expert) at a step.
double router_noise(std::uint64_t seed, int layer_id, std::int64_t step, std::int64_t token, int expert);

template <class T>
class Router {
 public:
  Router() = default;
  Router(const std::string& name, Index d_model, int experts, int top_k,
         GateKind kind = GateKind::kTopK);
  Router(const std::string& name, Index d_model, int experts, int top_k, const RouterOptions& opt);
  // Small-variance init (Switch Transformer): N(0, scale / D). W_noise starts at 0 (Shazeer).
  void init(Rng& rng, double init_scale);
  // COLLECTIVE over ctx.comm for noisy-topk (training), sbase and expert-choice.
  void forward(const Mat<T>& x, const RouteContext& ctx, Routing<T>& r);
  void forward(const Mat<T>& x, Routing<T>& r) { forward(x, RouteContext{}, r); }
  // dgate: n x K; dprobs: n x E (may be empty); dlse: gradient w.r.t. each token's
  // log-sum-exp (router z-loss; may be empty). Adds the noisy-topk losses' gradients.
  // Returns dX, accumulates dW (and dW_noise).
  void backward(const Routing<T>& r, const Mat<T>& dgate, const Mat<T>& dprobs, Mat<T>& dx,
                const std::vector<double>& dlse = {});
  void params(ParamList<T>& out) {
    if (opt_.gate == GateKind::kConstant) return;  // nothing to train
    out.push_back(&w_);
    if (opt_.gate == GateKind::kNoisyTopK) out.push_back(&w_noise_);
  }
  Param<T>& weight() { return w_; }
  Param<T>& noise_weight() { return w_noise_; }
  // --balance bias: selection bias per expert (state, not a parameter).
  std::vector<double>& bias() { return bias_; }
  const std::vector<double>& bias() const { return bias_; }
  const RouterOptions& options() const { return opt_; }
  // Whether forward needs ctx.first_token (the layer computes it with an exscan).
  bool needs_token_index() const;

 private:
  template <class R> void forward_as(const Mat<T>& x, const RouteContext& ctx, Routing<T>& r);
  template <class R> void backward_as(const Routing<T>& r, const Mat<T>& dgate, const Mat<T>& dprobs,
                                      Mat<T>& dx, const std::vector<double>& dlse);
  void select_expert_choice(const RouteContext& ctx, Routing<T>& r) const;

  Param<T> w_, w_noise_;
  int K_ = 1;
  RouterOptions opt_;
  std::vector<double> bias_;
  Mat<double> hash_planes_;  // D x 16 fixed projections (hash on the input)
  // Saved by forward for backward (values exactly as computed, held in double).
  Mat<T> x_;
  Mat<double> probs_;                  // n x E softmax in the router's precision
  bool noisy_ = false;                 // noise was applied (training)
  Mat<double> noise_logits_, eps_;     // n x E: x W_noise and the draws
  std::vector<int> next_order_;        // n: the (K+1)-th expert by selection score (-1 if K = E)
  std::vector<double> dimportance_, dload_;  // E: d CV^2 / d importance_e, d load_e
  Mat<double> load_z_;                 // n x E: z of P(nonzero) = Phi(z)
};

// The name the first router had.
template <class T>
using TopKRouter = Router<T>;

}  // namespace moesim
