// What `moesim stack` and `blend` read and write, on the test's rank count: the hashed
// test split by global row (the same rows whatever P), test-file columns matched by
// name, weight and group columns carried along, tables written and read back bit for
// bit, and the run file of stack_run read back.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>

#include "core/error.hpp"
#include "data/readers.hpp"
#include "data/stacking_inputs.hpp"
#include "data/synthetic.hpp"
#include "data/writers.hpp"
#include "io/hdf5.hpp"
#include "stacking/stack_run.hpp"
#include "support/shared_dir.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

using test::world;

using test::SharedDir;

// Cell of global row i, column j: exact in decimal, distinct per (row, column).
double cell(std::int64_t i, int j) { return static_cast<double>(i) * 10 + j + 0.5; }

// COLLECTIVE. Rank 0 writes a CSV with the given feature columns (values cell(i, j) for
// j = the column's index in `order`), target (row % 3), weight w = 1 + row % 4 and group
// g = row % 5.
void write_csv(const std::string& path, std::int64_t rows, const std::vector<std::string>& features) {
  if (world().rank() == 0) {
    std::ofstream out(path);
    for (const std::string& f : features) out << f << ',';
    out << "target,w,g\n";
    for (std::int64_t i = 0; i < rows; ++i) {
      for (const std::string& f : features) out << cell(i, f[0] - 'a') << ',';
      out << i % 3 << ',' << 1 + i % 4 << ',' << i % 5 << '\n';
    }
  }
  world().barrier();
}

StackingInputSpec spec_for(const std::string& data) {
  StackingInputSpec s;
  s.data = data;
  s.table.target = "target";
  s.table.weight_column = "w";
  s.table.group_column = "g";
  s.seed = 5;
  s.test_fraction = 0.3;
  return s;
}

std::string config_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no ConfigError)";
}

TEST(StackingInputs, TestShareIsAHashOfSeedAndGlobalRow) {
  SharedDir dir;
  const std::int64_t N = 203;
  write_csv(dir.file("t.csv"), N, {"a", "b", "c"});
  const StackingInputs in = read_stacking_inputs(world(), spec_for(dir.file("t.csv")));
  // Every rank's training rows, gathered in rank order: exactly the rows the hash keeps,
  // in global order, so the split is the same for any rank count.
  const std::vector<std::int64_t> got = world().allgatherv(in.train_rows);
  std::vector<std::int64_t> want;
  for (std::int64_t i = 0; i < N; ++i)
    if (!is_test_row(5, i, 0.3)) want.push_back(i);
  EXPECT_EQ(got, want);
  EXPECT_GT(want.size(), 0u);
  EXPECT_LT(want.size(), static_cast<std::size_t>(N));
  EXPECT_EQ(world().allreduce_sum(static_cast<std::int64_t>(in.test.n())), N - static_cast<std::int64_t>(want.size()));
  // Rows carry their features, target, weight and group along.
  ASSERT_EQ(in.train.n(), static_cast<Index>(in.train_rows.size()));
  long bad = 0;
  for (Index r = 0; r < in.train.n(); ++r) {
    const std::int64_t i = in.train_rows[static_cast<std::size_t>(r)];
    for (int j = 0; j < 3; ++j) bad += in.train.X(r, j) != cell(i, j);
    bad += in.train.y[static_cast<std::size_t>(r)] != static_cast<double>(i % 3);
    bad += in.train.w[static_cast<std::size_t>(r)] != static_cast<double>(1 + i % 4);
    bad += in.train.group[static_cast<std::size_t>(r)] != i % 5;
  }
  EXPECT_EQ(world().allreduce_sum(bad), 0);
  EXPECT_TRUE(in.classification);
  EXPECT_EQ(in.train.features, (std::vector<std::string>{"a", "b", "c"}));

  // Blending keeps every row; a zero fraction holds nothing out.
  StackingInputSpec no_split = spec_for(dir.file("t.csv"));
  no_split.split_test = false;
  EXPECT_EQ(world().allreduce_sum(static_cast<std::int64_t>(read_stacking_inputs(world(), no_split).train.n())), N);
  no_split.split_test = true;
  no_split.test_fraction = 0;
  EXPECT_EQ(world().allreduce_sum(static_cast<std::int64_t>(read_stacking_inputs(world(), no_split).test.n())), 0);
}

