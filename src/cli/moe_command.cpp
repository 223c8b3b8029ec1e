// `moesim moe`: one expert-parallel MoE training run, logged to one HDF5 file.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "cli/commands.hpp"
#include "cli/moe_model.hpp"
#include "cli/options.hpp"
#include "cli/task_options.hpp"
#include "core/blas.hpp"
#include "train/trainer.hpp"

namespace moesim::cli {

namespace {

using I = std::int64_t;

po::options_description moe_options() {
  po::options_description d("MoE run (letters as in README: E experts, K top-k, D, F, L, B tokens)");
  d.add_options()
      ("experts", po::value<I>()->default_value(8), "E: experts per MoE layer (divisible by the rank count)")
      ("top-k", po::value<I>()->default_value(2), "K: experts per token, 1 <= K <= E")
      ("gate", po::value<std::string>()->default_value("topk"),
       "topk (softmax over the K chosen logits; with K = 1 the gate is constant) | switch (K = 1, gate = softmax "
       "probability) | noisy-topk (Shazeer 2017: top-k of logits plus learned Gaussian noise) | expert-choice "
       "(each expert takes its C best tokens) | hash (fixed map, see --hash-key) | sbase (top-k of a Sinkhorn-"
       "balanced plan, gate = softmax probability) | dense (every expert, weighted by the softmax; K and capacity do "
       "not apply) | constant (every expert, weight 1/E, no router)")
      ("balance", po::value<std::string>()->default_value("aux"),
       "aux (the gate's auxiliary loss: Switch's, or noisy-topk's importance and load losses) | bias (DeepSeek-V3: "
       "per-expert bias added to the logits for selection only, moved by the load each step) | none")
      ("bias-update-rate", po::value<double>()->default_value(1e-3), "--balance bias: b_e += rate * sign(mean load - load_e) per step")
      ("importance-loss-weight", po::value<double>()->default_value(0.1), "noisy-topk: weight of CV(importance)^2 per MoE layer")
      ("load-loss-weight", po::value<double>()->default_value(0.1), "noisy-topk: weight of CV(smooth load)^2 per MoE layer")
      ("sinkhorn-iters", po::value<I>()->default_value(8), "sbase: Sinkhorn iterations over the global batch")
      ("hash-key", po::value<std::string>()->default_value("input"),
       "hash: input (signs of 16 fixed random projections of the layer input) | position (global token index in the batch)")
      ("router-precision", po::value<std::string>()->default_value("fp32"),
       "fp32 | fp64: router logits, softmax, selection and gradients in fp64 even in an fp32 model")
      ("eval-capacity-factor", po::value<double>(), "capacity factor for validation (default: --capacity-factor)")
      ("mixture-loss", po::value<std::string>()->default_value("none"),
       "none | global (loss of the mixture sum_k g_k f_k: experts collapse) | per-expert (sum_k g_k loss(f_k): experts "
       "specialise); needs --gate dense or constant, the last block's experts each predict through the head")
      ("shared-experts", po::value<I>()->default_value(0), "always-active experts per MoE layer, replicated on every rank (DeepSeekMoE)")
      ("granularity", po::value<I>()->default_value(1),
       "M: split each expert into M smaller ones: E -> E*M, K -> K*M, expert F -> F/M (DeepSeekMoE)")
      ("d-model", po::value<I>()->default_value(32), "D: model width")
      ("d-ff", po::value<I>()->default_value(64), "F: hidden width of each expert (and dense FFN)")
      ("layers", po::value<I>()->default_value(2), "L: residual blocks")
      ("moe-every", po::value<I>()->default_value(1), "every n-th block is an MoE block (1 = all, 0 = none)")
      ("steps", po::value<I>()->default_value(200), "S: optimizer steps")
      ("batch-tokens", po::value<I>()->default_value(1024), "B: tokens per step over all ranks")
      ("lr", po::value<double>()->default_value(3e-3), "Adam learning rate")
      ("weight-decay", po::value<double>()->default_value(0.0), "decoupled weight decay (AdamW)")
      ("grad-clip", po::value<double>()->default_value(1.0), "clip the global gradient norm to this (0 = off)")
      ("seed", po::value<I>()->default_value(1), "seed for data and initialisation")
      ("capacity-factor", po::value<double>()->default_value(1.25),
       "C: expert capacity = ceil(C * B * K / E) slots over the global batch (0 = dropless)")
      ("aux-loss-weight", po::value<double>()->default_value(0.01), "weight of the Switch load-balancing loss per MoE layer")
      ("z-loss", po::value<double>()->default_value(0.0), "weight of the router z-loss (ST-MoE) per MoE layer")
      ("router-init-scale", po::value<double>()->default_value(0.1), "router weights ~ N(0, scale / D)")
      ("precision", po::value<std::string>()->default_value("fp32"), "fp32 | fp64 for the whole model")
      ("dispatch", po::value<std::string>()->default_value("alltoallv"),
       "token exchange: alltoallv (counts by all-to-all, then Alltoallv) | allgather (count matrix by all-gather, "
       "then Alltoallv) | p2p (Isend/Irecv per rank and expert) | padded (fixed slots, one equal-split Alltoall)")
      ("task", po::value<std::string>()->default_value("regimes"),
       "regimes (clustered regression/classification) | teacher (learn a random MoE) | lm (next-byte language modelling) | "
       "binned (seed 001's supervised-gate mixture of stacking learners: moe --task binned --help)")
      ("problem", po::value<std::string>()->default_value("regression"), "regression (MSE) | classification (cross-entropy)")
      ("classes", po::value<I>()->default_value(4), "classes for --problem classification")
      ("input-dim", po::value<I>()->default_value(16), "input features of the regimes task")
      ("clusters", po::value<I>()->default_value(8), "regimes: clusters, each with its own function and noise")
      ("noise-min", po::value<double>()->default_value(0.01), "regimes: noise of the cleanest cluster")
      ("noise-max", po::value<double>()->default_value(0.5), "regimes: noise of the noisiest cluster")
      ("val-tokens", po::value<I>()->default_value(4096), "validation tokens (a separate stream)")
      ("eval-every", po::value<I>()->default_value(0), "validate every n steps as well as at the end (0 = end only)")
      ("out", po::value<std::string>()->default_value("moe_run.h5"), "run file (HDF5) to write")
      ("flush-every", po::value<I>()->default_value(50), "steps between run-file flushes")
      ("checkpoint", po::value<std::string>()->default_value(""),
       "checkpoint file (HDF5): the whole training state, written at the end, when a signal stops the run "
       "and every --checkpoint-every steps (empty = none)")
      ("checkpoint-every", po::value<I>()->default_value(0), "steps between checkpoints (0 = only when stopped and at the end)")
      ("resume", po::bool_switch()->default_value(false),
       "continue from --checkpoint if that file exists (on any rank count dividing E); start afresh if it does not")
      ("progress-interval", po::value<double>()->default_value(2.0), "seconds between progress lines on rank 0")
      ("quiet", po::bool_switch()->default_value(false), "no progress lines or summary")
      ("blas-threads", po::value<I>()->default_value(1), "OpenBLAS threads per rank");
  d.add(task_options());
  return d;
}

struct MoeSettings {
  ModelConfig model;
  RegimesConfig task;
  TrainConfig train;
  std::string precision, out;
  bool resume = false;
  AttrList effective;
};

MoeSettings validate(const po::variables_map& vm, int P) {
  auto i = [&](const char* k) { return vm[k].as<I>(); };
  auto d = [&](const char* k) { return vm[k].as<double>(); };
  auto s = [&](const char* k) { return vm[k].as<std::string>(); };
  for (const char* k : {"experts", "top-k", "d-model", "d-ff", "layers", "steps", "batch-tokens",
                        "input-dim", "clusters", "val-tokens", "blas-threads", "granularity"})
    MOESIM_CONFIG_CHECK(i(k) >= 1, "--" << k << " must be >= 1 (got " << i(k) << ")");
  for (const char* k : {"moe-every", "eval-every", "flush-every", "checkpoint-every", "shared-experts"})
    MOESIM_CONFIG_CHECK(i(k) >= 0, "--" << k << " must be >= 0 (got " << i(k) << ")");
  for (const char* k : {"capacity-factor", "aux-loss-weight", "z-loss", "weight-decay", "grad-clip",
                        "progress-interval", "bias-update-rate", "importance-loss-weight", "load-loss-weight"})
    MOESIM_CONFIG_CHECK(d(k) >= 0 && std::isfinite(d(k)), "--" << k << " must be a finite number >= 0 (got " << d(k) << ")");
  for (const char* k : {"lr", "router-init-scale", "noise-min", "noise-max"})
    MOESIM_CONFIG_CHECK(d(k) > 0 && std::isfinite(d(k)), "--" << k << " must be a finite number > 0 (got " << d(k) << ")");
  const I E_given = i("experts"), K_given = i("top-k"), M = i("granularity");
  MOESIM_CONFIG_CHECK(K_given <= E_given, "--top-k (" << K_given << ") must not exceed --experts (" << E_given << ")");
  MOESIM_CONFIG_CHECK(i("d-ff") % M == 0, "--d-ff (" << i("d-ff") << ") must be divisible by --granularity (" << M << ")");
  const I E = E_given * M, K = K_given * M;
  MOESIM_CONFIG_CHECK(E % P == 0, "--experts (" << E_given << (M > 1 ? " x granularity " + std::to_string(M) : std::string())
                                                << ") must be divisible by the number of ranks ("
                                                << P << ") for expert parallelism");
  const GateKind gate = parse_gate(s("gate"));
  MOESIM_CONFIG_CHECK(s("gate") != "switch" || K == 1, "--gate switch routes to one expert: it needs --top-k 1"
                                                           << (M > 1 ? " and --granularity 1" : ""));
  const BalanceKind balance = parse_balance(s("balance"));
  const double eval_cf = vm.count("eval-capacity-factor") ? d("eval-capacity-factor") : d("capacity-factor");
  MOESIM_CONFIG_CHECK(eval_cf >= 0 && std::isfinite(eval_cf),
                      "--eval-capacity-factor must be a finite number >= 0 (got " << eval_cf << ")");
  if (gate == GateKind::kExpertChoice)
    MOESIM_CONFIG_CHECK(d("capacity-factor") > 0 && eval_cf > 0,
                        "--gate expert-choice needs --capacity-factor and --eval-capacity-factor > 0 "
                        "(each expert takes C = factor * B * K / E tokens)");
  MOESIM_CONFIG_CHECK(balance != BalanceKind::kBias || (gate_is_token_choice(gate) && gate != GateKind::kSBase),
                      "--balance bias needs a gate that picks experts per token by score (topk, switch, "
                      "noisy-topk); --gate " << s("gate") << " balances by construction");
  MOESIM_CONFIG_CHECK(i("sinkhorn-iters") >= 1, "--sinkhorn-iters must be >= 1 (got " << i("sinkhorn-iters") << ")");
  MOESIM_CONFIG_CHECK(s("hash-key") == "input" || s("hash-key") == "position",
                      "--hash-key must be input or position (got '" << s("hash-key") << "')");
  MOESIM_CONFIG_CHECK(s("router-precision") == "fp32" || s("router-precision") == "fp64",
                      "--router-precision must be fp32 or fp64 (got '" << s("router-precision") << "')");
  const MixtureLoss mixture = parse_mixture_loss(s("mixture-loss"));
  const bool all_experts = gate_uses_all_experts(gate);
  MOESIM_CONFIG_CHECK(mixture == MixtureLoss::kNone || all_experts,
                      "--mixture-loss " << s("mixture-loss") << " needs --gate dense or constant (got '" << s("gate")
                                        << "'): the mixture weights every expert's prediction");
  MOESIM_CONFIG_CHECK(mixture == MixtureLoss::kNone || (i("moe-every") > 0 && i("layers") % i("moe-every") == 0),
                      "--mixture-loss " << s("mixture-loss") << " needs the last block to be an MoE block (--layers "
                                        << i("layers") << " must be a multiple of --moe-every " << i("moe-every") << ")");
  MOESIM_CONFIG_CHECK(s("task") == "regimes" || s("task") == "teacher" || s("task") == "lm",
                      "--task '" << s("task") << "' is not known (known: regimes, teacher, lm, binned)");
  MOESIM_CONFIG_CHECK(s("problem") == "regression" || s("problem") == "classification",
                      "--problem must be regression or classification (got '" << s("problem") << "')");
  MOESIM_CONFIG_CHECK(s("precision") == "fp32" || s("precision") == "fp64",
                      "--precision must be fp32 or fp64 (got '" << s("precision") << "')");
  MOESIM_CONFIG_CHECK(d("noise-max") >= d("noise-min"), "--noise-max must be >= --noise-min");
  const bool cls = s("problem") == "classification";
  if (cls) MOESIM_CONFIG_CHECK(i("classes") >= 2, "--classes must be >= 2 (got " << i("classes") << ")");
  MOESIM_CONFIG_CHECK(!s("out").empty(), "--out must name a file");
  MOESIM_CONFIG_CHECK(!vm["resume"].as<bool>() || !s("checkpoint").empty(), "--resume needs --checkpoint FILE");
  MOESIM_CONFIG_CHECK(i("checkpoint-every") == 0 || !s("checkpoint").empty(), "--checkpoint-every needs --checkpoint FILE");
  MOESIM_CONFIG_CHECK(s("checkpoint") != s("out"), "--checkpoint and --out must be different files");

  MoeSettings m;
  m.task.d_in = i("input-dim");
  m.task.clusters = static_cast<int>(i("clusters"));
  m.task.classes = cls ? static_cast<int>(i("classes")) : 0;
  m.task.noise_min = d("noise-min");
  m.task.noise_max = d("noise-max");
  m.task.seed = static_cast<std::uint64_t>(i("seed"));
  m.model.d_in = m.task.d_in;
  m.model.d_out = cls ? i("classes") : 1;
  m.model.d_model = i("d-model");
  m.model.d_ff = i("d-ff");
  m.model.layers = static_cast<int>(i("layers"));
  m.model.moe_every = static_cast<int>(i("moe-every"));
  m.model.seed = static_cast<std::uint64_t>(i("seed"));
  m.model.moe.experts = static_cast<int>(E);
  m.model.moe.top_k = static_cast<int>(K);
  m.model.moe.capacity_factor = d("capacity-factor");
  m.model.moe.aux_loss_weight = d("aux-loss-weight");
  m.model.moe.z_loss_weight = d("z-loss");
  m.model.moe.router_init_scale = d("router-init-scale");
  m.model.moe.gate = gate;
  m.model.moe.balance = balance;
  m.model.moe.bias_update_rate = d("bias-update-rate");
  m.model.moe.eval_capacity_factor = eval_cf;
  m.model.moe.router.fp64 = s("router-precision") == "fp64";
  m.model.moe.router.importance_weight = d("importance-loss-weight");
  m.model.moe.router.load_weight = d("load-loss-weight");
  m.model.moe.router.sinkhorn_iters = static_cast<int>(i("sinkhorn-iters"));
  m.model.moe.router.hash_key = s("hash-key") == "position" ? HashKey::kPosition : HashKey::kInput;
  m.model.moe.shared_experts = static_cast<int>(i("shared-experts"));
  m.model.granularity = static_cast<int>(M);
  m.model.mixture = mixture;
  m.model.classification = cls;
  // What the layers actually run with, recorded beside the given options.
  m.effective = {{"effective_experts", E},
                 {"effective_top_k", all_experts ? E : K},
                 {"effective_d_ff", i("d-ff") / M},
                 {"effective_capacity_factor", all_experts ? 0.0 : d("capacity-factor")}};
  m.model.moe.dispatch = parse_dispatch(s("dispatch"));
  m.train.steps = i("steps");
  m.train.batch_tokens = i("batch-tokens");
  m.train.val_tokens = i("val-tokens");
  m.train.eval_every = i("eval-every");
  m.train.adam.lr = d("lr");
  m.train.adam.weight_decay = d("weight-decay");
  m.train.grad_clip = d("grad-clip");
  m.train.progress_interval = d("progress-interval");
  m.train.quiet = vm["quiet"].as<bool>();
  m.train.flush_every = i("flush-every");
  m.train.checkpoint = s("checkpoint");
  m.train.checkpoint_every = i("checkpoint-every");
  m.resume = vm["resume"].as<bool>();
  m.precision = s("precision");
  m.out = s("out");
  return m;
}

std::string human(double v) {
  char buf[32];
  if (v >= 1e9) std::snprintf(buf, sizeof buf, "%.2fG", v / 1e9);
  else if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

template <class T>
int train_and_log(const Communicator& comm, const MoeSettings& m, const Task& task, RunFile& rf,
                  bool resuming) {
  Model<T> model(comm, m.model);
  const ParamCounts pc = count_params(m.model);
  install_stop_handlers();
  TrainConfig tc = m.train;
  if (resuming) {
    tc.start = load_checkpoint(comm, tc.checkpoint, model.replicated_params(), model.expert_params(), &rf,
                               kPerRankSeries, model_state(model));
    rf.root_attrs({{"resumed_at_step", tc.start.step}});
    if (comm.rank() == 0 && !tc.quiet) {
      std::printf("moesim moe: resuming from step %lld of %s\n", static_cast<long long>(tc.start.step),
                  tc.checkpoint.c_str());
      std::fflush(stdout);
    }
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
               {"compute_seconds", s.compute_seconds},
               {"a2a_bytes", s.a2a_bytes},
               {"dropped_fraction", s.dropped_fraction},
               {"token_bytes", static_cast<std::int64_t>(m.model.d_model * static_cast<Index>(sizeof(T)))}};
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
  if (comm.rank() == 0 && !m.train.quiet) {
    const double step_time = s.a2a_seconds + s.compute_seconds;
    std::printf(
        "moesim moe: %lld steps on %d ranks in %.1f s\n"
        "  train loss %.5f | val loss %.5f%s\n"
        "  params %s total, %s active per token | %s FLOPs/token | utilization %.3f params/FLOP\n"
        "  %s tokens/s | all-to-all %.1f%% of step time, %s B/step between ranks | dropped %.2f%%\n"
        "  run file: %s\n",
        static_cast<long long>(s.steps_done), comm.size(), s.wall_seconds, s.final_train_loss,
        s.val_loss,
        s.val_accuracy >= 0 ? (" | val accuracy " + std::to_string(s.val_accuracy)).c_str() : "",
        human(static_cast<double>(pc.total)).c_str(), human(static_cast<double>(pc.active)).c_str(),
        human(static_cast<double>(pc.flops_per_token)).c_str(), pc.param_utilization(),
        human(s.tokens_per_s).c_str(), step_time > 0 ? 100.0 * s.a2a_seconds / step_time : 0.0,
        human(s.a2a_bytes / static_cast<double>(std::max<I>(1, s.steps_done))).c_str(),
        100.0 * s.dropped_fraction, m.out.c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int run_moe(const Communicator& comm, const std::vector<std::string>& args, const std::string& preset) {
  // The binned mixture fits stacking learners, not this model: it has its own options.
  if (binned_task_requested(args, preset)) return run_binned(comm, args, preset);
  const po::options_description desc = moe_options();
  const Parsed p = parse("moe", args, desc, preset);
  if (p.help) {
    if (comm.rank() == 0)
      print_help("moe", "Train an expert-parallel top-k MoE on P MPI ranks and log it to HDF5.", desc);
    return 0;
  }
  install_stop_handlers();  // early, so a signal during set-up still stops cleanly
  MoeSettings m = validate(p.vm, comm.size());
  const TaskChoice choice = task_choice(p.vm, m.task);
  AttrList task_facts;
  const std::unique_ptr<Task> task = make_task(comm, choice, task_facts);  // bad data fails here, before any file
  fit_model_to_task(*task, choice, m.model);
  m.model.classification = task->classification();
  m.train.options = options_as_ini(p.vm, {"out", "checkpoint", "checkpoint-every", "resume"});
  int found = 0;
  if (m.resume && comm.rank() == 0) found = std::filesystem::exists(m.train.checkpoint) ? 1 : 0;
  comm.broadcast(&found, 1, 0);
  if (m.resume && !found && comm.rank() == 0 && !m.train.quiet)
    std::printf("moesim moe: no checkpoint %s yet, starting at step 1\n", m.train.checkpoint.c_str());
  set_blas_threads(static_cast<int>(p.vm["blas-threads"].as<I>()));

  auto rf = RunFile::create(comm, m.out, "moe");
  AttrList attrs = options_as_attrs(p.vm);
  if (!p.vm.count("eval-capacity-factor"))
    attrs.emplace_back("eval_capacity_factor", m.model.moe.eval_capacity_factor);
  const AttrList prov = provenance_attrs(comm);
  attrs.insert(attrs.end(), prov.begin(), prov.end());
  attrs.insert(attrs.end(), m.effective.begin(), m.effective.end());
  rf->root_attrs(attrs);
  rf->group_attrs("task", task_facts);
  rf->flush();
  return m.precision == "fp64" ? train_and_log<double>(comm, m, *task, *rf, found != 0)
                               : train_and_log<float>(comm, m, *task, *rf, found != 0);
}

void visit_moe_model(const Communicator& comm, const std::string& options,
                     const std::vector<std::string>& overrides, MoeModelVisitor& v) {
  const Parsed p = parse("moe", overrides, moe_options(), options);
  MoeSettings m = validate(p.vm, comm.size());
  const TaskChoice choice = task_choice(p.vm, m.task);
  AttrList task_facts;
  const std::unique_ptr<Task> task = make_task(comm, choice, task_facts);
  fit_model_to_task(*task, choice, m.model);
  if (m.precision == "fp64") {
    Model<double> model(comm, m.model);
    v.visit(model, *task, m.train);
  } else {
    Model<float> model(comm, m.model);
    v.visit(model, *task, m.train);
  }
}

}  // namespace moesim::cli
