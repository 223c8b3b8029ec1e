// K nearest neighbours with a ring pass of query blocks: training shards stay put,
// queries and their k best candidates travel; distances come from blocked GEMMs.
#include "learners/knn.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>

#include "core/error.hpp"
#include "core/row_order.hpp"

namespace moesim {

namespace {

constexpr std::int64_t kNoId = std::numeric_limits<std::int64_t>::max();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int kTagSize = 71, kTagData = 72, kTagIds = 73, kTagMove = 74;

// One short-listed training row of one query: its GEMM value ||z||^2 - 2 q.z.
struct Entry {
  double v;
  Index row;
};

// A neighbour after exact re-evaluation.
struct Neighbour {
  double d2;
  std::int64_t id;
  Index row;
};

bool closer(double da, std::int64_t ia, double db, std::int64_t ib) {
  return da < db || (da == db && ia < ib);
}

// Keeps the entries that can still be among the K nearest: v <= (K-th smallest v) +
// margin, where the margin covers the rounding of the GEMM and of the exact distances.
void prune(std::vector<Entry>& cand, std::size_t K, double margin, double& threshold) {
  if (cand.size() < K) return;
  std::nth_element(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(K - 1), cand.end(),
                   [](const Entry& a, const Entry& b) { return a.v < b.v; });
  threshold = std::min(threshold, cand[K - 1].v + margin);
  const double t = threshold;
  cand.erase(std::remove_if(cand.begin(), cand.end(), [t](const Entry& e) { return e.v > t; }),
             cand.end());
}

// Rows moved from one contiguous layout of a global row order (from[r] rows on rank
// r) to another (to[r]), by P - 1 shifted exchanges; every rank knows both layouts.
Mat<double> move_rows(const Communicator& comm, const Mat<double>& M, Index cols,
                      const std::vector<std::int64_t>& from, const std::vector<std::int64_t>& to,
                      int tag) {
  const int P = comm.size(), r = comm.rank();
  std::vector<std::int64_t> F(static_cast<std::size_t>(P + 1), 0), T(F);
  for (int q = 0; q < P; ++q) {
    F[static_cast<std::size_t>(q + 1)] = F[static_cast<std::size_t>(q)] + from[static_cast<std::size_t>(q)];
    T[static_cast<std::size_t>(q + 1)] = T[static_cast<std::size_t>(q)] + to[static_cast<std::size_t>(q)];
  }
  // Global rows held by `a` in the first layout and by `b` in the second.
  auto overlap = [&](int a, int b) {
    const std::int64_t lo = std::max(F[static_cast<std::size_t>(a)], T[static_cast<std::size_t>(b)]);
    const std::int64_t hi = std::min(F[static_cast<std::size_t>(a + 1)], T[static_cast<std::size_t>(b + 1)]);
    return std::pair<std::int64_t, std::int64_t>{lo, std::max(lo, hi)};
  };
  const std::int64_t f0 = F[static_cast<std::size_t>(r)], t0 = T[static_cast<std::size_t>(r)];
  Mat<double> out(to[static_cast<std::size_t>(r)], cols);
  for (int d = 0; d < P; ++d) {
    const int dest = (r + d) % P, src = (r + P - d) % P;
    const auto [slo, shi] = overlap(r, dest);
    const auto [rlo, rhi] = overlap(src, r);
    const double* send = M.data() + (slo - f0) * cols;
    double* recv = out.data() + (rlo - t0) * cols;
    if (d == 0) {
      std::copy(send, send + (shi - slo) * cols, recv);
      continue;
    }
    comm.sendrecv(send, static_cast<int>((shi - slo) * cols), dest, recv,
                  static_cast<int>((rhi - rlo) * cols), src, tag);
  }
  return out;
}

// Checks every rank's rows together, so that bad input throws on all ranks instead
// of hanging the ones that passed. Returns the global feature count.
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

}  // namespace

KnnLearner::KnnLearner(int k, bool distance_weighted, Index query_block, Index train_chunk,
                       bool double_gemm)
    : k_(k), distance_weighted_(distance_weighted), query_block_(query_block),
      train_chunk_(train_chunk), double_gemm_(double_gemm) {
  MOESIM_CONFIG_CHECK(k >= 1, "knn: k must be >= 1 (got " << k << ")");
  MOESIM_CONFIG_CHECK(query_block >= 1 && train_chunk >= 1, "knn: block sizes must be >= 1");
}

void KnnLearner::fit(const LearnerContext& ctx, const TrainRows& rows) {
  const Communicator& comm = ctx.comm;
  classes_ = ctx.classes;
  p_ = check_rows(comm, rows, classes_, "knn");
  const Index n = rows.X.rows();
  const Mat<double> X = n > 0 ? rows.X : Mat<double>(0, p_);
  scaler_.fit(comm, X, rows.w);
  const Mat<double> Z = scaler_.apply(X);

  Index kept = 0;
  for (Index i = 0; i < n; ++i) kept += rows.w[static_cast<std::size_t>(i)] > 0 ? 1 : 0;
  xa_.resize(kept, p_ + 1);
  y_.clear();
  w_.clear();
  id_.clear();
  max_norm2_ = 0;
  for (Index i = 0, r = 0; i < n; ++i) {
    const auto ui = static_cast<std::size_t>(i);
    if (!(rows.w[ui] > 0)) continue;
    xa_.row(r).head(p_) = -2.0 * Z.row(i);
    const double* z = Z.data() + i * Z.cols();
    xa_(r, p_) = ordered_dot(z, z, p_);  // a vectorised norm would round by the row's alignment
    max_norm2_ = std::max(max_norm2_, xa_(r, p_));
    y_.push_back(rows.y[ui]);
    w_.push_back(rows.w[ui]);
    id_.push_back(rows.id[ui]);
    ++r;
  }
  if (double_gemm_) xa_f_.resize(0, p_ + 1);
  else xa_f_ = xa_.cast<float>();
  const std::int64_t total = comm.allreduce_sum(static_cast<std::int64_t>(kept));
  MOESIM_CONFIG_CHECK(total > 0, "knn: no training row has a positive weight");
  k_eff_ = static_cast<int>(std::min<std::int64_t>(k_, total));
  fitted_ = true;
}

void KnnLearner::merge_local(const double* Q, Index nq, Candidates& c) const {
  if (double_gemm_) merge_local_as<double>(Q, nq, c, xa_);
  else merge_local_as<float>(Q, nq, c, xa_f_);
}

template <class T>
void KnnLearner::merge_local_as(const double* Q, Index nq, Candidates& c, const Mat<T>& xa) const {
  const Index n = xa_.rows(), p = p_;
  if (nq == 0 || n == 0) return;
  const auto K = static_cast<std::size_t>(k_eff_);
  // The GEMM value v = ||z||^2 - 2 q.z (inputs rounded to T, products summed in T) and
  // the exactly evaluated d2 satisfy |v + ||q||^2 - d2| <= ~4 (p + 2) eps_T (||q||^2 +
  // ||z||^2); keeping every v within twice a bound above that of the K-th smallest v
  // keeps every row of the exact top K.
  const double eps = std::is_same_v<T, float> ? static_cast<double>(FLT_EPSILON) : DBL_EPSILON;
  const double rounding = 8.0 * static_cast<double>(p + 4) * eps;
  const Index QB = std::min(query_block_, nq), TC = std::min(train_chunk_, n);
  Mat<T> qa(QB, p + 1), D(QB, TC);
  std::vector<std::vector<Entry>> cand(static_cast<std::size_t>(QB));
  std::vector<double> threshold(static_cast<std::size_t>(QB)), margin(static_cast<std::size_t>(QB));
  std::vector<std::size_t> cap(static_cast<std::size_t>(QB));
  std::vector<Neighbour> local;
  std::vector<double> md2(K), my(K), mw(K);
  std::vector<std::int64_t> mid(K);

  for (Index b0 = 0; b0 < nq; b0 += QB) {
    const Index nb = std::min(QB, nq - b0);
    qa.resize(nb, p + 1);
    const ConstMatMap<double> qd(Q + b0 * p, nb, p);
    qa.leftCols(p) = qd.template cast<T>();
    qa.col(p).setOnes();
    for (Index i = 0; i < nb; ++i) {
      const auto ui = static_cast<std::size_t>(i);
      margin[ui] = 2.0 * rounding * (qd.row(i).squaredNorm() + max_norm2_);
      threshold[ui] = kInf;
      cand[ui].clear();
      cap[ui] = std::max<std::size_t>(4 * K, 64);
    }
    for (Index c0 = 0; c0 < n; c0 += TC) {
      const Index nc = std::min(TC, n - c0);
      D.resize(nb, nc);
      D.noalias() = qa * xa.middleRows(c0, nc).transpose();
      for (Index i = 0; i < nb; ++i) {
        const auto ui = static_cast<std::size_t>(i);
        std::vector<Entry>& cd = cand[ui];
        const T* row = D.data() + i * nc;
        double t = threshold[ui];
        auto offer = [&](Index j) {
          if (row[j] > t) return;
          cd.push_back({row[j], c0 + j});
          if (cd.size() > cap[ui]) {
            prune(cd, K, margin[ui], t);
            cap[ui] = std::max(cap[ui], 2 * cd.size());
          }
        };
        // Almost every value misses the threshold: test 8 at once, branch-free.
        Index j = 0;
        for (; j + 8 <= nc; j += 8) {
          const T* r = row + j;
          const double m = std::min(std::min(std::min(r[0], r[1]), std::min(r[2], r[3])),
                                    std::min(std::min(r[4], r[5]), std::min(r[6], r[7])));
          if (m > t) continue;
          for (Index u = j; u < j + 8; ++u) offer(u);
        }
        for (; j < nc; ++j) offer(j);
        threshold[ui] = t;
      }
    }
    for (Index i = 0; i < nb; ++i) {
      const auto ui = static_cast<std::size_t>(i);
      prune(cand[ui], K, margin[ui], threshold[ui]);
      // Exact distances for the short list, with the same per-feature sum as the
      // serial reference, so that ties (equal points) are exact on any P.
      const double* q = Q + (b0 + i) * p;
      local.clear();
      for (const Entry& e : cand[ui]) {
        const double* xr = xa_.data() + e.row * (p + 1);
        double d2 = 0;
        for (Index j = 0; j < p; ++j) {
          const double d = q[j] - (-0.5 * xr[j]);
          d2 += d * d;
        }
        local.push_back({d2, id_[static_cast<std::size_t>(e.row)], e.row});
      }
      const std::size_t m = std::min(K, local.size());
      std::partial_sort(local.begin(), local.begin() + static_cast<std::ptrdiff_t>(m), local.end(),
                        [](const Neighbour& a, const Neighbour& b) { return closer(a.d2, a.id, b.d2, b.id); });
      // Merge the sorted local list into the sorted travelling slots.
      const std::size_t base = static_cast<std::size_t>(b0 + i) * K;
      std::size_t a = 0, l = 0;
      for (std::size_t s = 0; s < K; ++s) {
        const bool take_local =
            l < m && closer(local[l].d2, local[l].id, c.d2[base + a], c.id[base + a]);
        if (take_local) {
          const auto r = static_cast<std::size_t>(local[l].row);
          md2[s] = local[l].d2, my[s] = y_[r], mw[s] = w_[r], mid[s] = local[l].id;
          ++l;
        } else {
          md2[s] = c.d2[base + a], my[s] = c.y[base + a], mw[s] = c.w[base + a], mid[s] = c.id[base + a];
          ++a;
        }
      }
      std::copy(md2.begin(), md2.end(), c.d2.begin() + static_cast<std::ptrdiff_t>(base));
      std::copy(my.begin(), my.end(), c.y.begin() + static_cast<std::ptrdiff_t>(base));
      std::copy(mw.begin(), mw.end(), c.w.begin() + static_cast<std::ptrdiff_t>(base));
      std::copy(mid.begin(), mid.end(), c.id.begin() + static_cast<std::ptrdiff_t>(base));
    }
  }
}

Mat<double> KnnLearner::predict(const LearnerContext& ctx, const Mat<double>& X) {
  MOESIM_REQUIRE(fitted_, "knn: predict before fit");
  const Communicator& comm = ctx.comm;
  const Index nq = X.rows(), p = p_;
  comm.agree_or_throw(nq == 0 || X.cols() == p,
                      "knn: queries have " + std::to_string(X.cols()) + " features, the model " +
                          std::to_string(p));
  const auto K = static_cast<std::size_t>(k_eff_);
  const int P = comm.size(), rank = comm.rank();
  const int next = (rank + 1) % P, prev = (rank + P - 1) % P;

  // A block is served by one rank at a time, so queries held by few ranks (one
  // held-out fold) would leave the others idle: first even out the query counts.
  std::vector<std::int64_t> counts(static_cast<std::size_t>(P)), even(counts);
  const std::int64_t mine = nq;
  comm.allgather(&mine, 1, counts.data());
  std::int64_t all_queries = 0;
  for (std::int64_t v : counts) all_queries += v;
  for (int r = 0; r < P; ++r)
    even[static_cast<std::size_t>(r)] = all_queries / P + (r < all_queries % P ? 1 : 0);
  const bool rebalance = counts != even;
  Mat<double> Z = nq > 0 ? scaler_.apply(X) : Mat<double>(0, p);
  if (rebalance) Z = move_rows(comm, Z, p, counts, even, kTagMove);
  const Index nb = Z.rows();
  // Every rank knows the largest block (even[0]), so all of them throw together.
  MOESIM_CONFIG_CHECK(even[0] * (p + 3 * k_eff_) <= std::numeric_limits<int>::max(),
                      "knn: " << all_queries << " queries make blocks too large for one MPI "
                              "message; predict in smaller batches");

  // The travelling block: standardised queries and their candidate slots.
  std::vector<double> q(Z.data(), Z.data() + Z.size());
  Candidates c;
  const auto slots = static_cast<std::size_t>(nb) * K;
  c.d2.assign(slots, kInf);
  c.y.assign(slots, 0.0);
  c.w.assign(slots, 0.0);
  c.id.assign(slots, kNoId);

  std::int64_t cur = nb;
  std::vector<double> send, recv;
  std::vector<std::int64_t> recv_id;
  for (int s = 0; s < P; ++s) {
    merge_local(q.data(), cur, c);
    if (P == 1) break;
    // The last hop takes the block home: candidates only, the queries are there.
    const bool last = s == P - 1;
    std::int64_t incoming = 0;
    comm.sendrecv(&cur, 1, next, &incoming, 1, prev, kTagSize);
    const auto in_slots = static_cast<std::size_t>(incoming) * K;
    const std::size_t in_q = last ? 0 : static_cast<std::size_t>(incoming * p);
    send.clear();
    if (!last) send.insert(send.end(), q.begin(), q.end());
    send.insert(send.end(), c.d2.begin(), c.d2.end());
    send.insert(send.end(), c.y.begin(), c.y.end());
    send.insert(send.end(), c.w.begin(), c.w.end());
    recv.resize(in_q + 3 * in_slots);
    comm.sendrecv(send.data(), static_cast<int>(send.size()), next, recv.data(),
                  static_cast<int>(recv.size()), prev, kTagData);
    recv_id.resize(in_slots);
    comm.sendrecv(c.id.data(), static_cast<int>(c.id.size()), next, recv_id.data(),
                  static_cast<int>(recv_id.size()), prev, kTagIds);
    auto at = recv.begin();
    if (!last) q.assign(at, at + static_cast<std::ptrdiff_t>(in_q));
    at += static_cast<std::ptrdiff_t>(in_q);
    const auto ns = static_cast<std::ptrdiff_t>(in_slots);
    c.d2.assign(at, at + ns);
    c.y.assign(at + ns, at + 2 * ns);
    c.w.assign(at + 2 * ns, at + 3 * ns);
    c.id.swap(recv_id);
    cur = incoming;
  }
  MOESIM_REQUIRE(cur == nb, "knn: the ring returned a block of " << cur << " queries, expected " << nb);

  const Index C = classes_ >= 2 ? classes_ : 1;
  Mat<double> out = Mat<double>::Zero(nb, C);
  for (Index i = 0; i < nb; ++i) {
    const std::size_t base = static_cast<std::size_t>(i) * K;
    // Slots are sorted, so a zero distance, if any, is in the first one.
    const bool exact_hit = distance_weighted_ && c.d2[base] == 0;
    double total = 0, acc = 0;
    for (std::size_t s = base; s < base + K; ++s) {
      MOESIM_REQUIRE(c.id[s] != kNoId, "knn: a neighbour slot stayed empty");
      double dw = 1.0;
      if (distance_weighted_) dw = exact_hit ? (c.d2[s] == 0 ? 1.0 : 0.0) : 1.0 / std::sqrt(c.d2[s]);
      const double wt = c.w[s] * dw;
      total += wt;
      if (C > 1) out(i, static_cast<Index>(c.y[s])) += wt;
      else acc += wt * c.y[s];
    }
    MOESIM_REQUIRE(total > 0, "knn: neighbour weights sum to " << total);
    if (C > 1) out.row(i) /= total;
    else out(i, 0) = acc / total;
  }
  return rebalance ? move_rows(comm, out, C, even, counts, kTagMove) : out;
}

std::unique_ptr<Learner> make_knn_learner(const LearnerOptions& opt) {
  return std::make_unique<KnnLearner>(opt.knn_k, opt.knn_distance_weighted);
}

}  // namespace moesim
