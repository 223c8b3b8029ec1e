#include "learners/knn_common.hpp"

#include <cmath>
#include <string>

#include "core/error.hpp"

namespace moesim::knn {

Index check_rows(const Communicator& comm, const TrainRows& rows, int classes, const char* who) {
  const Index n = rows.X.rows();
  const Index p = comm.allreduce_max(static_cast<std::int64_t>(rows.X.cols()));
  std::string msg;
  const auto un = static_cast<std::size_t>(n);
  if (n > 0 && rows.X.cols() != p)
    msg = "training rows have " + std::to_string(rows.X.cols()) + " features on this rank, " +
          std::to_string(p) + " elsewhere";
  else if (rows.y.size() != un || rows.w.size() != un || rows.id.size() != un)
    msg = "X, y, w and id have different row counts";
  for (std::size_t i = 0; i < un && msg.empty(); ++i) {
    if (!(std::isfinite(rows.w[i]) && rows.w[i] >= 0))
      msg = "sample weight " + std::to_string(rows.w[i]) + " is not finite and >= 0";
    else if (classes >= 2 && !(rows.y[i] >= 0 && rows.y[i] < classes && rows.y[i] == std::floor(rows.y[i])))
      msg = "label " + std::to_string(rows.y[i]) + " is not a class index in [0, " +
            std::to_string(classes) + ")";
  }
  comm.agree_or_throw(msg.empty(), std::string(who) + ": " + msg);
  return p;
}

bool insert_slot(KnnLearner::Candidates& c, std::size_t base, std::size_t K, double d2, std::int64_t id,
                 double y, double w) {
  if (K == 0 || !closer(d2, id, c.d2[base + K - 1], c.id[base + K - 1])) return false;
  std::size_t s = base + K - 1;
  for (; s > base && closer(d2, id, c.d2[s - 1], c.id[s - 1]); --s) {
    c.d2[s] = c.d2[s - 1];
    c.y[s] = c.y[s - 1];
    c.w[s] = c.w[s - 1];
    c.id[s] = c.id[s - 1];
  }
  c.d2[s] = d2;
  c.y[s] = y;
  c.w[s] = w;
  c.id[s] = id;
  return true;
}

void vote(const KnnLearner::Candidates& c, std::size_t base, std::size_t K, bool distance_weighted,
          Mat<double>& out, Index i) {
  const Index C = out.cols();
  // Slots are sorted, so a zero distance, if any, is in the first one.
  const bool exact_hit = distance_weighted && c.d2[base] == 0;
  double total = 0, acc = 0;
  for (std::size_t s = base; s < base + K; ++s) {
    MOESIM_REQUIRE(c.id[s] != kNoId, "knn: a neighbour slot stayed empty");
    double dw = 1.0;
    if (distance_weighted) dw = exact_hit ? (c.d2[s] == 0 ? 1.0 : 0.0) : 1.0 / std::sqrt(c.d2[s]);
    const double wt = c.w[s] * dw;
    total += wt;
    if (C > 1) out(i, static_cast<Index>(c.y[s])) += wt;
    else acc += wt * c.y[s];
  }
  MOESIM_REQUIRE(total > 0, "knn: neighbour weights sum to " << total);
  if (C > 1) out.row(i) /= total;
  else out(i, 0) = acc / total;
}

}  // namespace moesim::knn
