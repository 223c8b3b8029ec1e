#pragma once
// Exact sums over ranks: FixedSum values (core/fixed_sum.hpp) added as integers, so the
// result is the same bits for any rank count and any reduction order MPI picks. This is
// the rank-invariant replacement for allreduce_sum on statistics, metrics and any other
// sum whose terms are computed identically on any layout (stacking can use it for
// histograms and scores). Costs one int64 all-reduce of 4 values per sum.
#include <vector>

#include "comm/communicator.hpp"
#include "core/fixed_sum.hpp"

namespace moesim {

// COLLECTIVE. In place: every rank gets the exact sums over all ranks. At most 2^20 ranks.
// `ints` (optional) are summed in the same all-reduce, saving a collective.
void allreduce_exact(const Communicator& comm, FixedSum* sums, int n, std::vector<std::int64_t>* ints = nullptr);
// The same through `limbs`, whose memory a caller that reduces every step keeps.
void allreduce_exact(const Communicator& comm, FixedSum* sums, int n, std::vector<std::int64_t>* ints,
                     std::vector<std::int64_t>& limbs);
inline void allreduce_exact(const Communicator& comm, std::vector<FixedSum>& sums) {
  allreduce_exact(comm, sums.data(), static_cast<int>(sums.size()));
}

// COLLECTIVE. Exact sums over ranks of local double vectors whose entries are sums of
// terms added into `local` with FixedSum; writes the rounded totals to `out`.
void allreduce_exact(const Communicator& comm, const std::vector<FixedSum>& local, double* out);

}  // namespace moesim
