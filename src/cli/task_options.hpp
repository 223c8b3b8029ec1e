#pragma once
// Options, construction and results of the tasks `moesim moe` trains on:
// regimes (data/regimes), teacher (data/teacher), lm (data/lm).
#include <memory>
#include <string>

#include "cli/options.hpp"
#include "data/lm.hpp"
#include "data/regimes.hpp"
#include "data/teacher.hpp"
#include "io/run_file.hpp"
#include "moe/model.hpp"
#include "train/trainer.hpp"

namespace moesim::cli {

// The corpus of --task lm when --data is not given (Debian package `fortunes`).
inline constexpr const char* kDefaultCorpus = "/usr/share/games/fortunes";

// Options of the teacher and lm tasks (the regimes options stay with the others).
po::options_description task_options();

struct TaskChoice {
  std::string name;  // regimes | teacher | lm
  RegimesConfig regimes;
  TeacherConfig teacher;
  LmConfig lm;
  Index embed_dim = 16;
  std::string data;  // lm: the resolved corpus path
};

// Checks the task options (ConfigError, identical on every rank).
TaskChoice task_choice(const po::variables_map& vm, const RegimesConfig& regimes);

// COLLECTIVE (lm opens the corpus on every rank). Bad data is a ConfigError on
// every rank. `facts` receives what the run file's `task` group records.
std::unique_ptr<Task> make_task(const Communicator& comm, const TaskChoice& choice, AttrList& facts);

// Input and output widths (and the token embedding) the model needs for `task`.
void fit_model_to_task(const Task& task, const TaskChoice& choice, ModelConfig& model);

// Task-specific final results: bits per byte (lm), routing recovery (tasks with
// sources): `final` attributes into `fin`, datasets into `rf`.
void task_results(const Task& task, const TrainSummary& s, int experts, AttrList& fin, RunFile& rf);

}  // namespace moesim::cli
