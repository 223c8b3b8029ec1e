#pragma once
// Facts fixed at build time (generated values come from build_info.cpp.in).
namespace moesim::build {

extern const char* const kVersion;
extern const char* const kGitRevision;
extern const char* const kBuildType;
extern const bool kCudaBuilt;
extern const bool kNcclBuilt;
const char* compiler();

}  // namespace moesim::build
