#include "moe/router.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.hpp"

namespace moesim {

template <class T>
TopKRouter<T>::TopKRouter(const std::string& name, Index d_model, int experts, int top_k,
                          GateKind kind)
    : K_(top_k), kind_(kind) {
  MOESIM_REQUIRE(kind != GateKind::kSwitch || top_k == 1, "the switch gate routes each token to one expert");
  w_.name = name + ".w";
  w_.placement = Placement::kReplicated;
  w_.resize(d_model, experts);
}

template <class T>
void TopKRouter<T>::init(Rng& rng, double init_scale) {
  w_.fill_normal(rng, std::sqrt(init_scale / static_cast<double>(w_.value.rows())));
}

template <class T>
void TopKRouter<T>::forward(const Mat<T>& x, Routing<T>& r) {
  x_ = x;
  const Index n = x.rows();
  const int E = static_cast<int>(w_.value.cols());
  Mat<T> logits = x * w_.value;
  r.n = n;
  r.K = K_;
  r.E = E;
  r.expert.assign(static_cast<std::size_t>(n * K_), 0);
  r.gate.resize(n, K_);
  r.probs.resize(n, E);
  r.lse.assign(static_cast<std::size_t>(n), 0.0);
  std::vector<int> order(static_cast<std::size_t>(E));
  for (Index t = 0; t < n; ++t) {
    const auto row = logits.row(t);
    const T mx = row.maxCoeff();
    T z = 0;
    for (int e = 0; e < E; ++e) z += (r.probs(t, e) = std::exp(row(e) - mx));
    r.probs.row(t) /= z;
    r.lse[static_cast<std::size_t>(t)] = static_cast<double>(mx) + std::log(static_cast<double>(z));
    // Ties go to the lower expert index, so routing is a pure function of the logits.
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + K_, order.end(), [&](int a, int b) {
      return row(a) > row(b) || (row(a) == row(b) && a < b);
    });
    const T top = row(order[0]);
    T zk = 0;
    for (int j = 0; j < K_; ++j) {
      r.expert[static_cast<std::size_t>(t * K_ + j)] = order[static_cast<std::size_t>(j)];
      zk += (r.gate(t, j) = std::exp(row(order[static_cast<std::size_t>(j)]) - top));
    }
    r.gate.row(t) /= zk;
    if (kind_ == GateKind::kSwitch) r.gate(t, 0) = r.probs(t, order[0]);
  }
}

template <class T>
void TopKRouter<T>::backward(const Routing<T>& r, const Mat<T>& dgate, const Mat<T>& dprobs,
                             Mat<T>& dx, const std::vector<double>& dlse) {
  const Index n = r.n;
  Mat<T> dlogits = Mat<T>::Zero(n, r.E);
  RowVec<T> dp(r.E);
  for (Index t = 0; t < n; ++t) {
    if (dprobs.size() > 0) dp = dprobs.row(t);
    else dp.setZero();
    if (kind_ == GateKind::kSwitch) {
      dp(r.expert_of(t, 0)) += dgate(t, 0);  // gate = p_e of the chosen expert
    } else {
      const T dot = r.gate.row(t).dot(dgate.row(t));
      for (int j = 0; j < r.K; ++j)
        dlogits(t, r.expert_of(t, j)) += r.gate(t, j) * (dgate(t, j) - dot);
    }
    const T pdot = r.probs.row(t).dot(dp);
    dlogits.row(t) += (r.probs.row(t).array() * (dp.array() - pdot)).matrix();
    if (!dlse.empty()) dlogits.row(t) += static_cast<T>(dlse[static_cast<std::size_t>(t)]) * r.probs.row(t);
  }
  w_.grad.noalias() += x_.transpose() * dlogits;
  dx.noalias() = dlogits * w_.value.transpose();
}

template class TopKRouter<float>;
template class TopKRouter<double>;

}  // namespace moesim
