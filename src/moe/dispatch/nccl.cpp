// Counts by MPI_Alltoall (as alltoallv), then rows by NCCL: one ncclSend / ncclRecv per peer in
// a group, between the ranks' GPUs (device/nccl_exchange), permuted into expert blocks on
// arrival like alltoallv, so results are the same bits. The rows live in host memory on this
// path and cross to the GPU and back around each exchange; the transfer time includes that.
#include "device/nccl_exchange.hpp"
#include "device/runtime.hpp"
#include "moe/dispatch/algorithm.hpp"

namespace moesim {

namespace {

class NcclDispatch final : public DispatchAlgorithmOf<NcclDispatch> {
 public:
  // COLLECTIVE: NCCL starts only where every rank of the group has a GPU; else unusable() says
  // why on every rank and the layer refuses the run.
  explicit NcclDispatch(const Communicator& comm) : DispatchAlgorithmOf(comm) {
    why_ = device::unavailable();
    const int missing = comm.allreduce_max(why_.empty() ? 0 : 1);
    if (missing) {
      if (why_.empty()) why_ = "another rank of the expert group has no GPU";
      why_ = "--dispatch nccl needs a GPU on every rank: " + why_;
      return;
    }
    device::bind_device(local_rank(comm));
    nccl_ = std::make_unique<device::NcclExchange>(comm);
  }

  std::string unusable() const override { return why_; }

  void plan(DispatchLayout& L, const DispatchLimits&, CommStats& stats) const override {
    counts_by_alltoall(L, stats);
  }

  template <class T>
  MatMap<T> dispatch_rows(DispatchLayout& L, const ConstMatMap<T>& send_rows, RowBuffer<T>& out,
                          CommStats& stats) const {
    const Index width = send_rows.cols();
    MatMap<T> received = scratch<T>(0).view(L.rows_received(), width);
    exchange(send_rows.data(), L.send_counts, L.send_displs, received.data(), L.recv_counts, L.recv_displs, width,
             stats);
    MatMap<T> blocks = out.view(L.rows_received(), width);
    for (Index i = 0; i < L.rows_received(); ++i) blocks.row(L.recv_to_block[static_cast<std::size_t>(i)]) = received.row(i);
    return blocks;
  }

  template <class T>
  MatMap<T> combine_rows(const DispatchLayout& L, const ConstMatMap<T>& block_rows, RowBuffer<T>& out,
                         CommStats& stats) const {
    const Index width = block_rows.cols();
    MatMap<T> outgoing = scratch<T>(0).view(L.rows_received(), width);
    for (Index i = 0; i < L.rows_received(); ++i)
      outgoing.row(i) = block_rows.row(L.recv_to_block[static_cast<std::size_t>(i)]);
    MatMap<T> back = out.view(L.rows_sent(), width);
    exchange(outgoing.data(), L.recv_counts, L.recv_displs, back.data(), L.send_counts, L.send_displs, width, stats);
    return back;
  }

 private:
  static int local_rank(const Communicator& comm) {
    const std::vector<int> nodes = comm.node_ids();
    int local = 0;
    for (int r = 0; r < comm.rank(); ++r)
      local += nodes[static_cast<std::size_t>(r)] == nodes[static_cast<std::size_t>(comm.rank())];
    return local;
  }

  template <class T>
  void exchange(const T* send, const std::vector<int>& send_rows, const std::vector<int>& send_row_displs, T* recv,
                const std::vector<int>& recv_rows, const std::vector<int>& recv_row_displs, Index width,
                CommStats& stats) const {
    const int P = comm_.size();
    sc_.resize(static_cast<std::size_t>(P));
    sd_.resize(static_cast<std::size_t>(P));
    rc_.resize(static_cast<std::size_t>(P));
    rd_.resize(static_cast<std::size_t>(P));
    for (std::size_t q = 0; q < static_cast<std::size_t>(P); ++q) {
      sc_[q] = send_rows[q] * width;
      sd_[q] = send_row_displs[q] * width;
      rc_[q] = recv_rows[q] * width;
      rd_[q] = recv_row_displs[q] * width;
      count_bytes(stats, comm_.rank(), static_cast<int>(q), static_cast<double>(sc_[q]) * sizeof(T));
    }
    PhaseTimer timer(stats);
    nccl_->alltoallv_host(send, sc_, sd_, recv, rc_, rd_, device::element_of<T>());
  }

  std::string why_;
  std::unique_ptr<device::NcclExchange> nccl_;
  mutable std::vector<std::int64_t> sc_, sd_, rc_, rd_;  // element counts, kept from call to call
};

}  // namespace

std::unique_ptr<DispatchAlgorithm> make_nccl_dispatch(const Communicator& comm, const std::vector<int>&) {
  return std::make_unique<NcclDispatch>(comm);
}

}  // namespace moesim
