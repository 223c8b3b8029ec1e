// Expert choice (Zhou et al. 2022): each expert takes its C best tokens by softmax score
// over the global batch; a token gets 0..E experts, g = its score.
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
    auto better = [](double sa, std::int64_t ta, double sb, std::int64_t tb) { return sa > sb || (sa == sb && ta < tb); };
    cand_.clear();  // per expert: count, then (score, token) pairs
    idx_.resize(static_cast<std::size_t>(n));
    for (int e = 0; e < E; ++e) {
      std::iota(idx_.begin(), idx_.end(), Index{0});
      const Index m = std::min<Index>(n, static_cast<Index>(C));
      auto score = [&](Index t) { return probs(t, e); };
      std::partial_sort(idx_.begin(), idx_.begin() + m, idx_.end(), [&](Index a, Index b) {
        return better(score(a), ctx.first_token + a, score(b), ctx.first_token + b);
      });
      cand_.push_back(static_cast<double>(m));
      for (Index i = 0; i < m; ++i) {
        cand_.push_back(score(idx_[static_cast<std::size_t>(i)]));
        cand_.push_back(static_cast<double>(ctx.first_token + idx_[static_cast<std::size_t>(i)]));
      }
    }
    const std::vector<double>* all = &cand_;
    if (ctx.comm) {
      ctx.comm->allgatherv(cand_, all_, counts_);
      all = &all_;
    }
    // Per expert, every rank's candidates, contiguous: counted first, then placed.
    start_.assign(static_cast<std::size_t>(E) + 1, 0);
    for (std::size_t p = 0; p < all->size();)
      for (int e = 0; e < E; ++e) {
        const auto m = static_cast<std::size_t>((*all)[p]);
        start_[static_cast<std::size_t>(e) + 1] += m;
        p += 1 + 2 * m;
      }
    for (int e = 0; e < E; ++e) start_[static_cast<std::size_t>(e) + 1] += start_[static_cast<std::size_t>(e)];
    pool_.resize(start_[static_cast<std::size_t>(E)]);
    fill_ = start_;
    for (std::size_t p = 0; p < all->size();)
      for (int e = 0; e < E; ++e) {
        const auto m = static_cast<std::size_t>((*all)[p++]);
        for (std::size_t i = 0; i < m; ++i, p += 2)
          pool_[fill_[static_cast<std::size_t>(e)]++] = {(*all)[p], static_cast<std::int64_t>((*all)[p + 1])};
      }
    kept.assign(static_cast<std::size_t>(n * E), 0);
    for (int e = 0; e < E; ++e) {
      const auto first = pool_.begin() + static_cast<std::ptrdiff_t>(start_[static_cast<std::size_t>(e)]);
      const auto last = pool_.begin() + static_cast<std::ptrdiff_t>(start_[static_cast<std::size_t>(e) + 1]);
      const std::size_t m = std::min<std::size_t>(static_cast<std::size_t>(last - first), static_cast<std::size_t>(C));
      if (m == 0) continue;
      std::nth_element(first, first + static_cast<std::ptrdiff_t>(m - 1), last,
                       [&](const auto& a, const auto& b) { return better(a.first, a.second, b.first, b.second); });
      const auto cut = *(first + static_cast<std::ptrdiff_t>(m - 1));
      for (Index t = 0; t < n; ++t) {
        const double s = probs(t, e);
        const std::int64_t tok = ctx.first_token + t;
        if (better(s, tok, cut.first, cut.second) || (s == cut.first && tok == cut.second))
          kept[static_cast<std::size_t>(t * E + e)] = 1;
      }
    }
  }

  std::vector<double> cand_, all_;                      // this rank's candidates, everyone's
  std::vector<int> counts_;                             // allgatherv's
  std::vector<Index> idx_;                              // n: tokens by one expert's score
  std::vector<std::pair<double, std::int64_t>> pool_;   // every rank's candidates, by expert
  std::vector<std::size_t> start_, fill_;               // E + 1: each expert's range in pool_
};

}  // namespace

const GateSpec expert_choice_gate_spec = gate_spec<ExpertChoiceGate>({.needs_capacity = true});

}  // namespace moesim
