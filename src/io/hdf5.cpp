#include "io/hdf5.hpp"

#include <algorithm>
#include <numeric>

namespace moesim::h5 {

namespace {
herr_t walk_innermost(unsigned n, const H5E_error2_t* err, void* out) {
  // The stack is walked from the innermost frame; keep that one only.
  if (n == 0) *static_cast<std::string*>(out) = err->desc ? err->desc : "";
  return 0;
}
}  // namespace

std::string last_error() {
  std::string msg;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_innermost, &msg);
  if (msg.empty()) return "no HDF5 error description";
  // A failed system call: HDF5 dumps its whole state; keep its first words and the cause.
  const std::string key = "error message = '";
  const auto at = msg.find(key);
  if (at != std::string::npos) {
    const auto end = msg.find('\'', at + key.size());
    return msg.substr(0, std::min(msg.find(':'), msg.find(','))) + ": " +
           msg.substr(at + key.size(), end == std::string::npos ? std::string::npos : end - at - key.size());
  }
  return msg;
}

void silence_default_error_printing() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

void start_without_shutdown() {
  MOESIM_H5_CHECK(H5dont_atexit());
  MOESIM_H5_CHECK(H5open());
}

Handle create_file(const std::string& path) {
  return Handle(MOESIM_H5_CHECK(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)),
                H5Fclose);
}

Handle open_file(const std::string& path, bool writable) {
  return Handle(MOESIM_H5_CHECK(H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY,
                                        H5P_DEFAULT)),
                H5Fclose);
}

Handle open_user_file(const std::string& path) {
  const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id < 0) throw ConfigError("not a readable HDF5 file (" + last_error() + ")");
  return Handle(id, H5Fclose);
}

Handle create_group(hid_t loc, const std::string& name) {
  return Handle(MOESIM_H5_CHECK(H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)),
                H5Gclose);
}

Handle open_group(hid_t loc, const std::string& name) {
  return Handle(MOESIM_H5_CHECK(H5Gopen2(loc, name.c_str(), H5P_DEFAULT)), H5Gclose);
}

bool exists(hid_t loc, const std::string& name) {
  return MOESIM_H5_CHECK(H5Lexists(loc, name.c_str(), H5P_DEFAULT)) > 0;
}

void flush(hid_t file) { MOESIM_H5_CHECK(H5Fflush(file, H5F_SCOPE_GLOBAL)); }

void write_attr(hid_t obj, const std::string& name, const AttrValue& v) {
  if (MOESIM_H5_CHECK(H5Aexists(obj, name.c_str())) > 0)
    MOESIM_H5_CHECK(H5Adelete(obj, name.c_str()));
  Handle space(MOESIM_H5_CHECK(H5Screate(H5S_SCALAR)), H5Sclose);
  if (const auto* i = std::get_if<std::int64_t>(&v)) {
    Handle a(MOESIM_H5_CHECK(H5Acreate2(obj, name.c_str(), H5T_STD_I64LE, space.id(), H5P_DEFAULT,
                                        H5P_DEFAULT)),
             H5Aclose);
    MOESIM_H5_CHECK(H5Awrite(a.id(), H5T_NATIVE_INT64, i));
  } else if (const auto* d = std::get_if<double>(&v)) {
    Handle a(MOESIM_H5_CHECK(H5Acreate2(obj, name.c_str(), H5T_IEEE_F64LE, space.id(), H5P_DEFAULT,
                                        H5P_DEFAULT)),
             H5Aclose);
    MOESIM_H5_CHECK(H5Awrite(a.id(), H5T_NATIVE_DOUBLE, d));
  } else {
    // Variable-length UTF-8 strings: h5py reads them as str.
    const std::string& s = std::get<std::string>(v);
    Handle type(MOESIM_H5_CHECK(H5Tcopy(H5T_C_S1)), H5Tclose);
    MOESIM_H5_CHECK(H5Tset_size(type.id(), H5T_VARIABLE));
    MOESIM_H5_CHECK(H5Tset_cset(type.id(), H5T_CSET_UTF8));
    Handle a(MOESIM_H5_CHECK(H5Acreate2(obj, name.c_str(), type.id(), space.id(), H5P_DEFAULT,
                                        H5P_DEFAULT)),
             H5Aclose);
    const char* p = s.c_str();
    MOESIM_H5_CHECK(H5Awrite(a.id(), type.id(), &p));
  }
}

