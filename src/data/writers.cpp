#include "data/writers.hpp"

#include <fstream>

#include "core/strings.hpp"
#include "io/hdf5.hpp"

namespace moesim {

void write_table_csv(const Communicator& comm, const Table& t, const std::string& path) {
  std::string error;
  if (comm.rank() == 0) {
    std::ofstream out(path, std::ios::trunc);
    if (!out) error = "cannot write '" + path + "'";
    for (const std::string& f : t.features) out << f << ',';
    out << "target\n";
  }
  comm.agree_or_throw(error.empty(), error);
  // Ranks append their blocks in turn, so the file keeps the global row order.
  for (int r = 0; r < comm.size(); ++r) {
    if (r == comm.rank()) {
      std::ofstream out(path, std::ios::app);
      out.precision(17);
      for (Index i = 0; i < t.n(); ++i) {
        for (Index j = 0; j < t.p(); ++j) out << t.X(i, j) << ',';
        out << t.y[static_cast<std::size_t>(i)] << '\n';
      }
      if (!out) error = "write to '" + path + "' failed";
    }
    comm.agree_or_throw(error.empty(), error);
  }
}

void write_table_hdf5(const Communicator& comm, const Table& t, const std::string& path) {
  std::string error;
  if (comm.rank() == 0) {
    try {
      h5::silence_default_error_printing();
      h5::Handle f = h5::create_file(path);
      h5::write_attr(f.id(), "features", join_list(t.features));
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  comm.agree_or_throw(error.empty(), "cannot write '" + path + "': " + error);
  h5::Handle f = h5::open_file_mpi(comm.raw(), path, true);
  h5::Handle X = h5::create_dataset(f.id(), "X", {static_cast<hsize_t>(t.rows_global), static_cast<hsize_t>(t.p())}, false);
  h5::write_rows(X.id(), static_cast<hsize_t>(t.first), static_cast<hsize_t>(t.n()), t.X.data(), false);
  h5::Handle y = h5::create_dataset(f.id(), "y", {static_cast<hsize_t>(t.rows_global)}, false);
  h5::write_rows(y.id(), static_cast<hsize_t>(t.first), static_cast<hsize_t>(t.n()), t.y.data(), false);
}

void write_table(const Communicator& comm, const Table& t, const std::string& path) {
  if (path.ends_with(".h5") || path.ends_with(".hdf5")) write_table_hdf5(comm, t, path);
  else write_table_csv(comm, t, path);
}

}  // namespace moesim
