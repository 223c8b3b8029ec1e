#pragma once
// Top-k softmax router (Shazeer et al. 2017): g(x) = softmax(top_k(x W_g)).
// Gate kinds: kTopK renormalises over the chosen logits (for K = 1 the gate is the
// constant 1, so only the load-balancing loss trains the router); kSwitch (Fedus et
// al. 2021, K = 1) weights the chosen expert by its full-softmax probability.
#include <string>
#include <vector>

#include "core/rng.hpp"
#include "nn/param.hpp"

namespace moesim {

// Routing decisions for the n local tokens of one MoE layer.
template <class T>
struct Routing {
  Index n = 0;
  int K = 0, E = 0;
  std::vector<int> expert;  // n*K, per token the chosen experts by descending logit
  Mat<T> gate;              // n x K, softmax over the chosen logits
  Mat<T> probs;             // n x E, softmax over all logits (load-balancing loss)
  std::vector<double> lse;  // n, log-sum-exp of the logits (router z-loss)
  int expert_of(Index t, int j) const { return expert[static_cast<std::size_t>(t * K + j)]; }
};

enum class GateKind { kTopK, kSwitch };

template <class T>
class TopKRouter {
 public:
  TopKRouter() = default;
  TopKRouter(const std::string& name, Index d_model, int experts, int top_k,
             GateKind kind = GateKind::kTopK);
  // Small-variance init (Switch Transformer): N(0, scale / D).
  void init(Rng& rng, double init_scale);
  void forward(const Mat<T>& x, Routing<T>& r);
  // dgate: n x K; dprobs: n x E (may be empty); dlse: gradient w.r.t. each token's
  // log-sum-exp (router z-loss; may be empty). Returns dX, accumulates dW.
  void backward(const Routing<T>& r, const Mat<T>& dgate, const Mat<T>& dprobs, Mat<T>& dx,
                const std::vector<double>& dlse = {});
  void params(ParamList<T>& out) { out.push_back(&w_); }
  Param<T>& weight() { return w_; }

 private:
  Param<T> w_;
  int K_ = 1;
  GateKind kind_ = GateKind::kTopK;
  Mat<T> x_;
};

}  // namespace moesim
