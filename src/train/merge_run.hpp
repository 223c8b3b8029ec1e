#pragma once
// `moesim merge` as a library call: a trained run's checkpoint merged down to E2 experts
// per MoE layer (moe/merge), the validation loss before and after on the same tokens,
// both logged to one run file.
#include <string>

#include "moe/merge.hpp"
#include "train/checkpoint.hpp"
#include "train/moe_run.hpp"

namespace moesim {

struct MergeConfig {
  std::string run;   // the trained run: its checkpoint, or its run file naming one
  std::string out;   // run file to write
  int experts = 0;   // E2, in the checkpoint's (effective) experts
  MergeMethod method = MergeMethod::kAverage;
  bool by_routing = false;  // pair experts by routing similarity instead of weights
  bool quiet = false;
  AttrList options;  // the merge's resolved options, as root attributes
};

// COLLECTIVE. The checkpoint `run` names: itself, or the `checkpoint` attribute of a run
// file (as written, else relative to the run file's folder). ConfigError on every rank
// when there is none.
std::string resolve_checkpoint(const Communicator& comm, const std::string& run);

// The datasets a merge run file holds.
std::span<const DatasetInfo> merge_run_datasets();

// COLLECTIVE. Merges the checkpoint `ckpt` of the run that `source` describes (rebuilt from
// the checkpoint's own options) down to cfg.experts per MoE layer and writes cfg.out.
// Checks E2 against the run first (ConfigError). Returns the exit code.
int merge_run(const Communicator& comm, const MergeConfig& cfg, const std::string& ckpt,
              const CheckpointInfo& info, MoeRunConfig source);

}  // namespace moesim
