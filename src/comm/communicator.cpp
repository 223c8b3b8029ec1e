#include "comm/communicator.hpp"

#include <algorithm>

#include <limits>

#include "core/timer.hpp"

namespace moesim {

// Adds one MPI call's bytes and duration to the communicator's tally.
class TallyScope {
 public:
  TallyScope(CommTally& t, double bytes) : t_(t) {
    t_.bytes_sent += bytes;
    ++t_.calls;
  }
  ~TallyScope() { t_.seconds += sw_.seconds(); }
  TallyScope(const TallyScope&) = delete;
  TallyScope& operator=(const TallyScope&) = delete;

 private:
  CommTally& t_;
  Stopwatch sw_;
};

#define MOESIM_TALLY(bytes) TallyScope moesim_tally_(tally_, static_cast<double>(bytes))

std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return "unknown MPI error";
  return std::string(buf, static_cast<std::size_t>(len));
}

MpiEnvironment::MpiEnvironment(int* argc, char*** argv) {
  int initialized = 0;
  MOESIM_MPI_CHECK(MPI_Initialized(&initialized));
  if (!initialized) MOESIM_MPI_CHECK(MPI_Init(argc, argv));
  // Errors come back as codes so they can carry context instead of aborting inside MPI.
  MOESIM_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
}

MpiEnvironment::~MpiEnvironment() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

Communicator::Communicator(MPI_Comm parent) {
  MOESIM_MPI_CHECK(MPI_Comm_dup(parent, &comm_));
  MOESIM_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  MOESIM_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MOESIM_MPI_CHECK(MPI_Comm_size(comm_, &size_));
}

Communicator::Communicator(const Communicator& parent, int color, int key) {
  MOESIM_MPI_CHECK(MPI_Comm_split(parent.comm_, color, key, &comm_));
  MOESIM_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  MOESIM_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MOESIM_MPI_CHECK(MPI_Comm_size(comm_, &size_));
}

Communicator::~Communicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm_);
}

template <class T>
void Communicator::allreduce_sum(T* data, int n) const {
  MOESIM_TALLY(sizeof(T) * static_cast<std::size_t>(n));
  MOESIM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data, n, mpi_type<T>(), MPI_SUM, comm_));
}

template <class T>
void Communicator::allreduce_max(T* data, int n) const {
  MOESIM_TALLY(sizeof(T) * static_cast<std::size_t>(n));
  MOESIM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data, n, mpi_type<T>(), MPI_MAX, comm_));
}

template <class T>
void Communicator::allreduce_min(T* data, int n) const {
  MOESIM_TALLY(sizeof(T) * static_cast<std::size_t>(n));
  MOESIM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data, n, mpi_type<T>(), MPI_MIN, comm_));
}

template <class T>
void Communicator::allgather(const T* send, int n, T* recv) const {
  MOESIM_TALLY(sizeof(T) * static_cast<std::size_t>(n));
  MOESIM_MPI_CHECK(MPI_Allgather(send, n, mpi_type<T>(), recv, n, mpi_type<T>(), comm_));
}

template <class T>
std::vector<T> Communicator::allgatherv(const std::vector<T>& local) const {
  std::vector<T> out;
  std::vector<int> counts;
  allgatherv(local, out, counts);
  return out;
}

template <class T>
void Communicator::allgatherv(const std::vector<T>& local, std::vector<T>& out, std::vector<int>& counts) const {
  MOESIM_REQUIRE(local.size() < static_cast<std::size_t>(std::numeric_limits<int>::max()),
                 "allgatherv: local block too large");
  const int n = static_cast<int>(local.size());
  MOESIM_TALLY(sizeof(T) * local.size());
  counts.assign(2 * static_cast<std::size_t>(size_), 0);
  int* displs = counts.data() + size_;
  MOESIM_MPI_CHECK(MPI_Allgather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, comm_));
  for (int q = 1; q < size_; ++q) displs[q] = displs[q - 1] + counts[static_cast<std::size_t>(q - 1)];
  out.resize(static_cast<std::size_t>(displs[size_ - 1] + counts[static_cast<std::size_t>(size_ - 1)]));
  MOESIM_MPI_CHECK(MPI_Allgatherv(local.data(), n, mpi_type<T>(), out.data(), counts.data(), displs,
                                  mpi_type<T>(), comm_));
}

