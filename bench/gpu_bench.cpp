// The GPU path against the GPU's own limits (bench/gpu_check.sh prints its table), every rank
// the same fixed iterations, the slowest rank reported:
//   - the MoE layer forward + backward with the experts on the GPU (--device cuda) against the
//     same six expert GEMMs as bare cuBLAS calls on one dense block of the rank's B K / P rows
//     (the GPU's limit on the expert FLOPs);
//   - where every rank has its own GPU (P >= 2): the layer's --dispatch nccl exchange against
//     NCCL's own all-to-all of the same bytes split equally, as bus bandwidth (nccl-tests'
//     convention for all-to-all: algorithm bandwidth x (P - 1) / P).
//
//   mpirun -np P bench_gpu [--shapes "D,F,E,K,B;..."] [--iters 20] [--warmup 3]
#include <mpi.h>

#include <cstdio>
#include <iostream>

#include <boost/program_options.hpp>

#include "core/heap.hpp"
#include "device/buffer.hpp"
#include "device/nccl_exchange.hpp"
#include "device/runtime.hpp"
#include "moe/moe_layer.hpp"
#include "mpi_harness.hpp"

namespace moesim {
namespace {

// Six products of 2 m D F FLOPs each: forward x W1 and h W2, backward h^T dy, dy W2^T, x^T dpre
// and dpre W1^T, one dense block of m rows.
double dense_gemm_seconds(Index m, Index D, Index F, int warmup, int iters) {
  cublasHandle_t h{};
  MOESIM_CUBLAS_CHECK(cublasCreate(&h));
  MOESIM_CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH));
  device::DeviceBuffer<float> x, w1, pre, w2, y;
  const auto um = static_cast<std::size_t>(m), uD = static_cast<std::size_t>(D), uF = static_cast<std::size_t>(F);
  x.reserve(um * uD);
  w1.reserve(uD * uF);
  pre.reserve(um * uF);
  w2.reserve(uF * uD);
  y.reserve(um * uD);
  MOESIM_CUDA_CHECK(cudaMemset(x.data(), 0, sizeof(float) * um * uD));
  MOESIM_CUDA_CHECK(cudaMemset(w1.data(), 0, sizeof(float) * uD * uF));
  MOESIM_CUDA_CHECK(cudaMemset(pre.data(), 0, sizeof(float) * um * uF));
  MOESIM_CUDA_CHECK(cudaMemset(w2.data(), 0, sizeof(float) * uF * uD));
  const float one = 1.0f, zero = 0.0f;
  const int im = static_cast<int>(m), iD = static_cast<int>(D), iF = static_cast<int>(F);
  auto six = [&] {
    // Column-major views of the row-major blocks (as device/ffn_engine runs them).
    MOESIM_CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, iF, im, iD, &one, w1.data(), iF, x.data(), iD, &zero, pre.data(), iF));
    MOESIM_CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, iD, im, iF, &one, w2.data(), iD, pre.data(), iF, &zero, y.data(), iD));
    MOESIM_CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, iD, iF, im, &one, y.data(), iD, pre.data(), iF, &zero, w2.data(), iD));
    MOESIM_CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, iF, im, iD, &one, w2.data(), iD, y.data(), iD, &zero, pre.data(), iF));
    MOESIM_CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, iF, iD, im, &one, pre.data(), iF, x.data(), iD, &zero, w1.data(), iF));
    MOESIM_CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, iD, im, iF, &one, w1.data(), iF, pre.data(), iF, &zero, y.data(), iD));
  };
  for (int i = 0; i < warmup; ++i) six();
  cudaEvent_t a{}, b{};
  MOESIM_CUDA_CHECK(cudaEventCreate(&a));
  MOESIM_CUDA_CHECK(cudaEventCreate(&b));
  MOESIM_CUDA_CHECK(cudaEventRecord(a));
  for (int i = 0; i < iters; ++i) six();
  MOESIM_CUDA_CHECK(cudaEventRecord(b));
  MOESIM_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  MOESIM_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cublasDestroy(h);
  return ms / 1e3 / iters;
}

// NCCL's all-to-all (grouped send/recv, equal parts) of `bytes` per rank, on GPU memory.
double nccl_alltoall_seconds(const Communicator& comm, std::size_t bytes, int warmup, int iters) {
  device::NcclExchange nccl(comm);
  const int P = comm.size();
  const auto part = static_cast<std::int64_t>(bytes / sizeof(float) / static_cast<std::size_t>(P));
  std::vector<std::int64_t> counts(static_cast<std::size_t>(P), part), displs(static_cast<std::size_t>(P));
  for (int q = 0; q < P; ++q) displs[static_cast<std::size_t>(q)] = q * part;
  device::DeviceBuffer<float> s, r;
  s.reserve(static_cast<std::size_t>(part * P) + 1);
  r.reserve(static_cast<std::size_t>(part * P) + 1);
  Harness harness(comm, warmup, iters);
  return harness
      .time([&] { nccl.alltoallv_device(s.data(), counts, displs, r.data(), counts, displs, device::Element::kFloat32); })
      .max_s;
}

