#include "train/moe_run.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numbers>

#include "core/blas.hpp"
#include "core/stop_signal.hpp"
#include "data/source_recovery.hpp"
#include "train/checkpoint.hpp"
#include "train/memory_estimate.hpp"
#include "train/step_metrics.hpp"

namespace moesim {

namespace {

using I = std::int64_t;

std::string human(double v) {
  char buf[32];
  if (v >= 1e9) std::snprintf(buf, sizeof buf, "%.2fG", v / 1e9);
  else if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

void print_summary(const Communicator& comm, const MoeRunConfig& m, const TrainSummary& s, const ParamCounts& pc) {
  const double step_time = s.a2a_seconds + s.a2a_wait_seconds + s.compute_seconds;
  std::printf(
      "moesim moe: %lld steps on %d ranks in %.1f s\n"
      "  train loss %.5f | val loss %.5f%s\n"
      "  params %s total, %s active per token | %s FLOPs/token | utilization %.3f params/FLOP\n"
      "  %s tokens/s | all-to-all %.1f%% of step time (+%.1f%% waiting for the slowest rank), %s B/step between "
      "ranks | dropped %.2f%%\n"
      "  run file: %s\n",
      static_cast<long long>(s.steps_done), comm.size(), s.wall_seconds, s.final_train_loss, s.val_loss,
      s.val_accuracy >= 0 ? (" | val accuracy " + std::to_string(s.val_accuracy)).c_str() : "",
      human(static_cast<double>(pc.total)).c_str(), human(static_cast<double>(pc.active)).c_str(),
      human(static_cast<double>(pc.flops_per_token)).c_str(), pc.param_utilization(), human(s.tokens_per_s).c_str(),
      step_time > 0 ? 100.0 * s.a2a_seconds / step_time : 0.0,
      step_time > 0 ? 100.0 * s.a2a_wait_seconds / step_time : 0.0,
      human(s.a2a_bytes / static_cast<double>(std::max<I>(1, s.steps_done))).c_str(), 100.0 * s.dropped_fraction,
      m.out.c_str());
  std::fflush(stdout);
}

// The run file is created only here, after every check a resume can fail (the
// checkpoint's kind, run, shapes), so a refused resume leaves --out as it was.
template <class T>
int train_and_log(const Communicator& comm, const MoeRunConfig& m, const Task& task, const AttrList& task_facts,
                  bool resuming) {
  Model<T> model(comm, m.model);
  const ParamCounts pc = count_params(m.model);
  TrainConfig tc = m.train;
  if (resuming)
    tc.start = load_checkpoint(comm, tc.checkpoint, model.replicated_params(), model.expert_params(),
                               model_state(model));
  auto file = RunFile::create(comm, m.out, "moe");
  RunFile& rf = *file;
  rf.describe_with(step_metric_datasets());
  rf.describe_with(moe_run_datasets());
  AttrList attrs = provenance_attrs(comm, m.model.moe.ranks_per_node);
  attrs.insert(attrs.end(), m.effective.begin(), m.effective.end());
  rf.option_attrs(m.options);
  rf.root_attrs(attrs);
  rf.group_attrs("task", task_facts);
  if (resuming) {
    append_checkpoint_history(comm, tc.checkpoint, rf, kPerRankSeries, tc.start.step);
    rf.root_attrs({{"resumed_at_step", tc.start.step}});
  }
  rf.flush();
  install_stop_handlers();
  if (resuming && comm.rank() == 0 && !tc.quiet) {
    std::printf("moesim moe: resuming from step %lld of %s\n", static_cast<long long>(tc.start.step),
                tc.checkpoint.c_str());
    std::fflush(stdout);
  }
  const TrainSummary s = train(comm, model, task, tc, rf);
  AttrList fin{{"steps_done", s.steps_done},
               {"train_loss", s.final_train_loss},
               {"params_total", pc.total},
               {"params_active", pc.active},
               {"flops_per_token", pc.flops_per_token},
               {"param_utilization", pc.param_utilization()},
               {"tokens_per_s", s.tokens_per_s},
               {"wall_seconds", s.wall_seconds},
               {"a2a_seconds", s.a2a_seconds},
               {"a2a_wait_seconds", s.a2a_wait_seconds},
               {"logging_seconds", comm.allreduce_max(s.logging_seconds)},
               {"peak_rss_bytes", peak_resident_bytes(comm)},
               {"compute_seconds", s.compute_seconds},
               {"a2a_bytes", s.a2a_bytes},
               {"dropped_fraction", s.dropped_fraction},
               {"token_bytes", static_cast<I>(m.model.d_model * static_cast<Index>(sizeof(T)))}};
  if (!s.interrupted) fin.emplace_back("val_loss", s.val_loss);
  if (s.val_accuracy >= 0) fin.emplace_back("val_accuracy", s.val_accuracy);
  task_results(task, s, m.model.moe.experts, fin, rf);
  rf.group_attrs("final", fin);
  if (s.interrupted) {
    rf.root_attrs({{"stopped_at_step", s.steps_done}});
    rf.flush();
    if (comm.rank() == 0)
      std::fprintf(stderr, "moesim moe: stopped by signal after step %lld; %s is left incomplete\n",
                   static_cast<long long>(s.steps_done), m.out.c_str());
    return 143;
  }
  rf.mark_complete();
  if (comm.rank() == 0 && !m.train.quiet) print_summary(comm, m, s, pc);
  return 0;
}

}  // namespace

int moe_run(const Communicator& comm, MoeRunConfig m) {
  AttrList task_facts;
  const std::unique_ptr<Task> task = make_task(comm, m.task, task_facts);  // bad data fails here, before any file
  fit_model_to_task(*task, m.task, m.model);
  bool moe_blocks = false;
  for (int l = 0; l < m.model.layers; ++l) moe_blocks = moe_blocks || m.model.is_moe_block(l);
  const std::string warning = moe_blocks ? m.model.moe.router_warning() : std::string();
  if (!warning.empty() && comm.rank() == 0) {
    std::fprintf(stderr, "moesim moe: warning: %s\n", warning.c_str());
    std::fflush(stderr);
  }
  const MemoryEstimate need = estimate_memory(m.model, m.train.batch_tokens, m.train.val_tokens, comm.size(),
                                              m.precision == "fp64" ? 8 : 4);
  check_memory(comm, need);
  m.effective.emplace_back("memory_estimate_bytes", need.total());
  int found = 0;
  if (m.resume && comm.rank() == 0) found = std::filesystem::exists(m.train.checkpoint) ? 1 : 0;
  comm.broadcast(&found, 1, 0);
  if (m.resume && !found && comm.rank() == 0 && !m.train.quiet)
    std::printf("moesim moe: no checkpoint %s yet, starting at step 1\n", m.train.checkpoint.c_str());
  if (!m.train.checkpoint.empty()) {
    // Checkpoints are written as <path>.tmp and renamed: probe that now, not after the whole
    // run (an unwritable path was found at the first checkpoint, the run's work lost).
    std::string why;
    if (comm.rank() == 0) {
      const std::string probe = m.train.checkpoint + ".tmp";
      const std::filesystem::path parent = std::filesystem::path(probe).parent_path();
      std::error_code ec;
      if (!parent.empty()) std::filesystem::create_directories(parent, ec);  // as the writer does
      const bool existed = std::filesystem::exists(probe);
      std::ofstream f(probe, std::ios::app);
      if (ec) why = "cannot create directory " + parent.string() + ": " + ec.message();
      else if (!f) why = "cannot create " + probe;
      f.close();
      if (why.empty() && !existed) std::filesystem::remove(probe, ec);
    }
    comm.agree_or_throw(why.empty(), "cannot write --checkpoint '" + m.train.checkpoint + "': " + why);
  }
  if (found) {  // before the run file exists: a refused resume must leave --out alone
    const CheckpointReader ckpt(comm, m.train.checkpoint);
    check_same_run(m.train.checkpoint, ckpt.info(), m.train.options);
    const std::int64_t done = ckpt.info().step;
    MOESIM_CONFIG_CHECK(done <= m.train.steps, "--steps (" << m.train.steps << ") is below the " << done
                                                 << " steps checkpoint " << m.train.checkpoint
                                                 << " holds: give --steps >= " << done << " to resume it");
  }
  set_blas_threads(m.blas_threads);
  return m.precision == "fp64" ? train_and_log<double>(comm, m, *task, task_facts, found != 0)
                               : train_and_log<float>(comm, m, *task, task_facts, found != 0);
}

void task_results(const Task& task, const TrainSummary& s, int E, AttrList& fin, RunFile& rf) {
  if (task.name() == "lm") {
    fin.emplace_back("train_bits_per_byte", s.final_train_loss / std::numbers::ln2);
    if (!s.interrupted) fin.emplace_back("val_bits_per_byte", s.val_loss / std::numbers::ln2);
  }
  const int S = task.sources();
  if (S <= 0 || s.routing_counts.empty() || E <= 0) return;
  const std::size_t per_layer = static_cast<std::size_t>(E * S);
  const std::size_t L = s.routing_counts.size() / per_layer;
  std::vector<double> mi, nmi, purity;
  for (std::size_t l = 0; l < L; ++l) {
    const SourceRecovery r = source_recovery(s.routing_counts.data() + l * per_layer, E, S);
    mi.push_back(r.mutual_info);
    nmi.push_back(r.nmi);
    purity.push_back(r.purity);
  }
  const std::vector<hsize_t> dims{static_cast<hsize_t>(L)};
  rf.write_array("routing_recovery/counts", {static_cast<hsize_t>(L), static_cast<hsize_t>(E), static_cast<hsize_t>(S)},
                 s.routing_counts.data());
  rf.write_array("routing_recovery/mutual_info", dims, mi.data());
  rf.write_array("routing_recovery/nmi", dims, nmi.data());
  rf.write_array("routing_recovery/purity", dims, purity.data());
  // The best-recovering MoE layer.
  const auto best = static_cast<std::size_t>(std::max_element(nmi.begin(), nmi.end()) - nmi.begin());
  fin.emplace_back("val_routing_mi", mi[best]);
  fin.emplace_back("val_routing_nmi", nmi[best]);
  fin.emplace_back("val_routing_purity", purity[best]);
  fin.emplace_back("val_routing_layer", static_cast<I>(best));
}

std::span<const DatasetInfo> moe_run_datasets() {
  static constexpr DatasetInfo kTable[] = {
      {"routing_recovery/counts", "moe_layer x expert x source", "int64", "tokens",
       "validation tokens per (MoE layer, student top-1 expert, source: the teacher's top-1 expert or the regime); a token's top-1 expert is its expert with the largest gate weight"},
      {"routing_recovery/mutual_info", "moe_layer", "float64", "nats",
       "mutual information between each MoE layer's top-1 expert and the source, over the validation tokens"},
      {"routing_recovery/nmi", "moe_layer", "float64", "1",
       "`mutual_info` normalised by sqrt(H(expert) H(source)): 1 = the experts recover the sources exactly"},
      {"routing_recovery/purity", "moe_layer", "float64", "fraction",
       "share of validation tokens whose source is the most common source of their top-1 expert"},
      {"metrics_until_step<N>/<name>", "step x ...", "float64 or int64", "as metrics/<name>",
       "after a resume on another rank count: the rows of a per-rank series (shaped by the old P) up to step N, with their attributes"},
      {"metrics_until_step<N>/<name>_step", "step", "int64", "step", "the step of each row of `<name>` beside it"},
  };
  return kTable;
}

}  // namespace moesim
