// The binned mixture's run driver on the test's rank count: its input reading and the
// run file it writes, read back.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <numeric>

#include "binned/binned_run.hpp"
#include "core/error.hpp"
#include "io/hdf5.hpp"
#include "support/shared_dir.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

using test::world;


TEST(BinnedRun, CsvWithoutTargetIsAConfigError) {
  BinnedInputSpec in;
  in.data = "rows.csv";
  try {
    read_binned_table(world(), in, nullptr);
    ADD_FAILURE() << "no ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "--target COLUMN is required for CSV data");
  }
}

TEST(BinnedRun, RunFileReadsBack) {
  const test::SharedDir tmp;
  const std::string& dir = tmp.path();
  BinnedRunSettings s;
  s.input.rows = 900;
  s.input.regimes.d_in = 4;
  s.input.regimes.clusters = 3;
  s.options.gate_learner = "logistic";
  s.options.expert_learner = "ridge";
  s.options.histogram_bins = 5;
  s.options.quiet = true;
  s.out = dir + "/binned.h5";
  s.option_attrs = {{"task", std::string("binned")}};
  const BinnedResult res = run_binned_file(world(), s);
  const std::int64_t B = s.options.bins;
  if (world().rank() == 0) {
    h5::Handle f = h5::open_file(s.out, false);
    EXPECT_EQ(h5::read_attr_int(f.id(), "complete"), 1);
    EXPECT_EQ(h5::read_attr_string(f.id(), "kind"), "binned");
    EXPECT_EQ(h5::read_attr_string(f.id(), "task"), "binned");
    std::vector<hsize_t> dims;
    EXPECT_EQ(h5::read_array(f.id(), "bins/edges", &dims), res.edges);
    const std::vector<std::int64_t> per_split = h5::read_array_int(f.id(), "bins/rows", &dims);
    EXPECT_EQ(dims, (std::vector<hsize_t>{3, static_cast<hsize_t>(B)}));
    EXPECT_EQ(std::accumulate(per_split.begin(), per_split.end(), std::int64_t{0}), 900);
    h5::read_array_int(f.id(), "gate/probability_histogram", &dims);
    EXPECT_EQ(dims, (std::vector<hsize_t>{static_cast<hsize_t>(B), static_cast<hsize_t>(B), 5}));
    h5::read_array(f.id(), "experts/loss", &dims);
    EXPECT_EQ(dims, (std::vector<hsize_t>{static_cast<hsize_t>(B), 5}));
    // Row-sharded predictions: every rank's rows, in global order, with their regime.
    std::vector<std::int64_t> want(900);
    std::iota(want.begin(), want.end(), 0);
    EXPECT_EQ(h5::read_array_int(f.id(), "predictions/row", &dims), want);
    const std::vector<std::int64_t> cluster = h5::read_array_int(f.id(), "predictions/cluster", &dims);
    EXPECT_EQ(cluster.size(), 900u);
    for (std::int64_t c : cluster) EXPECT_TRUE(c >= 0 && c < 3) << c;
    h5::read_array(f.id(), "predictions/gate", &dims);
    EXPECT_EQ(dims, (std::vector<hsize_t>{900, static_cast<hsize_t>(B)}));
    EXPECT_TRUE(h5::exists(f.id(), "predictions/baseline"));
    h5::Handle fin = h5::open_group(f.id(), "final");
    EXPECT_EQ(h5::read_attr_double(fin.id(), "rmse_after_calibration"), res.test.calibrated);
    EXPECT_EQ(h5::read_attr_double(fin.id(), "rmse_single_model"), res.test.baseline);
    EXPECT_EQ(h5::read_attr_int(fin.id(), "train_rows") + h5::read_attr_int(fin.id(), "val_rows") +
                  h5::read_attr_int(fin.id(), "test_rows"),
              900);
    EXPECT_GT(h5::read_attr_double(fin.id(), "bytes_communicated"), world().size() > 1 ? 0.0 : -1.0);
  }
  world().barrier();
}

}  // namespace
}  // namespace moesim
