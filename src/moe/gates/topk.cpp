// Top-k (Shazeer et al. 2017): the K largest logits, g = softmax over them; for K = 1
// the gate is the constant 1, so only the balancing loss trains the router. With
// --router-pre-softmax (Megatron's choice) g = the chosen experts' softmax probabilities
// over all E logits, not renormalised, so the task loss trains the router for any K.
// With --score-function sigmoid (DeepSeek-V3) the scores are s = sigmoid(logits): the K
// largest s (+ the selection bias) are chosen, g = s_chosen / sum(s_chosen) for K > 1 and
// s itself for K = 1 (Megatron-LM's rule: normalising one score would give the constant 1),
// and the router's probabilities (the Switch loss's P_e, the metrics) are s / sum_e s_e.
#include "moe/gates/selection.hpp"

namespace moesim {

namespace {

// Added to the normalising sums of the sigmoid scores (Megatron-LM's 1e-20), so that scores
// that all underflow to 0 give gates 0, not 0 / 0.
constexpr double kSigmoidSumEps = 1e-20;

template <class T>
class TopKGate final : public GateOf<T, TopKGate<T>> {
 public:
  explicit TopKGate(const GateSetup& s)
      : pre_softmax_(s.opt.pre_softmax), sigmoid_(s.opt.score == ScoreFunction::kSigmoid) {}

  template <class R>
  void route_as(GateForward<T, R>& f) {
    if (sigmoid_) {
      route_sigmoid(f);
      return;
    }
    select_top_k(f.biased(f.logits), f.r, f.scratch.order);
    if (pre_softmax_) gate_probs_of_chosen(f.r);
    else gate_softmax_of_chosen(f.logits, f.r, f.scratch.chosen);
  }

  template <class R>
  void backward_as(GateBackward<T, R>& b) const {
    if (sigmoid_) {
      backward_sigmoid(b);
      return;
    }
    if (pre_softmax_) {
      probs_of_chosen_backward(b);
      return;
    }
    RowVec<R>& dg = b.scratch.chosen;
    dg.resize(b.r.K);
    for (Index t = 0; t < b.r.n; ++t) {
      for (int j = 0; j < b.r.K; ++j) dg(j) = static_cast<R>(b.dgate(t, j));
      softmax_of_chosen_backward(b.r, t, dg, [&](int e, R dh) { b.dlogits(t, e) += dh; });
    }
  }

 private:
  // NOTES: every score and sum in R, token by token, so a token's gates are a function of
  // its logits alone (no layout dependence).
  template <class R>
  void route_sigmoid(GateForward<T, R>& f) {
    Routing<T>& r = f.r;
    const int E = r.E, K = r.K;
    Mat<R>& s = f.scratch.scores;
    s.resize(r.n, E);
    for (Index t = 0; t < r.n; ++t)
      for (int e = 0; e < E; ++e) s(t, e) = R(1) / (R(1) + std::exp(-f.logits(t, e)));
    select_top_k(f.biased(s), r, f.scratch.order);
    scores_ = s.template cast<double>();
    r.entropy.clear();  // probs become the normalised scores below
    for (Index t = 0; t < r.n; ++t) {
      R all = static_cast<R>(kSigmoidSumEps), chosen = static_cast<R>(kSigmoidSumEps);
      for (int e = 0; e < E; ++e) all += s(t, e);
      for (int j = 0; j < K; ++j) chosen += s(t, r.expert_of(t, j));
      for (int e = 0; e < E; ++e) r.probs(t, e) = static_cast<T>(s(t, e) / all);
      for (int j = 0; j < K; ++j) {
        const R sj = s(t, r.expert_of(t, j));
        r.gate(t, j) = static_cast<T>(K > 1 ? sj / chosen : sj);
      }
    }
  }

  // g_j = s_j / S (S = sum of the chosen s + eps): dL/ds_i = (dg_i - sum_j dg_j g_j) / S;
  // q_e = s_e / Q over all E likewise; ds/dlogit = s (1 - s). The router's softmax gets no
  // gradient (dprobs is consumed here).
  template <class R>
  void backward_sigmoid(GateBackward<T, R>& b) const {
    const Routing<T>& r = b.r;
    const int E = r.E, K = r.K;
    RowVec<R>& s = b.scratch.row;
    RowVec<R>& ds = b.scratch.drow;
    s.resize(E);
    ds.resize(E);
    for (Index t = 0; t < r.n; ++t) {
      for (int e = 0; e < E; ++e) s(e) = static_cast<R>(scores_(t, e));
      ds.setZero();
      R all = static_cast<R>(kSigmoidSumEps), chosen = static_cast<R>(kSigmoidSumEps);
      for (int e = 0; e < E; ++e) all += s(e);
      for (int j = 0; j < K; ++j) chosen += s(r.expert_of(t, j));
      if (K > 1) {
        R dot = 0;
        for (int j = 0; j < K; ++j) dot += static_cast<R>(b.dgate(t, j)) * (s(r.expert_of(t, j)) / chosen);
        for (int j = 0; j < K; ++j) ds(r.expert_of(t, j)) += (static_cast<R>(b.dgate(t, j)) - dot) / chosen;
      } else {
        ds(r.expert_of(t, 0)) += static_cast<R>(b.dgate(t, 0));
      }
      R qdot = 0;
      for (int e = 0; e < E; ++e) qdot += b.dprobs(t, e) * (s(e) / all);
      for (int e = 0; e < E; ++e) ds(e) += (b.dprobs(t, e) - qdot) / all;
      for (int e = 0; e < E; ++e) b.dlogits(t, e) += ds(e) * s(e) * (R(1) - s(e));
    }
    b.dprobs.setZero();
  }

  bool pre_softmax_, sigmoid_;
  Mat<double> scores_;  // n x E sigmoid scores of the last forward (sigmoid), in R's values
};

}  // namespace

const GateSpec topk_gate_spec = gate_spec<TopKGate>({.token_choice = true, .switch_loss = true, .bias = true});

}  // namespace moesim
