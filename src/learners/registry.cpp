// The table of base learners. Each factory lives beside its learner.
#include "core/error.hpp"
#include "learners/learner.hpp"

namespace moesim {

std::unique_ptr<Learner> make_ridge_learner(const LearnerOptions& opt);
std::unique_ptr<Learner> make_logistic_learner(const LearnerOptions& opt);
std::unique_ptr<Learner> make_knn_learner(const LearnerOptions& opt);
std::unique_ptr<Learner> make_tree_learner(const LearnerOptions& opt);
std::unique_ptr<Learner> make_forest_learner(const LearnerOptions& opt);
std::unique_ptr<Learner> make_gbdt_learner(const LearnerOptions& opt);
std::unique_ptr<Learner> make_nb_learner(const LearnerOptions& opt);

namespace {
struct Entry {
  const char* name;
  std::unique_ptr<Learner> (*make)(const LearnerOptions&);
};
constexpr Entry kLearners[] = {
    {"ridge", make_ridge_learner}, {"logistic", make_logistic_learner}, {"knn", make_knn_learner},
    {"tree", make_tree_learner},   {"forest", make_forest_learner},     {"gbdt", make_gbdt_learner},
    {"nb", make_nb_learner},
};
}  // namespace

std::unique_ptr<Learner> make_learner(const std::string& name, const LearnerOptions& opt) {
  for (const Entry& e : kLearners)
    if (name == e.name) return e.make(opt);
  std::string known;
  for (const Entry& e : kLearners) known += (known.empty() ? "" : ", ") + std::string(e.name);
  throw ConfigError("unknown learner '" + name + "' (known: " + known + ")");
}

const std::vector<std::string>& learner_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const Entry& e : kLearners) n.emplace_back(e.name);
    return n;
  }();
  return names;
}

}  // namespace moesim
