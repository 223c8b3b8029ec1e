#pragma once
// Checkpoints: the whole training state of a run in one HDF5 file, written and read with
// parallel HDF5 (collectively: every rank reads its own experts' rows; with --ep-size
// N < P the experts have P/N replicas and only the first, expert group 0, writes them).
//
// Layout (checkpoint_version 1):
//   /                attributes: kind = "checkpoint", checkpoint_version, step (steps done),
//                    adam_t, precision, ranks (at writing), experts (E), options (the run's
//                    options as INI text), moesim_version, git_revision, time; complete = 1 last
//   /train           attributes: the training loop's running totals (TrainProgress)
//   /replicated/<name>/{value,adam_m,adam_v}   (rows, cols) float64, one per replicated parameter
//   /experts/<key>/{value,adam_m,adam_v}       (E, rows, cols) float64; row e is global expert e
//   /state/<name>    (n,) float64: replicated training state that is not a parameter
//                    (e.g. a router's selection bias), by name
//   /metrics/*       the run file's per-step datasets for steps 1..step (and its
//                    metrics_until_step<S> groups, see load_checkpoint)
// <name> is the parameter's own name; <key> is an expert parameter's name with its
// "expert<N>" part turned into "expert" (block0.moe.expert3.w1 -> block0.moe.expert.w1).
// Whatever the model's parameter lists hold is saved by name, so new parameters need no
// change here. The file is written as <path>.tmp and renamed into place, so a kill
// mid-write leaves the previous checkpoint (or none), never a torn one under <path>.
#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "io/hdf5.hpp"
#include "io/run_file.hpp"
#include "moe/model.hpp"
#include "nn/param.hpp"

namespace moesim {

constexpr std::int64_t kCheckpointVersion = 1;

// Replicated state that is not a parameter (identical on every rank), by name. Empty
// vectors are not stored.
using StateList = std::vector<std::pair<std::string, std::vector<double>*>>;

// Training state of the model that is not a parameter, for checkpoints: each MoE
// layer's router selection bias (--balance bias), named <router>.selection_bias.
template <class T>
StateList model_state(Model<T>& model) {
  StateList s;
  for (MoeLayer<T>* l : model.moe_layers()) {
    std::string name = l->router().weight().name;
    name = name.substr(0, name.rfind('.')) + ".selection_bias";
    s.emplace_back(name, &l->router().bias());
  }
  return s;
}

// The training loop's running totals, enough to continue it as if never stopped.
struct TrainProgress {
  std::int64_t step = 0;     // steps done; the next step is step + 1 (data and RNG are keyed by it)
  std::int64_t adam_t = 0;   // Adam's step count (bias correction)
  double tok_s_sum = 0;      // sum of tokens/s over steps after the first
  std::int64_t tok_s_n = 0;
  double dropped_sum = 0;    // sum of per-step dropped fractions
  double a2a_seconds = 0, compute_seconds = 0, a2a_bytes = 0;
  double a2a_wait_seconds = 0;
  double logging_seconds = 0;  // this rank's time appending and flushing metric rows
  double train_loss = 0;     // of the last step
  double wall_seconds = 0;   // of the earlier invocations together
};

struct CheckpointInfo {
  std::int64_t step = 0, adam_t = 0, ranks = 0, experts = 0;
  std::string precision, options;
};

// "block0.moe.expert3.w1" -> {"block0.moe.expert.w1", 3}; index -1 when the name has no
// "expert<N>" part.
struct ExpertKey {
  std::string key;
  int index = -1;
};
ExpertKey expert_key(const std::string& param_name);

template <class T>
constexpr const char* precision_name() {
  return sizeof(T) == sizeof(double) ? "fp64" : "fp32";
}

// COLLECTIVE. Writes the parameters (values and Adam moments), `progress`, `options`
// (INI text) and, from rank 0, the metrics `history` holds (flushed first; may be null).
// A failure to write is a ConfigError on every rank.
template <class T>
void save_checkpoint(const Communicator& comm, const std::string& path,
                     const ParamList<T>& replicated, const ParamList<T>& experts,
                     const TrainProgress& progress, const std::string& options, RunFile* history,
                     const StateList& state = {});

// Run-file group prefix for per-rank-shaped series of steps run on another rank count:
// <prefix><S>/<name> holds them up to step S, <prefix><S>/<name>_step their steps.
constexpr const char* kEarlierMetrics = "metrics_until_step";

// COLLECTIVE. Loads every parameter of the lists (values and Adam moments) by name and,
// for expert parameters, by global expert index, so any valid (ranks, --ep-size) can
// read a checkpoint written under any other. ConfigError on every rank when the file is
// missing, incomplete, of another precision, or lacks a parameter or holds it with another
// shape. Writes nothing, so a refused resume leaves every file as it was.
template <class T>
TrainProgress load_checkpoint(const Communicator& comm, const std::string& path,
                              const ParamList<T>& replicated, const ParamList<T>& experts,
                              const StateList& state = {});

// COLLECTIVE. Rank 0 appends the checkpoint's metrics (steps 1..step) to `history`, so
// the resumed run's file reads as one run; the series in `per_rank_series` (shaped by P)
// go to kEarlierMetrics<step> instead when P changed.
void append_checkpoint_history(const Communicator& comm, const std::string& path, RunFile& history,
                               const std::vector<std::string>& per_rank_series, std::int64_t step);

// Options that may differ between a checkpoint and the run resuming it: they do not
// change the trajectory (`--steps` may grow; with a decaying --lr-decay the schedule then
// stretches from the resume step on; --device changes only the experts' products' rounding,
// and a GPU run's checkpoint is the CPU path's file, so it resumes on CPU ranks and back).
inline const std::vector<std::string> kResumeMayChange{"steps",    "blas-threads", "flush-every", "flush-seconds",
                                                       "progress-interval", "quiet", "dispatch",
                                                       "ep-size",  "ranks-per-node", "expert-placement",
                                                       "device"};

// Throws ConfigError unless `options` (INI text, as save_checkpoint stores it) name the
// run that wrote the checkpoint: every option both hold, except kResumeMayChange, equal.
void check_same_run(const std::string& path, const CheckpointInfo& info, const std::string& options);

// Read access for tools that reshape a model (merge). Construction and every read are
// COLLECTIVE; construction throws ConfigError on every rank for a file that is missing,
// unreadable, incomplete or not a checkpoint.
class CheckpointReader {
 public:
  CheckpointReader(const Communicator& comm, const std::string& path);
  const CheckpointInfo& info() const { return info_; }
  const std::string& path() const { return path_; }
  bool has(const std::string& dataset) const;  // e.g. "replicated/head.w/value"
  std::vector<hsize_t> dims(const std::string& dataset) const;
  // The whole dataset on every rank (float64, row-major).
  std::vector<double> read_all(const std::string& dataset) const;
  // Rows [first, first + count) along the first axis.
  std::vector<double> read_rows(const std::string& dataset, hsize_t first, hsize_t count) const;
  TrainProgress progress() const;
  // Keys under /experts.
  std::vector<std::string> expert_keys() const;

 private:
  const Communicator& comm_;
  std::string path_;
  h5::Handle file_;
  CheckpointInfo info_;
};

}  // namespace moesim
