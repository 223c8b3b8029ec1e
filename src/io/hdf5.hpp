#pragma once
// Thin RAII layer over the HDF5 C API. Every call is checked; failures carry the
// expression, file, line and HDF5's own description of the innermost error.
#include <hdf5.h>
#include <mpi.h>

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "core/error.hpp"

namespace moesim::h5 {

std::string last_error();
void silence_default_error_printing();
// Before MPI_Init: opens the library without its shutdown hooks (see cli/main.cpp).
void start_without_shutdown();

}  // namespace moesim::h5

#define MOESIM_H5_CHECK(expr)                                                               \
  ([&]() {                                                                                  \
    auto moesim_h5_rc_ = (expr);                                                            \
    if (moesim_h5_rc_ < 0)                                                                  \
      ::moesim::throw_runtime("HDF5 call failed", #expr, __FILE__, __LINE__,                \
                              ::moesim::h5::last_error());                                  \
    return moesim_h5_rc_;                                                                   \
  }())

namespace moesim::h5 {

// Owns one hid_t and closes it with the matching H5*close.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(o.id_), closer_(o.closer_) { o.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_;
      closer_ = o.closer_;
      o.id_ = H5I_INVALID_HID;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t id() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset() {
    if (id_ >= 0 && closer_) closer_(id_);
    id_ = H5I_INVALID_HID;
  }
  // Gives the id up without closing it (a parallel file that cannot be closed safely).
  hid_t release() {
    const hid_t id = id_;
    id_ = H5I_INVALID_HID;
    return id;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

using AttrValue = std::variant<std::int64_t, double, std::string>;

Handle create_file(const std::string& path);  // truncates
Handle open_file(const std::string& path, bool writable);
// Read-only, for a file the user named: one that HDF5 cannot open (truncated, corrupt, not
// HDF5) is bad input, a ConfigError with HDF5's reason.
Handle open_user_file(const std::string& path);
Handle create_group(hid_t loc, const std::string& name);
Handle open_group(hid_t loc, const std::string& name);
bool exists(hid_t loc, const std::string& name);
void flush(hid_t file);

void write_attr(hid_t obj, const std::string& name, const AttrValue& v);
// A 1-D attribute of variable-length UTF-8 strings (h5py: an array of str).
void write_attr_strings(hid_t obj, const std::string& name, const std::vector<std::string>& values);
std::int64_t read_attr_int(hid_t obj, const std::string& name);
double read_attr_double(hid_t obj, const std::string& name);
std::string read_attr_string(hid_t obj, const std::string& name);

// A dataset of shape (rows, inner...) that grows along its first axis.
class Series {
 public:
  Series() = default;
  Series(hid_t loc, const std::string& name, std::vector<hsize_t> inner, bool integer);
  void append(const void* rows, hsize_t n);
  hsize_t rows() const { return rows_; }
  void release() { dset_.release(); }  // see Handle::release

 private:
  Handle dset_;
  std::vector<hsize_t> inner_;
  bool integer_ = false;
  hsize_t rows_ = 0;
};

void write_array(hid_t loc, const std::string& name, const std::vector<hsize_t>& dims,
                 const double* data);
void write_array(hid_t loc, const std::string& name, const std::vector<hsize_t>& dims,
                 const std::int64_t* data);
// A 1-D dataset of variable-length UTF-8 strings (h5py reads them as bytes/str).
void write_strings(hid_t loc, const std::string& name, const std::vector<std::string>& values);
// A 1-D dataset of booleans in h5py's own form (an enum FALSE = 0, TRUE = 1 over int8):
// numpy and pandas read it as bool.
void write_bools(hid_t loc, const std::string& name, const std::vector<bool>& values);
// What a dataset holds, as attributes every reader can see: `units`, `description` and
// `axes` (one name per axis, first axis first).
void describe_dataset(hid_t loc, const std::string& name, const std::string& units,
                      const std::string& description, const std::vector<std::string>& axes);
std::vector<double> read_array(hid_t loc, const std::string& name, std::vector<hsize_t>* dims);
std::vector<std::int64_t> read_array_int(hid_t loc, const std::string& name, std::vector<hsize_t>* dims);
std::vector<hsize_t> dataset_dims(hid_t loc, const std::string& name);
bool dataset_is_integer(hid_t loc, const std::string& name);
// Names of the links (datasets, groups) directly in group `loc`, in name order.
std::vector<std::string> list_links(hid_t loc);

// Parallel HDF5 (MPI-IO). COLLECTIVE over `comm`: every rank opens or creates the file
// and every metadata call (dataset creation) must be made by all ranks with equal
// arguments; data transfers below are collective too.
Handle open_file_mpi(MPI_Comm comm, const std::string& path, bool writable);
Handle create_file_mpi(MPI_Comm comm, const std::string& path);  // truncates
Handle create_dataset(hid_t loc, const std::string& name, const std::vector<hsize_t>& dims,
                      bool integer);
// Rows [first, first + count) of a dataset whose first axis is rows (count may be 0).
void write_rows(hid_t dset, hsize_t first, hsize_t count, const void* data, bool integer);
void read_rows(hid_t dset, hsize_t first, hsize_t count, double* out);

}  // namespace moesim::h5
