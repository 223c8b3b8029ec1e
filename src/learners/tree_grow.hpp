#pragma once
// The histogram tree builder shared by tree, forest and gbdt (data parallel, as
// LightGBM / XGBoost `hist`): every rank accumulates per-(node, feature, bin)
// statistics of its own rows, one all-reduce per level sums them for a whole batch of
// trees, and every rank then picks the same split. Rows never leave their rank.
//
// The rules below are the algorithm's definition; tree_reference.cpp implements the
// same rules serially on the full data.
//   - min_leaf counts rows, not weight (as scikit-learn's min_samples_leaf): a row of
//     positive weight counts once whatever its weight or bootstrap multiplicity, so
//     fractional weights never block a split. When min_leaf > 1 the row count rides as
//     the last statistic (count_rows); with min_leaf <= 1 a positive weight is a row.
//     Newton statistics carry the row count as their third value.
//   - Depth-wise growth; a node is split when depth < max_depth, its weight W is
//     positive, it holds at least 2 * min_leaf rows and (Gini) it is not pure.
//   - Candidates: every feature (or m sampled ones, in ascending order) and every bin
//     b < B_f - 1 ("bin <= b" goes left). A child needs at least min_leaf rows and
//     weight >= 1e-12 W.
//   - Right statistics are the node's totals minus the left ones (a root's totals are
//     the sum of its first candidate feature's histogram; a child's come from its
//     parent's split).
//   - Score of a candidate: term(left) + term(right), with term = sum_c n_c^2 / n
//     (Gini), (sum w y)^2 / sum w (variance), G^2 / (H + lambda) (Newton / XGBoost).
//     Maximising it maximises the impurity decrease (resp. the XGBoost gain).
//   - Sums are exact: every statistic is summed as an integer in a fixed point agreed per
//     tree and statistic (tree_binning.hpp), so histograms, totals and their
//     differences are the same bits on any rank count; each is rounded to a double once
//     before scoring. This quantises a row's statistic to 2^-62 N of the largest one.
//   - Ties: a later candidate wins only if its score exceeds the best by a relative
//     1e-12, so the lowest feature, then the lowest bin, wins ties and floating-point
//     summation order cannot flip the choice between equal candidates.
//   - The best candidate is used if score - term(node) > 1e-10 * score.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "comm/communicator.hpp"
#include "core/fixed_sum.hpp"
#include "core/rng.hpp"
#include "learners/tree_binning.hpp"

namespace moesim {

inline constexpr double kSplitTieRel = 1e-12;
inline constexpr double kSplitMinGainRel = 1e-10;
inline constexpr double kSplitMinChildRel = 1e-12;
inline constexpr double kPureRel = 1e-12;  // Gini node pure when max_c n_c >= (1 - this) W

enum class SplitScore {
  kGini,      // S = C (+ 1 with count_rows) per bin: weighted class counts (, rows)
  kVariance,  // S = 2 (+ 1): (w, w y (, rows))
  kNewton,    // S = 3: (g, h, rows), gradients and Hessians already weighted
};

struct GrowParams {
  SplitScore score = SplitScore::kGini;
  int stats = 2;                // S, doubles per bin
  bool count_rows = false;      // kGini / kVariance: the last statistic is a row count
  int max_depth = 1;
  double min_leaf = 1;          // rows per child
  double lambda = 0;            // kNewton
  int features_per_split = 0;   // m; m < p samples per node from (seed, tree key, heap id)
  std::uint64_t seed = 1;
  bool keep_leaf_rows = true;   // false: leaves' row ranges may be left empty (saves moves)
  // Memory bounds, which change the number of all-reduces but not the trees: histogram
  // values per all-reduce (whole sibling pairs, so one pair may exceed it), and parent
  // histograms kept for the subtraction trick.
  std::size_t reduce_doubles = std::size_t{1} << 21;  // 16 MiB
  std::size_t retain_doubles = std::size_t{1} << 23;  // 64 MiB
  // The caller guarantees that every row statistic is an integer and that every sum of
  // them over rows stays below 2^24: histograms then sum unscaled and travel as int32,
  // in half the bytes (the forest's counts of bootstrap draws with integer weights).
  bool narrow_integers = false;
};

// One tree of a batch grown together.
struct GrowTree {
  // Per local row: kGini without count_rows reads label and weight, the others
  // stat[i * S + s].
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
  std::vector<double> totals;          // S global statistics per node (exact sums, rounded)
};

// COLLECTIVE. Grows every tree of the batch. `extra` (n_extra local exact sums) is summed
// over ranks in the first all-reduce, so callers can fold a reduction in for free.
void grow_trees(const Communicator& comm, const BinnedMatrix& X, const GrowParams& prm,
                std::vector<GrowTree>& trees, FixedSum* extra = nullptr, int n_extra = 0);

// Weight of a statistics vector; C = the class entries of a kGini vector.
inline double stats_weight(SplitScore score, const double* s, int C) {
  switch (score) {
    case SplitScore::kGini: {
      double w = 0;
      for (int c = 0; c < C; ++c) w += s[c];
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