namespace {
Handle utf8_string_type() {
  Handle type(MOESIM_H5_CHECK(H5Tcopy(H5T_C_S1)), H5Tclose);
  MOESIM_H5_CHECK(H5Tset_size(type.id(), H5T_VARIABLE));
  MOESIM_H5_CHECK(H5Tset_cset(type.id(), H5T_CSET_UTF8));
  return type;
}
}  // namespace

void write_attr_strings(hid_t obj, const std::string& name, const std::vector<std::string>& values) {
  if (MOESIM_H5_CHECK(H5Aexists(obj, name.c_str())) > 0)
    MOESIM_H5_CHECK(H5Adelete(obj, name.c_str()));
  const Handle type = utf8_string_type();
  const hsize_t n = values.size();
  Handle space(MOESIM_H5_CHECK(H5Screate_simple(1, &n, nullptr)), H5Sclose);
  Handle a(MOESIM_H5_CHECK(H5Acreate2(obj, name.c_str(), type.id(), space.id(), H5P_DEFAULT, H5P_DEFAULT)),
           H5Aclose);
  std::vector<const char*> ptrs;
  for (const std::string& v : values) ptrs.push_back(v.c_str());
  if (n > 0) MOESIM_H5_CHECK(H5Awrite(a.id(), type.id(), ptrs.data()));
}

void describe_dataset(hid_t loc, const std::string& name, const std::string& units,
                      const std::string& description, const std::vector<std::string>& axes) {
  Handle d(MOESIM_H5_CHECK(H5Dopen2(loc, name.c_str(), H5P_DEFAULT)), H5Dclose);
  write_attr(d.id(), "units", units);
  write_attr(d.id(), "description", description);
  write_attr_strings(d.id(), "axes", axes);
}

std::int64_t read_attr_int(hid_t obj, const std::string& name) {
  Handle a(MOESIM_H5_CHECK(H5Aopen(obj, name.c_str(), H5P_DEFAULT)), H5Aclose);
  std::int64_t v = 0;
  MOESIM_H5_CHECK(H5Aread(a.id(), H5T_NATIVE_INT64, &v));
  return v;
}

double read_attr_double(hid_t obj, const std::string& name) {
  Handle a(MOESIM_H5_CHECK(H5Aopen(obj, name.c_str(), H5P_DEFAULT)), H5Aclose);
  double v = 0;
  MOESIM_H5_CHECK(H5Aread(a.id(), H5T_NATIVE_DOUBLE, &v));
  return v;
}

std::string read_attr_string(hid_t obj, const std::string& name) {
  Handle a(MOESIM_H5_CHECK(H5Aopen(obj, name.c_str(), H5P_DEFAULT)), H5Aclose);
  Handle type(MOESIM_H5_CHECK(H5Tcopy(H5T_C_S1)), H5Tclose);
  MOESIM_H5_CHECK(H5Tset_size(type.id(), H5T_VARIABLE));
  MOESIM_H5_CHECK(H5Tset_cset(type.id(), H5T_CSET_UTF8));
  char* p = nullptr;
  MOESIM_H5_CHECK(H5Aread(a.id(), type.id(), &p));
  std::string s = p ? p : "";
  H5free_memory(p);
  return s;
}

Series::Series(hid_t loc, const std::string& name, std::vector<hsize_t> inner, bool integer)
    : inner_(std::move(inner)), integer_(integer) {
  std::vector<hsize_t> dims{0}, maxdims{H5S_UNLIMITED}, chunk{64};
  for (hsize_t d : inner_) {
    dims.push_back(d);
    maxdims.push_back(d);
    chunk.push_back(d);
  }
  Handle space(MOESIM_H5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(),
                                                maxdims.data())),
               H5Sclose);
  Handle plist(MOESIM_H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)), H5Pclose);
  MOESIM_H5_CHECK(H5Pset_chunk(plist.id(), static_cast<int>(chunk.size()), chunk.data()));
  dset_ = Handle(MOESIM_H5_CHECK(H5Dcreate2(loc, name.c_str(),
                                            integer_ ? H5T_STD_I64LE : H5T_IEEE_F64LE, space.id(),
                                            H5P_DEFAULT, plist.id(), H5P_DEFAULT)),
                 H5Dclose);
}

