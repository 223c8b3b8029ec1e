#pragma once
// One HDF5 file per run. Layout (schema_version 2; version 1 had no data_seed: `seed` drew
// both the task and the model):
//   /            attributes: schema_version, complete, kind, every resolved option,
//                provenance (version, git_revision, ranks, nodes, ranks_per_node[_min], host,
//                start/end time, slurm_*)
//   /metrics/*   per-step datasets, first axis = step, appended as the run goes
//   /final       attributes with the end-of-run results
// `complete` is 0 from creation and set to 1 only after everything else is written
// and flushed, so a killed run never looks finished.
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.hpp"
#include "core/tensor.hpp"
#include "io/dataset_info.hpp"
#include "io/hdf5.hpp"
#include "io/output_lock.hpp"

namespace moesim {

constexpr std::int64_t kSchemaVersion = 2;

using AttrList = std::vector<std::pair<std::string, h5::AttrValue>>;

// One option as a run file stores it: `key` with dashes as underscores, its value (a switch
// as 0/1, `boolean` set), and its --help text.
struct OptionSetting {
  std::string key;
  h5::AttrValue value;
  bool boolean = false;
  std::string help;
};

// COLLECTIVE. Build and run facts for run files: version, compiler, ranks, nodes and ranks
// per node (`virtual_ranks_per_node` G > 0: virtual nodes of G consecutive ranks, as
// --ranks-per-node sets them; the machine's nodes are recorded as well), host, start time,
// the Slurm job.
AttrList provenance_attrs(const Communicator& comm, int virtual_ranks_per_node = 0);
std::string iso_time_now();

class RunFile {
  struct Pending;

 public:
  // COLLECTIVE. Rank 0 takes the file's OutputLock (another run writing it is refused
  // before anything is touched) and creates the file (and its directory); any failure
  // becomes a ConfigError on every rank. Other ranks get an inert object. `comm` must
  // outlive the RunFile.
  static std::unique_ptr<RunFile> create(const Communicator& comm, const std::string& path,
                                         const std::string& kind);
  // COLLECTIVE. What create() would refuse (an uncreatable directory, an unwritable place,
  // another run writing the file), found without touching the file: for runs that compute
  // everything before they write, so that their errors leave an earlier file as it was.
  static void check_creatable(const Communicator& comm, const std::string& path);
  ~RunFile();

  bool writer() const { return file_.valid(); }
  // Adds a table describing datasets of this file (it must outlive the RunFile). Every
  // dataset the file creates gets `units`, `description` and `axes` from its entry; one that
  // no table names, or whose rank or type differs from its entry, is refused.
  // Adding a table twice adds it once.
  void describe_with(std::span<const DatasetInfo> table) {
    for (std::span<const DatasetInfo> t : tables_)
      if (t.data() == table.data()) return;
    tables_.push_back(table);
  }
  void root_attrs(const AttrList& attrs);
  // The run's options as root attributes, and their names in the root attribute
  // `option_names`, so that a reader tells them from provenance and results.
  void option_attrs(const AttrList& options);
  void group_attrs(const std::string& group, const AttrList& attrs);
  // A per-step series found once, so that appending to it looks nothing up. Null on ranks
  // that do not write (appending to it does nothing); valid until write_row_blocks() or
  // mark_complete(), which let the series go.
  class Slot {
    friend class RunFile;
    Pending* p_ = nullptr;
  };
  Slot slot(const std::string& name, const std::vector<hsize_t>& inner, bool integer);
  // Buffers one row (prod(inner) values) of the slot's series.
  void append(Slot s, const double* row, std::size_t n);
  void append(Slot s, const std::int64_t* row, std::size_t n);
  // Buffers one step's row of a per-step dataset metrics/<name> with shape `inner`.
  void append(const std::string& name, const std::vector<double>& row,
              const std::vector<hsize_t>& inner = {});
  void append(const std::string& name, const std::vector<std::int64_t>& row,
              const std::vector<hsize_t>& inner = {});
  void write_array(const std::string& path, const std::vector<hsize_t>& dims, const double* data);
  // COLLECTIVE. Datasets whose rows are spread over ranks (local rows in rank order),
  // written with parallel HDF5: rank 0 closes its handle, every rank opens the file
  // with MPI-IO and writes its rows, then rank 0 reopens it.
  struct RowBlock {
    std::string path;                 // e.g. "oof/predictions"; its group must exist
    const void* data = nullptr;       // local rows x cols, row-major
    Index rows = 0;
    std::vector<hsize_t> inner;       // shape after the row axis
    bool integer = false;
  };
  void write_row_blocks(const Communicator& comm, const std::vector<RowBlock>& blocks);
  void write_array(const std::string& path, const std::vector<hsize_t>& dims,
                   const std::int64_t* data);
  // Creates group `name` (rank 0) so that collective writes can place datasets in it.
  void ensure_group(const std::string& name) {
    if (writer()) group(name);
  }
  // Buffers `rows` rows at once of metrics/<name> (data: rows x prod(inner), row-major),
  // e.g. the history a checkpoint carries into a resumed run's file.
  void append_rows(const std::string& name, const std::vector<hsize_t>& inner, bool integer,
                   const void* data, hsize_t rows);
  // COLLECTIVE. Writes buffered rows and flushes the file to disk; a failure (a full
  // disk) is a ConfigError on every rank.
  void flush();
  // Seconds this rank spent writing in flush() (the writer's HDF5 work; the agreement after
  // it is the ranks waiting for one another, not logging).
  double write_seconds() const { return write_seconds_; }
  // The open file on the writer (rank 0), after flush(): for copying its groups elsewhere.
  hid_t file_id() const { return file_.id(); }
  // COLLECTIVE. Flushes, then sets complete = 1 and closes.
  void mark_complete();
  const std::string& path() const { return path_; }

 private:
  RunFile() = default;
  struct Pending {
    h5::Series series;
    std::vector<hsize_t> inner;
    bool integer = false;
    std::vector<double> dbuf;
    std::vector<std::int64_t> ibuf;
    hsize_t row_size = 1;
    bool created = false;
  };
  Pending& pending(const std::string& name, const std::vector<hsize_t>& inner, bool integer,
                   std::size_t row_len);
  hid_t group(const std::string& name);
  void flush_local();  // rank 0's part of flush()
  // The table entry of dataset `path`, checked against the rank and type it is created with.
  const DatasetInfo& checked_info(const std::string& path, std::size_t rank, bool integer) const;
  template <class T>
  void write_described(const std::string& path, const std::vector<hsize_t>& dims, const T* data);
  void abandon();

  const Communicator* comm_ = nullptr;
  OutputLock lock_;
  double write_seconds_ = 0;
  std::string path_;
  h5::Handle file_;
  std::map<std::string, h5::Handle> groups_;
  std::map<std::string, Pending> series_;
  std::vector<std::span<const DatasetInfo>> tables_;
};

}  // namespace moesim
