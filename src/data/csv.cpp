#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "core/shard.hpp"
#include "data/readers.hpp"

namespace moesim {

namespace {

std::string trim(std::string s) {
  auto sp = [](unsigned char c) { return std::isspace(c) != 0; };
  while (!s.empty() && sp(static_cast<unsigned char>(s.back()))) s.pop_back();
  std::size_t i = 0;
  while (i < s.size() && sp(static_cast<unsigned char>(s[i]))) ++i;
  s = s.substr(i);
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') s = s.substr(1, s.size() - 2);
  return s;
}

std::vector<std::string> split(const std::string& line) {
  std::vector<std::string> out;
  std::string cell;
  std::istringstream is(line);
  while (std::getline(is, cell, ',')) out.push_back(trim(cell));
  if (!line.empty() && line.back() == ',') out.emplace_back();
  return out;
}

bool parse_number(const std::string& s, double& v) {
  if (s.empty()) return false;
  const char* b = s.data();
  const char* e = s.data() + s.size();
  if (*b == '+') ++b;
  auto [ptr, ec] = std::from_chars(b, e, v);
  return ec == std::errc() && ptr == e;
}

bool blank(const std::string& line) {
  return std::all_of(line.begin(), line.end(), [](unsigned char c) { return std::isspace(c) != 0; });
}

}  // namespace

std::vector<std::string> union_of_labels(const Communicator& comm,
                                         const std::vector<std::string>& local) {
  std::string joined;
  for (const std::string& s : local) joined += s + '\n';
  std::vector<char> mine(joined.begin(), joined.end());
  std::vector<char> all = comm.allgatherv(mine);
  std::set<std::string> uniq;
  std::string cur;
  for (char c : all) {
    if (c == '\n') {
      uniq.insert(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  std::vector<std::string> out(uniq.begin(), uniq.end());
  bool numeric = true;
  for (const std::string& s : out) {
    double v = 0;
    numeric = numeric && parse_number(s, v);
  }
  if (numeric)
    std::sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) {
      double x = 0, y = 0;
      parse_number(a, x);
      parse_number(b, y);
      return x < y;
    });
  return out;
}

Table read_csv(const Communicator& comm, const std::string& path, const TableSpec& spec) {
  const int P = comm.size();
  // Rank 0 finds the header and the byte offset where each rank's block starts.
  std::string header, error;
  std::vector<std::int64_t> meta(static_cast<std::size_t>(P) + 2, 0);  // N, offsets..., end
  if (comm.rank() == 0) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      error = "cannot open data file '" + path + "'";
    } else if (!std::getline(in, header) || blank(header)) {
      error = path + ": empty file, expected a header row";
    } else {
      std::vector<std::int64_t> starts;
      std::string line;
      std::int64_t pos = in.tellg();
      while (std::getline(in, line)) {
        if (!blank(line)) starts.push_back(pos);
        pos = in.tellg();
        if (pos < 0) break;
      }
      const std::int64_t N = static_cast<std::int64_t>(starts.size());
      meta[0] = N;
      for (int r = 0; r < P; ++r) {
        const Shard s = shard_of(N, r, P);
        meta[static_cast<std::size_t>(r) + 1] = s.count > 0 ? starts[static_cast<std::size_t>(s.first)] : 0;
      }
      if (N == 0) error = path + ": no data rows after the header";
    }
  }
  comm.agree_or_throw(error.empty(), error);
  comm.broadcast(header, 0);
  comm.broadcast(meta.data(), static_cast<int>(meta.size()), 0);
  const std::int64_t N = meta[0];

  const std::vector<std::string> cols = split(header);
  auto find_col = [&](const std::string& name, const char* what) -> int {
    if (name.empty()) return -1;
    auto it = std::find(cols.begin(), cols.end(), name);
    if (it == cols.end())
      throw ConfigError(path + ": no " + std::string(what) + " column '" + name + "' in the header");
    return static_cast<int>(it - cols.begin());
  };
  MOESIM_CONFIG_CHECK(!spec.target.empty(), "--target must name the target column of " << path);
  const int target = find_col(spec.target, "target");
  const int weight = find_col(spec.weight_column, "weight");
  const int group = find_col(spec.group_column, "group");
  std::vector<int> feature_cols;
  Table t;
  for (int c = 0; c < static_cast<int>(cols.size()); ++c)
    if (c != target && c != weight && c != group) {
      feature_cols.push_back(c);
      t.features.push_back(cols[static_cast<std::size_t>(c)]);
    }
  MOESIM_CONFIG_CHECK(!feature_cols.empty(), path << ": no feature columns besides the target");

