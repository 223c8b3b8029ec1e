#pragma once
// One error header for the project: typed exceptions and the check macros that
// every MPI and HDF5 call goes through (expression, file, line and library text).
#include <sstream>
#include <stdexcept>
#include <string>

namespace moesim {

// Bad input from the user. Thrown identically on every rank (inputs are validated
// collectively), so the program can exit cleanly everywhere instead of aborting.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A failure inside a library or the runtime; may be local to one rank.
class RuntimeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void throw_runtime(const char* what, const char* expr, const char* file, int line,
                                const std::string& detail);

}  // namespace moesim

#define MOESIM_REQUIRE(cond, msg)                                                     \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::ostringstream moesim_os_;                                                  \
      moesim_os_ << msg;                                                              \
      ::moesim::throw_runtime("invariant violated", #cond, __FILE__, __LINE__,        \
                              moesim_os_.str());                                      \
    }                                                                                 \
  } while (0)

#define MOESIM_CONFIG_CHECK(cond, msg)            \
  do {                                            \
    if (!(cond)) {                                \
      std::ostringstream moesim_os_;              \
      moesim_os_ << msg;                          \
      throw ::moesim::ConfigError(moesim_os_.str()); \
    }                                             \
  } while (0)
