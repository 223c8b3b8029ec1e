#pragma once
// A router's gradients against finite differences: 7 tokens of width 4, the router
// initialised from Rng(seed) at scale 3 (far from top-k ties), and the loss
// sum(gate . rg) + sum(probs . rp) with rg, rp drawn from seed + 2, seed + 3.
#include <cstdint>
#include <functional>

#include "moe/router.hpp"
#include "support/gradcheck.hpp"

namespace moesim::test {

// `slots`: the routing's K (E for gates that use every expert). `inspect` sees the routing
// of the forward pass before the gradients are checked.
inline void expect_router_grads(Router<double>& router, int slots, int E, std::uint64_t seed,
                                const std::function<void(const Routing<double>&)>& inspect = {}) {
  Rng rng(seed);
  router.init(rng, 3.0);
  Mat<double> x = random_matrix(7, 4, seed + 1);
  const Mat<double> rg = random_matrix(7, slots, seed + 2), rp = random_matrix(7, E, seed + 3);
  Routing<double> routing;
  auto loss = [&] {
    router.forward(x, routing);
    return routing.gate.cwiseProduct(rg).sum() + routing.probs.cwiseProduct(rp).sum();
  };
  loss();
  if (inspect) inspect(routing);
  Mat<double> dx;
  router.backward(routing, rg, rp, dx);
  EXPECT_GRAD_CLOSE(dx, numerical_grad(x, loss), "dX");
  EXPECT_GRAD_CLOSE(router.weight().grad, numerical_grad(router.weight().value, loss), "dW");
}

}  // namespace moesim::test
