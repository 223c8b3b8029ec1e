#pragma once
// What the fixed-iteration MPI benchmarks share (bench_moe_mpi, bench_gpu): the MoE shapes
// D,F,E,K,B of the comparison tables, random rows, and the harness that runs every rank the
// same iterations after a barrier and reports the slowest and the fastest rank.
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

 private:
  const Communicator& comm_;
  int warmup_, iters_;
};

}  // namespace moesim