template <class T>
void Communicator::broadcast(T* data, int n, int root) const {
  MOESIM_TALLY(rank_ == root ? sizeof(T) * static_cast<std::size_t>(n) : 0);
  MOESIM_MPI_CHECK(MPI_Bcast(data, n, mpi_type<T>(), root, comm_));
}

template <class T>
void Communicator::sendrecv(const T* send, int send_n, int dest, T* recv, int recv_n, int source,
                            int tag) const {
  MOESIM_TALLY(sizeof(T) * static_cast<std::size_t>(send_n));
  MOESIM_MPI_CHECK(MPI_Sendrecv(send, send_n, mpi_type<T>(), dest, tag, recv, recv_n, mpi_type<T>(),
                                source, tag, comm_, MPI_STATUS_IGNORE));
}

template <class T>
void Communicator::alltoall_equal(const T* send, int per_rank, T* recv) const {
  MOESIM_TALLY(sizeof(T) * static_cast<std::size_t>(per_rank) * static_cast<std::size_t>(size_));
  MOESIM_MPI_CHECK(MPI_Alltoall(send, per_rank, mpi_type<T>(), recv, per_rank, mpi_type<T>(), comm_));
}

template <class T>
MPI_Request Communicator::isend(const T* data, int n, int dest, int tag) const {
  MOESIM_TALLY(sizeof(T) * static_cast<std::size_t>(n));
  MPI_Request r = MPI_REQUEST_NULL;
  MOESIM_MPI_CHECK(MPI_Isend(data, n, mpi_type<T>(), dest, tag, comm_, &r));
  return r;
}

template <class T>
MPI_Request Communicator::irecv(T* data, int n, int source, int tag) const {
  MOESIM_TALLY(0);
  MPI_Request r = MPI_REQUEST_NULL;
  MOESIM_MPI_CHECK(MPI_Irecv(data, n, mpi_type<T>(), source, tag, comm_, &r));
  return r;
}

void Communicator::waitall(std::vector<MPI_Request>& requests) const {
  MOESIM_TALLY(0);
  if (requests.empty()) return;
  MOESIM_MPI_CHECK(MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE));
  requests.clear();
}

void Communicator::exscan_sum(const std::int64_t* in, std::int64_t* out, int n) const {
  MOESIM_TALLY(sizeof(std::int64_t) * static_cast<std::size_t>(n));
  MOESIM_MPI_CHECK(MPI_Exscan(in, out, n, MPI_INT64_T, MPI_SUM, comm_));
  // MPI leaves rank 0's output undefined.
  if (rank_ == 0)
    for (int i = 0; i < n; ++i) out[i] = 0;
}

void Communicator::alltoall(const int* send, int* recv, int per_rank) const {
  MOESIM_TALLY(sizeof(int) * static_cast<std::size_t>(per_rank) * static_cast<std::size_t>(size_));
  MOESIM_MPI_CHECK(MPI_Alltoall(send, per_rank, MPI_INT, recv, per_rank, MPI_INT, comm_));
}

template <class T>
void Communicator::alltoallv(const T* send, const std::vector<int>& send_counts,
                             const std::vector<int>& send_displs, T* recv,
                             const std::vector<int>& recv_counts,
                             const std::vector<int>& recv_displs) const {
  MOESIM_REQUIRE(static_cast<int>(send_counts.size()) == size_ &&
                     static_cast<int>(recv_counts.size()) == size_,
                 "alltoallv needs one count per rank");
  std::size_t sent = 0;
  for (int c : send_counts) sent += static_cast<std::size_t>(c);
  MOESIM_TALLY(sizeof(T) * sent);
  MOESIM_MPI_CHECK(MPI_Alltoallv(send, send_counts.data(), send_displs.data(), mpi_type<T>(),
                                 recv, recv_counts.data(), recv_displs.data(), mpi_type<T>(),
                                 comm_));
}

template <class T>
void Communicator::gather(const T* send, int n, T* recv, int root) const {
  MOESIM_TALLY(sizeof(T) * static_cast<std::size_t>(n));
  MOESIM_MPI_CHECK(MPI_Gather(send, n, mpi_type<T>(), recv, n, mpi_type<T>(), root, comm_));
}

