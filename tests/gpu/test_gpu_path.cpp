// The GPU path against the CPU path, on a machine with a GPU (bench/gpu_check.sh runs it):
// the expert FFN engine against nn::Ffn (forward, backward, leaf and accumulated gradients),
// each kernel against the host loop over the same per-element function, and the NCCL
// exchange against MPI_Alltoallv. Every test skips, saying why, where no GPU answers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/rng.hpp"
#include "device/buffer.hpp"
#include "device/kernels.hpp"
#include "device/nccl_exchange.hpp"
#include "device/runtime.hpp"
#include "nn/layers.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

#define MOESIM_SKIP_WITHOUT_GPU()                                              \
  do {                                                                         \
    const std::string why_ = device::unavailable();                            \
    if (!why_.empty()) GTEST_SKIP() << "no GPU to test on: " << why_;          \
  } while (0)

std::vector<float> normal_values(std::size_t n, std::uint64_t stream, double scale = 1.0) {
  Rng rng(20261206, Stream::kTest, stream);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(scale * rng.normal());
  return v;
}

// fp32 products summed in another order: within 1e-4 of the tensor's largest value.
void expect_close(const float* got, const float* want, std::size_t n, const char* what) {
  float scale = 1.0f;
  for (std::size_t i = 0; i < n; ++i) scale = std::max(scale, std::abs(want[i]));
  for (std::size_t i = 0; i < n; ++i) ASSERT_NEAR(got[i], want[i], 1e-4f * scale) << what << " element " << i;
}

template <class T>
T* to_device(device::DeviceBuffer<T>& b, const std::vector<T>& host) {
  T* d = b.reserve(std::max<std::size_t>(host.size(), 1));
  MOESIM_CUDA_CHECK(cudaMemcpy(d, host.data(), sizeof(T) * host.size(), cudaMemcpyHostToDevice));
  return d;
}

template <class T>
std::vector<T> to_host(const T* d, std::size_t n) {
  std::vector<T> h(n);
  MOESIM_CUDA_CHECK(cudaMemcpy(h.data(), d, sizeof(T) * n, cudaMemcpyDeviceToHost));
  return h;
}

TEST(GpuFfn, EngineMatchesTheCpuFfnForwardBackwardAndGradients) {
  MOESIM_SKIP_WITHOUT_GPU();
  device::bind_device(0);
  const Index D = 64, F = 256, n = 300;
  const std::vector<Index> blocks = {100, 0, 150, 50};  // four leaves: one complete tree
  Ffn<float> cpu("e", D, F, Placement::kExpertLocal), gpu("e", D, F, Placement::kExpertLocal);
  Rng a(3, Stream::kExpertInit, 1, 2), b(3, Stream::kExpertInit, 1, 2);
  cpu.init(a);
  gpu.init(b);
  gpu.use_device();
  ParamList<float> pc, pg;
  cpu.params(pc);
  gpu.params(pg);
  const auto x = normal_values(static_cast<std::size_t>(n * D), 1), dy = normal_values(static_cast<std::size_t>(n * D), 2);
  for (const bool leaves : {true, false}) {
    for (auto* ps : {&pc, &pg})
      for (Param<float>* p : *ps) {
        p->tree.reset(static_cast<std::size_t>(p->size()));
        p->grad.setZero();
      }
    std::vector<float> yc(x.size()), yg(x.size()), dxc(x.size()), dxg(x.size());
    const ConstMatMap<float> xm(x.data(), n, D), dym(dy.data(), n, D);
    if (leaves) {
      cpu.forward(xm, MatMap<float>(yc.data(), n, D), blocks);
      gpu.forward(xm, MatMap<float>(yg.data(), n, D), blocks);
      cpu.backward(dym, MatMap<float>(dxc.data(), n, D), blocks);
      gpu.backward(dym, MatMap<float>(dxg.data(), n, D), blocks);
    } else {
      cpu.forward(xm, MatMap<float>(yc.data(), n, D));
      gpu.forward(xm, MatMap<float>(yg.data(), n, D));
      cpu.backward(dym, MatMap<float>(dxc.data(), n, D));
      gpu.backward(dym, MatMap<float>(dxg.data(), n, D));
    }
    expect_close(yg.data(), yc.data(), yc.size(), "y");
    expect_close(dxg.data(), dxc.data(), dxc.size(), "dx");
    for (std::size_t i = 0; i < pc.size(); ++i) {
      const auto size = static_cast<std::size_t>(pc[i]->size());
      std::vector<float> gc(size), gg(size);
      if (leaves) {
        ASSERT_EQ(pg[i]->tree.pushed(), pc[i]->tree.pushed()) << pc[i]->name;
        pc[i]->tree.result(gc.data());
        pg[i]->tree.result(gg.data());
      } else {
        std::copy(pc[i]->grad.data(), pc[i]->grad.data() + size, gc.data());
        std::copy(pg[i]->grad.data(), pg[i]->grad.data() + size, gg.data());
      }
      expect_close(gg.data(), gc.data(), size, pc[i]->name.c_str());
    }
  }
}

