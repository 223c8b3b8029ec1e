// Hash (Roller et al. 2021): a fixed map, no learned routing: the hash of the sign
// pattern of 16 fixed random projections of the layer input, or of the token's global
// position in the batch; g = 1 / K.
#include "core/rng.hpp"
#include "moe/gates/selection.hpp"

namespace moesim {

namespace {
constexpr int kHashPlanes = 16;
}  // namespace

int hash_expert(std::uint64_t seed, int layer_id, std::uint64_t key, int E) {
  return static_cast<int>(derive_key(seed, Stream::kRouterHash, static_cast<std::uint64_t>(layer_id) + 1, key) %
                          static_cast<std::uint64_t>(E));
}

Mat<double> hash_planes(std::uint64_t seed, int layer_id, Index d_model) {
  Rng rng(seed, Stream::kRouterHash, static_cast<std::uint64_t>(layer_id) + 1, 0);
  Mat<double> planes(d_model, kHashPlanes);
  for (Index i = 0; i < planes.size(); ++i) planes.data()[i] = rng.normal();
  return planes;
}

namespace {

template <class T>
class HashGate final : public GateOf<T, HashGate<T>> {
 public:
  explicit HashGate(const GateSetup& s) : by_input_(s.opt.hash_key == HashKey::kInput) {
    if (by_input_) planes_ = hash_planes(s.opt.seed, s.opt.layer_id, s.d_model);
  }
  bool needs_token_index() const override { return !by_input_; }

  template <class R>
  void route_as(GateForward<T, R>& f) {
    Routing<T>& r = f.r;
    const int K = r.K;
    for (Index t = 0; t < r.n; ++t) {
      std::uint64_t key = static_cast<std::uint64_t>(f.ctx.first_token + t);
      if (by_input_) {
        key = 0;
        for (int q = 0; q < kHashPlanes; ++q) {
          double dot = 0;
          for (Index d = 0; d < f.x.cols(); ++d) dot += static_cast<double>(f.x(t, d)) * planes_(d, q);
          key |= static_cast<std::uint64_t>(dot > 0) << q;
        }
      }
      const int h0 = hash_expert(f.opt.seed, f.opt.layer_id, key, r.E);
      for (int j = 0; j < K; ++j) {
        r.expert[static_cast<std::size_t>(t * K + j)] = (h0 + j) % r.E;
        r.gate(t, j) = static_cast<T>(1.0 / K);
      }
    }
  }

  template <class R>
  void backward_as(GateBackward<T, R>&) const {}  // fixed gate weights

 private:
  bool by_input_ = true;
  Mat<double> planes_;  // D x 16 fixed projections (hash on the input)
};

}  // namespace

const GateSpec hash_gate_spec = gate_spec<HashGate>({.learned = false});

}  // namespace moesim
