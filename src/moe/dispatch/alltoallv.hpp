#pragma once
// Rows by one MPI_Alltoallv each way, permuted into expert blocks on arrival; the
// counts by MPI_Alltoall (allgather.cpp gathers them instead).
#include "moe/dispatch/algorithm.hpp"

namespace moesim {

class AlltoallvDispatch : public DispatchAlgorithmOf<AlltoallvDispatch> {
 public:
  using DispatchAlgorithmOf::DispatchAlgorithmOf;
  void plan(DispatchLayout& L, const DispatchLimits& limits, CommStats& stats) const override;
  template <class T>
  MatMap<T> dispatch_rows(DispatchLayout& L, const ConstMatMap<T>& send_rows, RowBuffer<T>& out,
                          CommStats& stats) const;
  template <class T>
  MatMap<T> combine_rows(const DispatchLayout& L, const ConstMatMap<T>& block_rows, RowBuffer<T>& out,
                         CommStats& stats) const;

 private:
  template <class T>
  void exchange(const T* send, const std::vector<int>& send_rows, const std::vector<int>& send_row_displs,
                T* recv, const std::vector<int>& recv_rows, const std::vector<int>& recv_row_displs,
                Index width, CommStats& stats) const;
};

}  // namespace moesim
