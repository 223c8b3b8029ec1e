// The teacher and lm tasks, the token embedding (finite differences), the
// token-input model end to end, and the routing-recovery metrics.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "core/error.hpp"
#include "data/lm.hpp"
#include "data/source_recovery.hpp"
#include "data/teacher.hpp"
#include "moe/loss.hpp"
#include "moe/model.hpp"
#include "nn/embedding.hpp"
#include "support/gradcheck.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

using test::kFdAbs;
using test::kFdRel;
using test::numerical_grad;
using test::random_matrix;

// A corpus file in the test's temporary directory, removed at the end.
struct TempText {
  std::filesystem::path path;
  explicit TempText(const std::string& text, const std::string& name = "corpus.txt") {
    path = std::filesystem::temp_directory_path() /
           ("moesim_unit_" + std::to_string(::getpid()) + "_" + name);
    std::ofstream(path, std::ios::binary) << text;
  }
  ~TempText() { std::filesystem::remove(path); }
};

std::string sample_text(std::size_t n) {
  std::string s;
  const std::string words = "the quick brown fox jumps over the lazy dog; ";
  for (std::size_t i = 0; s.size() < n; ++i) s += words[(i * 7) % words.size()];
  return s.substr(0, n);
}

TEST(Gradients, TokenEmbedding) {
  TokenEmbedding<double> emb("emb", 7, 3, Placement::kReplicated);
  Rng rng(61);
  emb.init(rng, 1.0);
  Mat<double> ids(5, 4);
  for (Index i = 0; i < ids.size(); ++i) ids.data()[i] = static_cast<double>((i * 5 + 2) % 7);
  ids(0, 0) = ids(0, 1) = 3;  // one token twice in a context: gradients add up
  const Mat<double> r = random_matrix(5, 12, 62);
  Mat<double> y;
  auto loss = [&] { emb.forward(ids, y); return y.cwiseProduct(r).sum(); };
  loss();
  emb.backward(r);
  EXPECT_GRAD_CLOSE(emb.table().grad, numerical_grad(emb.table().value, loss), "dTable");
  // Slot j of row i is the table row of token ids(i, j).
  emb.forward(ids, y);
  for (Index i = 0; i < 5; ++i)
    for (Index j = 0; j < 4; ++j)
      EXPECT_EQ(y.block(i, j * 3, 1, 3), emb.table().value.row(static_cast<Index>(ids(i, j))));
}

TEST(Gradients, TokenEmbeddingRejectsIdsOutsideTheVocabulary) {
  TokenEmbedding<double> emb("emb", 4, 2, Placement::kReplicated);
  Mat<double> ids(1, 2), y;
  ids << 1, 4;
  EXPECT_THROW(emb.forward(ids, y), std::exception);
  ids << 1, 1.5;
  EXPECT_THROW(emb.forward(ids, y), std::exception);
}

// Token embedding -> adapter -> dense and MoE blocks -> softmax head over the
// vocabulary -> cross-entropy on real bytes of an LM batch.
TEST(Gradients, TokenModelOnLmBatch) {
  Communicator self(MPI_COMM_SELF);
  TempText text(sample_text(400));
  auto corpus = std::make_shared<const TextCorpus>(self, text.path.string());
  LmConfig lc;
  lc.context = 3;
  LmTask task(corpus, lc);
  Batch b = task.batch(Stream::kTrain, 1, 0, 7);
  ModelConfig mc;
  mc.d_in = task.input_width();
  mc.vocab = LmTask::kVocab;
  mc.embed_dim = 2;
  mc.d_out = task.output_width();
  mc.d_model = 5;
  mc.d_ff = 4;
  mc.layers = 2;
  mc.moe_every = 2;  // dense, MoE
  mc.moe.experts = 3;
  mc.moe.top_k = 2;
  mc.moe.capacity_factor = 0;
  mc.moe.aux_loss_weight = 0.1;
  mc.moe.router_init_scale = 5.0;
  mc.seed = 4;
  Model<double> model(self, mc);
  EXPECT_EQ(count_params(mc).total, [&] {
    std::int64_t held = 0;
    for (auto* p : model.replicated_params()) held += p->size();
    for (auto* p : model.expert_params()) held += p->size();
    return held;
  }());
  Mat<double> out, dout;
  auto loss = [&] {
    model.forward(b.x, out);
    double aux = 0;
    for (auto* l : model.moe_layers()) aux += l->stats().aux_loss;
    return task_loss<double>(out, b, true, 7, nullptr).sum.value() / 7 + mc.moe.aux_loss_weight * aux;
  };
  loss();
  task_loss<double>(out, b, true, 7, &dout);
  ParamList<double> all = model.replicated_params();
  for (auto* p : model.expert_params()) all.push_back(p);
  for (auto* p : all) p->grad.setZero();
  model.backward(dout);
  // Only the rows of bytes that occur get gradient: check the table where it is used,
  // and every other parameter in full.
  for (Param<double>* p : all) {
    if (p->name == "embed.table") {
      Mat<double> used = p->value.topRows(128), gused = p->grad.topRows(128);
      auto loss_used = [&] {
        const Mat<double> keep = p->value;
        p->value.topRows(128) = used;
        const double v = loss();
        p->value = keep;
        return v;
      };
      EXPECT_GRAD_CLOSE(gused, numerical_grad(used, loss_used), p->name);
      EXPECT_EQ(p->grad.bottomRows(128).cwiseAbs().maxCoeff(), 0.0) << "non-ASCII rows are unused";
    } else {
      EXPECT_GRAD_CLOSE(p->grad, numerical_grad(p->value, loss), p->name);
    }
  }
}

