// `moesim moe --task binned`: seed 001's supervised-gate mixture (binned/binned_moe.hpp)
// on the regimes rows or on any table the stacking readers accept, logged to HDF5.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

#include "binned/binned_moe.hpp"
#include "binned/regimes_table.hpp"
#include "cli/commands.hpp"
#include "cli/learner_options.hpp"
#include "cli/options.hpp"
#include "core/blas.hpp"
#include "core/timer.hpp"
#include "data/readers.hpp"

namespace moesim::cli {

namespace {

using I = std::int64_t;
constexpr double kInf = std::numeric_limits<double>::infinity();

po::options_description binned_options() {
  po::options_description d("Binned supervised-gate MoE (seed 001; B bins, one expert per bin)");
  d.add_options()
      ("task", po::value<std::string>()->default_value("binned"), "binned")
      ("data", po::value<std::string>(),
       "table: CSV with a header row, or HDF5 (.h5) with datasets X, y (default: generated regimes rows)")
      ("target", po::value<std::string>()->default_value(""), "CSV: name of the (numeric) target column")
      ("weight-column", po::value<std::string>()->default_value(""), "CSV: per-row sample weights (HDF5: dataset w)")
      ("rows", po::value<I>()->default_value(20000), "without --data: regimes rows to generate")
      ("input-dim", po::value<I>()->default_value(16), "without --data: input features of the regimes rows")
      ("clusters", po::value<I>()->default_value(8), "without --data: regimes, each with its own function and noise")
      ("noise-min", po::value<double>()->default_value(0.01), "without --data: noise of the cleanest regime")
      ("noise-max", po::value<double>()->default_value(0.5), "without --data: noise of the noisiest regime")
      ("bins", po::value<I>()->default_value(3), "B: quantile bins of the training targets (without --bin-edges)")
      ("bin-edges", po::value<std::string>()->default_value(""),
       "comma-separated, strictly increasing edges e1,...: bin k holds e_k <= y < e_(k+1) (B = edges + 1)")
      ("gate-learner", po::value<std::string>()->default_value("gbdt"),
       "the gate, a classifier over the bins: ridge, logistic, knn, tree, forest, gbdt, nb")
      ("gate-class-weight", po::value<std::string>()->default_value("none"),
       "none | balanced: gate rows weighted by N / (B N_k), N_k training rows of bin k (seed 001's class_weight)")
      ("expert-learner", po::value<std::string>()->default_value("gbdt"),
       "each bin's expert, a regressor: ridge, knn, tree, forest, gbdt")
      ("val-fraction", po::value<double>()->default_value(0.2), "rows that fit the isotonic calibration")
      ("test-fraction", po::value<double>()->default_value(0.2), "rows that score the run (chosen by a hash of seed and row)")
      ("clip-min", po::value<double>()->default_value(-kInf, "-inf"), "calibrated predictions are clipped to >= this")
      ("clip-max", po::value<double>()->default_value(kInf, "inf"), "calibrated predictions are clipped to <= this")
      ("baseline", po::value<bool>()->default_value(true), "also fit one expert learner on all training rows (RMSE baseline)")
      ("histogram-bins", po::value<I>()->default_value(20), "H: buckets of [0, 1] in the gate-probability histograms")
      ("seed", po::value<I>()->default_value(1), "seed for the data, the splits and randomised learners")
      ("out", po::value<std::string>()->default_value("binned_run.h5"), "run file (HDF5) to write")
      ("quiet", po::bool_switch()->default_value(false), "no per-model lines or summary")
      ("blas-threads", po::value<I>()->default_value(1), "OpenBLAS threads per rank");
  add_learner_hyper_options(d);
  return d;
}

std::vector<double> parse_edges(const std::string& s) {
  std::vector<double> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::size_t used = 0;
    double v = 0;
    try {
      v = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MOESIM_CONFIG_CHECK(used > 0 && item.find_first_not_of(" \t", used) == std::string::npos,
                        "--bin-edges: '" << item << "' is not a number");
    out.push_back(v);
  }
  return out;
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
  o.edges = parse_edges(s("bin-edges"));
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
  o.histogram_bins = static_cast<int>(i("histogram-bins"));
  o.seed = static_cast<std::uint64_t>(i("seed"));
  o.quiet = vm["quiet"].as<bool>();
  validate_binned(o);
  return o;
}

Table read_data(const Communicator& comm, const po::variables_map& vm, std::vector<int>* cluster) {
  if (!vm.count("data")) {
    RegimesConfig cfg;
    cfg.d_in = vm["input-dim"].as<I>();
    cfg.clusters = static_cast<int>(vm["clusters"].as<I>());
    cfg.noise_min = vm["noise-min"].as<double>();
    cfg.noise_max = vm["noise-max"].as<double>();
    cfg.seed = static_cast<std::uint64_t>(vm["seed"].as<I>());
    return regimes_table(comm, cfg, vm["rows"].as<I>(), cluster);
  }
  const std::string path = vm["data"].as<std::string>();
  const bool is_h5 = path.ends_with(".h5") || path.ends_with(".hdf5");
  TableSpec spec;
  spec.classification = false;
  spec.target = vm["target"].as<std::string>();
  spec.weight_column = vm["weight-column"].as<std::string>();
  MOESIM_CONFIG_CHECK(is_h5 || !spec.target.empty(), "--target COLUMN is required for CSV data");
  return read_table(comm, path, spec);
}

void write_run(const Communicator& comm, RunFile& rf, const BinnedResult& r, const BinnedOptions& o,
               const std::vector<int>& cluster, double seconds) {
  const hsize_t B = static_cast<hsize_t>(r.bins), H = static_cast<hsize_t>(o.histogram_bins);
  rf.write_array("bins/edges", {B - 1}, r.edges.data());
  rf.write_array("bins/rows", {3, B}, r.rows_per_split_bin.data());
  rf.group_attrs("bins", {{"mode", std::string(o.edges.empty() ? "quantile" : "given")},
                          {"rows_are", std::string("train,validation,test")}});
  rf.write_array("gate/probability_histogram", {B, B, H}, r.histogram.data());
  rf.write_array("gate/confusion", {B, B}, r.confusion.data());
  rf.write_array("gate/mean_probability", {B, B}, r.mean_probability.data());
  rf.group_attrs("gate", {{"learner", o.gate_learner}, {"rows_are", std::string("test")},
                          {"histogram_bins", static_cast<I>(H)}});
  rf.write_array("experts/loss", {B, 5}, r.expert_loss.data());
  rf.write_array("experts/rmse_by_bin", {B, B}, r.expert_rmse_by_bin.data());
  rf.group_attrs("experts", {{"learner", o.expert_learner},
                             {"loss_columns", std::string("train_rows,train_rmse_own_bin,test_rmse_own_bin,"
                                                          "test_rmse_all,test_gate_mass")}});
  rf.write_array("calibration/x", {r.calibration.x.size()}, r.calibration.x.data());
  rf.write_array("calibration/y", {r.calibration.y.size()}, r.calibration.y.data());
  rf.group_attrs("calibration", {{"fitted_on", std::string("validation")}, {"method", std::string("isotonic (PAV)")},
                                 {"points", static_cast<I>(r.calibration.x.size())},
                                 {"clip_min", o.clip_min}, {"clip_max", o.clip_max}});

  // Row-sharded: every rank writes its own rows (parallel HDF5).
  rf.ensure_group("predictions");
  rf.group_attrs("predictions", {{"split_codes", std::string("0 train, 1 validation, 2 test")}});
  const Index n = static_cast<Index>(r.row.size());
  std::vector<I> split(r.split.begin(), r.split.end()), bin(r.bin.begin(), r.bin.end()),
      clus(cluster.begin(), cluster.end());
  std::vector<RunFile::RowBlock> blocks = {
      {"predictions/row", r.row.data(), n, {}, true},
      {"predictions/split", split.data(), n, {}, true},
      {"predictions/bin", bin.data(), n, {}, true},
      {"predictions/target", r.target.data(), n, {}, false},
      {"predictions/gate", r.gate.data(), n, {B}, false},
      {"predictions/experts", r.experts.data(), n, {B}, false},
      {"predictions/mixture", r.mixture.data(), n, {}, false},
      {"predictions/hard", r.hard.data(), n, {}, false},
      {"predictions/calibrated", r.calibrated.data(), n, {}, false},
  };
  if (o.baseline) blocks.push_back({"predictions/baseline", r.baseline.data(), n, {}, false});
  if (!cluster.empty()) blocks.push_back({"predictions/cluster", clus.data(), n, {}, true});
  rf.write_row_blocks(comm, blocks);

  const CommTally tally = comm.tally();
  double comm_stats[2] = {tally.bytes_sent, tally.seconds};
  comm.allreduce_sum(comm_stats, 2);
  auto rows_in = [&](int s) {
    I t = 0;
    for (hsize_t k = 0; k < B; ++k) t += r.rows_per_split_bin[static_cast<std::size_t>(s) * B + k];
    return t;
  };
  AttrList fin{{"rmse_before_calibration", r.test.mixture},
               {"rmse_after_calibration", r.test.calibrated},
               {"rmse_clip_only", r.test.clip_only},
               {"rmse_hard_gate", r.test.hard},
               {"rmse_oracle_gate", r.test.oracle},
               {"val_rmse_before_calibration", r.val.mixture},
               {"val_rmse_after_calibration", r.val.calibrated},
               {"val_rmse_hard_gate", r.val.hard},
               {"gate_accuracy", r.gate_accuracy},
               {"gate_log_loss", r.gate_log_loss},
               {"gate_chance_accuracy", r.gate_chance_accuracy},
               {"bins", static_cast<I>(B)},
               {"calibration_points", static_cast<I>(r.calibration.x.size())},
               {"train_rows", rows_in(kSplitTrain)},
               {"val_rows", rows_in(kSplitValidation)},
               {"test_rows", rows_in(kSplitTest)},
               {"fit_seconds", r.fit_seconds},
               {"seconds", seconds},
               {"bytes_communicated", comm_stats[0]},
               {"comm_seconds", comm_stats[1]}};
  if (o.baseline) {
    fin.emplace_back("rmse_single_model", r.test.baseline);
    fin.emplace_back("val_rmse_single_model", r.val.baseline);
  }
  rf.group_attrs("final", fin);
  rf.mark_complete();
}

void print_summary(const Communicator& comm, const BinnedResult& r, const BinnedOptions& o, const std::string& out,
                   double seconds) {
  if (comm.rank() != 0 || o.quiet) return;
  std::printf("gate (%s) test bin accuracy %.4f (majority bin %.4f), log loss %.4f\n", o.gate_learner.c_str(),
              r.gate_accuracy, r.gate_chance_accuracy, r.gate_log_loss);
  std::printf("test RMSE: mixture %.4f | calibrated %.4f | hard gate %.4f | oracle gate %.4f", r.test.mixture,
              r.test.calibrated, r.test.hard, r.test.oracle);
  if (o.baseline) std::printf(" | single %s %.4f", o.expert_learner.c_str(), r.test.baseline);
  std::printf("\nvalidation RMSE (calibration fitted here): mixture %.4f | calibrated %.4f\n", r.val.mixture,
              r.val.calibrated);
  std::printf("done in %.1f s on %d ranks; run file: %s\n", seconds, comm.size(), out.c_str());
  std::fflush(stdout);
}

}  // namespace

bool binned_task_requested(const std::vector<std::string>& args, const std::string& preset) {
  po::options_description d;
  d.add_options()("task", po::value<std::string>())("config", po::value<std::string>());
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(d).allow_unregistered().run(), vm);
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
  const BinnedOptions o = settings(vm);
  set_blas_threads(static_cast<int>(vm["blas-threads"].as<I>()));
  Stopwatch wall;
  comm.reset_tally();
  std::vector<int> cluster;
  const Table data = read_data(comm, vm, &cluster);
  const std::string out = vm["out"].as<std::string>();
  auto rf = RunFile::create(comm, out, "binned");
  AttrList attrs = options_as_attrs(vm);
  const AttrList prov = provenance_attrs(comm);
  attrs.insert(attrs.end(), prov.begin(), prov.end());
  rf->root_attrs(attrs);
  rf->flush();
  const I rows = comm.allreduce_sum(static_cast<I>(data.n()));
  if (comm.rank() == 0 && !o.quiet) {
    std::printf("moesim moe --task binned: %lld rows, %lld features, %d ranks\n", static_cast<long long>(rows),
                static_cast<long long>(data.p()), comm.size());
    std::fflush(stdout);
  }
  const BinnedResult r = run_binned(comm, data, o);
  const double seconds = wall.seconds();
  write_run(comm, *rf, r, o, cluster, seconds);
  print_summary(comm, r, o, out, seconds);
  return 0;
}

}  // namespace moesim::cli