void Communicator::broadcast(std::string& s, int root) const {
  std::int64_t len = static_cast<std::int64_t>(s.size());
  MOESIM_MPI_CHECK(MPI_Bcast(&len, 1, MPI_INT64_T, root, comm_));
  MOESIM_REQUIRE(len < std::numeric_limits<int>::max(), "broadcast string too long");
  s.resize(static_cast<std::size_t>(len));
  MOESIM_MPI_CHECK(MPI_Bcast(s.data(), static_cast<int>(len), MPI_CHAR, root, comm_));
}

void Communicator::barrier() const { MOESIM_MPI_CHECK(MPI_Barrier(comm_)); }

int Communicator::ranks_on_this_node() const {
  const std::vector<int> ids = node_ids();
  return static_cast<int>(std::count(ids.begin(), ids.end(), ids[static_cast<std::size_t>(rank_)]));
}

Communicator::NodeLayout Communicator::node_layout() const {
  const std::vector<int> ids = node_ids();
  std::vector<int> ranks(ids.size(), 0);  // per node (ids are 0, 1, ...)
  for (int id : ids) ++ranks[static_cast<std::size_t>(id)];
  const int nodes = *std::max_element(ids.begin(), ids.end()) + 1;
  ranks.resize(static_cast<std::size_t>(nodes));
  return {nodes, *std::max_element(ranks.begin(), ranks.end()), *std::min_element(ranks.begin(), ranks.end())};
}

std::vector<int> Communicator::node_ids() const {
  MPI_Comm node = MPI_COMM_NULL;
  MOESIM_MPI_CHECK(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
  int leader = rank_;  // the node's lowest rank names it
  MOESIM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &leader, 1, MPI_INT, MPI_MIN, node));
  MOESIM_MPI_CHECK(MPI_Comm_free(&node));
  std::vector<int> leaders(static_cast<std::size_t>(size_));
  MOESIM_MPI_CHECK(MPI_Allgather(&leader, 1, MPI_INT, leaders.data(), 1, MPI_INT, comm_));
  std::vector<int> ids(leaders.size()), index_of(leaders.size(), -1);
  int next = 0;
  for (std::size_t r = 0; r < leaders.size(); ++r) {
    int& id = index_of[static_cast<std::size_t>(leaders[r])];
    if (id < 0) id = next++;
    ids[r] = id;
  }
  return ids;
}

void Communicator::agree_or_throw(bool ok, const std::string& message) const {
  int first_bad = ok ? size_ : rank_;
  MOESIM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &first_bad, 1, MPI_INT, MPI_MIN, comm_));
  if (first_bad == size_) return;
  std::string msg = (rank_ == first_bad) ? message : std::string();
  broadcast(msg, first_bad);
  throw ConfigError(msg);
}

#define MOESIM_INSTANTIATE(T)                                                              \
  template void Communicator::allreduce_sum<T>(T*, int) const;                             \
  template void Communicator::allreduce_max<T>(T*, int) const;                             \
  template void Communicator::alltoallv<T>(const T*, const std::vector<int>&,              \
                                           const std::vector<int>&, T*,                    \
                                           const std::vector<int>&, const std::vector<int>&) \
      const;                                                                               \
  template void Communicator::gather<T>(const T*, int, T*, int) const;                      \
  template void Communicator::allreduce_min<T>(T*, int) const;                             \
  template void Communicator::allgather<T>(const T*, int, T*) const;                       \
  template std::vector<T> Communicator::allgatherv<T>(const std::vector<T>&) const;        \
  template void Communicator::allgatherv<T>(const std::vector<T>&, std::vector<T>&, std::vector<int>&) const; \
  template void Communicator::broadcast<T>(T*, int, int) const;                            \
  template void Communicator::sendrecv<T>(const T*, int, int, T*, int, int, int) const;     \
  template void Communicator::alltoall_equal<T>(const T*, int, T*) const;                  \
  template MPI_Request Communicator::isend<T>(const T*, int, int, int) const;              \
  template MPI_Request Communicator::irecv<T>(T*, int, int, int) const;
MOESIM_INSTANTIATE(float)
MOESIM_INSTANTIATE(double)
MOESIM_INSTANTIATE(int)
MOESIM_INSTANTIATE(std::int64_t)
// Characters move, they are never summed.
template std::vector<char> Communicator::allgatherv<char>(const std::vector<char>&) const;
template void Communicator::broadcast<char>(char*, int, int) const;
#undef MOESIM_INSTANTIATE

}  // namespace moesim