void Series::append(const void* data, hsize_t n) {
  if (n == 0) return;
  std::vector<hsize_t> dims{rows_ + n}, start{rows_}, count{n};
  for (hsize_t d : inner_) {
    dims.push_back(d);
    start.push_back(0);
    count.push_back(d);
  }
  MOESIM_H5_CHECK(H5Dset_extent(dset_.id(), dims.data()));
  Handle fspace(MOESIM_H5_CHECK(H5Dget_space(dset_.id())), H5Sclose);
  MOESIM_H5_CHECK(H5Sselect_hyperslab(fspace.id(), H5S_SELECT_SET, start.data(), nullptr,
                                      count.data(), nullptr));
  Handle mspace(MOESIM_H5_CHECK(H5Screate_simple(static_cast<int>(count.size()), count.data(),
                                                 nullptr)),
                H5Sclose);
  MOESIM_H5_CHECK(H5Dwrite(dset_.id(), integer_ ? H5T_NATIVE_INT64 : H5T_NATIVE_DOUBLE,
                           mspace.id(), fspace.id(), H5P_DEFAULT, data));
  rows_ += n;
}

namespace {
void write_array_typed(hid_t loc, const std::string& name, const std::vector<hsize_t>& dims,
                       hid_t file_type, hid_t mem_type, const void* data) {
  Handle space(MOESIM_H5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)),
               H5Sclose);
  Handle d(MOESIM_H5_CHECK(H5Dcreate2(loc, name.c_str(), file_type, space.id(), H5P_DEFAULT,
                                      H5P_DEFAULT, H5P_DEFAULT)),
           H5Dclose);
  MOESIM_H5_CHECK(H5Dwrite(d.id(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data));
}
}  // namespace

void write_array(hid_t loc, const std::string& name, const std::vector<hsize_t>& dims,
                 const double* data) {
  write_array_typed(loc, name, dims, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, data);
}

void write_array(hid_t loc, const std::string& name, const std::vector<hsize_t>& dims,
                 const std::int64_t* data) {
  write_array_typed(loc, name, dims, H5T_STD_I64LE, H5T_NATIVE_INT64, data);
}

void write_strings(hid_t loc, const std::string& name, const std::vector<std::string>& values) {
  Handle type(MOESIM_H5_CHECK(H5Tcopy(H5T_C_S1)), H5Tclose);
  MOESIM_H5_CHECK(H5Tset_size(type.id(), H5T_VARIABLE));
  MOESIM_H5_CHECK(H5Tset_cset(type.id(), H5T_CSET_UTF8));
  const hsize_t n = values.size();
  Handle space(MOESIM_H5_CHECK(H5Screate_simple(1, &n, nullptr)), H5Sclose);
  Handle d(MOESIM_H5_CHECK(H5Dcreate2(loc, name.c_str(), type.id(), space.id(), H5P_DEFAULT,
                                      H5P_DEFAULT, H5P_DEFAULT)),
           H5Dclose);
  std::vector<const char*> ptrs;
  for (const std::string& v : values) ptrs.push_back(v.c_str());
  if (n > 0) MOESIM_H5_CHECK(H5Dwrite(d.id(), type.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()));
}

