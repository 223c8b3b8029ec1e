#pragma once
// The router's per-token work over all E experts in AVX-512 lanes, with the bits of its
// one-token loops. The softmax puts sixteen tokens side by side, one per lane: each runs its
// token's reference arithmetic in the reference's order (sums stay serial per token), and its
// exp is glibc's expf algorithm (the FMA variant libm picks on such a CPU). Top-k takes one
// token at a time, its experts in the lanes. At E = 64 the loops cost a third of the router:
// serial sums and a libm call per value, one token at a time.
//
// A block (or row) the lanes cannot match (a NaN or infinity, or an exp argument past expf's
// ordinary range) is left to the caller's reference loop.
// The fast path runs only on a CPU with AVX-512F whose std::exp gave the lanes' bits in a
// check at first use; elsewhere everything is left to the reference.
#include <vector>

#include "core/tensor.hpp"

namespace moesim {

// Whether blocks are done in lanes here (see above); tests switch it to compare both paths.
bool router_lanes_available();
bool router_lanes_enabled();
// Returns the setting before; enabling where unavailable is an error.
bool use_router_lanes(bool on);

// expf of n values: in lanes (the bits of std::exp(float) when router_lanes_available()),
// each value whose argument is outside the ordinary range through std::exp itself.
void exp_lanes(const float* x, float* y, Index n);

// Softmax over rows t0 .. t0 + 15 of the n x E row-major logits: per token p = exp(l - max) /
// sum, written to probs (float) and probs64 (double) at row t0; lse = max + log sum and the
// entropy -sum p log p (in double, with log p = (l - max) - log sum). `scratch`: at least 32 E
// floats. Returns false, writing nothing, where the block needs the reference.
bool softmax_block16(const float* logits, Index E, float* probs, double* probs64, double* lse, double* entropy,
                     float* scratch);

// The `depth` best experts of one token's E scores, best first, ties to the lower expert
// (select_top_k's order): who[0 .. depth - 1]. Returns false, writing nothing, where a score is
// not finite.
bool top_k_row(const float* scores, Index E, int depth, int* who);

}  // namespace moesim