TEST(Lm, BatchesAreWindowsOfTheCorpusAndSplitsDoNotOverlap) {
  Communicator self(MPI_COMM_SELF);
  const std::string s = sample_text(1000);
  TempText text(s);
  auto corpus = std::make_shared<const TextCorpus>(self, text.path.string());
  ASSERT_EQ(corpus->size(), 1000);
  LmConfig lc;
  lc.context = 5;
  lc.val_fraction = 0.2;
  LmTask task(corpus, lc);
  EXPECT_EQ(task.split(), 800);
  EXPECT_EQ(task.train_positions(), 795);
  EXPECT_EQ(task.val_positions(), 195);
  for (Stream st : {Stream::kTrain, Stream::kValidation}) {
    const Batch b = task.batch(st, 3, 0, 200);
    const Batch shard = task.batch(st, 3, 50, 20);  // tokens 50..69 of the same batch
    for (Index i = 0; i < 200; ++i) {
      // Find the window: bytes x(i, :) then label must be a substring at some p.
      std::string w;
      for (Index j = 0; j < 5; ++j) w += static_cast<char>(b.x(i, j));
      w += static_cast<char>(b.label[static_cast<std::size_t>(i)]);
      const auto at = st == Stream::kTrain ? s.substr(0, 800).find(w) : s.substr(800).find(w);
      EXPECT_NE(at, std::string::npos) << "window " << i << " is not in its split";
    }
    for (Index i = 0; i < 20; ++i) {
      EXPECT_EQ(shard.x.row(i), b.x.row(50 + i));
      EXPECT_EQ(shard.label[static_cast<std::size_t>(i)], b.label[static_cast<std::size_t>(50 + i)]);
    }
  }
}

