#pragma once
// What the trainer needs from a task: batches drawn per global token index, so
// that each rank draws (or reads) exactly its shard and results do not depend
// on the rank count.
#include <cstdint>
#include <string>

#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "nn/batch.hpp"

namespace moesim {

class Task {
 public:
  virtual ~Task() = default;
  virtual std::string name() const = 0;
  virtual bool classification() const = 0;
  virtual Index input_width() const = 0;
  virtual Index output_width() const = 0;
  // Token tasks: V > 0, and Batch::x holds token ids the model embeds.
  virtual Index vocab() const { return 0; }
  // > 0: Batch::cluster holds a known source in [0, sources()) whose recovery by the
  // router is measured (mutual information with the student's top-1 expert).
  virtual int sources() const { return 0; }
  // Tokens [first, first + n) of batch `index` in `stream`: a pure function of
  // (seed, stream, index, token).
  virtual Batch batch(Stream stream, std::uint64_t index, std::int64_t first, Index n) const = 0;
};

}  // namespace moesim
