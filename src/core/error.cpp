#include "core/error.hpp"

namespace moesim {

void throw_runtime(const char* what, const char* expr, const char* file, int line,
                   const std::string& detail) {
  std::ostringstream os;
  os << what << ": " << expr << " at " << file << ":" << line;
  if (!detail.empty()) os << ": " << detail;
  throw RuntimeError(os.str());
}

}  // namespace moesim
