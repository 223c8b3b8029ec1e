#pragma once
// Parallel HDF5 writes that fail cleanly. HDF5 cannot close a parallel file after a write
// failed on some ranks only (a full disk): the ranks take different paths inside H5Fclose
// and hang. So the ranks are only ever given data to put into space already held: rank 0
// lays the datasets out serially and reserves the file's bytes on disk, where a full disk
// is an ordinary error agreed on every rank, and only then do all ranks write their rows.
#include <functional>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "io/hdf5.hpp"

namespace moesim {

struct DatasetSpec {
  std::string path;            // e.g. "experts/block0.moe.expert.w1/value"; groups made as needed
  std::vector<hsize_t> dims;
  bool integer = false;
};

struct RowWrite {
  std::string path;            // an existing dataset
  hsize_t first = 0, count = 0;  // this rank's rows along the first axis (count may be 0)
  const void* data = nullptr;    // valid until the next RowWrite is asked for
  bool integer = false;
};

// Rank 0 only, on its serial handle: creates `specs` with their storage allocated now
// (contiguous), so that the parallel phase changes no metadata.
void create_allocated(hid_t file, const std::vector<DatasetSpec>& specs);

// Rank 0 only, on a closed file: makes the filesystem hold every byte of it, so later
// writes inside it cannot run out of space. Throws ConfigError naming the size and the cause.
void reserve_file_space(const std::string& path);

// COLLECTIVE. Rank 0 runs `layout` (it opens or creates the file, writes what it alone
// knows, creates the datasets with create_allocated and closes it), then reserves the
// file's space; a failure there is a ConfigError on every rank, nothing else written.
// Then every rank opens the file with MPI-IO and writes rows(0), ..., rows(n - 1) (the same
// n and paths on every rank). `what` names the file in errors, e.g. "checkpoint 'c.h5.tmp'".
void write_rows_reserved(const Communicator& comm, const std::string& path, const std::string& what,
                         const std::function<void()>& layout, std::size_t n,
                         const std::function<RowWrite(std::size_t)>& rows);

}  // namespace moesim
