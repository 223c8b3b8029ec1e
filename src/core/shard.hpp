#pragma once
// Contiguous blocks of n items over P ranks: how every rank finds its tokens, rows and
// validation chunks without talking to the others.
#include <cstdint>

namespace moesim {

// Local shard [first, first + count) of n items on rank r of P; the first n % P ranks
// hold one item more.
struct Shard {
  std::int64_t first = 0, count = 0;
};
Shard shard_of(std::int64_t n, int rank, int P);

}  // namespace moesim
