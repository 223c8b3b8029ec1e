#pragma once
// The regimes task (data/regimes.hpp) as a regression table, so that the binned
// mixture can run on it like on any table the readers accept.
#include <cstdint>

#include "comm/communicator.hpp"
#include "data/regimes.hpp"
#include "data/table.hpp"

namespace moesim {

// COLLECTIVE (only for the shard bounds). Rows [0, rows) of the regimes training
// stream, batch 0; each rank makes its contiguous block; features x0.., target y.
// `cluster` (if given) receives the regime of each local row.
Table regimes_table(const Communicator& comm, const RegimesConfig& cfg, std::int64_t rows,
                    std::vector<int>* cluster = nullptr);

}  // namespace moesim
