#include "sweep/summary.hpp"

#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <set>

#include "io/hdf5.hpp"
#include "io/output_lock.hpp"
#include "io/run_file.hpp"

namespace moesim {

namespace {

bool is_number(const std::string& s, double& v) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && p == s.data() + s.size();
}

herr_t collect_attr(hid_t obj, const char* name, const H5A_info_t*, void* out) {
  auto* m = static_cast<std::map<std::string, double>*>(out);
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  if (a < 0) return 0;
  hid_t t = H5Aget_type(a);
  const H5T_class_t cls = H5Tget_class(t);
  hid_t space = H5Aget_space(a);
  const bool scalar = H5Sget_simple_extent_npoints(space) == 1;
  double v = 0;
  if (scalar && (cls == H5T_INTEGER || cls == H5T_FLOAT) && H5Aread(a, H5T_NATIVE_DOUBLE, &v) >= 0)
    (*m)[name] = v;
  H5Sclose(space);
  H5Tclose(t);
  H5Aclose(a);
  return 0;
}

}  // namespace

std::string run_file_of(const std::string& dir, const SweepPoint& p) {
  return (std::filesystem::path(dir) / (p.id + ".h5")).string();
}

PointStatus point_status(const std::string& run_file) {
  if (!std::filesystem::exists(run_file)) return {"pending", ""};
  h5::silence_default_error_printing();
  try {
    h5::Handle f = h5::open_file(run_file, false);
    if (H5Aexists(f.id(), "complete") > 0 && h5::read_attr_int(f.id(), "complete") == 1) return {"complete", ""};
    if (H5Aexists(f.id(), "status") > 0) {
      const std::string st = h5::read_attr_string(f.id(), "status");
      if (st == "failed" || st == "invalid")
        return {st, H5Aexists(f.id(), "error") > 0 ? h5::read_attr_string(f.id(), "error") : ""};
    }
    return {"incomplete", ""};
  } catch (const std::exception& e) {
    return {"incomplete", std::string("unreadable: ") + e.what()};
  }
}

std::string point_result(const std::string& run_file) {
  h5::silence_default_error_printing();
  try {
    h5::Handle f = h5::open_file(run_file, false);
    if (!h5::exists(f.id(), "final")) return "";
    h5::Handle g = h5::open_group(f.id(), "final");
    for (const char* key : {"val_loss", "rmse_after_calibration", "test_accuracy", "test_rmse"}) {
      if (H5Aexists(g.id(), key) <= 0) continue;
      char buf[64];
      std::snprintf(buf, sizeof buf, "%s %.5f", key, h5::read_attr_double(g.id(), key));
      return buf;
    }
  } catch (const std::exception&) {
  }
  return "";
}

PointStatus sweep_status(const std::string& run_file, const std::string& invalid_reason) {
  PointStatus st = point_status(run_file);
  if (!invalid_reason.empty() && st.status != "complete") st = {"invalid", invalid_reason};
  return st;
}

namespace {

void record_status(const std::string& run_file, const SweepPoint& p, const std::string& command,
                   const std::string& status, const std::string& error) {
  // A point another run is writing now (a concurrent array task) is that run's to record.
  if (output_locked(run_file)) return;
  h5::Handle f;
  if (std::filesystem::exists(run_file)) {
    try {
      f = h5::open_file(run_file, true);
    } catch (const std::exception&) {
      std::filesystem::remove(run_file);  // a run that died mid-write: start the record afresh
    }
  }
  if (f.valid() && H5Aexists(f.id(), "complete") > 0 && h5::read_attr_int(f.id(), "complete") == 1) return;
  if (!f.valid()) {
    f = h5::create_file(run_file);
    h5::write_attr(f.id(), "schema_version", kSchemaVersion);
    h5::write_attr(f.id(), "complete", std::int64_t{0});
    h5::write_attr(f.id(), "kind", command);
    for (const auto& [k, v] : p.values) {
      std::string key = k;
      for (char& c : key)
        if (c == '-') c = '_';
      h5::write_attr(f.id(), key, v);
    }
  }
  h5::write_attr(f.id(), "status", status);
  h5::write_attr(f.id(), "error", error);
  h5::write_attr(f.id(), "sweep_point_id", p.id);
  h5::flush(f.id());
}

}  // namespace

void record_failure(const std::string& run_file, const SweepPoint& p, const std::string& command,
                    const std::string& error) {
  record_status(run_file, p, command, "failed", error);
}

