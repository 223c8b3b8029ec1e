// The MoE layer and its token exchange under mpirun, in the nccl-tests style: every rank runs
// the same fixed number of iterations (Google Benchmark picks its count per process, which
// cannot drive collectives), results are checked before anything is timed, and each figure is
// the slowest rank's mean over the timed iterations.
//
//   mpirun -np 2 bench_moe_mpi [--shapes "64,256,8,2,4096;256,1024,8,2,4096"] [--iters 20]
//                             [--exchange-iters 50] [--warmup 3] [--json results.jsonl]
//
// A shape is D,F,E,K,B (B global tokens, B/P per rank). Per shape it times the router with
// top-k, the capacity decision, the layout, the permutation into send order and the gate-
// weighted unpermutation, each algorithm's dispatch and combine (whole call, and its MPI part
// once the ranks are synchronised) against the primitive it uses on exactly its counts (a raw
// MPI_Alltoallv each way; padded: a raw MPI_Alltoall of its slots; p2p: its messages by bare
// MPI_Isend/MPI_Irecv), the expert GEMMs (forward and backward), the same six GEMMs as bare sgemm calls (the machine's
// limit on the expert FLOPs: each expert's back to back, and in a layer's order), and the
// whole layer forward + backward.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <numeric>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <boost/program_options.hpp>

#include "comm/communicator.hpp"
#include "core/blas.hpp"
#include "core/heap.hpp"
#include "core/rng.hpp"
#include "core/row_buffer.hpp"
#include "core/timer.hpp"
#include "moe/capacity.hpp"
#include "moe/dispatcher.hpp"
#include "io/hdf5.hpp"
#include "moe/moe_layer.hpp"
#include "mpi_harness.hpp"

namespace moesim {
namespace {

class Report {
 public:
  Report(const Communicator& comm, const Shape& s, std::ofstream* json) : comm_(comm), shape_(s), json_(json) {
    if (comm_.rank() == 0)
      std::printf("\n%s on %d ranks\n%-28s %12s %12s  %s\n", s.name().c_str(), comm_.size(), "what",
                  "max rank s", "min rank s", "figures");
  }
  void row(const std::string& what, const Timing& t, const std::string& figures = "",
           const std::string& json_extra = "") {
    if (comm_.rank() != 0) return;
    std::printf("%-28s %12.6f %12.6f  %s\n", what.c_str(), t.max_s, t.min_s, figures.c_str());
    if (json_)
      *json_ << "{\"D\":" << shape_.D << ",\"F\":" << shape_.F << ",\"E\":" << shape_.E << ",\"K\":" << shape_.K
             << ",\"B\":" << shape_.B << ",\"P\":" << comm_.size() << ",\"what\":\"" << what
             << "\",\"max_s\":" << t.max_s << ",\"min_s\":" << t.min_s << json_extra << "}\n";
  }

