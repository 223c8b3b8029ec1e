#include "io/run_file.hpp"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <numeric>
#include <type_traits>

#include "core/build_info.hpp"
#include "core/timer.hpp"
#include "io/parallel_write.hpp"

namespace moesim {

std::string iso_time_now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

AttrList provenance_attrs(const Communicator& comm, int virtual_ranks_per_node) {
  char host[256] = {0};
  if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
  AttrList a{{"moesim_version", std::string(build::kVersion)},
             {"git_revision", std::string(build::kGitRevision)},
             {"compiler", std::string(build::compiler())},
             {"ranks", static_cast<std::int64_t>(comm.size())},
             {"host", std::string(host)},
             {"start_time", iso_time_now()}};
  // The placement, for the network cost model: nodes, and ranks per node (the most on one
  // node; the fewest too, which is lower only when the placement is uneven).
  const Communicator::NodeLayout nodes = comm.node_layout();
  if (virtual_ranks_per_node > 0) {
    const int G = virtual_ranks_per_node;
    a.emplace_back("nodes", static_cast<std::int64_t>((comm.size() + G - 1) / G));
    a.emplace_back("ranks_per_node", static_cast<std::int64_t>(G));
    a.emplace_back("ranks_per_node_min", static_cast<std::int64_t>(comm.size() - (comm.size() - 1) / G * G));
    a.emplace_back("nodes_are", std::string("virtual (--ranks-per-node)"));
    a.emplace_back("machine_nodes", static_cast<std::int64_t>(nodes.nodes));
  } else {
    a.emplace_back("nodes", static_cast<std::int64_t>(nodes.nodes));
    a.emplace_back("ranks_per_node", static_cast<std::int64_t>(nodes.max_ranks));
    a.emplace_back("ranks_per_node_min", static_cast<std::int64_t>(nodes.min_ranks));
    a.emplace_back("nodes_are", std::string("shared memory"));
  }
  for (const char* var : {"SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                          "SLURM_JOB_NODELIST"}) {
    if (const char* v = std::getenv(var)) {
      std::string key(var);
      for (char& c : key) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      a.emplace_back(key, std::string(v));
    }
  }
  return a;
}

std::unique_ptr<RunFile> RunFile::create(const Communicator& comm, const std::string& path,
                                         const std::string& kind) {
  std::unique_ptr<RunFile> rf(new RunFile());
  rf->comm_ = &comm;
  rf->path_ = path;
  std::string error;
  if (comm.rank() == 0) {
    try {
      const std::filesystem::path p(path);
      std::error_code ec;
      if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
      if (ec) throw RuntimeError("cannot create directory '" + p.parent_path().string() + "': " + ec.message());
      rf->lock_ = OutputLock(path);
      rf->file_ = h5::create_file(path);
      h5::write_attr(rf->file_.id(), "schema_version", kSchemaVersion);
      h5::write_attr(rf->file_.id(), "complete", std::int64_t{0});
      h5::write_attr(rf->file_.id(), "kind", kind);
      h5::flush(rf->file_.id());
    } catch (const std::exception& e) {
      error = e.what();
      rf->file_.reset();
    }
  }
  comm.agree_or_throw(error.empty(), "cannot create output file '" + path + "': " + error);
  return rf;
}

void RunFile::check_creatable(const Communicator& comm, const std::string& path) {
  std::string error;
  if (comm.rank() == 0) {
    const std::filesystem::path p(path);
    const std::filesystem::path dir = p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) error = "cannot create directory '" + dir.string() + "': " + ec.message();
    else if (std::filesystem::is_directory(p)) error = "it is a directory";
    else if (output_locked(path)) error = "'" + path + "' is being written by another moesim run";
    else if (::access(std::filesystem::exists(p) ? path.c_str() : dir.c_str(), W_OK) != 0)
      error = std::string("not writable: ") + std::strerror(errno);
  }
  comm.agree_or_throw(error.empty(), "cannot create output file '" + path + "': " + error);
}

RunFile::~RunFile() {
  groups_.clear();
  series_.clear();
  file_.reset();  // before the lock goes
}

hid_t RunFile::group(const std::string& name) {
  auto it = groups_.find(name);
  if (it != groups_.end()) return it->second.id();
  h5::Handle g = h5::exists(file_.id(), name) ? h5::open_group(file_.id(), name)
                                              : h5::create_group(file_.id(), name);
  return groups_.emplace(name, std::move(g)).first->second.id();
}

void RunFile::root_attrs(const AttrList& attrs) {
  if (!writer()) return;
  for (const auto& [k, v] : attrs) h5::write_attr(file_.id(), k, v);
}

void RunFile::option_attrs(const AttrList& options) {
  if (!writer()) return;
  root_attrs(options);
  std::vector<std::string> names;
  for (const auto& [k, v] : options) names.push_back(k);
  h5::write_attr_strings(file_.id(), "option_names", names);
}

void RunFile::group_attrs(const std::string& name, const AttrList& attrs) {
  if (!writer()) return;
  const hid_t g = group(name);
  for (const auto& [k, v] : attrs) h5::write_attr(g, k, v);
}

RunFile::Pending& RunFile::pending(const std::string& name, const std::vector<hsize_t>& inner,
                                   bool integer, std::size_t row_len) {
  auto it = series_.find(name);
  if (it == series_.end()) {
    Pending p;
    p.inner = inner;
    p.integer = integer;
    p.row_size = std::accumulate(inner.begin(), inner.end(), hsize_t{1}, std::multiplies<>());
    it = series_.emplace(name, std::move(p)).first;
  }
  MOESIM_REQUIRE(it->second.integer == integer && it->second.row_size == row_len,
                 "metric '" << name << "' appended with a different shape or type");
  return it->second;
}

RunFile::Slot RunFile::slot(const std::string& name, const std::vector<hsize_t>& inner, bool integer) {
  Slot s;
  if (writer()) {
    const hsize_t n = std::accumulate(inner.begin(), inner.end(), hsize_t{1}, std::multiplies<>());
    s.p_ = &pending(name, inner, integer, static_cast<std::size_t>(n));
  }
  return s;
}

void RunFile::append(Slot s, const double* row, std::size_t n) {
  if (!s.p_) return;
  MOESIM_REQUIRE(!s.p_->integer && n == s.p_->row_size, "a row of the wrong type or length for its series");
  s.p_->dbuf.insert(s.p_->dbuf.end(), row, row + n);
}

void RunFile::append(Slot s, const std::int64_t* row, std::size_t n) {
  if (!s.p_) return;
  MOESIM_REQUIRE(s.p_->integer && n == s.p_->row_size, "a row of the wrong type or length for its series");
  s.p_->ibuf.insert(s.p_->ibuf.end(), row, row + n);
}

void RunFile::append(const std::string& name, const std::vector<double>& row,
                     const std::vector<hsize_t>& inner) {
  if (!writer()) return;
  Pending& p = pending(name, inner, false, row.size());
  p.dbuf.insert(p.dbuf.end(), row.begin(), row.end());
}

void RunFile::append(const std::string& name, const std::vector<std::int64_t>& row,
                     const std::vector<hsize_t>& inner) {
  if (!writer()) return;
  Pending& p = pending(name, inner, true, row.size());
  p.ibuf.insert(p.ibuf.end(), row.begin(), row.end());
}

void RunFile::append_rows(const std::string& name, const std::vector<hsize_t>& inner,
                          bool integer, const void* data, hsize_t rows) {
  if (!writer()) return;
  const hsize_t row_size = std::accumulate(inner.begin(), inner.end(), hsize_t{1}, std::multiplies<>());
  Pending& p = pending(name, inner, integer, static_cast<std::size_t>(row_size));
  const std::size_t n = static_cast<std::size_t>(rows * row_size);
  if (integer) {
    const auto* v = static_cast<const std::int64_t*>(data);
    p.ibuf.insert(p.ibuf.end(), v, v + n);
  } else {
    const auto* v = static_cast<const double*>(data);
    p.dbuf.insert(p.dbuf.end(), v, v + n);
  }
}

const DatasetInfo& RunFile::checked_info(const std::string& path, std::size_t rank, bool integer) const {
  const DatasetInfo* info = nullptr;
  for (std::span<const DatasetInfo> t : tables_)
    if ((info = find_dataset(t, path))) break;
  MOESIM_REQUIRE(info, "dataset '" << path << "' is in no schema table of its run file");
  const std::size_t axes = axis_names(info->axes).size();
  MOESIM_REQUIRE(axes == rank, "dataset '" << path << "' has " << rank << " axes, its schema names " << axes
                                           << " (" << info->axes << ")");
  MOESIM_REQUIRE(info->type == (integer ? "int64" : "float64"),
                 "dataset '" << path << "' is " << (integer ? "int64" : "float64") << ", its schema says "
                             << info->type);
  return *info;
}

template <class T>
void RunFile::write_described(const std::string& path, const std::vector<hsize_t>& dims, const T* data) {
  if (!writer()) return;
  const auto slash = path.rfind('/');
  const hid_t loc = slash == std::string::npos ? file_.id() : group(path.substr(0, slash));
  const std::string name = path.substr(slash == std::string::npos ? 0 : slash + 1);
  const DatasetInfo& info = checked_info(path, dims.size(), std::is_integral_v<T>);
  h5::write_array(loc, name, dims, data);
  describe_dataset(loc, name, info);
}

void RunFile::write_array(const std::string& path, const std::vector<hsize_t>& dims,
                          const double* data) {
  write_described(path, dims, data);
}

void RunFile::write_array(const std::string& path, const std::vector<hsize_t>& dims,
                          const std::int64_t* data) {
  write_described(path, dims, data);
}

void RunFile::write_row_blocks(const Communicator& comm, const std::vector<RowBlock>& blocks) {
  std::vector<std::int64_t> before(blocks.size()), total(blocks.size());
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    std::int64_t local = blocks[i].rows;
    comm.exscan_sum(&local, &before[i], 1);
    total[i] = comm.allreduce_sum(local);
  }
  // Rank 0 writes what it buffered, lays the datasets out and closes its handle (the
  // file then changes hands); every rank writes its rows; rank 0 reopens it.
  auto layout = [&] {
    flush_local();
    std::vector<DatasetSpec> specs;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      std::vector<hsize_t> dims{static_cast<hsize_t>(total[i])};
      dims.insert(dims.end(), blocks[i].inner.begin(), blocks[i].inner.end());
      specs.push_back({blocks[i].path, dims, blocks[i].integer});
    }
    create_allocated(file_.id(), specs);
    series_.clear();
    groups_.clear();
    file_.reset();
  };
  write_rows_reserved(comm, path_, "'" + path_ + "'", layout, blocks.size(), [&](std::size_t i) {
    return RowWrite{blocks[i].path, static_cast<hsize_t>(before[i]), static_cast<hsize_t>(blocks[i].rows),
                    blocks[i].data, blocks[i].integer};
  });
  std::string error;
  if (comm.rank() == 0) {
    try {
      file_ = h5::open_file(path_, true);
      for (const RowBlock& b : blocks)
        describe_dataset(file_.id(), b.path, checked_info(b.path, 1 + b.inner.size(), b.integer));
      h5::flush(file_.id());
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  comm.agree_or_throw(error.empty(), "cannot reopen '" + path_ + "': " + error);
}

void RunFile::flush() {
  std::string error;
  try {
    ScopedTimer t(write_seconds_);
    flush_local();
  } catch (const std::exception& e) {
    error = e.what();
  }
  comm_->agree_or_throw(error.empty(), "cannot write '" + path_ + "': " + error);
}

void RunFile::flush_local() {
  if (!writer()) return;
  // A write HDF5 finds no space for leaves a file it can neither close nor read back, so
  // the space is checked first: the chunks the new rows open (64 rows each), the object
  // header and attributes of each new series, and room for metadata.
  std::uintmax_t need = 64 << 10;
  for (const auto& [name, p] : series_) {
    const std::uintmax_t have = p.created ? p.series.rows() : 0;
    const std::uintmax_t add = (p.dbuf.size() + p.ibuf.size()) / p.row_size;
    const std::uintmax_t chunks = (have + add + 63) / 64 - (have + 63) / 64;
    need += 8 * 64 * p.row_size * chunks + (p.created ? 0 : 4 << 10);
  }
  std::error_code ec;
  const std::filesystem::space_info sp = std::filesystem::space(path_, ec);
  if (!ec && sp.available < need)
    throw ConfigError("no space left on its device: " + std::to_string(sp.available >> 10) + " KiB free, " +
                      std::to_string(need >> 10) + " KiB needed for the next rows");
  const hid_t metrics = series_.empty() ? file_.id() : group("metrics");
  for (auto& [name, p] : series_) {
    if (!p.created) {
      const DatasetInfo& info = checked_info("metrics/" + name, 1 + p.inner.size(), p.integer);
      p.series = h5::Series(metrics, name, p.inner, p.integer);
      p.created = true;
      describe_dataset(metrics, name, info);
    }
    if (p.integer) {
      p.series.append(p.ibuf.data(), p.ibuf.size() / p.row_size);
      p.ibuf.clear();
    } else {
      p.series.append(p.dbuf.data(), p.dbuf.size() / p.row_size);
      p.dbuf.clear();
    }
  }
  try {
    h5::flush(file_.id());
  } catch (...) {
    abandon();
    throw;
  }
}

void RunFile::abandon() {
  // After a failed flush HDF5 cannot close the file (H5Fclose fails half-way and its
  // library shutdown in MPI_Finalize then crashes on the remains); left open, the
  // shutdown's own close fails quietly. What reached the disk stays, complete = 0.
  for (auto& [name, p] : series_) p.series.release();
  for (auto& [name, g] : groups_) g.release();
  series_.clear();
  groups_.clear();
  file_.release();
}

void RunFile::mark_complete() {
  flush();
  std::string error;
  if (writer()) {
    try {
      h5::write_attr(file_.id(), "end_time", iso_time_now());
      h5::write_attr(file_.id(), "complete", std::int64_t{1});
      series_.clear();
      groups_.clear();
      h5::flush(file_.id());
      file_.reset();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  comm_->agree_or_throw(error.empty(), "cannot complete '" + path_ + "': " + error);
}

}  // namespace moesim
