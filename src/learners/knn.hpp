#pragma once
#include <cstdint>
#include <vector>

#include "learners/knn_screen.hpp"
#include "learners/learner.hpp"
#include "learners/standardize.hpp"

namespace moesim {

// K nearest neighbours on standardised features. Training rows never move: predict
// sends each rank's query block around the ring of ranks, and every rank merges its
// local k best into the candidates travelling with the block. Neighbours are ordered
// by (squared distance, global row id), so the result does not depend on P.
// Rows of weight 0 are dropped at fit (a weight-0 row is an absent row); the vote is
// sample weight x distance weight (1/d, or only the d = 0 neighbours when any has
// d = 0, as scikit-learn's weights='distance'). k is clipped to the number of rows.
class KnnLearner : public Learner {
 public:
  // How candidates are short-listed. Distances are products of standardised rows; they
  // only short-list candidates, whose distances are then evaluated exactly in double, so
  // every way gives the same neighbours. kFused screens float products in registers
  // (knn_screen.hpp; needs AVX2 and FMA), kFusedBf16 screens bf16 products there at twice
  // that rate and re-checks what passes in float (needs AVX-512 BF16 besides), kFloatGemm
  // writes float products to a tile with a GEMM and scans it, kDoubleGemm does so in double.
  enum class Screen { kFusedBf16, kFused, kFloatGemm, kDoubleGemm };
  // The fastest screen this CPU runs.
  static Screen best_screen();

  // query_block x train_chunk bounds the distance tile held in memory (fused screens: the
  // training rows screened per pass, at most what the L1 cache holds); tests shrink
  // them to exercise the block and chunk seams.
  KnnLearner(int k, bool distance_weighted, Index query_block = 256, Index train_chunk = 1024,
             Screen screen = best_screen());
  std::string name() const override { return "knn"; }
  void fit(const LearnerContext& ctx, const TrainRows& rows) override;
  Mat<double> predict(const LearnerContext& ctx, const Mat<double>& X) override;
  std::unique_ptr<Learner> clone() const override {
    return std::make_unique<KnnLearner>(k_, distance_weighted_, query_block_, train_chunk_, screen_);
  }
  // With a fused screen and no fold models asked for: every fold's predictions from one
  // screen of each pair of rows in different folds, used for both rows (knn_folds.cpp).
  OutOfFold out_of_fold(const LearnerContext& ctx, const TrainRows& rows, const std::vector<int>& fold, int K,
                        const std::function<void(Learner&)>& each_model) const override;
  int effective_k() const { return k_eff_; }

  // Candidate neighbours of a block of nq queries, k_eff slots per query, each
  // query's slots sorted by (d2, id); empty slots hold (+inf, INT64_MAX).
  struct Candidates {
    std::vector<double> d2, y, w;
    std::vector<std::int64_t> id;
  };

 private:
  class ShortLists;
  // The local k_eff best of nq standardised queries (row-major, nq x p), merged into c.
  void merge_local(const double* Q, Index nq, Candidates& c) const;
  // Short lists of queries [b0, b0 + nb) of Q: with a GEMM in T per training chunk, or
  // with the fused screen.
  template <class T>
  void screen_gemm(const double* Q, Index b0, Index nb, const Mat<T>& xa, ShortLists& lists) const;
  void screen_fused(const double* Q, Index b0, Index nb, ShortLists& lists) const;
  bool fused() const { return screen_ == Screen::kFused || screen_ == Screen::kFusedBf16; }
  ScreenPrecision fused_precision() const {
    return screen_ == Screen::kFusedBf16 ? ScreenPrecision::kBf16 : ScreenPrecision::kFloat;
  }
  // Query q's short list evaluated exactly, its best merged into the K slots at `base`.
  void merge_exact(const double* q, ShortLists& lists, Index i, std::size_t base, Candidates& c) const;

  int k_;
  bool distance_weighted_;
  Index query_block_, train_chunk_;
  Screen screen_;
  bool fitted_ = false;
  int classes_ = 0;
  int k_eff_ = 0;
  Index p_ = 0;
  Standardizer scaler_;
  // NOTES: row i is [-2 z_i, ||z_i||^2], so one GEMM with [q, 1] gives ||z||^2 - 2 q.z;
  // -0.5 * (-2 z) recovers z exactly for the exact re-evaluation of short-listed rows.
  Mat<double> xa_;
  Mat<float> xa_f_;        // xa_ in float for kFloatGemm, and kFusedBf16's re-checks
  PanelMatrix xa_panels_;  // -2 z_i in panels for the fused screens
  std::vector<float> norm_f_;  // ||z_i||^2, +inf for the panels' padding: their column bias
  double max_norm2_ = 0;  // max ||z_i||^2 over the local rows, for the rounding bound
  std::vector<double> y_, w_;
  std::vector<std::int64_t> id_;
};

}  // namespace moesim