 private:
  const Communicator& comm_;
  Shape shape_;
  std::ofstream* json_;
};

std::string fmt(const char* f, double a, double b = 0, double c = 0) {
  char buf[200];
  std::snprintf(buf, sizeof buf, f, a, b, c);
  return buf;
}

void check(const Communicator& comm, bool ok, const std::string& what) {
  comm.agree_or_throw(ok, "correctness check failed before timing: " + what);
}

void put(hid_t f, const std::string& name, const Mat<float>& m, std::vector<hsize_t> dims = {}) {
  if (dims.empty()) dims = {static_cast<hsize_t>(m.rows()), static_cast<hsize_t>(m.cols())};
  const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> d = m.cast<double>();
  h5::write_array(f, name, dims, d.data());
}

// The layer's inputs, weights and results on one rank, for a peer implementation to check
// itself against (bench/compare_torch_moe.py): x, dy, router_w (D x E), w1 (E x D x F),
// b1 (E x F), w2 (E x F x D), b2 (E x D), y, dx, and the options as attributes.
void dump_layer(const std::string& path, const Shape& s, double capacity_factor) {
  Communicator self(MPI_COMM_SELF);
  MoeLayerConfig cfg;
  cfg.d_model = s.D;
  cfg.d_ff = s.F;
  cfg.experts = s.E;
  cfg.top_k = s.K;
  cfg.capacity_factor = capacity_factor;
  MoeLayer<float> layer(self, "moe", cfg, 1, 1);
  const Mat<float> x = random_rows(s.B, s.D, 100), dy = random_rows(s.B, s.D, 200);
  Mat<float> y, dx;
  layer.set_mode(true, 1);
  layer.forward(x, y);
  layer.backward(dy, dx);
  h5::Handle f = h5::create_file(path);
  put(f.id(), "x", x);
  put(f.id(), "dy", dy);
  put(f.id(), "y", y);
  put(f.id(), "dx", dx);
  put(f.id(), "router_w", layer.router().weight().value);
  Mat<float> w1(s.E, s.D * s.F), b1(s.E, s.F), w2(s.E, s.F * s.D), b2(s.E, s.D);
  for (int e = 0; e < s.E; ++e) {
    Ffn<float>& ex = layer.local_expert(e);
    w1.row(e) = Eigen::Map<const RowVec<float>>(ex.w1().value.data(), s.D * s.F);
    b1.row(e) = ex.b1().value.row(0);
    w2.row(e) = Eigen::Map<const RowVec<float>>(ex.w2().value.data(), s.F * s.D);
    b2.row(e) = ex.b2().value.row(0);
  }
  const auto E = static_cast<hsize_t>(s.E), D = static_cast<hsize_t>(s.D), F = static_cast<hsize_t>(s.F);
  put(f.id(), "w1", w1, {E, D, F});
  put(f.id(), "b1", b1);
  put(f.id(), "w2", w2, {E, F, D});
  put(f.id(), "b2", b2);
  h5::write_attr(f.id(), "top_k", static_cast<std::int64_t>(s.K));
  h5::write_attr(f.id(), "capacity_factor", capacity_factor);
  h5::write_attr(f.id(), "aux_loss_weight", cfg.aux_loss_weight);
  h5::write_attr(f.id(), "dropped", layer.stats().dropped);
}

// `hx` times the exchanges: their calls are short, so more pairs keep a median steady. The
// experts' and the layer's pairs with the bare GEMMs take `h`'s iterations, or as many more as
// fill `min_seconds` each.
void bench_shape(const Communicator& comm, const Shape& s, double capacity_factor, int ranks_per_node,
                 const Harness& h, const Harness& hx, double min_seconds, std::ofstream* json) {
  const int P = comm.size();
  // Nodes of G consecutive ranks (virtual with --ranks-per-node), else all on one node.
  std::vector<int> node_of(static_cast<std::size_t>(P), 0);
  if (ranks_per_node > 0)
    for (int q = 0; q < P; ++q) node_of[static_cast<std::size_t>(q)] = q / ranks_per_node;
  if (s.E % P != 0) throw ConfigError("shape " + s.name() + ": E must be divisible by the ranks");
  if (s.B % P != 0) throw ConfigError("shape " + s.name() + ": B must be divisible by the ranks");
  const Index n = s.B / P, D = s.D;
  MoeLayerConfig cfg;
  cfg.d_model = D;
  cfg.d_ff = s.F;
  cfg.experts = s.E;
  cfg.top_k = s.K;
  cfg.ep_size = P;
  cfg.capacity_factor = capacity_factor;
  cfg.ranks_per_node = ranks_per_node;
  MoeLayer<float> layer(comm, "moe", cfg, 1, 1);
  layer.borrow_input(true);  // as the model runs it: x stays until backward
  const Mat<float> x = random_rows(n, D, 100 + static_cast<std::uint64_t>(comm.rank()));
  const Mat<float> dy = random_rows(n, D, 200 + static_cast<std::uint64_t>(comm.rank()));
  Report rep(comm, s, json);

  // The layer's own routing and layout, as its forward builds them.
  Mat<float> y, dx;
  layer.set_mode(true, 1);
  layer.forward(x, y);
  layer.backward(dy, dx);
  const Routing<float> routing = layer.routing();
  const std::int64_t cap = expert_capacity(cfg.capacity_factor, s.B, s.K, s.E);
  const CapacityDecision cd = decide_capacity(comm, routing.expert, n, s.K, s.E, cap);
  const int El = s.E / P;

  // Router + top-k, capacity, layout.
  RouteContext ctx{&comm, s.B, 0, 1, true, cap};
  Routing<float> r2;
  rep.row("router+topk", h.time([&] { layer.router().forward(x, ctx, r2); }));
  check(comm, r2.expert == routing.expert, "router: the same experts as the layer's forward");
  rep.row("capacity", h.time([&] { decide_capacity(comm, routing.expert, n, s.K, s.E, cap); }));
  rep.row("layout (local)", h.time([&] { send_layout(routing.expert, cd.kept, n, s.K, s.E, P); }));
  DispatchLayout L = send_layout(routing.expert, cd.kept, n, s.K, s.E, P);

  // Permute into send order, and the gate-weighted unpermute back.
  Mat<float> send(L.rows_sent(), D);
  rep.row("permute", h.time([&] {
            for (Index r = 0; r < L.rows_sent(); ++r) send.row(r) = x.row(L.send_token[static_cast<std::size_t>(r)]);
          }));
  Mat<float> back(n, D);
  rep.row("unpermute (gate-weighted)", h.time([&] {
            back.setZero();
            for (Index r = 0; r < L.rows_sent(); ++r) {
              const Index t = L.send_token[static_cast<std::size_t>(r)];
              back.row(t) += routing.gate(t, L.send_choice[static_cast<std::size_t>(r)]) * send.row(r);
            }
          }));

  // The raw MPI_Alltoallv of the dispatch's counts (floats of D per row).
  CommStats stats;
  stats.reset(P);
  Dispatcher ref_dispatcher(comm, s.E, DispatchAlgo::kAlltoallv);
  DispatchLayout ref = ref_dispatcher.plan(routing.expert, cd.kept, n, s.K, stats);
  std::vector<int> sc(P), sd(P), rc(P), rd(P);
  for (int q = 0; q < P; ++q) {
    sc[q] = ref.send_counts[q] * static_cast<int>(D);
    sd[q] = ref.send_displs[q] * static_cast<int>(D);
    rc[q] = ref.recv_counts[q] * static_cast<int>(D);
    rd[q] = ref.recv_displs[q] * static_cast<int>(D);
  }
  Mat<float> raw_recv(ref.rows_received(), D);
  auto raw = [&] {
    MOESIM_MPI_CHECK(MPI_Alltoallv(send.data(), sc.data(), sd.data(), MPI_FLOAT, raw_recv.data(), rc.data(),
                                   rd.data(), MPI_FLOAT, comm.raw()));
  };
  raw();
  double off_rank_bytes = 0;
  for (int q = 0; q < P; ++q)
    if (q != comm.rank()) off_rank_bytes += static_cast<double>(sc[q]) * sizeof(float);
  const double bytes_max = comm.allreduce_max(off_rank_bytes);
  const Timing t_raw = hx.time(raw);
  rep.row("raw MPI_Alltoallv", t_raw, fmt("%.2f GB/s algbw (largest rank's bytes to others / time)",
                                           t_raw.max_s > 0 ? bytes_max / t_raw.max_s / 1e9 : 0.0));
  // The combine's direction: the same counts, reversed.
  Mat<float> raw_back(ref.rows_sent(), D);
  auto raw_back_call = [&] {
    MOESIM_MPI_CHECK(MPI_Alltoallv(raw_recv.data(), rc.data(), rd.data(), MPI_FLOAT, raw_back.data(), sc.data(),
                                   sd.data(), MPI_FLOAT, comm.raw()));
  };
  const Timing t_raw_back = hx.time(raw_back_call);
  rep.row("raw MPI_Alltoallv (back)", t_raw_back);
  // The expert blocks as the reference permutation builds them from the raw receive.
  Mat<float> ref_blocks(ref.rows_received(), D);
  for (Index i = 0; i < ref.rows_received(); ++i)
    ref_blocks.row(ref.recv_to_block[static_cast<std::size_t>(i)]) = raw_recv.row(i);

  for (DispatchAlgo algo : {DispatchAlgo::kAlltoallv, DispatchAlgo::kAllgather, DispatchAlgo::kP2P,
                            DispatchAlgo::kPadded, DispatchAlgo::kHierarchical}) {
    const std::string name = dispatch_name(algo);
    Dispatcher d(comm, s.E, algo, node_of);
    check(comm, d.unusable().empty(), name + ": " + d.unusable());
    CommStats st;
    st.reset(P);
    st.node_of = node_of;
    DispatchLimits limits{s.B, cap, P};
    DispatchLayout lay = d.plan(routing.expert, cd.kept, n, s.K, st, limits);
    Mat<float> blocks = d.dispatch(lay, send, st);
    check(comm, blocks.rows() == ref_blocks.rows() && blocks == ref_blocks,
          name + " dispatch: the same expert blocks as the raw MPI_Alltoallv");
    Mat<float> round_trip = d.combine(lay, blocks, st);
    check(comm, round_trip == send, name + " combine: the dispatched rows come back unchanged");
    {
      // One dispatch and one combine: messages and bytes that crossed nodes (all ranks), and
      // the bytes of each stage of a two-stage exchange.
      double nodes_sum[4] = {static_cast<double>(st.inter_node_messages), st.inter_node_bytes, st.stage_bytes[0],
                             st.stage_bytes[1]};
      comm.allreduce_sum(nodes_sum, 4);
      rep.row(name + " across nodes (dispatch+combine)", Timing{},
              fmt("%.0f messages, %.0f bytes", nodes_sum[0], nodes_sum[1]) +
                  (algo == DispatchAlgo::kHierarchical
                       ? fmt("; stage bytes intra %.0f, inter %.0f", nodes_sum[2], nodes_sum[3])
                       : std::string()),
              ",\"inter_node_messages\":" + std::to_string(nodes_sum[0]) + ",\"inter_node_bytes\":" +
                  std::to_string(nodes_sum[1]) + ",\"intra_stage_bytes\":" + std::to_string(nodes_sum[2]) +
                  ",\"inter_stage_bytes\":" + std::to_string(nodes_sum[3]));
    }
    st.reset(P);
    const Timing t_plan = hx.time([&] { lay = d.plan(routing.expert, cd.kept, n, s.K, st, limits); });
    rep.row(name + " plan (counts)", t_plan);
    // Each algorithm against the primitive it uses: padded moves fixed slots (a header row and
    // S rows per local expert) by one equal-split MPI_Alltoall; the others the counts' rows.
    std::function<void()> base[2] = {raw, raw_back_call};
    std::vector<float> slots_out, slots_in;
    if (algo == DispatchAlgo::kPadded) {
      d.dispatch(lay, send, st);  // padded learns its receive side here
      const int per_rank = checked_int(static_cast<Index>(El) * (lay.slot_rows + 1) * D, "padded slot");
      slots_out.assign(static_cast<std::size_t>(per_rank) * P, 0.0f);
      slots_in.assign(slots_out.size(), 0.0f);
      base[0] = base[1] = [&, per_rank] {
        MOESIM_MPI_CHECK(MPI_Alltoall(slots_out.data(), per_rank, MPI_FLOAT, slots_in.data(), per_rank, MPI_FLOAT,
                                      comm.raw()));
      };
      rep.row("raw MPI_Alltoall (padded slots)", hx.time(base[0]));
    }
    // p2p's primitive: the same messages (one per rank and local expert, same sizes and
    // tags) by bare MPI_Isend / MPI_Irecv between the same buffers, the own rows by memcpy
    // as MPI_Alltoallv copies them; what is left over it is the algorithm's own cost. The
    // messages are listed once, so that the timed calls are MPI's and the copies only.
    Mat<float> p2p_blocks, p2p_back;
    std::vector<MPI_Request> p2p_reqs;
    if (algo == DispatchAlgo::kP2P) {
      p2p_blocks.resize(lay.rows_received(), D);
      p2p_back.resize(lay.rows_sent(), D);
      struct Message {
        const float* from;
        float* to;  // receive side: `from` unused; send side: `to` only for the own rows
        int n, peer, tag;
      };
      struct Way {
        std::vector<Message> recvs, sends;
      };
      const int me = comm.rank();
      const auto count = [&](int rows) { return rows * static_cast<int>(D); };
      Way there, back_again;
      for (int q = 0; q < P; ++q)
        for (int le = 0; le < El; ++le) {
          const int e = q * El + le;  // one of q's experts: this rank's rows for it, and back
          const int out_rows = lay.send_expert_counts[static_cast<std::size_t>(e)];
          const int in_rows = lay.recv_expert_counts[static_cast<std::size_t>(e)];  // from q, for le
          float* block = p2p_blocks.data() + block_start(lay, q, le) * D;
          if (out_rows > 0) {
            float* own_block = p2p_blocks.data() + block_start(lay, me, le) * D;
            float* sent_rows = p2p_back.data() + send_start(lay, e) * D;
            there.sends.push_back({send.data() + send_start(lay, e) * D, q == me ? own_block : nullptr,
                                   count(out_rows), q, le});
            if (q != me) back_again.recvs.push_back({nullptr, sent_rows, count(out_rows), q, le});
          }
          if (in_rows > 0) {
            if (q != me) there.recvs.push_back({nullptr, block, count(in_rows), q, le});
            float* own_rows = p2p_back.data() + send_start(lay, me * El + le) * D;
            back_again.sends.push_back({block, q == me ? own_rows : nullptr, count(in_rows), q, le});
          }
        }
      auto raw_p2p = [&, me](const Way& w) {
        for (const Message& m : w.recvs) {
          p2p_reqs.emplace_back();
          MOESIM_MPI_CHECK(MPI_Irecv(m.to, m.n, MPI_FLOAT, m.peer, m.tag, comm.raw(), &p2p_reqs.back()));
        }
        for (const Message& m : w.sends) {
          if (m.peer == me) {
            std::copy_n(m.from, m.n, m.to);
            continue;
          }
          p2p_reqs.emplace_back();
          MOESIM_MPI_CHECK(MPI_Isend(m.from, m.n, MPI_FLOAT, m.peer, m.tag, comm.raw(), &p2p_reqs.back()));
        }
        MOESIM_MPI_CHECK(MPI_Waitall(static_cast<int>(p2p_reqs.size()), p2p_reqs.data(), MPI_STATUSES_IGNORE));
        p2p_reqs.clear();
      };
      p2p_reqs.reserve(there.recvs.size() + there.sends.size() + back_again.recvs.size() + back_again.sends.size());
      raw_p2p(there);
      check(comm, p2p_blocks == ref_blocks, "raw point-to-point: the same expert blocks as the raw MPI_Alltoallv");
      raw_p2p(back_again);
      check(comm, p2p_back == send, "raw point-to-point: the rows come back unchanged");
      base[0] = [raw_p2p, there] { raw_p2p(there); };
      base[1] = [raw_p2p, back_again] { raw_p2p(back_again); };
      // Many messages against one collective: what the p2p algorithm itself costs.
      const Timing t_fwd = hx.time(base[0]), t_back = hx.time(base[1]);
      rep.row("raw MPI_Isend/Irecv (p2p messages)", t_fwd,
              fmt("%.2fx the raw MPI_Alltoallv", t_raw.max_s > 0 ? t_fwd.max_s / t_raw.max_s : 0.0));
      rep.row("raw MPI_Isend/Irecv (p2p messages, back)", t_back,
              fmt("%.2fx the raw MPI_Alltoallv (back)", t_raw_back.max_s > 0 ? t_back.max_s / t_raw_back.max_s : 0.0));
    }
    // As the layer calls them: into buffers kept from call to call.
    RowBuffer<float> blocks_out, back_out;
    const ConstMatMap<float> send_map(send.data(), send.rows(), D), blocks_map(blocks.data(), blocks.rows(), D);
    for (int verb = 0; verb < 2; ++verb) {
      // Each call right after the raw primitive on the same counts, and medians over the
      // pairs. Time inside MPI: the rank that arrives last (after its share of the permutation
      // copies) waits for no one, so the least of any rank is the transfer (as in the run
      // files' a2a_seconds); the most adds the wait.
      st.reset(P);
      const Harness::Paired pr = hx.paired(base[verb], [&] {
        const double before = st.seconds;
        if (verb == 0) d.dispatch(lay, send_map, blocks_out, st);
        else d.combine(lay, blocks_map, back_out, st);
        return st.seconds - before;
      });
      const Timing t_base = pr.base, t_call = pr.f, mpi = pr.part;
      const int calls = hx.warmup() + hx.iters();  // stage seconds of every call since the reset
      const Timing intra = h.reduce(st.stage_seconds[0] / calls);
      const Timing inter = h.reduce(st.stage_seconds[1] / calls);
      const std::string verb_name = verb == 0 ? " dispatch" : " combine";
      rep.row(name + verb_name, t_call,
              fmt("MPI transfer %.6f s = %.2fx raw", mpi.min_s, pr.part_over_base) +
                  fmt(", whole call %.2fx raw", t_base.max_s > 0 ? t_call.max_s / t_base.max_s : 0.0) +
                  (algo == DispatchAlgo::kHierarchical
                       ? fmt("; stages: intra %.6f s, inter %.6f s", intra.min_s, inter.min_s)
                       : std::string()),
              ",\"mpi_max_s\":" + std::to_string(mpi.max_s) + ",\"mpi_min_s\":" + std::to_string(mpi.min_s) +
                  ",\"mpi_over_raw\":" + std::to_string(pr.part_over_base) +
                  ",\"raw_max_s\":" + std::to_string(t_base.max_s) + ",\"intra_stage_min_s\":" +
                  std::to_string(intra.min_s) + ",\"inter_stage_min_s\":" + std::to_string(inter.min_s));
    }
  }

  // Expert GEMMs forward + backward over this rank's blocks, and the same six products as
  // bare sgemm calls (through Eigen to OpenBLAS): each expert's own weights, read in place,
  // and its own gradient accumulators (+=, as the experts' gradients), so that the limit reads
  // and writes what the experts do (one pair shared by all experts had stayed in cache: at
  // E = 64 a rank's experts hold 64 MB). Twice: each expert's forward and backward back to
  // back (as the expert GEMMs row runs them), and in a layer's order, every expert's forward,
  // then every backward, last expert first (a step cannot begin its backward before its
  // forward is done, so an expert's weights and hidden rows come back from memory; the
  // layer's limit).
  Dispatcher d(comm, s.E, DispatchAlgo::kAlltoallv);
  CommStats st;
  st.reset(P);
  DispatchLayout lay = d.plan(routing.expert, cd.kept, n, s.K, st);
  // Every row matrix of the experts and of the limit in RowBuffers, the memory the layer's own
  // rows use (huge pages), so that neither side gains from its pages.
  const Mat<float> dispatched = d.dispatch(lay, send, st);
  const Index R = dispatched.rows();
  std::vector<RowBuffer<float>> mem(8);
  auto rows_wide = [&, next = std::size_t{0}](Index cols) mutable { return mem.at(next++).view(R, cols); };
  MatMap<float> blocks = rows_wide(D), out_blocks = rows_wide(D), dblocks = rows_wide(D), dxb = rows_wide(D);
  blocks = dispatched;
  dblocks = random_rows(R, D, 300);
  auto experts = [&] {
    for (int le = 0; le < El; ++le) {
      const Index off = lay.block_offset[le], rows = lay.block_offset[le + 1] - off;
      layer.local_expert(le).forward(ConstMatMap<float>(blocks.data() + off * D, rows, D),
                                     MatMap<float>(out_blocks.data() + off * D, rows, D));
      layer.local_expert(le).backward(ConstMatMap<float>(dblocks.data() + off * D, rows, D),
                                      MatMap<float>(dxb.data() + off * D, rows, D));
    }
  };
  const double flops = 12.0 * static_cast<double>(blocks.rows()) * static_cast<double>(D) * static_cast<double>(s.F);
  const double flops_max = comm.allreduce_max(flops);
  MatMap<float> hid = rows_wide(s.F), dh = rows_wide(s.F), outp = rows_wide(D), dxp = rows_wide(D);
  std::vector<Mat<float>> gw1(static_cast<std::size_t>(El), Mat<float>::Zero(D, s.F)),
      gw2(static_cast<std::size_t>(El), Mat<float>::Zero(s.F, D));
  auto rows_of = [&](int le) { return std::pair{lay.block_offset[le], lay.block_offset[le + 1] - lay.block_offset[le]}; };
  auto forward_gemms = [&](int le) {
    const auto [off, rows] = rows_of(le);
    if (rows == 0) return;
    auto H = hid.middleRows(off, rows);
    H.noalias() = blocks.middleRows(off, rows) * layer.local_expert(le).w1().value;
    outp.middleRows(off, rows).noalias() = H * layer.local_expert(le).w2().value;
  };
  auto backward_gemms = [&](int le) {
    const auto [off, rows] = rows_of(le);
    if (rows == 0) return;
    const auto i = static_cast<std::size_t>(le);
    auto DH = dh.middleRows(off, rows);
    gw2[i].noalias() += hid.middleRows(off, rows).transpose() * dblocks.middleRows(off, rows);
    DH.noalias() = dblocks.middleRows(off, rows) * layer.local_expert(le).w2().value.transpose();
    gw1[i].noalias() += blocks.middleRows(off, rows).transpose() * DH;
    dxp.middleRows(off, rows).noalias() = DH * layer.local_expert(le).w1().value.transpose();
  };
  auto sgemm = [&] {
    for (int le = 0; le < El; ++le) {
      forward_gemms(le);
      backward_gemms(le);
    }
  };
  auto sgemm_layer_order = [&] {
    for (int le = 0; le < El; ++le) forward_gemms(le);
    for (int le = El - 1; le >= 0; --le) backward_gemms(le);  // the last forwarded first, as the layer
  };
  // The experts and the whole layer are each timed in turn with the bare GEMMs (Harness::paired,
  // medians): a fraction of two means measured apart moved by +-0.03 between runs here.
  auto timed = [](const std::function<void()>& f) {
    return [f] {
      Stopwatch sw;
      f();
      return sw.seconds();
    };
  };
  // Pairs for at least min_seconds: one pair of the bare GEMMs and a layer step timed here,
  // the slowest rank's taken, so every rank runs the same count.
  const Harness hp = [&] {
    Stopwatch sw;
    sgemm();
    layer.forward(x, y);
    layer.backward(dy, dx);
    const double pair_s = comm.allreduce_max(sw.seconds());
    const double wanted = pair_s > 0 ? std::ceil(min_seconds / pair_s) : 0.0;
    return Harness(comm, h.warmup(), std::max(h.iters(), static_cast<int>(std::min(wanted, 1e6))));
  }();
  const Harness::Paired pe = hp.paired(sgemm, timed(experts));
  const Timing t_sgemm = pe.base, t_exp = pe.f;
  const double gf_limit = t_sgemm.max_s > 0 ? flops_max / t_sgemm.max_s / 1e9 : 0;
  rep.row("sgemm limit (6 GEMMs)", t_sgemm, fmt("%.1f GFLOP/s per rank (largest rank's expert FLOPs)", gf_limit));
  rep.row("expert GEMMs fwd+bwd", t_exp,
          fmt("%.1f GFLOP/s per rank = %.2f of sgemm", t_exp.max_s > 0 ? flops_max / t_exp.max_s / 1e9 : 0.0,
              t_exp.max_s > 0 ? t_sgemm.max_s / t_exp.max_s : 0.0),
          ",\"sgemm_max_s\":" + std::to_string(t_sgemm.max_s));

  // Overlap probe (Tutel-style pipelining, point 4 of the performance issue): could the next
  // chunk's rows move while this chunk's experts compute? An MPI_Ialltoallv of the dispatch's
  // counts runs under the experts' forward GEMMs, progressed by MPI_Test after each expert (MPI
  // progresses only inside its calls), against the same two one after the other.
  if (P > 1) {
    auto forward_experts = [&](const std::function<void()>& poll) {
      for (int le = 0; le < El; ++le) {
        const Index off = lay.block_offset[le], rows = lay.block_offset[le + 1] - off;
        layer.local_expert(le).forward(ConstMatMap<float>(blocks.data() + off * D, rows, D),
                                       MatMap<float>(out_blocks.data() + off * D, rows, D));
        poll();
      }
    };
    const Timing t_fwd = h.time([&] { forward_experts([] {}); });
    const Timing t_seq = h.time([&] {
      raw();
      forward_experts([] {});
    });
    const Timing t_ovl = h.time([&] {
      MPI_Request req;
      MOESIM_MPI_CHECK(MPI_Ialltoallv(send.data(), sc.data(), sd.data(), MPI_FLOAT, raw_recv.data(), rc.data(),
                                      rd.data(), MPI_FLOAT, comm.raw(), &req));
      int done = 0;
      forward_experts([&] {
        if (!done) MOESIM_MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
      });
      if (!done) MOESIM_MPI_CHECK(MPI_Wait(&req, MPI_STATUS_IGNORE));
    });
    const double best = t_seq.max_s - std::min(t_raw.max_s, t_fwd.max_s);
    rep.row("overlap: expert fwd GEMMs", t_fwd);
    rep.row("overlap: alltoallv then GEMMs", t_seq);
    rep.row("overlap: Ialltoallv under GEMMs", t_ovl,
            fmt("%.2fx of one after the other (perfect overlap would be %.2fx)",
                t_seq.max_s > 0 ? t_ovl.max_s / t_seq.max_s : 0.0, t_seq.max_s > 0 ? best / t_seq.max_s : 0.0),
            ",\"seq_max_s\":" + std::to_string(t_seq.max_s) + ",\"gemm_max_s\":" + std::to_string(t_fwd.max_s));
  }

  // The whole layer.
  Mat<float> y2, dx2;
  layer.forward(x, y2);
  check(comm, y2 == y, "layer forward: deterministic");
  const auto layer_step = timed([&] {
    layer.forward(x, y2);
    layer.backward(dy, dx2);
  });
  const Harness::Paired pl = hp.paired(sgemm, layer_step);
  const Timing t_layer = pl.f;
  const Harness::Paired po = hp.paired(sgemm_layer_order, layer_step);
  const double tok_s = t_layer.max_s > 0 ? static_cast<double>(s.B) / t_layer.max_s : 0;
  rep.row("sgemm limit in layer order", po.base,
          fmt("%.1f GFLOP/s per rank", po.base.max_s > 0 ? flops_max / po.base.max_s / 1e9 : 0.0));
  rep.row("layer fwd+bwd", t_layer,
          fmt("%.0f tokens/s; expert FLOPs at %.2f of the sgemm limit, %.2f of it in layer order", tok_s,
              t_layer.max_s > 0 ? pl.base.max_s / t_layer.max_s : 0.0,
              po.f.max_s > 0 ? po.base.max_s / po.f.max_s : 0.0),
          ",\"tokens_per_s\":" + std::to_string(tok_s) + ",\"sgemm_max_s\":" + std::to_string(pl.base.max_s) +
              ",\"layer_order_sgemm_max_s\":" + std::to_string(po.base.max_s) +
              ",\"layer_order_pair_max_s\":" + std::to_string(po.f.max_s) + ",\"pairs\":" + std::to_string(hp.iters()));
}

}  // namespace
}  // namespace moesim

