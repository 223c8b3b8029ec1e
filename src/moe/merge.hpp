#pragma once
// Expert merging (seed 002): experts of one MoE layer combined pairwise by weight averaging
// or SLERP, the pairs chosen greedily by cosine similarity (of the experts' weights or of
// their routing).
#include <utility>
#include <vector>

namespace moesim {

enum class MergeMethod { kAverage, kSlerp };

// Spherical linear interpolation (Shoemake 1985) of two flattened weight vectors, as model
// merging tools use it: the angle theta comes from the normalised vectors, and
// slerp = sin((1-t) theta)/sin(theta) a + sin(t theta)/sin(theta) b. When the vectors are
// nearly parallel or antiparallel (|cos theta| > 1 - parallel_eps), or one is zero, it is
// the linear interpolation (1-t) a + t b.
std::vector<double> slerp(const std::vector<double>& a, const std::vector<double>& b, double t,
                          double parallel_eps = 5e-4);
// average: (a + b) / 2; slerp: slerp(a, b, 0.5).
std::vector<double> merge_pair(const std::vector<double>& a, const std::vector<double>& b,
                               MergeMethod method);

// n x n cosine similarities of the n vectors (row-major); 0 where a vector is zero.
std::vector<double> cosine_matrix(const std::vector<std::vector<double>>& vectors);
// Cosine similarities from a Gram matrix G (n x n): G_ij / sqrt(G_ii G_jj).
std::vector<double> cosine_from_gram(const std::vector<double>& gram, int n);

// `pairs` disjoint pairs (i < j) picked greedily by descending similarity (ties: lower i,
// then lower j). Needs 2 * pairs <= n.
std::vector<std::pair<int, int>> greedy_pairs(const std::vector<double>& sim, int n, int pairs);
// The merged experts: each original expert alone or with its pair partner, ordered by the
// smallest original index in the group (new expert j = groups[j]).
std::vector<std::vector<int>> merge_groups(int n, const std::vector<std::pair<int, int>>& pairs);

}  // namespace moesim
