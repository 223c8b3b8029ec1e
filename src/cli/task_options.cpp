#include "cli/task_options.hpp"

#include <cmath>

#include "core/error.hpp"

namespace moesim::cli {

namespace {
using I = std::int64_t;
}

void add_task_options(po::options_description& d) {
  d.add_options()
      ("data", po::value<std::string>()->default_value(""),
       "lm: text corpus, a file or a directory of text files read in name order "
       "(default: the fortunes corpus, /usr/share/games/fortunes)")
      ("context", po::value<I>()->default_value(16), "lm: C, previous bytes each prediction sees")
      ("embed-dim", po::value<I>()->default_value(16), "lm: De, width of the byte embedding (C * De enter the adapter)")
      ("val-fraction", real(0.1), "lm: last share of the corpus held out for validation")
      ("teacher-experts", po::value<I>()->default_value(4), "teacher: E_t, experts of the teacher MoE")
      ("teacher-top-k", po::value<I>()->default_value(1), "teacher: K_t, experts per token of the teacher")
      ("teacher-hidden", po::value<I>()->default_value(16), "teacher: hidden width of each teacher expert")
      ("teacher-seed", po::value<I>(),
       "teacher: seed of the teacher's weights (default: --data-seed, which also draws the inputs)")
      ("teacher-noise", real(0.01), "teacher: target noise std (regression)")
      ("teacher-router-scale", real(3.0),
       "teacher: std of the teacher's router logits (larger = more decisive routing)");
}

bool task_option_in_effect(const std::string& name, const po::variables_map& vm) {
  const std::string task = vm["task"].as<std::string>();
  if (name == "clusters" || name == "noise-min" || name == "noise-max") return task == "regimes";
  if (name == "input-dim" || name == "problem") return task == "regimes" || task == "teacher";
  if (name == "classes")
    return (task == "regimes" || task == "teacher") && vm["problem"].as<std::string>() == "classification";
  if (name.rfind("teacher-", 0) == 0) return task == "teacher";
  if (name == "data" || name == "context" || name == "embed-dim" || name == "val-fraction") return task == "lm";
  return true;
}

TaskConfig task_config(const po::variables_map& vm, const RegimesConfig& regimes) {
  auto i = [&](const char* k) { return vm[k].as<I>(); };
  auto d = [&](const char* k) { return vm[k].as<double>(); };
  TaskConfig c;
  c.name = vm["task"].as<std::string>();
  c.regimes = regimes;
  if (c.name == "lm") {
    MOESIM_CONFIG_CHECK(i("context") >= 1, "--context must be >= 1 (got " << i("context") << ")");
    MOESIM_CONFIG_CHECK(i("embed-dim") >= 1, "--embed-dim must be >= 1 (got " << i("embed-dim") << ")");
    MOESIM_CONFIG_CHECK(d("val-fraction") > 0 && d("val-fraction") < 1,
                        "--val-fraction must be in (0, 1) (got " << d("val-fraction") << ")");
    c.lm.context = i("context");
    c.lm.val_fraction = d("val-fraction");
    c.lm.seed = regimes.seed;
    c.embed_dim = i("embed-dim");
    c.data = vm["data"].as<std::string>().empty() ? kDefaultCorpus : vm["data"].as<std::string>();
  } else if (c.name == "teacher") {
    for (const char* k : {"teacher-experts", "teacher-top-k", "teacher-hidden"})
      MOESIM_CONFIG_CHECK(i(k) >= 1, "--" << k << " must be >= 1 (got " << i(k) << ")");
    MOESIM_CONFIG_CHECK(i("teacher-top-k") <= i("teacher-experts"),
                        "--teacher-top-k (" << i("teacher-top-k") << ") must not exceed --teacher-experts ("
                                            << i("teacher-experts") << ")");
    MOESIM_CONFIG_CHECK(d("teacher-noise") >= 0 && std::isfinite(d("teacher-noise")),
                        "--teacher-noise must be a finite number >= 0 (got " << d("teacher-noise") << ")");
    MOESIM_CONFIG_CHECK(d("teacher-router-scale") > 0 && std::isfinite(d("teacher-router-scale")),
                        "--teacher-router-scale must be a finite number > 0 (got " << d("teacher-router-scale") << ")");
    c.teacher.d_in = regimes.d_in;
    c.teacher.experts = static_cast<int>(i("teacher-experts"));
    c.teacher.top_k = static_cast<int>(i("teacher-top-k"));
    c.teacher.hidden = i("teacher-hidden");
    c.teacher.classes = regimes.classes;
    c.teacher.noise = d("teacher-noise");
    c.teacher.router_scale = d("teacher-router-scale");
    // The teacher is part of the task: its weights follow --data-seed unless --teacher-seed fixes them.
    c.teacher.teacher_seed = vm.count("teacher-seed") ? static_cast<std::uint64_t>(i("teacher-seed")) : regimes.seed;
    c.teacher.seed = regimes.seed;
  }
  return c;
}

}  // namespace moesim::cli
