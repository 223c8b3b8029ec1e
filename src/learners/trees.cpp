// Placeholder until the tree learners land; replaced wholesale by their implementation.
#include "core/error.hpp"
#include "learners/learner.hpp"

namespace moesim {

std::unique_ptr<Learner> make_tree_learner(const LearnerOptions&) {
  throw ConfigError("learner 'tree' is not implemented yet");
}
std::unique_ptr<Learner> make_forest_learner(const LearnerOptions&) {
  throw ConfigError("learner 'forest' is not implemented yet");
}
std::unique_ptr<Learner> make_gbdt_learner(const LearnerOptions&) {
  throw ConfigError("learner 'gbdt' is not implemented yet");
}

}  // namespace moesim
