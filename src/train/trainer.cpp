#include "train/trainer.hpp"

#include <csignal>
#include <cmath>
#include <cstdio>

#include "core/timer.hpp"
#include "moe/loss.hpp"

namespace moesim {

namespace {

volatile std::sig_atomic_t g_stop_requested = 0;
extern "C" void on_stop_signal(int) { g_stop_requested = 1; }

std::string clock_str(double s) {
  if (!std::isfinite(s) || s < 0) s = 0;
  const long t = static_cast<long>(s + 0.5);
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
  return buf;
}

template <class T>
void zero_grads(const ParamList<T>& ps) {
  for (Param<T>* p : ps) p->grad.setZero();
}

template <class T>
double sum_squares(const ParamList<T>& ps) {
  double s = 0;
  for (Param<T>* p : ps) s += static_cast<double>(p->grad.squaredNorm());
  return s;
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

Shard shard_of(std::int64_t n, int rank, int P) {
  const std::int64_t base = n / P, extra = n % P;
  return {rank * base + std::min<std::int64_t>(rank, extra), base + (rank < extra ? 1 : 0)};
}

void install_stop_handlers() {
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);
}

bool stop_requested(const Communicator& comm) {
  return comm.allreduce_max(static_cast<int>(g_stop_requested)) != 0;
}

template <class T>
std::pair<double, double> evaluate(const Communicator& comm, Model<T>& model,
                                   const Task& task, std::int64_t tokens,
                                   std::int64_t chunk, std::vector<std::int64_t>* routing_counts,
                                   const std::function<void()>& after_forward) {
  double sums[2] = {0, 0};  // loss, correct
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
  comm.allreduce_sum(sums, 2);
  if (routing_counts && !routing_counts->empty())
    comm.allreduce_sum(routing_counts->data(), static_cast<int>(routing_counts->size()));
  const double denom = tokens > 0 ? static_cast<double>(tokens) : 1.0;
  return {sums[0] / denom, task.classification() ? sums[1] / denom : -1.0};
}

template <class T>
TrainSummary train(const Communicator& comm, Model<T>& model, const Task& task,
                   const TrainConfig& cfg, RunFile& out) {
  const int P = comm.size();
  const int E = model.config().moe.experts;
  const bool talk = comm.rank() == 0 && !cfg.quiet;
  ParamList<T> replicated = model.replicated_params();
  ParamList<T> experts = model.expert_params();
  ParamList<T> all = replicated;
  all.insert(all.end(), experts.begin(), experts.end());
  std::vector<MoeLayer<T>*> moe = model.moe_layers();
  const int Lm = static_cast<int>(moe.size());
  Adam<T> adam(cfg.adam);
  adam.set_steps_taken(static_cast<long>(cfg.start.adam_t));
  std::vector<T> grad_buf;
  TrainSummary sum;
  Stopwatch wall;
  // A resumed run carries on the totals of the invocations before it.
  const std::int64_t first_step = cfg.start.step + 1;
  double last_print = -1e9, tok_s_acc = cfg.start.tok_s_sum, drop_acc = cfg.start.dropped_sum;
  std::int64_t tok_s_n = cfg.start.tok_s_n;
  sum.a2a_seconds = cfg.start.a2a_seconds;
  sum.compute_seconds = cfg.start.compute_seconds;
  sum.a2a_bytes = cfg.start.a2a_bytes;
  sum.final_train_loss = cfg.start.train_loss;
  sum.steps_done = cfg.start.step;
  auto checkpoint = [&](std::int64_t step) {
    const TrainProgress p{step, static_cast<std::int64_t>(adam.steps_taken()), tok_s_acc, tok_s_n,
                          drop_acc, sum.a2a_seconds, sum.compute_seconds, sum.a2a_bytes,
                          sum.final_train_loss, cfg.start.wall_seconds + wall.seconds()};
    save_checkpoint(comm, cfg.checkpoint, replicated, experts, p, cfg.options, &out, model_state(model));
  };
  const Shard sh = shard_of(cfg.batch_tokens, comm.rank(), P);

  for (std::int64_t step = first_step; step <= cfg.steps; ++step) {
    Stopwatch step_clock;
    for (MoeLayer<T>* l : moe) l->comm_stats().reset(P);
    Batch b = task.batch(Stream::kTrain, static_cast<std::uint64_t>(step), sh.first, sh.count);
    Mat<T> x = b.x.cast<T>(), y;
    zero_grads(all);
    model.set_mode(true, step);
    model.forward(x, y);
    const MixtureLossResult lr = model.loss_and_backward(y, b, task.classification(), cfg.batch_tokens);
    double reduce_seconds = 0;
    {
      ScopedTimer t(reduce_seconds);
      allreduce_grads(comm, replicated, grad_buf);
    }
    double scale = 1.0;
    if (cfg.grad_clip > 0) {
      const double norm = std::sqrt(sum_squares(replicated) + comm.allreduce_sum(sum_squares(experts)));
      if (norm > cfg.grad_clip) scale = cfg.grad_clip / norm;
    }
    adam.step(all, scale);
    const double step_seconds = step_clock.seconds();

    // Per-step metrics: one sum-reduce and one max-reduce.
    double a2a_seconds = 0;
    std::vector<double> to_rank(static_cast<std::size_t>(P), 0.0);
    double aux = 0, zl = 0, entropy = 0, max_over_mean = 0, cv = 0, importance = 0, load_loss = 0;
    double unrouted = 0, tokens_seen = 0;
    std::vector<double> bias;  // L x E selection biases (--balance bias)
    std::int64_t unused = 0, starved = 0;
    std::vector<double> gate_mass(static_cast<std::size_t>(E), 0.0);
    std::vector<double> top_share(static_cast<std::size_t>(E), 0.0);
    std::int64_t dropped = 0, assignments = 0;
    std::vector<std::int64_t> expert_tokens(static_cast<std::size_t>(E), 0), per_layer;
    std::vector<std::int64_t> mine_to_expert(static_cast<std::size_t>(E), 0);
    for (MoeLayer<T>* l : moe) {
      a2a_seconds += l->comm_stats().seconds;
      for (int q = 0; q < P; ++q) to_rank[q] += l->comm_stats().bytes_to_rank[q];
      aux += l->stats().aux_loss;
      zl += l->stats().z_loss;
      importance += l->stats().importance_loss;
      load_loss += l->stats().load_loss;
      unrouted += static_cast<double>(l->stats().unrouted_tokens);
      tokens_seen += static_cast<double>(l->stats().tokens);
      bias.insert(bias.end(), l->router().bias().begin(), l->router().bias().end());
      entropy += l->stats().gate_entropy;
      // Collapse and balance of this layer's load (kept assignments per expert).
      const auto& load = l->stats().expert_tokens;
      double mean = 0, var = 0, mx = 0;
      for (std::int64_t v : load) mean += static_cast<double>(v) / E;
      for (std::int64_t v : load) {
        var += (static_cast<double>(v) - mean) * (static_cast<double>(v) - mean) / E;
        mx = std::max(mx, static_cast<double>(v));
        unused += v == 0;
        starved += static_cast<double>(v) < static_cast<double>(l->stats().assignments) / (10.0 * E);
      }
      max_over_mean += mean > 0 ? mx / mean : 0.0;
      cv += mean > 0 ? std::sqrt(var) / mean : 0.0;
      for (int e = 0; e < E; ++e) gate_mass[e] += l->stats().gate_mass[e] / std::max(1, Lm);
      for (int e = 0; e < E; ++e)
        top_share[e] += static_cast<double>(l->stats().top_expert_tokens[e]) /
                        static_cast<double>(std::max<std::int64_t>(1, l->stats().tokens) * std::max(1, Lm));
      dropped += l->stats().dropped;
      assignments += l->stats().assignments;
      for (int e = 0; e < E; ++e) expert_tokens[e] += l->stats().expert_tokens[e];
      for (int e = 0; e < E; ++e) mine_to_expert[e] += l->layout().send_expert_counts[e];
      per_layer.insert(per_layer.end(), l->stats().expert_tokens.begin(), l->stats().expert_tokens.end());
    }
    // Sums: loss, stop flag, padding bytes, prediction loss, mixture spread, then bytes per
    // (layer, phase); maxima: step, exchange and compute seconds, then seconds per (layer, phase).
    constexpr std::size_t kPhaseSums = 5;
    std::vector<double> sums{lr.objective, g_stop_requested ? 1.0 : 0.0, 0.0, lr.prediction, lr.spread};
    std::vector<double> maxes{step_seconds, a2a_seconds, step_seconds - a2a_seconds - reduce_seconds};
    for (MoeLayer<T>* l : moe) {
      sums[2] += l->comm_stats().padding_bytes;
      for (int ph = 0; ph < 4; ++ph) {
        sums.push_back(l->comm_stats().phase_bytes[ph]);
        maxes.push_back(l->comm_stats().phase_seconds[ph]);
      }
    }
    comm.allreduce_sum(sums.data(), static_cast<int>(sums.size()));
    comm.allreduce_max(maxes.data(), static_cast<int>(maxes.size()));
    std::vector<std::int64_t> row_bytes(to_rank.begin(), to_rank.end());
    std::vector<std::int64_t> traffic(static_cast<std::size_t>(P * P), 0);
    comm.gather(row_bytes.data(), P, traffic.data(), 0);
    std::vector<std::int64_t> rank_expert(static_cast<std::size_t>(P * E), 0);
    comm.gather(mine_to_expert.data(), E, rank_expert.data(), 0);

    const double loss = sums[0] / static_cast<double>(cfg.batch_tokens);
    if (!std::isfinite(loss))
      throw ConfigError("training diverged at step " + std::to_string(step) +
                        " (loss is not finite); lower --lr or set --grad-clip");
    double off_diag = 0;
    for (int i = 0; i < P; ++i)
      for (int j = 0; j < P; ++j)
        if (i != j) off_diag += static_cast<double>(traffic[static_cast<std::size_t>(i * P + j)]);
    const double tok_s = static_cast<double>(cfg.batch_tokens) / maxes[0];
    const double drop_frac = assignments > 0 ? static_cast<double>(dropped) / assignments : 0.0;
    if (step > 1 || cfg.steps == 1) {
      tok_s_acc += tok_s;
      ++tok_s_n;
    }
    drop_acc += drop_frac;
    sum.a2a_seconds += maxes[1];
    sum.compute_seconds += maxes[2];
    sum.a2a_bytes += off_diag;
    sum.final_train_loss = loss;
    sum.steps_done = step;

    out.append("step", std::vector<std::int64_t>{step});
    out.append("train_loss", std::vector<double>{loss});
    out.append("aux_loss", std::vector<double>{Lm > 0 ? aux / Lm : 0.0});
    out.append("z_loss", std::vector<double>{Lm > 0 ? zl / Lm : 0.0});
    out.append("gate_entropy", std::vector<double>{Lm > 0 ? entropy / Lm : 0.0});
    out.append("max_over_mean_load", std::vector<double>{Lm > 0 ? max_over_mean / Lm : 0.0});
    out.append("load_cv", std::vector<double>{Lm > 0 ? cv / Lm : 0.0});
    out.append("unused_experts", std::vector<std::int64_t>{unused});
    out.append("starved_experts", std::vector<std::int64_t>{starved});
    out.append("gate_mass", gate_mass, {static_cast<hsize_t>(E)});
    out.append("dropped_fraction", std::vector<double>{drop_frac});
    out.append("unrouted_fraction", std::vector<double>{tokens_seen > 0 ? unrouted / tokens_seen : 0.0});
    if (Lm > 0 && model.config().moe.gate == GateKind::kNoisyTopK) {
      out.append("importance_loss", std::vector<double>{importance / Lm});
      out.append("load_loss", std::vector<double>{load_loss / Lm});
    }
    if (Lm > 0 && model.config().moe.balance == BalanceKind::kBias)
      out.append("balance_bias", bias, {static_cast<hsize_t>(Lm), static_cast<hsize_t>(E)});
    out.append("tokens_per_s", std::vector<double>{tok_s});
    out.append("a2a_bytes", std::vector<double>{off_diag});
    out.append("a2a_seconds", std::vector<double>{maxes[1]});
    out.append("compute_seconds", std::vector<double>{maxes[2]});
    out.append("step_seconds", std::vector<double>{maxes[0]});
    out.append("expert_tokens", expert_tokens, {static_cast<hsize_t>(E)});
    std::int64_t kept = 0;
    for (std::int64_t v : expert_tokens) kept += v;
    std::vector<double> token_share(static_cast<std::size_t>(E), 0.0);
    for (int e = 0; e < E; ++e)
      token_share[e] = kept > 0 ? static_cast<double>(expert_tokens[e]) / static_cast<double>(kept) : 0.0;
    out.append("token_share", token_share, {static_cast<hsize_t>(E)});
    out.append("top_expert_share", top_share, {static_cast<hsize_t>(E)});
    if (model.config().mixture != MixtureLoss::kNone) {
      out.append("prediction_loss", std::vector<double>{sums[3] / static_cast<double>(cfg.batch_tokens)});
      out.append("mixture_spread", std::vector<double>{sums[4] / static_cast<double>(cfg.batch_tokens)});
    }
    if (Lm > 0)
      out.append("expert_tokens_per_layer", per_layer,
                 {static_cast<hsize_t>(Lm), static_cast<hsize_t>(E)});
    out.append("traffic", traffic, {static_cast<hsize_t>(P), static_cast<hsize_t>(P)});
    out.append("padding_bytes", std::vector<double>{sums[2]});
    if (Lm > 0) {
      const std::vector<hsize_t> lp{static_cast<hsize_t>(Lm), 4};
      out.append("a2a_bytes_by_phase", std::vector<double>(sums.begin() + kPhaseSums, sums.end()), lp);
      out.append("a2a_seconds_by_phase", std::vector<double>(maxes.begin() + 3, maxes.end()), lp);
    }
    out.append("rank_expert_tokens", rank_expert, {static_cast<hsize_t>(P), static_cast<hsize_t>(E)});

    if (cfg.eval_every > 0 && step % cfg.eval_every == 0 && step != cfg.steps) {
      const auto [vl, va] = evaluate(comm, model, task, cfg.val_tokens, cfg.batch_tokens);
      out.append("val_step", std::vector<std::int64_t>{step});
      out.append("val_loss", std::vector<double>{vl});
      (void)va;
    }
    if (cfg.flush_every > 0 && step % cfg.flush_every == 0) out.flush();

    const double elapsed = wall.seconds();
    const bool stop = sums[1] > 0;
    if (talk && (elapsed - last_print >= cfg.progress_interval || step == 1 ||
                 step == cfg.steps || stop)) {
      last_print = elapsed;
      const double left = elapsed / static_cast<double>(step - first_step + 1) *
                          static_cast<double>(cfg.steps - step);
      std::printf("step %lld/%lld | loss %.5f | aux %.4f | dropped %.2f%% | %.1fk tok/s | %s elapsed | %s left\n",
                  static_cast<long long>(step), static_cast<long long>(cfg.steps), loss,
                  Lm > 0 ? aux / Lm : 0.0, 100.0 * drop_frac, tok_s / 1e3,
                  clock_str(elapsed).c_str(), clock_str(left).c_str());
      std::fflush(stdout);
    }
    const bool last = stop && step < cfg.steps;
    if (!cfg.checkpoint.empty() &&
        (last || step == cfg.steps || (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0)))
      checkpoint(step);
    if (last) {
      sum.interrupted = true;
      break;
    }
  }
  out.flush();
  if (!sum.interrupted) {
    const auto [vl, va] = evaluate(comm, model, task, cfg.val_tokens, cfg.batch_tokens,
                                   task.sources() > 0 ? &sum.routing_counts : nullptr);
    sum.val_loss = vl;
    sum.val_accuracy = va;
    if (cfg.eval_every > 0) {
      out.append("val_step", std::vector<std::int64_t>{cfg.steps});
      out.append("val_loss", std::vector<double>{vl});
    }
  }
  sum.tokens_per_s = tok_s_n > 0 ? tok_s_acc / static_cast<double>(tok_s_n) : 0.0;
  sum.dropped_fraction = sum.steps_done > 0 ? drop_acc / static_cast<double>(sum.steps_done) : 0.0;
  sum.wall_seconds = cfg.start.wall_seconds + wall.seconds();
  return sum;
}

template TrainSummary train<float>(const Communicator&, Model<float>&, const Task&, const TrainConfig&, RunFile&);
template TrainSummary train<double>(const Communicator&, Model<double>&, const Task&, const TrainConfig&, RunFile&);
template std::pair<double, double> evaluate<float>(const Communicator&, Model<float>&, const Task&, std::int64_t, std::int64_t, std::vector<std::int64_t>*, const std::function<void()>&);
template std::pair<double, double> evaluate<double>(const Communicator&, Model<double>&, const Task&, std::int64_t, std::int64_t, std::vector<std::int64_t>*, const std::function<void()>&);

}  // namespace moesim
