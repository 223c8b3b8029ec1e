#include "binned/regimes_table.hpp"

#include "core/error.hpp"
#include "core/shard.hpp"

namespace moesim {

Table regimes_table(const Communicator& comm, const RegimesConfig& cfg, std::int64_t rows,
                    std::vector<int>* cluster) {
  MOESIM_CONFIG_CHECK(rows >= 1, "--rows must be >= 1 (got " << rows << ")");
  MOESIM_REQUIRE(cfg.classes == 0, "regimes_table makes regression tables");
  const RegimesTask task(cfg);
  const Shard sh = shard_of(rows, comm.rank(), comm.size());
  Batch b = task.batch(Stream::kTrain, 0, sh.first, static_cast<Index>(sh.count));
  Table t;
  t.rows_global = rows;
  t.first = sh.first;
  t.X = std::move(b.x);
  t.y.assign(b.y.data(), b.y.data() + b.y.rows());
  t.w.assign(t.y.size(), 1.0);
  for (Index j = 0; j < t.X.cols(); ++j) t.features.push_back("x" + std::to_string(j));
  if (cluster) *cluster = b.cluster;
  return t;
}

}  // namespace moesim
