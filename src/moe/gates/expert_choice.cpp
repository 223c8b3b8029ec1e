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
    r.preselected = select(f.probs, f.ctx, r.n, r.E);
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
  static std::vector<char> select(const Mat<double>& probs, const RouteContext& ctx, Index n, int E) {
    const std::int64_t C = ctx.capacity;
    MOESIM_REQUIRE(C > 0, "expert-choice routing needs a capacity (capacity factor > 0)");
    auto better = [](double sa, std::int64_t ta, double sb, std::int64_t tb) { return sa > sb || (sa == sb && ta < tb); };
    std::vector<double> cand;  // per expert: count, then (score, token) pairs
    std::vector<Index> idx(static_cast<std::size_t>(n));
    for (int e = 0; e < E; ++e) {
      std::iota(idx.begin(), idx.end(), Index{0});
      const Index m = std::min<Index>(n, static_cast<Index>(C));
      auto score = [&](Index t) { return probs(t, e); };
      std::partial_sort(idx.begin(), idx.begin() + m, idx.end(), [&](Index a, Index b) {
        return better(score(a), ctx.first_token + a, score(b), ctx.first_token + b);
      });
      cand.push_back(static_cast<double>(m));
      for (Index i = 0; i < m; ++i) {
        cand.push_back(score(idx[static_cast<std::size_t>(i)]));
        cand.push_back(static_cast<double>(ctx.first_token + idx[static_cast<std::size_t>(i)]));
      }
    }
    const std::vector<double> all = ctx.comm ? ctx.comm->allgatherv(cand) : cand;
    // Per expert, every rank's candidates.
    std::vector<std::vector<std::pair<double, std::int64_t>>> pool(static_cast<std::size_t>(E));
    for (std::size_t p = 0; p < all.size();) {
      for (int e = 0; e < E; ++e) {
        const auto m = static_cast<std::size_t>(all[p++]);
        for (std::size_t i = 0; i < m; ++i, p += 2)
          pool[static_cast<std::size_t>(e)].emplace_back(all[p], static_cast<std::int64_t>(all[p + 1]));
      }
    }
    std::vector<char> kept(static_cast<std::size_t>(n * E), 0);
    for (int e = 0; e < E; ++e) {
      auto& v = pool[static_cast<std::size_t>(e)];
      const std::size_t m = std::min<std::size_t>(v.size(), static_cast<std::size_t>(C));
      if (m == 0) continue;
      std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(m - 1), v.end(),
                       [&](const auto& a, const auto& b) { return better(a.first, a.second, b.first, b.second); });
      const auto cut = v[m - 1];
      for (Index t = 0; t < n; ++t) {
        const double s = probs(t, e);
        const std::int64_t tok = ctx.first_token + t;
        if (better(s, tok, cut.first, cut.second) || (s == cut.first && tok == cut.second))
          kept[static_cast<std::size_t>(t * E + e)] = 1;
      }
    }
    return kept;
  }
};

}  // namespace

const GateSpec expert_choice_gate_spec = gate_spec<ExpertChoiceGate>({.needs_capacity = true});

}  // namespace moesim
