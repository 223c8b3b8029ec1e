#pragma once
// A supervised-gate mixture of experts (Jacobs et al. 1991's sum_k p_k f_k with each expert's
// region fixed by a bin of the target) over rows sharded across ranks:
// the target is cut into B ordinal bins; a gate (a stacking-engine classifier) learns
// the bin of each row and gives probabilities p_k; one expert per bin (a stacking-
// engine regressor) learns from its bin's training rows only; the prediction is
// sum_k p_k f_k, then an isotonic map fitted on a validation split, clipped to a range.
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "binned/isotonic.hpp"
#include "data/table.hpp"
#include "learners/learner.hpp"

namespace moesim {

// B experts each fitted separately, B x B x H histograms: far more bins is a mistake.
inline constexpr int kMaxBins = 100;

struct BinnedOptions {
  std::vector<double> edges;          // given bin edges (strictly increasing); empty: quantile bins
  int bins = 3;                       // B when edges is empty
  std::string gate_learner = "gbdt";  // any learner (a classifier over the B bins)
  // Gate rows weighted by N / (B N_k) (scikit-learn's class_weight="balanced", as seed
  // 001's gate), so a small bin is not drowned by the large ones.
  bool gate_balanced = false;
  std::string expert_learner = "gbdt";  // a regressor: ridge, knn, tree, forest, gbdt
  LearnerOptions learner;
  double val_fraction = 0.2;          // rows that fit the calibration map
  double test_fraction = 0.2;         // rows that score everything
  double clip_min = -std::numeric_limits<double>::infinity();
  double clip_max = std::numeric_limits<double>::infinity();
  bool baseline = true;               // also fit one expert learner on all training rows
  int histogram_bins = 20;            // H: buckets of [0, 1] for the gate-probability histograms
  std::uint64_t seed = 1;
  bool quiet = false;
};

// Split codes, per row: a hash of (seed, global row).
enum BinnedSplit : int { kSplitTrain = 0, kSplitValidation = 1, kSplitTest = 2 };

// Root-mean-square errors of one split's predictions (weighted by sample weight).
struct SplitRmse {
  double mixture = 0;     // sum_k p_k f_k
  double calibrated = 0;  // clip(isotonic(mixture))
  double clip_only = 0;   // clip(mixture)
  double hard = 0;        // f_argmax p (hard gate, a diagnostic)
  double oracle = 0;      // f_(true bin): what a perfect gate would give
  double baseline = 0;    // one expert learner on all training rows (0 when not fitted)
};

struct BinnedResult {
  std::vector<double> edges;              // B - 1
  int bins = 0;                           // B
  // Per local row (all splits):
  std::vector<std::int64_t> row;          // global row
  std::vector<int> split, bin;
  Mat<double> gate, experts;              // n x B: p_k and f_k
  std::vector<double> target, mixture, hard, calibrated, baseline;
  IsotonicMap calibration;
  // Over all ranks:
  std::vector<std::int64_t> rows_per_split_bin;  // 3 x B, row-major
  SplitRmse val, test;
  double gate_accuracy = 0, gate_log_loss = 0, gate_chance_accuracy = 0;  // test split
  std::vector<std::int64_t> confusion;    // B x B test rows: true bin x argmax p
  std::vector<double> mean_probability;   // B x B: mean p_j over test rows of true bin k
  std::vector<std::int64_t> histogram;    // B x B x H: test rows of true bin k with p_j in bucket h
  // Per expert k (B rows): own-bin training rows; RMSE on own-bin training rows, on
  // own-bin test rows, on all test rows; mean gate probability on test rows.
  std::vector<double> expert_loss;        // B x 5
  std::vector<double> expert_rmse_by_bin; // B x B: expert k on test rows of true bin j
  double fit_seconds = 0;
};

// The options' checks that need no data (ConfigError, identical on every rank).
void validate_binned(const BinnedOptions& opt);

// COLLECTIVE. `data` is a regression table whose rows carry global numbering
// (data.first); results do not depend on the rank count.
BinnedResult run_binned(const Communicator& comm, const Table& data, const BinnedOptions& opt);

}  // namespace moesim
