#pragma once
// The model and task of a `moesim moe` run, rebuilt from its options for commands that
// work on a trained run (merge).
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "data/task.hpp"
#include "moe/model.hpp"
#include "train/trainer.hpp"

namespace moesim::cli {

struct MoeModelVisitor {
  virtual ~MoeModelVisitor() = default;
  virtual void visit(Model<float>& model, const Task& task, const TrainConfig& train) = 0;
  virtual void visit(Model<double>& model, const Task& task, const TrainConfig& train) = 0;
};

// COLLECTIVE. Builds the freshly initialised model and the task that moe `options` (INI
// text, as checkpoints store them) describe, `overrides` (command-line style, e.g.
// {"--experts", "4"}) winning, validated as `moesim moe` validates them; hands them to `v`.
void visit_moe_model(const Communicator& comm, const std::string& options,
                     const std::vector<std::string>& overrides, MoeModelVisitor& v);

}  // namespace moesim::cli
