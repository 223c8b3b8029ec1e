#include "io/parallel_write.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace moesim {

namespace {

// The group holding `path`, created with its parents as needed.
h5::Handle parent_group(hid_t file, const std::string& path) {
  h5::Handle g(MOESIM_H5_CHECK(H5Gopen2(file, "/", H5P_DEFAULT)), H5Gclose);
  std::size_t start = 0;
  for (std::size_t slash = path.find('/'); slash != std::string::npos; slash = path.find('/', start)) {
    const std::string name = path.substr(start, slash - start);
    g = h5::exists(g.id(), name) ? h5::open_group(g.id(), name) : h5::create_group(g.id(), name);
    start = slash + 1;
  }
  return g;
}

std::string mib(double bytes) { return std::to_string(static_cast<long long>(bytes / (1 << 20) + 0.5)) + " MiB"; }

}  // namespace

void create_allocated(hid_t file, const std::vector<DatasetSpec>& specs) {
  h5::Handle dcpl(MOESIM_H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)), H5Pclose);
  MOESIM_H5_CHECK(H5Pset_layout(dcpl.id(), H5D_CONTIGUOUS));
  MOESIM_H5_CHECK(H5Pset_alloc_time(dcpl.id(), H5D_ALLOC_TIME_EARLY));
  MOESIM_H5_CHECK(H5Pset_fill_time(dcpl.id(), H5D_FILL_TIME_NEVER));  // reserve_file_space backs it
  for (const DatasetSpec& s : specs) {
    h5::Handle g = parent_group(file, s.path);
    h5::Handle space(MOESIM_H5_CHECK(H5Screate_simple(static_cast<int>(s.dims.size()), s.dims.data(), nullptr)),
                     H5Sclose);
    const std::string name = s.path.substr(s.path.rfind('/') == std::string::npos ? 0 : s.path.rfind('/') + 1);
    h5::Handle d(MOESIM_H5_CHECK(H5Dcreate2(g.id(), name.c_str(), s.integer ? H5T_STD_I64LE : H5T_IEEE_F64LE,
                                            space.id(), H5P_DEFAULT, dcpl.id(), H5P_DEFAULT)),
                 H5Dclose);
  }
}

void reserve_file_space(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY);
  if (fd < 0) throw ConfigError("cannot open " + path + ": " + std::strerror(errno));
  struct stat st {};
  int rc = ::fstat(fd, &st);
  if (rc == 0) rc = ::posix_fallocate(fd, 0, st.st_size);  // returns the error, not -1
  else rc = errno;
  ::close(fd);
  if (rc != 0)
    throw ConfigError("cannot reserve the " + mib(static_cast<double>(st.st_size)) + " of " + path + ": " +
                      std::strerror(rc));
}

void write_rows_reserved(const Communicator& comm, const std::string& path, const std::string& what,
                         const std::function<void()>& layout, std::size_t n,
                         const std::function<RowWrite(std::size_t)>& rows) {
  std::string error;
  if (comm.rank() == 0) {
    try {
      layout();
      reserve_file_space(path);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  comm.agree_or_throw(error.empty(), "cannot write " + what + ": " + error);
  h5::Handle f = h5::open_file_mpi(comm.raw(), path, true);
  for (std::size_t i = 0; i < n; ++i) {
    try {
      const RowWrite w = rows(i);
      h5::Handle d(MOESIM_H5_CHECK(H5Dopen2(f.id(), w.path.c_str(), H5P_DEFAULT)), H5Dclose);
      h5::write_rows(d.id(), w.first, w.count, w.data, w.integer);
    } catch (const std::exception& e) {
      if (error.empty()) error = e.what();
    }
    // Not expected once the space is held (a filesystem that copies on write might); the
    // file cannot be closed collectively then, so it is left open and the job aborted.
    const int failed = comm.allreduce_max(error.empty() ? 0 : 1);
    if (failed) {
      f.release();
      throw std::runtime_error("writing " + what + " failed on some rank" +
                               (error.empty() ? std::string() : ": " + error));
    }
  }
}

}  // namespace moesim
