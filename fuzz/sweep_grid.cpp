// libFuzzer target: the input is a sweep config, parsed and expanded into its grid as
// `moesim sweep` does. Beyond not crashing, what the runner relies on must hold for every
// grid accepted: it has as many points as its lists multiply to, point ids are unique (each
// names its run file), and a point's preset, the INI text its command parses, reads back as
// exactly the point's values. Errors of the preset read back (Boost's po::error) are findings too.
#include <boost/program_options.hpp>
#include <cstddef>
#include <cstdint>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "sweep/grid.hpp"

namespace po = boost::program_options;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  moesim::fuzz::refused_only_by_config_error([&] {
    const moesim::SweepConfig cfg = moesim::parse_sweep_config(text, "fuzz.sweep.ini");
    const std::vector<moesim::SweepPoint> points = moesim::expand_grid(cfg);
    // The grid is the product of its axes' lengths, a zip group one axis.
    std::size_t expected = 1;
    bool overflow = false;
    std::set<std::string> zipped;
    auto length_of = [&](const std::string& key) {
      for (const auto& [k, values] : cfg.options)
        if (k == key) return values.size();
      return std::size_t{1};
    };
    for (const std::vector<std::string>& z : cfg.zips) {
      if (!z.empty()) overflow |= __builtin_mul_overflow(expected, length_of(z.front()), &expected);
      zipped.insert(z.begin(), z.end());
    }
    for (const auto& [k, values] : cfg.options)
      if (!zipped.count(k)) overflow |= __builtin_mul_overflow(expected, values.size(), &expected);
    MOESIM_FUZZ_CHECK(!overflow && points.size() == expected,
                      points.size() << " points, the lists multiply to " << (overflow ? "more than 2^64" : std::to_string(expected)));
    std::set<std::string> ids;
    for (const moesim::SweepPoint& p : points) {
      MOESIM_FUZZ_CHECK(ids.insert(p.id).second, "two points share the id " << p.id);
      MOESIM_FUZZ_CHECK(p.values.size() == cfg.options.size(), "point " << p.index << " lacks options");
      // Reading presets back is the slow part (a grid of 13824 points took > 10 s): the first
      // 256 points and the last.
      if (p.index >= 256 && p.index + 1 != points.size()) continue;
      // What the point's command reads: Boost's INI grammar, one value per key, unsplit (a
      // bracketed list item such as [ridge,nb] reaches it as ridge,nb).
      std::istringstream preset(moesim::point_preset(p));
      const po::parsed_options back = po::parse_config_file(preset, po::options_description(), true);
      MOESIM_FUZZ_CHECK(back.options.size() == p.values.size(), "point " << p.index << "'s preset has "
                                                                 << back.options.size() << " options");
      for (std::size_t i = 0; i < p.values.size(); ++i) {
        const po::option& o = back.options[i];
        MOESIM_FUZZ_CHECK(o.string_key == p.values[i].first && o.value.size() == 1 && o.value[0] == p.values[i].second,
                          "point " << p.index << "'s preset reads '" << p.values[i].first << " = "
                                   << p.values[i].second << "' back as '" << o.string_key << " = "
                                   << (o.value.empty() ? "" : o.value[0]) << "'");
      }
    }
  });
  return 0;
}
