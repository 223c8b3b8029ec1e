// Comma-separated lists (core/strings.hpp): option values and run-file attributes.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "core/strings.hpp"

namespace moesim {
namespace {

TEST(Strings, SplitListDropsEmptyItemsAndTrimsNothing) {
  EXPECT_EQ(split_list("ridge,nb"), (std::vector<std::string>{"ridge", "nb"}));
  EXPECT_EQ(split_list(",a,,b,"), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(split_list(" a"), (std::vector<std::string>{" a"}));
  EXPECT_TRUE(split_list("").empty());
}

TEST(Strings, JoinListInvertsSplitList) {
  EXPECT_EQ(join_list({"a", "b", "c"}), "a,b,c");
  EXPECT_EQ(join_list({}), "");
  EXPECT_EQ(join_list(split_list("x,y")), "x,y");
}

TEST(Strings, NumberListParsesOrNamesTheBadItem) {
  EXPECT_EQ(parse_number_list("1,2.5,-3e1", "--bin-edges"), (std::vector<double>{1, 2.5, -30}));
  EXPECT_EQ(parse_number_list("4 ", "--x"), (std::vector<double>{4}));
  EXPECT_TRUE(parse_number_list("", "--x").empty());
  for (const auto& [text, item] : std::vector<std::pair<std::string, std::string>>{
           {"1,abc", "abc"}, {"1,,2", ""}, {"2x", "2x"}, {"1,2 3", "2 3"}}) {
    try {
      parse_number_list(text, "--bin-edges");
      ADD_FAILURE() << text << ": no ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_EQ(std::string(e.what()), "--bin-edges: '" + item + "' is not a number") << text;
    }
  }
}

}  // namespace
}  // namespace moesim
