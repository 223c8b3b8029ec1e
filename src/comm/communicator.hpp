#pragma once
// The project's communicator: a duplicated MPI communicator with checked calls.
// Calls marked COLLECTIVE must be made by every rank of the communicator.
#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/error.hpp"

namespace moesim {

std::string mpi_error_string(int code);

}  // namespace moesim

#define MOESIM_MPI_CHECK(expr)                                                          \
  do {                                                                                  \
    int moesim_rc_ = (expr);                                                            \
    if (moesim_rc_ != MPI_SUCCESS)                                                      \
      ::moesim::throw_runtime("MPI call failed", #expr, __FILE__, __LINE__,             \
                              ::moesim::mpi_error_string(moesim_rc_));                  \
  } while (0)

namespace moesim {

template <class T>
MPI_Datatype mpi_type();
template <> inline MPI_Datatype mpi_type<float>() { return MPI_FLOAT; }
template <> inline MPI_Datatype mpi_type<double>() { return MPI_DOUBLE; }
template <> inline MPI_Datatype mpi_type<int>() { return MPI_INT; }
template <> inline MPI_Datatype mpi_type<std::int64_t>() { return MPI_INT64_T; }
template <> inline MPI_Datatype mpi_type<char>() { return MPI_CHAR; }

// Initialises MPI for the lifetime of the object (one per process).
class MpiEnvironment {
 public:
  MpiEnvironment(int* argc, char*** argv);
  ~MpiEnvironment();
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;
};

// What this rank moved through the communicator: payload bytes it sent (its own
// contribution to each collective) and seconds spent inside MPI calls.
struct CommTally {
  double bytes_sent = 0;
  double seconds = 0;
  long calls = 0;
};

class Communicator {
 public:
  // COLLECTIVE over `parent`. The library never works on the caller's communicator
  // directly, so its messages cannot match the caller's.
  explicit Communicator(MPI_Comm parent);
  // COLLECTIVE over `parent`: the ranks of `parent` with the same `color`, ordered by
  // `key` (MPI_Comm_split).
  Communicator(const Communicator& parent, int color, int key);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm raw() const { return comm_; }

  // COLLECTIVE. In-place sums / maxima.
  template <class T> void allreduce_sum(T* data, int n) const;
  template <class T> void allreduce_max(T* data, int n) const;
  template <class T> T allreduce_sum(T v) const { allreduce_sum(&v, 1); return v; }
  template <class T> T allreduce_max(T v) const { allreduce_max(&v, 1); return v; }
  // COLLECTIVE. Exclusive prefix sum over ranks (rank 0 gets zeros).
  void exscan_sum(const std::int64_t* in, std::int64_t* out, int n) const;
  // COLLECTIVE. Each rank sends `per_rank` ints to every rank.
  void alltoall(const int* send, int* recv, int per_rank) const;
  // COLLECTIVE. Counts and displacements are in elements of T.
  template <class T>
  void alltoallv(const T* send, const std::vector<int>& send_counts,
                 const std::vector<int>& send_displs, T* recv,
                 const std::vector<int>& recv_counts, const std::vector<int>& recv_displs) const;
  // COLLECTIVE. Gathers `n` values from every rank onto `root` (recv needs n * size there).
  template <class T> void gather(const T* send, int n, T* recv, int root) const;
  template <class T> void allreduce_min(T* data, int n) const;
  // COLLECTIVE. Every rank gets every rank's `n` values, in rank order.
  template <class T> void allgather(const T* send, int n, T* recv) const;
  // COLLECTIVE. Concatenation of every rank's vector, in rank order.
  template <class T> std::vector<T> allgatherv(const std::vector<T>& local) const;
  // The same into `out`, through `counts` (2P ints): memory a caller gathering every step keeps.
  template <class T> void allgatherv(const std::vector<T>& local, std::vector<T>& out, std::vector<int>& counts) const;
  // COLLECTIVE. Broadcast of n values from root.
  template <class T> void broadcast(T* data, int n, int root) const;
  // COLLECTIVE. Equal split: `per_rank` values of T to and from every rank.
  template <class T> void alltoall_equal(const T* send, int per_rank, T* recv) const;
  // Non-blocking point to point; complete with waitall.
  template <class T> MPI_Request isend(const T* data, int n, int dest, int tag) const;
  template <class T> MPI_Request irecv(T* data, int n, int source, int tag) const;
  void waitall(std::vector<MPI_Request>& requests) const;
  // Point-to-point exchange (e.g. a ring pass); sizes known to both sides.
  template <class T>
  void sendrecv(const T* send, int send_n, int dest, T* recv, int recv_n, int source,
                int tag) const;
  // COLLECTIVE. Broadcast of a string from root.
  void broadcast(std::string& s, int root) const;
  void barrier() const;
  // How many ranks of this communicator share this rank's node (its memory).
  int ranks_on_this_node() const;
  // How the ranks sit on nodes (a node: the ranks that share memory, MPI_COMM_TYPE_SHARED).
  struct NodeLayout {
    int nodes = 1;      // distinct nodes
    int max_ranks = 1;  // the most ranks on one node
    int min_ranks = 1;  // the fewest ranks on one node (below max_ranks: an uneven placement)
  };
  // COLLECTIVE.
  NodeLayout node_layout() const;
  // COLLECTIVE. The node of every rank (0, 1, ... in the order of each node's lowest rank).
  std::vector<int> node_ids() const;

  // COLLECTIVE. Every rank learns whether all ranks passed `ok`; if not, every rank
  // throws ConfigError with the message of the lowest failing rank.
  void agree_or_throw(bool ok, const std::string& message) const;

  const CommTally& tally() const { return tally_; }
  void reset_tally() const { tally_ = CommTally{}; }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  mutable CommTally tally_;
  friend class TallyScope;
};

}  // namespace moesim
