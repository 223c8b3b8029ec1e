#include "train/step_metrics.hpp"

#include <algorithm>
#include <cmath>

#include "comm/exact_sum.hpp"
#include "core/error.hpp"

namespace moesim {

namespace {

constexpr bool names_unique() {
  for (std::size_t i = 0; i < kStepMetrics.size(); ++i)
    for (std::size_t j = i + 1; j < kStepMetrics.size(); ++j)
      if (kStepMetrics[i].name == kStepMetrics[j].name) return false;
  return true;
}
static_assert(names_unique(), "two per-step metrics share a name");

constexpr std::size_t parts(std::string_view s) {
  if (s.empty()) return 0;
  std::size_t n = 1;
  for (std::size_t at = s.find(" x "); at != std::string_view::npos; at = s.find(" x ", at + 3)) ++n;
  return n;
}
constexpr bool axes_named() {
  for (const MetricSpec& s : kStepMetrics)
    if (parts(s.shape) != parts(s.axes)) return false;
  return true;
}
static_assert(axes_named(), "a per-step metric's axes do not name every axis of its shape");

// "L_moe x E" -> {L_moe, E}; "" -> {} (a scalar per step).
std::vector<hsize_t> dims_of(std::string_view shape, const MetricContext& c) {
  std::vector<hsize_t> dims;
  while (!shape.empty()) {
    const std::size_t cut = shape.find(" x ");
    const std::string_view part = shape.substr(0, cut);
    if (part == "E") dims.push_back(static_cast<hsize_t>(c.E));
    else if (part == "P") dims.push_back(static_cast<hsize_t>(c.P));
    else if (part == "L_moe") dims.push_back(static_cast<hsize_t>(c.L_moe));
    else {
      MOESIM_REQUIRE(!part.empty() && std::all_of(part.begin(), part.end(), [](char ch) { return ch >= '0' && ch <= '9'; }),
                     "unknown size '" << part << "' in a metric shape");
      dims.push_back(static_cast<hsize_t>(std::stoull(std::string(part))));
    }
    shape = cut == std::string_view::npos ? std::string_view{} : shape.substr(cut + 3);
  }
  return dims;
}

}  // namespace

const char* metric_when_text(MetricWhen w) {
  switch (w) {
    case MetricWhen::kAlways: return "always";
    case MetricWhen::kMoeLayers: return "with MoE layers";
    case MetricWhen::kNoisyTopK: return "`--gate noisy-topk`";
    case MetricWhen::kBalanceBias: return "`--balance bias`";
    case MetricWhen::kHierarchical: return "`--dispatch hierarchical`";
    case MetricWhen::kMixtureLoss: return "`--mixture-loss`";
    case MetricWhen::kEvalEvery: return "`--eval-every` (every N steps and at the end)";
  }
  return "?";
}

const MetricSpec* find_step_metric(std::string_view name) {
  for (const MetricSpec& s : kStepMetrics)
    if (s.name == name) return &s;
  return nullptr;
}

std::string step_metrics_markdown() {
  std::string t =
      "| dataset | shape per row | axes | type | unit | written | description |\n"
      "|---|---|---|---|---|---|---|\n";
  for (const MetricSpec& s : kStepMetrics) {
    t += "| `metrics/";
    t += s.name;
    t += "` | ";
    t += s.shape.empty() ? std::string_view("scalar") : s.shape;
    t += " | step";
    if (!s.axes.empty()) {
      t += " x ";
      t += s.axes;
    }
    t += s.integer ? " | int64 | " : " | float64 | ";
    t += s.unit;
    t += " | ";
    t += metric_when_text(s.when);
    t += " | ";
    t += s.description;
    t += " |\n";
  }
  return t;
}

std::span<const DatasetInfo> step_metric_datasets() {
  // Built once; the strings stay put for the program's life (run files keep spans of it).
  static const std::vector<std::string> paths_and_axes = [] {
    std::vector<std::string> v;
    for (const MetricSpec& s : kStepMetrics) {
      v.push_back("metrics/" + std::string(s.name));
      v.push_back(s.axes.empty() ? std::string("step") : "step x " + std::string(s.axes));
    }
    return v;
  }();
  static const std::vector<DatasetInfo> table = [] {
    std::vector<DatasetInfo> t;
    for (std::size_t i = 0; i < kStepMetrics.size(); ++i) {
      const MetricSpec& s = kStepMetrics[i];
      t.push_back({paths_and_axes[2 * i], paths_and_axes[2 * i + 1], s.integer ? "int64" : "float64", s.unit,
                   s.description});
    }
    return t;
  }();
  return table;
}

std::vector<std::string> per_rank_step_metrics() {
  std::vector<std::string> names;
  for (const MetricSpec& s : kStepMetrics)
    for (std::string_view rest = s.shape; !rest.empty();) {
      const std::size_t cut = rest.find(" x ");
      if (rest.substr(0, cut) == "P") {
        names.emplace_back(s.name);
        break;
      }
      rest = cut == std::string_view::npos ? std::string_view{} : rest.substr(cut + 3);
    }
  return names;
}

template <class T>
MetricContext metric_context(const Communicator& comm, Model<T>& model, bool eval_every) {
  MetricContext c;
  c.E = model.config().moe.experts;
  c.P = comm.size();
  c.L_moe = static_cast<int>(model.moe_layers().size());
  c.noisy_topk = model.config().moe.gate == GateKind::kNoisyTopK;
  c.balance_bias = model.config().moe.balance == BalanceKind::kBias;
  c.mixture_loss = model.config().mixture != MixtureLoss::kNone;
  c.eval_every = eval_every;
  c.hierarchical = model.config().moe.dispatch == DispatchAlgo::kHierarchical;
  return c;
}

bool written_in(MetricWhen w, const MetricContext& c) {
  switch (w) {
    case MetricWhen::kAlways: return true;
    case MetricWhen::kMoeLayers: return c.L_moe > 0;
    case MetricWhen::kNoisyTopK: return c.L_moe > 0 && c.noisy_topk;
    case MetricWhen::kBalanceBias: return c.L_moe > 0 && c.balance_bias;
    case MetricWhen::kHierarchical: return c.L_moe > 0 && c.hierarchical;
    case MetricWhen::kMixtureLoss: return c.mixture_loss;
    case MetricWhen::kEvalEvery: return c.eval_every;
  }
  return false;
}

MetricWriter::MetricWriter(RunFile& out, const MetricContext& context)
    : out_(out), context_(context), entries_(kStepMetrics.size()) {
  out_.describe_with(step_metric_datasets());
  for (std::size_t i = 0; i < kStepMetrics.size(); ++i) {
    Entry& e = entries_[i];
    e.written = written_in(kStepMetrics[i].when, context_);
    e.dims = dims_of(kStepMetrics[i].shape, context_);
    for (hsize_t d : e.dims) e.size *= static_cast<std::size_t>(d);
  }
}

bool MetricWriter::writes(std::string_view name) const {
  const MetricSpec* s = find_step_metric(name);
  return s && entries_[static_cast<std::size_t>(s - kStepMetrics.data())].written;
}

MetricWriter::Entry& MetricWriter::checked(std::string_view name, std::size_t size, bool integer) {
  const MetricSpec* s = find_step_metric(name);
  MOESIM_REQUIRE(s, "metric '" << name << "' is not in kStepMetrics");
  Entry& e = entries_[static_cast<std::size_t>(s - kStepMetrics.data())];
  MOESIM_REQUIRE(e.written, "metric '" << name << "' is not written in this run ("
                                       << metric_when_text(s->when) << ")");
  MOESIM_REQUIRE(s->integer == integer, "metric '" << name << "' has the wrong type");
  MOESIM_REQUIRE(e.size == size, "metric '" << name << "' has " << size << " values, its shape '"
                                            << s->shape << "' " << e.size);
  if (!e.have_slot) {
    e.slot = out_.slot(std::string(name), e.dims, integer);
    e.have_slot = true;
  }
  return e;
}

void MetricWriter::append(std::string_view name, std::span<const double> row) {
  out_.append(checked(name, row.size(), false).slot, row.data(), row.size());
  ++rows_;
}

void MetricWriter::append(std::string_view name, std::span<const std::int64_t> row) {
  out_.append(checked(name, row.size(), true).slot, row.data(), row.size());
  ++rows_;
}

template <class T>
StepMetrics collect_step_metrics(const Communicator& comm, Model<T>& model,
                                 const MetricContext& context, const StepInput& in) {
  const int P = context.P, E = context.E, Lm = context.L_moe;
  const std::vector<MoeLayer<T>*> moe = model.moe_layers();
  StepMetrics m;
  double exchange_seconds = 0;  // this rank's time in exchange calls: transfer and wait
  std::vector<double> to_rank(static_cast<std::size_t>(P), 0.0);
  double aux = 0, zl = 0, entropy = 0, max_over_mean = 0, cv = 0, importance = 0, load_loss = 0;
  double unrouted = 0, tokens_seen = 0;
  std::int64_t unused = 0, starved = 0;
  m.gate_mass.assign(static_cast<std::size_t>(E), 0.0);
  m.top_expert_share.assign(static_cast<std::size_t>(E), 0.0);
  std::int64_t dropped = 0, assignments = 0;
  m.expert_tokens.assign(static_cast<std::size_t>(E), 0);
  std::vector<std::int64_t> mine_to_expert(static_cast<std::size_t>(E), 0);
  for (MoeLayer<T>* l : moe) {
    exchange_seconds += l->comm_stats().seconds;
    for (int q = 0; q < P; ++q) to_rank[q] += l->comm_stats().bytes_to_rank[q];
    aux += l->stats().aux_loss;
    zl += l->stats().z_loss;
    importance += l->stats().importance_loss;
    load_loss += l->stats().load_loss;
    unrouted += static_cast<double>(l->stats().unrouted_tokens);
    tokens_seen += static_cast<double>(l->stats().tokens);
    m.balance_bias.insert(m.balance_bias.end(), l->router().bias().begin(), l->router().bias().end());
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
    for (int e = 0; e < E; ++e) m.gate_mass[e] += l->stats().gate_mass[e] / std::max(1, Lm);
    for (int e = 0; e < E; ++e)
      m.top_expert_share[e] += static_cast<double>(l->stats().top_expert_tokens[e]) /
                               static_cast<double>(std::max<std::int64_t>(1, l->stats().tokens) * std::max(1, Lm));
    dropped += l->stats().dropped;
    assignments += l->stats().assignments;
    for (int e = 0; e < E; ++e) m.expert_tokens[e] += l->stats().expert_tokens[e];
    for (int e = 0; e < E; ++e)
      mine_to_expert[e] += l->layout().send_expert_counts[static_cast<std::size_t>(slot_of(l->layout(), e))];
    m.expert_tokens_per_layer.insert(m.expert_tokens_per_layer.end(), l->stats().expert_tokens.begin(),
                                     l->stats().expert_tokens.end());
  }
  // Sums: loss, stop flag, padding bytes, prediction loss, mixture spread, then bytes per
  // (layer, phase); maxima: step, compute and exchange-wait seconds.
  constexpr std::size_t kPhaseSums = 5;
  // Exact sums (comm/exact_sum): the losses must not depend on the layout.
  std::vector<FixedSum> exact{in.loss.objective, FixedSum(in.stop_signal ? 1.0 : 0.0), FixedSum(), in.loss.prediction,
                              in.loss.spread};
  // A rank's time in an exchange is its wait for the last rank to arrive plus the transfer;
  // the last to arrive waits for no one, so the least time any rank spent in a (layer, phase)
  // is its transfer, and the rest of each rank's time there is waiting (load imbalance of the
  // work before it). Clock-free, and no barrier: one with more ranks than cores costs more
  // than it measures.
  std::vector<double> phase_seconds;
  for (MoeLayer<T>* l : moe) {
    exact[2] += l->comm_stats().padding_bytes;
    for (int ph = 0; ph < 4; ++ph) {
      exact.emplace_back(l->comm_stats().phase_bytes[ph]);
      phase_seconds.push_back(l->comm_stats().phase_seconds[ph]);
    }
  }
  // Then the payload that crossed nodes, and per layer the two stages' bytes and seconds.
  const std::size_t phases = phase_seconds.size(), node_sums = exact.size();
  exact.emplace_back();
  exact.emplace_back();
  std::vector<double> transfer = phase_seconds;
  for (MoeLayer<T>* l : moe) {
    const CommStats& cs = l->comm_stats();
    exact[node_sums] += cs.inter_node_bytes;
    exact[node_sums + 1] += static_cast<double>(cs.inter_node_messages);
    for (int st = 0; st < 2; ++st) {
      exact.emplace_back(cs.stage_bytes[st]);
      transfer.push_back(cs.stage_seconds[st]);
    }
  }
  comm.allreduce_min(transfer.data(), static_cast<int>(transfer.size()));
  double transfer_total = 0, wait = 0;
  for (std::size_t i = 0; i < phases; ++i) {
    transfer_total += transfer[i];
    wait += phase_seconds[i] - transfer[i];
  }
  std::vector<double> maxes{in.step_seconds, in.step_seconds - exchange_seconds - in.reduce_seconds, wait,
                            in.flush_due ? 1.0 : 0.0};
  std::vector<double> sums(exact.size());
  allreduce_exact(comm, exact, sums.data());
  comm.allreduce_max(maxes.data(), static_cast<int>(maxes.size()));
  std::vector<std::int64_t> row_bytes(to_rank.begin(), to_rank.end());
  m.traffic.assign(static_cast<std::size_t>(P * P), 0);
  comm.gather(row_bytes.data(), P, m.traffic.data(), 0);
  m.rank_expert_tokens.assign(static_cast<std::size_t>(P * E), 0);
  comm.gather(mine_to_expert.data(), E, m.rank_expert_tokens.data(), 0);

  const double B = static_cast<double>(in.batch_tokens);
  m.train_loss = sums[0] / B;
  m.lr = in.lr;
  m.stop = sums[1] > 0;
  m.padding_bytes = sums[2];
  m.prediction_loss = sums[3] / B;
  m.mixture_spread = sums[4] / B;
  m.a2a_bytes_by_phase.assign(sums.begin() + kPhaseSums, sums.begin() + static_cast<std::ptrdiff_t>(node_sums));
  m.a2a_bytes_inter_node = sums[node_sums];
  m.a2a_messages_inter_node = static_cast<std::int64_t>(std::llround(sums[node_sums + 1]));
  m.a2a_bytes_by_stage.assign(sums.begin() + static_cast<std::ptrdiff_t>(node_sums + 2), sums.end());
  m.a2a_seconds_by_stage.assign(transfer.begin() + static_cast<std::ptrdiff_t>(phases), transfer.end());
  transfer.resize(phases);
  m.step_seconds = maxes[0];
  m.a2a_seconds = transfer_total;
  m.compute_seconds = maxes[1];
  m.a2a_wait_seconds = maxes[2];
  m.flush_due = maxes[3] > 0;
  m.a2a_seconds_by_phase = transfer;
  for (int i = 0; i < P; ++i)
    for (int j = 0; j < P; ++j)
      if (i != j) m.a2a_bytes += static_cast<double>(m.traffic[static_cast<std::size_t>(i * P + j)]);
  m.tokens_per_s = B / maxes[0];
  m.dropped_fraction = assignments > 0 ? static_cast<double>(dropped) / assignments : 0.0;
  m.aux_loss = Lm > 0 ? aux / Lm : 0.0;
  m.z_loss = Lm > 0 ? zl / Lm : 0.0;
  m.gate_entropy = Lm > 0 ? entropy / Lm : 0.0;
  m.max_over_mean_load = Lm > 0 ? max_over_mean / Lm : 0.0;
  m.load_cv = Lm > 0 ? cv / Lm : 0.0;
  m.unused_experts = unused;
  m.starved_experts = starved;
  m.unrouted_fraction = tokens_seen > 0 ? unrouted / tokens_seen : 0.0;
  m.importance_loss = Lm > 0 ? importance / Lm : 0.0;
  m.load_loss = Lm > 0 ? load_loss / Lm : 0.0;
  std::int64_t kept = 0;
  for (std::int64_t v : m.expert_tokens) kept += v;
  m.token_share.assign(static_cast<std::size_t>(E), 0.0);
  for (int e = 0; e < E; ++e)
    m.token_share[e] = kept > 0 ? static_cast<double>(m.expert_tokens[e]) / static_cast<double>(kept) : 0.0;
  return m;
}

void append_step_metrics(MetricWriter& w, std::int64_t step, const StepMetrics& m) {
  const int before = w.rows_written();
  // Datasets the table marks as conditional are skipped here when they do not apply.
  auto put = [&](std::string_view name, const auto& row) {
    if (w.writes(name)) w.append(name, row);
  };
  put("step", step);
  put("train_loss", m.train_loss);
  put("lr", m.lr);
  put("aux_loss", m.aux_loss);
  put("z_loss", m.z_loss);
  put("gate_entropy", m.gate_entropy);
  put("max_over_mean_load", m.max_over_mean_load);
  put("load_cv", m.load_cv);
  put("unused_experts", m.unused_experts);
  put("starved_experts", m.starved_experts);
  put("gate_mass", m.gate_mass);
  put("dropped_fraction", m.dropped_fraction);
  put("unrouted_fraction", m.unrouted_fraction);
  put("importance_loss", m.importance_loss);
  put("load_loss", m.load_loss);
  put("balance_bias", m.balance_bias);
  put("tokens_per_s", m.tokens_per_s);
  put("a2a_bytes", m.a2a_bytes);
  put("a2a_seconds", m.a2a_seconds);
  put("a2a_wait_seconds", m.a2a_wait_seconds);
  put("compute_seconds", m.compute_seconds);
  put("step_seconds", m.step_seconds);
  put("expert_tokens", m.expert_tokens);
  put("token_share", m.token_share);
  put("top_expert_share", m.top_expert_share);
  put("prediction_loss", m.prediction_loss);
  put("mixture_spread", m.mixture_spread);
  put("expert_tokens_per_layer", m.expert_tokens_per_layer);
  put("traffic", m.traffic);
  put("padding_bytes", m.padding_bytes);
  put("a2a_bytes_by_phase", m.a2a_bytes_by_phase);
  put("a2a_seconds_by_phase", m.a2a_seconds_by_phase);
  put("a2a_bytes_inter_node", m.a2a_bytes_inter_node);
  put("a2a_messages_inter_node", m.a2a_messages_inter_node);
  put("a2a_bytes_by_stage", m.a2a_bytes_by_stage);
  put("a2a_seconds_by_stage", m.a2a_seconds_by_stage);
  put("rank_expert_tokens", m.rank_expert_tokens);
  int expected = 0;
  for (const MetricSpec& s : kStepMetrics)
    expected += s.when != MetricWhen::kEvalEvery && written_in(s.when, w.context());
  MOESIM_REQUIRE(w.rows_written() - before == expected, "a per-step metric of kStepMetrics was not written ("
                                                            << w.rows_written() - before << " of " << expected << ")");
}

void append_validation(MetricWriter& w, std::int64_t step, double val_loss) {
  w.append("val_step", step);
  w.append("val_loss", val_loss);
}

template MetricContext metric_context<float>(const Communicator&, Model<float>&, bool);
template MetricContext metric_context<double>(const Communicator&, Model<double>&, bool);
template StepMetrics collect_step_metrics<float>(const Communicator&, Model<float>&, const MetricContext&, const StepInput&);
template StepMetrics collect_step_metrics<double>(const Communicator&, Model<double>&, const MetricContext&, const StepInput&);

}  // namespace moesim
