#include "moe/config.hpp"

#include <algorithm>
#include <charconv>

#include <algorithm>
#include <numeric>

#include "core/error.hpp"

namespace moesim {

BalanceKind parse_balance(const std::string& name) {
  if (name == "aux") return BalanceKind::kAux;
  if (name == "bias") return BalanceKind::kBias;
  if (name == "none") return BalanceKind::kNone;
  throw ConfigError("--balance must be aux, bias or none (got '" + name + "')");
}

ScoreFunction parse_score_function(const std::string& name) {
  if (name == "softmax") return ScoreFunction::kSoftmax;
  if (name == "sigmoid") return ScoreFunction::kSigmoid;
  throw ConfigError("--score-function must be softmax or sigmoid (got '" + name + "')");
}

DropPolicy parse_drop_policy(const std::string& name) {
  if (name == "position") return DropPolicy::kPosition;
  if (name == "probs") return DropPolicy::kProbs;
  throw ConfigError("--drop-policy must be position or probs (got '" + name + "')");
}

std::vector<int> expert_order_for(const std::string& placement, int experts, int group_size) {
  if (placement == "contiguous") return {};
  const int E = experts, N = group_size, El = N > 0 ? E / N : 0;
  std::vector<int> order(static_cast<std::size_t>(E));
  if (placement == "round-robin") {
    for (int q = 0; q < N; ++q)
      for (int le = 0; le < El; ++le) order[static_cast<std::size_t>(q * El + le)] = le * N + q;
    return order;
  }
  std::vector<char> seen(static_cast<std::size_t>(E), 0);
  std::size_t at = 0, n = 0;
  while (at <= placement.size()) {
    const std::size_t comma = std::min(placement.find(',', at), placement.size());
    const std::string item = placement.substr(at, comma - at);
    int e = -1;
    const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), e);
    MOESIM_CONFIG_CHECK(!item.empty() && ec == std::errc() && end == item.data() + item.size(),
                        "--expert-placement must be contiguous, round-robin or the " << E
                            << " experts listed slot by slot, comma-separated (got '" << placement << "')");
    MOESIM_CONFIG_CHECK(n < order.size() && e >= 0 && e < E && !seen[static_cast<std::size_t>(e)],
                        "--expert-placement lists each of the " << E << " experts (0.." << E - 1
                            << ", E x granularity) once (got '" << placement << "')");
    seen[static_cast<std::size_t>(e)] = 1;
    order[n++] = e;
    at = comma + 1;
  }
  MOESIM_CONFIG_CHECK(n == order.size(), "--expert-placement lists each of the " << E << " experts (0.." << E - 1
                                             << ", E x granularity) once (got " << n << " in '" << placement << "')");
  return order;
}

