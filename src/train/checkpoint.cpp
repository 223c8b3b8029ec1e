#include "train/checkpoint.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <functional>
#include <map>

#include "core/build_info.hpp"
#include "io/parallel_write.hpp"

namespace moesim {

namespace {

const char* const kParts[3] = {"value", "adam_m", "adam_v"};

template <class T>
const Mat<T>& part(const Param<T>& p, int i) {
  return i == 0 ? p.value : i == 1 ? p.adam_m : p.adam_v;
}
template <class T>
Mat<T>& part(Param<T>& p, int i) {
  return i == 0 ? p.value : i == 1 ? p.adam_m : p.adam_v;
}

// A rank's expert parameters grouped by key, each group sorted by global expert index.
// With expert-data parallelism several ranks hold the same experts (replicas, one per
// expert group): the lowest rank holding a block, which is in group 0, writes it.
template <class T>
struct ExpertGroup {
  std::vector<Param<T>*> params;
  int first = 0;
  bool writer = true;  // this rank writes the block to checkpoints
};

// COLLECTIVE. Also sets `E`, the experts per key (0 without experts).
template <class T>
std::map<std::string, ExpertGroup<T>> group_experts(const Communicator& comm, const ParamList<T>& experts,
                                                    std::int64_t& E) {
  std::map<std::string, std::vector<std::pair<int, Param<T>*>>> by_key;
  for (Param<T>* p : experts) {
    const ExpertKey k = expert_key(p->name);
    MOESIM_REQUIRE(k.index >= 0, "expert parameter '" << p->name << "' has no expert<N> in its name");
    by_key[k.key].emplace_back(k.index, p);
  }
  // Every rank must hold the same keys, each a contiguous block of experts; the blocks of
  // the writers tile [0, E) in rank order.
  std::string names;
  for (const auto& [key, v] : by_key) names += key + "\n";
  std::int64_t h = static_cast<std::int64_t>(std::hash<std::string>{}(names) >> 1);
  std::int64_t hmin = h, hmax = h;
  comm.allreduce_min(&hmin, 1);
  comm.allreduce_max(&hmax, 1);
  MOESIM_REQUIRE(hmin == hmax, "ranks hold different expert parameters");
  E = 0;
  std::map<std::string, ExpertGroup<T>> out;
  for (auto& [key, v] : by_key) {
    std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    ExpertGroup<T> g;
    g.first = v.front().first;
    for (std::size_t i = 0; i < v.size(); ++i) {
      MOESIM_REQUIRE(v[i].first == g.first + static_cast<int>(i),
                     "experts of '" << key << "' are not a contiguous block on rank " << comm.rank());
      g.params.push_back(v[i].second);
    }
    const int block[2] = {g.first, static_cast<int>(v.size())};
    std::vector<int> all(2 * static_cast<std::size_t>(comm.size()));
    comm.allgather(block, 2, all.data());
    for (int q = 0; q < comm.rank(); ++q) g.writer &= all[2 * static_cast<std::size_t>(q)] != g.first;
    std::int64_t next = 0;  // the writers' blocks, in rank order, must tile [0, E)
    for (int q = 0; q < comm.size(); ++q) {
      bool first_holder = true;
      for (int o = 0; o < q; ++o) first_holder &= all[2 * static_cast<std::size_t>(o)] != all[2 * static_cast<std::size_t>(q)];
      if (!first_holder) continue;
      MOESIM_REQUIRE(all[2 * static_cast<std::size_t>(q)] == next, "experts of '" << key << "' are not placed in rank order");
      next += all[2 * static_cast<std::size_t>(q) + 1];
    }
    MOESIM_REQUIRE(E == 0 || E == next, "expert parameters disagree on the number of experts");
    E = next;
    out.emplace(key, std::move(g));
  }
  return out;
}

std::string shape_str(const std::vector<hsize_t>& d) {
  std::string s;
  for (std::size_t i = 0; i < d.size(); ++i) s += (i ? "x" : "") + std::to_string(d[i]);
  return s.empty() ? "scalar" : s;
}

void write_progress(hid_t g, const TrainProgress& p) {
  h5::write_attr(g, "step", p.step);
  h5::write_attr(g, "adam_t", p.adam_t);
  h5::write_attr(g, "tok_s_sum", p.tok_s_sum);
  h5::write_attr(g, "tok_s_n", p.tok_s_n);
  h5::write_attr(g, "dropped_sum", p.dropped_sum);
  h5::write_attr(g, "a2a_seconds", p.a2a_seconds);
  h5::write_attr(g, "a2a_wait_seconds", p.a2a_wait_seconds);
  h5::write_attr(g, "logging_seconds", p.logging_seconds);
  h5::write_attr(g, "compute_seconds", p.compute_seconds);
  h5::write_attr(g, "a2a_bytes", p.a2a_bytes);
  h5::write_attr(g, "train_loss", p.train_loss);
  h5::write_attr(g, "wall_seconds", p.wall_seconds);
}

TrainProgress read_progress(hid_t g) {
  TrainProgress p;
  p.step = h5::read_attr_int(g, "step");
  p.adam_t = h5::read_attr_int(g, "adam_t");
  p.tok_s_sum = h5::read_attr_double(g, "tok_s_sum");
  p.tok_s_n = h5::read_attr_int(g, "tok_s_n");
  p.dropped_sum = h5::read_attr_double(g, "dropped_sum");
  p.a2a_seconds = h5::read_attr_double(g, "a2a_seconds");
  // Checkpoints written before these were measured: 0 (the wait was inside a2a_seconds).
  for (auto [name, value] : {std::pair{"a2a_wait_seconds", &p.a2a_wait_seconds},
                             std::pair{"logging_seconds", &p.logging_seconds}}) {
    const htri_t has = H5Aexists(g, name);
    MOESIM_REQUIRE(has >= 0, "checkpoint: cannot look up attribute " << name);
    if (has > 0) *value = h5::read_attr_double(g, name);
  }
  p.compute_seconds = h5::read_attr_double(g, "compute_seconds");
  p.a2a_bytes = h5::read_attr_double(g, "a2a_bytes");
  p.train_loss = h5::read_attr_double(g, "train_loss");
  p.wall_seconds = h5::read_attr_double(g, "wall_seconds");
  return p;
}

}  // namespace

ExpertKey expert_key(const std::string& name) {
  // The last "expert<digits>" that starts the name or follows a dot.
  for (std::size_t pos = name.rfind("expert"); pos != std::string::npos;
       pos = pos == 0 ? std::string::npos : name.rfind("expert", pos - 1)) {
    if (pos != 0 && name[pos - 1] != '.') continue;
    std::size_t end = pos + 6;
    while (end < name.size() && std::isdigit(static_cast<unsigned char>(name[end]))) ++end;
    if (end == pos + 6 || (end < name.size() && name[end] != '.')) continue;
    return {name.substr(0, pos + 6) + name.substr(end), std::stoi(name.substr(pos + 6, end - pos - 6))};
  }
  return {name, -1};
}

template <class T>
void save_checkpoint(const Communicator& comm, const std::string& path,
                     const ParamList<T>& replicated, const ParamList<T>& experts,
                     const TrainProgress& progress, const std::string& options, RunFile* history,
                     const StateList& state) {
  const std::string tmp = path + ".tmp";
  std::string error;
  if (comm.rank() == 0) {
    const std::filesystem::path p(path);
    std::error_code ec;
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
    if (ec) error = "cannot create directory '" + p.parent_path().string() + "': " + ec.message();
    std::filesystem::remove(tmp, ec);
  }
  comm.agree_or_throw(error.empty(), "cannot write checkpoint '" + path + "': " + error);
  std::int64_t E = 0;
  const auto groups = group_experts(comm, experts, E);
  auto param_dims = [](const Param<T>& p) {
    return std::vector<hsize_t>{static_cast<hsize_t>(p.value.rows()), static_cast<hsize_t>(p.value.cols())};
  };
  auto expert_dims = [&](const ExpertGroup<T>& g) {
    return std::vector<hsize_t>{static_cast<hsize_t>(E), static_cast<hsize_t>(g.params.front()->value.rows()),
                                static_cast<hsize_t>(g.params.front()->value.cols())};
  };
  // Rank 0 lays the whole file out (attributes, progress, every dataset) and the ranks
  // then fill in values: replicated ones from rank 0, each expert block from one replica.
  auto layout = [&] {
    h5::Handle f = h5::create_file(tmp);
    h5::write_attr(f.id(), "kind", std::string("checkpoint"));
    h5::write_attr(f.id(), "checkpoint_version", kCheckpointVersion);
    h5::write_attr(f.id(), "complete", std::int64_t{0});
    h5::write_attr(f.id(), "step", progress.step);
    h5::write_attr(f.id(), "adam_t", progress.adam_t);
    h5::write_attr(f.id(), "precision", std::string(precision_name<T>()));
    h5::write_attr(f.id(), "ranks", static_cast<std::int64_t>(comm.size()));
    h5::write_attr(f.id(), "experts", E);
    h5::write_attr(f.id(), "options", options);
    h5::write_attr(f.id(), "moesim_version", std::string(build::kVersion));
    h5::write_attr(f.id(), "git_revision", std::string(build::kGitRevision));
    h5::write_attr(f.id(), "time", iso_time_now());
    {
      h5::Handle g = h5::create_group(f.id(), "train");
      write_progress(g.id(), progress);
    }
    std::vector<DatasetSpec> specs;
    h5::create_group(f.id(), "replicated");
    for (const Param<T>* p : replicated)
      for (const char* part_name : kParts) specs.push_back({"replicated/" + p->name + "/" + part_name, param_dims(*p)});
    h5::create_group(f.id(), "state");
    for (const auto& [name, v] : state)
      if (!v->empty()) specs.push_back({"state/" + name, {v->size()}});
    h5::create_group(f.id(), "experts");
    for (const auto& [key, g] : groups)
      for (const char* part_name : kParts) specs.push_back({"experts/" + key + "/" + part_name, expert_dims(g)});
    create_allocated(f.id(), specs);
  };
  // The datasets in the order of `layout`, one at a time, so only one is copied to float64.
  struct Source {
    std::string path;
    std::function<void(std::vector<double>&)> fill;
    hsize_t first = 0, count = 0;
  };
  std::vector<Source> sources;
  for (const Param<T>* p : replicated)
    for (int i = 0; i < 3; ++i) {
      const bool writes = comm.rank() == 0;  // replicated values are identical everywhere
      sources.push_back({"replicated/" + p->name + "/" + kParts[i],
                         [p, i](std::vector<double>& b) { b.assign(part(*p, i).data(), part(*p, i).data() + part(*p, i).size()); },
                         0, writes ? static_cast<hsize_t>(p->value.rows()) : 0});
    }
  for (const auto& [name, v] : state)
    if (!v->empty())
      sources.push_back({"state/" + name, [v = v](std::vector<double>& b) { b = *v; }, 0,
                         comm.rank() == 0 ? static_cast<hsize_t>(v->size()) : 0});
  for (const auto& [key, g] : groups)
    for (int i = 0; i < 3; ++i)
      sources.push_back({"experts/" + key + "/" + kParts[i],
                         [&g = g, i](std::vector<double>& b) {
                           b.clear();
                           for (const Param<T>* p : g.params)
                             b.insert(b.end(), part(*p, i).data(), part(*p, i).data() + part(*p, i).size());
                         },
                         g.writer ? static_cast<hsize_t>(g.first) : 0, g.writer ? g.params.size() : 0});
  std::vector<double> buf;
  try {
    write_rows_reserved(comm, tmp, "checkpoint '" + tmp + "'", layout, sources.size(), [&](std::size_t k) {
      const Source& s = sources[k];
      if (s.count > 0) s.fill(buf);
      return RowWrite{s.path, s.first, s.count, buf.data(), false};
    });
  } catch (const ConfigError&) {
    std::error_code ec;
    if (comm.rank() == 0) std::filesystem::remove(tmp, ec);
    throw;
  }
  // Rank 0 adds the metric history and the completeness flag, then renames into place.
  if (history) history->flush();
  if (comm.rank() == 0) {
    try {
      h5::Handle f = h5::open_file(tmp, true);
      if (history && history->writer())
        for (const std::string& g : h5::list_links(history->file_id()))
          if (g == "metrics" || g.rfind(kEarlierMetrics, 0) == 0)
            MOESIM_H5_CHECK(H5Ocopy(history->file_id(), g.c_str(), f.id(), g.c_str(), H5P_DEFAULT, H5P_DEFAULT));
      h5::write_attr(f.id(), "complete", std::int64_t{1});
      h5::flush(f.id());
      f.reset();
      std::filesystem::rename(tmp, path);
    } catch (const std::exception& e) {
      error = e.what();
      std::error_code ec;
      std::filesystem::remove(tmp, ec);  // the previous checkpoint, if any, stays in place
    }
  }
  comm.agree_or_throw(error.empty(), "cannot write checkpoint '" + path + "': " + error);
}

CheckpointReader::CheckpointReader(const Communicator& comm, const std::string& path)
    : comm_(comm), path_(path) {
  std::string error;
  if (comm.rank() == 0) {
    h5::silence_default_error_printing();
    try {
      if (!std::filesystem::exists(path)) throw ConfigError("no such file");
      h5::Handle f = h5::open_user_file(path);
      if (H5Aexists(f.id(), "kind") <= 0 || h5::read_attr_string(f.id(), "kind") != "checkpoint")
        throw ConfigError("not a moesim checkpoint (root attribute kind != 'checkpoint')");
      if (h5::read_attr_int(f.id(), "checkpoint_version") > kCheckpointVersion)
        throw ConfigError("checkpoint_version is newer than this moesim reads");
      if (h5::read_attr_int(f.id(), "complete") != 1) throw ConfigError("incomplete (complete != 1)");
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  comm.agree_or_throw(error.empty(), "cannot read checkpoint '" + path + "': " + error);
  file_ = h5::open_file_mpi(comm.raw(), path, false);
  info_.step = h5::read_attr_int(file_.id(), "step");
  info_.adam_t = h5::read_attr_int(file_.id(), "adam_t");
  info_.ranks = h5::read_attr_int(file_.id(), "ranks");
  info_.experts = h5::read_attr_int(file_.id(), "experts");
  info_.precision = h5::read_attr_string(file_.id(), "precision");
  info_.options = h5::read_attr_string(file_.id(), "options");
}

bool CheckpointReader::has(const std::string& dataset) const {
  // Walk the path: H5Lexists needs every intermediate link to exist.
  std::size_t pos = 0;
  while (true) {
    pos = dataset.find('/', pos);
    if (!h5::exists(file_.id(), dataset.substr(0, pos))) return false;
    if (pos == std::string::npos) return true;
    ++pos;
  }
}

std::vector<hsize_t> CheckpointReader::dims(const std::string& dataset) const {
  return h5::dataset_dims(file_.id(), dataset);
}

std::vector<double> CheckpointReader::read_all(const std::string& dataset) const {
  const std::vector<hsize_t> d = dims(dataset);
  return read_rows(dataset, 0, d.empty() ? 1 : d[0]);
}

std::vector<double> CheckpointReader::read_rows(const std::string& dataset, hsize_t first,
                                                hsize_t count) const {
  const std::vector<hsize_t> d = dims(dataset);
  hsize_t row = 1;
  for (std::size_t i = 1; i < d.size(); ++i) row *= d[i];
  std::vector<double> out(static_cast<std::size_t>(count * row));
  h5::Handle ds(MOESIM_H5_CHECK(H5Dopen2(file_.id(), dataset.c_str(), H5P_DEFAULT)), H5Dclose);
  h5::read_rows(ds.id(), first, count, out.data());
  return out;
}

TrainProgress CheckpointReader::progress() const {
  h5::Handle g = h5::open_group(file_.id(), "train");
  return read_progress(g.id());
}

std::vector<std::string> CheckpointReader::expert_keys() const {
  if (!h5::exists(file_.id(), "experts")) return {};
  h5::Handle g = h5::open_group(file_.id(), "experts");
  return h5::list_links(g.id());
}

namespace {
template <class T>
TrainProgress load_params(const Communicator& comm, const std::string& path,
                          const ParamList<T>& replicated, const ParamList<T>& experts,
                          const StateList& state) {
  CheckpointReader r(comm, path);
  std::int64_t E = 0;
  const auto groups = group_experts(comm, experts, E);
  // Every rank checks what it is about to read; the lowest failing rank's reason wins.
  std::string error;
  auto expect = [&](const std::string& ds, const std::vector<hsize_t>& want) {
    if (!error.empty()) return;
    if (!r.has(ds)) error = "it has no '" + ds + "'";
    else if (r.dims(ds) != want)
      error = "'" + ds + "' is " + shape_str(r.dims(ds)) + " there but " + shape_str(want) + " in this model";
  };
  if (r.info().precision != precision_name<T>())
    error = "it was written at " + r.info().precision + ", this run is " + precision_name<T>();
  for (const Param<T>* p : replicated)
    for (const char* part_name : kParts)
      expect("replicated/" + p->name + "/" + part_name,
             {static_cast<hsize_t>(p->value.rows()), static_cast<hsize_t>(p->value.cols())});
  for (const auto& [key, g] : groups)
    for (const char* part_name : kParts)
      expect("experts/" + key + "/" + part_name,
             {static_cast<hsize_t>(E), static_cast<hsize_t>(g.params.front()->value.rows()),
              static_cast<hsize_t>(g.params.front()->value.cols())});
  for (const auto& [name, v] : state)
    if (!v->empty()) expect("state/" + name, {static_cast<hsize_t>(v->size())});
  comm.agree_or_throw(error.empty(), "checkpoint '" + path + "' does not match this run: " + error);
  for (const auto& [name, v] : state)
    if (!v->empty()) *v = r.read_all("state/" + name);

  for (Param<T>* p : replicated)
    for (int i = 0; i < 3; ++i) {
      const std::vector<double> v = r.read_all("replicated/" + p->name + "/" + kParts[i]);
      std::copy(v.begin(), v.end(), part(*p, i).data());
    }
  for (const auto& [key, g] : groups)
    for (int i = 0; i < 3; ++i) {
      const std::vector<double> v = r.read_rows("experts/" + key + "/" + kParts[i],
                                                static_cast<hsize_t>(g.first), g.params.size());
      std::size_t off = 0;
      for (Param<T>* p : g.params) {
        Mat<T>& m = part(*p, i);
        std::copy(v.begin() + off, v.begin() + off + m.size(), m.data());
        off += static_cast<std::size_t>(m.size());
      }
    }
  return r.progress();
}
}  // namespace

template <class T>
TrainProgress load_checkpoint(const Communicator& comm, const std::string& path,
                              const ParamList<T>& replicated, const ParamList<T>& experts,
                              const StateList& state) {
  return load_params(comm, path, replicated, experts, state);
}

void append_checkpoint_history(const Communicator& comm, const std::string& path, RunFile& history,
                               const std::vector<std::string>& per_rank_series, std::int64_t step) {
  std::string error;
  if (history.writer()) {
    try {
      h5::Handle f = h5::open_file(path, false);
      const hid_t out = history.file_id();
      const bool same_ranks = h5::read_attr_int(f.id(), "ranks") == comm.size();
      for (const std::string& g : h5::list_links(f.id()))
        if (g.rfind(kEarlierMetrics, 0) == 0)
          MOESIM_H5_CHECK(H5Ocopy(f.id(), g.c_str(), out, g.c_str(), H5P_DEFAULT, H5P_DEFAULT));
      if (h5::exists(f.id(), "metrics")) {
        h5::Handle g = h5::open_group(f.id(), "metrics");
        const std::string earlier = kEarlierMetrics + std::to_string(step);
        for (const std::string& name : h5::list_links(g.id())) {
          if (!same_ranks && std::find(per_rank_series.begin(), per_rank_series.end(), name) !=
                                 per_rank_series.end()) {
            // Shaped by the old rank count: kept aside with the steps its rows belong to.
            if (!h5::exists(out, earlier)) h5::create_group(out, earlier);
            h5::Handle e = h5::open_group(out, earlier);
            MOESIM_H5_CHECK(H5Ocopy(g.id(), name.c_str(), e.id(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT));
            const hsize_t rows = h5::dataset_dims(g.id(), name)[0];
            std::vector<std::int64_t> steps(static_cast<std::size_t>(rows));
            for (hsize_t r = 0; r < rows; ++r)
              steps[r] = step - static_cast<std::int64_t>(rows) + 1 + static_cast<std::int64_t>(r);
            const std::string step_name = name + "_step";
            if (!h5::exists(e.id(), step_name)) {
              h5::write_array(e.id(), step_name, {rows}, steps.data());
              h5::describe_dataset(e.id(), step_name, "step", "the step of each row of `" + name + "` beside it",
                                   {"step"});
            }
            continue;
          }
          std::vector<hsize_t> dims;
          const bool integer = h5::dataset_is_integer(g.id(), name);
          std::vector<double> d;
          std::vector<std::int64_t> i;
          if (integer) i = h5::read_array_int(g.id(), name, &dims);
          else d = h5::read_array(g.id(), name, &dims);
          const std::vector<hsize_t> inner(dims.begin() + 1, dims.end());
          history.append_rows(name, inner, integer, integer ? static_cast<const void*>(i.data()) : d.data(), dims[0]);
        }
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  comm.agree_or_throw(error.empty(), "cannot read the metrics of checkpoint '" + path + "': " + error);
}

namespace {
std::map<std::string, std::string> ini_values(const std::string& text) {
  std::map<std::string, std::string> out;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    const std::size_t eq = line.find(" = ");
    if (eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 3);
    start = end + 1;
  }
  return out;
}
}  // namespace

void check_same_run(const std::string& path, const CheckpointInfo& info, const std::string& options) {
  const auto there = ini_values(info.options), here = ini_values(options);
  std::string diff;
  int n = 0;
  for (const auto& [key, value] : here) {
    const auto it = there.find(key);
    if (it == there.end() || it->second == value ||
        std::find(kResumeMayChange.begin(), kResumeMayChange.end(), key) != kResumeMayChange.end())
      continue;
    if (n++ < 3) diff += std::string(diff.empty() ? "" : ", ") + "--" + key + " " + it->second + " there, " + value + " here";
  }
  if (n > 3) diff += " and " + std::to_string(n - 3) + " more";
  MOESIM_CONFIG_CHECK(n == 0, "checkpoint '" << path << "' was written by another run (" << diff
                                             << "): resume it only with the options that wrote it (--steps may grow), "
                                                "or give this run its own --checkpoint");
}

template void save_checkpoint<float>(const Communicator&, const std::string&, const ParamList<float>&,
                                     const ParamList<float>&, const TrainProgress&, const std::string&, RunFile*,
                                     const StateList&);
template void save_checkpoint<double>(const Communicator&, const std::string&, const ParamList<double>&,
                                      const ParamList<double>&, const TrainProgress&, const std::string&, RunFile*,
                                      const StateList&);
template TrainProgress load_checkpoint<float>(const Communicator&, const std::string&, const ParamList<float>&,
                                              const ParamList<float>&, const StateList&);
template TrainProgress load_checkpoint<double>(const Communicator&, const std::string&, const ParamList<double>&,
                                               const ParamList<double>&, const StateList&);

}  // namespace moesim
