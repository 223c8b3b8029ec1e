#pragma once
// The tasks `moesim moe` trains on, by name. A new task is its own file (a Task
// subclass and its config) plus one line in the registry of data/tasks.cpp.
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "data/lm.hpp"
#include "data/regimes.hpp"
#include "data/teacher.hpp"
#include "io/run_file.hpp"
#include "moe/model.hpp"

namespace moesim {

// Every task's settings; `name` picks the one that is built.
struct TaskConfig {
  std::string name = "regimes";
  RegimesConfig regimes;
  TeacherConfig teacher;
  LmConfig lm;
  Index embed_dim = 16;  // lm: De
  std::string data;      // lm: the corpus path
};

// Registered task names, in registry order.
std::vector<std::string> task_names();

// COLLECTIVE (lm opens the corpus on every rank). Bad data is a ConfigError on every
// rank. `facts` receives what the run file's `task` group records.
std::unique_ptr<Task> make_task(const Communicator& comm, const TaskConfig& cfg, AttrList& facts);

// The input, output and token-embedding widths and the loss kind the model needs for `task`.
void fit_model_to_task(const Task& task, const TaskConfig& cfg, ModelConfig& model);

}  // namespace moesim
