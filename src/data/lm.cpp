#include "data/lm.hpp"

#include <cmath>
#include <vector>

#include "core/error.hpp"

namespace moesim {

LmTask::LmTask(std::shared_ptr<const TextCorpus> corpus, const LmConfig& cfg)
    : corpus_(std::move(corpus)), cfg_(cfg) {
  const std::int64_t N = corpus_->size(), C = cfg.context;
  MOESIM_CONFIG_CHECK(C >= 1, "--context must be >= 1 (got " << C << ")");
  MOESIM_CONFIG_CHECK(cfg.val_fraction > 0 && cfg.val_fraction < 1,
                      "--val-fraction must be in (0, 1) (got " << cfg.val_fraction << ")");
  split_ = N - static_cast<std::int64_t>(std::ceil(cfg.val_fraction * static_cast<double>(N)));
  MOESIM_CONFIG_CHECK(train_positions() >= 1 && val_positions() >= 1,
                      "--data has " << N << " bytes: too short for --context " << C
                                    << " (each split, " << split_ << " training and " << N - split_
                                    << " validation bytes, needs at least " << C + 1 << ")");
}

Batch LmTask::batch(Stream stream, std::uint64_t index, std::int64_t first, Index n) const {
  const Index C = cfg_.context;
  const bool val = stream == Stream::kValidation;
  const std::int64_t lo = val ? split_ + C : C;
  const std::uint64_t count = static_cast<std::uint64_t>(val ? val_positions() : train_positions());
  Batch b;
  b.x.resize(n, C);
  b.label.assign(static_cast<std::size_t>(n), 0);
  std::vector<unsigned char> window(static_cast<std::size_t>(C + 1));
  for (Index i = 0; i < n; ++i) {
    Rng rng(cfg_.seed, stream, index, static_cast<std::uint64_t>(first + i));
    const std::int64_t p = lo + static_cast<std::int64_t>(rng.below(count));
    corpus_->read(p - C, C + 1, window.data());
    for (Index j = 0; j < C; ++j) b.x(i, j) = window[static_cast<std::size_t>(j)];
    b.label[static_cast<std::size_t>(i)] = window[static_cast<std::size_t>(C)];
  }
  return b;
}

}  // namespace moesim
