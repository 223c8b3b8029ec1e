// Level-wise growth of a batch of histogram trees (rules in tree_grow.hpp).
//
// Per level: the nodes to split are laid out in one buffer, each rank accumulates the
// histograms of its own rows, one all-reduce sums them (more only when the level's
// histograms exceed GrowParams::reduce_doubles), and every rank evaluates the same global
// histograms. When every feature is a candidate, only the smaller of two siblings is
// accumulated and sent; the larger is its parent's histogram minus the smaller one.
//
// Each tree keeps its rows' statistics in the order of its row list and permutes them
// with it, so a node's statistics are contiguous. Histograms are accumulated column by
// column (four columns per pass) when every feature is a candidate; with sampled
// features each tree also keeps its rows' bins row-major in that order, so a node's rows
// stream through memory and a split moves whole rows.
#include "learners/tree_grow.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>

#include "comm/exact_sum.hpp"
#include "core/error.hpp"

namespace moesim {

std::vector<int> sample_features(std::uint64_t seed, std::uint64_t tree, std::uint64_t heap,
                                 int p, int m) {
  std::vector<int> out;
  if (m >= p) {
    out.resize(static_cast<std::size_t>(std::max(p, 0)));
    std::iota(out.begin(), out.end(), 0);
    return out;
  }
  Rng rng(seed, Stream::kLearner, 2 * tree + 1, heap);
  out.reserve(static_cast<std::size_t>(m));
  for (int j = p - m; j < p; ++j) {
    const int t = static_cast<int>(rng.below(static_cast<std::uint64_t>(j) + 1));
    const auto it = std::lower_bound(out.begin(), out.end(), t);
    if (it != out.end() && *it == t) out.push_back(j);  // j exceeds every member
    else out.insert(it, t);
  }
  return out;
}

int forest_features_per_split(double fraction, int p, bool classification) {
  if (p <= 1) return std::max(p, 1);
  if (fraction <= 0)
    return classification ? std::max(1, static_cast<int>(std::sqrt(static_cast<double>(p)))) : p;
  return std::clamp(static_cast<int>(fraction * p), 1, p);
}

namespace {

// Column-wise kernels: one feature's bins for the node's rows.
template <class BinT>
void hist_gini_col(const BinT* col, const std::uint32_t* rows, std::size_t cnt,
                   const std::int32_t* lab, const Fixed* wt, Fixed* h, std::size_t C) {
  for (std::size_t j = 0; j < cnt; ++j)
    h[static_cast<std::size_t>(col[rows[j]]) * C + static_cast<std::size_t>(lab[j])] += wt[j];
}

// SN > 0: S known at compile time; SN = 0: S = Srt.
template <int SN, class BinT>
void hist_moments_col(const BinT* col, const std::uint32_t* rows, std::size_t cnt,
                      const Fixed* st, Fixed* h, std::size_t Srt) {
  const std::size_t S = SN > 0 ? static_cast<std::size_t>(SN) : Srt;
  for (std::size_t j = 0; j < cnt; ++j) {
    Fixed* hb = h + static_cast<std::size_t>(col[rows[j]]) * S;
    const Fixed* s = st + j * S;
    for (std::size_t k = 0; k < S; ++k) hb[k] += s[k];
  }
}

// Four features per pass: the node's statistics are read once for all four.
template <int SN, class BinT>
void hist_moments_col4(const BinT* const* col, const std::uint32_t* rows, std::size_t cnt,
                       const Fixed* st, Fixed* const* h, std::size_t Srt) {
  const std::size_t S = SN > 0 ? static_cast<std::size_t>(SN) : Srt;
  for (std::size_t j = 0; j < cnt; ++j) {
    const std::size_t r = rows[j];
    const Fixed* s = st + j * S;
    Fixed* h0 = h[0] + static_cast<std::size_t>(col[0][r]) * S;
    Fixed* h1 = h[1] + static_cast<std::size_t>(col[1][r]) * S;
    Fixed* h2 = h[2] + static_cast<std::size_t>(col[2][r]) * S;
    Fixed* h3 = h[3] + static_cast<std::size_t>(col[3][r]) * S;
    for (std::size_t k = 0; k < S; ++k) {
      const Fixed v = s[k];
      h0[k] += v;
      h1[k] += v;
      h2[k] += v;
      h3[k] += v;
    }
  }
}

template <class BinT>
void hist_gini_col4(const BinT* const* col, const std::uint32_t* rows, std::size_t cnt,
                    const std::int32_t* lab, const Fixed* wt, Fixed* const* h, std::size_t C) {
  for (std::size_t j = 0; j < cnt; ++j) {
    const std::size_t r = rows[j], c = static_cast<std::size_t>(lab[j]);
    const Fixed v = wt[j];
    h[0][static_cast<std::size_t>(col[0][r]) * C + c] += v;
    h[1][static_cast<std::size_t>(col[1][r]) * C + c] += v;
    h[2][static_cast<std::size_t>(col[2][r]) * C + c] += v;
    h[3][static_cast<std::size_t>(col[3][r]) * C + c] += v;
  }
}

// Row-wise kernels on a node's rows stored contiguously (row j at x + j * p): the
// forest reads a few sampled features of every row, streaming through memory.
template <class BinT>
void hist_gini_rows(const BinT* x, std::size_t p, std::size_t cnt, const std::int32_t* lab,
                    const Fixed* wt, const int* feats, const std::size_t* hoff, std::size_t m,
                    Fixed* h, std::size_t C) {
  for (std::size_t j = 0; j < cnt; ++j, x += p) {
    Fixed* hj = h + static_cast<std::size_t>(lab[j]);
    const Fixed wj = wt[j];
    for (std::size_t k = 0; k < m; ++k) hj[hoff[k] + static_cast<std::size_t>(x[feats[k]]) * C] += wj;
  }
}

template <int SN, class BinT>
void hist_moments_rows(const BinT* x, std::size_t p, std::size_t cnt, const Fixed* st,
                       const int* feats, const std::size_t* hoff, std::size_t m, Fixed* h,
                       std::size_t Srt) {
  const std::size_t S = SN > 0 ? static_cast<std::size_t>(SN) : Srt;
  for (std::size_t j = 0; j < cnt; ++j, x += p) {
    const Fixed* s = st + j * S;
    for (std::size_t k = 0; k < m; ++k) {
      Fixed* hb = h + hoff[k] + static_cast<std::size_t>(x[feats[k]]) * S;
      for (std::size_t q = 0; q < S; ++q) hb[q] += s[q];
    }
  }
}

// Stable partition of `cnt` records of W values by `left`; returns the left count.
template <std::size_t W, class T>
std::size_t stable_split(T* a, const char* left, std::size_t cnt, std::vector<T>& spill) {
  if (spill.size() < cnt * W) spill.resize(cnt * W);
  T* out = spill.data();
  std::size_t k = 0, m = 0;
  // Branch-free: a record is written to both sides and only one cursor advances
  // (left writes never overtake the reads, as k <= j).
  for (std::size_t j = 0; j < cnt; ++j) {
    const std::size_t l = left[j] ? 1 : 0;
    for (std::size_t q = 0; q < W; ++q) {
      const T v = a[j * W + q];
      a[k * W + q] = v;
      out[m * W + q] = v;
    }
    k += l;
    m += 1 - l;
  }
  std::copy_n(out, m * W, a + k * W);
  return k;
}

// stable_split with the record width known only at run time.
template <class T>
std::size_t stable_split_n(T* a, const char* left, std::size_t cnt, std::size_t W, std::vector<T>& spill) {
  if (spill.size() < cnt * W) spill.resize(cnt * W);
  std::size_t k = 0, m = 0;
  for (std::size_t j = 0; j < cnt; ++j) {
    T* dst = left[j] ? a + k++ * W : spill.data() + m++ * W;
    if (dst != a + j * W) std::copy_n(a + j * W, W, dst);
  }
  std::copy_n(spill.data(), m * W, a + k * W);
  return k;
}

template <class BinT>
class Grower {
 public:
  Grower(const Communicator& comm, const BinnedMatrix& X, const BinT* cols, const BinT* rows,
         const GrowParams& prm, std::vector<GrowTree>& trees)
      : comm_(comm), X_(X), cm_(cols), rm_(rows), prm_(prm), trees_(trees), S_(prm.stats),
        p_(X.p), n_(static_cast<std::size_t>(X.n)),
        count_(prm.count_rows && prm.score != SplitScore::kNewton),
        lab_(prm.score == SplitScore::kGini && !count_),
        C_(static_cast<std::size_t>(prm.stats) - (count_ ? 1 : 0)) {
    const int m = prm.features_per_split;
    sampled_ = m > 0 && m < p_;
    stride_ = (static_cast<std::size_t>(p_) * sizeof(BinT) + 7) / 8 * 8 / sizeof(BinT);
    all_.resize(static_cast<std::size_t>(p_));
    std::iota(all_.begin(), all_.end(), 0);
    const std::size_t S = static_cast<std::size_t>(S_);
    left_.resize(S);
    right_.resize(S);
    best_left_.resize(S);
    best_right_.resize(S);
    real_l_.resize(S);
    real_r_.resize(S);
  }

