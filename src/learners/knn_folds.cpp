// KnnLearner::out_of_fold: the K fold models' predictions of their held-out rows from one
// pass over the pairs of rows in different folds, instead of K fits and predictions that
// would each compute the distances of 1/K of the rows to the other (K-1)/K.
//
// Fold model a standardises with its own training rows (z_a = (x - m_a) / s_a), so a pair
// (i in fold a, j in fold b) has one distance for model a (query i) and another for model
// b (query j). In exact arithmetic both are bounded below by the pair's distance in the
// metric of all rows, d2_g: d2_a = sum_f (x_if - x_jf)^2 / s_af^2 >= rho_a d2_g, where
// rho_a = min_f (s_gf / s_af)^2 (close to 1 for folds of a few hundred rows or more). So
// one float distance in the common metric, screened against both rows' thresholds, short-
// lists the pair for both directions, and every direction that passes is evaluated exactly
// in its model's metric, with the same arithmetic as KnnLearner::predict: the neighbours,
// and so the predictions, are the same bits as K fits and predictions.
//
// A row's threshold comes from the exact distance D of its current k-th neighbour: a row
// at exact distance <= D has d2_a <= D + e_a (e_a: rounding of the exact evaluation), so
// d2_g <= (D + e_a) / rho_a, and its float screened value is at most that plus the float
// screen's rounding (as KnnLearner::ShortLists' bound); a bf16 screen's threshold is wider
// by its own rounding bound, and what passes it is computed again in float.
//
// Rows stay on their ranks. Each rank's block of rows travels half the ring with its rows'
// neighbour lists, so that every pair of blocks meets once (the two blocks of the middle
// step of an even ring split their pairs), and the lists go home at the end.
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "core/row_order.hpp"
#include "core/timer.hpp"
#include "learners/knn.hpp"
#include "learners/knn_common.hpp"

namespace moesim {

namespace {

using knn::kInf;
using knn::kNoId;

constexpr int kTagSizes = 81, kTagDoubles = 82, kTagInts = 83, kTagHomeDoubles = 84, kTagHomeInts = 85;
constexpr Index kP = kScreenPanelRows;

// Fold model a against the common metric.
struct FoldMetric {
  Standardizer scaler;
  int k_eff = 0;
  double rho = 0;         // <= (s_g / s_a)^2 for every feature
  double norm_bound = 0;  // >= ||z_a||^2 of every row
};

// One rank's rows in fold order, each fold's group padded with empty rows (fold -1) to
// whole screen panels, so that a panel never mixes folds.
struct FoldBlock {
  std::vector<std::int64_t> begin;  // K + 1: fold a's group is rows [begin[a], begin[a + 1])
  Mat<double> x;
  std::vector<std::int64_t> fold, id;
  std::vector<double> y, w;
  KnnLearner::Candidates slots;     // kmax per row, sorted (knn_common)
  // Per row, the k-th exact distance of the row's neighbour list elsewhere (+inf at
  // home): the final list merges both, so a candidate farther than that cannot enter it.
  std::vector<double> bound;
  // Derived wherever the block is (JointPass::prepare).
  Mat<float> rows;                  // z_g
  PanelMatrix panels;               // -2 z_g
  std::vector<float> bias;          // ||z_g||^2 (+inf on padding): the screen's row and column bias
  Mat<double> z_own;                // z in the metric of the row's own fold model
  std::vector<double> norm;         // ||z_g||^2
  std::vector<float> threshold;     // per row, for float values of the common distance
  std::vector<float> screen;        // per row, the screen's (threshold itself, or widened for bf16)
  Index size() const { return x.rows(); }
};

class JointPass {
 public:
  JointPass(const Standardizer& common, std::vector<FoldMetric> metrics, Index p, std::size_t kmax,
            double norm_max, Index query_block, Index max_pass_panels, ScreenPrecision precision)
      : common_(common), metrics_(std::move(metrics)), p_(p), kmax_(kmax), norm_max_(norm_max),
        query_block_(query_block), max_pass_panels_(max_pass_panels), precision_(precision),
        screen_rel_(8.0 * static_cast<double>(p + 4) * FLT_EPSILON),
        prescreen_rel_(precision == ScreenPrecision::kBf16 ? screen_relative_error(precision, p) : 0.0),
        exact_rel_(4.0 * static_cast<double>(p + 8) * DBL_EPSILON) {}

