#include "comm/ordered_sum.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace moesim {

template <class T>
void TreeSum<T>::reset(std::size_t n) {
  n_ = n;
  pushed_ = 0;
  for (Node& l : levels_) l.full = false;
}

template <class T>
T* TreeSum<T>::leaf() {
  leaf_.resize(n_);
  return leaf_.data();
}

template <class T>
void TreeSum<T>::push() {
  carry(0, false);
}

template <class T>
void TreeSum<T>::push_empty() {
  carry(0, true);
}

// A binary counter: the new subtree at `level` merges with a pending one of the same
// size (its left sibling) and carries upwards, so pushes in chunk order build the tree.
template <class T>
void TreeSum<T>::carry(std::size_t level, bool empty) {
  ++pushed_;
  std::vector<T>* right = &leaf_;
  for (;; ++level) {
    if (levels_.size() <= level) levels_.resize(level + 1);
    Node& l = levels_[level];
    if (!l.full) {
      l.full = true;
      l.empty = empty;
      if (!empty) l.v.swap(*right);  // no copy: the leaf buffer moves up
      return;
    }
    l.full = false;
    if (l.empty) continue;  // empty + right = right (right stays where it is)
    if (!empty)
      for (std::size_t i = 0; i < n_; ++i) l.v[i] += (*right)[i];
    // The merged node now lives in this level's buffer; swap it into the leaf so the
    // buffer stays with its level.
    std::swap(l.v, leaf_);
    right = &leaf_;
    empty = false;
  }
}

template <class T>
bool TreeSum<T>::result(T* out) const {
  MOESIM_REQUIRE(complete(), "TreeSum: " << pushed_ << " chunks do not form one subtree");
  for (const Node& l : levels_)
    if (l.full) {
      if (l.empty) break;
      std::copy(l.v.begin(), l.v.begin() + static_cast<std::ptrdiff_t>(n_), out);
      return true;
    }
  std::fill(out, out + n_, T(0));
  return false;
}

template <class T>
void tree_allreduce(const Communicator& comm, T* data, const std::vector<std::size_t>& sizes,
                    std::vector<char>& nonempty) {
  const int P = comm.size(), r = comm.rank();
  MOESIM_REQUIRE(is_power_of_two(P), "tree_allreduce needs a power of two of ranks, not " << P);
  MOESIM_REQUIRE(nonempty.size() == sizes.size(), "tree_allreduce: one flag per segment");
  if (P == 1) return;
  std::size_t n = 0;
  for (std::size_t s : sizes) n += s;
  const std::size_t S = sizes.size();
  // The flags travel as the last S values, so both partners know whether to add.
  std::vector<T> mine(n + S), theirs(n + S);
  std::copy(data, data + n, mine.begin());
  for (std::size_t k = 0; k < S; ++k) mine[n + k] = nonempty[k] ? T(1) : T(0);
  for (int bit = 1; bit < P; bit <<= 1) {
    const int partner = r ^ bit;
    comm.sendrecv(mine.data(), static_cast<int>(n + S), partner, theirs.data(), static_cast<int>(n + S),
                  partner, 7100 + bit);
    // Both partners compute left + right; IEEE addition is commutative, so the same bits.
    std::size_t off = 0;
    for (std::size_t k = 0; k < S; ++k) {
      if (theirs[n + k] != T(0)) {
        if (mine[n + k] != T(0))
          for (std::size_t i = off; i < off + sizes[k]; ++i) mine[i] += theirs[i];
        else
          std::copy(theirs.begin() + static_cast<std::ptrdiff_t>(off),
                    theirs.begin() + static_cast<std::ptrdiff_t>(off + sizes[k]),
                    mine.begin() + static_cast<std::ptrdiff_t>(off));
        mine[n + k] = T(1);
      }
      off += sizes[k];
    }
  }
  std::copy(mine.begin(), mine.begin() + static_cast<std::ptrdiff_t>(n), data);
  for (std::size_t k = 0; k < S; ++k) nonempty[k] = mine[n + k] != T(0);
}

template <class T>
void tree_allreduce(const Communicator& comm, T* data, std::size_t n, bool nonempty) {
  std::vector<char> flag{static_cast<char>(nonempty)};
  tree_allreduce(comm, data, std::vector<std::size_t>{n}, flag);
}

template class TreeSum<float>;
template class TreeSum<double>;
template void tree_allreduce<float>(const Communicator&, float*, std::size_t, bool);
template void tree_allreduce<double>(const Communicator&, double*, std::size_t, bool);
template void tree_allreduce<float>(const Communicator&, float*, const std::vector<std::size_t>&, std::vector<char>&);
template void tree_allreduce<double>(const Communicator&, double*, const std::vector<std::size_t>&, std::vector<char>&);

}  // namespace moesim