TEST(GpuKernels, EachKernelIsItsHostLoop) {
  MOESIM_SKIP_WITHOUT_GPU();
  device::bind_device(0);
  const std::int64_t rows = 33, cols = 45;
  const auto n = static_cast<std::size_t>(rows * cols);
  // Bias + GELU: tanhf on the GPU and the host may differ by its last bits; the backward has
  // no transcendental and no fused multiply-add (--fmad=false): the same bits.
  auto pre = normal_values(n, 3, 3.0), bias = normal_values(static_cast<std::size_t>(cols), 4);
  auto dy = normal_values(n, 5);
  device::DeviceBuffer<float> dpre, dbias, dth, dh, ddy, dbg;
  float* p = to_device(dpre, pre);
  float* t = dth.reserve(n);
  float* h = dh.reserve(n);
  device::launch_bias_gelu(p, to_device(dbias, bias), t, h, rows, cols, nullptr);
  std::vector<float> pre_h = pre, th_h(n), h_h(n);
  for (std::size_t i = 0; i < n; ++i) device::bias_gelu(pre_h[i], bias[i % static_cast<std::size_t>(cols)], th_h[i], h_h[i]);
  const auto pre_d = to_host(p, n), th_d = to_host(t, n), h_d = to_host(h, n);
  expect_close(th_d.data(), th_h.data(), n, "tanh");
  expect_close(h_d.data(), h_h.data(), n, "gelu");
  float* g = to_device(ddy, dy);
  std::vector<float> zero(static_cast<std::size_t>(cols), 0.0f);
  float* bg = to_device(dbg, zero);
  device::launch_gelu_backward(g, p, t, bg, rows, cols, nullptr);
  const auto g_d = to_host(g, n), bg_d = to_host(bg, static_cast<std::size_t>(cols));
  std::vector<float> bg_h(static_cast<std::size_t>(cols), 0.0f);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) {
      const auto i = static_cast<std::size_t>(r * cols + c);
      const float want = device::gelu_backward(dy[i], pre_d[i], th_d[i]);
      ASSERT_EQ(g_d[i], want) << "gelu backward element " << i;
      bg_h[static_cast<std::size_t>(c)] += want;
    }
  for (std::size_t c = 0; c < bg_h.size(); ++c) ASSERT_EQ(bg_d[c], bg_h[c]) << "bias gradient " << c;

  // Adam: the same bits as the host loop (and so as nn/adam, tests/unit/test_device_elementwise).
  auto w = normal_values(n, 6), gr = normal_values(n, 7, 0.1);
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  device::DeviceBuffer<float> dw, dg, dm, dv;
  float *wd = to_device(dw, w), *gd = to_device(dg, gr), *md = to_device(dm, m), *vd = to_device(dv, v);
  for (long step = 1; step <= 5; ++step) {
    const auto s = device::adam_step_constants<float>(1e-3, 0.9, 0.999, 1e-8, 0.01, step, 0.5);
    device::launch_adam(wd, gd, md, vd, static_cast<std::int64_t>(n), s, nullptr);
    for (std::size_t i = 0; i < n; ++i) device::adam_update(w[i], gr[i], m[i], v[i], s);
  }
  const auto w_d = to_host(wd, n);
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(w_d[i], w[i]) << "adam element " << i;

  // Router: the chosen experts exactly (by logit); probabilities within expf's last bits.
  const std::int64_t tokens = 257;
  const int E = 16, K = 2;
  const auto logits = normal_values(static_cast<std::size_t>(tokens * E), 8, 2.0);
  device::DeviceBuffer<float> dl, dp;
  device::DeviceBuffer<double> dlse;
  device::DeviceBuffer<int> dc;
  float* probs = dp.reserve(static_cast<std::size_t>(tokens * E));
  int* chosen = dc.reserve(static_cast<std::size_t>(tokens * K));
  device::launch_softmax_top_k(to_device(dl, logits), tokens, E, K, probs, dlse.reserve(static_cast<std::size_t>(tokens)),
                               chosen, nullptr);
  const auto probs_d = to_host(probs, static_cast<std::size_t>(tokens * E));
  const auto chosen_d = to_host(chosen, static_cast<std::size_t>(tokens * K));
  std::vector<float> probs_h(static_cast<std::size_t>(tokens * E));
  std::vector<int> chosen_h(static_cast<std::size_t>(tokens * K));
  for (std::int64_t tk = 0; tk < tokens; ++tk) {
    device::softmax_row(logits.data() + tk * E, E, probs_h.data() + tk * E);
    device::top_k_row(logits.data() + tk * E, E, K, chosen_h.data() + tk * K);
  }
  EXPECT_EQ(chosen_d, chosen_h);
  expect_close(probs_d.data(), probs_h.data(), probs_h.size(), "probs");

  // Capacity: the same kept flags; rows gathered: the same values.
  const std::vector<std::int64_t> offset(static_cast<std::size_t>(E), 3);
  device::DeviceBuffer<std::int64_t> doff;
  device::DeviceBuffer<unsigned char> dkept;
  unsigned char* kept = dkept.reserve(static_cast<std::size_t>(tokens * K));
  device::launch_capacity(chosen, tokens, K, E, to_device(doff, offset), 40, kept, nullptr);
  const auto kept_d = to_host(kept, static_cast<std::size_t>(tokens * K));
  std::vector<unsigned char> kept_h(static_cast<std::size_t>(tokens * K));
  for (int e = 0; e < E; ++e) device::capacity_of_expert(chosen_h.data(), tokens, K, e, 3, 40, kept_h.data());
  EXPECT_EQ(kept_d, kept_h);
  std::vector<std::int64_t> index(static_cast<std::size_t>(rows));
  for (std::int64_t r = 0; r < rows; ++r) index[static_cast<std::size_t>(r)] = (r * 7) % rows;
  device::DeviceBuffer<std::int64_t> dix;
  device::DeviceBuffer<float> dsrc, ddst;
  float* dst = ddst.reserve(n);
  device::launch_gather_rows(to_device(dsrc, pre), to_device(dix, index), rows, cols, dst, nullptr);
  const auto dst_d = to_host(dst, n);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      ASSERT_EQ(dst_d[static_cast<std::size_t>(r * cols + c)], pre[static_cast<std::size_t>(index[static_cast<std::size_t>(r)] * cols + c)]);
}