int main(int argc, char** argv) {
  moesim::keep_freed_memory();  // as the moesim binary does
  moesim::MpiEnvironment env(&argc, &argv);
  namespace po = boost::program_options;
  using namespace moesim;
  Communicator world(MPI_COMM_WORLD);
  try {
    po::options_description desc("bench_moe_mpi options");
    std::string shapes, json_path, dump_path;
    double capacity_factor = 1.25, min_seconds = 0;
    int iters = 20, exchange_iters = 50, warmup = 3, blas_threads = 1, ranks_per_node = 0;
    desc.add_options()("help", "this text")(
        "shapes", po::value(&shapes)->default_value(kDefaultShapes),
        "D,F,E,K,B;... (B global tokens)")("iters", po::value(&iters)->default_value(20), "timed iterations")(
        "exchange-iters", po::value(&exchange_iters)->default_value(50),
        "timed iterations of each exchange and its raw primitive (short calls: more of them for a steady median)")(
        "warmup", po::value(&warmup)->default_value(3), "untimed iterations first")(
        "min-seconds", po::value(&min_seconds)->default_value(0),
        "time each pairing of the experts or the layer with the bare GEMMs for at least this long: more "
        "iterations than --iters for small shapes, whose fractions move most from pair to pair")(
        "blas-threads", po::value(&blas_threads)->default_value(1), "OpenBLAS threads per rank")(
        "json", po::value(&json_path), "also append one JSON object per figure to this file")(
        "capacity-factor", po::value(&capacity_factor)->default_value(1.25), "as moesim moe's (0: dropless)")(
        "ranks-per-node", po::value(&ranks_per_node)->default_value(0),
        "virtual nodes of G consecutive ranks, as moesim moe's (0: one node)")(
        "dump", po::value(&dump_path),
        "on one rank: write the first shape's inputs, weights and results to this HDF5 file and stop");
    po::variables_map vm;
    po::store(po::parse_command_line(argc, argv, desc), vm);
    po::notify(vm);
    if (vm.count("help")) {
      if (world.rank() == 0) std::cout << desc << "\n";
      return 0;
    }
    if (iters < 1 || exchange_iters < 1 || warmup < 0 || !(min_seconds >= 0))
      throw ConfigError("--iters and --exchange-iters must be >= 1, --warmup and --min-seconds >= 0");
    set_blas_threads(blas_threads);
    std::ofstream json;
    if (world.rank() == 0 && !json_path.empty()) {
      json.open(json_path, std::ios::app);
      if (!json) throw ConfigError("cannot open --json file '" + json_path + "'");
    }
    if (capacity_factor < 0) throw ConfigError("--capacity-factor must be >= 0");
    if (ranks_per_node < 0 || (ranks_per_node > 0 && world.size() % ranks_per_node != 0))
      throw ConfigError("--ranks-per-node must be 0 or divide the ranks");
    if (!dump_path.empty()) {
      if (world.size() != 1) throw ConfigError("--dump runs on one rank");
      dump_layer(dump_path, parse_shapes(shapes).front(), capacity_factor);
      return 0;
    }
    const Harness h(world, warmup, iters), hx(world, warmup, exchange_iters);
    for (const Shape& s : parse_shapes(shapes))
      bench_shape(world, s, capacity_factor, ranks_per_node, h, hx, min_seconds, json.is_open() ? &json : nullptr);
  } catch (const std::exception& e) {
    if (world.rank() == 0) std::fprintf(stderr, "bench_moe_mpi: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
