#pragma once
// How well a partition of tokens (the router's top-1 expert) recovers a known
// partition (the source of each token: a regime, a teacher expert), from their
// contingency table n[s][c] (s: expert, c: source):
//   mutual_info = sum n_sc/N log(N n_sc / (n_s n_c))          (nats)
//   nmi         = mutual_info / sqrt(H(expert) H(source))      (Strehl & Ghosh 2002; 0 if either is constant)
//   purity      = sum_s max_c n_sc / N                         (each expert labelled by its majority source)
#include <cstdint>
#include <vector>

namespace moesim {

struct SourceRecovery {
  double mutual_info = 0, nmi = 0, purity = 0;
};

// counts: E x S, row-major.
SourceRecovery source_recovery(const std::int64_t* counts, int E, int S);

}  // namespace moesim
