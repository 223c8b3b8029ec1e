#include "moe/merge.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.hpp"

namespace moesim {

namespace {
double dot(const std::vector<double>& a, const std::vector<double>& b) {
  return std::inner_product(a.begin(), a.end(), b.begin(), 0.0);
}
}  // namespace

std::vector<double> slerp(const std::vector<double>& a, const std::vector<double>& b, double t,
                          double parallel_eps) {
  MOESIM_REQUIRE(a.size() == b.size(), "slerp of vectors of different lengths");
  const double na = std::sqrt(dot(a, a)), nb = std::sqrt(dot(b, b));
  double wa = 1.0 - t, wb = t;
  if (na > 0 && nb > 0) {
    const double c = std::clamp(dot(a, b) / (na * nb), -1.0, 1.0);
    if (std::abs(c) <= 1.0 - parallel_eps) {
      const double theta = std::acos(c), s = std::sin(theta);
      wa = std::sin((1.0 - t) * theta) / s;
      wb = std::sin(t * theta) / s;
    }
  }
  std::vector<double> out(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) out[i] = wa * a[i] + wb * b[i];
  return out;
}

std::vector<double> merge_pair(const std::vector<double>& a, const std::vector<double>& b,
                               MergeMethod method) {
  if (method == MergeMethod::kSlerp) return slerp(a, b, 0.5);
  MOESIM_REQUIRE(a.size() == b.size(), "average of vectors of different lengths");
  std::vector<double> out(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) out[i] = 0.5 * (a[i] + b[i]);
  return out;
}

std::vector<double> cosine_matrix(const std::vector<std::vector<double>>& v) {
  const int n = static_cast<int>(v.size());
  std::vector<double> gram(static_cast<std::size_t>(n * n));
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) gram[static_cast<std::size_t>(i * n + j)] = dot(v[i], v[j]);
  return cosine_from_gram(gram, n);
}

std::vector<double> cosine_from_gram(const std::vector<double>& g, int n) {
  std::vector<double> c(static_cast<std::size_t>(n * n), 0.0);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      const double d = std::sqrt(g[static_cast<std::size_t>(i * n + i)] * g[static_cast<std::size_t>(j * n + j)]);
      c[static_cast<std::size_t>(i * n + j)] = d > 0 ? g[static_cast<std::size_t>(i * n + j)] / d : 0.0;
    }
  return c;
}

std::vector<std::pair<int, int>> greedy_pairs(const std::vector<double>& sim, int n, int pairs) {
  MOESIM_REQUIRE(pairs >= 0 && 2 * pairs <= n, "cannot pick " << pairs << " disjoint pairs of " << n);
  std::vector<std::pair<int, int>> all;
  for (int i = 0; i < n; ++i)
    for (int j = i + 1; j < n; ++j) all.emplace_back(i, j);
  auto s = [&](const std::pair<int, int>& p) { return sim[static_cast<std::size_t>(p.first * n + p.second)]; };
  std::stable_sort(all.begin(), all.end(), [&](const auto& x, const auto& y) { return s(x) > s(y); });
  std::vector<bool> used(static_cast<std::size_t>(n), false);
  std::vector<std::pair<int, int>> out;
  for (const auto& p : all) {
    if (static_cast<int>(out.size()) == pairs) break;
    if (used[p.first] || used[p.second]) continue;
    used[p.first] = used[p.second] = true;
    out.push_back(p);
  }
  return out;
}

std::vector<std::vector<int>> merge_groups(int n, const std::vector<std::pair<int, int>>& pairs) {
  std::vector<int> partner(static_cast<std::size_t>(n), -1);
  for (const auto& [a, b] : pairs) {
    partner[a] = b;
    partner[b] = a;
  }
  std::vector<std::vector<int>> groups;
  for (int e = 0; e < n; ++e) {
    if (partner[e] >= 0 && partner[e] < e) continue;  // already in its partner's group
    groups.push_back(partner[e] >= 0 ? std::vector<int>{e, partner[e]} : std::vector<int>{e});
  }
  return groups;
}

MergePlan plan_merge(const ExpertWeights& w, const std::vector<double>& routing_gram, int E, int E2,
                     bool by_routing) {
  MergePlan plan;
  if (by_routing) {
    plan.similarity = cosine_from_gram(routing_gram, E);
  } else {
    std::vector<std::vector<double>> flat(static_cast<std::size_t>(E));
    for (const std::string& key : w.keys) {
      const std::size_t n = w.width.at(key);
      const std::vector<double>& rows = w.rows.at(key);
      for (std::size_t e = 0; e < flat.size(); ++e)
        flat[e].insert(flat[e].end(), rows.begin() + static_cast<std::ptrdiff_t>(e * n),
                       rows.begin() + static_cast<std::ptrdiff_t>((e + 1) * n));
    }
    plan.similarity = cosine_matrix(flat);
  }
  plan.pairs = greedy_pairs(plan.similarity, E, E - E2);
  plan.groups = merge_groups(E, plan.pairs);
  return plan;
}

ExpertWeights merge_experts(const ExpertWeights& w, const MergePlan& plan, MergeMethod method) {
  ExpertWeights out;
  out.keys = w.keys;
  out.width = w.width;
  for (const std::string& key : w.keys) {
    const std::size_t n = w.width.at(key);
    const std::vector<double>& rows = w.rows.at(key);
    auto row = [&](int e) {
      const auto first = rows.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(e) * n);
      return std::vector<double>(first, first + static_cast<std::ptrdiff_t>(n));
    };
    std::vector<double>& merged = out.rows[key];
    for (const std::vector<int>& g : plan.groups) {
      const std::vector<double> v = g.size() == 1 ? row(g[0]) : merge_pair(row(g[0]), row(g[1]), method);
      merged.insert(merged.end(), v.begin(), v.end());
    }
  }
  return out;
}

Mat<double> merge_expert_axis(const Mat<double>& old, Index rows, Index cols, int E,
                              const std::vector<std::vector<int>>& groups, const std::string& name) {
  if (old.rows() == rows && old.cols() == cols) return old;
  Mat<double> v(rows, cols);
  if (old.rows() == rows && old.cols() == E) {
    for (std::size_t j = 0; j < groups.size(); ++j) {
      v.col(static_cast<Index>(j)).setZero();
      for (int e : groups[j]) v.col(static_cast<Index>(j)) += old.col(e);
      v.col(static_cast<Index>(j)) /= static_cast<double>(groups[j].size());
    }
  } else if (old.cols() == cols && old.rows() == E) {
    for (std::size_t j = 0; j < groups.size(); ++j) {
      v.row(static_cast<Index>(j)).setZero();
      for (int e : groups[j]) v.row(static_cast<Index>(j)) += old.row(e);
      v.row(static_cast<Index>(j)) /= static_cast<double>(groups[j].size());
    }
  } else {
    MOESIM_REQUIRE(false, "cannot merge " << name << ": " << old.rows() << "x" << old.cols() << " -> " << rows
                                          << "x" << cols);
  }
  return v;
}

std::vector<double> merge_expert_values(const std::vector<double>& per_expert,
                                        const std::vector<std::vector<int>>& groups) {
  std::vector<double> out(groups.size(), 0.0);
  for (std::size_t j = 0; j < groups.size(); ++j) {
    for (int e : groups[j]) out[j] += per_expert[static_cast<std::size_t>(e)];
    out[j] /= static_cast<double>(groups[j].size());
  }
  return out;
}

}  // namespace moesim
