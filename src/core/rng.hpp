#pragma once
// Counter-based randomness: every random quantity is a pure function of
// (seed, stream, a, b), e.g. (seed, TRAIN, step, global token index). Any rank can
// draw exactly the numbers it needs, so results do not depend on the rank count.
#include <cmath>
#include <cstdint>
#include <numbers>

namespace moesim {

enum class Stream : std::uint64_t {
  kTaskParams = 1,
  kTrain = 2,
  kValidation = 3,
  kReplicatedInit = 4,
  kExpertInit = 5,
  kTest = 6,
  kLearner = 7,
  kRouterNoise = 8,
  kRouterHash = 9,
  kRouterJitter = 10,
};

constexpr std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

constexpr std::uint64_t derive_key(std::uint64_t seed, Stream s, std::uint64_t a = 0,
                                   std::uint64_t b = 0) {
  std::uint64_t k = splitmix64(seed ^ 0x6D6F6573696D0000ULL);
  k = splitmix64(k ^ static_cast<std::uint64_t>(s));
  k = splitmix64(k ^ a);
  return splitmix64(k ^ (b * 0xD1B54A32D192ED03ULL));
}

// Small sequential generator (splitmix64 stream) started from a derived key.
class Rng {
 public:
  explicit Rng(std::uint64_t key) : state_(key) {}
  Rng(std::uint64_t seed, Stream s, std::uint64_t a = 0, std::uint64_t b = 0)
      : state_(derive_key(seed, s, a, b)) {}

  std::uint64_t next_u64() {
    state_ += 0x9E3779B97F4A7C15ULL;
    std::uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // Uniform integer in [0, n).
  std::uint64_t below(std::uint64_t n) { return n == 0 ? 0 : next_u64() % n; }
  double normal() {
    // Box-Muller without caching, so the sequence stays a pure function of the key.
    double u1 = uniform();
    double u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  std::uint64_t state_;
};

}  // namespace moesim
