#pragma once
// One `moesim moe` run from its settings to its complete run file: the task, the
// model, training (or resuming), final results and the summary line.
#include <string>

#include "comm/communicator.hpp"
#include "data/tasks.hpp"
#include "io/run_file.hpp"
#include "moe/model.hpp"
#include "train/trainer.hpp"

namespace moesim {

struct MoeRunConfig {
  ModelConfig model;    // E and K already x granularity; d_in/d_out set from the task
  TaskConfig task;
  TrainConfig train;
  std::string precision = "fp32";  // fp32 | fp64, the whole model
  std::string out;                 // run file
  bool resume = false;             // continue from train.checkpoint when it exists
  int blas_threads = 1;
  AttrList options;    // every resolved option, as the run file's root attributes
  AttrList effective;  // what the layers run with (effective_experts, ...), beside them
};

// COLLECTIVE. Builds the task first (bad data fails before any file is written), then
// creates the run file, trains and writes the final results; `complete` is set last.
// Returns the exit code: 0, or 143 when a signal stopped the run (file left incomplete).
int moe_run(const Communicator& comm, MoeRunConfig cfg);

// The datasets a moe run file holds besides metrics/ (step_metric_datasets()).
std::span<const DatasetInfo> moe_run_datasets();

// Task-specific final results: bits per byte (lm), routing recovery (tasks with
// sources): `final` attributes into `fin`, datasets into `rf`.
void task_results(const Task& task, const TrainSummary& s, int experts, AttrList& fin, RunFile& rf);

}  // namespace moesim
