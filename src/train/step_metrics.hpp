#pragma once
// The per-step metrics of a training run: one table naming every dataset the trainer
// appends under metrics/ (shape, unit, when it is written, what it means), the
// aggregation of one step's statistics over MoE layers and ranks, and the writer, which
// appends only what the table names, in the shape it states. `moesim info --metrics`
// prints the table; the per-step table of docs/run-file.md is that output.
#include <array>
#include <span>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "comm/communicator.hpp"
#include "io/run_file.hpp"
#include "moe/mixture.hpp"
#include "moe/model.hpp"

namespace moesim {

// When a dataset is written.
enum class MetricWhen {
  kAlways,
  kMoeLayers,    // the model has at least one MoE layer
  kNoisyTopK,    // --gate noisy-topk (and MoE layers)
  kBalanceBias,  // --balance bias (and MoE layers)
  kHierarchical, // --dispatch hierarchical (and MoE layers)
  kMixtureLoss,  // --mixture-loss global or per-expert
  kEvalEvery,    // --eval-every N > 0: one row every N steps and one at the end
};
const char* metric_when_text(MetricWhen w);

struct MetricSpec {
  std::string_view name;         // dataset metrics/<name>
  std::string_view shape;        // of one row: "" scalar, or sizes over "x": E, P, L_moe, numbers
  bool integer;                  // int64, else float64
  std::string_view unit;
  MetricWhen when;
  std::string_view description;  // one line
  std::string_view axes = {};    // names of the shape's axes ("moe_layer x expert"); the row axis "step" comes first
};

// Every per-step dataset, in the order the trainer appends them.
inline constexpr auto kStepMetrics = std::to_array<MetricSpec>({
    {"step", "", true, "step", MetricWhen::kAlways, "step number, 1-based"},
    {"train_loss", "", false, "nats or MSE", MetricWhen::kAlways,
     "training objective over the global batch: the task loss (MSE, or cross-entropy in nats), or the `--mixture-loss` objective"},
    {"lr", "", false, "1", MetricWhen::kAlways,
     "learning rate of the step's Adam update (`--lr` under `--lr-warmup-steps` and `--lr-decay`)"},
    {"aux_loss", "", false, "1", MetricWhen::kAlways,
     "load-balancing loss, mean over MoE layers, before its weight (1 = balanced)"},
    {"z_loss", "", false, "1", MetricWhen::kAlways,
     "router z-loss (mean over tokens of logsumexp(logits)^2), mean over MoE layers, before its weight"},
    {"gate_entropy", "", false, "nats", MetricWhen::kAlways,
     "mean entropy of the router softmax per token, mean over MoE layers (per token log z - sum_e p_e "
     "(logit_e - max logit), the same as -sum_e p_e log p_e but for p's rounding; with `--score-function "
     "sigmoid` -sum_e p_e log p_e of the normalised scores)"},
    {"max_over_mean_load", "", false, "ratio", MetricWhen::kAlways,
     "max/mean of the kept assignments per expert, mean over MoE layers"},
    {"load_cv", "", false, "ratio", MetricWhen::kAlways,
     "coefficient of variation of the kept assignments per expert, mean over MoE layers"},
    {"unused_experts", "", true, "experts", MetricWhen::kAlways,
     "experts with no kept assignment, summed over MoE layers (collapse)"},
    {"starved_experts", "", true, "experts", MetricWhen::kAlways,
     "experts with fewer than B*K/(10E) kept assignments, summed over MoE layers (collapse)"},
    {"gate_mass", "E", false, "probability", MetricWhen::kAlways,
     "mean router probability of each expert (P_e), mean over MoE layers", "expert"},
    {"dropped_fraction", "", false, "fraction", MetricWhen::kAlways,
     "dropped assignments / (B*K), over all MoE layers"},
    {"unrouted_fraction", "", false, "fraction", MetricWhen::kAlways,
     "tokens with no kept assignment / B, over all MoE layers (dropped tokens; tokens no expert chose under `expert-choice`)"},
    {"importance_loss", "", false, "1", MetricWhen::kNoisyTopK,
     "CV(importance)^2, mean over MoE layers, before its weight"},
    {"load_loss", "", false, "1", MetricWhen::kNoisyTopK,
     "CV(load)^2 of the smooth load, mean over MoE layers, before its weight"},
    {"balance_bias", "L_moe x E", false, "logit", MetricWhen::kBalanceBias,
     "the selection bias of each expert after the step's update", "moe_layer x expert"},
    {"tokens_per_s", "", false, "tokens/s", MetricWhen::kAlways, "B / step time (slowest rank)"},
    {"a2a_bytes", "", false, "bytes", MetricWhen::kAlways,
     "token payload bytes that crossed between different ranks, all MoE layers, forward and backward (the off-diagonal sum of `traffic`)"},
    {"a2a_seconds", "", false, "s", MetricWhen::kAlways,
     "the exchanges' transfer (counts and payloads): per MoE layer and phase the least time any rank spent inside it (the last rank to arrive waits for no one), summed"},
    {"a2a_wait_seconds", "", false, "s", MetricWhen::kAlways,
     "time inside the exchanges beyond their transfer: waiting for the last rank of the group to arrive (load imbalance of the work before), the rank that waited most"},
    {"compute_seconds", "", false, "s", MetricWhen::kAlways,
     "step time minus exchange (transfer and wait) and gradient all-reduce time, slowest rank"},
    {"step_seconds", "", false, "s", MetricWhen::kAlways, "wall time of the step, slowest rank"},
    {"expert_tokens", "E", true, "assignments", MetricWhen::kAlways,
     "assignments each expert processed (after capacity), summed over MoE layers", "expert"},
    {"token_share", "E", false, "fraction", MetricWhen::kAlways,
     "each expert's share of the kept assignments, all MoE layers (`expert_tokens` normalised)", "expert"},
    {"top_expert_share", "E", false, "fraction", MetricWhen::kAlways,
     "share of the tokens whose largest gate is expert e (ties to the lower index), mean over MoE layers; with a dense gate, the collapse/specialisation view of routing", "expert"},
    {"prediction_loss", "", false, "nats or MSE", MetricWhen::kMixtureLoss,
     "the task loss of the mixture's prediction"},
    {"mixture_spread", "", false, "q^2", MetricWhen::kMixtureLoss,
     "mean over tokens of sum_k g_k times the squared distance of q_k from qbar = sum_k g_k q_k, with q_k = f_k (regression) or softmax(f_k) (classification)"},
    {"expert_tokens_per_layer", "L_moe x E", true, "assignments", MetricWhen::kMoeLayers,
     "`expert_tokens` per MoE layer", "moe_layer x expert"},
    {"traffic", "P x P", true, "bytes", MetricWhen::kAlways,
     "bytes rank i sent to rank j (the diagonal is a rank's own tokens, which never leave it)", "sender x receiver"},
    {"padding_bytes", "", false, "bytes", MetricWhen::kAlways,
     "bytes of unused slot rows and headers sent between ranks (`--dispatch padded`; 0 otherwise)"},
    {"a2a_bytes_by_phase", "L_moe x 4", false, "bytes", MetricWhen::kMoeLayers,
     "bytes sent between different ranks (sum over ranks) per MoE layer and phase: forward dispatch (with the count exchange), forward combine, backward dispatch, backward combine", "moe_layer x phase"},
    {"a2a_seconds_by_phase", "L_moe x 4", false, "s", MetricWhen::kMoeLayers,
     "transfer seconds per MoE layer and phase (as `a2a_bytes_by_phase`): the least time any rank spent inside it", "moe_layer x phase"},
    {"a2a_bytes_inter_node", "", false, "bytes", MetricWhen::kAlways,
     "token payload bytes sent between ranks on different nodes (virtual nodes of `--ranks-per-node`, else the ranks that share memory), all MoE layers, forward and backward, sum over ranks"},
    {"a2a_messages_inter_node", "", true, "messages", MetricWhen::kAlways,
     "non-empty payload messages between ranks on different nodes, all MoE layers and exchanges, sum over ranks (the count exchanges not included)"},
    {"a2a_bytes_by_stage", "L_moe x 2", false, "bytes", MetricWhen::kHierarchical,
     "bytes sent between different ranks (sum over ranks) per MoE layer in the intra-node and the inter-node stage, all four phases", "moe_layer x stage"},
    {"a2a_seconds_by_stage", "L_moe x 2", false, "s", MetricWhen::kHierarchical,
     "transfer seconds per MoE layer of the intra-node and the inter-node stage (counts included), all four phases: the least time any rank spent inside it", "moe_layer x stage"},
    {"rank_expert_tokens", "P x E", true, "assignments", MetricWhen::kAlways,
     "assignments from rank p's tokens kept for expert e, summed over MoE layers (input of the network cost model)", "rank x expert"},
    {"val_step", "", true, "step", MetricWhen::kEvalEvery, "the step after which `val_loss` was measured"},
    {"val_loss", "", false, "nats or MSE", MetricWhen::kEvalEvery,
     "task loss over the validation tokens (`--val-tokens`)"},
});

// The table entry for `name`; nullptr if the table has none.
const MetricSpec* find_step_metric(std::string_view name);

// The table as markdown (one row per dataset), for `moesim info --metrics` and docs/run-file.md.
std::string step_metrics_markdown();

// The table as the run file describes its datasets (`metrics/<name>`, axes "step x ...").
std::span<const DatasetInfo> step_metric_datasets();

// Per-step datasets whose shape depends on the rank count P (a resumed run on another P
// restarts them).
std::vector<std::string> per_rank_step_metrics();
inline const std::vector<std::string> kPerRankSeries = per_rank_step_metrics();

// What decides which datasets a run writes and their shapes.
struct MetricContext {
  int E = 0;      // experts per MoE layer (as the layers run them)
  int P = 0;      // ranks
  int L_moe = 0;  // MoE layers
  bool noisy_topk = false, balance_bias = false, mixture_loss = false, eval_every = false, hierarchical = false;
};
template <class T>
MetricContext metric_context(const Communicator& comm, Model<T>& model, bool eval_every);
bool written_in(MetricWhen w, const MetricContext& c);

// Appends rows to the run file, each checked against the table: the name must be in it and
// apply to the context, the row must have the stated shape and type (RuntimeError if not).
// Made once per run: shapes are worked out here and each series is found in the run file
// once, so a step's appends look nothing up but the name in the table.
class MetricWriter {
 public:
  MetricWriter(RunFile& out, const MetricContext& context);
  void append(std::string_view name, std::span<const double> row);
  void append(std::string_view name, std::span<const std::int64_t> row);
  void append(std::string_view name, double value) { append(name, std::span<const double>(&value, 1)); }
  void append(std::string_view name, std::int64_t value) {
    append(name, std::span<const std::int64_t>(&value, 1));
  }
  // Whether the table writes `name` in this run's context.
  bool writes(std::string_view name) const;
  const MetricContext& context() const { return context_; }
  int rows_written() const { return rows_; }

