#include "data/tasks.hpp"

#include "core/error.hpp"

namespace moesim {

namespace {

using I = std::int64_t;

struct TaskEntry {
  const char* name;
  std::unique_ptr<Task> (*make)(const Communicator&, const TaskConfig&, AttrList& facts);
};

std::unique_ptr<Task> make_regimes(const Communicator&, const TaskConfig& c, AttrList&) {
  return std::make_unique<RegimesTask>(c.regimes);
}

std::unique_ptr<Task> make_teacher(const Communicator&, const TaskConfig& c, AttrList&) {
  return std::make_unique<TeacherTask>(c.teacher);
}

std::unique_ptr<Task> make_lm(const Communicator& comm, const TaskConfig& c, AttrList& facts) {
  auto corpus = std::make_shared<const TextCorpus>(comm, c.data);
  auto task = std::make_unique<LmTask>(corpus, c.lm);
  facts.insert(facts.end(), {{"vocab", static_cast<I>(LmTask::kVocab)},
                             {"corpus", c.data},
                             {"corpus_files", static_cast<I>(corpus->files().size())},
                             {"corpus_bytes", corpus->size()},
                             {"train_bytes", task->split()},
                             {"val_bytes", corpus->size() - task->split()},
                             {"train_positions", task->train_positions()},
                             {"val_positions", task->val_positions()}});
  return task;
}

constexpr TaskEntry kTasks[] = {
    {"regimes", make_regimes},
    {"teacher", make_teacher},
    {"lm", make_lm},
};

}  // namespace

std::vector<std::string> task_names() {
  std::vector<std::string> out;
  for (const TaskEntry& t : kTasks) out.emplace_back(t.name);
  return out;
}

std::unique_ptr<Task> make_task(const Communicator& comm, const TaskConfig& cfg, AttrList& facts) {
  facts = {{"name", cfg.name}};
  for (const TaskEntry& t : kTasks)
    if (cfg.name == t.name) return t.make(comm, cfg, facts);
  throw ConfigError("--task '" + cfg.name + "' is not known");
}

void fit_model_to_task(const Task& task, const TaskConfig& cfg, ModelConfig& model) {
  model.d_in = task.input_width();
  model.d_out = task.output_width();
  model.classification = task.classification();
  if (task.vocab() > 0) {
    model.vocab = task.vocab();
    model.embed_dim = cfg.embed_dim;
  }
}

}  // namespace moesim
