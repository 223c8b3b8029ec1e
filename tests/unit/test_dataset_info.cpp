// Dataset tables: lookups (exact names and `<...>` families), and a run file that describes
// every dataset it creates from its tables and refuses one they do not name, or name otherwise.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "core/error.hpp"
#include "io/dataset_info.hpp"
#include "io/run_file.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

constexpr DatasetInfo kTable[] = {
    {"g/counts", "layer x expert", "int64", "tokens", "tokens per layer and expert"},
    {"g/values", "row", "float64", "s", "seconds"},
    {"g/vector", "row", "float64", "s", "seconds"},
    {"g/ints", "row", "int64", "1", "integers"},
    {"points/options/<option>", "point", "int64", "", "an option"},
};

TEST(DatasetInfo, FindsExactNamesThenFamilies) {
  EXPECT_EQ(find_dataset(kTable, "g/counts"), &kTable[0]);
  EXPECT_EQ(find_dataset(kTable, "points/options/lr"), &kTable[4]);
  EXPECT_EQ(find_dataset(kTable, "points/options/"), nullptr);      // a family member has a name
  EXPECT_EQ(find_dataset(kTable, "points/options/a/b"), nullptr);   // in that group, not below
  EXPECT_EQ(find_dataset(kTable, "g/count"), nullptr);
  EXPECT_EQ(axis_names("layer x expert"), (std::vector<std::string>{"layer", "expert"}));
  EXPECT_EQ(axis_names("row"), (std::vector<std::string>{"row"}));
  EXPECT_TRUE(axis_names("").empty());
  const std::string md = datasets_markdown(kTable);
  EXPECT_NE(md.find("| `g/counts` | layer x expert | int64 | tokens | tokens per layer and expert |"),
            std::string::npos);
  EXPECT_NE(md.find("| `points/options/<option>` | point | int64 | - | an option |"), std::string::npos);
}

TEST(DatasetInfo, RunFileDescribesWhatItsTableNamesAndRefusesTheRest) {
  const Communicator& comm = test::world();
  if (comm.size() != 1) GTEST_SKIP() << "one rank";
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("moesim_unit_schema_" + std::to_string(::getpid()) + ".h5")).string();
  {
    std::unique_ptr<RunFile> out = RunFile::create(comm, path, "test");
    out->describe_with(kTable);
    out->describe_with(kTable);  // once
    const std::int64_t counts[6] = {1, 2, 3, 4, 5, 6};
    const double values[2] = {0.5, 1.5};
    out->write_array("g/counts", {2, 3}, counts);
    out->write_array("g/values", {2}, values);
    EXPECT_THROW(out->write_array("g/unnamed", {2}, values), RuntimeError);
    EXPECT_THROW(out->write_array("g/vector", {1, 2}, values), RuntimeError);  // two axes, one named
    EXPECT_THROW(out->write_array("g/ints", {2}, values), RuntimeError);       // float64, table says int64
    EXPECT_FALSE(h5::exists(out->file_id(), "g/vector") || h5::exists(out->file_id(), "g/ints"));
    out->mark_complete();
  }
  h5::Handle f = h5::open_file(path, false);
  h5::Handle g = h5::open_group(f.id(), "g");
  h5::Handle d(MOESIM_H5_CHECK(H5Dopen2(g.id(), "counts", H5P_DEFAULT)), H5Dclose);
  EXPECT_EQ(h5::read_attr_string(d.id(), "units"), "tokens");
  EXPECT_EQ(h5::read_attr_string(d.id(), "description"), "tokens per layer and expert");
  EXPECT_GT(H5Aexists(d.id(), "axes"), 0);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace moesim
