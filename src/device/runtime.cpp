#include "device/runtime.hpp"

#include <vector>

#ifdef MOESIM_WITH_CUDA
#include "device/cuda_check.hpp"
#else
#include "core/error.hpp"
#endif

namespace moesim::device {

std::string cuda_version_text(int v) {
  if (v <= 0) return "none";
  return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
}

std::string nccl_version_text(int v) {
  if (v <= 0) return "none";
  // NCCL >= 2.9 encodes major * 10000 + minor * 100 + patch.
  return std::to_string(v / 10000) + "." + std::to_string(v % 10000 / 100) + "." + std::to_string(v % 100);
}

#ifdef MOESIM_WITH_CUDA

Versions versions() {
  Versions v;
  v.built = true;
  // Each of these may fail where no driver is installed; that is an answer, not an error.
  if (cudaRuntimeGetVersion(&v.runtime) != cudaSuccess) v.runtime = CUDART_VERSION;
  if (ncclGetVersion(&v.nccl) != ncclSuccess) v.nccl = NCCL_VERSION_CODE;
  if (cudaDriverGetVersion(&v.driver) != cudaSuccess) v.driver = 0;
  const cudaError_t e = cudaGetDeviceCount(&v.devices);
  if (e != cudaSuccess) {
    v.devices = 0;
    v.none_why = std::string("no CUDA device answers (") + cudaGetErrorName(e) + ": " + cudaGetErrorString(e) + ")";
    (void)cudaGetLastError();  // a failed probe must not fail the next call
    return v;
  }
  if (v.devices == 0) {
    v.none_why = "no CUDA device answers (0 devices)";
    return v;
  }
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) v.first_name = p.name;
  return v;
}

void bind_device(int local_rank) {
  int n = 0;
  MOESIM_CUDA_CHECK(cudaGetDeviceCount(&n));
  MOESIM_REQUIRE(n > 0, "no CUDA device");
  MOESIM_CUDA_CHECK(cudaSetDevice(local_rank % n));
}

#else

Versions versions() {
  Versions v;
  v.none_why = "this moesim was built without CUDA (build it with the cuda preset, or -DMOESIM_CUDA=ON)";
  return v;
}

void bind_device(int) { throw RuntimeError("bind_device: this moesim was built without CUDA"); }

#endif

void bind_local_device(const Communicator& comm) {
  const std::vector<int> nodes = comm.node_ids();
  int local = 0;
  for (int r = 0; r < comm.rank(); ++r)
    local += nodes[static_cast<std::size_t>(r)] == nodes[static_cast<std::size_t>(comm.rank())];
  bind_device(local);
}

std::string unavailable() {
  const Versions v = versions();
  return v.none_why;
}

}  // namespace moesim::device
