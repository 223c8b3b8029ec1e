#include "sweep/summary.hpp"

#include <unistd.h>

#include <charconv>
#include <optional>
#include <type_traits>
#include <variant>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <algorithm>
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

// A final attribute as sweep.h5 keeps it: numbers only, integers as integers.
herr_t collect_attr(hid_t obj, const char* name, const H5A_info_t*, void* out) {
  auto* m = static_cast<std::map<std::string, h5::AttrValue>*>(out);
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  if (a < 0) return 0;
  hid_t t = H5Aget_type(a);
  const H5T_class_t cls = H5Tget_class(t);
  hid_t space = H5Aget_space(a);
  const bool scalar = H5Sget_simple_extent_npoints(space) == 1;
  std::int64_t i = 0;
  double d = 0;
  if (scalar && cls == H5T_INTEGER && H5Aread(a, H5T_NATIVE_INT64, &i) >= 0) (*m)[name] = i;
  else if (scalar && cls == H5T_FLOAT && H5Aread(a, H5T_NATIVE_DOUBLE, &d) >= 0) (*m)[name] = d;
  H5Sclose(space);
  H5Tclose(t);
  H5Aclose(a);
  return 0;
}

// A config value typed from its text, as the run file would hold it.
OptionSetting typed_from_text(const std::string& key, const std::string& text) {
  OptionSetting o;
  o.key = key;
  for (char& c : o.key)
    if (c == '-') c = '_';
  std::int64_t i = 0;
  double d = 0;
  const char* end = text.data() + text.size();
  if (text == "true" || text == "false") {
    o.value = std::int64_t{text == "true"};
    o.boolean = true;
  } else if (auto [p, ec] = std::from_chars(text.data(), end, i); !text.empty() && ec == std::errc() && p == end) {
    o.value = i;
  } else if (is_number(text, d)) {
    o.value = d;
  } else {
    o.value = text;
  }
  return o;
}

// One column of points/options or points/final: its values per point (absent where a point has
// none). Written as text if any value is text, else float64 if any is (NaN where absent), else
// bool when every value is a switch, else int64 (missing_value where absent).
struct Column {
  std::vector<std::optional<h5::AttrValue>> values;
  bool all_boolean = true;
  std::string help;
};

