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
#include "device/runtime.hpp"
#include "binned/binned_run.hpp"
#include "stacking/stack_run.hpp"
#include "sweep/summary.hpp"
#include "train/merge_run.hpp"
#include "train/step_metrics.hpp"

namespace moesim::cli {

int run_info(const Communicator& comm, const std::vector<std::string>& args) {
  po::options_description desc("Info");
  desc.add_options()
      ("metrics", po::bool_switch()->default_value(false),
       "print the table of the per-step datasets a moe run writes under metrics/ (markdown) and exit")
      ("schema", po::bool_switch()->default_value(false),
       "print the tables of every other dataset the run files and sweep.h5 hold (markdown) and exit");
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
  if (p.vm["schema"].as<bool>()) {
    // The writers' own tables: each dataset gets these units, descriptions and axes as attributes.
    const struct {
      const char* title;
      std::span<const DatasetInfo> table;
    } kinds[] = {
        {"`kind = moe` (besides `metrics/*`: `moesim info --metrics`)", moe_run_datasets()},
        {"`kind = merge`", merge_run_datasets()},
        {"`kind = stack` and `kind = blend`", stack_run_datasets()},
        {"`kind = binned` (`moe --task binned`)", binned_run_datasets()},
        {"`sweep.h5`", sweep_summary_datasets()},
    };
    std::string out;
    for (const auto& k : kinds) {
      out += out.empty() ? "" : "\n";
      out += std::string("### ") + k.title + "\n\n" + datasets_markdown(k.table);
    }
    std::fputs(out.c_str(), stdout);
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
  const device::Versions gpu = device::versions();
  if (gpu.built) {
    std::printf("  CUDA           built, runtime %s, driver %s\n", device::cuda_version_text(gpu.runtime).c_str(),
                gpu.driver > 0 ? device::cuda_version_text(gpu.driver).c_str() : "none (no driver answers)");
    std::printf("  NCCL           built, %s\n", device::nccl_version_text(gpu.nccl).c_str());
    if (gpu.none_why.empty())
      std::printf("  GPUs           %d (%s)\n", gpu.devices, gpu.first_name.c_str());
    else
      std::printf("  GPUs           none: %s\n", gpu.none_why.c_str());
  } else {
    std::printf("  CUDA           not built\n");
    std::printf("  NCCL           not built\n");
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace moesim::cli
