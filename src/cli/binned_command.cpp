// `moesim moe --task binned`: options of the supervised-gate mixture, run and
// logged by binned/binned_run on the regimes rows or on any table the readers accept.
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include "binned/binned_run.hpp"
#include "cli/commands.hpp"
#include "cli/learner_options.hpp"
#include "cli/options.hpp"
#include "core/blas.hpp"
#include "core/strings.hpp"

namespace moesim::cli {

namespace {

using I = std::int64_t;
constexpr double kInf = std::numeric_limits<double>::infinity();

po::options_description binned_options() {
  po::options_description data("Data");
  data.add_options()
      ("data", po::value<std::string>(),
       "table: CSV with a header row, or HDF5 (.h5) with datasets X, y (default: generated regimes rows)")
      ("target", po::value<std::string>()->default_value(""), "CSV: name of the (numeric) target column")
      ("weight-column", po::value<std::string>()->default_value(""), "CSV: per-row sample weights (HDF5: dataset w)")
      ("rows", po::value<I>()->default_value(20000), "without --data: regimes rows to generate")
      ("input-dim", po::value<I>()->default_value(16), "without --data: input features of the regimes rows")
      ("clusters", po::value<I>()->default_value(8), "without --data: regimes, each with its own function and noise")
      ("noise-min", real(0.01), "without --data: noise of the cleanest regime")
      ("noise-max", real(0.5), "without --data: noise of the noisiest regime")
      ("seed", po::value<I>()->default_value(1), "seed for the data, the splits and randomised learners");
  po::options_description mixture("Binned supervised-gate MoE (B bins of the target, one expert per bin)");
  mixture.add_options()
      ("task", po::value<std::string>()->default_value("binned"), "binned")
      ("bins", po::value<I>()->default_value(3), "B: quantile bins of the training targets (without --bin-edges)")
      ("bin-edges", po::value<std::string>()->default_value(""),
       "comma-separated, strictly increasing edges e1,...: bin k holds e_k <= y < e_(k+1) (B = edges + 1)")
      ("gate-learner", po::value<std::string>()->default_value("gbdt"),
       "the gate, a classifier over the bins: ridge, logistic, knn, tree, forest, gbdt, nb")
      ("gate-class-weight", po::value<std::string>()->default_value("none"),
       "none | balanced: gate rows weighted by N / (B N_k), N_k training rows of bin k (scikit-learn's class_weight)")
      ("expert-learner", po::value<std::string>()->default_value("gbdt"),
       "each bin's expert, a regressor: ridge, knn, tree, forest, gbdt")
      ("val-fraction", real(0.2), "rows that fit the isotonic calibration")
      ("test-fraction", real(0.2), "rows that score the run (chosen by a hash of seed and row)")
      ("clip-min", real(-kInf), "calibrated predictions are clipped to >= this")
      ("clip-max", real(kInf), "calibrated predictions are clipped to <= this")
      ("baseline", boolean(true), "also fit one expert learner on all training rows (RMSE baseline)")
      ("histogram-bins", po::value<I>()->default_value(20), "H: buckets of [0, 1] in the gate-probability histograms");
  po::options_description learners("Learners (gate and experts)");
  add_learner_hyper_options(learners);
  po::options_description output("Output");
  output.add_options()
      ("out", po::value<std::string>()->default_value("binned_run.h5"), "run file (HDF5) to write")
      ("quiet", po::bool_switch()->default_value(false), "no per-model lines or summary")
      ("blas-threads", po::value<I>()->default_value(1), "OpenBLAS threads per rank");
  po::options_description d;
  d.add(mixture).add(data).add(learners).add(output);
  return d;
}

BinnedOptions settings(const po::variables_map& vm) {
  auto i = [&](const char* k) { return vm[k].as<I>(); };
  auto d = [&](const char* k) { return vm[k].as<double>(); };
  auto s = [&](const char* k) { return vm[k].as<std::string>(); };
  MOESIM_CONFIG_CHECK(s("task") == "binned", "--task must be binned here (got '" << s("task") << "')");
  for (const char* k : {"rows", "input-dim", "clusters", "histogram-bins", "blas-threads"})
    MOESIM_CONFIG_CHECK(i(k) >= 1, "--" << k << " must be >= 1 (got " << i(k) << ")");
  MOESIM_CONFIG_CHECK(i("bins") >= 2 && i("bins") <= kMaxBins,
                      "--bins must be in 2.." << kMaxBins << " (got " << i("bins") << ")");
  for (const char* k : {"noise-min", "noise-max"})
    MOESIM_CONFIG_CHECK(d(k) > 0 && std::isfinite(d(k)), "--" << k << " must be a finite number > 0 (got " << d(k) << ")");
  MOESIM_CONFIG_CHECK(d("noise-max") >= d("noise-min"), "--noise-max must be >= --noise-min");
  MOESIM_CONFIG_CHECK(!s("out").empty(), "--out must name a file");
  BinnedOptions o;
  o.edges = parse_number_list(s("bin-edges"), "--bin-edges");
  o.bins = static_cast<int>(o.edges.empty() ? i("bins") : static_cast<I>(o.edges.size()) + 1);
  o.gate_learner = s("gate-learner");
  o.expert_learner = s("expert-learner");
  MOESIM_CONFIG_CHECK(s("gate-class-weight") == "none" || s("gate-class-weight") == "balanced",
                      "--gate-class-weight must be none or balanced (got '" << s("gate-class-weight") << "')");
  o.gate_balanced = s("gate-class-weight") == "balanced";
  o.learner = learner_settings(vm);
  o.val_fraction = d("val-fraction");
  o.test_fraction = d("test-fraction");
  o.clip_min = d("clip-min");
  o.clip_max = d("clip-max");
  o.baseline = vm["baseline"].as<bool>();
  o.histogram_bins = int_option(vm, "histogram-bins");
  o.seed = static_cast<std::uint64_t>(i("seed"));
  o.quiet = vm["quiet"].as<bool>();
  validate_binned(o);
  return o;
}

BinnedInputSpec input_spec(const po::variables_map& vm) {
  BinnedInputSpec in;
  if (vm.count("data")) in.data = vm["data"].as<std::string>();
  in.target = vm["target"].as<std::string>();
  in.weight_column = vm["weight-column"].as<std::string>();
  in.regimes.d_in = vm["input-dim"].as<I>();
  in.regimes.clusters = int_option(vm, "clusters");
  in.regimes.noise_min = vm["noise-min"].as<double>();
  in.regimes.noise_max = vm["noise-max"].as<double>();
  in.regimes.seed = static_cast<std::uint64_t>(vm["seed"].as<I>());
  in.rows = vm["rows"].as<I>();
  return in;
}

}  // namespace

bool binned_task_requested(const std::vector<std::string>& args, const std::string& preset) {
  po::options_description d;
  d.add_options()("task", po::value<std::string>())("config", po::value<std::string>());
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(d).style(kCommandLineStyle).allow_unregistered().run(), vm);
    if (!preset.empty()) {
      std::istringstream in(preset);
      po::store(po::parse_config_file(in, d, true), vm);
    }
    if (vm.count("config")) {
      std::ifstream in(vm["config"].as<std::string>());
      if (in) po::store(po::parse_config_file(in, d, true), vm);
    }
  } catch (const po::error&) {
    return false;  // the full parse reports it
  }
  return vm.count("task") && vm["task"].as<std::string>() == "binned";
}

