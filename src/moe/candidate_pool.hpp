#pragma once
// Global per-expert cuts from local summaries (expert choice, --drop-policy probs): every rank
// lists, for each expert that needs a cut, its m best (value, global token) pairs; all ranks
// gather the lists, lay each expert's candidates out together and find the same m-th best.
// The memory is kept from step to step, so a step allocates nothing.
#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "comm/communicator.hpp"

namespace moesim {

class CandidatePool {
 public:
  using Pair = std::pair<double, std::int64_t>;  // (value, global token)

  // Higher value first, ties to the lower token: a total order, as tokens are distinct.
  static bool better(double va, std::int64_t ta, double vb, std::int64_t tb) {
    return va > vb || (va == vb && ta < tb);
  }

  // This rank's list: call begin(), then per expert that needs a cut (in expert order)
  // add_count(m) and m add(value, token).
  void begin() { mine_.clear(); }
  void add_count(std::size_t m) { mine_.push_back(static_cast<double>(m)); }
  void add(double value, std::int64_t token) {
    mine_.push_back(value);
    mine_.push_back(static_cast<double>(token));
  }

  // COLLECTIVE over comm (null: this rank's list only). `listed(e)` says which experts the
  // lists hold, the same on every rank.
  template <class Listed>
  void gather(const Communicator* comm, int E, Listed listed) {
    const std::vector<double>* all = &mine_;
    if (comm) {
      comm->allgatherv(mine_, all_, counts_);
      all = &all_;
    }
    const auto Es = static_cast<std::size_t>(E);
    start_.assign(Es + 1, 0);
    for (int pass = 0; pass < 2; ++pass) {  // count per expert, then place
      for (std::size_t p = 0; p < all->size();)
        for (int e = 0; e < E; ++e) {
          if (!listed(e)) continue;
          const auto m = static_cast<std::size_t>((*all)[p++]);
          for (std::size_t i = 0; i < m; ++i, p += 2)
            if (pass == 1) pool_[cursor_[static_cast<std::size_t>(e)]++] = {(*all)[p], static_cast<std::int64_t>((*all)[p + 1])};
          if (pass == 0) start_[static_cast<std::size_t>(e) + 1] += m;
        }
      if (pass == 0) {
        for (std::size_t e = 0; e < Es; ++e) start_[e + 1] += start_[e];
        pool_.resize(start_[Es]);
        cursor_.assign(start_.begin(), start_.end());
      }
    }
  }

  std::size_t candidates(int e) const {
    return start_[static_cast<std::size_t>(e) + 1] - start_[static_cast<std::size_t>(e)];
  }
  // The m-th best candidate of expert e (1 <= m <= candidates(e)).
  Pair cut(int e, std::size_t m) {
    const auto first = pool_.begin() + static_cast<std::ptrdiff_t>(start_[static_cast<std::size_t>(e)]);
    const auto last = pool_.begin() + static_cast<std::ptrdiff_t>(start_[static_cast<std::size_t>(e) + 1]);
    std::nth_element(first, first + static_cast<std::ptrdiff_t>(m - 1), last,
                     [](const Pair& a, const Pair& b) { return better(a.first, a.second, b.first, b.second); });
    return *(first + static_cast<std::ptrdiff_t>(m - 1));
  }

 private:
  std::vector<double> mine_, all_;
  std::vector<int> counts_;  // allgatherv's
  std::vector<Pair> pool_;   // every rank's candidates, expert by expert
  std::vector<std::size_t> start_, cursor_;
};

}  // namespace moesim
