#include "device/nccl_exchange.hpp"

#include "core/error.hpp"

#ifdef MOESIM_WITH_CUDA
#include <algorithm>

#include "device/buffer.hpp"
#endif

namespace moesim::device {

#ifdef MOESIM_WITH_CUDA

namespace {

ncclDataType_t nccl_type(Element t) {
  switch (t) {
    case Element::kFloat32: return ncclFloat32;
    case Element::kFloat64: return ncclFloat64;
    case Element::kInt64: return ncclInt64;
  }
  return ncclFloat32;
}

std::size_t element_bytes(Element t) { return t == Element::kFloat32 ? 4 : 8; }

std::int64_t total(const std::vector<std::int64_t>& counts, const std::vector<std::int64_t>& displs) {
  std::int64_t end = 0;
  for (std::size_t q = 0; q < counts.size(); ++q) end = std::max(end, displs[q] + counts[q]);
  return end;
}

}  // namespace

struct NcclExchange::Impl {
  ncclComm_t comm{};
  cudaStream_t stream{};
  int size = 0;
  DeviceBuffer<unsigned char> send, recv;
  ~Impl() {
    ncclCommDestroy(comm);
    cudaStreamDestroy(stream);
  }
};

NcclExchange::NcclExchange(const Communicator& comm) : impl_(std::make_unique<Impl>()) {
  ncclUniqueId id{};
  if (comm.rank() == 0) MOESIM_NCCL_CHECK(ncclGetUniqueId(&id));
  comm.broadcast(reinterpret_cast<char*>(&id), static_cast<int>(sizeof(id)), 0);
  impl_->size = comm.size();
  MOESIM_CUDA_CHECK(cudaStreamCreate(&impl_->stream));
  MOESIM_NCCL_CHECK(ncclCommInitRank(&impl_->comm, comm.size(), id, comm.rank()));
}

NcclExchange::~NcclExchange() = default;

void NcclExchange::alltoallv_device(const void* send, const std::vector<std::int64_t>& sc,
                                    const std::vector<std::int64_t>& sd, void* recv,
                                    const std::vector<std::int64_t>& rc, const std::vector<std::int64_t>& rd,
                                    Element type) {
  Impl& m = *impl_;
  MOESIM_REQUIRE(static_cast<int>(sc.size()) == m.size && static_cast<int>(rc.size()) == m.size,
                 "NcclExchange: counts for " << sc.size() << " peers on " << m.size << " ranks");
  const std::size_t bytes = element_bytes(type);
  const auto* s = static_cast<const unsigned char*>(send);
  auto* r = static_cast<unsigned char*>(recv);
  MOESIM_NCCL_CHECK(ncclGroupStart());
  for (int q = 0; q < m.size; ++q) {
    const auto uq = static_cast<std::size_t>(q);
    if (sc[uq] > 0)
      MOESIM_NCCL_CHECK(ncclSend(s + static_cast<std::size_t>(sd[uq]) * bytes, static_cast<std::size_t>(sc[uq]),
                                 nccl_type(type), q, m.comm, m.stream));
    if (rc[uq] > 0)
      MOESIM_NCCL_CHECK(ncclRecv(r + static_cast<std::size_t>(rd[uq]) * bytes, static_cast<std::size_t>(rc[uq]),
                                 nccl_type(type), q, m.comm, m.stream));
  }
  MOESIM_NCCL_CHECK(ncclGroupEnd());
  MOESIM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

void NcclExchange::alltoallv_host(const void* send, const std::vector<std::int64_t>& sc,
                                  const std::vector<std::int64_t>& sd, void* recv,
                                  const std::vector<std::int64_t>& rc, const std::vector<std::int64_t>& rd,
                                  Element type) {
  Impl& m = *impl_;
  const std::size_t bytes = element_bytes(type);
  const auto send_bytes = static_cast<std::size_t>(total(sc, sd)) * bytes;
  const auto recv_bytes = static_cast<std::size_t>(total(rc, rd)) * bytes;
  unsigned char* ds = m.send.reserve(std::max<std::size_t>(send_bytes, 1));
  unsigned char* dr = m.recv.reserve(std::max<std::size_t>(recv_bytes, 1));
  if (send_bytes > 0)
    MOESIM_CUDA_CHECK(cudaMemcpyAsync(ds, send, send_bytes, cudaMemcpyHostToDevice, m.stream));
  alltoallv_device(ds, sc, sd, dr, rc, rd, type);
  if (recv_bytes > 0) {
    MOESIM_CUDA_CHECK(cudaMemcpyAsync(recv, dr, recv_bytes, cudaMemcpyDeviceToHost, m.stream));
    MOESIM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  }
}

#else

struct NcclExchange::Impl {};

NcclExchange::NcclExchange(const Communicator&) {
  throw ConfigError("--dispatch nccl: this moesim was built without CUDA and NCCL (build it with the cuda preset, or -DMOESIM_CUDA=ON)");
}
NcclExchange::~NcclExchange() = default;
void NcclExchange::alltoallv_device(const void*, const std::vector<std::int64_t>&, const std::vector<std::int64_t>&,
                                    void*, const std::vector<std::int64_t>&, const std::vector<std::int64_t>&, Element) {}
void NcclExchange::alltoallv_host(const void*, const std::vector<std::int64_t>&, const std::vector<std::int64_t>&,
                                  void*, const std::vector<std::int64_t>&, const std::vector<std::int64_t>&, Element) {}

#endif

}  // namespace moesim::device
