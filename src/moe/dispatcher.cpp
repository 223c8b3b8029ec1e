#include "moe/dispatcher.hpp"

#include <cstring>
#include <limits>

#include "core/timer.hpp"

namespace moesim {

DispatchAlgo parse_dispatch(const std::string& name) {
  if (name == "alltoallv") return DispatchAlgo::kAlltoallv;
  if (name == "allgather") return DispatchAlgo::kAllgather;
  if (name == "p2p") return DispatchAlgo::kP2P;
  if (name == "padded") return DispatchAlgo::kPadded;
  throw ConfigError("--dispatch must be alltoallv, allgather, p2p or padded (got '" + name + "')");
}

const char* dispatch_name(DispatchAlgo a) {
  switch (a) {
    case DispatchAlgo::kAlltoallv: return "alltoallv";
    case DispatchAlgo::kAllgather: return "allgather";
    case DispatchAlgo::kP2P: return "p2p";
    case DispatchAlgo::kPadded: return "padded";
  }
  return "?";
}

namespace {

int checked_int(Index v, const char* what) {
  MOESIM_REQUIRE(v <= std::numeric_limits<int>::max(), what << " of " << v << " elements exceeds MPI's int counts");
  return static_cast<int>(v);
}

// Times an exchange into the total and the current phase.
class PhaseTimer {
 public:
  explicit PhaseTimer(CommStats& s) : s_(s) {}
  ~PhaseTimer() {
    const double t = sw_.seconds();
    s_.seconds += t;
    s_.phase_seconds[s_.phase] += t;
  }
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;

