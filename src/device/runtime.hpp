#pragma once
// What the GPU path can use on this rank: whether CUDA was built, the runtime, driver and NCCL
// versions, the devices. Safe to call on machines without a GPU or a driver.
#include <string>

#include "comm/communicator.hpp"

namespace moesim::device {

struct Versions {
  bool built = false;      // compiled with CUDA (MOESIM_CUDA)
  int runtime = 0;         // CUDA runtime, e.g. 13000 (0: not built)
  int driver = 0;          // highest CUDA version the driver supports (0: no driver)
  int nccl = 0;            // NCCL, e.g. 22805 (0: not built)
  int devices = 0;         // GPUs this process sees
  std::string first_name;  // the first GPU's name
  std::string none_why;    // why no GPU can be used ("" when one can)
};

Versions versions();
// "13.0"-style text of a CUDA version number, "none" for 0.
std::string cuda_version_text(int v);
// "2.28.5"-style text of an NCCL version number.
std::string nccl_version_text(int v);

// Why `--device cuda` cannot run on this rank, in the cli's words ("" when it can).
std::string unavailable();

// Binds this process to GPU (local_rank mod devices), as one GPU per rank wants. RuntimeError
// when no GPU answers.
void bind_device(int local_rank);
// COLLECTIVE. The same with this rank's index among the ranks of `comm` that share its node.
void bind_local_device(const Communicator& comm);

}  // namespace moesim::device
