#include "train/merge_run.hpp"

#include <cstdio>
#include <filesystem>
#include <set>

#include "train/checkpoint.hpp"
namespace moesim {

namespace {

using I = std::int64_t;

struct Evaluation {
  double loss = 0, accuracy = -1;
  I params_total = 0;
};

// What the merge takes from one MoE layer of the trained model.
struct LayerState {
  ExpertWeights experts;
  std::map<std::string, Mat<double>> replicated;  // router and other replicated params
  std::vector<double> selection_bias;             // E (--balance bias) or empty
  std::vector<double> gram;                       // E x E: sum over tokens of p_e p_f
  MergePlan plan;
  ExpertWeights merged;
};

// Validation loss and accuracy; with `gram_into`, each MoE layer's routing Gram matrix.
template <class T>
Evaluation evaluate_model(const Communicator& comm, Model<T>& model, const Task& task, const TrainConfig& tc,
                          std::vector<LayerState>* gram_into) {
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

// The trained model: loaded from the checkpoint, evaluated, its MoE layers read in full.
template <class T>
Evaluation before(const Communicator& comm, const MoeRunConfig& src, const Task& task, const std::string& ckpt,
                  std::vector<LayerState>& layers) {
  Model<T> model(comm, src.model);
  load_checkpoint(comm, ckpt, model.replicated_params(), model.expert_params(), model_state(model));
  std::vector<MoeLayer<T>*> moe = model.moe_layers();
  layers.resize(moe.size());
  const Evaluation eval = evaluate_model(comm, model, task, src.train, &layers);
  CheckpointReader r(comm, ckpt);
  for (std::size_t l = 0; l < moe.size(); ++l) {
    LayerState& st = layers[l];
    ParamList<T> ps;
    moe[l]->expert_params(ps);
    for (const Param<T>* p : ps) {
      const std::string key = expert_key(p->name).key;
      if (st.experts.rows.count(key)) continue;
      st.experts.keys.push_back(key);
      st.experts.rows[key] = r.read_all("experts/" + key + "/value");
      st.experts.width[key] = static_cast<std::size_t>(p->size());
    }
    ParamList<T> rp;
    moe[l]->replicated_params(rp);
    for (const Param<T>* p : rp) st.replicated[p->name] = p->value.template cast<double>();
    st.selection_bias = moe[l]->router().bias();
  }
  return eval;
}

// The merged model (E2 experts): its MoE layers from the merge, every other parameter
// from the checkpoint.
template <class T>
Evaluation after(const Communicator& comm, const MoeRunConfig& merged_cfg, const Task& task, const std::string& ckpt,
                 const std::vector<LayerState>& layers, int E) {
  Model<T> model(comm, merged_cfg.model);
  std::vector<MoeLayer<T>*> moe = model.moe_layers();
  std::set<const Param<T>*> done;
  for (std::size_t l = 0; l < moe.size(); ++l) {
    const LayerState& st = layers[l];
    ParamList<T> rp;
    moe[l]->replicated_params(rp);
    for (Param<T>* p : rp) {
      const auto it = st.replicated.find(p->name);
      MOESIM_REQUIRE(it != st.replicated.end(), "merged model has a new parameter " << p->name);
      const Mat<double> v = merge_expert_axis(it->second, p->value.rows(), p->value.cols(), E, st.plan.groups, p->name);
      copy_into(*p, v.data());
      done.insert(p);
    }
    std::vector<double>& bias = moe[l]->router().bias();
    if (!st.selection_bias.empty() && !bias.empty()) bias = merge_expert_values(st.selection_bias, st.plan.groups);
    ParamList<T> ep;
    moe[l]->expert_params(ep);
    for (Param<T>* p : ep) {
      const ExpertKey k = expert_key(p->name);
      const std::vector<double>& rows = st.merged.rows.at(k.key);
      MOESIM_REQUIRE(st.merged.width.at(k.key) == static_cast<std::size_t>(p->size()) &&
                         rows.size() >= static_cast<std::size_t>(k.index + 1) * static_cast<std::size_t>(p->size()),
                     "merged expert " << p->name << " does not match the merged model's shape");
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
  return evaluate_model(comm, model, task, merged_cfg.train, nullptr);
}

void write_merge(RunFile& rf, const std::vector<LayerState>& layers, I E, I E2) {
  rf.describe_with(merge_run_datasets());
  const hsize_t Lm = layers.size(), Eh = static_cast<hsize_t>(E);
  std::vector<double> sim;
  std::vector<I> pairs, group_of(static_cast<std::size_t>(Lm * Eh));
  for (std::size_t l = 0; l < Lm; ++l) {
    const MergePlan& plan = layers[l].plan;
    sim.insert(sim.end(), plan.similarity.begin(), plan.similarity.end());
    for (const auto& [a, b] : plan.pairs) pairs.insert(pairs.end(), {a, b});
    for (std::size_t j = 0; j < plan.groups.size(); ++j)
      for (int e : plan.groups[j]) group_of[l * Eh + static_cast<std::size_t>(e)] = static_cast<I>(j);
  }
  rf.write_array("merge/similarity", {Lm, Eh, Eh}, sim.data());
  rf.write_array("merge/pairs", {Lm, static_cast<hsize_t>(E - E2), 2}, pairs.data());
  rf.write_array("merge/group_of", {Lm, Eh}, group_of.data());
}

}  // namespace

std::span<const DatasetInfo> merge_run_datasets() {
  static constexpr DatasetInfo kTable[] = {
      {"merge/similarity", "moe_layer x expert x expert", "float64", "1",
       "cosine similarity of every pair of the source's experts (by `--pair-by`: flattened weights, or router-probability columns over the validation tokens)"},
      {"merge/pairs", "moe_layer x pair x member", "int64", "expert",
       "the E - E2 merged pairs (i < j, original indices), chosen greedily by descending similarity"},
      {"merge/group_of", "moe_layer x expert", "int64", "expert",
       "the new (merged) index of each original expert"},
  };
  return kTable;
}

std::string resolve_checkpoint(const Communicator& comm, const std::string& run) {
  std::string path, error;
  if (comm.rank() == 0) {
    h5::silence_default_error_printing();
    try {
      if (!std::filesystem::exists(run)) throw ConfigError("no such file");
      h5::Handle f = h5::open_user_file(run);
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

int merge_run(const Communicator& comm, const MergeConfig& m, const std::string& ckpt, const CheckpointInfo& info,
              MoeRunConfig source) {
  const I E = info.experts, E2 = m.experts, P = comm.size(), K = source.model.moe.top_k;
  MOESIM_CONFIG_CHECK(E > 0, "checkpoint '" << ckpt << "' has no MoE layer to merge");
  MOESIM_CONFIG_CHECK(E2 < E, "--experts " << E2 << " must be below the run's E = " << E);
  MOESIM_CONFIG_CHECK(2 * E2 >= E, "--experts " << E2 << " is not reachable from E = " << E
                                               << " by merging disjoint pairs (needs E2 >= " << (E + 1) / 2 << ")");
  MOESIM_CONFIG_CHECK(E2 >= K, "--experts " << E2 << " is below the run's top-k K = " << K);
  MOESIM_CONFIG_CHECK(std::filesystem::absolute(m.out) != std::filesystem::absolute(ckpt) &&
                          std::filesystem::absolute(m.out) != std::filesystem::absolute(m.run),
                      "--out must not overwrite the run or its checkpoint");

  AttrList task_facts;
  const std::unique_ptr<Task> task = make_task(comm, source.task, task_facts);
  fit_model_to_task(*task, source.task, source.model);
  MoeRunConfig merged = source;
  merged.model.moe.experts = static_cast<int>(E2);
  merged.model.moe.expert_order.clear();  // the merged experts sit contiguously (an order of E names E experts)
  // The merged layers split over this job's ranks like any run's (--ep-size of the source,
  // else gcd(E2, P)); the source's own layout is checked when it is built.
  try {
    merged.model.moe.validate(static_cast<int>(P), source.model.granularity);
  } catch (const ConfigError& e) {
    throw ConfigError(std::string("--experts ") + std::to_string(E2) + " cannot run here: " + e.what());
  }

  auto rf = RunFile::create(comm, m.out, "merge");
  AttrList attrs = provenance_attrs(comm);
  attrs.insert(attrs.end(), {{"checkpoint", ckpt},
                             {"source_step", info.step},
                             {"source_ranks", info.ranks},
                             {"source_options", info.options},
                             {"experts_before", E},
                             {"experts_after", E2}});
  rf->option_attrs(m.options);
  rf->root_attrs(attrs);
  rf->flush();

  const bool fp64 = source.precision == "fp64";
  std::vector<LayerState> layers;
  const Evaluation ev_before = fp64 ? before<double>(comm, source, *task, ckpt, layers)
                                    : before<float>(comm, source, *task, ckpt, layers);
  for (LayerState& st : layers) {
    st.plan = plan_merge(st.experts, st.gram, static_cast<int>(E), static_cast<int>(E2), m.by_routing);
    st.merged = merge_experts(st.experts, st.plan, m.method);
  }
  const Evaluation ev_after = fp64 ? after<double>(comm, merged, *task, ckpt, layers, static_cast<int>(E))
                                   : after<float>(comm, merged, *task, ckpt, layers, static_cast<int>(E));

  write_merge(*rf, layers, E, E2);
  AttrList fin{{"val_loss_before", ev_before.loss},
               {"val_loss_after", ev_after.loss},
               {"val_loss_change", ev_after.loss - ev_before.loss},
               {"experts_before", E},
               {"experts_after", E2},
               {"params_total_before", ev_before.params_total},
               {"params_total_after", ev_after.params_total}};
  if (ev_before.accuracy >= 0) {
    fin.emplace_back("val_accuracy_before", ev_before.accuracy);
    fin.emplace_back("val_accuracy_after", ev_after.accuracy);
  }
  rf->group_attrs("final", fin);
  rf->mark_complete();
  if (comm.rank() == 0 && !m.quiet) {
    std::printf("moesim merge: E %lld -> %lld per MoE layer (%s, pairs by %s): val loss %.6g -> %.6g\n"
                "  run file: %s\n",
                static_cast<long long>(E), static_cast<long long>(E2),
                m.method == MergeMethod::kSlerp ? "slerp" : "average", m.by_routing ? "routing" : "weights",
                ev_before.loss, ev_after.loss, m.out.c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace moesim
