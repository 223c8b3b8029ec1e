#include "comm/exact_sum.hpp"

#include <algorithm>

namespace moesim {

namespace {

// A 128-bit value as three 43-bit limbs (the top one signed) plus a bad flag: MPI's
// int64 sum adds them without carries for up to 2^20 ranks, and the limbs recombine
// exactly afterwards, so no user-defined MPI operation is needed.
constexpr int kLimbBits = 43;
constexpr std::int64_t kLimbMask = (std::int64_t{1} << kLimbBits) - 1;

}  // namespace

void allreduce_exact(const Communicator& comm, FixedSum* sums, int n, std::vector<std::int64_t>* ints) {
  std::vector<std::int64_t> limbs;
  allreduce_exact(comm, sums, n, ints, limbs);
}

void allreduce_exact(const Communicator& comm, FixedSum* sums, int n, std::vector<std::int64_t>* ints,
                     std::vector<std::int64_t>& limbs) {
  const std::size_t extra = ints ? ints->size() : 0;
  limbs.resize(static_cast<std::size_t>(4 * n) + extra);
  if (ints) std::copy(ints->begin(), ints->end(), limbs.begin() + 4 * n);
  for (int i = 0; i < n; ++i) {
    const Int128 v = sums[i].raw();
    std::int64_t* l = limbs.data() + 4 * i;
    l[0] = static_cast<std::int64_t>(v & kLimbMask);
    l[1] = static_cast<std::int64_t>((v >> kLimbBits) & kLimbMask);
    l[2] = static_cast<std::int64_t>(v >> (2 * kLimbBits));  // arithmetic shift keeps the sign
    l[3] = sums[i].bad() ? 1 : 0;
  }
  comm.allreduce_sum(limbs.data(), static_cast<int>(limbs.size()));
  if (ints) std::copy(limbs.begin() + 4 * n, limbs.end(), ints->begin());
  for (int i = 0; i < n; ++i) {
    const std::int64_t* l = limbs.data() + 4 * i;
    const Int128 v = (static_cast<Int128>(l[2]) << (2 * kLimbBits)) +
                     (static_cast<Int128>(l[1]) << kLimbBits) + static_cast<Int128>(l[0]);
    sums[i].set(v, l[3] != 0);
  }
}

void allreduce_exact(const Communicator& comm, const std::vector<FixedSum>& local, double* out) {
  std::vector<FixedSum> s = local;
  allreduce_exact(comm, s);
  for (std::size_t i = 0; i < s.size(); ++i) out[i] = s[i].value();
}

}  // namespace moesim
