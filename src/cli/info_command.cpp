// `moesim info`: what this binary was built with and runs on.
#include <hdf5.h>

#include <Eigen/Core>
#include <boost/version.hpp>
#include <cstdio>
#include <string>

#include "cli/commands.hpp"
#include "cli/options.hpp"
#include "core/blas.hpp"
#include "core/build_info.hpp"
#include "train/step_metrics.hpp"

namespace moesim::cli {

int run_info(const Communicator& comm, const std::vector<std::string>& args) {
  po::options_description desc("Info");
  desc.add_options()
      ("metrics", po::bool_switch()->default_value(false),
       "print the table of the per-step datasets a moe run writes under metrics/ (markdown) and exit");
  const Parsed p = parse("info", args, desc);
  if (comm.rank() != 0) return 0;
  if (p.help) {
    print_help("info", "Print version, revision, compiler and the libraries this build uses.", desc);
    return 0;
  }
  if (p.vm["metrics"].as<bool>()) {
    std::fputs(step_metrics_markdown().c_str(), stdout);
    std::fflush(stdout);
    return 0;
  }
  char mpi_lib[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
  int len = 0, mpi_major = 0, mpi_minor = 0;
  MOESIM_MPI_CHECK(MPI_Get_library_version(mpi_lib, &len));
  MOESIM_MPI_CHECK(MPI_Get_version(&mpi_major, &mpi_minor));
  std::string mpi_first_line(mpi_lib, static_cast<std::size_t>(len));
  mpi_first_line = mpi_first_line.substr(0, mpi_first_line.find_first_of("\n,"));
  unsigned h5maj = 0, h5min = 0, h5rel = 0;
  H5get_libversion(&h5maj, &h5min, &h5rel);
#ifdef H5_HAVE_PARALLEL
  const char* h5par = "parallel";
#else
  const char* h5par = "serial";
#endif
  std::printf("moesim %s\n", build::kVersion);
  std::printf("  git revision   %s\n", build::kGitRevision);
  std::printf("  build type     %s\n", build::kBuildType);
  std::printf("  compiler       %s\n", build::compiler());
  std::printf("  MPI            %s (MPI %d.%d), %d ranks in this run\n", mpi_first_line.c_str(),
              mpi_major, mpi_minor, comm.size());
  std::printf("  HDF5           %u.%u.%u (%s)\n", h5maj, h5min, h5rel, h5par);
  std::printf("  BLAS           %s\n", blas_description().c_str());
  std::printf("  Eigen          %d.%d.%d\n", EIGEN_WORLD_VERSION, EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION);
  std::printf("  Boost          %d.%d.%d\n", BOOST_VERSION / 100000, BOOST_VERSION / 100 % 1000,
              BOOST_VERSION % 100);
  std::printf("  CUDA           %s\n", build::kCudaBuilt ? "built" : "not built");
  std::printf("  NCCL           %s\n", build::kNcclBuilt ? "built" : "not built");
  std::fflush(stdout);
  return 0;
}

}  // namespace moesim::cli
