// Placeholder until the learner lands; replaced wholesale by its implementation.
#include "core/error.hpp"
#include "learners/learner.hpp"

namespace moesim {

std::unique_ptr<Learner> make_nb_learner(const LearnerOptions&) {
  throw ConfigError("learner 'nb' is not implemented yet");
}

}  // namespace moesim