void write_column(hid_t g, const std::string& key, const Column& c, const DatasetInfo& info,
                  const std::string& description) {
  const std::size_t n = c.values.size();
  bool any_string = false, any_double = false, any_missing = false;
  for (const auto& v : c.values) {
    if (!v) any_missing = true;
    else if (std::holds_alternative<std::string>(*v)) any_string = true;
    else if (std::holds_alternative<double>(*v)) any_double = true;
  }
  if (any_string) {
    std::vector<std::string> col(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (!c.values[i]) continue;
      std::visit([&](const auto& x) {
        if constexpr (std::is_same_v<std::decay_t<decltype(x)>, std::string>) col[i] = x;
        else col[i] = std::to_string(x);
      }, *c.values[i]);
    }
    h5::write_strings(g, key, col);
  } else if (any_double) {
    std::vector<double> col(n, std::numeric_limits<double>::quiet_NaN());
    for (std::size_t i = 0; i < n; ++i)
      if (c.values[i]) std::visit([&](const auto& x) {
          if constexpr (!std::is_same_v<std::decay_t<decltype(x)>, std::string>) col[i] = static_cast<double>(x);
        }, *c.values[i]);
    h5::write_array(g, key, {n}, col.data());
  } else if (c.all_boolean && !any_missing) {
    std::vector<bool> col(n);
    for (std::size_t i = 0; i < n; ++i) col[i] = std::get<std::int64_t>(*c.values[i]) != 0;
    h5::write_bools(g, key, col);
  } else {
    std::vector<std::int64_t> col(n, kMissingInt);
    for (std::size_t i = 0; i < n; ++i)
      if (c.values[i]) col[i] = std::get<std::int64_t>(*c.values[i]);
    h5::write_array(g, key, {n}, col.data());
    h5::Handle d(MOESIM_H5_CHECK(H5Dopen2(g, key.c_str(), H5P_DEFAULT)), H5Dclose);
    if (any_missing) h5::write_attr(d.id(), "missing_value", kMissingInt);
  }
  describe_dataset(g, key, info, description);
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
      const OptionSetting o = typed_from_text(k, v);
      h5::write_attr(f.id(), o.key, o.value);
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

std::span<const DatasetInfo> sweep_summary_datasets() {
  static constexpr DatasetInfo kTable[] = {
      {"points/index", "point", "int64", "point", "the point's 0-based index in the grid (`moesim sweep --index`)"},
      {"points/id", "point", "string", "", "the point's stable id: its swept values and a hash of all its values"},
      {"points/status", "point", "string", "", "complete | failed | invalid | incomplete | pending"},
      {"points/error", "point", "string", "", "failed: the error; invalid: why the point can never run; else empty"},
      {"points/file", "point", "string", "", "the point's run file, relative to sweep.h5"},
      {"points/options/<option>", "point", "int64, float64, bool or string", "",
       "every option each point runs with, typed as its run file stores it (switches as bool); the description names the option and gives its help text; int64 columns mark a point without a value by `missing_value`"},
      {"points/final/<name>", "point", "int64 or float64", "",
       "the `final` attribute <name> of each complete point's run file (see that file's schema); NaN, or `missing_value` for int64, where a point has none"},
  };
  return kTable;
}

void write_summary(const std::string& dir, const SweepConfig& cfg, const std::vector<SweepPoint>& points,
                   const std::vector<std::string>& invalid_reasons, const PointOptions& options_of) {
  h5::silence_default_error_printing();
  char host[128] = {0};
  gethostname(host, sizeof host - 1);
  const std::filesystem::path final_path = std::filesystem::path(dir) / "sweep.h5";
  const std::filesystem::path tmp = std::filesystem::path(dir) /
      (".sweep.h5." + std::string(host) + "." + std::to_string(getpid()) + ".tmp");
  const std::size_t n = points.size();
  std::vector<std::string> ids, status, errors, files;
  std::vector<std::int64_t> index;
  std::vector<std::map<std::string, h5::AttrValue>> finals(n);
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
  // Every option of every point, typed; a point the reader cannot parse keeps what the config names.
  std::map<std::string, Column> options;
  std::set<std::string> swept_options;
  std::map<std::string, h5::AttrValue> first_value;
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<OptionSetting> settings;
    bool read = false;
    if (options_of) {
      try {
        settings = options_of(points[i]);
        read = true;
      } catch (const std::exception&) {
      }
    }
    if (!read)
      for (const auto& [k, v] : points[i].values) settings.push_back(typed_from_text(k, v));
    for (OptionSetting& o : settings) {
      Column& c = options[o.key];
      c.values.resize(n);
      c.values[i] = o.value;
      c.all_boolean = c.all_boolean && o.boolean;
      if (c.help.empty()) c.help = o.help;
      // Options whose values differ between points, per-point paths aside.
      if (o.key == "out" || o.key == "checkpoint") continue;
      auto [it, fresh] = first_value.emplace(o.key, o.value);
      if (!fresh && !(it->second == o.value)) swept_options.insert(o.key);
    }
  }
  for (auto& [k, c] : options) {
    c.values.resize(n);
    const auto absent = std::count(c.values.begin(), c.values.end(), std::nullopt);
    if (absent > 0 && absent < static_cast<std::ptrdiff_t>(n)) swept_options.insert(k);  // set on some points only
  }
  const std::span<const DatasetInfo> table = sweep_summary_datasets();
  auto info_of = [&](const std::string& path) -> const DatasetInfo& {
    const DatasetInfo* info = find_dataset(table, path);
    MOESIM_REQUIRE(info, "sweep.h5 dataset '" << path << "' is not in its schema table");
    return *info;
  };
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
    h5::write_attr_strings(f.id(), "swept_options", {swept_options.begin(), swept_options.end()});
    h5::Handle g = h5::create_group(f.id(), "points");
    h5::write_strings(g.id(), "id", ids);
    h5::write_strings(g.id(), "status", status);
    h5::write_strings(g.id(), "error", errors);
    h5::write_strings(g.id(), "file", files);
    h5::write_array(g.id(), "index", {n}, index.data());
    for (const char* name : {"id", "status", "error", "file", "index"})
      describe_dataset(g.id(), name, info_of(std::string("points/") + name));
    h5::Handle og = h5::create_group(g.id(), "options");
    for (const auto& [key, c] : options) {
      std::string desc = "option `--";
      for (char ch : key) desc += ch == '_' ? '-' : ch;
      desc += "` of each point";
      if (!c.help.empty()) desc += ": " + c.help;
      write_column(og.id(), key, c, info_of("points/options/" + key), desc);
    }
    h5::Handle fg = h5::create_group(g.id(), "final");
    for (const std::string& key : final_keys) {
      Column c;
      c.all_boolean = false;
      for (std::size_t i = 0; i < n; ++i) {
        auto it = finals[i].find(key);
        if (it != finals[i].end()) c.values.emplace_back(it->second);
        else c.values.emplace_back();
      }
      write_column(fg.id(), key, c, info_of("points/final/" + key), "");
    }
  }
  std::filesystem::rename(tmp, final_path);
}

}  // namespace moesim