void MoeLayerConfig::validate(int ranks, int granularity) const {
  const int M = granularity;
  const GateTraits& g = gate_traits(gate);
  const std::string name = gate_name(gate);
  MOESIM_CONFIG_CHECK(experts >= 1, "--experts must be >= 1 (got " << experts / M << ")");
  MOESIM_CONFIG_CHECK(top_k >= 1, "--top-k must be >= 1 (got " << top_k / M << ")");
  MOESIM_CONFIG_CHECK(top_k <= experts, "--top-k (" << top_k / M << ") must not exceed --experts (" << experts / M << ")");
  // Expert-data parallelism: groups of N ranks, each holding all E experts, E/N per rank.
  const int N = ep_size_for(ranks);
  MOESIM_CONFIG_CHECK(ep_size >= 0, "--ep-size must be >= 1 (got " << ep_size << ")");
  MOESIM_CONFIG_CHECK(ranks % N == 0, "--ep-size (" << N << ") must divide the number of ranks (" << ranks
                                                    << "): ranks form groups of --ep-size ranks");
  MOESIM_CONFIG_CHECK(experts % N == 0,
                      "--experts (" << experts / M << (M > 1 ? " x granularity " + std::to_string(M) : std::string())
                                    << ") must be divisible by --ep-size (" << N
                                    << "): each rank of an expert group holds E / ep-size experts");
  MOESIM_CONFIG_CHECK(ranks_per_node >= 0, "--ranks-per-node must be >= 0 (got " << ranks_per_node << ")");
  MOESIM_CONFIG_CHECK(ranks_per_node == 0 || ranks % ranks_per_node == 0,
                      "--ranks-per-node (" << ranks_per_node << ") must divide the number of ranks (" << ranks
                                           << "): virtual nodes are that many consecutive ranks");
  MOESIM_CONFIG_CHECK(dispatch != DispatchAlgo::kHierarchical || ranks_per_node == 0 ||
                          N % ranks_per_node == 0 || ranks_per_node % N == 0,
                      "--dispatch hierarchical needs each expert group (--ep-size " << N << ") to cover whole nodes or "
                          "lie inside one (--ranks-per-node " << ranks_per_node << ")");
  MOESIM_CONFIG_CHECK(!g.one_expert || top_k == 1, "--gate " << name << " routes to one expert: it needs --top-k 1"
                                                             << (M > 1 ? " and --granularity 1" : ""));
  const double eval_cf = eval_capacity_factor < 0 ? capacity_factor : eval_capacity_factor;
  MOESIM_CONFIG_CHECK(!g.needs_capacity || (capacity_factor > 0 && eval_cf > 0),
                      "--gate " << name << " needs --capacity-factor and --eval-capacity-factor > 0 "
                                   "(each expert takes C = factor * B * K / E tokens)");
  MOESIM_CONFIG_CHECK(balance != BalanceKind::kBias || g.bias,
                      "--balance bias needs a gate that picks experts per token by score (" << bias_gate_names()
                          << "); --gate " << name << " balances by construction");
  MOESIM_CONFIG_CHECK(!router.pre_softmax || gate == GateKind::kTopK,
                      "--router-pre-softmax applies to --gate topk only (got '" << name
                                                                               << "'): the other gates fix their own gate weights");
  MOESIM_CONFIG_CHECK(router.score == ScoreFunction::kSoftmax || gate == GateKind::kTopK,
                      "--score-function sigmoid applies to --gate topk only (got '" << name << "')");
  MOESIM_CONFIG_CHECK(router.score == ScoreFunction::kSoftmax || !router.pre_softmax,
                      "--score-function sigmoid and --router-pre-softmax exclude each other: the sigmoid scores are "
                      "not a softmax");
  MOESIM_CONFIG_CHECK(router.jitter >= 0 && router.jitter < 1,
                      "--router-jitter must be in [0, 1) (got " << router.jitter << ")");
  MOESIM_CONFIG_CHECK(router.jitter == 0 || g.learned,
                      "--router-jitter needs a gate with a trained router (got '" << name
                                                                                  << "', which does not read x W)");
  MOESIM_CONFIG_CHECK(min_capacity >= 0, "--min-capacity must be >= 0 (got " << min_capacity << ")");
  MOESIM_CONFIG_CHECK(drop_policy == DropPolicy::kPosition || (!g.all_experts && !g.needs_capacity),
                      "--drop-policy probs applies to gates that drop tokens over capacity (got '"
                          << name << "', which " << (g.all_experts ? "routes every token to every expert" : "drops none")
                          << ")");
  MOESIM_CONFIG_CHECK(router.sinkhorn_iters >= 1, "--sinkhorn-iters must be >= 1 (got " << router.sinkhorn_iters << ")");
  MOESIM_CONFIG_CHECK(shared_experts >= 0, "--shared-experts must be >= 0 (got " << shared_experts << ")");
}

std::string MoeLayerConfig::router_warning() const {
  // With one chosen expert, a softmax over the chosen logits is the constant 1.
  const bool renormalised =
      (gate == GateKind::kTopK && !router.pre_softmax && router.score == ScoreFunction::kSoftmax) ||
      gate == GateKind::kNoisyTopK;
  if (!renormalised || top_k != 1 || experts < 2) return "";
  const std::string from = gate == GateKind::kNoisyTopK ? "its load loss" : "the balancing loss";
  return std::string("--gate ") + gate_name(gate) +
         " with one expert per token gives every token the gate weight 1, so the router gets no gradient from the "
         "task loss, only from " + from + "; --router-pre-softmax (topk) or --gate switch weights it by its "
         "softmax probability";
}

int MoeLayerConfig::ep_size_for(int ranks) const {
  return ep_size > 0 ? ep_size : std::gcd(std::max(experts, 1), std::max(ranks, 1));
}

}  // namespace moesim