 private:
  CommStats& s_;
  Stopwatch sw_;
};

void count_bytes(CommStats& s, int self, int dest, double bytes) {
  s.bytes_to_rank[static_cast<std::size_t>(dest)] += bytes;
  if (dest != self) s.phase_bytes[s.phase] += bytes;
}

}  // namespace

Dispatcher::Dispatcher(const Communicator& comm, int experts, DispatchAlgo algo)
    : comm_(comm), E_(experts), algo_(algo) {
  MOESIM_REQUIRE(experts % comm.size() == 0,
                 "experts (" << experts << ") must be divisible by ranks (" << comm.size() << ")");
  E_local_ = experts / comm.size();
}

DispatchLayout Dispatcher::plan(const std::vector<int>& expert, const std::vector<char>& kept,
                                Index n, int K, CommStats& stats, Index slot_rows) const {
  const int P = comm_.size();
  DispatchLayout L;
  L.P = P;
  L.E = E_;
  L.E_local = E_local_;
  L.slot_rows = slot_rows;

  // Bucket kept assignments by expert; within a bucket tokens stay in ascending order.
  std::vector<int> per_expert(static_cast<std::size_t>(E_), 0);
  for (Index a = 0; a < n * K; ++a)
    if (kept[static_cast<std::size_t>(a)]) ++per_expert[static_cast<std::size_t>(expert[a])];
  std::vector<Index> cursor(static_cast<std::size_t>(E_) + 1, 0);
  for (int e = 0; e < E_; ++e) cursor[e + 1] = cursor[e] + per_expert[e];
  L.send_token.resize(static_cast<std::size_t>(cursor[E_]));
  L.send_choice.resize(static_cast<std::size_t>(cursor[E_]));
  for (Index t = 0; t < n; ++t)
    for (int j = 0; j < K; ++j) {
      const Index a = t * K + j;
      if (!kept[static_cast<std::size_t>(a)]) continue;
      const Index row = cursor[static_cast<std::size_t>(expert[a])]++;
      L.send_token[static_cast<std::size_t>(row)] = t;
      L.send_choice[static_cast<std::size_t>(row)] = j;
    }

  L.send_expert_counts = per_expert;
  L.send_counts.assign(static_cast<std::size_t>(P), 0);
  L.send_displs.assign(static_cast<std::size_t>(P), 0);
  for (int e = 0; e < E_; ++e) L.send_counts[static_cast<std::size_t>(e / E_local_)] += per_expert[e];
  for (int q = 1; q < P; ++q) L.send_displs[q] = L.send_displs[q - 1] + L.send_counts[q - 1];

  L.recv_expert_counts.assign(static_cast<std::size_t>(P * E_local_), 0);
  stats.phase = kForwardDispatch;
  if (algo_ == DispatchAlgo::kPadded) {
    for (int e = 0; e < E_; ++e)
      MOESIM_REQUIRE(per_expert[e] <= slot_rows, "padded dispatch: " << per_expert[e] << " rows for expert " << e
                                                                       << " exceed the slot of " << slot_rows);
    return L;  // the receive side arrives with the payload
  }
  if (algo_ == DispatchAlgo::kAllgather) {
    std::vector<int> matrix(static_cast<std::size_t>(P * E_));
    {
      PhaseTimer timer(stats);
      comm_.allgather(per_expert.data(), E_, matrix.data());
    }
    for (int q = 0; q < P; ++q)
      for (int le = 0; le < E_local_; ++le)
        L.recv_expert_counts[static_cast<std::size_t>(q * E_local_ + le)] =
            matrix[static_cast<std::size_t>(q * E_ + first_local_expert() + le)];
  } else {
    PhaseTimer timer(stats);
    comm_.alltoall(per_expert.data(), L.recv_expert_counts.data(), E_local_);
  }
  finish_receive_side(L);
  return L;
}

void Dispatcher::finish_receive_side(DispatchLayout& L) const {
  const int P = L.P;
  L.recv_counts.assign(static_cast<std::size_t>(P), 0);
  L.recv_displs.assign(static_cast<std::size_t>(P), 0);
  L.block_offset.assign(static_cast<std::size_t>(E_local_) + 1, 0);
  for (int q = 0; q < P; ++q)
    for (int le = 0; le < E_local_; ++le) {
      const int c = L.recv_expert_counts[static_cast<std::size_t>(q * E_local_ + le)];
      L.recv_counts[q] += c;
      L.block_offset[static_cast<std::size_t>(le) + 1] += c;
    }
  for (int q = 1; q < P; ++q) L.recv_displs[q] = L.recv_displs[q - 1] + L.recv_counts[q - 1];
  for (int le = 0; le < E_local_; ++le) L.block_offset[le + 1] += L.block_offset[le];

  L.recv_to_block.resize(static_cast<std::size_t>(L.block_offset[E_local_]));
  std::vector<Index> fill(L.block_offset.begin(), L.block_offset.end() - 1);
  Index i = 0;
  for (int q = 0; q < P; ++q)
    for (int le = 0; le < E_local_; ++le)
      for (int k = 0; k < L.recv_expert_counts[static_cast<std::size_t>(q * E_local_ + le)]; ++k)
        L.recv_to_block[static_cast<std::size_t>(i++)] = fill[static_cast<std::size_t>(le)]++;
  L.recv_known = true;
}

template <class T>
void Dispatcher::exchange(const T* send, const std::vector<int>& send_rows,
                          const std::vector<int>& send_row_displs, T* recv,
                          const std::vector<int>& recv_rows,
                          const std::vector<int>& recv_row_displs, Index width,
                          CommStats& stats) const {
  const int P = comm_.size();
  std::vector<int> sc(P), sd(P), rc(P), rd(P);
  for (int q = 0; q < P; ++q) {
    sc[q] = checked_int(static_cast<Index>(send_rows[q]) * width, "all-to-all message");
    sd[q] = checked_int(static_cast<Index>(send_row_displs[q]) * width, "all-to-all offset");
    rc[q] = checked_int(static_cast<Index>(recv_rows[q]) * width, "all-to-all message");
    rd[q] = checked_int(static_cast<Index>(recv_row_displs[q]) * width, "all-to-all offset");
    count_bytes(stats, comm_.rank(), q, static_cast<double>(sc[q]) * sizeof(T));
  }
  PhaseTimer timer(stats);
  comm_.alltoallv(send, sc, sd, recv, rc, rd);
}

template <class T>
Mat<T> Dispatcher::dispatch(DispatchLayout& L, const Mat<T>& send_rows, CommStats& stats) const {
  MOESIM_REQUIRE(send_rows.rows() == L.rows_sent(), "dispatch: rows do not match the layout");
  if (algo_ == DispatchAlgo::kPadded) return dispatch_padded(L, send_rows, stats);
  if (algo_ == DispatchAlgo::kP2P) return dispatch_p2p(L, send_rows, stats);
  const Index width = send_rows.cols();
  Mat<T> received(L.rows_received(), width);
  exchange(send_rows.data(), L.send_counts, L.send_displs, received.data(), L.recv_counts,
           L.recv_displs, width, stats);
  Mat<T> blocks(L.rows_received(), width);
  for (Index i = 0; i < L.rows_received(); ++i)
    blocks.row(L.recv_to_block[static_cast<std::size_t>(i)]) = received.row(i);
  return blocks;
}

template <class T>
Mat<T> Dispatcher::combine(const DispatchLayout& L, const Mat<T>& block_rows,
                           CommStats& stats) const {
  MOESIM_REQUIRE(L.recv_known, "combine before the layout's first dispatch");
  MOESIM_REQUIRE(block_rows.rows() == L.rows_received(), "combine: rows do not match the layout");
  if (algo_ == DispatchAlgo::kPadded) return combine_padded(L, block_rows, stats);
  if (algo_ == DispatchAlgo::kP2P) return combine_p2p(L, block_rows, stats);
  const Index width = block_rows.cols();
  Mat<T> outgoing(L.rows_received(), width);
  for (Index i = 0; i < L.rows_received(); ++i)
    outgoing.row(i) = block_rows.row(L.recv_to_block[static_cast<std::size_t>(i)]);
  Mat<T> back(L.rows_sent(), width);
  exchange(outgoing.data(), L.recv_counts, L.recv_displs, back.data(), L.send_counts,
           L.send_displs, width, stats);
  return back;
}

// Rows for (source q, local expert le) start in the expert block at this offset.
namespace {
Index block_start(const DispatchLayout& L, int q, int le) {
  Index off = L.block_offset[static_cast<std::size_t>(le)];
  for (int p = 0; p < q; ++p) off += L.recv_expert_counts[static_cast<std::size_t>(p * L.E_local + le)];
  return off;
}
// Rows this rank sends to global expert e start at this row of the send order.
Index send_start(const DispatchLayout& L, int e) {
  Index off = 0;
  for (int f = 0; f < e; ++f) off += L.send_expert_counts[static_cast<std::size_t>(f)];
  return off;
}
}  // namespace

template <class T>
Mat<T> Dispatcher::dispatch_p2p(const DispatchLayout& L, const Mat<T>& send_rows, CommStats& stats) const {
  const Index width = send_rows.cols();
  const int me = comm_.rank();
  Mat<T> blocks(L.rows_received(), width);
  PhaseTimer timer(stats);
  std::vector<MPI_Request> reqs;
  // Receives land directly in their expert block: no permutation afterwards.
  for (int q = 0; q < L.P; ++q)
    for (int le = 0; le < E_local_; ++le) {
      const int rows = L.recv_expert_counts[static_cast<std::size_t>(q * E_local_ + le)];
      if (rows == 0 || q == me) continue;
      reqs.push_back(comm_.irecv(blocks.data() + block_start(L, q, le) * width,
                                 checked_int(rows * width, "p2p message"), q, le));
    }
  for (int e = 0; e < E_; ++e) {
    const int rows = L.send_expert_counts[static_cast<std::size_t>(e)];
    if (rows == 0) continue;
    const int q = e / E_local_, le = e % E_local_;
    const T* src = send_rows.data() + send_start(L, e) * width;
    count_bytes(stats, me, q, static_cast<double>(rows) * static_cast<double>(width) * sizeof(T));
    if (q == me)
      std::memcpy(blocks.data() + block_start(L, me, le) * width, src, sizeof(T) * static_cast<std::size_t>(rows * width));
    else
      reqs.push_back(comm_.isend(src, checked_int(rows * width, "p2p message"), q, le));
  }
  comm_.waitall(reqs);
  return blocks;
}

template <class T>
Mat<T> Dispatcher::combine_p2p(const DispatchLayout& L, const Mat<T>& blocks, CommStats& stats) const {
  const Index width = blocks.cols();
  const int me = comm_.rank();
  Mat<T> back(L.rows_sent(), width);
  PhaseTimer timer(stats);
  std::vector<MPI_Request> reqs;
  for (int e = 0; e < E_; ++e) {
    const int rows = L.send_expert_counts[static_cast<std::size_t>(e)];
    const int q = e / E_local_, le = e % E_local_;
    if (rows == 0 || q == me) continue;
    reqs.push_back(comm_.irecv(back.data() + send_start(L, e) * width, checked_int(rows * width, "p2p message"), q, le));
  }
  for (int q = 0; q < L.P; ++q)
    for (int le = 0; le < E_local_; ++le) {
      const int rows = L.recv_expert_counts[static_cast<std::size_t>(q * E_local_ + le)];
      if (rows == 0) continue;
      const T* src = blocks.data() + block_start(L, q, le) * width;
      count_bytes(stats, me, q, static_cast<double>(rows) * static_cast<double>(width) * sizeof(T));
      if (q == me)
        std::memcpy(back.data() + send_start(L, first_local_expert() + le) * width, src,
                    sizeof(T) * static_cast<std::size_t>(rows * width));
      else
        reqs.push_back(comm_.isend(src, checked_int(rows * width, "p2p message"), q, le));
    }
  comm_.waitall(reqs);
  return back;
}

template <class T>
Mat<T> Dispatcher::dispatch_padded(DispatchLayout& L, const Mat<T>& send_rows, CommStats& stats) const {
  const Index width = send_rows.cols(), S = L.slot_rows;
  const Index slot = S + 1;  // header row (count in its first element) + S rows
  const Index per_rank = static_cast<Index>(E_local_) * slot;
  Mat<T> out = Mat<T>::Zero(static_cast<Index>(L.P) * per_rank, width);
  for (int e = 0; e < E_; ++e) {
    const Index base = (static_cast<Index>(e / E_local_) * E_local_ + e % E_local_) * slot;
    const int rows = L.send_expert_counts[static_cast<std::size_t>(e)];
    out(base, 0) = static_cast<T>(rows);
    if (rows > 0) out.middleRows(base + 1, rows) = send_rows.middleRows(send_start(L, e), rows);
    const double useful = static_cast<double>(rows) * static_cast<double>(width) * sizeof(T);
    const double total = static_cast<double>(slot) * static_cast<double>(width) * sizeof(T);
    count_bytes(stats, comm_.rank(), e / E_local_, total);
    if (e / E_local_ != comm_.rank()) stats.padding_bytes += total - useful;
  }
  Mat<T> in(static_cast<Index>(L.P) * per_rank, width);
  {
    PhaseTimer timer(stats);
    comm_.alltoall_equal(out.data(), checked_int(per_rank * width, "padded all-to-all message"), in.data());
  }
  if (!L.recv_known) {
    for (int q = 0; q < L.P; ++q)
      for (int le = 0; le < E_local_; ++le)
        L.recv_expert_counts[static_cast<std::size_t>(q * E_local_ + le)] =
            static_cast<int>(in((static_cast<Index>(q) * E_local_ + le) * slot, 0));
    finish_receive_side(L);
  }
  Mat<T> blocks(L.rows_received(), width);
  for (int q = 0; q < L.P; ++q)
    for (int le = 0; le < E_local_; ++le) {
      const int rows = L.recv_expert_counts[static_cast<std::size_t>(q * E_local_ + le)];
      if (rows > 0)
        blocks.middleRows(block_start(L, q, le), rows) =
            in.middleRows((static_cast<Index>(q) * E_local_ + le) * slot + 1, rows);
    }
  return blocks;
}

template <class T>
Mat<T> Dispatcher::combine_padded(const DispatchLayout& L, const Mat<T>& blocks, CommStats& stats) const {
  const Index width = blocks.cols(), S = L.slot_rows;
  const Index slot = S + 1;
  const Index per_rank = static_cast<Index>(E_local_) * slot;
  Mat<T> out = Mat<T>::Zero(static_cast<Index>(L.P) * per_rank, width);
  for (int q = 0; q < L.P; ++q)
    for (int le = 0; le < E_local_; ++le) {
      const int rows = L.recv_expert_counts[static_cast<std::size_t>(q * E_local_ + le)];
      const Index base = (static_cast<Index>(q) * E_local_ + le) * slot;
      if (rows > 0) out.middleRows(base + 1, rows) = blocks.middleRows(block_start(L, q, le), rows);
      const double total = static_cast<double>(slot) * static_cast<double>(width) * sizeof(T);
      count_bytes(stats, comm_.rank(), q, total);
      if (q != comm_.rank())
        stats.padding_bytes += total - static_cast<double>(rows) * static_cast<double>(width) * sizeof(T);
    }
  Mat<T> in(static_cast<Index>(L.P) * per_rank, width);
  {
    PhaseTimer timer(stats);
    comm_.alltoall_equal(out.data(), checked_int(per_rank * width, "padded all-to-all message"), in.data());
  }
  Mat<T> back(L.rows_sent(), width);
  for (int e = 0; e < E_; ++e) {
    const int rows = L.send_expert_counts[static_cast<std::size_t>(e)];
    if (rows > 0)
      back.middleRows(send_start(L, e), rows) =
          in.middleRows((static_cast<Index>(e / E_local_) * E_local_ + e % E_local_) * slot + 1, rows);
  }
  return back;
}

#define MOESIM_INSTANTIATE(T)                                                                  \
  template Mat<T> Dispatcher::dispatch(DispatchLayout&, const Mat<T>&, CommStats&) const;      \
  template Mat<T> Dispatcher::combine(const DispatchLayout&, const Mat<T>&, CommStats&) const;
MOESIM_INSTANTIATE(float)
MOESIM_INSTANTIATE(double)
MOESIM_INSTANTIATE(std::int64_t)
#undef MOESIM_INSTANTIATE

}  // namespace moesim
