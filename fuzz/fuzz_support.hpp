#pragma once
// What the fuzz targets share: the one verdict bad input may end in (ConfigError, one
// clear line), properties checked on what a parser accepted, and a file for readers that
// take a path.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>

#include "core/error.hpp"

// A property of accepted input that does not hold: a finding, reported like a crash.
#define MOESIM_FUZZ_CHECK(cond, msg)                                              \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::ostringstream moesim_fuzz_os_;                                         \
      moesim_fuzz_os_ << msg;                                                     \
      std::fprintf(stderr, "fuzz check failed: %s: %s\n", #cond, moesim_fuzz_os_.str().c_str()); \
      std::abort();                                                               \
    }                                                                             \
  } while (0)

namespace moesim::fuzz {

// Runs `f`; ConfigError is the documented answer to bad input. Any other exception
// escapes, and an exception escaping the target is a finding (libFuzzer: deadly signal).
template <class F>
void refused_only_by_config_error(F&& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    MOESIM_FUZZ_CHECK(!what.empty(), "an empty error message");
  }
}

// One temporary file per process, rewritten with every input and removed at exit.
class InputFile {
 public:
  InputFile() {
    path_ = (std::filesystem::temp_directory_path() / "moesim_fuzz_XXXXXX").string();
    fd_ = mkstemp(path_.data());
    if (fd_ < 0) {
      std::perror("moesim fuzz: mkstemp");
      std::abort();
    }
  }
  ~InputFile() {
    close(fd_);
    unlink(path_.c_str());
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  const std::string& write(const std::uint8_t* data, std::size_t size) {
    if (ftruncate(fd_, 0) != 0 || (size > 0 && pwrite(fd_, data, size, 0) != static_cast<ssize_t>(size))) {
      std::perror("moesim fuzz: writing the input file");
      std::abort();
    }
    return path_;
  }

 private:
  std::string path_;
  int fd_ = -1;
};

inline const std::string& as_file(const std::uint8_t* data, std::size_t size) {
  static InputFile file;
  return file.write(data, size);
}

}  // namespace moesim::fuzz
