// A training step of the MoE layer allocates nothing after the warm-up steps, with every
// dispatch algorithm (top-k gate) and with the other gates (see Gates below): activations, exchanges, router and gate scratch, the capacity decision,
// the layout and the statistics live in buffers kept from step to step. Counted by this
// binary's interposed malloc (alloc/counting_malloc) on every rank, over steps whose routing
// differs from step to step, at two batch sizes. Not counted there, and printed: what OpenBLAS
// allocates inside sgemm and Open MPI inside MPI calls (MPI_Allreduce's temporaries, buffers for
// messages that arrive early), which no buffer of ours can keep; the minor page faults of the
// counted steps are printed too.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <string>

#include "alloc/counting_malloc.hpp"
#include "core/heap.hpp"
#include "moe/moe_layer.hpp"
#include "support/random.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

struct StepCase {
  DispatchAlgo dispatch;
  Index chunk;  // token rows per product block (0: whole batches)
  double capacity_factor;
  const char* routing = "topk";  // a gate, or a top-k variant (see route())
};

// The routing of a case: a gate by name, or top-k with sigmoid scores, the probs drop policy
// or the selection bias.
void route(MoeLayerConfig& cfg, const std::string& how) {
  cfg.router.seed = 11;
  if (how == "topk-sigmoid") cfg.router.score = ScoreFunction::kSigmoid;
  else if (how == "topk-drop-probs") cfg.drop_policy = DropPolicy::kProbs;
  else if (how == "topk-bias") cfg.balance = BalanceKind::kBias, cfg.router.bias_selection = true;
  else if (how == "hash-position") cfg.gate = GateKind::kHash, cfg.router.hash_key = HashKey::kPosition;
  else if (how == "noisy-topk") cfg.gate = GateKind::kNoisyTopK, cfg.router.importance_weight = 0.01,
                                cfg.router.load_weight = 0.01;
  else if (how != "topk") cfg.gate = parse_gate(how);
  if (cfg.gate == GateKind::kDense || cfg.gate == GateKind::kConstant) cfg.top_k = cfg.experts;
  if (cfg.gate == GateKind::kSwitch) cfg.top_k = 1;
}

struct StepCounts {
  long calls = 0, faults = 0, blas = 0, mpi = 0;
  std::string sizes;  // of the first counted step that allocates
};

// Steps 0..29 warm up; steps 30..39 are counted (per step: the most calls of any step).
StepCounts count_steps(const StepCase& c, Index B) {
  const Communicator& comm = test::world();
  MoeLayerConfig cfg;
  cfg.d_model = 32;
  cfg.d_ff = 64;
  cfg.experts = 8;
  cfg.top_k = 2;
  cfg.capacity_factor = c.capacity_factor;
  cfg.dispatch = c.dispatch;
  // Two virtual nodes where there are two ranks or more, so that both stages move rows.
  if (c.dispatch == DispatchAlgo::kHierarchical) cfg.ranks_per_node = std::max(1, comm.size() / 2);
  route(cfg, c.routing);
  const Index n = B / comm.size();
  MoeLayer<float> layer(comm, "moe", cfg, 3, 1);
  layer.set_chunk(c.chunk);
  ParamList<float> params;
  layer.replicated_params(params);
  layer.expert_params(params);
  Mat<float> y, dx;
  StepCounts out;
  for (std::int64_t s = 0; s < 40; ++s) {
    // Each step its own tokens, so the rows per expert and per rank change every step.
    const Mat<float> x = test::random_matrix(n, cfg.d_model, 1000 + 7 * s + comm.rank()).cast<float>();
    const Mat<float> dy = test::random_matrix(n, cfg.d_model, 5000 + 7 * s + comm.rank()).cast<float>();
    for (Param<float>* p : params) p->tree.reset(static_cast<std::size_t>(p->size()));
    const bool counted = s >= 30;
    const long f0 = minor_faults();
    if (counted) test::start_counting();
    layer.set_mode(true, s);
    layer.forward(x, y);
    layer.backward(dy, dx);
    if (!counted) continue;
    const test::AllocCount a = test::stop_counting();
    out.faults += minor_faults() - f0;
    out.calls = std::max(out.calls, a.calls);
    out.blas = std::max(out.blas, a.blas_calls);
    out.mpi = std::max(out.mpi, a.mpi_calls);
    if (out.sizes.empty())
      for (std::size_t sz : a.first_sizes) out.sizes += ' ' + std::to_string(sz);
  }
  return out;
}

