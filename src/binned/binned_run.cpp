#include "binned/binned_run.hpp"

#include <cstdio>

#include "binned/regimes_table.hpp"
#include "core/timer.hpp"
#include "data/readers.hpp"

namespace moesim {

namespace {

using I = std::int64_t;

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

Table read_binned_table(const Communicator& comm, const BinnedInputSpec& spec, std::vector<int>* cluster) {
  if (!spec.data) return regimes_table(comm, spec.regimes, spec.rows, cluster);
  const std::string& path = *spec.data;
  const bool is_h5 = path.ends_with(".h5") || path.ends_with(".hdf5");
  TableSpec ts;
  ts.classification = false;
  ts.target = spec.target;
  ts.weight_column = spec.weight_column;
  MOESIM_CONFIG_CHECK(is_h5 || !ts.target.empty(), "--target COLUMN is required for CSV data");
  return read_table(comm, path, ts);
}

std::span<const DatasetInfo> binned_run_datasets() {
  static constexpr DatasetInfo kTable[] = {
      {"bins/edges", "edge", "float64", "the target's unit", "the B - 1 edges between the ordinal bins of the target; group attribute `mode` = quantile or given"},
      {"bins/rows", "split x bin", "int64", "rows", "rows per split (train, validation, test) and bin"},
      {"gate/probability_histogram", "true_bin x bin x bucket", "int64", "rows",
       "test rows of true bin k whose gate probability p_j falls in bucket h of [0, 1] (`--histogram-bins`)"},
      {"gate/confusion", "true_bin x predicted_bin", "int64", "rows", "test rows by true bin and the gate's most probable bin"},
      {"gate/mean_probability", "true_bin x bin", "float64", "probability", "mean gate probability p_j over the test rows of true bin k"},
      {"experts/loss", "expert x field", "float64", "as the group's `loss_columns`",
       "per expert: training rows, RMSE on its bin's training rows, on its bin's test rows, on all test rows, mean gate probability on test rows"},
      {"experts/rmse_by_bin", "expert x bin", "float64", "the target's unit", "RMSE of expert k on the test rows of bin j"},
      {"calibration/x", "breakpoint", "float64", "the target's unit", "inputs (mixture predictions) of the isotonic map's breakpoints"},
      {"calibration/y", "breakpoint", "float64", "the target's unit", "outputs of the isotonic map at its breakpoints"},
      {"predictions/row", "row", "int64", "row", "global row of each prediction in the table"},
      {"predictions/split", "row", "int64", "split code", "0 train, 1 validation, 2 test"},
      {"predictions/bin", "row", "int64", "bin", "the row's true bin"},
      {"predictions/target", "row", "float64", "the target's unit", "the row's target"},
      {"predictions/gate", "row x bin", "float64", "probability", "the gate's probability p_k of each bin"},
      {"predictions/experts", "row x expert", "float64", "the target's unit", "each bin expert's prediction f_k"},
      {"predictions/mixture", "row", "float64", "the target's unit", "sum_k p_k f_k, before calibration"},
      {"predictions/hard", "row", "float64", "the target's unit", "the prediction of the most probable bin's expert"},
      {"predictions/calibrated", "row", "float64", "the target's unit", "the mixture after the isotonic map"},
      {"predictions/baseline", "row", "float64", "the target's unit", "`--baseline`: one model of the expert learner on all training rows"},
      {"predictions/cluster", "row", "int64", "cluster", "regimes tables: the cluster that generated the row"},
  };
  return kTable;
}

void write_binned_run(const Communicator& comm, RunFile& rf, const BinnedResult& r, const BinnedOptions& o,
                      const std::vector<int>& cluster, double seconds) {
  rf.describe_with(binned_run_datasets());
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

BinnedResult run_binned_file(const Communicator& comm, const BinnedRunSettings& s) {
  const BinnedOptions& o = s.options;
  Stopwatch wall;
  comm.reset_tally();
  std::vector<int> cluster;
  const Table data = read_binned_table(comm, s.input, &cluster);
  RunFile::check_creatable(comm, s.out);  // written once the results are in, as stack_run
  const AttrList attrs = provenance_attrs(comm);
  const I rows = comm.allreduce_sum(static_cast<I>(data.n()));
  if (comm.rank() == 0 && !o.quiet) {
    std::printf("moesim moe --task binned: %lld rows, %lld features, %d ranks\n", static_cast<long long>(rows),
                static_cast<long long>(data.p()), comm.size());
    std::fflush(stdout);
  }
  BinnedResult r = run_binned(comm, data, o);
  const double seconds = wall.seconds();
  auto rf = RunFile::create(comm, s.out, "binned");
  rf->option_attrs(s.option_attrs);
  rf->root_attrs(attrs);
  write_binned_run(comm, *rf, r, o, cluster, seconds);
  print_summary(comm, r, o, s.out, seconds);
  return r;
}

}  // namespace moesim
