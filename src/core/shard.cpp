#include "core/shard.hpp"

#include <algorithm>

namespace moesim {

Shard shard_of(std::int64_t n, int rank, int P) {
  const std::int64_t base = n / P, extra = n % P;
  return {rank * base + std::min<std::int64_t>(rank, extra), base + (rank < extra ? 1 : 0)};
}

}  // namespace moesim
