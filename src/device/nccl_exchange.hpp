#pragma once
// Rows between the ranks of a communicator with NCCL: one ncclSend / ncclRecv per peer inside
// a group (NCCL's all-to-all), one GPU per rank. MPI bootstraps it (rank 0's unique id is
// broadcast) and keeps the counts, the metrics and everything else. Without CUDA the
// constructor throws.
#include <cstdint>
#include <memory>
#include <vector>

#include "comm/communicator.hpp"

namespace moesim::device {

enum class Element { kFloat32, kFloat64, kInt64 };

template <class T>
constexpr Element element_of();
template <>
constexpr Element element_of<float>() { return Element::kFloat32; }
template <>
constexpr Element element_of<double>() { return Element::kFloat64; }
template <>
constexpr Element element_of<std::int64_t>() { return Element::kInt64; }

class NcclExchange {
 public:
  // COLLECTIVE over `comm`: every rank must have bound its GPU (runtime.hpp, bind_device).
  explicit NcclExchange(const Communicator& comm);
  ~NcclExchange();
  NcclExchange(const NcclExchange&) = delete;
  NcclExchange& operator=(const NcclExchange&) = delete;

  // COLLECTIVE. Element counts and offsets per peer (MPI_Alltoallv's arguments) on GPU memory.
  void alltoallv_device(const void* send, const std::vector<std::int64_t>& send_counts,
                        const std::vector<std::int64_t>& send_displs, void* recv,
                        const std::vector<std::int64_t>& recv_counts, const std::vector<std::int64_t>& recv_displs,
                        Element type);
  // COLLECTIVE. The same from and into host memory (through kept GPU buffers).
  void alltoallv_host(const void* send, const std::vector<std::int64_t>& send_counts,
                      const std::vector<std::int64_t>& send_displs, void* recv,
                      const std::vector<std::int64_t>& recv_counts, const std::vector<std::int64_t>& recv_displs,
                      Element type);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moesim::device