  const Shard sh = shard_of(N, comm.rank(), P);
  t.rows_global = N;
  t.first = sh.first;
  t.X.resize(sh.count, static_cast<Index>(feature_cols.size()));
  t.y.assign(static_cast<std::size_t>(sh.count), 0.0);
  t.w.assign(static_cast<std::size_t>(sh.count), 1.0);
  if (group >= 0) t.group.assign(static_cast<std::size_t>(sh.count), 0);
  std::vector<std::string> labels(static_cast<std::size_t>(sh.count));
  error.clear();
  if (sh.count > 0) {
    std::ifstream in(path, std::ios::binary);
    in.seekg(meta[static_cast<std::size_t>(comm.rank()) + 1]);
    std::string line;
    std::int64_t row = 0;
    // Line numbers in messages count the header as line 1 (blank lines are skipped,
    // so they are exact when the file has none).
    for (std::int64_t lineno = sh.first + 2; row < sh.count && std::getline(in, line); ++lineno) {
      if (blank(line)) { --lineno; continue; }
      const std::vector<std::string> cells = split(line);
      auto where = [&](int c) {
        return path + ":" + std::to_string(lineno) + ": column '" + cols[static_cast<std::size_t>(c)] + "'";
      };
      if (cells.size() != cols.size()) {
        error = path + ":" + std::to_string(lineno) + ": expected " + std::to_string(cols.size()) +
                " fields, found " + std::to_string(cells.size());
        break;
      }
      for (std::size_t j = 0; j < feature_cols.size() && error.empty(); ++j) {
        const int c = feature_cols[j];
        double v = 0;
        const std::string& s = cells[static_cast<std::size_t>(c)];
        if (s.empty()) error = where(c) + ": missing value";
        else if (!parse_number(s, v)) error = where(c) + ": '" + s + "' is not a number";
        else if (!std::isfinite(v)) error = where(c) + ": value is " + s + " (NaN or infinite)";
        else t.X(row, static_cast<Index>(j)) = v;
      }
      const std::string& ts = cells[static_cast<std::size_t>(target)];
      if (error.empty() && ts.empty()) error = where(target) + ": missing target";
      if (error.empty() && !spec.classification) {
        double v = 0;
        if (!parse_number(ts, v) || !std::isfinite(v))
          error = where(target) + ": target '" + ts + "' is not a finite number";
        t.y[static_cast<std::size_t>(row)] = v;
      }
      labels[static_cast<std::size_t>(row)] = ts;
      if (error.empty() && weight >= 0) {
        double v = 0;
        const std::string& s = cells[static_cast<std::size_t>(weight)];
        if (!parse_number(s, v) || !std::isfinite(v) || v < 0)
          error = where(weight) + ": weight '" + s + "' is not a finite number >= 0";
        t.w[static_cast<std::size_t>(row)] = v;
      }
      if (error.empty() && group >= 0) {
        double v = 0;
        const std::string& s = cells[static_cast<std::size_t>(group)];
        // Beyond 2^53 a double no longer holds every integer (and NaN, 1e300 do not cast).
        if (!parse_number(s, v) || v != std::floor(v) || !(std::fabs(v) <= 0x1p53))
          error = where(group) + ": group id '" + s + "' is not an integer (|id| <= 2^53)";
        else
          t.group[static_cast<std::size_t>(row)] = static_cast<std::int64_t>(v);
      }
      if (!error.empty()) break;
      ++row;
    }
    if (error.empty() && row != sh.count) error = path + ": file changed while reading";
  }
  comm.agree_or_throw(error.empty(), error);

  if (spec.classification) {
    if (spec.classes.empty()) {
      std::set<std::string> mine(labels.begin(), labels.end());
      t.classes = union_of_labels(comm, std::vector<std::string>(mine.begin(), mine.end()));
    } else {
      t.classes = spec.classes;
    }
    for (std::int64_t i = 0; i < sh.count && error.empty(); ++i) {
      auto it = std::find(t.classes.begin(), t.classes.end(), labels[static_cast<std::size_t>(i)]);
      if (it == t.classes.end())
        error = path + ":" + std::to_string(sh.first + i + 2) + ": class '" +
                labels[static_cast<std::size_t>(i)] + "' does not occur in the training data";
      else
        t.y[static_cast<std::size_t>(i)] = static_cast<double>(it - t.classes.begin());
    }
    comm.agree_or_throw(error.empty(), error);
    MOESIM_CONFIG_CHECK(t.classes.size() >= 2,
                        path << ": classification needs at least 2 classes in column '" << spec.target << "'");
  }
  return t;
}

Table read_table(const Communicator& comm, const std::string& path, const TableSpec& spec) {
  auto ends_with = [&](const std::string& suf) {
    return path.size() >= suf.size() && path.compare(path.size() - suf.size(), suf.size(), suf) == 0;
  };
  if (ends_with(".h5") || ends_with(".hdf5")) return read_hdf5_table(comm, path, spec);
  return read_csv(comm, path, spec);
}

}  // namespace moesim
