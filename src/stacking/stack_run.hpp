#pragma once
// A whole `stack` or `blend` run on tables already read (data/stacking_inputs): run
// file created, the run, its results written, a summary printed. Run-file layout
// (besides the root attributes of io/run_file):
//   /scores/learner   L x 6 per-learner scores (attrs: learners, learner_columns, fold_metric)
//   /scores/fold      L x K primary score per held-out fold (stacking)
//   /meta/coefficients, /meta/tuning (blending)  (attrs: rows, columns)
//   /oof/predictions, fold, row, target   row-sharded, written by every rank
//   /final            attributes: test score and the run's totals
#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "core/timer.hpp"
#include "data/stacking_inputs.hpp"
#include "io/run_file.hpp"
#include "stacking/stack.hpp"

namespace moesim {

struct StackRunSettings {
  bool blend = false;     // run_blend on inputs.train, else run_stack
  BlendOptions options;   // the fractions are read by blending only
  std::string out;        // the run file
  AttrList option_attrs;  // root attributes naming the resolved options (provenance is added)
};

// The rows behind StackResult::oof: their global row in the training file, their target
// and their fold (stacking: one column per repeat; blending: the split code, 1 = validation).
struct OofRows {
  std::vector<std::int64_t> row;
  std::vector<double> target;
  std::vector<std::vector<int>> fold;
};

// COLLECTIVE. Options must already be valid (ConfigErrors from the data may still come).
// `wall` is the run's clock: its seconds go to final/seconds. The communication tally
// since comm.reset_tally() goes to final/bytes_communicated and comm_seconds.
// The datasets a stack or blend run file holds.
std::span<const DatasetInfo> stack_run_datasets();

StackResult run_stacking(const Communicator& comm, const StackingInputs& inputs, const StackRunSettings& settings,
                         const Stopwatch& wall);

// COLLECTIVE. The results of a run into `rf` (scores, meta, oof, final), then complete = 1.
void write_stack_run(const Communicator& comm, RunFile& rf, const StackResult& res, const OofRows& oof,
                     std::int64_t train_rows, std::int64_t test_rows, double seconds);

}  // namespace moesim