  // The local rows as a block; where[i] is local row i's row in it.
  FoldBlock block_of(const TrainRows& rows, const std::vector<int>& fold, std::vector<Index>& where) const;
  // The copy of `home` that travels: its rows, empty neighbour lists and home's k-th
  // distances as bounds.
  FoldBlock traveller(const FoldBlock& home) const;
  // The block's derived members, from its rows and neighbour lists.
  void prepare(FoldBlock& b) const;
  // Every pair of A's rows [row0, row1) and B's panels [panel0, panel1) in different folds
  // (B's later folds only, when A and B are the same block), in both directions.
  void screen(FoldBlock& A, Index row0, Index row1, FoldBlock& B, Index panel0, Index panel1,
              bool later_folds_only) const;
  // Row j of C as a candidate neighbour of row i of Q, evaluated exactly in the metric of
  // i's fold model.
  void offer(FoldBlock& Q, Index i, const FoldBlock& C, Index j) const;
  const FoldMetric& metric(std::int64_t fold) const { return metrics_[static_cast<std::size_t>(fold)]; }
  std::size_t kmax() const { return kmax_; }
  // The float value of the common distance of A's row i and B's row j, for a bf16
  // screen's hits: within the float screen's bound, as its values.
  float float_distance(const FoldBlock& A, Index i, const FoldBlock& B, Index j) const;
  bool rechecks() const { return precision_ == ScreenPrecision::kBf16; }

 private:
  void update_threshold(FoldBlock& Q, Index i) const;