void write_bools(hid_t loc, const std::string& name, const std::vector<bool>& values) {
  Handle type(MOESIM_H5_CHECK(H5Tenum_create(H5T_NATIVE_INT8)), H5Tclose);
  const std::int8_t f = 0, t = 1;
  MOESIM_H5_CHECK(H5Tenum_insert(type.id(), "FALSE", &f));
  MOESIM_H5_CHECK(H5Tenum_insert(type.id(), "TRUE", &t));
  const hsize_t n = values.size();
  Handle space(MOESIM_H5_CHECK(H5Screate_simple(1, &n, nullptr)), H5Sclose);
  Handle d(MOESIM_H5_CHECK(H5Dcreate2(loc, name.c_str(), type.id(), space.id(), H5P_DEFAULT, H5P_DEFAULT,
                                      H5P_DEFAULT)),
           H5Dclose);
  std::vector<std::int8_t> v(values.begin(), values.end());
  if (n > 0) MOESIM_H5_CHECK(H5Dwrite(d.id(), type.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()));
}

std::vector<double> read_array(hid_t loc, const std::string& name, std::vector<hsize_t>* dims) {
  Handle d(MOESIM_H5_CHECK(H5Dopen2(loc, name.c_str(), H5P_DEFAULT)), H5Dclose);
  Handle space(MOESIM_H5_CHECK(H5Dget_space(d.id())), H5Sclose);
  const int rank = MOESIM_H5_CHECK(H5Sget_simple_extent_ndims(space.id()));
  std::vector<hsize_t> shape(static_cast<std::size_t>(rank));
  MOESIM_H5_CHECK(H5Sget_simple_extent_dims(space.id(), shape.data(), nullptr));
  const hsize_t total = std::accumulate(shape.begin(), shape.end(), hsize_t{1}, std::multiplies<>());
  std::vector<double> out(static_cast<std::size_t>(total));
  if (total > 0)
    MOESIM_H5_CHECK(H5Dread(d.id(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()));
  if (dims) *dims = shape;
  return out;
}

std::vector<std::int64_t> read_array_int(hid_t loc, const std::string& name,
                                         std::vector<hsize_t>* dims) {
  Handle d(MOESIM_H5_CHECK(H5Dopen2(loc, name.c_str(), H5P_DEFAULT)), H5Dclose);
  Handle space(MOESIM_H5_CHECK(H5Dget_space(d.id())), H5Sclose);
  const int rank = MOESIM_H5_CHECK(H5Sget_simple_extent_ndims(space.id()));
  std::vector<hsize_t> shape(static_cast<std::size_t>(rank));
  MOESIM_H5_CHECK(H5Sget_simple_extent_dims(space.id(), shape.data(), nullptr));
  const hsize_t total = std::accumulate(shape.begin(), shape.end(), hsize_t{1}, std::multiplies<>());
  std::vector<std::int64_t> out(static_cast<std::size_t>(total));
  if (total > 0)
    MOESIM_H5_CHECK(H5Dread(d.id(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()));
  if (dims) *dims = shape;
  return out;
}

bool dataset_is_integer(hid_t loc, const std::string& name) {
  Handle d(MOESIM_H5_CHECK(H5Dopen2(loc, name.c_str(), H5P_DEFAULT)), H5Dclose);
  Handle type(MOESIM_H5_CHECK(H5Dget_type(d.id())), H5Tclose);
  return MOESIM_H5_CHECK(H5Tget_class(type.id())) == H5T_INTEGER;
}

std::vector<std::string> list_links(hid_t loc) {
  H5G_info_t info;
  MOESIM_H5_CHECK(H5Gget_info(loc, &info));
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t n = MOESIM_H5_CHECK(H5Lget_name_by_idx(loc, ".", H5_INDEX_NAME, H5_ITER_INC, i,
                                                         nullptr, 0, H5P_DEFAULT));
    std::string name(static_cast<std::size_t>(n), '\0');
    MOESIM_H5_CHECK(H5Lget_name_by_idx(loc, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(),
                                       static_cast<std::size_t>(n) + 1, H5P_DEFAULT));
    names.push_back(std::move(name));
  }
  return names;
}

std::vector<hsize_t> dataset_dims(hid_t loc, const std::string& name) {
  Handle d(MOESIM_H5_CHECK(H5Dopen2(loc, name.c_str(), H5P_DEFAULT)), H5Dclose);
  Handle space(MOESIM_H5_CHECK(H5Dget_space(d.id())), H5Sclose);
  const int rank = MOESIM_H5_CHECK(H5Sget_simple_extent_ndims(space.id()));
  std::vector<hsize_t> shape(static_cast<std::size_t>(rank));
  MOESIM_H5_CHECK(H5Sget_simple_extent_dims(space.id(), shape.data(), nullptr));
  return shape;
}

Handle open_file_mpi(MPI_Comm comm, const std::string& path, bool writable) {
  Handle fapl(MOESIM_H5_CHECK(H5Pcreate(H5P_FILE_ACCESS)), H5Pclose);
  MOESIM_H5_CHECK(H5Pset_fapl_mpio(fapl.id(), comm, MPI_INFO_NULL));
  return Handle(MOESIM_H5_CHECK(H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY,
                                        fapl.id())),
                H5Fclose);
}

