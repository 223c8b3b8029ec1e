#pragma once
// The histogram tree builder shared by tree, forest and gbdt (data parallel, as
// LightGBM / XGBoost `hist`): every rank accumulates per-(node, feature, bin)
// statistics of its own rows, one all-reduce per level sums them for a whole batch of
// trees, and every rank then picks the same split. Rows never leave their rank.
//
// The rules below are the algorithm's definition; tree_reference.cpp implements the
// same rules serially on the full data.
//   - Depth-wise growth; a node is split when depth < max_depth, its weight W is at
//     least 2 * min_leaf and (Gini) it is not pure.
//   - Candidates: every feature (or m sampled ones, in ascending order) and every bin
//     b < B_f - 1 ("bin <= b" goes left). A child needs weight >= max(min_leaf, 1e-12 W).
//   - Right statistics are the node's totals minus the left ones (a root's totals are
//     the sum of its first candidate feature's histogram; a child's come from its
//     parent's split).
//   - Score of a candidate: term(left) + term(right), with term = sum_c n_c^2 / n
//     (Gini), (sum w y)^2 / sum w (variance), G^2 / (H + lambda) (Newton / XGBoost).
//     Maximising it maximises the impurity decrease (resp. the XGBoost gain).
//   - Ties: a later candidate wins only if its score exceeds the best by a relative
//     1e-12, so the lowest feature, then the lowest bin, wins ties and floating-point
//     summation order cannot flip the choice between equal candidates.
//   - The best candidate is used if score - term(node) > 1e-10 * score.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "comm/communicator.hpp"
#include "core/rng.hpp"
#include "learners/tree_binning.hpp"

namespace moesim {

inline constexpr double kSplitTieRel = 1e-12;
inline constexpr double kSplitMinGainRel = 1e-10;
inline constexpr double kSplitMinChildRel = 1e-12;
inline constexpr double kPureRel = 1e-12;  // Gini node pure when max_c n_c >= (1 - this) W

enum class SplitScore {
  kGini,      // S = C per bin: weighted class counts
  kVariance,  // S = 2: (w, w y)
  kNewton,    // S = 3: (g, h, w), gradients and Hessians already weighted
};

struct GrowParams {
  SplitScore score = SplitScore::kGini;
  int stats = 2;                // S, doubles per bin
  int max_depth = 1;
  double min_leaf = 1;          // weighted count per child
  double lambda = 0;            // kNewton
  int features_per_split = 0;   // m; m < p samples per node from (seed, tree key, heap id)
  std::uint64_t seed = 1;
  bool keep_leaf_rows = true;   // false: leaves' row ranges may be left empty (saves moves)
  // Memory bounds, which change the number of all-reduces but not the trees: histogram
  // doubles per all-reduce (whole sibling pairs, so one pair may exceed it), and parent
  // histograms kept for the subtraction trick.
  std::size_t reduce_doubles = std::size_t{1} << 21;  // 16 MiB
  std::size_t retain_doubles = std::size_t{1} << 23;  // 64 MiB
};

// One tree of a batch grown together.
struct GrowTree {
  // Per local row: kGini reads label and weight, the others stat[i * S + s].
  const std::int32_t* label = nullptr;
  const double* weight = nullptr;
  const double* stat = nullptr;
  std::uint64_t key = 0;               // keys the per-node feature sampling
  std::vector<std::uint32_t> rows;     // local rows of the tree; grouped by leaf when grown
                                       // (if keep_leaf_rows)
  // Output. Node 0 is the root; an internal node's children are `left` and `left + 1`.
  struct Node {
    int feature = -1, bin = -1, left = -1;
    std::uint32_t begin = 0, end = 0;  // its rows: rows[begin, end) (see keep_leaf_rows)
    int depth = 0;
  };
  std::vector<Node> nodes;
  std::vector<double> totals;          // S global statistics per node
};

// COLLECTIVE. Grows every tree of the batch. `extra` (n_extra local values) is summed
// over ranks in the first all-reduce, so callers can fold a reduction in for free.
void grow_trees(const Communicator& comm, const BinnedMatrix& X, const GrowParams& prm,
                std::vector<GrowTree>& trees, double* extra = nullptr, int n_extra = 0);

// Weight of a statistics vector (the count that min_leaf bounds).
inline double stats_weight(SplitScore score, const double* s, int S) {
  switch (score) {
    case SplitScore::kGini: {
      double w = 0;
      for (int c = 0; c < S; ++c) w += s[c];
      return w;
    }
    case SplitScore::kVariance: return s[0];
    case SplitScore::kNewton: return s[2];
  }
  return 0;
}

// ---- randomness of the forest, shared with the reference --------------------------

// Bootstrap multiplicity of a row in tree t: Poisson(1) from (seed, t, global row id),
// so a tree sees the same bootstrap on any rank count.
inline int bootstrap_count(std::uint64_t seed, std::uint64_t tree, std::int64_t id) {
  Rng rng(seed, Stream::kLearner, 2 * tree, static_cast<std::uint64_t>(id));
  const double u = rng.uniform();
  double pk = 0.36787944117144233;  // e^-1
  double cdf = pk;
  int k = 0;
  while (u >= cdf && k < 32) {
    ++k;
    pk /= k;
    cdf += pk;
  }
  return k;
}

// m of p features, ascending, from (seed, tree, heap id of the node) (Floyd's sampling).
std::vector<int> sample_features(std::uint64_t seed, std::uint64_t tree, std::uint64_t heap,
                                 int p, int m);

// Features per split of the forest: opt fraction of p (at least 1); 0 = sqrt(p) for
// classification, p for regression (scikit-learn's defaults).
int forest_features_per_split(double fraction, int p, bool classification);

}  // namespace moesim