TEST(Lm, ReadsAcrossFilesOfADirectoryAndSkipsBinaries) {
  Communicator self(MPI_COMM_SELF);
  const auto dir = std::filesystem::temp_directory_path() / ("moesim_unit_dir_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "b.txt", std::ios::binary) << "world";
  std::ofstream(dir / "a.txt", std::ios::binary) << "hello ";
  std::ofstream(dir / "a.dat", std::ios::binary) << std::string("\0\0\0\2", 4);
  std::filesystem::create_symlink(dir / "a.txt", dir / "c.txt");
  {
    TextCorpus corpus(self, dir.string());
    ASSERT_EQ(corpus.size(), 11);
    EXPECT_EQ(corpus.files().size(), 2u);
    std::string got(11, ' ');
    corpus.read(0, 11, reinterpret_cast<unsigned char*>(got.data()));
    EXPECT_EQ(got, "hello world");
    corpus.read(4, 4, reinterpret_cast<unsigned char*>(got.data()));
    EXPECT_EQ(got.substr(0, 4), "o wo");
    EXPECT_THROW(corpus.read(8, 4, reinterpret_cast<unsigned char*>(got.data())), std::exception);
  }
  std::filesystem::remove_all(dir);
}

TEST(Lm, BadCorporaAreConfigErrors) {
  Communicator self(MPI_COMM_SELF);
  EXPECT_THROW(TextCorpus(self, "/nonexistent/moesim/corpus.txt"), ConfigError);
  TempText empty("", "empty.txt");
  EXPECT_THROW(TextCorpus(self, empty.path.string()), ConfigError);
  TempText tiny("abcdefgh", "tiny.txt");
  auto corpus = std::make_shared<const TextCorpus>(self, tiny.path.string());
  LmConfig lc;
  lc.context = 8;
  EXPECT_THROW(LmTask(corpus, lc), ConfigError);
  lc.context = 0;
  EXPECT_THROW(LmTask(corpus, lc), ConfigError);
  lc.context = 2;
  lc.val_fraction = 0.5;
  EXPECT_NO_THROW(LmTask(corpus, lc));
}

TEST(Teacher, LabelsFollowTheTeacherAndShardsAreSlices) {
  TeacherConfig tc;
  tc.d_in = 4;
  tc.experts = 3;
  tc.top_k = 2;
  tc.noise = 0;
  TeacherTask task(tc);
  const Batch b = task.batch(Stream::kTrain, 2, 0, 300);
  const Batch shard = task.batch(Stream::kTrain, 2, 100, 10);
  std::vector<int> seen(3, 0);
  Mat<double> f;
  for (Index i = 0; i < 300; ++i) {
    int top1 = -1;
    task.teach(b.x.row(i), f, top1);
    EXPECT_EQ(top1, b.cluster[static_cast<std::size_t>(i)]);
    EXPECT_DOUBLE_EQ(f(0, 0), b.y(i, 0));
    ++seen[static_cast<std::size_t>(top1)];
  }
  for (int e = 0; e < 3; ++e) EXPECT_GT(seen[static_cast<std::size_t>(e)], 0) << "teacher expert " << e << " unused";
  for (Index i = 0; i < 10; ++i) {
    EXPECT_EQ(shard.x.row(i), b.x.row(100 + i));
    EXPECT_EQ(shard.y(i, 0), b.y(100 + i, 0));
  }
  // A different teacher seed is a different teacher on the same inputs.
  tc.teacher_seed = 2;
  const Batch other = TeacherTask(tc).batch(Stream::kTrain, 2, 0, 300);
  EXPECT_EQ(other.x, b.x);
  EXPECT_NE(other.y, b.y);
  tc.top_k = 4;
  EXPECT_THROW(TeacherTask{tc}, ConfigError);
}

TEST(SourceRecovery, MatchesHandComputedValues) {
  // A perfect permutation: MI = H = log 3, NMI = purity = 1.
  const std::int64_t perfect[] = {0, 5, 0, 0, 0, 5, 5, 0, 0};
  SourceRecovery r = source_recovery(perfect, 3, 3);
  EXPECT_NEAR(r.mutual_info, std::log(3.0), 1e-12);
  EXPECT_NEAR(r.nmi, 1.0, 1e-12);
  EXPECT_NEAR(r.purity, 1.0, 1e-12);
  // Independent: MI = 0, purity = the largest source share.
  const std::int64_t indep[] = {2, 6, 1, 3};
  r = source_recovery(indep, 2, 2);
  EXPECT_NEAR(r.mutual_info, 0.0, 1e-12);
  EXPECT_NEAR(r.nmi, 0.0, 1e-12);
  EXPECT_NEAR(r.purity, 6.0 / 12 + 3.0 / 12, 1e-12);
  // One expert takes everything (collapse): no information.
  const std::int64_t collapsed[] = {4, 4, 0, 0};
  r = source_recovery(collapsed, 2, 2);
  EXPECT_EQ(r.mutual_info, 0.0);
  EXPECT_EQ(r.nmi, 0.0);
  EXPECT_NEAR(r.purity, 0.5, 1e-12);
  // A 2 x 2 table by hand: n = [[3, 1], [0, 4]], N = 8.
  const std::int64_t t[] = {3, 1, 0, 4};
  r = source_recovery(t, 2, 2);
  const double mi = 3.0 / 8 * std::log(8.0 * 3 / (4 * 3)) + 1.0 / 8 * std::log(8.0 * 1 / (4 * 5)) +
                    4.0 / 8 * std::log(8.0 * 4 / (4 * 5));
  const double hs = std::log(2.0), hc = -(3.0 / 8 * std::log(3.0 / 8) + 5.0 / 8 * std::log(5.0 / 8));
  EXPECT_NEAR(r.mutual_info, mi, 1e-12);
  EXPECT_NEAR(r.nmi, mi / std::sqrt(hs * hc), 1e-12);
  EXPECT_NEAR(r.purity, 7.0 / 8, 1e-12);
}

}  // namespace
}  // namespace moesim
