#pragma once
// The MoE network: input adapter -> L pre-norm residual blocks (dense FFN or MoE
// FFN) -> final norm -> task head. With a mixture loss the last block must be an MoE
// block with a gate that uses every expert: each of its experts predicts through the
// final norm and the head, and the loss is taken on the mixture (moe/mixture.hpp).
#include <memory>
#include <variant>

#include "moe/loss.hpp"
#include "moe/mixture.hpp"
#include "moe/moe_layer.hpp"
#include "nn/embedding.hpp"
#include "nn/layers.hpp"

namespace moesim {

struct ModelConfig {
  Index d_in = 16;     // task input width (token tasks: C, the context tokens)
  Index vocab = 0;     // token tasks: V > 0, x holds token ids embedded by a V x De table
  Index embed_dim = 0; // De, token tasks only
  Index d_out = 1;     // task output width (1 for regression, classes otherwise)
  Index d_model = 16;  // D
  Index d_ff = 32;     // F
  int layers = 2;      // L
  int moe_every = 1;   // block l is MoE when (l + 1) % moe_every == 0
  MoeLayerConfig moe;  // E, K, capacity, aux weight, router init (E, K already x M)
  int granularity = 1; // M: fine-grained experts (and shared experts) get F / M hidden units
  MixtureLoss mixture = MixtureLoss::kNone;
  bool classification = false;  // the head's outputs are class logits (the mixture's prediction)
  std::uint64_t seed = 1;
  bool is_moe_block(int l) const { return moe_every > 0 && (l + 1) % moe_every == 0; }
  // Width the input adapter sees: the features, or the C concatenated embeddings.
  Index adapter_in() const { return vocab > 0 ? d_in * embed_dim : d_in; }
  Index expert_d_ff() const { return d_ff / granularity; }
};

struct ParamCounts {
  std::int64_t total = 0;   // every parameter of the model, all experts
  std::int64_t active = 0;  // parameters used by one token (K experts per MoE layer)
  std::int64_t flops_per_token = 0;  // forward multiply-adds x 2 in the matrix products
  // Clark et al. (2022): parameters per forward FLOP per token.
  double param_utilization() const {
    return flops_per_token > 0 ? static_cast<double>(total) / static_cast<double>(flops_per_token) : 0.0;
  }
};
ParamCounts count_params(const ModelConfig& cfg);

template <class T>
class Model {
 public:
  Model(const Communicator& comm, const ModelConfig& cfg);
  // COLLECTIVE (MoE layers exchange tokens).
  void forward(const Mat<T>& x, Mat<T>& out);
  void backward(const Mat<T>& dout);
  // Training or evaluation (router noise, capacity factor), and the step keying the noise.
  void set_mode(bool training, std::int64_t step);
  // Rank-count invariant sums: every product over token rows in blocks of `chunk` global
  // tokens, and every replicated gradient pushed into its parameter's tree, one leaf per
  // block (comm/ordered_sum). 0: one block per rank, gradients added to grad.
  // `expert_chunks`: the leaves of each expert's gradient tree in a whole batch (MoeLayer).
  void set_chunk(Index chunk, Index expert_chunks = 0);
  Index chunk() const { return chunk_; }
  // COLLECTIVE. After forward: the training loss (task loss, or the mixture loss) and its
  // backward pass, normalised by the global token count B_global.
  MixtureLossResult loss_and_backward(const Mat<T>& out, const Batch& batch, bool classification,
                                      std::int64_t B_global);

  ParamList<T> replicated_params();
  ParamList<T> expert_params();
  std::vector<MoeLayer<T>*> moe_layers();
  const ModelConfig& config() const { return cfg_; }
  // The ranks' expert groups (--ep-size), shared by every MoE layer.
  const ExpertGroups& expert_groups() const { return *groups_; }

 private:
  struct Block {
    RmsNorm<T> norm;
    std::unique_ptr<Ffn<T>> dense;
    std::unique_ptr<MoeLayer<T>> moe;
    Mat<T> normed;
  };
  // Blocks [0, end) in reverse, then the adapter; dh: gradient at block end's input.
  void backward_blocks(Mat<T>& dh, std::size_t end);

  ModelConfig cfg_;
  Index chunk_ = 0;
  std::shared_ptr<const ExpertGroups> groups_;
  TokenEmbedding<T> embed_;  // token tasks only (vocab > 0)
  MixtureTail<T> tail_;
  Linear<T> adapter_;
  std::vector<Block> blocks_;
  RmsNorm<T> final_norm_;
  Linear<T> head_;
};

}  // namespace moesim
