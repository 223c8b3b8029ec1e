// K nearest neighbours with a ring pass of query blocks: training shards stay put,
// queries and their k best candidates travel; candidates are short-listed from float
// distances (knn_screen, or blocked GEMMs) and evaluated exactly.
#include "learners/knn.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "core/error.hpp"
#include "core/row_order.hpp"
#include "learners/knn_common.hpp"

namespace moesim {

namespace {

using knn::closer;
using knn::kInf;
using knn::kNoId;

constexpr int kTagSize = 71, kTagData = 72, kTagIds = 73, kTagMove = 74;

// One short-listed training row of one query: its screened value ||z||^2 - 2 q.z.
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

}  // namespace

KnnLearner::Screen KnnLearner::best_screen() {
  if (screen_kernel_available(ScreenPrecision::kBf16)) return Screen::kFusedBf16;
  return screen_kernel_available(ScreenPrecision::kFloat) ? Screen::kFused : Screen::kFloatGemm;
}

KnnLearner::KnnLearner(int k, bool distance_weighted, Index query_block, Index train_chunk, Screen screen)
    : k_(k), distance_weighted_(distance_weighted), query_block_(query_block),
      train_chunk_(train_chunk), screen_(screen) {
  MOESIM_CONFIG_CHECK(k >= 1, "knn: k must be >= 1 (got " << k << ")");
  MOESIM_CONFIG_CHECK(query_block >= 1 && train_chunk >= 1, "knn: block sizes must be >= 1");
  MOESIM_CONFIG_CHECK(!fused() || screen_kernel_available(fused_precision()),
                      "knn: this CPU lacks the instructions of the fused screen asked for");
}

void KnnLearner::fit(const LearnerContext& ctx, const TrainRows& rows) {
  const Communicator& comm = ctx.comm;
  classes_ = ctx.classes;
  p_ = knn::check_rows(comm, rows, classes_, "knn");
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
  xa_f_.resize(0, p_ + 1);
  xa_panels_ = PanelMatrix();
  if (screen_ == Screen::kFloatGemm || screen_ == Screen::kFusedBf16) xa_f_ = xa_.cast<float>();
  norm_f_.clear();
  if (fused()) {
    xa_panels_ = PanelMatrix(xa_.leftCols(p_).cast<float>(), RowVec<float>::Zero(p_), fused_precision());
    // Padding rows sit at infinite distance, past every finite threshold.
    norm_f_.assign(static_cast<std::size_t>(xa_panels_.panels() * kScreenPanelRows), std::numeric_limits<float>::infinity());
    for (Index r = 0; r < kept; ++r) norm_f_[static_cast<std::size_t>(r)] = static_cast<float>(xa_(r, p_));
  }
  const std::int64_t total = comm.allreduce_sum(static_cast<std::int64_t>(kept));
  MOESIM_CONFIG_CHECK(total > 0, "knn: no training row has a positive weight");
  k_eff_ = static_cast<int>(std::min<std::int64_t>(k_, total));
  fitted_ = true;
}

// The short lists of one block of queries: per query, the training rows whose screened
// value v = ||z||^2 - 2 q.z may still be among the K nearest.
class KnnLearner::ShortLists {
 public:
  // The screened v (inputs rounded to the screen's type, of machine epsilon eps, and
  // products summed in it, in any order) and the exactly evaluated d2 satisfy
  // |v + ||q||^2 - d2| <= ~4 (p + 2) eps (||q||^2 + ||z||^2); keeping every v within
  // twice a bound above that of the K-th smallest v keeps every row of the exact top K.
  // A bf16 screen's products are prescreen_error (sum |a_k b_k|, at most ||q||^2 + ||z||^2
  // here) from the float ones: its thresholds are the float thresholds widened by that and
  // the float bound, and what passes is re-checked in float.
  ShortLists(std::size_t K, Index block, Index p, double eps, double prescreen_error, double max_norm2)
      : K_(K), rounding_(8.0 * static_cast<double>(p + 4) * eps), prescreen_error_(prescreen_error),
        max_norm2_(max_norm2), cand_(static_cast<std::size_t>(block)), threshold_(cand_.size()),
        screen_threshold_(cand_.size()), margin_(cand_.size()), widen_(cand_.size()), cap_(cand_.size()) {}

