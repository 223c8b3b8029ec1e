#include "data/folds.hpp"

#include <numeric>

#include "core/error.hpp"
#include "core/rng.hpp"

namespace moesim {

namespace {
// Fisher-Yates permutation of 0..K-1 drawn from one key.
std::vector<int> permutation(int K, std::uint64_t key) {
  std::vector<int> perm(static_cast<std::size_t>(K));
  std::iota(perm.begin(), perm.end(), 0);
  Rng rng(key);
  for (int i = K - 1; i > 0; --i)
    std::swap(perm[static_cast<std::size_t>(i)], perm[rng.below(static_cast<std::uint64_t>(i) + 1)]);
  return perm;
}
}  // namespace

std::vector<int> assign_folds(const Communicator& comm, const Table& t, int K, std::uint64_t seed,
                              int repeat, FoldMode mode) {
  MOESIM_CONFIG_CHECK(K >= 2, "--folds must be >= 2 (got " << K << ")");
  const Index n = t.n();
  std::vector<int> fold(static_cast<std::size_t>(n), 0);
  std::string error;
  if (mode == FoldMode::kGiven) {
    for (Index i = 0; i < n && error.empty(); ++i) {
      const std::int64_t g = t.group[static_cast<std::size_t>(i)];
      if (g < 0 || g >= K)
        error = "fold id " + std::to_string(g) + " of row " + std::to_string(t.first + i) +
                " is outside 0.." + std::to_string(K - 1);
      fold[static_cast<std::size_t>(i)] = static_cast<int>(g);
    }
    comm.agree_or_throw(error.empty(), error);
    return fold;
  }
  if (mode == FoldMode::kGroups) {
    for (Index i = 0; i < n; ++i)
      fold[static_cast<std::size_t>(i)] = static_cast<int>(
          derive_key(seed, Stream::kTest, 0xF01D0000ULL + static_cast<std::uint64_t>(repeat),
                     static_cast<std::uint64_t>(t.group[static_cast<std::size_t>(i)])) %
          static_cast<std::uint64_t>(K));
    return fold;
  }
  const int C = mode == FoldMode::kStratified ? std::max(1, t.num_classes()) : 1;
  std::vector<std::int64_t> count(static_cast<std::size_t>(C), 0), before(static_cast<std::size_t>(C), 0);
  auto cls = [&](Index i) { return C == 1 ? 0 : static_cast<int>(t.y[static_cast<std::size_t>(i)]); };
  for (Index i = 0; i < n; ++i) ++count[static_cast<std::size_t>(cls(i))];
  comm.exscan_sum(count.data(), before.data(), C);
  std::vector<std::int64_t> next = before;
  std::int64_t cached_block = -1;
  int cached_class = -1;
  std::vector<int> perm;
  for (Index i = 0; i < n; ++i) {
    const int c = cls(i);
    const std::int64_t idx = next[static_cast<std::size_t>(c)]++;
    const std::int64_t block = idx / K;
    if (block != cached_block || c != cached_class) {
      perm = permutation(K, derive_key(seed, Stream::kTest, (static_cast<std::uint64_t>(repeat) << 32) | static_cast<std::uint64_t>(c),
                                       static_cast<std::uint64_t>(block)));
      cached_block = block;
      cached_class = c;
    }
    fold[static_cast<std::size_t>(i)] = perm[static_cast<std::size_t>(idx % K)];
  }
  return fold;
}

}  // namespace moesim