Handle create_file_mpi(MPI_Comm comm, const std::string& path) {
  Handle fapl(MOESIM_H5_CHECK(H5Pcreate(H5P_FILE_ACCESS)), H5Pclose);
  MOESIM_H5_CHECK(H5Pset_fapl_mpio(fapl.id(), comm, MPI_INFO_NULL));
  return Handle(MOESIM_H5_CHECK(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id())),
                H5Fclose);
}

Handle create_dataset(hid_t loc, const std::string& name, const std::vector<hsize_t>& dims,
                      bool integer) {
  Handle space(MOESIM_H5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)),
               H5Sclose);
  return Handle(MOESIM_H5_CHECK(H5Dcreate2(loc, name.c_str(), integer ? H5T_STD_I64LE : H5T_IEEE_F64LE,
                                           space.id(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)),
                H5Dclose);
}

namespace {
// File and memory selections for rows [first, first + count) of `dset`.
std::pair<Handle, Handle> row_selection(hid_t dset, hsize_t first, hsize_t count) {
  Handle fspace(MOESIM_H5_CHECK(H5Dget_space(dset)), H5Sclose);
  const int rank = MOESIM_H5_CHECK(H5Sget_simple_extent_ndims(fspace.id()));
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  MOESIM_H5_CHECK(H5Sget_simple_extent_dims(fspace.id(), dims.data(), nullptr));
  std::vector<hsize_t> start(dims.size(), 0), cnt = dims;
  start[0] = first;
  cnt[0] = count;
  if (count == 0) {
    MOESIM_H5_CHECK(H5Sselect_none(fspace.id()));
  } else {
    MOESIM_H5_CHECK(H5Sselect_hyperslab(fspace.id(), H5S_SELECT_SET, start.data(), nullptr,
                                        cnt.data(), nullptr));
  }
  Handle mspace(MOESIM_H5_CHECK(H5Screate_simple(static_cast<int>(cnt.size()), cnt.data(), nullptr)),
                H5Sclose);
  if (count == 0) MOESIM_H5_CHECK(H5Sselect_none(mspace.id()));
  return {std::move(fspace), std::move(mspace)};
}

Handle collective_transfer() {
  Handle dxpl(MOESIM_H5_CHECK(H5Pcreate(H5P_DATASET_XFER)), H5Pclose);
  MOESIM_H5_CHECK(H5Pset_dxpl_mpio(dxpl.id(), H5FD_MPIO_COLLECTIVE));
  return dxpl;
}
}  // namespace

void write_rows(hid_t dset, hsize_t first, hsize_t count, const void* data, bool integer) {
  auto [fspace, mspace] = row_selection(dset, first, count);
  Handle dxpl = collective_transfer();
  MOESIM_H5_CHECK(H5Dwrite(dset, integer ? H5T_NATIVE_INT64 : H5T_NATIVE_DOUBLE, mspace.id(),
                           fspace.id(), dxpl.id(), data));
}

void read_rows(hid_t dset, hsize_t first, hsize_t count, double* out) {
  auto [fspace, mspace] = row_selection(dset, first, count);
  Handle dxpl = collective_transfer();
  MOESIM_H5_CHECK(H5Dread(dset, H5T_NATIVE_DOUBLE, mspace.id(), fspace.id(), dxpl.id(), out));
}

}  // namespace moesim::h5
