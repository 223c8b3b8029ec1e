#pragma once
// The MoE training loop: data shard per rank, forward/backward through the
// expert-parallel model, all-reduce of replicated gradients, Adam, metrics to
// the run file, progress on rank 0.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "data/task.hpp"
#include "io/run_file.hpp"
#include "moe/model.hpp"
#include "nn/adam.hpp"
#include "train/checkpoint.hpp"

namespace moesim {

struct TrainConfig {
  std::int64_t steps = 200;
  std::int64_t batch_tokens = 1024;  // B, global
  std::int64_t val_tokens = 4096;
  std::int64_t eval_every = 0;       // 0: validate at the end only
  AdamConfig adam;                   // adam.lr is the schedule's peak
  LrSchedule schedule;               // the learning rate of step s: scheduled_lr(adam.lr, schedule, s, steps)
  double grad_clip = 1.0;            // global gradient-norm clip; 0 = off
  double progress_interval = 2.0;    // seconds between progress lines
  bool quiet = false;
  std::int64_t flush_every = 0;      // steps between run-file flushes (0: by time only)
  double flush_seconds = 10;         // also flush once this long has passed since the last (0: off)
  std::string checkpoint;            // checkpoint file; empty: none
  std::int64_t checkpoint_every = 0; // steps between checkpoints (0: only when stopped and at the end)
  std::string options;               // the run's options (INI text), stored in checkpoints
  std::int64_t chunk_tokens = 0;     // rank-count invariant sums in chunks of this many tokens
                                     // (rank_invariance(): 0 where they cannot hold)
  std::int64_t expert_chunks = 0;    // leaves per batch of each expert's gradient (rank_invariance())
  TrainProgress start;               // a resumed run continues after start.step
};

struct TrainSummary {
  std::int64_t steps_done = 0;
  bool interrupted = false;          // stopped by a stop signal before the last step
  double final_train_loss = 0;
  double val_loss = 0;
  double val_accuracy = -1;          // classification only
  double tokens_per_s = 0;           // mean over steps after the first
  double wall_seconds = 0;
  double a2a_seconds = 0;            // sum over steps (max over ranks each step)
  double a2a_wait_seconds = 0;       // the same for the waits before the exchanges
  double logging_seconds = 0;        // appending metric rows and flushing the run file (this rank)
  double compute_seconds = 0;
  double a2a_bytes = 0;
  double dropped_fraction = 0;       // mean over steps
  // Tasks with known sources: final validation counts of (MoE layer, student top-1
  // expert, source), L_moe x E x S row-major.
  std::vector<std::int64_t> routing_counts;
};

// Whether a run's results are bit-identical on any rank count and --ep-size: every product
// over token rows runs in blocks of `chunk_tokens` global tokens, an expert's rows in
// blocks of `expert_chunks` leaves per batch (runs of whole token chunks), and every
// gradient is summed in one binary tree over its blocks (comm/ordered_sum). That needs
// B / chunk a power of two, P a power of two dividing it, validation batches that are
// whole chunks on every rank, and each expert's replica groups (P / ep-size) dividing its
// leaves. Leaves default to B / chunk / gcd(E, B / chunk): enough for every layout with
// the default ep-size gcd(E, P), and one block per expert when E >= B / chunk.
struct RankInvariance {
  bool identical = false;
  std::string reason;             // why not (empty when identical)
  std::int64_t chunk_tokens = 0;  // the chunk the run uses: 0 when the chunk conditions fail
  std::int64_t expert_chunks = 0; // the experts' leaves per batch the run uses
};
// expert_chunks: --expert-chunks (0 = the default above); experts E, ep_size N of P ranks.
RankInvariance rank_invariance(std::int64_t chunk_tokens, std::int64_t batch_tokens,
                               std::int64_t val_tokens, int ranks, int experts = 1, int ep_size = 1,
                               std::int64_t expert_chunks = 0);

template <class T>
TrainSummary train(const Communicator& comm, Model<T>& model, const Task& task,
                   const TrainConfig& cfg, RunFile& out);

// COLLECTIVE. Mean loss (and accuracy) over the validation stream. With
// `routing_counts` (tasks with sources() > 0), also the L_moe x E x S counts of
// (MoE layer, top-1 expert, source), summed over ranks. `after_forward`, if set, runs
// after each chunk's forward pass (e.g. to read the routing).
template <class T>
std::pair<double, double> evaluate(const Communicator& comm, Model<T>& model,
                                   const Task& task, std::int64_t tokens,
                                   std::int64_t chunk,
                                   std::vector<std::int64_t>* routing_counts = nullptr,
                                   const std::function<void()>& after_forward = {});

}  // namespace moesim
