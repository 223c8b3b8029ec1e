// Checkpoint round trip on the test's rank count: every parameter value and Adam moment
// comes back bit for bit, into a model initialised differently.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "train/checkpoint.hpp"
#include "moe/model.hpp"
#include "support/shared_dir.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

ModelConfig small_config(std::uint64_t seed) {
  ModelConfig c;
  c.d_in = 5;
  c.d_out = 2;
  c.d_model = 8;
  c.d_ff = 12;
  c.layers = 3;
  c.moe_every = 2;  // a dense block and an MoE block
  c.moe.experts = 4;
  c.moe.top_k = 2;
  c.seed = seed;
  return c;
}


template <class T>
bool same_bits(const Mat<T>& a, const Mat<T>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(T) * static_cast<std::size_t>(a.size())) == 0;
}

template <class T>
void round_trip() {
  const Communicator& comm = test::world();
  const test::SharedDir tmp;
  const std::string& dir = tmp.path();
  const std::string path = dir + "/ckpt.h5";
  Model<T> a(comm, small_config(1));
  // Moments that differ per element and per expert, as after training: the same on the ranks
  // that hold the same experts (one place in each expert group: replicas when E < P).
  Rng rng(7, Stream::kTest, static_cast<std::uint64_t>(a.expert_groups().group().rank()), 0);
  ParamList<T> rep_a = a.replicated_params(), exp_a = a.expert_params();
  Rng shared(8, Stream::kTest, 0, 0);  // replicated moments identical on every rank
  for (Param<T>* p : rep_a) {
    p->adam_m.setZero();
    for (Index i = 0; i < p->size(); ++i) p->adam_m.data()[i] = static_cast<T>(shared.normal());
    p->adam_v = p->adam_m.cwiseAbs();
  }
  for (Param<T>* p : exp_a) {
    for (Index i = 0; i < p->size(); ++i) p->adam_m.data()[i] = static_cast<T>(rng.normal());
    p->adam_v = p->adam_m.cwiseAbs();
  }
  TrainProgress prog;
  prog.step = 17;
  prog.adam_t = 17;
  prog.tok_s_sum = 1.25;
  prog.tok_s_n = 16;
  prog.train_loss = 0.1 + 1e-17;
  save_checkpoint(comm, path, rep_a, exp_a, prog, "experts = 4\n", nullptr);
  EXPECT_TRUE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  Model<T> b(comm, small_config(2));
  ParamList<T> rep_b = b.replicated_params(), exp_b = b.expert_params();
  ASSERT_FALSE(same_bits(rep_a[0]->value, rep_b[0]->value)) << "the seeds should give different models";
  const TrainProgress got = load_checkpoint(comm, path, rep_b, exp_b);
  EXPECT_EQ(got.step, 17);
  EXPECT_EQ(got.adam_t, 17);
  EXPECT_EQ(got.tok_s_n, 16);
  EXPECT_EQ(got.tok_s_sum, 1.25);
  EXPECT_EQ(got.train_loss, prog.train_loss);
  long bad = 0;
  ASSERT_EQ(rep_a.size(), rep_b.size());
  ASSERT_EQ(exp_a.size(), exp_b.size());
  for (std::size_t i = 0; i < rep_a.size(); ++i)
    bad += !same_bits(rep_a[i]->value, rep_b[i]->value) + !same_bits(rep_a[i]->adam_m, rep_b[i]->adam_m) +
           !same_bits(rep_a[i]->adam_v, rep_b[i]->adam_v);
  for (std::size_t i = 0; i < exp_a.size(); ++i)
    bad += !same_bits(exp_a[i]->value, exp_b[i]->value) + !same_bits(exp_a[i]->adam_m, exp_b[i]->adam_m) +
           !same_bits(exp_a[i]->adam_v, exp_b[i]->adam_v);
  EXPECT_EQ(comm.allreduce_sum(bad), 0) << "tensors that did not come back bit for bit";

  // A model of another shape is refused on every rank with a clear message.
  ModelConfig wide = small_config(1);
  wide.d_ff = 16;
  Model<T> c(comm, wide);
  try {
    load_checkpoint(comm, path, c.replicated_params(), c.expert_params());
    ADD_FAILURE() << "loading into another shape should fail";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("does not match"), std::string::npos) << e.what();
  }
  comm.barrier();
}

TEST(Checkpoint, RoundTripIsBitExactFp32) { round_trip<float>(); }
TEST(Checkpoint, RoundTripIsBitExactFp64) { round_trip<double>(); }

}  // namespace
}  // namespace moesim
