// The options of `moesim moe`, grouped as --help shows them (the letters as in README: E, K,
// D, F, L, B), and the Megatron-LM names it accepts (cli/aliases).
#include "cli/moe_options.hpp"

#include <cstdint>

#include "cli/aliases.hpp"
#include "cli/task_options.hpp"

namespace moesim::cli {

using I = std::int64_t;

po::options_description moe_options() {
  po::options_description model("Model (letters as in README: E experts, K top-k, D, F, L)");
  model.add_options()
      ("experts", po::value<I>()->default_value(8), "E: experts per MoE layer (divisible by --ep-size)")
      ("shared-experts", po::value<I>()->default_value(0), "always-active experts per MoE layer, replicated on every rank (DeepSeekMoE)")
      ("granularity", po::value<I>()->default_value(1),
       "M: split each expert into M smaller ones: E -> E*M, K -> K*M, expert F -> F/M (DeepSeekMoE)")
      ("d-model", po::value<I>()->default_value(32), "D: model width")
      ("d-ff", po::value<I>()->default_value(64), "F: hidden width of each expert (and dense FFN)")
      ("layers", po::value<I>()->default_value(2), "L: residual blocks")
      ("moe-every", po::value<I>()->default_value(1), "every n-th block is an MoE block (blocks n, 2n, ...; 1 = all, 0 = none)")
      ("mixture-loss", po::value<std::string>()->default_value("none"),
       "none | global (loss of the mixture sum_k g_k f_k: experts collapse) | per-expert (sum_k g_k loss(f_k): experts "
       "specialise); needs --gate dense or constant, the last block's experts each predict through the head")
      ("precision", po::value<std::string>()->default_value("fp32"), "fp32 | fp64 for the whole model")
      ("seed", po::value<I>()->default_value(1), "seed of the model: initialisation, router noise, hash projections");

  po::options_description routing("Routing");
  routing.add_options()
      ("top-k", po::value<I>()->default_value(2), "K: experts per token, 1 <= K <= E")
      ("gate", po::value<std::string>()->default_value("topk"),
       "topk (softmax over the K chosen logits; with K = 1 the gate is constant unless --router-pre-softmax) | switch (K = 1, gate = softmax "
       "probability) | noisy-topk (Shazeer 2017: top-k of logits plus learned Gaussian noise) | expert-choice "
       "(each expert takes its C best tokens) | hash (fixed map, see --hash-key) | sbase (top-k of a Sinkhorn-"
       "balanced plan, gate = softmax probability) | dense (every expert, weighted by the softmax; K and capacity do "
       "not apply) | constant (every expert, weight 1/E, no router)")
      ("capacity-factor", real(1.25),
       "C: expert capacity = ceil(C * B * K / E) slots over the global batch (0 = dropless)")
      ("eval-capacity-factor", po::value<double>(), "capacity factor for validation (default: --capacity-factor)")
      ("min-capacity", po::value<I>()->default_value(0),
       "every expert capacity is at least this many slots (with a capacity factor > 0; 0 = no minimum)")
      ("drop-policy", po::value<std::string>()->default_value("position"),
       "which assignments an expert over capacity keeps: position (first choices before second, each in global "
       "token order) | probs (the largest gate weights, ties to the lower global token; Megatron-LM's probs)")
      ("score-function", po::value<std::string>()->default_value("softmax"),
       "topk: softmax (of the logits) | sigmoid (DeepSeek-V3: the K largest sigmoid(logit) (+ bias) are chosen, "
       "gate = their scores normalised to sum 1 when K > 1)")
      ("router-jitter", real(0.0),
       "eps: while training, multiply the router's input by U(1 - eps, 1 + eps) per token and feature (Switch "
       "Transformer; 0 = off)")
      ("router-pre-softmax", po::bool_switch()->default_value(false),
       "topk: weight the K chosen experts by their softmax over all E logits, not renormalised (Megatron's "
       "pre-softmax; with K = 1 the router then learns from the task loss)")
      ("router-precision", po::value<std::string>()->default_value("fp32"),
       "fp32 | fp64: router logits, softmax, selection and gradients in fp64 even in an fp32 model")
      ("router-init-scale", real(0.1), "router weights ~ N(0, scale / D)")
      ("z-loss", real(0.0), "weight of the router z-loss (ST-MoE) per MoE layer")
      ("sinkhorn-iters", po::value<I>()->default_value(8), "sbase: Sinkhorn iterations over the global batch")
      ("hash-key", po::value<std::string>()->default_value("input"),
       "hash: input (signs of 16 fixed random projections of the layer input) | position (global token index in the batch)");

  po::options_description balancing("Balancing");
  balancing.add_options()
      ("balance", po::value<std::string>()->default_value("aux"),
       "aux (the gate's auxiliary loss: Switch's, or noisy-topk's importance and load losses) | bias (DeepSeek-V3: "
       "per-expert bias added to the logits for selection only, moved by the load each step) | none")
      ("aux-loss-weight", real(0.01), "weight of the Switch load-balancing loss per MoE layer")
      ("bias-update-rate", real(1e-3), "--balance bias: b_e += rate * sign(mean load - load_e) per step")
      ("importance-loss-weight", real(0.1), "noisy-topk: weight of CV(importance)^2 per MoE layer")
      ("load-loss-weight", real(0.1), "noisy-topk: weight of CV(smooth load)^2 per MoE layer");

  po::options_description parallelism("Parallelism (P ranks)");
  parallelism.add_options()
      ("ep-size", po::value<I>(),
       "N: expert-data parallelism. The P ranks form P/N groups of N consecutive ranks; each group holds all E "
       "experts (E/N per rank) and exchanges tokens only inside itself, the replicas of an expert (one per group) "
       "sum their gradients. N must divide P and E; default gcd(E, P) (N = P when E is divisible by P)")
      ("dispatch", po::value<std::string>()->default_value("alltoallv"),
       "token exchange: alltoallv (counts by all-to-all, then Alltoallv) | allgather (count matrix by all-gather, "
       "then Alltoallv) | p2p (Isend/Irecv per rank and expert) | padded (fixed slots, one equal-split Alltoall) | "
       "hierarchical (inside each node, then one aggregated message between the same local ranks of two nodes) | "
       "nccl (counts by all-to-all, then rows between the ranks' GPUs by NCCL send/recv; needs a GPU per rank)")
      ("device", po::value<std::string>()->default_value("cpu"),
       "cpu | cuda: the experts' FFN forward and backward (cuBLAS GEMMs, bias and GELU kernels) on each rank's "
       "GPU, one GPU per rank (by local rank), fp32; routing, parameters, optimizer, run file and checkpoints stay "
       "the CPU path's. Needs a build with CUDA and a GPU on every rank, else one error line and exit 2")
      ("expert-placement", po::value<std::string>()->default_value("contiguous"),
       "which experts each rank of an expert group holds: contiguous (rank r: experts [r E/N, (r+1) E/N)) | "
       "round-robin (expert e on rank e mod N) | the E experts (x granularity) listed slot by slot, e.g. 4,5,0,1,6,7,2,3 "
       "(rank r holds the r-th E/N of them; `moesim_analysis simulate --suggest-placement` proposes one that keeps "
       "nodes' likely experts on them); results are the same bits whatever the placement")
      ("ranks-per-node", po::value<I>()->default_value(0),
       "G: nodes are G consecutive ranks (virtual nodes: one machine runs every multi-node path; must divide P). "
       "0: the ranks that share memory. Decides what --dispatch hierarchical aggregates, what counts as inter-node "
       "traffic, and the run file's nodes and ranks_per_node")
      ("chunk-tokens", po::value<I>()->default_value(64),
       "C: rank-count invariant sums: products over tokens run in blocks of C global tokens and gradients "
       "are summed in one tree over the blocks, so losses, metrics and the model are bit-identical on any "
       "power-of-two rank count dividing B / C (B / C a power of two, C a multiple of 8, one expert group); "
       "the run file's bit_identical says whether they hold (0 = off: layout-dependent sums)")
      ("expert-chunks", po::value<I>()->default_value(0),
       "leaves of each expert's gradient per batch (runs of whole token chunks; a power of two dividing "
       "B / C); bit-identity needs each expert's replica groups P / ep-size to divide it. 0: B / C / "
       "gcd(E, B / C), enough for the default ep-size on every rank count and one block per expert when "
       "E >= B / C (few leaves are cheap: each costs a product and a tree node per expert)")
      ("blas-threads", po::value<I>()->default_value(1), "OpenBLAS threads per rank");

  po::options_description optimiser("Optimiser (S steps of B tokens)");
  optimiser.add_options()
      ("steps", po::value<I>()->default_value(200), "S: optimizer steps")
      ("batch-tokens", po::value<I>()->default_value(1024), "B: tokens per step over all ranks")
      ("lr", real(3e-3), "Adam learning rate (the peak of the schedule)")
      ("lr-warmup-steps", po::value<I>()->default_value(0),
       "W: linear warmup, step s <= W uses lr * s / W (0 = none)")
      ("lr-decay", po::value<std::string>()->default_value("constant"),
       "after the warmup: constant (lr) | linear | cosine (from lr at step W to --min-lr at the last step)")
      ("min-lr", real(0.0), "learning rate at the last step of a linear or cosine decay")
      ("adam-beta1", real(0.9), "Adam's first-moment decay, in [0, 1)")
      ("adam-beta2", real(0.999), "Adam's second-moment decay, in [0, 1)")
      ("adam-eps", real(1e-8), "Adam's epsilon, > 0")
      ("weight-decay", real(0.0), "decoupled weight decay (AdamW)")
      ("grad-clip", real(1.0), "clip the global gradient norm to this (0 = off)");

  po::options_description task("Task");
  task.add_options()
      ("task", po::value<std::string>()->default_value("regimes"),
       "regimes (clustered regression/classification) | teacher (learn a random MoE) | lm (next-byte language modelling) | "
       "binned (a supervised-gate mixture of stacking learners: moe --task binned --help)")
      ("problem", po::value<std::string>()->default_value("regression"), "regression (MSE) | classification (cross-entropy)")
      ("classes", po::value<I>()->default_value(4), "classes for --problem classification")
      ("data-seed", po::value<I>()->default_value(1),
       "seed of the task: regimes clusters, functions and noise, the teacher (unless --teacher-seed) and its "
       "inputs, lm positions, the training and validation streams")
      ("val-tokens", po::value<I>()->default_value(4096), "validation tokens (a separate stream)")
      ("eval-every", po::value<I>()->default_value(0), "validate every n steps as well as at the end (0 = end only)")
      ("input-dim", po::value<I>()->default_value(16), "input features of the regimes task")
      ("clusters", po::value<I>()->default_value(8), "regimes: clusters, each with its own function and noise")
      ("noise-min", real(0.01), "regimes: noise of the cleanest cluster")
      ("noise-max", real(0.5), "regimes: noise of the noisiest cluster");
  add_task_options(task);

  po::options_description output("Output");
  output.add_options()
      ("out", po::value<std::string>()->default_value("moe_run.h5"), "run file (HDF5) to write")
      ("flush-every", po::value<I>()->default_value(0), "steps between run-file flushes (0: by --flush-seconds only)")
      ("flush-seconds", real(10.0),
       "also flush the run file once this many seconds have passed since the last flush (0: off)")
      ("progress-interval", real(2.0), "seconds between progress lines on rank 0")
      ("quiet", po::bool_switch()->default_value(false), "no progress lines or summary");

  po::options_description checkpointing("Checkpointing");
  checkpointing.add_options()
      ("checkpoint", po::value<std::string>()->default_value(""),
       "checkpoint file (HDF5): the whole training state, written at the end, when a signal stops the run "
       "and every --checkpoint-every steps (empty = none)")
      ("checkpoint-every", po::value<I>()->default_value(0), "steps between checkpoints (0 = only when stopped and at the end)")
      ("resume", po::bool_switch()->default_value(false),
       "continue from --checkpoint if that file exists (on any valid rank count and --ep-size); start afresh if it does not");

  po::options_description d;
  d.add(model).add(routing).add(balancing).add(parallelism).add(optimiser).add(task).add(output).add(checkpointing)
      .add(megatron_aliases());
  return d;
}

}  // namespace moesim::cli
