#pragma once
// What each dataset of a file holds, in one table per file kind: the writer describes every
// dataset it creates from its table (attributes `units`, `description`, `axes`), refuses one
// the table lacks, and `moesim info --schema` prints the same tables for docs/run-file.md.
#include <hdf5.h>

#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moesim {

struct DatasetInfo {
  std::string_view path;         // "group/name"; `<...>` in a name stands for a family
  std::string_view axes;         // one name per axis, " x " between: "moe_layer x expert"
  std::string_view type;         // int64 | float64 | string | bool
  std::string_view unit;         // "1" for dimensionless numbers, "" for text
  std::string_view description;  // one line
};

// "moe_layer x expert" -> {"moe_layer", "expert"}.
std::vector<std::string> axis_names(std::string_view axes);

// The entry for `path`: an exact match, else a family `<...>` whose fixed parts match.
// nullptr when there is none.
const DatasetInfo* find_dataset(std::span<const DatasetInfo> table, std::string_view path);

// Writes the entry's `units`, `description` (or `description`, when given) and `axes` onto
// dataset `name` in `loc`.
void describe_dataset(hid_t loc, const std::string& name, const DatasetInfo& info, const std::string& description = "");

// One markdown table: | dataset | axes | type | unit | description |.
std::string datasets_markdown(std::span<const DatasetInfo> table);

}  // namespace moesim