  const Standardizer& common_;
  std::vector<FoldMetric> metrics_;
  Index p_;
  std::size_t kmax_;
  double norm_max_;  // max ||z_g||^2 over every rank's rows
  Index query_block_, max_pass_panels_;
  ScreenPrecision precision_;
  double screen_rel_, prescreen_rel_, exact_rel_;
};

FoldBlock JointPass::block_of(const TrainRows& rows, const std::vector<int>& fold,
                              std::vector<Index>& where) const {
  const Index n = rows.X.rows();
  const auto K = metrics_.size();
  FoldBlock b;
  std::vector<std::int64_t> count(K, 0);
  for (int f : fold) {
    MOESIM_REQUIRE(f >= 0 && static_cast<std::size_t>(f) < K, "knn: fold " << f << " outside 0.." << K - 1);
    ++count[static_cast<std::size_t>(f)];
  }
  b.begin.assign(K + 1, 0);
  for (std::size_t a = 0; a < K; ++a) b.begin[a + 1] = b.begin[a] + (count[a] + kP - 1) / kP * kP;
  const Index N = b.begin[K];
  b.x = Mat<double>::Zero(N, p_);
  b.fold.assign(static_cast<std::size_t>(N), -1);
  b.id.assign(static_cast<std::size_t>(N), kNoId);
  b.y.assign(static_cast<std::size_t>(N), 0.0);
  b.w.assign(static_cast<std::size_t>(N), 0.0);
  b.bound.assign(static_cast<std::size_t>(N), kInf);
  where.resize(static_cast<std::size_t>(n));
  std::vector<std::int64_t> next(b.begin.begin(), b.begin.end() - 1);
  for (Index i = 0; i < n; ++i) {
    const auto ui = static_cast<std::size_t>(i);
    const auto r = static_cast<std::size_t>(next[static_cast<std::size_t>(fold[ui])]++);
    b.x.row(static_cast<Index>(r)) = rows.X.row(i);
    b.fold[r] = fold[ui];
    b.id[r] = rows.id[ui];
    b.y[r] = rows.y[ui];
    b.w[r] = rows.w[ui];
    where[ui] = static_cast<Index>(r);
  }
  const auto slots = static_cast<std::size_t>(N) * kmax_;
  b.slots.d2.assign(slots, kInf);
  b.slots.y.assign(slots, 0.0);
  b.slots.w.assign(slots, 0.0);
  b.slots.id.assign(slots, kNoId);
  return b;
}

FoldBlock JointPass::traveller(const FoldBlock& home) const {
  FoldBlock t;
  t.begin = home.begin;
  t.x = home.x;
  t.fold = home.fold;
  t.id = home.id;
  t.y = home.y;
  t.w = home.w;
  const std::size_t N = home.fold.size();
  t.bound.assign(N, kInf);
  for (std::size_t r = 0; r < N; ++r)
    if (home.fold[r] >= 0) {
      const std::size_t last = r * kmax_ + static_cast<std::size_t>(metric(home.fold[r]).k_eff) - 1;
      if (home.slots.id[last] != kNoId) t.bound[r] = home.slots.d2[last];
    }
  t.slots.d2.assign(N * kmax_, kInf);
  t.slots.y.assign(N * kmax_, 0.0);
  t.slots.w.assign(N * kmax_, 0.0);
  t.slots.id.assign(N * kmax_, kNoId);
  return t;
}

void JointPass::prepare(FoldBlock& b) const {
  const Index N = b.size(), p = p_;
  const Mat<double> zg = common_.apply(b.x);
  b.rows = zg.cast<float>();
  b.panels = PanelMatrix((-2.0 * zg).cast<float>(), RowVec<float>::Zero(p), precision_);
  b.norm.assign(static_cast<std::size_t>(N), 0.0);
  // Padding sits at infinite distance from everything.
  b.bias.assign(static_cast<std::size_t>(N), std::numeric_limits<float>::infinity());
  for (Index r = 0; r < N; ++r) {
    if (b.fold[static_cast<std::size_t>(r)] < 0) continue;
    const double* z = zg.data() + r * p;
    b.norm[static_cast<std::size_t>(r)] = ordered_dot(z, z, p);
    b.bias[static_cast<std::size_t>(r)] = static_cast<float>(b.norm[static_cast<std::size_t>(r)]);
  }
  b.z_own = Mat<double>::Zero(N, p);
  for (std::size_t a = 0; a + 1 < b.begin.size(); ++a) {
    const Index r0 = b.begin[a], len = b.begin[a + 1] - r0;
    if (len > 0) b.z_own.middleRows(r0, len) = metrics_[a].scaler.apply(b.x.middleRows(r0, len));
  }
  b.threshold.resize(static_cast<std::size_t>(N));
  b.screen.resize(static_cast<std::size_t>(N));
  for (Index r = 0; r < N; ++r) update_threshold(b, r);
}

void JointPass::update_threshold(FoldBlock& Q, Index i) const {
  const auto ui = static_cast<std::size_t>(i);
  const std::int64_t a = Q.fold[ui];
  if (a < 0) {
    Q.threshold[ui] = Q.screen[ui] = -std::numeric_limits<float>::infinity();
    return;
  }
  const FoldMetric& m = metric(a);
  const std::size_t last = ui * kmax_ + static_cast<std::size_t>(m.k_eff) - 1;
  const double D = std::min(Q.slots.id[last] == kNoId ? kInf : Q.slots.d2[last], Q.bound[ui]);
  if (D == kInf) {
    Q.threshold[ui] = Q.screen[ui] = std::numeric_limits<float>::infinity();
    return;
  }
  // A row at exact distance <= D: d2_a <= (D + e_a 4 N_a) / (1 - e_a) in exact arithmetic,
  // d2_g <= that / rho_a, screened value <= that + the screen's bound; the last factor
  // covers the rounding of this line.
  const double exact = (D + exact_rel_ * 4.0 * m.norm_bound) / (1.0 - exact_rel_);
  const double float_error = screen_rel_ * (Q.norm[ui] + norm_max_);
  Q.threshold[ui] = float_threshold((exact / m.rho + float_error) * (1.0 + 1e-12));
  // A bf16 product is within prescreen_rel_ sum |a_k b_k| <= ||z_i||^2 + ||z_j||^2 of
  // the exact one, the float value within float_error.
  const double widen = rechecks() ? float_error + prescreen_rel_ * (Q.norm[ui] + norm_max_) : 0.0;
  Q.screen[ui] = rechecks() ? float_threshold((exact / m.rho + float_error + widen) * (1.0 + 1e-12)) : Q.threshold[ui];
}

float JointPass::float_distance(const FoldBlock& A, Index i, const FoldBlock& B, Index j) const {
  const float dot = screen_dot(A.rows.data() + i * p_, B.rows.data() + j * p_, p_);
  return A.bias[static_cast<std::size_t>(i)] + B.bias[static_cast<std::size_t>(j)] - 2.0f * dot;
}

void JointPass::offer(FoldBlock& Q, Index i, const FoldBlock& C, Index j) const {
  const auto ui = static_cast<std::size_t>(i), uj = static_cast<std::size_t>(j);
  const std::int64_t a = Q.fold[ui];
  if (a < 0 || C.fold[uj] < 0 || !(C.w[uj] > 0)) return;  // weight 0: not a training row
  const FoldMetric& m = metric(a);
  const double* q = Q.z_own.data() + i * p_;
  const double* x = C.x.data() + j * p_;
  const double* mean = m.scaler.mean.data();
  const double* scale = m.scaler.scale.data();
  // As KnnLearner::fit standardises the training row and merge_exact sums.
  double d2 = 0;
  for (Index f = 0; f < p_; ++f) {
    const double d = q[f] - (x[f] - mean[f]) / scale[f];
    d2 += d * d;
  }
  if (knn::insert_slot(Q.slots, ui * kmax_, static_cast<std::size_t>(m.k_eff), d2, C.id[uj], C.y[uj], C.w[uj]))
    update_threshold(Q, i);
}

// Screen hits of a block pair: each direction that passes its row's threshold is offered.
class PairHits final : public ScreenHits {
 public:
  PairHits(const JointPass& pass, FoldBlock& A, Index row0, FoldBlock& B)
      : pass_(pass), A_(A), row0_(row0), B_(B) {}
  void hit(Index row, Index col, float v) override {
    const Index i = row0_ + row;
    const auto ui = static_cast<std::size_t>(i), uc = static_cast<std::size_t>(col);
    if (pass_.rechecks()) {
      if (v > A_.screen[ui] && v > B_.screen[uc]) return;  // passed on a threshold since lowered
      v = pass_.float_distance(A_, i, B_, col);
    }
    if (!(v > A_.threshold[ui])) pass_.offer(A_, i, B_, col);
    if (!(v > B_.threshold[uc])) pass_.offer(B_, col, A_, i);
  }

