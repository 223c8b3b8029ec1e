// `moesim merge`: merge the experts of a trained run's checkpoint down to E2 per MoE layer
// (train/merge_run), the validation loss before and after, logged to one HDF5 file.
#include <cstdint>

#include "cli/commands.hpp"
#include "cli/moe_options.hpp"
#include "train/merge_run.hpp"

namespace moesim::cli {

using I = std::int64_t;

int run_merge(const Communicator& comm, const std::vector<std::string>& args) {
  po::options_description d("Merge (E experts per MoE layer -> E2)");
  d.add_options()
      ("run", po::value<std::string>(), "the trained run: its checkpoint file, or its run file (whose `checkpoint` attribute names the checkpoint)")
      ("experts", po::value<I>(), "E2: experts per MoE layer after merging, E/2 <= E2 < E (E counts fine-grained experts: --experts x --granularity of the run); the merged layers split over the ranks as any run (--ep-size of the run, else gcd(E2, P))")
      ("method", po::value<std::string>()->default_value("average"), "average (mean of the two weight tensors) | slerp (spherical interpolation at t = 0.5, per tensor)")
      ("pair-by", po::value<std::string>()->default_value("weights"),
       "weights (cosine of the flattened expert weights) | routing (cosine of the experts' router-probability columns over the validation tokens)")
      ("val-tokens", po::value<I>()->default_value(0), "validation tokens (0 = as many as the run used)")
      ("out", po::value<std::string>()->default_value("merge_run.h5"), "run file (HDF5) to write")
      ("quiet", po::bool_switch()->default_value(false), "no summary line");
  const Parsed p = parse("merge", args, d);
  if (p.help) {
    if (comm.rank() == 0)
      print_help("merge --run FILE --experts E2 --method average|slerp --out FILE",
                 "Merge the experts of a trained run's checkpoint pairwise down to E2 per MoE layer and report the\n"
                 "validation loss before and after, on the same validation tokens.",
                 d);
    return 0;
  }
  const po::variables_map& vm = p.vm;
  MOESIM_CONFIG_CHECK(vm.count("run"), "--run FILE is required (a checkpoint or a run file with one)");
  MOESIM_CONFIG_CHECK(vm.count("experts"), "--experts E2 is required");
  MergeConfig m;
  m.run = vm["run"].as<std::string>();
  m.out = vm["out"].as<std::string>();
  const I E2 = vm["experts"].as<I>(), val_tokens = vm["val-tokens"].as<I>();
  m.quiet = vm["quiet"].as<bool>();
  const std::string method = vm["method"].as<std::string>(), pair_by = vm["pair-by"].as<std::string>();
  MOESIM_CONFIG_CHECK(method == "average" || method == "slerp", "--method must be average or slerp (got '" << method << "')");
  MOESIM_CONFIG_CHECK(pair_by == "weights" || pair_by == "routing", "--pair-by must be weights or routing (got '" << pair_by << "')");
  m.method = method == "slerp" ? MergeMethod::kSlerp : MergeMethod::kAverage;
  m.by_routing = pair_by == "routing";
  MOESIM_CONFIG_CHECK(E2 >= 1, "--experts must be >= 1 (got " << E2 << ")");
  MOESIM_CONFIG_CHECK(val_tokens >= 0, "--val-tokens must be >= 0 (got " << val_tokens << ")");
  MOESIM_CONFIG_CHECK(!m.out.empty(), "--out must name a file");
  m.experts = static_cast<int>(E2);
  m.options = options_as_attrs(vm);

  // The source run is rebuilt from the options its checkpoint stores, as `moesim moe` built it.
  const std::string ckpt = resolve_checkpoint(comm, m.run);
  const CheckpointInfo info = CheckpointReader(comm, ckpt).info();
  std::vector<std::string> overrides;
  if (val_tokens > 0) overrides = {"--val-tokens", std::to_string(val_tokens)};
  return merge_run(comm, m, ckpt, info, moe_run_config(info.options, overrides, comm.size()));
}

}  // namespace moesim::cli
