#pragma once
// Dense tensors are Eigen row-major matrices: one token per row, so a token's
// features are contiguous and rows can be packed straight into MPI buffers.
// Eigen is built with EIGEN_USE_BLAS, so products go to OpenBLAS.
#include <Eigen/Dense>

namespace moesim {

using Index = Eigen::Index;

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using RowVec = Eigen::Matrix<T, 1, Eigen::Dynamic>;
template <class T>
using MatMap = Eigen::Map<Mat<T>>;
template <class T>
using ConstMatMap = Eigen::Map<const Mat<T>>;

}  // namespace moesim
