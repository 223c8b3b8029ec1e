#pragma once
// Next-token language modelling on a text corpus, byte level (V = 256): token i
// of a batch is a position p of the corpus drawn from (seed, stream, batch, i);
// its input is the C bytes before p, its label the byte at p. The last
// `val_fraction` of the corpus is the validation split: its positions and their
// contexts never overlap the training split.
#include <cstdint>
#include <memory>

#include "data/task.hpp"
#include "data/text_corpus.hpp"

namespace moesim {

struct LmConfig {
  Index context = 16;          // C, previous bytes per prediction
  double val_fraction = 0.1;   // last share of the corpus held out
  std::uint64_t seed = 1;
};

class LmTask : public Task {
 public:
  static constexpr Index kVocab = 256;
  // Throws ConfigError (on every rank: all ranks see the same sizes) when a split
  // is too short for one window of C + 1 bytes.
  LmTask(std::shared_ptr<const TextCorpus> corpus, const LmConfig& cfg);
  std::string name() const override { return "lm"; }
  bool classification() const override { return true; }
  Index input_width() const override { return cfg_.context; }
  Index output_width() const override { return kVocab; }
  Index vocab() const override { return kVocab; }
  // Reads C + 1 bytes per token (pread), nothing else.
  Batch batch(Stream stream, std::uint64_t index, std::int64_t first, Index n) const override;

  const TextCorpus& corpus() const { return *corpus_; }
  std::int64_t split() const { return split_; }  // first byte of the validation split
  // Positions that can be predicted: training p in [C, split), validation p in [split + C, N).
  std::int64_t train_positions() const { return split_ - cfg_.context; }
  std::int64_t val_positions() const { return corpus_->size() - split_ - cfg_.context; }

 private:
  std::shared_ptr<const TextCorpus> corpus_;
  LmConfig cfg_;
  std::int64_t split_ = 0;
};

}  // namespace moesim
