#include "train/memory_estimate.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <sys/resource.h>

namespace moesim {

MemoryEstimate estimate_memory(const ModelConfig& c, std::int64_t batch_tokens, std::int64_t val_tokens, int ranks,
                               int value_bytes) {
  const double D = static_cast<double>(c.d_model), F = static_cast<double>(c.d_ff),
               Fe = static_cast<double>(c.expert_d_ff()), E = c.moe.experts, P = ranks;
  const double N = c.moe.ep_size_for(ranks);
  const double expert = static_cast<double>(Ffn<float>::param_count(c.d_model, c.expert_d_ff()));
  const double all = static_cast<double>(count_params(c).total);
  int moe_layers = 0;
  for (int l = 0; l < c.layers; ++l) moe_layers += c.is_moe_block(l);
  // Every parameter but the experts is on every rank; a rank holds E / N experts per layer.
  const double held = all - moe_layers * E * expert + moe_layers * (E / N) * expert;
  MemoryEstimate m;
  m.parameters = 4 * held * value_bytes;  // value, gradient, Adam's two moments
  // Per token and block: the block's input, norm and output, and the FFN hidden units (an
  // MoE block's experts see a token once per choice it keeps: at most K, and any capacity
  // factor only drops choices).
  const double tokens = std::ceil(static_cast<double>(std::max(batch_tokens, val_tokens)) / P);
  const double K = std::max(1, gate_uses_all_experts(c.moe.gate) ? c.moe.experts : c.moe.top_k);
  double per_token = static_cast<double>(c.adapter_in() + c.d_out) + D;
  for (int l = 0; l < c.layers; ++l)
    per_token += c.is_moe_block(l) ? 3 * D + 2 * E + K * (2 * D + 2 * Fe) : 3 * D + 2 * F;
  m.activations = tokens * per_token * value_bytes;
  return m;
}

namespace {

double meminfo_available() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  double kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}

double cgroup_room() {
  std::ifstream max_in("/sys/fs/cgroup/memory.max"), cur_in("/sys/fs/cgroup/memory.current");
  std::string max_text;
  double cur = 0;
  if (!(max_in >> max_text) || max_text == "max" || !(cur_in >> cur)) return 0;
  return std::max(0.0, std::stod(max_text) - cur);
}

}  // namespace

double memory_per_rank(const Communicator& comm) {
  double avail = meminfo_available();
  const double room = cgroup_room();
  if (room > 0) avail = avail > 0 ? std::min(avail, room) : room;
  return avail / std::max(1, comm.ranks_on_this_node());
}

std::string human_bytes(double b) {
  char buf[32];
  if (b >= 1024.0 * 1024 * 1024) std::snprintf(buf, sizeof buf, "%.1f GiB", b / (1024.0 * 1024 * 1024));
  else if (b >= 1024.0 * 1024) std::snprintf(buf, sizeof buf, "%.0f MiB", b / (1024.0 * 1024));
  else std::snprintf(buf, sizeof buf, "%.0f KiB", b / 1024.0);
  return buf;
}

double peak_resident_bytes(const Communicator& comm) {
  rusage u{};
  const int rc = getrusage(RUSAGE_SELF, &u);
  MOESIM_REQUIRE(rc == 0, "getrusage failed");
  return comm.allreduce_max(static_cast<double>(u.ru_maxrss) * 1024.0);  // Linux: KiB
}

void check_memory(const Communicator& comm, const MemoryEstimate& need) {
  // The smallest room any rank has decides, so every rank reaches the same verdict.
  double have = memory_per_rank(comm);
  if (have <= 0) have = 1e300;  // unknown: do not refuse
  double v[1] = {-have};
  comm.allreduce_max(v, 1);
  have = -v[0];
  std::ostringstream why;
  why << "this run needs at least " << human_bytes(need.total()) << " per rank (parameters with gradients and Adam "
      << human_bytes(need.parameters) << ", activations " << human_bytes(need.activations) << ") but has about "
      << human_bytes(have) << " per rank here: lower --experts, --d-ff, --batch-tokens or --val-tokens, or use more ranks";
  comm.agree_or_throw(need.total() <= have, why.str());
}

}  // namespace moesim