 private:
  struct Entry {
    bool written = false;
    std::vector<hsize_t> dims;
    std::size_t size = 1;
    bool have_slot = false;
    RunFile::Slot slot;
  };
  Entry& checked(std::string_view name, std::size_t size, bool integer);
  RunFile& out_;
  MetricContext context_;
  std::vector<Entry> entries_;  // one per row of kStepMetrics
  int rows_ = 0;
};

// One step's metrics, reduced over MoE layers and ranks; `traffic` and
// `rank_expert_tokens` are gathered to rank 0 only (zeros elsewhere).
struct StepMetrics {
  double train_loss = 0, lr = 0, aux_loss = 0, z_loss = 0, gate_entropy = 0;
  double max_over_mean_load = 0, load_cv = 0;
  std::int64_t unused_experts = 0, starved_experts = 0;
  std::vector<double> gate_mass;                      // E
  double dropped_fraction = 0, unrouted_fraction = 0;
  double importance_loss = 0, load_loss = 0;
  std::vector<double> balance_bias;                   // L_moe x E
  double tokens_per_s = 0, a2a_bytes = 0, a2a_seconds = 0, a2a_wait_seconds = 0, compute_seconds = 0,
         step_seconds = 0;
  std::vector<std::int64_t> expert_tokens;            // E
  std::vector<double> token_share, top_expert_share;  // E
  double prediction_loss = 0, mixture_spread = 0;
  std::vector<std::int64_t> expert_tokens_per_layer;  // L_moe x E
  std::vector<std::int64_t> traffic;                  // P x P
  double padding_bytes = 0;
  std::vector<double> a2a_bytes_by_phase, a2a_seconds_by_phase;  // L_moe x 4
  double a2a_bytes_inter_node = 0;
  std::int64_t a2a_messages_inter_node = 0;
  std::vector<double> a2a_bytes_by_stage, a2a_seconds_by_stage;  // L_moe x 2 (hierarchical)
  std::vector<std::int64_t> rank_expert_tokens;       // P x E
  bool stop = false;                                  // some rank received a stop signal
  bool flush_due = false;                             // some rank's clock says flush the run file
};

// The step as the loop saw it on this rank.
struct StepInput {
  MixtureLossResult loss;         // local sums
  double step_seconds = 0;        // forward to Adam
  double reduce_seconds = 0;      // gradient all-reduce
  bool stop_signal = false;       // this rank received a stop signal
  bool flush_due = false;         // --flush-seconds have passed since this rank's last flush
  std::int64_t batch_tokens = 0;  // B, global
  double lr = 0;                  // the learning rate Adam used
};

// COLLECTIVE. Aggregates the statistics of the step just run over the MoE layers and the
// ranks: one sum- and one max-reduce (the stop flag rides on the sum and the flush flag on the
// max, so neither costs a collective of its own) and two gathers to rank 0.
template <class T>
StepMetrics collect_step_metrics(const Communicator& comm, Model<T>& model,
                                 const MetricContext& context, const StepInput& in);

// Appends the step's row of every dataset the table marks as written in the writer's context.
void append_step_metrics(MetricWriter& w, std::int64_t step, const StepMetrics& m);

// Appends a validation row (val_step, val_loss) during or after training (--eval-every).
void append_validation(MetricWriter& w, std::int64_t step, double val_loss);

}  // namespace moesim