TEST(StackingInputs, TheHashHoldsOutAboutTheFraction) {
  for (const double f : {0.0, 0.1, 0.5}) {
    int held = 0;
    for (std::int64_t i = 0; i < 20000; ++i) held += is_test_row(11, i, f);
    EXPECT_NEAR(held / 20000.0, f, 0.02) << f;
  }
  // The split is part of what a run file records (oof/row): pinned.
  std::vector<std::int64_t> held;
  for (std::int64_t i = 0; i < 40; ++i)
    if (is_test_row(5, i, 0.3)) held.push_back(i);
  EXPECT_EQ(held, (std::vector<std::int64_t>{0, 2, 3, 5, 6, 11, 20, 25, 31, 34, 35, 36, 38, 39}));
  int differ = 0;  // another seed, another split
  for (std::int64_t i = 0; i < 1000; ++i) differ += is_test_row(11, i, 0.5) != is_test_row(12, i, 0.5);
  EXPECT_GT(differ, 300);
}

TEST(StackingInputs, TestFileColumnsAreMatchedByName) {
  SharedDir dir;
  write_csv(dir.file("train.csv"), 40, {"a", "b", "c"});
  write_csv(dir.file("test.csv"), 17, {"c", "a", "b"});
  StackingInputSpec s = spec_for(dir.file("train.csv"));
  s.test = dir.file("test.csv");
  const StackingInputs in = read_stacking_inputs(world(), s);
  // With a test file nothing is split off the training file.
  EXPECT_EQ(world().allreduce_sum(static_cast<std::int64_t>(in.train.n())), 40);
  EXPECT_EQ(world().allreduce_sum(static_cast<std::int64_t>(in.test.n())), 17);
  EXPECT_EQ(in.test.features, (std::vector<std::string>{"a", "b", "c"}));
  long bad = 0;
  for (Index r = 0; r < in.test.n(); ++r)
    for (int j = 0; j < 3; ++j) bad += in.test.X(r, j) != cell(in.test.first + r, j);
  EXPECT_EQ(world().allreduce_sum(bad), 0) << "test columns not reordered to the training file's";

  write_csv(dir.file("other.csv"), 17, {"a", "b", "d"});
  s.test = dir.file("other.csv");
  EXPECT_EQ(config_error([&] { read_stacking_inputs(world(), s); }),
            s.test + " has no column 'c' (it is in " + s.data + ")");
  write_csv(dir.file("narrow.csv"), 17, {"a", "b"});
  s.test = dir.file("narrow.csv");
  EXPECT_EQ(config_error([&] { read_stacking_inputs(world(), s); }),
            s.test + " has 2 features, " + s.data + " has 3");
}

TEST(StackingInputs, BadSpecsAreConfigErrors) {
  StackingInputSpec s = spec_for("nowhere.csv");
  s.test_fraction = 1;
  EXPECT_EQ(config_error([&] { read_stacking_inputs(world(), s); }), "--test-fraction must be in [0, 1) (got 1)");
  s.test_fraction = 0.2;
  s.table.target = "";
  EXPECT_EQ(config_error([&] { read_stacking_inputs(world(), s); }), "--target COLUMN is required for CSV data");
}

TEST(TableWriters, CsvAndHdf5ReadBackBitForBit) {
  SharedDir dir;
  SyntheticSpec ss;
  ss.rows = 157;
  ss.features = 8;
  ss.classification = false;
  const Table t = make_synthetic(world(), ss);
  for (const std::string name : {"s.csv", "s.h5"}) {
    write_table(world(), t, dir.file(name));
    TableSpec spec;
    spec.classification = false;
    spec.target = "target";
    const Table back = read_table(world(), dir.file(name), spec);
    EXPECT_EQ(back.features, t.features) << name;
    ASSERT_EQ(back.n(), t.n()) << name;
    EXPECT_EQ(back.first, t.first) << name;
    EXPECT_TRUE(back.X == t.X) << name;
    EXPECT_EQ(back.y, t.y) << name;
  }
}