  // Empties the lists for nb queries (row-major standardised, nb x p).
  void start(const double* Q, Index nb, Index p) {
    for (Index i = 0; i < nb; ++i) {
      const auto ui = static_cast<std::size_t>(i);
      const ConstMatMap<double> q(Q + i * p, 1, p);
      const double qn = q.squaredNorm();
      margin_[ui] = 2.0 * rounding_ * (qn + max_norm2_);
      widen_[ui] = prescreen_error_ > 0 ? (rounding_ + prescreen_error_) * (qn + max_norm2_) : 0.0;
      set_threshold(ui, kInf);
      cand_[ui].clear();
      cap_[ui] = std::max<std::size_t>(4 * K_, 64);
    }
  }
  double threshold(Index i) const { return threshold_[static_cast<std::size_t>(i)]; }
  // Per query, the fused screen's threshold (float_threshold of the widened threshold).
  const float* screen_thresholds() const { return screen_threshold_.data(); }

  void offer(Index i, double v, Index row) {
    const auto ui = static_cast<std::size_t>(i);
    if (v > threshold_[ui]) return;
    std::vector<Entry>& cd = cand_[ui];
    cd.push_back({v, row});
    if (cd.size() > cap_[ui]) {
      prune(ui);
      cap_[ui] = std::max(cap_[ui], 2 * cd.size());
    }
  }

  // Query i's final short list.
  std::vector<Entry>& finish(Index i) {
    prune(static_cast<std::size_t>(i));
    return cand_[static_cast<std::size_t>(i)];
  }

  // Scratch of merge_exact.
  std::vector<Neighbour> local;
  std::vector<double> d2, y, w;
  std::vector<std::int64_t> id;

 private:
  // Keeps the entries that can still be among the K nearest: v <= (K-th smallest v) +
  // margin, where the margin covers the rounding of the screen and of the exact distances.
  void prune(std::size_t i) {
    std::vector<Entry>& cd = cand_[i];
    if (cd.size() < K_) return;
    std::nth_element(cd.begin(), cd.begin() + static_cast<std::ptrdiff_t>(K_ - 1), cd.end(),
                     [](const Entry& a, const Entry& b) { return a.v < b.v; });
    set_threshold(i, std::min(threshold_[i], cd[K_ - 1].v + margin_[i]));
    const double t = threshold_[i];
    cd.erase(std::remove_if(cd.begin(), cd.end(), [t](const Entry& e) { return e.v > t; }), cd.end());
  }

  void set_threshold(std::size_t i, double t) {
    threshold_[i] = t;
    screen_threshold_[i] = float_threshold(t + widen_[i]);
  }

