// select_top_k against its definition (a stable sort by score, ties to the lower expert), on
// scores with many ties, for every K up to E and both of its code paths (few slots, a sort).
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "core/rng.hpp"
#include "moe/gates/selection.hpp"

namespace moesim {
namespace {

TEST(SelectTopK, EqualsAStableSortWithTiesToTheLowerExpert) {
  Rng rng(20261206);
  for (const int E : {1, 2, 5, 8, 13, 64}) {
    const Index n = 200;
    Mat<double> sel(n, E);
    for (Index t = 0; t < n; ++t)
      for (int e = 0; e < E; ++e) sel(t, e) = std::floor(4.0 * rng.normal());  // few values: ties
    for (int K = 1; K <= E; ++K) {
      Routing<double> r;
      r.n = n;
      r.E = E;
      r.K = K;
      r.expert.assign(static_cast<std::size_t>(n * K), -1);
      std::vector<int> scratch, next;
      select_top_k(sel, r, scratch, &next);
      for (Index t = 0; t < n; ++t) {
        std::vector<int> order(static_cast<std::size_t>(E));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return sel(t, a) > sel(t, b); });
        for (int j = 0; j < K; ++j)
          ASSERT_EQ(r.expert[static_cast<std::size_t>(t * K + j)], order[static_cast<std::size_t>(j)])
              << "E " << E << " K " << K << " token " << t << " slot " << j;
        ASSERT_EQ(next[static_cast<std::size_t>(t)], K < E ? order[static_cast<std::size_t>(K)] : -1)
            << "E " << E << " K " << K << " token " << t;
      }
    }
  }
}

}  // namespace
}  // namespace moesim
