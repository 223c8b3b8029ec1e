// moesim: subcommand dispatch and the one place errors become exit codes.
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "cli/options.hpp"
#include "core/build_info.hpp"
#include "core/heap.hpp"
#include "io/hdf5.hpp"

namespace {

const char* kUsage =
    "usage: [mpirun -np P] moesim <command> [options]\n"
    "\n"
    "commands:\n"
    "  moe    train an expert-parallel mixture of experts and log it to HDF5\n"
    "  stack  K-fold stacking of base learners over sharded rows, logged to HDF5\n"
    "  blend  blending (train / validation / hold-out / test splits), logged to HDF5\n"
    "  sweep  expand a grid of runs, run it (or one point), skip finished points\n"
    "  merge  merge the experts of a trained run (checkpoint) pairwise, loss before and after\n"
    "  synth  write a synthetic classification or regression table (HDF5 or CSV)\n"
    "  info   print version, revision, compiler and libraries\n"
    "\n"
    "Run 'moesim <command> --help' for the options of a command, 'moesim --version' for the version.\n";

const std::vector<std::string> kCommands = {"moe", "stack", "blend", "sweep", "merge", "synth", "info", "version"};

// "moesim 0.1.0 (git 789fb8f51ffe)": the project's version and, where the build recorded
// it, the source revision (`moesim info` has the rest).
std::string version_line() {
  const std::string revision = moesim::build::kGitRevision;
  return std::string("moesim ") + moesim::build::kVersion +
         (revision.empty() || revision == "unknown" ? "" : " (git " + revision + ")") + "\n";
}

}  // namespace

int main(int argc, char** argv) {
  moesim::keep_freed_memory();
  // HDF5 starts before MPI, so that it shuts down at exit, not inside MPI_Finalize; and
  // it is not shut down at all: every file is closed by its owner, and a file whose flush
  // failed (a full disk) cannot be closed: HDF5's shutdown crashes on it.
  moesim::h5::start_without_shutdown();
  moesim::MpiEnvironment env(&argc, &argv);
  // Every HDF5 call is checked and its error carries HDF5's innermost reason: its own
  // stack dumps (a hundred lines for one corrupt file) would bury that one line.
  moesim::h5::silence_default_error_printing();
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const std::string command = argc > 1 ? argv[1] : "";
  const std::vector<std::string> args(argv + (argc > 1 ? 2 : 1), argv + argc);
  try {
    moesim::Communicator comm(MPI_COMM_WORLD);
    if (command == "moe") return moesim::cli::run_moe(comm, args);
    if (command == "stack") return moesim::cli::run_stack(comm, args, false);
    if (command == "blend") return moesim::cli::run_stack(comm, args, true);
    if (command == "synth") return moesim::cli::run_synth(comm, args);
    if (command == "sweep") return moesim::cli::run_sweep(comm, args);
    if (command == "merge") return moesim::cli::run_merge(comm, args);
    if (command == "info") return moesim::cli::run_info(comm, args);
    if (command == "--help" || command == "-h" || command == "help") {
      if (rank == 0) std::fputs(kUsage, stdout);
      return 0;
    }
    if (command == "--version" || command == "version") {
      if (rank == 0) std::fputs(version_line().c_str(), stdout);
      return 0;
    }
    if (command.empty()) throw moesim::ConfigError("no command given");
    throw moesim::ConfigError("unknown command '" + command + "'" +
                              moesim::cli::did_you_mean(command, kCommands));
  } catch (const moesim::ConfigError& e) {
    // Every rank reached the same verdict; one line from rank 0, clean exit everywhere.
    if (rank == 0) {
      std::fprintf(stderr, "moesim%s%s: error: %s\n", command.empty() ? "" : " ",
                   command.c_str(), e.what());
      if (std::string(e.what()).find("command") != std::string::npos) std::fputs(kUsage, stderr);
    }
    return 2;
  } catch (const std::exception& e) {
    // Possibly local to this rank while others wait in a collective: abort them all.
    std::fprintf(stderr, "moesim %s: error on rank %d: %s\n", command.c_str(), rank, e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}
