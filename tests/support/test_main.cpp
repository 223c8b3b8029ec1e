// GoogleTest main for every C++ test binary: MPI for the lifetime of the run,
// results printed by rank 0 only, a failure on any rank fails every rank, and a
// floating-point invalid operation (a NaN made from numbers) stops the test with
// SIGFPE where it happens instead of flowing on into a wrong result.
#include <gtest/gtest.h>

#include <cfenv>
#include <cstring>
#include <memory>

#include "support/test_support.hpp"

namespace moesim::test {
namespace {
std::unique_ptr<Communicator> g_world;
std::string g_reference;
}  // namespace
const Communicator& world() { return *g_world; }
const std::string& reference_path() { return g_reference; }
}  // namespace moesim::test

int main(int argc, char** argv) {
  moesim::MpiEnvironment env(&argc, &argv);
#if defined(__GLIBC__)
  // After MPI_Init: the trap covers the code under test, not MPI's start-up.
  feenableexcept(FE_INVALID);
#endif
  ::testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--reference=", 12) == 0) moesim::test::g_reference = argv[i] + 12;
  int rc = 0;
  {
    moesim::test::g_world = std::make_unique<moesim::Communicator>(MPI_COMM_WORLD);
    if (moesim::test::world().rank() != 0) {
      auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
      delete listeners.Release(listeners.default_result_printer());
    }
    rc = RUN_ALL_TESTS();
    rc = moesim::test::world().allreduce_max(rc);
    moesim::test::g_world.reset();
  }
  return rc;
}
