#pragma once
// The teacher task: a random MoE network with known E_t experts and top-k K_t
// labels Gaussian inputs; the student MoE learns it. Each token records the
// teacher's top-1 expert, so one can measure whether the student's routing
// recovers the teacher's partition of the input space.
//   g = softmax over the K_t largest logits of x W_g   (ties to the lower index)
//   f(x) = sum_j g_j tanh(x W1_e_j + b1_e_j) W2_e_j    (+ noise for regression)
#include <cstdint>
#include <vector>

#include "data/task.hpp"

namespace moesim {

struct TeacherConfig {
  Index d_in = 16;
  int experts = 4;           // E_t
  int top_k = 1;             // K_t
  Index hidden = 16;         // hidden width of each teacher expert
  int classes = 0;           // 0: regression; >= 2: label = argmax of the teacher's outputs
  double noise = 0.0;        // regression target noise std
  double router_scale = 3.0; // std of the teacher's router logits (large = decisive routing)
  std::uint64_t teacher_seed = 1;  // the teacher's weights
  std::uint64_t seed = 1;          // the inputs and noise
};

class TeacherTask : public Task {
 public:
  explicit TeacherTask(const TeacherConfig& cfg);
  std::string name() const override { return "teacher"; }
  bool classification() const override { return cfg_.classes >= 2; }
  Index input_width() const override { return cfg_.d_in; }
  Index output_width() const override { return classification() ? cfg_.classes : 1; }
  int sources() const override { return cfg_.experts; }
  Batch batch(Stream stream, std::uint64_t index, std::int64_t first, Index n) const override;
  // The teacher's output for one input row, and its top-1 expert.
  void teach(const Mat<double>& x_row, Mat<double>& f, int& top1) const;

 private:
  TeacherConfig cfg_;
  Mat<double> wg_;                 // d_in x E_t
  std::vector<Mat<double>> w1_;    // per expert: d_in x H
  std::vector<RowVec<double>> b1_; // per expert: 1 x H
  std::vector<Mat<double>> w2_;    // per expert: H x out
};

}  // namespace moesim
