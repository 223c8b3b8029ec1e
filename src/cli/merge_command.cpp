// `moesim merge`: merge the experts of a trained run's checkpoint down to E2 per MoE layer
// (weight averaging or SLERP, in pairs chosen greedily by similarity), evaluate the
// validation loss before and after on the same tokens, log both to one HDF5 file.
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "cli/commands.hpp"
#include "cli/moe_model.hpp"
#include "cli/options.hpp"
#include "moe/merge.hpp"

namespace moesim::cli {

namespace {

using I = std::int64_t;

struct MergeSettings {
  std::string run, out;
  I experts = 0;  // E2
  MergeMethod method = MergeMethod::kAverage;
  bool by_routing = false;
  I val_tokens = 0;  // 0: the run's
  bool quiet = false;
};

// The value of `key` in INI text ("" when absent).
std::string ini_value(const std::string& ini, const std::string& key) {
  std::istringstream in(ini);
  std::string line;
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    std::string k = line.substr(0, eq), v = line.substr(eq + 1);
    auto trim = [](std::string& s) {
      s.erase(0, s.find_first_not_of(" \t"));
      s.erase(s.find_last_not_of(" \t\r") + 1);
    };
    trim(k);
    trim(v);
    if (k == key) return v;
  }
  return "";
}

// --run names a checkpoint, or a run file whose `checkpoint` attribute names one (taken as
// written, else relative to the run file's directory).
std::string resolve_checkpoint(const Communicator& comm, const std::string& run) {
  std::string path, error;
  if (comm.rank() == 0) {
    h5::silence_default_error_printing();
    try {
      if (!std::filesystem::exists(run)) throw ConfigError("no such file");
      h5::Handle f = h5::open_file(run, false);
      const std::string kind = H5Aexists(f.id(), "kind") > 0 ? h5::read_attr_string(f.id(), "kind") : "";
      if (kind == "checkpoint") {
        path = run;
      } else if (H5Aexists(f.id(), "checkpoint") > 0 && !h5::read_attr_string(f.id(), "checkpoint").empty()) {
        path = h5::read_attr_string(f.id(), "checkpoint");
        const std::filesystem::path beside = std::filesystem::path(run).parent_path() / path;
        if (!std::filesystem::exists(path) && std::filesystem::path(path).is_relative() &&
            std::filesystem::exists(beside))
          path = beside.string();
      } else {
        throw ConfigError("neither a checkpoint nor a run file with a checkpoint (train with --checkpoint FILE)");
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  comm.agree_or_throw(error.empty(), "--run '" + run + "': " + error);
  comm.broadcast(path, 0);
  return path;
}

// What the merge takes from one MoE layer of the trained model.
struct LayerState {
  std::vector<std::string> keys;                         // its expert parameters, by key
  std::map<std::string, std::vector<double>> experts;    // key -> E rows of that parameter
  std::map<std::string, std::pair<Index, Index>> shapes; // key -> one expert's (rows, cols)
  std::map<std::string, Mat<double>> replicated;         // router and other replicated params
  std::vector<double> selection_bias;                    // E (--balance bias) or empty
  std::vector<double> gram;                              // E x E: sum over tokens of p_e p_f
  std::vector<double> similarity;                        // E x E
  std::vector<std::pair<int, int>> pairs;
  std::vector<std::vector<int>> groups;                  // new expert j = groups[j]
  std::map<std::string, std::vector<double>> merged;     // key -> E2 rows
};

struct Evaluation {
  double loss = 0, accuracy = -1;
  std::int64_t params_total = 0;
};

template <class T>
Evaluation evaluate_model(const Communicator& comm, Model<T>& model, const Task& task,
                          const TrainConfig& tc, std::vector<LayerState>* gram_into) {
  std::vector<MoeLayer<T>*> layers = model.moe_layers();
  const int E = model.config().moe.experts;
  if (gram_into)
    for (LayerState& st : *gram_into) st.gram.assign(static_cast<std::size_t>(E * E), 0.0);
  auto hook = [&] {
    if (!gram_into) return;
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const Mat<double> p = layers[l]->routing().probs.template cast<double>();
      const Mat<double> g = p.transpose() * p;
      for (Index i = 0; i < g.size(); ++i) (*gram_into)[l].gram[static_cast<std::size_t>(i)] += g.data()[i];
    }
  };
  const auto [loss, acc] = evaluate(comm, model, task, tc.val_tokens, tc.batch_tokens, nullptr, hook);
  if (gram_into)
    for (LayerState& st : *gram_into) comm.allreduce_sum(st.gram.data(), E * E);
  return {loss, acc, count_params(model.config()).total};
}

template <class T>
void copy_into(Param<T>& p, const double* src) {
  for (Index i = 0; i < p.size(); ++i) p.value.data()[i] = static_cast<T>(src[i]);
}

// The trained model: loaded from the checkpoint, evaluated, its experts read in full.
struct Before final : MoeModelVisitor {
  const Communicator& comm;
  const std::string& ckpt;
  std::vector<LayerState> layers;
  Evaluation eval;
  Before(const Communicator& c, const std::string& k) : comm(c), ckpt(k) {}
  void visit(Model<float>& m, const Task& t, const TrainConfig& tc) override { run(m, t, tc); }
  void visit(Model<double>& m, const Task& t, const TrainConfig& tc) override { run(m, t, tc); }

  template <class T>
  void run(Model<T>& model, const Task& task, const TrainConfig& tc) {
    load_checkpoint(comm, ckpt, model.replicated_params(), model.expert_params(), nullptr, {},
                    model_state(model));
    std::vector<MoeLayer<T>*> moe = model.moe_layers();
    layers.resize(moe.size());
    eval = evaluate_model(comm, model, task, tc, &layers);
    CheckpointReader r(comm, ckpt);
    for (std::size_t l = 0; l < moe.size(); ++l) {
      LayerState& st = layers[l];
      ParamList<T> ps;
      moe[l]->expert_params(ps);
      for (const Param<T>* p : ps) {
        const std::string key = expert_key(p->name).key;
        if (st.experts.count(key)) continue;
        st.keys.push_back(key);
        st.experts[key] = r.read_all("experts/" + key + "/value");
        st.shapes[key] = {p->value.rows(), p->value.cols()};
      }
      ParamList<T> rp;
      moe[l]->replicated_params(rp);
      for (const Param<T>* p : rp) st.replicated[p->name] = p->value.template cast<double>();
      st.selection_bias = moe[l]->router().bias();
    }
  }
};

// The merged model: every other parameter from the checkpoint, the MoE layers' from the merge.
struct After final : MoeModelVisitor {
  const Communicator& comm;
  const std::string& ckpt;
  const std::vector<LayerState>& layers;
  int E = 0;
  Evaluation eval;
  After(const Communicator& c, const std::string& k, const std::vector<LayerState>& s, int e)
      : comm(c), ckpt(k), layers(s), E(e) {}
  void visit(Model<float>& m, const Task& t, const TrainConfig& tc) override { run(m, t, tc); }
  void visit(Model<double>& m, const Task& t, const TrainConfig& tc) override { run(m, t, tc); }

  template <class T>
  void run(Model<T>& model, const Task& task, const TrainConfig& tc) {
    std::vector<MoeLayer<T>*> moe = model.moe_layers();
    std::set<const Param<T>*> done;
    for (std::size_t l = 0; l < moe.size(); ++l) {
      const LayerState& st = layers[l];
      ParamList<T> rp;
      moe[l]->replicated_params(rp);
      for (Param<T>* p : rp) {
        const auto it = st.replicated.find(p->name);
        MOESIM_REQUIRE(it != st.replicated.end(), "merged model has a new parameter " << p->name);
        const Mat<double>& old = it->second;
        Mat<double> v(p->value.rows(), p->value.cols());
        if (old.rows() == v.rows() && old.cols() == v.cols()) {
          v = old;
        } else if (old.rows() == v.rows() && old.cols() == E) {
          // Per-expert columns (the router's): each merged expert gets its group's mean column.
          for (std::size_t j = 0; j < st.groups.size(); ++j) {
            v.col(static_cast<Index>(j)).setZero();
            for (int e : st.groups[j]) v.col(static_cast<Index>(j)) += old.col(e);
            v.col(static_cast<Index>(j)) /= static_cast<double>(st.groups[j].size());
          }
        } else if (old.cols() == v.cols() && old.rows() == E) {
          for (std::size_t j = 0; j < st.groups.size(); ++j) {
            v.row(static_cast<Index>(j)).setZero();
            for (int e : st.groups[j]) v.row(static_cast<Index>(j)) += old.row(e);
            v.row(static_cast<Index>(j)) /= static_cast<double>(st.groups[j].size());
          }
        } else {
          MOESIM_REQUIRE(false, "cannot merge " << p->name << ": " << old.rows() << "x" << old.cols()
                                                << " -> " << v.rows() << "x" << v.cols());
        }
        copy_into(*p, v.data());
        done.insert(p);
      }
      std::vector<double>& bias = moe[l]->router().bias();
      if (!st.selection_bias.empty() && !bias.empty()) {
        // Like the router columns: each merged expert takes its group's mean.
        for (std::size_t j = 0; j < st.groups.size(); ++j) {
          bias[j] = 0;
          for (int e : st.groups[j]) bias[j] += st.selection_bias[static_cast<std::size_t>(e)];
          bias[j] /= static_cast<double>(st.groups[j].size());
        }
      }
      ParamList<T> ep;
      moe[l]->expert_params(ep);
      for (Param<T>* p : ep) {
        const ExpertKey k = expert_key(p->name);
        const std::vector<double>& rows = st.merged.at(k.key);
        copy_into(*p, rows.data() + static_cast<std::size_t>(k.index) * static_cast<std::size_t>(p->size()));
      }
    }
    CheckpointReader r(comm, ckpt);
    for (Param<T>* p : model.replicated_params()) {
      if (done.count(p)) continue;
      const std::vector<double> v = r.read_all("replicated/" + p->name + "/value");
      MOESIM_REQUIRE(static_cast<Index>(v.size()) == p->size(), "checkpoint shape of " << p->name);
      copy_into(*p, v.data());
    }
    eval = evaluate_model(comm, model, task, tc, nullptr);
  }
};

void merge_layer(LayerState& st, int E, int E2, MergeMethod method, bool by_routing) {
  if (by_routing) {
    st.similarity = cosine_from_gram(st.gram, E);
  } else {
    std::vector<std::vector<double>> flat(static_cast<std::size_t>(E));
    for (const std::string& key : st.keys) {
      const std::size_t n = static_cast<std::size_t>(st.shapes.at(key).first * st.shapes.at(key).second);
      const std::vector<double>& rows = st.experts.at(key);
      for (int e = 0; e < E; ++e)
        flat[e].insert(flat[e].end(), rows.begin() + e * n, rows.begin() + (e + 1) * n);
    }
    st.similarity = cosine_matrix(flat);
  }
  st.pairs = greedy_pairs(st.similarity, E, E - E2);
  st.groups = merge_groups(E, st.pairs);
  for (const std::string& key : st.keys) {
    const std::size_t n = static_cast<std::size_t>(st.shapes.at(key).first * st.shapes.at(key).second);
    const std::vector<double>& rows = st.experts.at(key);
    auto row = [&](int e) { return std::vector<double>(rows.begin() + e * n, rows.begin() + (e + 1) * n); };
    std::vector<double>& out = st.merged[key];
    for (const std::vector<int>& g : st.groups) {
      const std::vector<double> v = g.size() == 1 ? row(g[0]) : merge_pair(row(g[0]), row(g[1]), method);
      out.insert(out.end(), v.begin(), v.end());
    }
  }
}

}  // namespace

int run_merge(const Communicator& comm, const std::vector<std::string>& args) {
  po::options_description d("Merge (E experts per MoE layer -> E2)");
  d.add_options()
      ("run", po::value<std::string>(), "the trained run: its checkpoint file, or its run file (whose `checkpoint` attribute names the checkpoint)")
      ("experts", po::value<I>(), "E2: experts per MoE layer after merging, E/2 <= E2 < E, divisible by the rank count")
      ("method", po::value<std::string>()->default_value("average"), "average (mean of the two weight tensors) | slerp (spherical interpolation at t = 0.5, per tensor)")
      ("pair-by", po::value<std::string>()->default_value("weights"),
       "weights (cosine of the flattened expert weights) | routing (cosine of the experts' router-probability columns over the validation tokens)")
      ("val-tokens", po::value<I>()->default_value(0), "validation tokens (0 = as many as the run used)")
      ("out", po::value<std::string>()->default_value("merge_run.h5"), "run file (HDF5) to write")
      ("quiet", po::bool_switch()->default_value(false), "no summary line");
  const Parsed p = parse("merge", args, d);
  if (p.help) {
    if (comm.rank() == 0)
      print_help("merge --run FILE --experts E2 --method average|slerp --out FILE",
                 "Merge the experts of a trained run's checkpoint pairwise down to E2 per MoE layer and report the\n"
                 "validation loss before and after, on the same validation tokens.",
                 d);
    return 0;
  }
  const po::variables_map& vm = p.vm;
  MOESIM_CONFIG_CHECK(vm.count("run"), "--run FILE is required (a checkpoint or a run file with one)");
  MOESIM_CONFIG_CHECK(vm.count("experts"), "--experts E2 is required");
  MergeSettings m;
  m.run = vm["run"].as<std::string>();
  m.out = vm["out"].as<std::string>();
  m.experts = vm["experts"].as<I>();
  m.val_tokens = vm["val-tokens"].as<I>();
  m.quiet = vm["quiet"].as<bool>();
  const std::string method = vm["method"].as<std::string>(), pair_by = vm["pair-by"].as<std::string>();
  MOESIM_CONFIG_CHECK(method == "average" || method == "slerp", "--method must be average or slerp (got '" << method << "')");
  MOESIM_CONFIG_CHECK(pair_by == "weights" || pair_by == "routing", "--pair-by must be weights or routing (got '" << pair_by << "')");
  m.method = method == "slerp" ? MergeMethod::kSlerp : MergeMethod::kAverage;
  m.by_routing = pair_by == "routing";
  MOESIM_CONFIG_CHECK(m.experts >= 1, "--experts must be >= 1 (got " << m.experts << ")");
  MOESIM_CONFIG_CHECK(m.val_tokens >= 0, "--val-tokens must be >= 0 (got " << m.val_tokens << ")");
  MOESIM_CONFIG_CHECK(!m.out.empty(), "--out must name a file");

  const std::string ckpt = resolve_checkpoint(comm, m.run);
  CheckpointInfo info;
  {
    CheckpointReader r(comm, ckpt);
    info = r.info();
  }
  const I E = info.experts, E2 = m.experts, P = comm.size();
  const std::string topk = ini_value(info.options, "top-k");
  const I K = topk.empty() ? 1 : std::stoll(topk);
  MOESIM_CONFIG_CHECK(E > 0, "checkpoint '" << ckpt << "' has no MoE layer to merge");
  MOESIM_CONFIG_CHECK(E2 < E, "--experts " << E2 << " must be below the run's E = " << E);
  MOESIM_CONFIG_CHECK(2 * E2 >= E, "--experts " << E2 << " is not reachable from E = " << E
                                               << " by merging disjoint pairs (needs E2 >= " << (E + 1) / 2 << ")");
  MOESIM_CONFIG_CHECK(E2 >= K, "--experts " << E2 << " is below the run's top-k K = " << K);
  MOESIM_CONFIG_CHECK(E % P == 0 && E2 % P == 0, "the rank count (" << P << ") must divide both E = " << E
                                                                    << " and --experts " << E2);
  MOESIM_CONFIG_CHECK(std::filesystem::absolute(m.out) != std::filesystem::absolute(ckpt) &&
                          std::filesystem::absolute(m.out) != std::filesystem::absolute(m.run),
                      "--out must not overwrite the run or its checkpoint");

  auto rf = RunFile::create(comm, m.out, "merge");
  AttrList attrs = options_as_attrs(vm);
  const AttrList prov = provenance_attrs(comm);
  attrs.insert(attrs.end(), prov.begin(), prov.end());
  attrs.insert(attrs.end(), {{"checkpoint", ckpt},
                             {"source_step", info.step},
                             {"source_ranks", info.ranks},
                             {"source_options", info.options},
                             {"experts_before", E},
                             {"experts_after", E2}});
  rf->root_attrs(attrs);
  rf->flush();

  std::vector<std::string> overrides;
  if (m.val_tokens > 0) overrides = {"--val-tokens", std::to_string(m.val_tokens)};
  Before before(comm, ckpt);
  visit_moe_model(comm, info.options, overrides, before);
  for (LayerState& st : before.layers)
    merge_layer(st, static_cast<int>(E), static_cast<int>(E2), m.method, m.by_routing);
  After after(comm, ckpt, before.layers, static_cast<int>(E));
  overrides.insert(overrides.end(), {"--experts", std::to_string(E2)});
  visit_moe_model(comm, info.options, overrides, after);

  const hsize_t Lm = before.layers.size(), Eh = static_cast<hsize_t>(E);
  std::vector<double> sim;
  std::vector<std::int64_t> pairs, group_of(static_cast<std::size_t>(Lm * Eh));
  for (std::size_t l = 0; l < Lm; ++l) {
    const LayerState& st = before.layers[l];
    sim.insert(sim.end(), st.similarity.begin(), st.similarity.end());
    for (const auto& [a, b] : st.pairs) pairs.insert(pairs.end(), {a, b});
    for (std::size_t j = 0; j < st.groups.size(); ++j)
      for (int e : st.groups[j]) group_of[l * Eh + static_cast<std::size_t>(e)] = static_cast<std::int64_t>(j);
  }
  rf->write_array("merge/similarity", {Lm, Eh, Eh}, sim.data());
  rf->write_array("merge/pairs", {Lm, static_cast<hsize_t>(E - E2), 2}, pairs.data());
  rf->write_array("merge/group_of", {Lm, Eh}, group_of.data());
  AttrList fin{{"val_loss_before", before.eval.loss},
               {"val_loss_after", after.eval.loss},
               {"val_loss_change", after.eval.loss - before.eval.loss},
               {"experts_before", E},
               {"experts_after", E2},
               {"params_total_before", before.eval.params_total},
               {"params_total_after", after.eval.params_total}};
  if (before.eval.accuracy >= 0) {
    fin.emplace_back("val_accuracy_before", before.eval.accuracy);
    fin.emplace_back("val_accuracy_after", after.eval.accuracy);
  }
  rf->group_attrs("final", fin);
  rf->mark_complete();
  if (comm.rank() == 0 && !m.quiet) {
    std::printf("moesim merge: E %lld -> %lld per MoE layer (%s, pairs by %s): val loss %.6g -> %.6g\n"
                "  run file: %s\n",
                static_cast<long long>(E), static_cast<long long>(E2), method.c_str(), pair_by.c_str(),
                before.eval.loss, after.eval.loss, m.out.c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace moesim::cli