  void run(FixedSum* extra, int n_extra);

 private:
  struct Work {
    int tree = 0, node = 0, depth = 0;
    std::uint64_t heap = 1;     // 1 for a root, children 2h and 2h + 1
    std::vector<int> feats;     // sampled candidates; empty: every feature
    std::size_t size = 0;       // values in its histogram
    int parent_hist = -1;       // retained_ index of the parent's histogram
    bool pair_head = false;     // this and the next work are siblings sharing parent_hist
    bool derive = false;        // histogram = parent - sibling
    std::size_t sibling = 0;
    std::size_t offset = 0;     // in arena_ when accumulated
  };

  // Per tree, the row statistics in the order of its `rows`, permuted along with them,
  // so that a node's statistics are contiguous. Every feature a candidate: one copy,
  // split in place (stable). Sampled features: two copies including the rows' bins,
  // and a split moves a node's rows from copy depth % 2 to the other in one pass (left
  // rows forward from the front, right rows backward from the back).
  struct Ordered {
    std::vector<std::int32_t> lab[2];  // kGini
    std::vector<Fixed> wt[2];          // kGini
    std::vector<Fixed> st[2];          // others, S per row
    std::vector<BinT> bins[2];         // sampled: the rows' bins, stride_ per row
    std::vector<std::uint32_t> rows[2];  // sampled: row ids
  };