TEST(GpuNccl, ExchangeMovesWhatMpiAlltoallvMoves) {
  MOESIM_SKIP_WITHOUT_GPU();
  const Communicator& comm = test::world();
  const device::Versions v = device::versions();
  // NCCL runs one GPU per rank; ranks sharing a GPU is not a configuration it takes.
  if (v.devices < comm.size()) GTEST_SKIP() << comm.size() << " ranks, " << v.devices << " GPUs: NCCL needs one GPU per rank";
  device::bind_device(comm.rank());
  const int P = comm.size(), me = comm.rank();
  std::vector<int> sc(static_cast<std::size_t>(P)), rc(static_cast<std::size_t>(P)), sd(static_cast<std::size_t>(P)), rd(static_cast<std::size_t>(P));
  for (int q = 0; q < P; ++q) sc[static_cast<std::size_t>(q)] = 3 * ((me + 2 * q) % 5);  // some empty messages
  comm.alltoall(sc.data(), rc.data(), 1);
  for (int q = 1; q < P; ++q) {
    sd[static_cast<std::size_t>(q)] = sd[static_cast<std::size_t>(q - 1)] + sc[static_cast<std::size_t>(q - 1)];
    rd[static_cast<std::size_t>(q)] = rd[static_cast<std::size_t>(q - 1)] + rc[static_cast<std::size_t>(q - 1)];
  }
  const std::size_t ns = static_cast<std::size_t>(sd.back() + sc.back()), nr = static_cast<std::size_t>(rd.back() + rc.back());
  std::vector<double> send(ns), by_mpi(nr), by_nccl(nr);
  for (std::size_t i = 0; i < ns; ++i) send[i] = 1000.0 * me + static_cast<double>(i) + 0.25;
  comm.alltoallv(send.data(), sc, sd, by_mpi.data(), rc, rd);
  device::NcclExchange nccl(comm);
  const auto wide = [](const std::vector<int>& a) { return std::vector<std::int64_t>(a.begin(), a.end()); };
  nccl.alltoallv_host(send.data(), wide(sc), wide(sd), by_nccl.data(), wide(rc), wide(rd), device::Element::kFloat64);
  EXPECT_EQ(by_nccl, by_mpi);
}

}  // namespace
}  // namespace moesim
