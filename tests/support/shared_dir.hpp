#pragma once
// COLLECTIVE. A fresh temporary directory that every rank sees (rank 0 makes it, the
// others learn its name), removed by rank 0 after every rank is done with it.
#include <stdlib.h>

#include <filesystem>
#include <stdexcept>
#include <string>

#include "support/test_support.hpp"

namespace moesim::test {

class SharedDir {
 public:
  SharedDir() {
    if (world().rank() == 0) {
      std::string tmpl = (std::filesystem::temp_directory_path() / "moesim_test_XXXXXX").string();
      if (mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
    }
    world().broadcast(path_, 0);
    if (path_.empty()) throw std::runtime_error("cannot create a temporary directory");
  }
  ~SharedDir() {
    world().barrier();
    if (world().rank() == 0) std::filesystem::remove_all(path_);
  }
  SharedDir(const SharedDir&) = delete;
  SharedDir& operator=(const SharedDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace moesim::test
