// `moesim moe`'s options checked and mapped to a run's settings (MoeRunConfig).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cli/moe_options.hpp"
#include "cli/task_options.hpp"
#include "train/trainer.hpp"

namespace moesim::cli {

namespace {
using I = std::int64_t;

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string out;
  for (const std::string& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

// The learning-rate schedule and its checks (Adam's betas and eps are checked here too).
LrSchedule lr_schedule(const po::variables_map& vm) {
  const I warmup = vm["lr-warmup-steps"].as<I>();
  const double lr = vm["lr"].as<double>(), min_lr = vm["min-lr"].as<double>();
  MOESIM_CONFIG_CHECK(warmup >= 0, "--lr-warmup-steps must be >= 0 (got " << warmup << ")");
  MOESIM_CONFIG_CHECK(min_lr >= 0 && min_lr <= lr, "--min-lr must be in [0, --lr] (got " << min_lr << ")");
  for (const char* k : {"adam-beta1", "adam-beta2"})
    MOESIM_CONFIG_CHECK(vm[k].as<double>() >= 0 && vm[k].as<double>() < 1,
                        "--" << k << " must be in [0, 1) (got " << vm[k].as<double>() << ")");
  const double eps = vm["adam-eps"].as<double>();
  MOESIM_CONFIG_CHECK(eps > 0 && std::isfinite(eps), "--adam-eps must be a finite number > 0 (got " << eps << ")");
  LrSchedule s;
  s.warmup_steps = warmup;
  s.decay = parse_lr_decay(vm["lr-decay"].as<std::string>());
  s.min_lr = min_lr;
  return s;
}
}  // namespace

MoeRunConfig moe_run_config(const po::variables_map& vm, int P) {
  auto i = [&](const char* k) { return vm[k].as<I>(); };
  auto d = [&](const char* k) { return vm[k].as<double>(); };
  auto s = [&](const char* k) { return vm[k].as<std::string>(); };
  for (const char* k : {"experts", "top-k", "d-model", "d-ff", "layers", "steps", "batch-tokens",
                        "input-dim", "clusters", "val-tokens", "blas-threads", "granularity"})
    MOESIM_CONFIG_CHECK(i(k) >= 1, "--" << k << " must be >= 1 (got " << i(k) << ")");
  for (const char* k : {"moe-every", "eval-every", "flush-every", "checkpoint-every", "shared-experts"})
    MOESIM_CONFIG_CHECK(i(k) >= 0, "--" << k << " must be >= 0 (got " << i(k) << ")");
  // Counts held as int: a larger value would be cut (--experts 4294967300 trained E = 4).
  constexpr I kMaxCount = I{1} << 20;
  for (const char* k : {"experts", "top-k", "granularity", "layers", "shared-experts", "clusters", "input-dim",
                        "blas-threads", "moe-every"})
    MOESIM_CONFIG_CHECK(i(k) <= kMaxCount, "--" << k << " must be <= " << kMaxCount << " (got " << i(k) << ")");
  for (const char* k : {"capacity-factor", "aux-loss-weight", "z-loss", "weight-decay", "grad-clip",
                        "progress-interval", "bias-update-rate", "importance-loss-weight", "load-loss-weight",
                        "router-jitter", "flush-seconds"})
    MOESIM_CONFIG_CHECK(d(k) >= 0 && std::isfinite(d(k)), "--" << k << " must be a finite number >= 0 (got " << d(k) << ")");
  for (const char* k : {"lr", "router-init-scale", "noise-min", "noise-max"})
    MOESIM_CONFIG_CHECK(d(k) > 0 && std::isfinite(d(k)), "--" << k << " must be a finite number > 0 (got " << d(k) << ")");
  const LrSchedule schedule = lr_schedule(vm);
  const I E_given = i("experts"), K_given = i("top-k"), M = i("granularity");
  MOESIM_CONFIG_CHECK(i("d-ff") % M == 0, "--d-ff (" << i("d-ff") << ") must be divisible by --granularity (" << M << ")");
  const I E = E_given * M, K = K_given * M;
  MOESIM_CONFIG_CHECK(E <= kMaxCount, "--experts x --granularity must be <= " << kMaxCount << " (got " << E << ")");
  const GateKind gate = parse_gate(s("gate"));
  const BalanceKind balance = parse_balance(s("balance"));
  const DropPolicy drop_policy = parse_drop_policy(s("drop-policy"));
  const ScoreFunction score = parse_score_function(s("score-function"));
  MOESIM_CONFIG_CHECK(i("min-capacity") >= 0, "--min-capacity must be >= 0 (got " << i("min-capacity") << ")");
  const double eval_cf = vm.count("eval-capacity-factor") ? d("eval-capacity-factor") : d("capacity-factor");
  MOESIM_CONFIG_CHECK(eval_cf >= 0 && std::isfinite(eval_cf),
                      "--eval-capacity-factor must be a finite number >= 0 (got " << eval_cf << ")");
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
  const std::vector<std::string> tasks = task_names();
  MOESIM_CONFIG_CHECK(std::find(tasks.begin(), tasks.end(), s("task")) != tasks.end(),
                      "--task '" << s("task") << "' is not known (known: " << join(tasks, ", ") << ", binned)");
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

  MoeRunConfig m;
  RegimesConfig regimes;
  regimes.d_in = i("input-dim");
  regimes.clusters = static_cast<int>(i("clusters"));
  regimes.classes = cls ? static_cast<int>(i("classes")) : 0;
  regimes.noise_min = d("noise-min");
  regimes.noise_max = d("noise-max");
  regimes.seed = static_cast<std::uint64_t>(i("data-seed"));  // the task; --seed is the model's
  m.task = task_config(vm, regimes);
  m.model.d_in = regimes.d_in;
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
  m.model.moe.router.pre_softmax = vm["router-pre-softmax"].as<bool>();
  m.model.moe.router.score = score;
  m.model.moe.router.jitter = d("router-jitter");
  m.model.moe.min_capacity = i("min-capacity");
  m.model.moe.drop_policy = drop_policy;
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
  MOESIM_CONFIG_CHECK(s("device") == "cpu" || s("device") == "cuda",
                      "--device must be cpu or cuda (got '" << s("device") << "')");
  m.model.moe.on_gpu = s("device") == "cuda";
  MOESIM_CONFIG_CHECK(!m.model.moe.on_gpu || s("precision") == "fp32",
                      "--device cuda runs fp32 models (got --precision " << s("precision") << ")");
  MOESIM_CONFIG_CHECK(i("ranks-per-node") >= 0 && i("ranks-per-node") <= 1 << 30,
                      "--ranks-per-node must be >= 0 (got " << i("ranks-per-node") << ")");
  m.model.moe.ranks_per_node = static_cast<int>(i("ranks-per-node"));
  // --ep-size (or Megatron's --expert-model-parallel-size, cli/aliases); 0 lets the layer pick gcd(E, P).
  if (vm.count("ep-size")) {
    MOESIM_CONFIG_CHECK(i("ep-size") >= 1, "--ep-size must be >= 1 (got " << i("ep-size") << ")");
    m.model.moe.ep_size = static_cast<int>(std::min<I>(i("ep-size"), 1 << 30));
  }
  m.model.moe.validate(P, static_cast<int>(M));  // top-k, --ep-size, what the gate needs, bias, sinkhorn
  const int N = m.model.moe.ep_size_for(P);
  m.model.moe.expert_order = expert_order_for(s("expert-placement"), m.model.moe.experts, N);
  m.effective.emplace_back("effective_ep_size", static_cast<I>(N));
  m.effective.emplace_back("effective_replica_groups", static_cast<I>(P / N));
  m.train.steps = i("steps");
  m.train.batch_tokens = i("batch-tokens");
  m.train.val_tokens = i("val-tokens");
  MOESIM_CONFIG_CHECK(i("chunk-tokens") >= 0, "--chunk-tokens must be >= 0 (got " << i("chunk-tokens") << ")");
  // Where bit-identity on any rank count holds (train/trainer.hpp); elsewhere the run
  // falls back to the layout-dependent sums and says why.
  const RankInvariance ri = rank_invariance(i("chunk-tokens"), m.train.batch_tokens, m.train.val_tokens, P,
                                            m.model.moe.experts, N, i("expert-chunks"));
  m.train.chunk_tokens = ri.chunk_tokens;
  m.train.expert_chunks = ri.expert_chunks;
  m.effective.emplace_back("effective_expert_chunks", static_cast<I>(ri.expert_chunks));
  m.effective.emplace_back("bit_identical", static_cast<I>(ri.identical ? 1 : 0));
  m.effective.emplace_back("bit_identical_reason", ri.reason);
  m.train.eval_every = i("eval-every");
  m.train.adam.lr = d("lr");
  m.train.adam.weight_decay = d("weight-decay");
  m.train.adam.beta1 = d("adam-beta1");
  m.train.adam.beta2 = d("adam-beta2");
  m.train.adam.eps = d("adam-eps");
  m.train.schedule = schedule;
  m.train.grad_clip = d("grad-clip");
  m.train.progress_interval = d("progress-interval");
  m.train.quiet = vm["quiet"].as<bool>();
  m.train.flush_every = i("flush-every");
  m.train.flush_seconds = d("flush-seconds");
  m.train.checkpoint = s("checkpoint");
  m.train.checkpoint_every = i("checkpoint-every");
  m.resume = vm["resume"].as<bool>();
  m.precision = s("precision");
  m.out = s("out");
  m.blas_threads = static_cast<int>(i("blas-threads"));
  m.train.options = options_as_ini(vm, {"out", "checkpoint", "checkpoint-every", "resume"});
  m.options = as_attrs(moe_option_settings(vm));
  return m;
}

std::vector<OptionSetting> moe_option_settings(const po::variables_map& vm) {
  const po::options_description desc = moe_options();
  std::vector<OptionSetting> s =
      option_settings(vm, desc, [&](const std::string& name) { return task_option_in_effect(name, vm); });
  // Options whose default is another option's value, as resolved.
  auto help = [&](const char* name) { return desc.find(name, false).description(); };
  if (!vm.count("eval-capacity-factor"))
    s.push_back({"eval_capacity_factor", vm["capacity-factor"].as<double>(), false, help("eval-capacity-factor")});
  if (vm["task"].as<std::string>() == "teacher" && !vm.count("teacher-seed"))
    s.push_back({"teacher_seed", vm["data-seed"].as<I>(), false, help("teacher-seed")});
  return s;
}

MoeRunConfig moe_run_config(const std::string& ini, const std::vector<std::string>& overrides, int ranks) {
  const po::variables_map vm = parse("moe", overrides, moe_options(), ini).vm;
  // Options stored before --data-seed existed (run-file schema 1): --seed drew the task too.
  if (vm["data-seed"].defaulted() && vm["seed"].as<I>() != vm["data-seed"].as<I>()) {
    std::vector<std::string> with_data_seed = overrides;
    with_data_seed.insert(with_data_seed.end(), {"--data-seed", std::to_string(vm["seed"].as<I>())});
    return moe_run_config(parse("moe", with_data_seed, moe_options(), ini).vm, ranks);
  }
  return moe_run_config(vm, ranks);
}

}  // namespace moesim::cli
