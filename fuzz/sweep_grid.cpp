// libFuzzer target: the input is a sweep config, parsed and expanded into its grid as
// `moesim sweep` does. Beyond not crashing, what the runner relies on must hold for every
// grid accepted: point ids are unique (each names its run file), and a point's preset, the
// INI text its command parses, reads back as exactly the point's values.
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "sweep/grid.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  moesim::fuzz::refused_only_by_config_error([&] {
    const moesim::SweepConfig cfg = moesim::parse_sweep_config(text, "fuzz.sweep.ini");
    const std::vector<moesim::SweepPoint> points = moesim::expand_grid(cfg);
    std::set<std::string> ids;
    for (const moesim::SweepPoint& p : points) {
      MOESIM_FUZZ_CHECK(ids.insert(p.id).second, "two points share the id " << p.id);
      MOESIM_FUZZ_CHECK(p.values.size() == cfg.options.size(), "point " << p.index << " lacks options");
      const moesim::SweepConfig back = moesim::parse_sweep_config(moesim::point_preset(p), "preset");
      MOESIM_FUZZ_CHECK(back.options.size() == p.values.size(), "point " << p.index << "'s preset has "
                                                                 << back.options.size() << " options");
      for (std::size_t i = 0; i < p.values.size(); ++i)
        MOESIM_FUZZ_CHECK(back.options[i].first == p.values[i].first &&
                              back.options[i].second == std::vector<std::string>{p.values[i].second},
                          "point " << p.index << "'s preset reads '" << p.values[i].first << "' back differently");
    }
  });
  return 0;
}