// Rank 0 opens a finished run file.
struct RunReader {
  explicit RunReader(const std::string& path) : f(h5::open_file(path, false)) {}
  std::string str(const std::string& group, const std::string& attr) {
    return h5::read_attr_string(h5::open_group(f.id(), group).id(), attr);
  }
  std::int64_t integer(const std::string& group, const std::string& attr) {
    return h5::read_attr_int(h5::open_group(f.id(), group).id(), attr);
  }
  h5::Handle f;
};

TEST(StackRun, RunFileReadsBack) {
  SharedDir dir;
  SyntheticSpec ss;
  ss.rows = 300;
  ss.features = 8;
  ss.classes = 3;
  write_table(world(), make_synthetic(world(), ss), dir.file("d.csv"));
  StackingInputSpec in_spec;
  in_spec.data = dir.file("d.csv");
  in_spec.table.target = "target";
  for (const bool blend : {false, true}) {
    in_spec.split_test = !blend;
    const StackingInputs in = read_stacking_inputs(world(), in_spec);
    StackRunSettings s;
    s.blend = blend;
    s.options.learners = {"ridge", "nb"};
    s.options.folds = 3;
    s.options.quiet = true;
    s.out = dir.file(blend ? "blend.h5" : "stack.h5");
    s.option_attrs = {{"data", in_spec.data}};
    world().reset_tally();
    const StackResult res = run_stacking(world(), in, s, Stopwatch());
    const std::int64_t n_oof = world().allreduce_sum(static_cast<std::int64_t>(res.oof.rows()));
    if (world().rank() == 0) {
      RunReader r(s.out);
      EXPECT_EQ(h5::read_attr_int(r.f.id(), "complete"), 1);
      EXPECT_EQ(h5::read_attr_string(r.f.id(), "kind"), blend ? "blend" : "stack");
      EXPECT_EQ(h5::read_attr_string(r.f.id(), "data"), in_spec.data);
      std::vector<hsize_t> dims;
      const std::vector<double> scores = h5::read_array(r.f.id(), "scores/learner", &dims);
      EXPECT_EQ(dims, (std::vector<hsize_t>{2, 6}));
      EXPECT_EQ(r.str("scores", "learners"), "ridge,nb");
      EXPECT_EQ(r.str("scores", "learner_columns"),
                "oof_accuracy,oof_log_loss,test_accuracy,test_log_loss,fit_seconds,predict_seconds");
      EXPECT_EQ(h5::exists(r.f.id(), "scores/fold"), !blend);
      EXPECT_EQ(h5::exists(r.f.id(), "meta/tuning"), blend);
      EXPECT_EQ(r.str("oof", "rows_are"), res.split);
      // Row-sharded datasets hold every rank's rows in global order.
      const std::vector<std::int64_t> rows = h5::read_array_int(r.f.id(), "oof/row", &dims);
      EXPECT_EQ(dims, (std::vector<hsize_t>{static_cast<hsize_t>(n_oof)}));
      EXPECT_TRUE(std::is_sorted(rows.begin(), rows.end()));
      const std::vector<std::int64_t> fold = h5::read_array_int(r.f.id(), "oof/fold", &dims);
      EXPECT_EQ(dims, (std::vector<hsize_t>{static_cast<hsize_t>(n_oof), 1}));
      for (std::int64_t v : fold) EXPECT_TRUE(blend ? v == 1 : v >= 0 && v < 3) << v;
      h5::read_array(r.f.id(), "oof/predictions", &dims);
      EXPECT_EQ(dims, (std::vector<hsize_t>{static_cast<hsize_t>(n_oof), static_cast<hsize_t>(res.oof.cols())}));
      EXPECT_EQ(h5::read_attr_double(h5::open_group(r.f.id(), "final").id(), "test_score"), res.test.accuracy);
      EXPECT_EQ(r.str("final", "metric"), "accuracy");
      const std::int64_t train = r.integer("final", "train_rows"), test = r.integer("final", "test_rows");
      if (!blend) {
        EXPECT_EQ(train, n_oof);
      }
      EXPECT_GT(test, 0);
      EXPECT_LE(train + test, ss.rows);
    }
    world().barrier();
  }
}

}  // namespace
}  // namespace moesim
