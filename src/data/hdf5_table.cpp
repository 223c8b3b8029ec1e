#include <cmath>
#include <set>
#include <sstream>

#include "core/shard.hpp"
#include "data/readers.hpp"
#include "io/hdf5.hpp"

namespace moesim {

Table read_hdf5_table(const Communicator& comm, const std::string& path, const TableSpec& spec) {
  h5::silence_default_error_printing();
  Table t;
  std::string error;
  h5::Handle file;
  std::vector<hsize_t> xdims;
  try {
    file = h5::open_file_mpi(comm.raw(), path, false);
  } catch (const std::exception& e) {
    error = "cannot open data file '" + path + "' as HDF5: " + e.what();
  }
  comm.agree_or_throw(error.empty(), error);
  try {
    if (!h5::exists(file.id(), "X") || !h5::exists(file.id(), "y"))
      throw ConfigError(path + ": needs datasets 'X' (rows x features) and 'y' (rows)");
    xdims = h5::dataset_dims(file.id(), "X");
    const std::vector<hsize_t> ydims = h5::dataset_dims(file.id(), "y");
    if (xdims.size() != 2 || ydims.empty() || ydims[0] != xdims[0])
      throw ConfigError(path + ": 'X' must be 2-D and 'y' must have as many rows as 'X'");
    if (xdims[0] == 0 || xdims[1] == 0) throw ConfigError(path + ": 'X' is empty");
  } catch (const std::exception& e) {
    error = e.what();
  }
  comm.agree_or_throw(error.empty(), error);
  const std::int64_t N = static_cast<std::int64_t>(xdims[0]);
  const Index p = static_cast<Index>(xdims[1]);
  const Shard sh = shard_of(N, comm.rank(), comm.size());
  t.rows_global = N;
  t.first = sh.first;
  t.X.resize(sh.count, p);
  t.y.assign(static_cast<std::size_t>(sh.count), 0.0);
  t.w.assign(static_cast<std::size_t>(sh.count), 1.0);
  auto read = [&](const std::string& name, double* out) {
    h5::Handle d(MOESIM_H5_CHECK(H5Dopen2(file.id(), name.c_str(), H5P_DEFAULT)), H5Dclose);
    h5::read_rows(d.id(), static_cast<hsize_t>(sh.first), static_cast<hsize_t>(sh.count), out);
  };
  read("X", t.X.data());
  read("y", t.y.data());
  const bool has_w = h5::exists(file.id(), "w");
  const bool has_group = h5::exists(file.id(), "group");
  if (has_w) read("w", t.w.data());
  if (has_group || !spec.group_column.empty()) {
    MOESIM_CONFIG_CHECK(has_group, path << ": no dataset 'group' for the group/fold ids");
    std::vector<double> g(static_cast<std::size_t>(sh.count));
    read("group", g.data());
    for (double v : g) t.group.push_back(static_cast<std::int64_t>(v));
  }
  t.features.clear();
  if (H5Aexists(file.id(), "features") > 0) {
    std::istringstream is(h5::read_attr_string(file.id(), "features"));
    std::string f;
    while (std::getline(is, f, ',')) t.features.push_back(f);
  }
  if (static_cast<Index>(t.features.size()) != p) {
    t.features.clear();
    for (Index j = 0; j < p; ++j) t.features.push_back("x" + std::to_string(j));
  }
  file.reset();

  // Validate before anything trains on it; report the first bad row globally.
  for (Index i = 0; i < t.n() && error.empty(); ++i) {
    const std::int64_t row = sh.first + i;
    for (Index j = 0; j < p && error.empty(); ++j)
      if (!std::isfinite(t.X(i, j)))
        error = path + ": X[" + std::to_string(row) + ", " + std::to_string(j) + "] is NaN or infinite";
    if (error.empty() && !std::isfinite(t.y[static_cast<std::size_t>(i)]))
      error = path + ": y[" + std::to_string(row) + "] is NaN or infinite";
    if (error.empty() && (!std::isfinite(t.w[static_cast<std::size_t>(i)]) || t.w[static_cast<std::size_t>(i)] < 0))
      error = path + ": w[" + std::to_string(row) + "] is not a finite number >= 0";
  }
  comm.agree_or_throw(error.empty(), error);

  if (spec.classification) {
    std::vector<std::string> labels;
    // Labels are integers (checked below); print them exactly, never in exponent form.
    auto label_of = [](double v) { return std::to_string(static_cast<long long>(v)); };
    std::set<std::string> mine;
    for (double v : t.y) {
      if (v != std::floor(v) || std::abs(v) > 9.0e15) {
        error = path + ": classification labels in 'y' must be integers";
        break;
      }
      mine.insert(label_of(v));
    }
    comm.agree_or_throw(error.empty(), error);
    t.classes = spec.classes.empty() ? union_of_labels(comm, {mine.begin(), mine.end()}) : spec.classes;
    for (double& v : t.y) {
      auto it = std::find(t.classes.begin(), t.classes.end(), label_of(v));
      if (it == t.classes.end()) error = path + ": class '" + label_of(v) + "' does not occur in the training data";
      else v = static_cast<double>(it - t.classes.begin());
    }
    comm.agree_or_throw(error.empty(), error);
    MOESIM_CONFIG_CHECK(t.classes.size() >= 2, path << ": classification needs at least 2 classes in 'y'");
  }
  return t;
}

}  // namespace moesim