int run_binned(const Communicator& comm, const std::vector<std::string>& args, const std::string& preset) {
  const po::options_description desc = binned_options();
  const Parsed p = parse("moe", args, desc, preset);
  if (p.help) {
    if (comm.rank() == 0)
      print_help("moe --task binned",
                 "Seed 001's supervised-gate mixture: a classifier over B ordinal bins of the target gives "
                 "probabilities p_k, one expert per bin fits its bin's rows, the prediction sum_k p_k f_k is "
                 "calibrated by isotonic regression on a validation split.",
                 desc);
    return 0;
  }
  const po::variables_map& vm = p.vm;
  BinnedRunSettings rs;
  rs.options = settings(vm);
  rs.input = input_spec(vm);
  rs.out = vm["out"].as<std::string>();
  rs.option_attrs = options_as_attrs(vm);
  set_blas_threads(int_option(vm, "blas-threads"));
  run_binned_file(comm, rs);
  return 0;
}

std::vector<OptionSetting> binned_settings(const std::vector<std::string>& args, const std::string& preset) {
  const po::options_description desc = binned_options();
  return option_settings(parse("moe", args, desc, preset).vm, desc);
}

void check_binned(const std::vector<std::string>& args, const std::string& preset) {
  const Parsed p = parse("moe", args, binned_options(), preset);
  if (!p.help) settings(p.vm);  // pure option checks; the table is read by the run
}

}  // namespace moesim::cli
