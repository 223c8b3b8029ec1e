#include "data/source_recovery.hpp"

#include <algorithm>
#include <cmath>

namespace moesim {

SourceRecovery source_recovery(const std::int64_t* counts, int E, int S) {
  SourceRecovery r;
  std::vector<double> ns(static_cast<std::size_t>(E), 0.0), nc(static_cast<std::size_t>(S), 0.0);
  double N = 0;
  for (int s = 0; s < E; ++s)
    for (int c = 0; c < S; ++c) {
      const double v = static_cast<double>(counts[s * S + c]);
      ns[static_cast<std::size_t>(s)] += v;
      nc[static_cast<std::size_t>(c)] += v;
      N += v;
    }
  if (N <= 0) return r;
  auto entropy = [N](const std::vector<double>& m) {
    double h = 0;
    for (double v : m)
      if (v > 0) h -= v / N * std::log(v / N);
    return h;
  };
  for (int s = 0; s < E; ++s) {
    double best = 0;
    for (int c = 0; c < S; ++c) {
      const double v = static_cast<double>(counts[s * S + c]);
      best = std::max(best, v);
      if (v > 0)
        r.mutual_info += v / N * std::log(N * v / (ns[static_cast<std::size_t>(s)] * nc[static_cast<std::size_t>(c)]));
    }
    r.purity += best / N;
  }
  r.mutual_info = std::max(0.0, r.mutual_info);  // rounding of a zero
  const double hs = entropy(ns), hc = entropy(nc);
  r.nmi = hs > 0 && hc > 0 ? std::min(1.0, r.mutual_info / std::sqrt(hs * hc)) : 0.0;
  return r;
}

}  // namespace moesim