void record_invalid(const std::string& run_file, const SweepPoint& p, const std::string& command,
                    const std::string& reason) {
  record_status(run_file, p, command, "invalid", reason);
}

void write_summary(const std::string& dir, const SweepConfig& cfg, const std::vector<SweepPoint>& points,
                   const std::vector<std::string>& invalid_reasons) {
  h5::silence_default_error_printing();
  char host[128] = {0};
  gethostname(host, sizeof host - 1);
  const std::filesystem::path final_path = std::filesystem::path(dir) / "sweep.h5";
  const std::filesystem::path tmp = std::filesystem::path(dir) /
      (".sweep.h5." + std::string(host) + "." + std::to_string(getpid()) + ".tmp");
  const std::size_t n = points.size();
  std::vector<std::string> ids, status, errors, files;
  std::vector<std::int64_t> index;
  std::vector<std::map<std::string, double>> finals(n);
  std::set<std::string> final_keys;
  std::int64_t complete = 0, invalid = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::string file = run_file_of(dir, points[i]);
    const PointStatus st = sweep_status(file, i < invalid_reasons.size() ? invalid_reasons[i] : "");
    invalid += st.status == "invalid";
    ids.push_back(points[i].id);
    index.push_back(static_cast<std::int64_t>(points[i].index));
    status.push_back(st.status);
    errors.push_back(st.error);
    files.push_back(points[i].id + ".h5");
    if (st.status == "complete") {
      ++complete;
      try {
        h5::Handle f = h5::open_file(file, false);
        if (h5::exists(f.id(), "final")) {
          h5::Handle g = h5::open_group(f.id(), "final");
          hsize_t idx = 0;
          H5Aiterate2(g.id(), H5_INDEX_NAME, H5_ITER_INC, &idx, collect_attr, &finals[i]);
          for (const auto& [k, v] : finals[i]) final_keys.insert(k);
        }
      } catch (const std::exception&) {
      }
    }
  }
  {
    h5::Handle f = h5::create_file(tmp.string());
    h5::write_attr(f.id(), "schema_version", kSchemaVersion);
    h5::write_attr(f.id(), "kind", std::string("sweep"));
    h5::write_attr(f.id(), "command", cfg.command);
    h5::write_attr(f.id(), "config", cfg.path);
    h5::write_attr(f.id(), "points", static_cast<std::int64_t>(n));
    h5::write_attr(f.id(), "points_complete", complete);
    h5::write_attr(f.id(), "points_invalid", invalid);
    h5::write_attr(f.id(), "rebuilt_at", iso_time_now());
    std::string swept;
    if (!points.empty())
      for (const auto& [k, v] : points.front().swept) swept += (swept.empty() ? "" : ",") + k;
    h5::write_attr(f.id(), "swept", swept);
    h5::Handle g = h5::create_group(f.id(), "points");
    h5::write_strings(g.id(), "id", ids);
    h5::write_strings(g.id(), "status", status);
    h5::write_strings(g.id(), "error", errors);
    h5::write_strings(g.id(), "file", files);
    h5::write_array(g.id(), "index", {n}, index.data());
    h5::Handle og = h5::create_group(g.id(), "options");
    for (std::size_t k = 0; k < cfg.options.size(); ++k) {
      const std::string& key = cfg.options[k].first;
      std::vector<std::string> vals;
      std::vector<double> nums;
      bool numeric = true;
      for (const SweepPoint& p : points) {
        vals.push_back(p.values[k].second);
        double v = 0;
        numeric = numeric && is_number(p.values[k].second, v);
        nums.push_back(v);
      }
      std::string name = key;
      for (char& c : name)
        if (c == '-') c = '_';
      if (numeric) h5::write_array(og.id(), name, {n}, nums.data());
      else h5::write_strings(og.id(), name, vals);
    }
    h5::Handle fg = h5::create_group(g.id(), "final");
    for (const std::string& key : final_keys) {
      std::vector<double> col(n, std::numeric_limits<double>::quiet_NaN());
      for (std::size_t i = 0; i < n; ++i) {
        auto it = finals[i].find(key);
        if (it != finals[i].end()) col[i] = it->second;
      }
      h5::write_array(fg.id(), key, {n}, col.data());
    }
  }
  std::filesystem::rename(tmp, final_path);
}

}  // namespace moesim
