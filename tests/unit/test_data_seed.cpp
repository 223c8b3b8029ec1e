// The task's draws are functions of the task's own seed (--data-seed): the same seed gives
// the same batches in both streams, another seed other batches; the teacher's weights
// follow teacher_seed and its inputs seed.
#include <gtest/gtest.h>

#include "data/regimes.hpp"
#include "data/teacher.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

bool same(const Batch& a, const Batch& b) {
  return a.x == b.x && a.y == b.y && a.label == b.label && a.cluster == b.cluster;
}

TEST(DataSeed, RegimesBatchesAreAFunctionOfTheDataSeed) {
  RegimesConfig c;
  c.seed = 3;
  const RegimesTask a(c), b(c);
  c.seed = 4;
  const RegimesTask other(c);
  for (Stream s : {Stream::kTrain, Stream::kValidation}) {
    EXPECT_TRUE(same(a.batch(s, 7, 10, 32), b.batch(s, 7, 10, 32)));
    EXPECT_FALSE(a.batch(s, 7, 10, 32).x.isApprox(other.batch(s, 7, 10, 32).x));
    EXPECT_NE(a.batch(s, 7, 10, 32).cluster, other.batch(s, 7, 10, 32).cluster);
  }
  // A shard drawn alone equals the same rows of the whole batch.
  const Batch whole = a.batch(Stream::kTrain, 2, 0, 20), part = a.batch(Stream::kTrain, 2, 5, 6);
  EXPECT_EQ(part.x, whole.x.middleRows(5, 6));
}

TEST(DataSeed, TeacherWeightsAndInputsHaveTheirOwnSeeds) {
  TeacherConfig c;
  c.teacher_seed = 2;
  c.seed = 5;
  const TeacherTask base(c);
  c.seed = 6;
  const TeacherTask other_inputs(c);
  c.seed = 5;
  c.teacher_seed = 3;
  const TeacherTask other_teacher(c);
  const Batch b = base.batch(Stream::kTrain, 1, 0, 16);
  EXPECT_FALSE(b.x.isApprox(other_inputs.batch(Stream::kTrain, 1, 0, 16).x));
  const Batch t = other_teacher.batch(Stream::kTrain, 1, 0, 16);
  EXPECT_EQ(b.x, t.x) << "teacher_seed must not move the inputs";
  EXPECT_FALSE(b.y.isApprox(t.y)) << "another teacher labels them differently";
}

}  // namespace
}  // namespace moesim
