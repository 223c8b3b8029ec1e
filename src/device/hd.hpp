#pragma once
// Functions marked MOESIM_HD compile for the host and, under nvcc, for the GPU: a kernel and
// a host loop then run the same per-element code, and the host loop is tested against the
// CPU path on machines without a GPU.
#ifdef __CUDACC__
#define MOESIM_HD __host__ __device__
#else
#define MOESIM_HD
#endif
