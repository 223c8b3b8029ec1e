#pragma once
// Expert merging (model soups, Wortsman et al. 2022; MC-SMoE, Li et al. 2024): experts of one MoE layer combined pairwise by weight averaging
// or SLERP, the pairs chosen greedily by cosine similarity (of the experts' weights or of
// their routing).
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.hpp"

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

// One MoE layer's experts as plain arrays: for each expert parameter (by key, see
// io/checkpoint's expert keys), E rows of `width` values, row e = global expert e.
struct ExpertWeights {
  std::vector<std::string> keys;  // in the layer's parameter order
  std::map<std::string, std::vector<double>> rows;
  std::map<std::string, std::size_t> width;
};

// Which experts merge: similarity (E x E), the pairs and the resulting groups.
struct MergePlan {
  std::vector<double> similarity;
  std::vector<std::pair<int, int>> pairs;
  std::vector<std::vector<int>> groups;  // merged expert j = groups[j]
};

// Pairs E - E2 experts greedily by the cosine of their flattened weights, or (by_routing)
// by the cosine of their router-probability columns, given as the E x E Gram matrix
// sum over tokens of p_e p_f.
MergePlan plan_merge(const ExpertWeights& w, const std::vector<double>& routing_gram, int E, int E2,
                     bool by_routing);
// The merged experts' rows (E2 per key), each group's weights combined by `method`.
ExpertWeights merge_experts(const ExpertWeights& w, const MergePlan& plan, MergeMethod method);
// A replicated tensor with one column (or one row) per expert, such as the router's:
// each merged expert takes its group's mean. A tensor without an expert axis of length E
// must keep its shape; anything else is an error.
Mat<double> merge_expert_axis(const Mat<double>& old, Index rows, Index cols, int E,
                              const std::vector<std::vector<int>>& groups, const std::string& name);
// A per-expert vector (such as a router's selection bias): each group's mean.
std::vector<double> merge_expert_values(const std::vector<double>& per_expert,
                                        const std::vector<std::vector<int>>& groups);

}  // namespace moesim
