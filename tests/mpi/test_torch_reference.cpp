// The MoE layer on P ranks against a straightforward PyTorch implementation
// (tests/reference/moe_torch_reference.py writes the file, same weights and inputs).
#include <gtest/gtest.h>

#include "core/shard.hpp"
#include "io/hdf5.hpp"
#include "moe/moe_layer.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

using test::world;

Mat<double> read_matrix(hid_t g, const std::string& name) {
  std::vector<hsize_t> dims;
  std::vector<double> v = h5::read_array(g, name, &dims);
  const Index rows = static_cast<Index>(dims.at(0));
  const Index cols = static_cast<Index>(v.size()) / std::max<Index>(rows, 1);
  return ConstMatMap<double>(v.data(), rows, cols);
}

// Slice e of an (E x r x c) dataset as an r x c matrix.
Mat<double> read_slice(hid_t g, const std::string& name, int e) {
  std::vector<hsize_t> dims;
  std::vector<double> v = h5::read_array(g, name, &dims);
  const Index r = static_cast<Index>(dims.at(1));
  const Index c = dims.size() > 2 ? static_cast<Index>(dims[2]) : 1;
  return ConstMatMap<double>(v.data() + static_cast<std::size_t>(e) * r * c, dims.size() > 2 ? r : 1,
                             dims.size() > 2 ? c : r);
}

TEST(TorchReference, MoeLayerMatchesPyTorch) {
  const std::string& path = test::reference_path();
  ASSERT_FALSE(path.empty()) << "pass --reference=FILE (ctest runs the generator first)";
  h5::silence_default_error_printing();
  h5::Handle file = h5::open_file(path, false);
  const std::int64_t cases = h5::read_attr_int(file.id(), "cases");
  ASSERT_GT(cases, 0);
  const Communicator& comm = world();
  // float64 on both sides; differences come from summation order only.
  constexpr double abs_tol = 1e-11, rel_tol = 1e-9;
  int ran = 0;
  for (std::int64_t i = 0; i < cases; ++i) {
    h5::Handle g = h5::open_group(file.id(), "case" + std::to_string(i));
    MoeLayerConfig cfg;
    const std::int64_t B = h5::read_attr_int(g.id(), "B");
    cfg.d_model = h5::read_attr_int(g.id(), "D");
    cfg.d_ff = h5::read_attr_int(g.id(), "F");
    cfg.experts = static_cast<int>(h5::read_attr_int(g.id(), "E"));
    cfg.top_k = static_cast<int>(h5::read_attr_int(g.id(), "K"));
    cfg.capacity_factor = h5::read_attr_double(g.id(), "capacity_factor");
    cfg.aux_loss_weight = h5::read_attr_double(g.id(), "aux_loss_weight");
    cfg.router.pre_softmax = h5::read_attr_int(g.id(), "pre_softmax") != 0;
    if (cfg.experts % comm.size() != 0) continue;
    SCOPED_TRACE("case" + std::to_string(i));
    ++ran;
    MoeLayer<double> layer(comm, "moe", cfg, 1, 1);
    layer.router().weight().value = read_matrix(g.id(), "router");
    for (int le = 0; le < layer.local_experts(); ++le) {
      const int e = layer.global_expert(le);
      layer.local_expert(le).w1().value = read_slice(g.id(), "w1", e);
      layer.local_expert(le).b1().value = read_slice(g.id(), "b1", e);
      layer.local_expert(le).w2().value = read_slice(g.id(), "w2", e);
      layer.local_expert(le).b2().value = read_slice(g.id(), "b2", e);
    }
    const Shard sh = shard_of(B, comm.rank(), comm.size());
    const Mat<double> x = read_matrix(g.id(), "x").middleRows(sh.first, sh.count);
    const Mat<double> dy = read_matrix(g.id(), "dy").middleRows(sh.first, sh.count);
    Mat<double> y, dx;
    layer.forward(x, y);
    MOESIM_EXPECT_CLOSE_ALL_RANKS(y, read_matrix(g.id(), "y").middleRows(sh.first, sh.count),
                                  abs_tol, rel_tol, "Y");
    EXPECT_NEAR(layer.stats().aux_loss, h5::read_attr_double(g.id(), "aux_loss"), 1e-12);
    EXPECT_EQ(layer.stats().dropped, h5::read_attr_int(g.id(), "dropped"));
    const Mat<double> tokens = read_matrix(g.id(), "expert_tokens");
    for (int e = 0; e < cfg.experts; ++e)
      EXPECT_EQ(static_cast<double>(layer.stats().expert_tokens[e]), tokens(e, 0));

    layer.backward(dy, dx);
    MOESIM_EXPECT_CLOSE_ALL_RANKS(dx, read_matrix(g.id(), "dx").middleRows(sh.first, sh.count),
                                  abs_tol, rel_tol, "dX");
    Mat<double> drouter = layer.router().weight().grad;
    comm.allreduce_sum(drouter.data(), static_cast<int>(drouter.size()));
    MOESIM_EXPECT_CLOSE_ALL_RANKS(drouter, read_matrix(g.id(), "drouter"), abs_tol, rel_tol, "dW_router");
    for (int le = 0; le < layer.local_experts(); ++le) {
      const int e = layer.global_expert(le);
      Ffn<double>& ex = layer.local_expert(le);
      MOESIM_EXPECT_CLOSE_ALL_RANKS(ex.w1().grad, read_slice(g.id(), "dw1", e), abs_tol, rel_tol, "dW1");
      MOESIM_EXPECT_CLOSE_ALL_RANKS(ex.b1().grad, read_slice(g.id(), "db1", e), abs_tol, rel_tol, "db1");
      MOESIM_EXPECT_CLOSE_ALL_RANKS(ex.w2().grad, read_slice(g.id(), "dw2", e), abs_tol, rel_tol, "dW2");
      MOESIM_EXPECT_CLOSE_ALL_RANKS(ex.b2().grad, read_slice(g.id(), "db2", e), abs_tol, rel_tol, "db2");
    }
  }
  EXPECT_GT(ran, 0) << "no reference case fits this rank count";
}

}  // namespace
}  // namespace moesim