  const std::vector<int>& features(const Work& w) const { return sampled_ ? w.feats : all_; }
  double weight(const double* s) const { return stats_weight(prm_.score, s, static_cast<int>(C_)); }
  const double* totals(const Work& w) const {
    return trees_[static_cast<std::size_t>(w.tree)].totals.data() + static_cast<std::size_t>(w.node) * static_cast<std::size_t>(S_);
  }

  Work make_work(int tree, int node, int depth, std::uint64_t heap) const {
    Work w;
    w.tree = tree;
    w.node = node;
    w.depth = depth;
    w.heap = heap;
    if (sampled_)
      w.feats = sample_features(prm_.seed, trees_[static_cast<std::size_t>(tree)].key, heap, p_,
                                prm_.features_per_split);
    for (int f : features(w))
      w.size += static_cast<std::size_t>(X_.nbins[static_cast<std::size_t>(f)]) * static_cast<std::size_t>(S_);
    return w;
  }

  // Rows of a statistics vector where they are counted (see tree_grow.hpp).
  bool counted() const { return count_ || prm_.score == SplitScore::kNewton; }
  double rows_of(const double* s) const { return count_ ? s[S_ - 1] : s[2]; }

  bool splittable(const double* T) const {
    const double W = weight(T);
    if (!(W > 0)) return false;
    if (counted() && rows_of(T) < 2 * prm_.min_leaf) return false;
    if (prm_.score == SplitScore::kGini) {
      const double mx = *std::max_element(T, T + C_);
      if (mx >= (1 - kPureRel) * W) return false;
    }
    return true;
  }

  // Agrees every tree's fixed-point exponents and stores its rows' statistics in them.
  void quantise(FixedSum* extra, int n_extra);
  // Node `node` of `tree` gets the integer totals q (and their doubles in GrowTree::totals).
  void set_totals(int tree, int node, const Fixed* q);
  void build(const Work& w, Fixed* h);
  void partition(const Work& w, int f, int b, std::uint32_t& mid);
  void finish(const Work& w, const Fixed* h, std::vector<Work>& next,
              std::vector<std::vector<Fixed>>& retained_next, std::size_t& retained_used);
  template <SplitScore K, int SN>
  bool evaluate(const Work& w, const Fixed* h, const Fixed* T, int& best_f, int& best_b);
  template <SplitScore K>
  static double weight(const double* s, std::size_t S) {
    if constexpr (K == SplitScore::kGini) {
      double n = 0;
      for (std::size_t c = 0; c < S; ++c) n += s[c];
      return n;
    } else if constexpr (K == SplitScore::kVariance) {
      return s[0];
    } else {
      return s[2];
    }
  }
  template <SplitScore K>
  double term(const double* s, std::size_t S) const {
    if constexpr (K == SplitScore::kGini) {
      double sq = 0, n = 0;
      for (std::size_t c = 0; c < S; ++c) {
        sq += s[c] * s[c];
        n += s[c];
      }
      return sq / n;
    } else if constexpr (K == SplitScore::kVariance) {
      return s[1] * s[1] / s[0];
    } else {
      return s[0] * s[0] / (s[1] + prm_.lambda);
    }
  }

