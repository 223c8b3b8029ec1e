// Expert choice (Zhou et al. 2022): each expert takes its C best tokens by softmax score
// over the global batch; a token gets 0..E experts, g = its score.
#include "moe/candidate_pool.hpp"
#include "moe/gates/selection.hpp"

namespace moesim {

namespace {

template <class T>
class ExpertChoiceGate final : public GateOf<T, ExpertChoiceGate<T>> {
 public:
  explicit ExpertChoiceGate(const GateSetup&) {}
  int slots(int experts, int) const override { return experts; }
  bool needs_token_index() const override { return true; }

  template <class R>
  void route_as(GateForward<T, R>& f) {
    Routing<T>& r = f.r;
    choose_every_expert(r);
    select(f.probs, f.ctx, r.n, r.E, r.preselected);
    for (Index t = 0; t < r.n; ++t)
      for (int e = 0; e < r.E; ++e)
        if (r.preselected[static_cast<std::size_t>(t * r.E + e)]) r.gate(t, e) = r.probs(t, e);
  }

  template <class R>
  void backward_as(GateBackward<T, R>& b) const {
    probs_of_chosen_backward(b);
  }

 private:
  // NOTES: each expert's C best (score, global token) pairs over the global batch, ties
  // to the lower token. Every rank sends its local C best per expert (no more can make
  // the global cut), all ranks merge the same candidates and find each expert's cut.
  // Into `kept` (n*E); the work lives in members kept from step to step.
  void select(const Mat<double>& probs, const RouteContext& ctx, Index n, int E, std::vector<char>& kept) {
    const std::int64_t C = ctx.capacity;
    MOESIM_REQUIRE(C > 0, "expert-choice routing needs a capacity (capacity factor > 0)");
    const auto better = &CandidatePool::better;
    pool_.begin();
    idx_.resize(static_cast<std::size_t>(n));
    for (int e = 0; e < E; ++e) {
      std::iota(idx_.begin(), idx_.end(), Index{0});
      const Index m = std::min<Index>(n, static_cast<Index>(C));
      auto score = [&](Index t) { return probs(t, e); };
      std::partial_sort(idx_.begin(), idx_.begin() + m, idx_.end(), [&](Index a, Index b) {
        return better(score(a), ctx.first_token + a, score(b), ctx.first_token + b);
      });
      pool_.add_count(static_cast<std::size_t>(m));
      for (Index i = 0; i < m; ++i)
        pool_.add(score(idx_[static_cast<std::size_t>(i)]), ctx.first_token + idx_[static_cast<std::size_t>(i)]);
    }
    pool_.gather(ctx.comm, E, [](int) { return true; });
    kept.assign(static_cast<std::size_t>(n * E), 0);
    for (int e = 0; e < E; ++e) {
      const std::size_t m = std::min<std::size_t>(pool_.candidates(e), static_cast<std::size_t>(C));
      if (m == 0) continue;
      const CandidatePool::Pair cut = pool_.cut(e, m);
      for (Index t = 0; t < n; ++t) {
        const double s = probs(t, e);
        const std::int64_t tok = ctx.first_token + t;
        if (better(s, tok, cut.first, cut.second) || (s == cut.first && tok == cut.second))
          kept[static_cast<std::size_t>(t * E + e)] = 1;
      }
    }
  }

  std::vector<Index> idx_;  // n: tokens by one expert's score
  CandidatePool pool_;
};

}  // namespace

const GateSpec expert_choice_gate_spec = gate_spec<ExpertChoiceGate>({.needs_capacity = true});

}  // namespace moesim