class StepAllocations : public ::testing::TestWithParam<StepCase> {};

TEST_P(StepAllocations, NoneAfterWarmUp) {
  keep_freed_memory();  // as moesim's main does
  const StepCase c = GetParam();
  const StepCounts small = count_steps(c, 1024), large = count_steps(c, 4096);
  const int r = test::world().rank();
  for (const StepCounts* k : {&small, &large})
    if (k->calls > 0)  // rank 0 alone prints GoogleTest's messages
      std::fprintf(stderr, "rank %d: %ld allocations per step at %s tokens (bytes:%s)\n", r, k->calls,
                   k == &small ? "1024" : "4096", k->sizes.c_str());
  EXPECT_EQ(small.calls, 0) << "rank " << r << ": allocations per step at 1024 tokens (bytes:" << small.sizes << ")";
  EXPECT_EQ(large.calls, 0) << "rank " << r << ": allocations per step at 4096 tokens (bytes:" << large.sizes << ")";
  if (r == 0 && c.chunk == 64 && c.dispatch == DispatchAlgo::kAlltoallv && c.capacity_factor > 0)
    std::printf("[ note     ] per step at 1024 and 4096 tokens: %ld, %ld allocations; not counted: %ld, %ld by "
                "OpenBLAS, %ld, %ld by Open MPI; minor page faults in 10 steps: %ld, %ld\n",
                small.calls, large.calls, small.blas, large.blas, small.mpi, large.mpi, small.faults, large.faults);
}

INSTANTIATE_TEST_SUITE_P(Cases, StepAllocations,
                         ::testing::Values(StepCase{DispatchAlgo::kAlltoallv, 0, 1.25},
                                           StepCase{DispatchAlgo::kAlltoallv, 64, 1.25},
                                           StepCase{DispatchAlgo::kAllgather, 64, 1.25},
                                           StepCase{DispatchAlgo::kP2P, 64, 1.25},
                                           StepCase{DispatchAlgo::kPadded, 64, 1.25},
                                           StepCase{DispatchAlgo::kHierarchical, 64, 1.25},
                                           StepCase{DispatchAlgo::kAlltoallv, 64, 0.0}));

// The other gates and top-k variants, on the default exchange with token chunks (expert
// choice: the rows a rank sends move around E C / P from step to step).
INSTANTIATE_TEST_SUITE_P(Gates, StepAllocations,
                         ::testing::Values(StepCase{DispatchAlgo::kAlltoallv, 64, 1.25, "switch"},
                                           StepCase{DispatchAlgo::kAlltoallv, 64, 1.25, "noisy-topk"},
                                           StepCase{DispatchAlgo::kAlltoallv, 64, 1.25, "hash-position"},
                                           StepCase{DispatchAlgo::kAlltoallv, 64, 1.25, "hash"},
                                           StepCase{DispatchAlgo::kAlltoallv, 64, 1.25, "topk-bias"},
                                           StepCase{DispatchAlgo::kAlltoallv, 64, 1.25, "sbase"},
                                           StepCase{DispatchAlgo::kAlltoallv, 64, 1.25, "dense"},
                                           StepCase{DispatchAlgo::kAlltoallv, 64, 1.25, "constant"},
                                           StepCase{DispatchAlgo::kAlltoallv, 64, 1.25, "topk-sigmoid"},
                                           StepCase{DispatchAlgo::kAlltoallv, 64, 1.25, "topk-drop-probs"},
                                           StepCase{DispatchAlgo::kAlltoallv, 64, 1.25, "expert-choice"}),
                         [](const ::testing::TestParamInfo<StepCase>& p) {
                           std::string name = p.param.routing;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace moesim