  const Communicator& comm_;
  const BinnedMatrix& X_;
  const BinT* cm_;  // column-major bins
  const BinT* rm_;  // row-major bins
  const GrowParams& prm_;
  std::vector<GrowTree>& trees_;
  const int S_, p_;
  const std::size_t n_;
  const bool count_;      // the last statistic is a row count (Gini / variance)
  const bool lab_;        // rows carry (label, weight) rather than S statistics
  const std::size_t C_;   // statistics a Gini weight sums: S less the count
  bool sampled_ = false;
  std::size_t stride_ = 0;  // bins per row of Ordered::bins (p, padded to 8 bytes)
  std::vector<int> all_;
  std::vector<Ordered> ord_;
  std::vector<std::vector<double>> unit_;  // per tree, S values 2^-k (tree_binning.hpp)
  std::vector<std::vector<Fixed>> fixed_totals_;  // per tree, S per node
  std::unique_ptr<Fixed[]> arena_;  // uninitialised: build() zeroes what it uses
  std::size_t arena_size_ = 0;
  std::vector<Fixed> derived_;
  std::vector<std::int32_t> narrow_;  // narrow_integers transport
  std::vector<std::vector<Fixed>> retained_;
  // Scratch.
  std::vector<Fixed> left_, right_, best_left_, best_right_, spill_d_;
  std::vector<double> real_l_, real_r_;
  std::vector<std::size_t> hoff_;
  std::vector<char> goes_left_;
  std::vector<std::uint32_t> spill_u_;
  std::vector<std::int32_t> spill_i_;
};

template <class BinT>
void Grower<BinT>::build(const Work& w, Fixed* h) {
  const GrowTree& t = trees_[static_cast<std::size_t>(w.tree)];
  const Ordered& o = ord_[static_cast<std::size_t>(w.tree)];
  const GrowTree::Node& node = t.nodes[static_cast<std::size_t>(w.node)];
  const std::uint32_t* rows = t.rows.data() + node.begin;
  const std::size_t cnt = node.end - node.begin, S = static_cast<std::size_t>(S_);
  // Zeroed here rather than with the whole buffer, so its lines are in cache.
  std::fill(h, h + w.size, Fixed{0});
  if (cnt == 0) return;
  const std::vector<int>& fl = features(w);
  const std::size_t m = fl.size();
  hoff_.resize(m);
  for (std::size_t k = 0, off = 0; k < m; ++k) {
    hoff_[k] = off;
    off += static_cast<std::size_t>(X_.nbins[static_cast<std::size_t>(fl[k])]) * S;
  }
  const bool gini = lab_;
  const int side = sampled_ ? w.depth % 2 : 0;
  const std::int32_t* lab = gini ? o.lab[side].data() + node.begin : nullptr;
  const Fixed* wt = gini ? o.wt[side].data() + node.begin : nullptr;
  const Fixed* st = gini ? nullptr : o.st[side].data() + node.begin * S;
  if (sampled_) {
    const BinT* x = o.bins[side].data() + node.begin * stride_;
    const std::size_t p = stride_;
    if (gini) hist_gini_rows(x, p, cnt, lab, wt, fl.data(), hoff_.data(), m, h, S);
    else if (S == 2) hist_moments_rows<2>(x, p, cnt, st, fl.data(), hoff_.data(), m, h, S);
    else if (S == 3) hist_moments_rows<3>(x, p, cnt, st, fl.data(), hoff_.data(), m, h, S);
    else hist_moments_rows<0>(x, p, cnt, st, fl.data(), hoff_.data(), m, h, S);
    return;
  }
  std::size_t k = 0;
  for (; k + 4 <= m; k += 4) {
    const BinT* cols[4];
    Fixed* hs[4];
    for (std::size_t q = 0; q < 4; ++q) {
      cols[q] = cm_ + static_cast<std::size_t>(fl[k + q]) * n_;
      hs[q] = h + hoff_[k + q];
    }
    if (gini) hist_gini_col4(cols, rows, cnt, lab, wt, hs, S);
    else if (S == 2) hist_moments_col4<2>(cols, rows, cnt, st, hs, S);
    else if (S == 3) hist_moments_col4<3>(cols, rows, cnt, st, hs, S);
    else hist_moments_col4<0>(cols, rows, cnt, st, hs, S);
  }
  for (; k < m; ++k) {
    const BinT* col = cm_ + static_cast<std::size_t>(fl[k]) * n_;
    Fixed* hf = h + hoff_[k];
    if (gini) hist_gini_col(col, rows, cnt, lab, wt, hf, S);
    else if (S == 2) hist_moments_col<2>(col, rows, cnt, st, hf, S);
    else if (S == 3) hist_moments_col<3>(col, rows, cnt, st, hf, S);
    else hist_moments_col<0>(col, rows, cnt, st, hf, S);
  }
}

template <class BinT>
template <SplitScore K, int SN>
bool Grower<BinT>::evaluate(const Work& w, const Fixed* h, const Fixed* T, int& best_f,
                            int& best_b) {
  // SN > 0: S known at compile time, so the per-bin loops unroll into registers.
  const std::size_t S = SN > 0 ? static_cast<std::size_t>(SN) : static_cast<std::size_t>(S_);
  Fixed lbuf[SN > 0 ? SN : 1], rbuf[SN > 0 ? SN : 1];
  double ldbuf[SN > 0 ? SN : 1], rdbuf[SN > 0 ? SN : 1];
  Fixed* L = SN > 0 ? lbuf : left_.data();
  Fixed* R = SN > 0 ? rbuf : right_.data();
  // Left and right sums are exact integers; their doubles (one rounding each) score.
  double* Ld = SN > 0 ? ldbuf : real_l_.data();
  double* Rd = SN > 0 ? rdbuf : real_r_.data();
  const double* unit = unit_[static_cast<std::size_t>(w.tree)].data();
  const std::size_t C = C_;  // a Gini weight sums the class entries, not the row count
  const double* Td = totals(w);
  const double W = weight<K>(Td, C);
  // Newton's weight is its row count; the others count rows only with count_rows.
  const double minw = K == SplitScore::kNewton ? std::max(prm_.min_leaf, kSplitMinChildRel * W)
                                               : kSplitMinChildRel * W;
  const bool count = count_;
  const double minr = prm_.min_leaf;
  bool have = false;
  double best = 0;
  std::size_t off = 0;
  for (int f : features(w)) {
    const int nb = X_.nbins[static_cast<std::size_t>(f)];
    const Fixed* hf = h + off;
    off += static_cast<std::size_t>(nb) * S;
    for (std::size_t s = 0; s < S; ++s) L[s] = 0;
    for (int b = 0; b + 1 < nb; ++b) {
      const Fixed* hb = hf + static_cast<std::size_t>(b) * S;
      // An empty bin repeats the previous cut, which wins the tie.
      bool empty = true;
      for (std::size_t s = 0; s < S; ++s) {
        L[s] += hb[s];
        empty = empty && hb[s] == 0;
      }
      if (empty) continue;
      for (std::size_t s = 0; s < S; ++s) Ld[s] = from_fixed(L[s], unit[s]);
      if (weight<K>(Ld, C) < minw || (count && Ld[S - 1] < minr)) continue;
      for (std::size_t s = 0; s < S; ++s) {
        R[s] = T[s] - L[s];
        Rd[s] = from_fixed(R[s], unit[s]);
      }
      if (weight<K>(Rd, C) < minw || (count && Rd[S - 1] < minr)) break;
      const double score = term<K>(Ld, C) + term<K>(Rd, C);
      if (!have || score > best + kSplitTieRel * std::abs(best)) {
        have = true;
        best = score;
        best_f = f;
        best_b = b;
        std::copy_n(L, S, best_left_.data());
        std::copy_n(R, S, best_right_.data());
      }
    }
  }
  return have && best - term<K>(Td, C) > kSplitMinGainRel * std::abs(best);
}

template <class BinT>
void Grower<BinT>::partition(const Work& w, int f, int b, std::uint32_t& mid) {
  GrowTree& t = trees_[static_cast<std::size_t>(w.tree)];
  Ordered& o = ord_[static_cast<std::size_t>(w.tree)];
  const GrowTree::Node& node = t.nodes[static_cast<std::size_t>(w.node)];
  const std::size_t begin = node.begin, cnt = node.end - node.begin, S = static_cast<std::size_t>(S_);
  if (sampled_) {
    const int from = w.depth % 2, to = 1 - from;
    const BinT* src = o.bins[from].data() + begin * stride_;
    BinT* dst = o.bins[to].data();
    const bool gini = lab_;
    const std::size_t row_bytes = stride_ * sizeof(BinT);
    std::size_t kl = begin, kr = begin + cnt;
    for (std::size_t j = begin; j < begin + cnt; ++j, src += stride_) {
      const std::size_t d = static_cast<int>(src[f]) <= b ? kl++ : --kr;
      for (std::size_t q = 0; q < row_bytes; q += 8)  // 8-byte words: no memcpy call per row
        std::memcpy(reinterpret_cast<unsigned char*>(dst + d * stride_) + q,
                    reinterpret_cast<const unsigned char*>(src) + q, 8);
      o.rows[to][d] = o.rows[from][j];
      if (gini) {
        o.lab[to][d] = o.lab[from][j];
        o.wt[to][d] = o.wt[from][j];
      } else {
        std::copy_n(o.st[from].data() + j * S, S, o.st[to].data() + d * S);
      }
    }
    mid = static_cast<std::uint32_t>(kl);
    return;
  }
  goes_left_.resize(cnt);
  const BinT* col = cm_ + static_cast<std::size_t>(f) * n_;
  for (std::size_t j = 0; j < cnt; ++j) goes_left_[j] = static_cast<int>(col[t.rows[begin + j]]) <= b;
  const char* gl = goes_left_.data();
  const std::size_t k = stable_split<1>(t.rows.data() + begin, gl, cnt, spill_u_);
  if (lab_) {
    stable_split<1>(o.lab[0].data() + begin, gl, cnt, spill_i_);
    stable_split<1>(o.wt[0].data() + begin, gl, cnt, spill_d_);
  } else if (S == 2) {
    stable_split<2>(o.st[0].data() + begin * S, gl, cnt, spill_d_);
  } else if (S == 3) {
    stable_split<3>(o.st[0].data() + begin * S, gl, cnt, spill_d_);
  } else {
    stable_split_n(o.st[0].data() + begin * S, gl, cnt, S, spill_d_);
  }
  mid = static_cast<std::uint32_t>(begin + k);
}

template <class BinT>
void Grower<BinT>::finish(const Work& w, const Fixed* h, std::vector<Work>& next,
                          std::vector<std::vector<Fixed>>& retained_next,
                          std::size_t& retained_used) {
  GrowTree& t = trees_[static_cast<std::size_t>(w.tree)];
  const std::size_t S = static_cast<std::size_t>(S_);
  if (w.depth == 0) {
    // A root's totals come from its own histogram (every feature's bins sum to them).
    std::vector<Fixed>& q = left_;
    std::fill(q.begin(), q.end(), Fixed{0});
    if (!features(w).empty()) {
      const int f0 = features(w)[0];
      for (int b = 0; b < X_.nbins[static_cast<std::size_t>(f0)]; ++b)
        for (std::size_t s = 0; s < S; ++s) q[s] += h[static_cast<std::size_t>(b) * S + s];
    }
    set_totals(w.tree, w.node, q.data());
    if (!splittable(totals(w))) return;
  }
  const Fixed* T = fixed_totals_[static_cast<std::size_t>(w.tree)].data() + static_cast<std::size_t>(w.node) * S;
  int f = -1, b = -1;
  bool ok = false;
  switch (prm_.score) {
    case SplitScore::kGini:
      ok = S == 2   ? evaluate<SplitScore::kGini, 2>(w, h, T, f, b)
           : S == 3 ? evaluate<SplitScore::kGini, 3>(w, h, T, f, b)
                    : evaluate<SplitScore::kGini, 0>(w, h, T, f, b);
      break;
    case SplitScore::kVariance:
      ok = S == 2 ? evaluate<SplitScore::kVariance, 2>(w, h, T, f, b)
                  : evaluate<SplitScore::kVariance, 3>(w, h, T, f, b);
      break;
    case SplitScore::kNewton: ok = evaluate<SplitScore::kNewton, 3>(w, h, T, f, b); break;
  }
  if (!ok) return;

  const bool deeper = w.depth + 1 < prm_.max_depth;
  const int left = static_cast<int>(t.nodes.size());
  set_totals(w.tree, left, best_left_.data());
  set_totals(w.tree, left + 1, best_right_.data());
  const double* child = t.totals.data() + static_cast<std::size_t>(left) * S;
  const bool split_l = deeper && splittable(child);
  const bool split_r = deeper && splittable(child + S);
  // Rows of two leaves need no partition unless the caller wants them by leaf.
  std::uint32_t mid = 0;
  const bool move_rows = prm_.keep_leaf_rows || split_l || split_r;
  if (move_rows) partition(w, f, b, mid);
  GrowTree::Node& node = t.nodes[static_cast<std::size_t>(w.node)];
  node.feature = f;
  node.bin = b;
  node.left = left;
  const std::uint32_t begin = move_rows ? node.begin : 0, end = move_rows ? node.end : 0;
  if (!move_rows) mid = 0;
  t.nodes.push_back({-1, -1, -1, begin, mid, w.depth + 1});
  t.nodes.push_back({-1, -1, -1, mid, end, w.depth + 1});
  int parent_hist = -1;
  if (!sampled_ && split_l && split_r && retained_used + w.size <= prm_.retain_doubles) {
    parent_hist = static_cast<int>(retained_next.size());
    retained_next.emplace_back(h, h + w.size);
    retained_used += w.size;
  }
  for (int side = 0; side < 2; ++side) {
    if (!(side == 0 ? split_l : split_r)) continue;
    Work c = make_work(w.tree, left + side, w.depth + 1, 2 * w.heap + static_cast<std::uint64_t>(side));
    c.parent_hist = parent_hist;
    c.pair_head = side == 0 && parent_hist >= 0;
    next.push_back(std::move(c));
  }
}

template <class BinT>
void Grower<BinT>::set_totals(int tree, int node, const Fixed* q) {
  const std::size_t S = static_cast<std::size_t>(S_), at = static_cast<std::size_t>(node) * S;
  std::vector<Fixed>& fq = fixed_totals_[static_cast<std::size_t>(tree)];
  std::vector<double>& d = trees_[static_cast<std::size_t>(tree)].totals;
  if (fq.size() < at + S) fq.resize(at + S);
  if (d.size() < at + S) d.resize(at + S);
  const double* unit = unit_[static_cast<std::size_t>(tree)].data();
  for (std::size_t s = 0; s < S; ++s) {
    fq[at + s] = q[s];
    d[at + s] = from_fixed(q[s], unit[s]);
  }
}

template <class BinT>
void Grower<BinT>::quantise(FixedSum* extra, int n_extra) {
  const std::size_t S = static_cast<std::size_t>(S_), nt = trees_.size();
  // Per tree: max |statistic| per column (every class column: max weight, with labels),
  // and its row count; the extras ride on the count's all-reduce.
  std::vector<double> mx(nt * S, 0.0);
  std::vector<std::int64_t> rows(nt);
  for (std::size_t k = 0; k < nt; ++k) {
    const GrowTree& t = trees_[k];
    double* m = mx.data() + k * S;
    rows[k] = static_cast<std::int64_t>(t.rows.size());
    for (std::uint32_t r : t.rows) {
      if (lab_) {
        m[0] = std::max(m[0], std::abs(t.weight[r]));
      } else {
        const double* st = t.stat + static_cast<std::size_t>(r) * S;
        for (std::size_t s = 0; s < S; ++s) m[s] = std::max(m[s], std::abs(st[s]));
      }
    }
    if (lab_) std::fill(m + 1, m + S, m[0]);
  }
  comm_.allreduce_max(mx.data(), static_cast<int>(mx.size()));
  allreduce_exact(comm_, extra, std::max(n_extra, 0), &rows);
  bool finite = true;
  for (double v : mx) finite = finite && std::isfinite(v);
  MOESIM_REQUIRE(finite, "tree statistics must be finite");
  std::vector<double> scale(S);
  unit_.assign(nt, std::vector<double>(S));
  fixed_totals_.assign(nt, {});
  for (std::size_t k = 0; k < nt; ++k) {
    GrowTree& t = trees_[k];
    // Integer statistics with small sums (narrow_integers) are summed unscaled.
    for (std::size_t s = 0; s < S; ++s) {
      const int e = prm_.narrow_integers ? 0 : fixed_exponent(mx[k * S + s], static_cast<double>(rows[k]));
      scale[s] = std::ldexp(1.0, e);
      unit_[k][s] = std::ldexp(1.0, -e);
    }
    Ordered& o = ord_[k];
    const std::size_t cnt = t.rows.size();
    if (lab_) {
      o.lab[0].resize(cnt);
      o.wt[0].resize(cnt);
      for (std::size_t j = 0; j < cnt; ++j) {
        o.lab[0][j] = t.label[t.rows[j]];
        o.wt[0][j] = to_fixed(t.weight[t.rows[j]], scale[0]);
      }
    } else {
      o.st[0].resize(cnt * S);
      for (std::size_t j = 0; j < cnt; ++j) {
        const double* st = t.stat + static_cast<std::size_t>(t.rows[j]) * S;
        for (std::size_t s = 0; s < S; ++s) o.st[0][j * S + s] = to_fixed(st[s], scale[s]);
      }
    }
  }
}

template <class BinT>
void Grower<BinT>::run(FixedSum* extra, int n_extra) {
  const std::size_t S = static_cast<std::size_t>(S_);
  const bool gini = lab_;
  ord_.assign(trees_.size(), Ordered{});
  quantise(extra, n_extra);
  for (std::size_t k = 0; k < trees_.size(); ++k) {
    GrowTree& t = trees_[k];
    t.nodes.assign(1, GrowTree::Node{-1, -1, -1, 0, static_cast<std::uint32_t>(t.rows.size()), 0});
    t.totals.assign(S, 0.0);
    Ordered& o = ord_[k];
    const std::size_t cnt = t.rows.size();
    if (sampled_) {
      const std::size_t p = static_cast<std::size_t>(p_);
      o.bins[0].assign(cnt * stride_, 0);
      for (std::size_t j = 0; j < cnt; ++j)
        std::copy_n(rm_ + static_cast<std::size_t>(t.rows[j]) * p, p, o.bins[0].data() + j * stride_);
      o.rows[0] = t.rows;
      o.bins[1].resize(o.bins[0].size());
      o.rows[1].resize(cnt);
      o.lab[1].resize(o.lab[0].size());
      o.wt[1].resize(o.wt[0].size());
      o.st[1].resize(o.st[0].size());
    }
  }
  if (prm_.max_depth <= 0 || trees_.empty()) {
    // Leaves only: their totals in one all-reduce.
    std::vector<Fixed> buf(trees_.size() * S, 0);
    for (std::size_t k = 0; k < trees_.size(); ++k) {
      const Ordered& o = ord_[k];
      Fixed* T = buf.data() + k * S;
      for (std::size_t j = 0; j < trees_[k].rows.size(); ++j) {
        if (gini) T[o.lab[0][j]] += o.wt[0][j];
        else
          for (std::size_t s = 0; s < S; ++s) T[s] += o.st[0][j * S + s];
      }
    }
    comm_.allreduce_sum(buf.data(), static_cast<int>(buf.size()));
    for (std::size_t k = 0; k < trees_.size(); ++k) set_totals(static_cast<int>(k), 0, buf.data() + k * S);
    return;
  }

  std::vector<Work> level;
  for (std::size_t k = 0; k < trees_.size(); ++k) level.push_back(make_work(static_cast<int>(k), 0, 0, 1));
  while (!level.empty()) {
    // Siblings that both split: accumulate the lighter one (by global weight, so every
    // rank agrees; the left one on a tie), derive the other.
    for (std::size_t i = 0; i < level.size(); ++i) {
      if (!level[i].pair_head) continue;
      Work& a = level[i];
      Work& b = level[i + 1];
      if (weight(totals(b)) < weight(totals(a))) {
        a.derive = true;
        a.sibling = i + 1;
      } else {
        b.derive = true;
        b.sibling = i;
      }
      ++i;
    }
    std::vector<Work> next;
    std::vector<std::vector<Fixed>> retained_next;
    std::size_t retained_used = 0;
    for (std::size_t i = 0; i < level.size();) {
      // A chunk of whole sibling pairs whose accumulated histograms fit one all-reduce.
      std::size_t j = i, used = 0;
      while (j < level.size()) {
        const std::size_t unit = level[j].pair_head ? 2 : 1;
        std::size_t need = 0;
        for (std::size_t u = j; u < j + unit; ++u)
          if (!level[u].derive) need += level[u].size;
        if (j > i && used + need > prm_.reduce_doubles) break;
        for (std::size_t u = j; u < j + unit; ++u)
          if (!level[u].derive) {
            level[u].offset = used;
            used += level[u].size;
          }
        j += unit;
      }
      MOESIM_REQUIRE(used <= static_cast<std::size_t>(INT_MAX), "histogram too large for one all-reduce");
      if (arena_size_ < used) {
        arena_size_ = std::max(used, 2 * arena_size_);
        arena_.reset(new Fixed[arena_size_]);
      }
      for (std::size_t k = i; k < j; ++k)
        if (!level[k].derive) build(level[k], arena_.get() + level[k].offset);
      if (prm_.narrow_integers) {
        // Unscaled integers whose sums stay below 2^24 travel in half the bytes.
        Fixed* a = arena_.get();
        narrow_.resize(used);
        for (std::size_t q = 0; q < used; ++q) narrow_[q] = static_cast<std::int32_t>(a[q]);
        comm_.allreduce_sum(narrow_.data(), static_cast<int>(used));
        for (std::size_t q = 0; q < used; ++q) a[q] = narrow_[q];
      } else {
        comm_.allreduce_sum(arena_.get(), static_cast<int>(used));
      }
      for (std::size_t k = i; k < j; ++k) {
        const Work& w = level[k];
        if (w.derive) {
          const std::vector<Fixed>& parent = retained_[static_cast<std::size_t>(w.parent_hist)];
          const Fixed* sib = arena_.get() + level[w.sibling].offset;
          derived_.resize(w.size);
          for (std::size_t q = 0; q < w.size; ++q) derived_[q] = parent[q] - sib[q];
          finish(w, derived_.data(), next, retained_next, retained_used);
        } else {
          finish(w, arena_.get() + w.offset, next, retained_next, retained_used);
        }
      }
      i = j;
    }
    retained_ = std::move(retained_next);
    level = std::move(next);
  }
  if (sampled_ && prm_.keep_leaf_rows)
    for (std::size_t k = 0; k < trees_.size(); ++k)
      for (const GrowTree::Node& nd : trees_[k].nodes)
        if (nd.feature < 0)
          std::copy(ord_[k].rows[nd.depth % 2].begin() + nd.begin, ord_[k].rows[nd.depth % 2].begin() + nd.end,
                    trees_[k].rows.begin() + nd.begin);
}

}  // namespace

void grow_trees(const Communicator& comm, const BinnedMatrix& X, const GrowParams& prm,
                std::vector<GrowTree>& trees, FixedSum* extra, int n_extra) {
  MOESIM_REQUIRE(prm.score != SplitScore::kGini || prm.stats >= 1, "Gini needs S = classes >= 1");
  MOESIM_REQUIRE(prm.score != SplitScore::kVariance || prm.stats == 2 + (prm.count_rows ? 1 : 0),
                 "variance needs S = 2 (3 with count_rows)");
  MOESIM_REQUIRE(prm.score != SplitScore::kGini || !prm.count_rows || prm.stats >= 3,
                 "Gini with count_rows needs S = classes + 1");
  MOESIM_REQUIRE(prm.score != SplitScore::kNewton || prm.stats == 3, "Newton needs S = 3");
  if (X.use_wide) {
    Grower<std::uint16_t> g(comm, X, X.cols16.data(), X.rows16.data(), prm, trees);
    g.run(extra, n_extra);
  } else {
    Grower<std::uint8_t> g(comm, X, X.cols8.data(), X.rows8.data(), prm, trees);
    g.run(extra, n_extra);
  }
}

}  // namespace moesim