 private:
  const JointPass& pass_;
  FoldBlock& A_;
  Index row0_;
  FoldBlock& B_;
};

void JointPass::screen(FoldBlock& A, Index row0, Index row1, FoldBlock& B, Index panel0, Index panel1,
                       bool later_folds_only) const {
  const auto K = static_cast<Index>(metrics_.size());
  for (Index ga = 0; ga < K; ++ga) {
    const Index r0 = std::max<Index>(A.begin[static_cast<std::size_t>(ga)], row0);
    const Index r1 = std::min<Index>(A.begin[static_cast<std::size_t>(ga + 1)], row1);
    for (Index b0 = r0; b0 < r1; b0 += query_block_) {
      const Index nb = std::min(query_block_, r1 - b0);
      PairHits hits(*this, A, b0, B);
      for (Index gb = later_folds_only ? ga + 1 : 0; gb < K; ++gb) {
        if (gb == ga) continue;
        const Index q0 = std::max<Index>(B.begin[static_cast<std::size_t>(gb)] / kP, panel0);
        const Index q1 = std::min<Index>(B.begin[static_cast<std::size_t>(gb + 1)] / kP, panel1);
        if (q0 < q1)
          screen_tiles(A.rows.data() + b0 * p_, nb, B.panels, q0, q1, max_pass_panels_, A.bias.data() + b0,
                       B.bias.data(), A.screen.data() + b0, hits, B.screen.data());
      }
    }
  }
}

// COLLECTIVE over the ring: sends b's rows and neighbour lists to `dest` and returns the
// block received from `source` (not prepared).
FoldBlock pass_block(const Communicator& comm, const FoldBlock& b, std::size_t kmax, Index p, int dest,
                     int source) {
  const std::int64_t sizes[2] = {b.size(), static_cast<std::int64_t>(b.begin.size())};
  std::int64_t in[2] = {0, 0};
  comm.sendrecv(sizes, 2, dest, in, 2, source, kTagSizes);
  std::vector<double> sd;
  sd.insert(sd.end(), b.x.data(), b.x.data() + b.x.size());
  for (const std::vector<double>* v : {&b.y, &b.w, &b.bound, &b.slots.d2, &b.slots.y, &b.slots.w})
    sd.insert(sd.end(), v->begin(), v->end());
  std::vector<std::int64_t> si(b.begin);
  for (const std::vector<std::int64_t>* v : {&b.fold, &b.id, &b.slots.id}) si.insert(si.end(), v->begin(), v->end());
  const auto N = static_cast<std::size_t>(in[0]), S = N * kmax;
  std::vector<double> rd(N * static_cast<std::size_t>(p) + 3 * N + 3 * S);
  std::vector<std::int64_t> ri(static_cast<std::size_t>(in[1]) + 2 * N + S);
  comm.sendrecv(sd.data(), static_cast<int>(sd.size()), dest, rd.data(), static_cast<int>(rd.size()), source,
                kTagDoubles);
  comm.sendrecv(si.data(), static_cast<int>(si.size()), dest, ri.data(), static_cast<int>(ri.size()), source,
                kTagInts);
  FoldBlock out;
  auto d = rd.begin();
  auto take = [&](std::size_t k) {
    std::vector<double> v(d, d + static_cast<std::ptrdiff_t>(k));
    d += static_cast<std::ptrdiff_t>(k);
    return v;
  };
  out.x = ConstMatMap<double>(rd.data(), static_cast<Index>(N), p);
  d += static_cast<std::ptrdiff_t>(N * static_cast<std::size_t>(p));
  out.y = take(N);
  out.w = take(N);
  out.bound = take(N);
  out.slots.d2 = take(S);
  out.slots.y = take(S);
  out.slots.w = take(S);
  auto g = ri.begin();
  auto take_ints = [&](std::size_t k) {
    std::vector<std::int64_t> v(g, g + static_cast<std::ptrdiff_t>(k));
    g += static_cast<std::ptrdiff_t>(k);
    return v;
  };
  out.begin = take_ints(static_cast<std::size_t>(in[1]));
  out.fold = take_ints(N);
  out.id = take_ints(N);
  out.slots.id = take_ints(S);
  return out;
}

// COLLECTIVE over the ring: the visiting block's neighbour lists go to their owner, and
// this rank's come back from where its block ended up; merged into `home`.
void merge_lists_home(const Communicator& comm, const JointPass& pass, const FoldBlock& visit, FoldBlock& home,
                      int owner, int holder) {
  const std::size_t kmax = pass.kmax(), S = static_cast<std::size_t>(home.size()) * kmax;
  std::vector<double> sd(visit.slots.d2);
  sd.insert(sd.end(), visit.slots.y.begin(), visit.slots.y.end());
  sd.insert(sd.end(), visit.slots.w.begin(), visit.slots.w.end());
  std::vector<double> rd(3 * S);
  std::vector<std::int64_t> rid(S);
  comm.sendrecv(sd.data(), static_cast<int>(sd.size()), owner, rd.data(), static_cast<int>(rd.size()), holder,
                kTagHomeDoubles);
  comm.sendrecv(visit.slots.id.data(), static_cast<int>(visit.slots.id.size()), owner, rid.data(),
                static_cast<int>(rid.size()), holder, kTagHomeInts);
  // The two lists of a row hold different rows (every pair was screened on one rank), so
  // inserting one into the other gives the k best of their union.
  for (Index r = 0; r < home.size(); ++r) {
    const std::int64_t a = home.fold[static_cast<std::size_t>(r)];
    if (a < 0) continue;
    const auto K = static_cast<std::size_t>(pass.metric(a).k_eff), base = static_cast<std::size_t>(r) * kmax;
    for (std::size_t s = base; s < base + K && rid[s] != kNoId; ++s)
      if (!knn::insert_slot(home.slots, base, K, rd[s], rid[s], rd[S + s], rd[2 * S + s])) break;
  }
}

}  // namespace

OutOfFold KnnLearner::out_of_fold(const LearnerContext& ctx, const TrainRows& rows, const std::vector<int>& fold,
                                  int K, const std::function<void(Learner&)>& each_model) const {
  // Fold models themselves are only built by the default, and the screen with column
  // thresholds only exists fused.
  if (each_model || !fused() || K < 2) return Learner::out_of_fold(ctx, rows, fold, K, each_model);
  const Communicator& comm = ctx.comm;
  Stopwatch sw;
  OutOfFold out;
  const Index n = rows.X.rows();
  // Each fold model's checks, standardiser and k, as its fit would make them.
  std::vector<FoldMetric> metrics(static_cast<std::size_t>(K));
  Index p = 0;
  for (int a = 0; a < K; ++a) {
    std::vector<char> train(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) train[static_cast<std::size_t>(i)] = fold[static_cast<std::size_t>(i)] != a;
    const Mat<double> Xa = kept_rows(rows.X, train);
    const std::vector<double> ya = kept_values(rows.y, train), wa = kept_values(rows.w, train);
    const std::vector<std::int64_t> ida = kept_values(rows.id, train);
    p = knn::check_rows(comm, TrainRows{Xa, ya, wa, ida}, ctx.classes, "knn");
    FoldMetric& m = metrics[static_cast<std::size_t>(a)];
    m.scaler.fit(comm, Xa.rows() > 0 ? Xa : Mat<double>(0, p), wa);
    std::int64_t kept = 0;
    for (double v : wa) kept += v > 0 ? 1 : 0;
    const std::int64_t total = comm.allreduce_sum(kept);
    MOESIM_CONFIG_CHECK(total > 0, "knn: no training row has a positive weight");
    m.k_eff = static_cast<int>(std::min<std::int64_t>(k_, total));
  }
  const Mat<double> X = n > 0 ? rows.X : Mat<double>(0, p);
  Standardizer common;
  common.fit(comm, X, rows.w);
  double norm_max = 0;  // +inf when some row's is not finite
  {
    const Mat<double> zg = common.apply(X);
    for (Index i = 0; i < n; ++i) {
      const double nr = ordered_dot(zg.data() + i * p, zg.data() + i * p, p);
      norm_max = std::isfinite(nr) ? std::max(norm_max, nr) : kInf;
    }
  }
  norm_max = comm.allreduce_max(norm_max);
  // The bounds of each fold's metric against the common one (with room for their own
  // rounding). Folds whose scales differ much from the common ones would screen poorly,
  // and values the float screen cannot hold would defeat it: then every fold is fitted on
  // its own.
  bool bounded = p > 0 && norm_max < 1e30;
  std::size_t kmax = 0;
  for (FoldMetric& m : metrics) {
    double lo = kInf, hi = 0, shift = 0;
    for (Index f = 0; f < p; ++f) {
      const double r = common.scale(f) / m.scaler.scale(f), s = (common.mean(f) - m.scaler.mean(f)) / common.scale(f);
      bounded = bounded && std::isfinite(r) && std::isfinite(s);
      lo = std::min(lo, r * r);
      hi = std::max(hi, r * r);
      shift += s * s;
    }
    m.rho = lo * (1.0 - 1e-12);
    // ||z_a||^2 <= max (s_g / s_a)^2 ||z_g + (m_g - m_a) / s_g||^2 <= 2 max (s_g / s_a)^2 (||z_g||^2 + shift).
    m.norm_bound = 2.0 * hi * (norm_max + shift) * (1.0 + 1e-12);
    bounded = bounded && m.rho >= 0.25 && hi <= 4.0 && std::isfinite(m.norm_bound);
    kmax = std::max(kmax, static_cast<std::size_t>(m.k_eff));
  }
  // Blocks travel as single MPI messages.
  std::int64_t padded = 0;
  for (int a = 0; a < K; ++a)
    padded += (std::count(fold.begin(), fold.end(), a) + kP - 1) / kP * kP;
  const std::int64_t largest = comm.allreduce_max(padded);
  bounded = bounded && largest * (p + 4 + 3 * static_cast<std::int64_t>(kmax)) <= INT_MAX;
  if (!bounded) return Learner::out_of_fold(ctx, rows, fold, K, each_model);
  out.fit_seconds = sw.seconds();
  sw.reset();

  const JointPass pass(common, std::move(metrics), p, kmax, norm_max, query_block_, train_chunk_ / kP,
                       fused_precision());
  std::vector<Index> where;
  FoldBlock home = pass.block_of(rows, fold, where);
  pass.prepare(home);
  pass.screen(home, 0, home.size(), home, 0, home.panels.panels(), true);
  const int P = comm.size(), rank = comm.rank(), S = P / 2;
  FoldBlock visit = pass.traveller(home);
  for (int s = 1; s <= S; ++s) {
    visit = pass_block(comm, visit, kmax, p, (rank + 1) % P, (rank + P - 1) % P);
    pass.prepare(visit);
    if (2 * s < P) {
      pass.screen(home, 0, home.size(), visit, 0, visit.panels.panels(), false);
    } else if (rank < S) {
      // The middle step of an even ring: this rank and the one holding its block take
      // half of the pairs each, this one those of its second half.
      pass.screen(home, kP * (home.panels.panels() / 2), home.size(), visit, 0, visit.panels.panels(), false);
    } else {
      pass.screen(home, 0, home.size(), visit, 0, visit.panels.panels() / 2, false);
    }
  }
  if (S > 0) merge_lists_home(comm, pass, visit, home, (rank + P - S) % P, (rank + S) % P);

  out.pred = Mat<double>::Zero(n, ctx.classes >= 2 ? ctx.classes : 1);
  for (Index i = 0; i < n; ++i) {
    const Index r = where[static_cast<std::size_t>(i)];
    const auto K_i = static_cast<std::size_t>(pass.metric(home.fold[static_cast<std::size_t>(r)]).k_eff);
    knn::vote(home.slots, static_cast<std::size_t>(r) * kmax, K_i, distance_weighted_, out.pred, i);
  }
  out.predict_seconds = sw.seconds();
  return out;
}

}  // namespace moesim
