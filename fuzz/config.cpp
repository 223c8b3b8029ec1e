// libFuzzer target: the input is a --config file, checked by the same parse and option
// checks `moesim moe`, `stack` and `blend` make before they run (those a sweep makes of
// each point): Boost's INI grammar against each command's option descriptions, values
// converted and range-checked. The file is read by path, as the commands read it.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using moesim::fuzz::refused_only_by_config_error;
  const std::vector<std::string> args{"--config", moesim::fuzz::as_file(data, size)};
  for (int ranks : {1, 4})  // some checks depend on the rank count (expert groups)
    refused_only_by_config_error([&] { moesim::cli::check_moe(args, "", ranks); });
  for (bool blend : {false, true})
    refused_only_by_config_error([&] { moesim::cli::check_stack(args, blend, ""); });
  return 0;
}
