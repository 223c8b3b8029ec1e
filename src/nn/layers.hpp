#pragma once
// Dense building blocks with hand-written backward passes. Each layer caches
// what its backward needs from the last forward; gradients accumulate (+=).
#include <memory>
#include <string>
#include <vector>

#include "core/rng.hpp"
#include "core/row_buffer.hpp"
#include "device/ffn_engine.hpp"
#include "nn/param.hpp"

namespace moesim {

// Y = X W + b, W: in x out.
template <class T>
class Linear {
 public:
  Linear() = default;
  Linear(const std::string& name, Index in, Index out, Placement where);
  void init(Rng& rng, double stddev);
  // chunk > 0: products in blocks of `chunk` rows, and backward pushes one gradient per
  // block into the parameters' trees (core/row_chunks.hpp) instead of adding to grad.
  void forward(const Mat<T>& x, Mat<T>& y, Index chunk = 0);
  // Returns dX; accumulates dW, db.
  void backward(const Mat<T>& dy, Mat<T>& dx, Index chunk = 0);
  void params(ParamList<T>& out) { out.push_back(&w_); out.push_back(&b_); }
  Param<T>& weight() { return w_; }
  Param<T>& bias() { return b_; }

 private:
  Param<T> w_, b_;
  Mat<T> x_;
};

// Two-layer MLP D -> F -> D with GELU: the expert (and dense FFN) of a block.
// Works on a contiguous block of token rows, never token by token.
template <class T>
class Ffn {
 public:
  Ffn() = default;
  Ffn(const std::string& name, Index d_model, Index d_ff, Placement where);
  void init(Rng& rng);
  void forward(const ConstMatMap<T>& x, MatMap<T> y, Index chunk = 0);
  void backward(const ConstMatMap<T>& dy, MatMap<T> dx, Index chunk = 0);
  // The same in consecutive blocks of the given row counts (an expert's rows of each
  // token chunk; a block may be empty and then pushes an empty gradient).
  void forward(const ConstMatMap<T>& x, MatMap<T> y, const std::vector<Index>& blocks);
  void backward(const ConstMatMap<T>& dy, MatMap<T> dx, const std::vector<Index>& blocks);
  void params(ParamList<T>& out) {
    out.push_back(&w1_); out.push_back(&b1_); out.push_back(&w2_); out.push_back(&b2_);
  }
  Param<T>& w1() { return w1_; }
  Param<T>& b1() { return b1_; }
  Param<T>& w2() { return w2_; }
  Param<T>& b2() { return b2_; }
  static Index param_count(Index d_model, Index d_ff) { return 2 * d_model * d_ff + d_ff + d_model; }
  // The caller leaves each forward's input as it is until the backward that follows (the MoE
  // layer's dispatched rows): backward reads it where it lies instead of a copy.
  void borrow_input(bool on) { borrow_input_ = on; }
  // Backward's per-block temporary from `scratch`, which other Ffns may share (the MoE layer's
  // experts, whose backwards run one after another): one buffer that stays in cache instead
  // of one per expert (at E = 64 on 2 ranks, 16 MB a rank written once a step).
  void share_backward_scratch(std::shared_ptr<RowBuffer<T>> scratch) { dpre_ = std::move(scratch); }
  // The next forward (that one only) keeps its hidden rows and GELU's slopes (rows x F each)
  // at these, the caller's memory, left as it is until the backward that follows; without it
  // a forward keeps them in the Ffn's own buffers. The MoE layer keeps all its experts' in two
  // buffers laid out as the expert blocks, each large enough for huge pages at any E
  // (core/huge_pages), where E/P buffers of their own were under 1 MiB each at E = 64.
  void keep_rows_at(T* hidden, T* slope) {
    next_hidden_ = hidden;
    next_slope_ = slope;
  }
  // Computes on this rank's GPU from now on (--device cuda; device/ffn_engine): the same blocks,
  // gradients and parameters, the products on the GPU. fp32 only; ConfigError otherwise.
  void use_device();

 private:
  Param<T> w1_, b1_, w2_, b2_;
  std::shared_ptr<device::FfnEngine> engine_;
  // The last forward's input, GELU output and GELU's slope (rows_ rows), kept for backward;
  // dpre_ is backward's per-block temporary (its own, or shared).
  RowBuffer<T> x_, h_, slope_;
  std::shared_ptr<RowBuffer<T>> dpre_ = std::make_shared<RowBuffer<T>>();
  Index rows_ = 0;
  bool borrow_input_ = false;
  const T* input_ = nullptr;  // the last forward's input: x_'s memory, or the caller's (borrowed)
  T* next_hidden_ = nullptr;   // keep_rows_at's, for the next forward
  T* next_slope_ = nullptr;
  T* hidden_ = nullptr;        // where the last forward kept its hidden rows and slopes
  T* slopes_ = nullptr;
  void place_kept_rows();
  void keep_input(const ConstMatMap<T>& x);
  void forward_block(const ConstMatMap<T>& x, MatMap<T> y, Index b, Index r);
  void backward_block(const ConstMatMap<T>& dy, MatMap<T> dx, Index b, Index r, bool leaf);
  bool forward_on_device(const ConstMatMap<T>& x, MatMap<T> y);
  void backward_block_on_device(const ConstMatMap<T>& dy, MatMap<T> dx, Index b, Index r, bool leaf);
};

// RMSNorm with a learnable gain: y = x / sqrt(mean(x^2) + eps) * g.
template <class T>
class RmsNorm {
 public:
  RmsNorm() = default;
  RmsNorm(const std::string& name, Index d, Placement where);
  void forward(const Mat<T>& x, Mat<T>& y);
  void backward(const Mat<T>& dy, Mat<T>& dx, Index chunk = 0);
  void params(ParamList<T>& out) { out.push_back(&g_); }
  Param<T>& gain() { return g_; }

 private:
  Param<T> g_;
  Mat<T> xhat_;
  Eigen::Matrix<T, Eigen::Dynamic, 1> inv_rms_;
  static constexpr double kEps = 1e-6;
};

}  // namespace moesim