void run_shape(const Communicator& comm, const Shape& s, int warmup, int iters, bool nccl_dispatch) {
  const int P = comm.size();
  MoeLayerConfig cfg;
  cfg.d_model = s.D;
  cfg.d_ff = s.F;
  cfg.experts = s.E;
  cfg.top_k = s.K;
  cfg.capacity_factor = 0;  // dropless: the expert FLOPs are exactly B K rows' worth
  cfg.on_gpu = true;
  cfg.dispatch = nccl_dispatch ? DispatchAlgo::kNccl : DispatchAlgo::kAlltoallv;
  MoeLayer<float> layer(comm, "moe", cfg, 1, 0);
  ParamList<float> params;
  layer.replicated_params(params);
  layer.expert_params(params);
  const Index n = s.B / P;
  const Mat<float> x = random_rows(n, s.D, 100 + static_cast<std::uint64_t>(comm.rank()));
  const Mat<float> dy = random_rows(n, s.D, 200 + static_cast<std::uint64_t>(comm.rank()));
  Mat<float> y, dx;
  Harness harness(comm, warmup, iters);
  std::int64_t step = 0;
  double dispatch_s = 0;
  const Timing layer_t = harness.time(
      [&] {
        for (Param<float>* p : params) p->grad.setZero();
        layer.set_mode(true, step++);
        layer.comm_stats().reset(P);
        layer.forward(x, y);
        layer.backward(dy, dx);
        dispatch_s += layer.comm_stats().phase_seconds[kForwardDispatch];
      },
      [&] { dispatch_s = 0; });
  const Index m = s.B * s.K / P;
  const double flops = 12.0 * static_cast<double>(m) * static_cast<double>(s.D) * static_cast<double>(s.F);
  const double dense_s = comm.allreduce_max(dense_gemm_seconds(m, s.D, s.F, warmup, iters));
  const double dispatch_mean = comm.allreduce_max(dispatch_s / iters);
  std::string nccl_cols = "             -              -         -";
  if (nccl_dispatch) {
    const std::size_t bytes = static_cast<std::size_t>(m) * static_cast<std::size_t>(s.D) * sizeof(float);
    const double a2a_s = nccl_alltoall_seconds(comm, bytes, warmup, iters);
    const double busbw = static_cast<double>(bytes) / a2a_s * (P - 1) / P / 1e9;
    char buf[96];
    std::snprintf(buf, sizeof buf, " %13.3f %14.3f %9.1f %6.2fx", dispatch_mean * 1e3, a2a_s * 1e3, busbw,
                  dispatch_mean / a2a_s);
    nccl_cols = buf;
  }
  if (comm.rank() == 0)
    std::printf("| %-28s | %d | %9.3f | %9.1f | %9.1f | %5.2f |%s |\n", s.name().c_str(), P, layer_t.max_s * 1e3,
                flops / layer_t.max_s / 1e9, flops / dense_s / 1e9, dense_s / layer_t.max_s, nccl_cols.c_str());
}

}  // namespace
}  // namespace moesim

int main(int argc, char** argv) {
  moesim::keep_freed_memory();
  moesim::MpiEnvironment env(&argc, &argv);
  namespace po = boost::program_options;
  using namespace moesim;
  Communicator world(MPI_COMM_WORLD);
  try {
    po::options_description desc("bench_gpu options");
    std::string shapes;
    int iters = 20, warmup = 3;
    desc.add_options()("help", "this text")("shapes", po::value(&shapes)->default_value(kDefaultShapes),
                                            "D,F,E,K,B;... (B global tokens)")(
        "iters", po::value(&iters)->default_value(20), "timed iterations")(
        "warmup", po::value(&warmup)->default_value(3), "untimed iterations first");
    po::variables_map vm;
    po::store(po::parse_command_line(argc, argv, desc), vm);
    po::notify(vm);
    if (vm.count("help")) {
      if (world.rank() == 0) std::cout << desc << "\n";
      return 0;
    }
    if (iters < 1 || warmup < 0) throw ConfigError("--iters must be >= 1 and --warmup >= 0");
    const std::string why = device::unavailable();
    world.agree_or_throw(why.empty(), why);
    const device::Versions v = device::versions();
    const bool nccl_dispatch = world.size() >= 2 && v.devices >= world.size();
    if (world.rank() == 0) {
      std::printf("bench_gpu: %d ranks, %d GPUs (%s), CUDA %s, NCCL %s; %d timed iterations after %d\n",
                  world.size(), v.devices, v.first_name.c_str(), device::cuda_version_text(v.runtime).c_str(),
                  device::nccl_version_text(v.nccl).c_str(), iters, warmup);
      std::printf("| shape | P | layer ms | layer GFLOP/s | cuBLAS GFLOP/s | fraction | dispatch ms | NCCL a2a ms | "
                  "busbw GB/s | ratio |\n|---|---|---|---|---|---|---|---|---|---|\n");
    }
    for (const Shape& s : parse_shapes(shapes)) run_shape(world, s, warmup, iters, nccl_dispatch);
    if (world.rank() == 0 && !nccl_dispatch)
      std::printf("(no NCCL columns: %d ranks on %d GPUs; the NCCL exchange needs P >= 2 ranks, one GPU each)\n",
                  world.size(), v.devices);
    return 0;
  } catch (const ConfigError& e) {
    if (world.rank() == 0) std::fprintf(stderr, "bench_gpu: error: %s\n", e.what());
    return 2;
  }
}
