#include "train/trainer.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "comm/exact_sum.hpp"
#include "comm/ordered_sum.hpp"
#include "core/shard.hpp"
#include "core/stop_signal.hpp"
#include "core/timer.hpp"
#include "moe/loss.hpp"
#include "train/step_metrics.hpp"

namespace moesim {

namespace {

std::string clock_str(double s) {
  if (!std::isfinite(s) || s < 0) s = 0;
  const long t = static_cast<long>(s + 0.5);
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
  return buf;
}

// `smoothed`: tokens/s averaged over the steps so far (exponential moving average);
// `val_loss`: the last validation loss, NaN before the first (then left out).
void print_progress(std::int64_t step, std::int64_t steps, const StepMetrics& m, double smoothed,
                    double val_loss, double elapsed, double left) {
  char val[48] = "";
  if (!std::isnan(val_loss)) std::snprintf(val, sizeof val, " | val %.5f", val_loss);
  std::printf("step %lld/%lld | loss %.5f%s | aux %.4f | dropped %.2f%% | %.1fk tok/s (smoothed %.1fk) | %s elapsed | "
              "%s left\n",
              static_cast<long long>(step), static_cast<long long>(steps), m.train_loss, val, m.aux_loss,
              100.0 * m.dropped_fraction, m.tokens_per_s / 1e3, smoothed / 1e3, clock_str(elapsed).c_str(),
              clock_str(left).c_str());
  std::fflush(stdout);
}

// The step's share of the running totals; the first step's speed (warm-up) is left out
// unless it is the only one.
void add_step(TrainProgress& t, std::int64_t step, const StepMetrics& m, bool count_speed) {
  if (count_speed) {
    t.tok_s_sum += m.tokens_per_s;
    ++t.tok_s_n;
  }
  t.dropped_sum += m.dropped_fraction;
  t.a2a_seconds += m.a2a_seconds;
  t.a2a_wait_seconds += m.a2a_wait_seconds;
  t.compute_seconds += m.compute_seconds;
  t.a2a_bytes += m.a2a_bytes;
  t.train_loss = m.train_loss;
  t.step = step;
}

void set_totals(TrainSummary& sum, const TrainProgress& t) {
  sum.steps_done = t.step;
  sum.final_train_loss = t.train_loss;
  sum.a2a_seconds = t.a2a_seconds;
  sum.a2a_wait_seconds = t.a2a_wait_seconds;
  sum.logging_seconds = t.logging_seconds;
  sum.compute_seconds = t.compute_seconds;
  sum.a2a_bytes = t.a2a_bytes;
  sum.tokens_per_s = t.tok_s_n > 0 ? t.tok_s_sum / static_cast<double>(t.tok_s_n) : 0.0;
  sum.dropped_fraction = t.step > 0 ? t.dropped_sum / static_cast<double>(t.step) : 0.0;
}

// Chunked runs overwrite every grad with its tree's result, so only the trees restart.
template <class T>
void zero_grads(const ParamList<T>& ps, bool chunked) {
  for (Param<T>* p : ps) {
    if (!chunked) p->grad.setZero();
    p->tree.reset(static_cast<std::size_t>(p->size()));
  }
}

// Exact (comm/exact_sum): the sum over ranks must not depend on how many hold the terms.
template <class T>
FixedSum sum_squares(const ParamList<T>& ps) {
  FixedSum s;
  for (Param<T>* p : ps) s += static_cast<double>(p->grad.squaredNorm());
  return s;
}

// Chunked gradients: each parameter's local tree, then one tree over the ranks' nodes
// (comm/ordered_sum), for every replicated gradient in one buffer.
template <class T>
void tree_reduce_grads(const Communicator& comm, const ParamList<T>& ps, std::vector<T>& buf) {
  if (comm.size() == 1) {  // the local tree is the whole tree: no buffer, no copy
    for (Param<T>* p : ps) p->tree.result(p->grad.data());
    return;
  }
  std::size_t total = 0;
  std::vector<std::size_t> sizes;
  for (Param<T>* p : ps) {
    total += static_cast<std::size_t>(p->size());
    sizes.push_back(static_cast<std::size_t>(p->size()));
  }
  buf.resize(total);
  std::vector<char> nonempty;
  std::size_t off = 0;
  for (Param<T>* p : ps) {
    nonempty.push_back(p->tree.result(buf.data() + off) ? 1 : 0);
    off += static_cast<std::size_t>(p->size());
  }
  tree_allreduce(comm, buf.data(), sizes, nonempty);
  off = 0;
  for (Param<T>* p : ps) {
    std::copy(buf.data() + off, buf.data() + off + p->size(), p->grad.data());
    off += static_cast<std::size_t>(p->size());
  }
}

// One all-reduce for every replicated gradient.
template <class T>
void allreduce_grads(const Communicator& comm, const ParamList<T>& ps, std::vector<T>& buf) {
  std::size_t total = 0;
  for (Param<T>* p : ps) total += static_cast<std::size_t>(p->size());
  buf.resize(total);
  std::size_t off = 0;
  for (Param<T>* p : ps) {
    std::copy(p->grad.data(), p->grad.data() + p->size(), buf.data() + off);
    off += static_cast<std::size_t>(p->size());
  }
  comm.allreduce_sum(buf.data(), static_cast<int>(total));
  off = 0;
  for (Param<T>* p : ps) {
    std::copy(buf.data() + off, buf.data() + off + p->size(), p->grad.data());
    off += static_cast<std::size_t>(p->size());
  }
}

}  // namespace

RankInvariance rank_invariance(std::int64_t chunk, std::int64_t B, std::int64_t val_tokens, int P,
                               int E, int N, std::int64_t expert_chunks) {
  RankInvariance r;
  auto no = [&](const std::string& why) {
    r.reason = why;
    return r;
  };
  if (chunk <= 0) return no("--chunk-tokens 0 (layout-dependent sums)");
  if (chunk % 8 != 0) return no("--chunk-tokens " + std::to_string(chunk) + " is not a multiple of 8");
  if (B % chunk != 0 || !is_power_of_two(B / chunk))
    return no("--batch-tokens " + std::to_string(B) + " is not a power of two times --chunk-tokens " +
              std::to_string(chunk));
  if (!is_power_of_two(P) || (B / chunk) % P != 0)
    return no(std::to_string(P) + " ranks: not a power of two dividing the " + std::to_string(B / chunk) +
              " chunks of a batch");
  const std::int64_t tail = val_tokens % B;
  if (tail % (chunk * P) != 0)
    return no("the last validation batch (" + std::to_string(tail) + " tokens) is not whole chunks on every rank");
  const std::int64_t L = B / chunk;
  MOESIM_CONFIG_CHECK(expert_chunks >= 0 && (expert_chunks == 0 || (is_power_of_two(expert_chunks) && L % expert_chunks == 0)),
                      "--expert-chunks (" << expert_chunks << ") must be 0 (automatic) or a power of two dividing the "
                                          << L << " token chunks of a batch (--batch-tokens / --chunk-tokens)");
  const std::int64_t e2 = std::min<std::int64_t>(static_cast<std::int64_t>(E) & -static_cast<std::int64_t>(E), L);
  const std::int64_t leaves = expert_chunks > 0 ? expert_chunks : L / std::max<std::int64_t>(e2, 1);
  const std::int64_t G = N > 0 ? P / N : 1;
  r.chunk_tokens = chunk;
  r.expert_chunks = std::max(leaves, G);
  if (G > leaves)
    return no("--ep-size " + std::to_string(N) + " makes " + std::to_string(G) +
              " replica groups of each expert, more than its " + std::to_string(leaves) +
              " gradient leaves per batch (--expert-chunks " + std::to_string(G) + " or more restores bit-identity)");
  r.identical = true;
  return r;
}

template <class T>
std::pair<double, double> evaluate(const Communicator& comm, Model<T>& model,
                                   const Task& task, std::int64_t tokens,
                                   std::int64_t chunk, std::vector<std::int64_t>* routing_counts,
                                   const std::function<void()>& after_forward) {
  FixedSum sums[2];  // loss, correct: exact, so the means do not depend on the layout
  model.set_mode(false, 0);
  const std::vector<MoeLayer<T>*> moe = model.moe_layers();
  const int E = model.config().moe.experts, S = task.sources();
  if (routing_counts) routing_counts->assign(moe.size() * static_cast<std::size_t>(E * S), 0);
  std::int64_t chunk_index = 0;
  for (std::int64_t start = 0; start < tokens; start += chunk, ++chunk_index) {
    const std::int64_t n = std::min(chunk, tokens - start);
    const Shard sh = shard_of(n, comm.rank(), comm.size());
    Batch b = task.batch(Stream::kValidation, static_cast<std::uint64_t>(chunk_index),
                         sh.first, sh.count);
    Mat<T> x = b.x.cast<T>(), out;
    model.forward(x, out);
    if (after_forward) after_forward();
    const LossResult lr = task_loss<T>(out, b, task.classification(), n, nullptr);
    if (routing_counts && S > 0)
      for (std::size_t l = 0; l < moe.size(); ++l)
        for (Index t = 0; t < sh.count; ++t)
          ++(*routing_counts)[(l * E + static_cast<std::size_t>(moe[l]->routing().top_expert(t))) * S +
                              static_cast<std::size_t>(b.cluster[static_cast<std::size_t>(t)])];
    sums[0] += lr.sum;
    sums[1] += static_cast<double>(lr.correct);
  }
  allreduce_exact(comm, sums, 2);
  if (routing_counts && !routing_counts->empty())
    comm.allreduce_sum(routing_counts->data(), static_cast<int>(routing_counts->size()));
  const double denom = tokens > 0 ? static_cast<double>(tokens) : 1.0;
  return {sums[0].value() / denom, task.classification() ? sums[1].value() / denom : -1.0};
}

template <class T>
TrainSummary train(const Communicator& comm, Model<T>& model, const Task& task,
                   const TrainConfig& cfg, RunFile& out) {
  const bool talk = comm.rank() == 0 && !cfg.quiet;
  ParamList<T> replicated = model.replicated_params();
  ParamList<T> experts = model.expert_params();
  ParamList<T> all = replicated;
  all.insert(all.end(), experts.begin(), experts.end());
  const MetricContext metrics = metric_context(comm, model, cfg.eval_every > 0);
  MetricWriter writer(out, metrics);
  const ExpertGroups& groups = model.expert_groups();
  Adam<T> adam(cfg.adam);
  adam.set_steps_taken(static_cast<long>(cfg.start.adam_t));
  std::vector<T> grad_buf;
  TrainSummary sum;
  Stopwatch wall;
  // A resumed run carries on the totals of the invocations before it.
  TrainProgress totals = cfg.start;
  const std::int64_t first_step = cfg.start.step + 1;
  double last_print = -1e9;
  auto checkpoint = [&] {
    TrainProgress p = totals;
    p.adam_t = static_cast<std::int64_t>(adam.steps_taken());
    p.wall_seconds = cfg.start.wall_seconds + wall.seconds();
    save_checkpoint(comm, cfg.checkpoint, replicated, experts, p, cfg.options, &out, model_state(model));
  };
  const Shard sh = shard_of(cfg.batch_tokens, comm.rank(), comm.size());
  const bool chunked = cfg.chunk_tokens > 0;
  model.set_chunk(static_cast<Index>(cfg.chunk_tokens), static_cast<Index>(cfg.expert_chunks));

  // Progress line only: tokens/s smoothed over steps (weight kSpeedAlpha on the newest),
  // started afresh at this invocation's second step (the first warms up), and the last
  // validation loss (NaN: none yet in this invocation).
  constexpr double kSpeedAlpha = 0.1;
  double smoothed_tok_s = 0;
  double last_val_loss = std::numeric_limits<double>::quiet_NaN();
  // HDF5 logging is this rank's appends and its own writes in the flushes (the writer's); the
  // flush's agreement after them is the ranks waiting for one another, not logging.
  Stopwatch since_flush;
  auto flush = [&] {
    since_flush.reset();
    const double before = out.write_seconds();
    out.flush();
    totals.logging_seconds += out.write_seconds() - before;
  };
  constexpr double kDivergenceFactor = 1e3;
  double first_loss = std::numeric_limits<double>::quiet_NaN();  // this invocation's first step
  for (std::int64_t step = first_step; step <= cfg.steps; ++step) {
    Stopwatch step_clock;
    for (MoeLayer<T>* l : model.moe_layers()) l->comm_stats().reset(comm.size());
    Batch b = task.batch(Stream::kTrain, static_cast<std::uint64_t>(step), sh.first, sh.count);
    StepInput in;
    Mat<T> x = b.x.cast<T>(), y;
    zero_grads(all, chunked);
    model.set_mode(true, step);
    in.lr = scheduled_lr(cfg.adam.lr, cfg.schedule, step, cfg.steps);
    adam.set_lr(in.lr);
    model.forward(x, y);
    in.loss = model.loss_and_backward(y, b, task.classification(), cfg.batch_tokens);
    {
      ScopedTimer t(in.reduce_seconds);
      if (chunked) tree_reduce_grads(comm, replicated, grad_buf);
      else allreduce_grads(comm, replicated, grad_buf);
      // Each replica of an expert saw only its group's tokens: sum over the replicas.
      if (chunked) tree_reduce_grads(groups.replicas(), experts, grad_buf);
      else if (groups.groups() > 1) allreduce_grads(groups.replicas(), experts, grad_buf);
    }
    double scale = 1.0;
    if (cfg.grad_clip > 0) {
      // One group holds every expert once.
      FixedSum sq = sum_squares(experts);
      allreduce_exact(groups.group(), &sq, 1);
      sq += sum_squares(replicated);
      const double norm = std::sqrt(sq.value());
      if (norm > cfg.grad_clip) scale = cfg.grad_clip / norm;
    }
    adam.step(all, scale);
    in.step_seconds = step_clock.seconds();
    in.stop_signal = stop_signal_received();
    in.flush_due = cfg.flush_seconds > 0 && since_flush.seconds() >= cfg.flush_seconds;
    in.batch_tokens = cfg.batch_tokens;

    const StepMetrics m = collect_step_metrics(comm, model, metrics, in);
    if (!std::isfinite(m.train_loss))
      throw ConfigError("training diverged at step " + std::to_string(step) +
                        " (loss is not finite); lower --lr or set --grad-clip");
    // A loss that grew by orders of magnitude has diverged too, finite or not (--lr 1e30 in
    // fp64 once ran to a validation loss of 4e119 and was marked complete). The loss is the
    // same on every rank, so every rank stops here together.
    if (std::isnan(first_loss)) first_loss = m.train_loss;
    else if (first_loss > 0 && m.train_loss > kDivergenceFactor * first_loss)
      MOESIM_CONFIG_CHECK(false, "training diverged at step " << step << " (loss " << m.train_loss << ", over "
                                     << kDivergenceFactor << " times the first step's " << first_loss
                                     << "); lower --lr or set --grad-clip");
    add_step(totals, step, m, step > 1 || cfg.steps == 1);
    {
      ScopedTimer t(totals.logging_seconds);
      append_step_metrics(writer, step, m);
    }

    smoothed_tok_s = step <= first_step + 1 ? m.tokens_per_s
                                            : (1 - kSpeedAlpha) * smoothed_tok_s + kSpeedAlpha * m.tokens_per_s;
    if (cfg.eval_every > 0 && step % cfg.eval_every == 0 && step != cfg.steps) {
      last_val_loss = evaluate(comm, model, task, cfg.val_tokens, cfg.batch_tokens).first;
      append_validation(writer, step, last_val_loss);
    }
    // By time as well as by steps: a run of fast steps (the default job's are ~1.5 ms) would
    // otherwise spend more time flushing than its rows are worth; every rank agrees (m).
    if ((cfg.flush_every > 0 && step % cfg.flush_every == 0) || m.flush_due) flush();

    const double elapsed = wall.seconds();
    if (talk && (elapsed - last_print >= cfg.progress_interval || step == 1 ||
                 step == cfg.steps || m.stop)) {
      last_print = elapsed;
      print_progress(step, cfg.steps, m, smoothed_tok_s, last_val_loss, elapsed,
                     elapsed / static_cast<double>(step - first_step + 1) * static_cast<double>(cfg.steps - step));
    }
    const bool last = m.stop && step < cfg.steps;
    if (!cfg.checkpoint.empty() &&
        (last || step == cfg.steps || (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0)))
      checkpoint();
    if (last) {
      sum.interrupted = true;
      break;
    }
  }
  flush();
  if (!sum.interrupted) {
    const auto [vl, va] = evaluate(comm, model, task, cfg.val_tokens, cfg.batch_tokens,
                                   task.sources() > 0 ? &sum.routing_counts : nullptr);
    sum.val_loss = vl;
    sum.val_accuracy = va;
    if (cfg.eval_every > 0) append_validation(writer, cfg.steps, vl);
  }
  set_totals(sum, totals);
  sum.wall_seconds = cfg.start.wall_seconds + wall.seconds();
  return sum;
}

template TrainSummary train<float>(const Communicator&, Model<float>&, const Task&, const TrainConfig&, RunFile&);
template TrainSummary train<double>(const Communicator&, Model<double>&, const Task&, const TrainConfig&, RunFile&);
template std::pair<double, double> evaluate<float>(const Communicator&, Model<float>&, const Task&, std::int64_t, std::int64_t, std::vector<std::int64_t>*, const std::function<void()>&);
template std::pair<double, double> evaluate<double>(const Communicator&, Model<double>&, const Task&, std::int64_t, std::int64_t, std::vector<std::int64_t>*, const std::function<void()>&);

}  // namespace moesim
