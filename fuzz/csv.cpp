// libFuzzer target: the CSV reader (data/readers), on one rank of MPI_COMM_SELF. The first
// byte of the input chooses the TableSpec (bit 0: classification, bit 1: weight column "w",
// bit 2: group column "g", bit 3: the classes are given as {"0", "1"}), the target column
// is "y", and the rest is the file. Seeds start with a digit: '0' regression, '1'
// classification, '7' classification with weights and groups. A table that is read must
// be whole: every cell finite, weights >= 0, class indices in range.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "data/readers.hpp"
#include "fuzz_support.hpp"

namespace {

const moesim::Communicator& self() {
  static moesim::MpiEnvironment mpi(nullptr, nullptr);  // MPI_Init once, finalised at exit
  static moesim::Communicator comm(MPI_COMM_SELF);      // destroyed first: constructed last
  return comm;
}

void check_table(const moesim::Table& t, const moesim::TableSpec& spec) {
  MOESIM_FUZZ_CHECK(t.rows_global == t.n() && t.first == 0, "rows " << t.rows_global << " / " << t.n());
  MOESIM_FUZZ_CHECK(t.p() == static_cast<moesim::Index>(t.features.size()) && t.p() > 0, "columns");
  MOESIM_FUZZ_CHECK(t.y.size() == static_cast<std::size_t>(t.n()) && t.w.size() == t.y.size(), "sizes");
  MOESIM_FUZZ_CHECK(spec.group_column.empty() ? t.group.empty() : t.group.size() == t.y.size(), "groups");
  MOESIM_FUZZ_CHECK(t.X.allFinite(), "a feature cell is not finite");
  for (std::size_t i = 0; i < t.y.size(); ++i) {
    MOESIM_FUZZ_CHECK(std::isfinite(t.y[i]), "target " << i << " is not finite");
    MOESIM_FUZZ_CHECK(std::isfinite(t.w[i]) && t.w[i] >= 0, "weight " << i << " is " << t.w[i]);
    if (spec.classification)
      MOESIM_FUZZ_CHECK(t.y[i] >= 0 && t.y[i] < t.num_classes() && t.y[i] == std::floor(t.y[i]),
                        "class index " << t.y[i] << " of " << t.num_classes());
  }
  if (spec.classification) MOESIM_FUZZ_CHECK(t.num_classes() >= 2, "fewer than 2 classes");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  moesim::TableSpec spec;
  spec.target = "y";
  spec.classification = (data[0] & 1) != 0;
  if (data[0] & 2) spec.weight_column = "w";
  if (data[0] & 4) spec.group_column = "g";
  if (data[0] & 8) spec.classes = {"0", "1"};
  const std::string& path = moesim::fuzz::as_file(data + 1, size - 1);
  moesim::fuzz::refused_only_by_config_error([&] { check_table(moesim::read_csv(self(), path, spec), spec); });
  return 0;
}
