#include "data/stacking_inputs.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "core/rng.hpp"

namespace moesim {

bool is_test_row(std::uint64_t seed, std::int64_t row, double test_fraction) {
  return Rng(seed, Stream::kTest, 0x7E57, static_cast<std::uint64_t>(row)).uniform() < test_fraction;
}

void match_columns(Table& test, const Table& train, const std::string& test_name, const std::string& data_name) {
  MOESIM_CONFIG_CHECK(test.p() == train.p(), test_name << " has " << test.p() << " features, " << data_name
                                                        << " has " << train.p());
  if (test.features == train.features) return;
  std::vector<Index> from;
  for (const std::string& f : train.features) {
    auto it = std::find(test.features.begin(), test.features.end(), f);
    MOESIM_CONFIG_CHECK(it != test.features.end(),
                        test_name << " has no column '" << f << "' (it is in " << data_name << ")");
    from.push_back(static_cast<Index>(it - test.features.begin()));
  }
  Mat<double> X(test.n(), train.p());
  for (Index j = 0; j < train.p(); ++j) X.col(j) = test.X.col(from[static_cast<std::size_t>(j)]);
  test.X = std::move(X);
  test.features = train.features;
}

StackingInputs read_stacking_inputs(const Communicator& comm, const StackingInputSpec& spec) {
  const double tf = spec.test_fraction;
  MOESIM_CONFIG_CHECK(tf >= 0 && tf < 1, "--test-fraction must be in [0, 1) (got " << tf << ")");
  const std::string& data = spec.data;
  const bool is_h5 = data.size() > 3 && (data.ends_with(".h5") || data.ends_with(".hdf5"));
  MOESIM_CONFIG_CHECK(is_h5 || !spec.table.target.empty(), "--target COLUMN is required for CSV data");

  StackingInputs in;
  in.classification = spec.table.classification;
  Table all = read_table(comm, data, spec.table);
  if (!spec.test.empty()) {
    TableSpec ts = spec.table;
    ts.classes = all.classes;
    in.test = read_table(comm, spec.test, ts);
    match_columns(in.test, all, spec.test, data);
  }
  std::vector<char> is_test(static_cast<std::size_t>(all.n()), 0);
  if (spec.test.empty() && spec.split_test)
    for (Index i = 0; i < all.n(); ++i) is_test[static_cast<std::size_t>(i)] = is_test_row(spec.seed, all.first + i, tf);
  std::vector<char> keep(is_test.size());
  for (std::size_t i = 0; i < keep.size(); ++i) keep[i] = !is_test[i];
  for (Index i = 0; i < all.n(); ++i)
    if (keep[static_cast<std::size_t>(i)]) in.train_rows.push_back(all.first + i);
  if (spec.test.empty()) {
    in.test = select_rows(all, is_test);
    in.train = select_rows(all, keep);
  } else {
    in.train = std::move(all);
  }
  return in;
}

}  // namespace moesim