  std::size_t K_;
  double rounding_, prescreen_error_, max_norm2_;
  std::vector<std::vector<Entry>> cand_;
  std::vector<double> threshold_;
  std::vector<float> screen_threshold_;
  std::vector<double> margin_, widen_;
  std::vector<std::size_t> cap_;
};

void KnnLearner::merge_local(const double* Q, Index nq, Candidates& c) const {
  const Index n = xa_.rows(), p = p_;
  if (nq == 0 || n == 0) return;
  const auto K = static_cast<std::size_t>(k_eff_);
  const Index QB = std::min(query_block_, nq);
  const double eps = screen_ == Screen::kDoubleGemm ? DBL_EPSILON : static_cast<double>(FLT_EPSILON);
  const double prescreen = screen_ == Screen::kFusedBf16 ? screen_relative_error(ScreenPrecision::kBf16, p) : 0.0;
  ShortLists lists(K, QB, p, eps, prescreen, max_norm2_);
  for (Index b0 = 0; b0 < nq; b0 += QB) {
    const Index nb = std::min(QB, nq - b0);
    lists.start(Q + b0 * p, nb, p);
    switch (screen_) {
      case Screen::kFusedBf16:
      case Screen::kFused: screen_fused(Q, b0, nb, lists); break;
      case Screen::kFloatGemm: screen_gemm<float>(Q, b0, nb, xa_f_, lists); break;
      case Screen::kDoubleGemm: screen_gemm<double>(Q, b0, nb, xa_, lists); break;
    }
    for (Index i = 0; i < nb; ++i)
      merge_exact(Q + (b0 + i) * p, lists, i, static_cast<std::size_t>(b0 + i) * K, c);
  }
}

template <class T>
void KnnLearner::screen_gemm(const double* Q, Index b0, Index nb, const Mat<T>& xa, ShortLists& lists) const {
  const Index n = xa_.rows(), p = p_;
  const Index TC = std::min(train_chunk_, n);
  Mat<T> qa(nb, p + 1), D(nb, TC);
  const ConstMatMap<double> qd(Q + b0 * p, nb, p);
  qa.leftCols(p) = qd.template cast<T>();
  qa.col(p).setOnes();
  for (Index c0 = 0; c0 < n; c0 += TC) {
    const Index nc = std::min(TC, n - c0);
    D.resize(nb, nc);
    D.noalias() = qa * xa.middleRows(c0, nc).transpose();
    for (Index i = 0; i < nb; ++i) {
      const T* row = D.data() + i * nc;
      // Almost every value misses the threshold: test 8 at once, branch-free.
      Index j = 0;
      for (; j + 8 <= nc; j += 8) {
        const T* r = row + j;
        const double m = std::min(std::min(std::min(r[0], r[1]), std::min(r[2], r[3])),
                                  std::min(std::min(r[4], r[5]), std::min(r[6], r[7])));
        if (m > lists.threshold(i)) continue;
        for (Index u = j; u < j + 8; ++u) lists.offer(i, row[u], c0 + u);
      }
      for (; j < nc; ++j) lists.offer(i, row[j], c0 + j);
    }
  }
}

void KnnLearner::screen_fused(const double* Q, Index b0, Index nb, ShortLists& lists) const {
  const Index n = xa_.rows(), p = p_;
  const Mat<float> qa = ConstMatMap<double>(Q + b0 * p, nb, p).cast<float>();
  const std::vector<float> no_bias(static_cast<std::size_t>(nb), 0.0f);
  struct Offer final : ScreenHits {
    ShortLists& lists;
    const Mat<float>& qa;
    const Mat<float>* recheck;  // the training rows [-2 z, ||z||^2] in float, for a bf16 screen
    Index n;
    Offer(ShortLists& l, const Mat<float>& q, const Mat<float>* r, Index rows) : lists(l), qa(q), recheck(r), n(rows) {}
    void hit(Index row, Index col, float v) override {
      if (col >= n) return;
      if (recheck) {
        const Index p = qa.cols();
        const float* x = recheck->data() + col * (p + 1);
        v = screen_dot(qa.data() + row * p, x, p) + x[p];
      }
      lists.offer(row, v, col);
    }
  } offer(lists, qa, screen_ == Screen::kFusedBf16 ? &xa_f_ : nullptr, n);
  screen_tiles(qa.data(), nb, xa_panels_, 0, xa_panels_.panels(), train_chunk_ / kScreenPanelRows, no_bias.data(),
               norm_f_.data(), lists.screen_thresholds(), offer);
}

void KnnLearner::merge_exact(const double* q, ShortLists& lists, Index i, std::size_t base, Candidates& c) const {
  const Index p = p_;
  const auto K = static_cast<std::size_t>(k_eff_);
  // Exact distances for the short list, with the same per-feature sum as the serial
  // reference, so that ties (equal points) are exact on any P.
  std::vector<Neighbour>& local = lists.local;
  local.clear();
  for (const Entry& e : lists.finish(i)) {
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
  std::vector<double>& md2 = lists.d2, &my = lists.y, &mw = lists.w;
  std::vector<std::int64_t>& mid = lists.id;
  md2.resize(K);
  my.resize(K);
  mw.resize(K);
  mid.resize(K);
  std::size_t a = 0, l = 0;
  for (std::size_t s = 0; s < K; ++s) {
    const bool take_local = l < m && closer(local[l].d2, local[l].id, c.d2[base + a], c.id[base + a]);
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
  for (Index i = 0; i < nb; ++i) knn::vote(c, static_cast<std::size_t>(i) * K, K, distance_weighted_, out, i);
  return rebalance ? move_rows(comm, out, C, even, counts, kTagMove) : out;
}

std::unique_ptr<Learner> make_knn_learner(const LearnerOptions& opt) {
  return std::make_unique<KnnLearner>(opt.knn_k, opt.knn_distance_weighted);
}

}  // namespace moesim
