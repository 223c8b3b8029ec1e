// Counts by MPI_Alltoall (as alltoallv), then rows by NCCL: one ncclSend / ncclRecv per peer in
// a group, between the ranks' GPUs (device/nccl_exchange), permuted into expert blocks on
// arrival like alltoallv, so results are the same bits. The rows live in host memory on this
// path and cross to the GPU and back around each exchange; the transfer time includes that.
#include "device/nccl_exchange.hpp"
#include "device/runtime.hpp"
#include "moe/dispatch/alltoallv.hpp"

namespace moesim {

namespace {

class NcclDispatch final : public FlatDispatch<NcclDispatch> {
 public:
  // COLLECTIVE: NCCL starts only where every rank of the group has a GPU; else unusable() says
  // why on every rank and the layer refuses the run.
  explicit NcclDispatch(const Communicator& comm) : FlatDispatch(comm) {
    why_ = device::unavailable();
    const int missing = comm.allreduce_max(why_.empty() ? 0 : 1);
    if (missing) {
      if (why_.empty()) why_ = "another rank of the expert group has no GPU";
      why_ = "--dispatch nccl needs a GPU on every rank: " + why_;
      return;
    }
    device::bind_local_device(comm);
    nccl_ = std::make_unique<device::NcclExchange>(comm);
  }

  std::string unusable() const override { return why_; }

  void plan(DispatchLayout& L, const DispatchLimits&, CommStats& stats) const override {
    counts_by_alltoall(L, stats);
  }

  // Rows per peer and their offsets as AlltoallvDispatch::exchange, moved by NCCL.
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

 private:
  std::string why_;
  std::unique_ptr<device::NcclExchange> nccl_;
  mutable std::vector<std::int64_t> sc_, sd_, rc_, rd_;  // element counts, kept from call to call
};

}  // namespace

std::unique_ptr<DispatchAlgorithm> make_nccl_dispatch(const Communicator& comm, const std::vector<int>&) {
  return std::make_unique<NcclDispatch>(comm);
}

}  // namespace moesim
