// `moesim synth`: options of a synthetic table (data/synthetic, sklearn
// make_classification-like) written as HDF5 or CSV (data/writers).
#include <cmath>
#include <cstdio>

#include "cli/commands.hpp"
#include "cli/options.hpp"
#include "data/synthetic.hpp"
#include "data/writers.hpp"

namespace moesim::cli {

namespace {
using I = std::int64_t;
}  // namespace

int run_synth(const Communicator& comm, const std::vector<std::string>& args) {
  po::options_description d("Synthetic table");
  d.add_options()
      ("kind", po::value<std::string>()->default_value("classification"), "classification | regression")
      ("rows", po::value<I>()->default_value(10000), "rows")
      ("features", po::value<I>()->default_value(20), "features in all")
      ("informative", po::value<I>()->default_value(5), "informative features (around cluster centres)")
      ("redundant", po::value<I>()->default_value(2), "redundant features (linear mixes of the informative ones)")
      ("classes", po::value<I>()->default_value(2), "classes")
      ("clusters-per-class", po::value<I>()->default_value(2), "clusters per class")
      ("class-sep", real(1.0), "scale of the distance between cluster centres")
      ("label-noise", real(0.01), "classification: share of random labels")
      ("noise", real(0.1), "regression: target noise std")
      ("seed", po::value<I>()->default_value(1), "seed")
      ("out", po::value<std::string>()->default_value("synthetic.h5"), "output: .h5 (datasets X, y) or .csv (header, target column 'target')");
  const Parsed p = parse("synth", args, d);
  if (p.help) {
    if (comm.rank() == 0) print_help("synth", "Write a synthetic table for tests and benchmarks.", d);
    return 0;
  }
  const po::variables_map& vm = p.vm;
  SyntheticSpec s;
  const std::string kind = vm["kind"].as<std::string>();
  MOESIM_CONFIG_CHECK(kind == "classification" || kind == "regression", "--kind must be classification or regression");
  s.classification = kind == "classification";
  s.rows = vm["rows"].as<I>();
  s.features = int_option(vm, "features");
  s.informative = int_option(vm, "informative");
  s.redundant = int_option(vm, "redundant");
  s.classes = int_option(vm, "classes");
  s.clusters_per_class = int_option(vm, "clusters-per-class");
  s.class_sep = vm["class-sep"].as<double>();
  s.label_noise = vm["label-noise"].as<double>();
  s.noise = vm["noise"].as<double>();
  s.seed = static_cast<std::uint64_t>(vm["seed"].as<I>());
  MOESIM_CONFIG_CHECK(s.redundant >= 0, "--redundant must be >= 0");
  // A NaN or infinite scale would write a table of NaN cells that looks complete.
  for (const char* k : {"class-sep", "label-noise", "noise"})
    MOESIM_CONFIG_CHECK(std::isfinite(vm[k].as<double>()), "--" << k << " must be a finite number (got " << vm[k].as<double>() << ")");
  const Table t = make_synthetic(comm, s);
  const std::string out = vm["out"].as<std::string>();
  write_table(comm, t, out);
  if (comm.rank() == 0) std::printf("wrote %lld rows x %d features to %s\n", static_cast<long long>(s.rows), s.features, out.c_str());
  return 0;
}

}  // namespace moesim::cli
