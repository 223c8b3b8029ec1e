#pragma once
// What the fixed-iteration MPI benchmarks share (bench_moe_mpi, bench_gpu): the MoE shapes
// D,F,E,K,B of the comparison tables, random rows, and the harness that runs every rank the
// same iterations after a barrier and reports the slowest and the fastest rank.
#include <algorithm>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "core/timer.hpp"

namespace moesim {

inline constexpr const char* kDefaultShapes =
    "64,256,8,2,4096;256,1024,8,2,4096;256,1024,64,2,4096;512,2048,16,1,2048;1024,4096,8,2,1024";

struct Shape {
  Index D = 64, F = 256;
  int E = 8, K = 2;
  Index B = 4096;
  std::string name() const {
    std::ostringstream s;
    s << "D" << D << " F" << F << " E" << E << " K" << K << " B" << B;
    return s.str();
  }
};

inline std::vector<Shape> parse_shapes(const std::string& text) {
  std::vector<Shape> out;
  std::stringstream all(text);
  std::string one;
  while (std::getline(all, one, ';')) {
    if (one.empty()) continue;
    Shape s;
    char c1 = 0, c2 = 0, c3 = 0, c4 = 0;
    std::stringstream in(one);
    in >> s.D >> c1 >> s.F >> c2 >> s.E >> c3 >> s.K >> c4 >> s.B;
    if (!in || c1 != ',' || c2 != ',' || c3 != ',' || c4 != ',' || s.D < 1 || s.F < 1 || s.E < 1 || s.K < 1 ||
        s.K > s.E || s.B < 1)
      throw ConfigError("--shapes: '" + one + "' is not D,F,E,K,B with 1 <= K <= E");
    out.push_back(s);
  }
  if (out.empty()) throw ConfigError("--shapes: no shape given");
  return out;
}

inline Mat<float> random_rows(Index n, Index d, std::uint64_t key) {
  Rng rng(key);
  Mat<float> m(n, d);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(rng.normal());
  return m;
}

// One timed figure: the slowest rank's and the fastest rank's mean seconds per iteration.
struct Timing {
  double max_s = 0, min_s = 0;
};

class Harness {
 public:
  Harness(const Communicator& comm, int warmup, int iters) : comm_(comm), warmup_(warmup), iters_(iters) {}

  // COLLECTIVE. Runs `f` warmup + iters times, each after a barrier, timing the iters;
  // `timed_start` runs once before the first timed iteration (to reset counters).
  Timing time(const std::function<void()>& f, const std::function<void()>& timed_start = {}) const {
    double total = 0;
    for (int i = 0; i < warmup_ + iters_; ++i) {
      if (i == warmup_ && timed_start) timed_start();
      comm_.barrier();
      Stopwatch sw;
      f();
      if (i >= warmup_) total += sw.seconds();
    }
    return reduce(total / iters_);
  }
  // COLLECTIVE. A per-rank mean already measured (e.g. an MPI part inside a call).
  Timing reduce(double mean) const {
    Timing t;
    t.max_s = comm_.allreduce_max(mean);
    double neg = -mean;
    comm_.allreduce_max(&neg, 1);
    t.min_s = -neg;
    return t;
  }
  int iters() const { return iters_; }
  int warmup() const { return warmup_; }

  // COLLECTIVE. `base` and `f` one after the other, each after a barrier, warmup + iters
  // times; `f` returns the part of its seconds to compare (e.g. its time inside MPI). Per
  // timed iteration: base's slowest rank, f's slowest rank and the part's fastest rank; the
  // medians of each over the iterations. Paired and by median because on a shared machine one
  // descheduled iteration moves a mean by more than the difference being measured.
  struct Paired {
    Timing base, f;        // medians of the per-iteration slowest (max_s) and fastest (min_s) rank
    Timing part;           // the same for f's part
    double part_over_base = 0;  // median over iterations of (part's fastest rank) / (base's slowest)
  };
  Paired paired(const std::function<void()>& base, const std::function<double()>& f) const {
    std::vector<double> b, t, p;
    for (int i = 0; i < warmup_ + iters_; ++i) {
      comm_.barrier();
      Stopwatch sb;
      base();
      const double bs = sb.seconds();
      comm_.barrier();
      Stopwatch sf;
      const double ps = f();
      const double fs = sf.seconds();
      if (i < warmup_) continue;
      b.push_back(bs);
      t.push_back(fs);
      p.push_back(ps);
    }
    auto over_ranks = [&](const std::vector<double>& v) {
      std::vector<double> hi = v, lo = v;
      comm_.allreduce_max(hi.data(), static_cast<int>(hi.size()));
      comm_.allreduce_min(lo.data(), static_cast<int>(lo.size()));
      return std::pair{hi, lo};
    };
    auto [b_hi, b_lo] = over_ranks(b);
    auto [t_hi, t_lo] = over_ranks(t);
    auto [p_hi, p_lo] = over_ranks(p);
    std::vector<double> ratio(p_lo.size());
    for (std::size_t i = 0; i < ratio.size(); ++i) ratio[i] = b_hi[i] > 0 ? p_lo[i] / b_hi[i] : 0.0;
    Paired r;
    r.base = {median(b_hi), median(b_lo)};
    r.f = {median(t_hi), median(t_lo)};
    r.part = {median(p_hi), median(p_lo)};
    r.part_over_base = median(ratio);
    return r;
  }

  static double median(std::vector<double> v) {
    if (v.empty()) return 0;
    const std::size_t m = v.size() / 2;
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(m), v.end());
    double hi = v[m];
    if (v.size() % 2 == 1) return hi;
    return (hi + *std::max_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(m))) / 2;
  }

 private:
  const Communicator& comm_;
  int warmup_, iters_;
};

}  // namespace moesim
