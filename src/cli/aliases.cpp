// Megatron-LM's names for `moesim moe` options (docs/options.md#megatron-lm-names). A name
// is mapped only where Megatron's meaning is moesim's; a value with no counterpart is refused
// in one line that names what moesim has instead.
#include "cli/aliases.hpp"

#include <cctype>
#include <cstdint>

#include "core/error.hpp"
#include "moe/gates/registry.hpp"

namespace moesim::cli {

namespace {

using I = std::int64_t;
constexpr std::size_t kMaxBlocks = std::size_t{1} << 20;  // --layers' own limit (cli/moe_config)

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// Megatron's --moe-layer-freq pattern, a Python list expression of 0s and 1s: [1,0,1],
// [0]*2+[1]*2, ([0]*3+[1])*2, 3*[1]. Lengths are bounded before any list is built.
class LayerPattern {
 public:
  explicit LayerPattern(std::string text) : s_(std::move(text)) {}

  std::vector<int> parse() {
    std::vector<int> v = sum(0);
    space();
    if (pos_ != s_.size()) fail();
    return v;
  }

 private:
  [[noreturn]] void fail() const {
    throw ConfigError("--moe-layer-freq '" + s_ + "' is neither 1 nor a list of 0 and 1 per block (e.g. [0,1,0,1], "
                      "([0]*3+[1])*2)");
  }
  void space() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool eat(char c) {
    space();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) fail();
  }
  bool digit() {
    space();
    return pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]));
  }
  std::size_t number() {
    if (!digit()) fail();
    std::size_t n = 0;
    for (; pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_])); ++pos_) {
      n = n * 10 + static_cast<std::size_t>(s_[pos_] - '0');
      if (n > kMaxBlocks) throw ConfigError("--moe-layer-freq: a count in '" + s_ + "' is over " + std::to_string(kMaxBlocks));
    }
    return n;
  }
  static void append(std::vector<int>& v, const std::vector<int>& w) {
    if (v.size() + w.size() > kMaxBlocks) throw ConfigError("--moe-layer-freq: more than " + std::to_string(kMaxBlocks) + " blocks");
    v.insert(v.end(), w.begin(), w.end());
  }
  static std::vector<int> repeat(const std::vector<int>& v, std::size_t n) {
    std::vector<int> out;
    if (!v.empty() && n > kMaxBlocks / v.size())
      throw ConfigError("--moe-layer-freq: more than " + std::to_string(kMaxBlocks) + " blocks");
    for (std::size_t i = 0; i < n; ++i) out.insert(out.end(), v.begin(), v.end());
    return out;
  }
  std::vector<int> sum(int depth) {
    std::vector<int> v = product(depth);
    while (eat('+')) append(v, product(depth));
    return v;
  }
  std::vector<int> product(int depth) {
    std::size_t times = 1;
    if (digit()) {  // 3*[1]
      times = number();
      expect('*');
    }
    std::vector<int> v = repeat(atom(depth), times);
    while (eat('*')) v = repeat(v, number());
    return v;
  }
  std::vector<int> atom(int depth) {
    if (depth > 32) fail();
    if (eat('(')) {
      std::vector<int> v = sum(depth + 1);
      expect(')');
      return v;
    }
    expect('[');
    std::vector<int> v;
    while (!eat(']')) {
      const std::size_t x = number();
      if (x > 1) fail();
      v.push_back(static_cast<int>(x));
      if (v.size() > kMaxBlocks) throw ConfigError("--moe-layer-freq: more than " + std::to_string(kMaxBlocks) + " blocks");
      if (!eat(',')) {
        expect(']');
        break;
      }
    }
    return v;
  }

  std::string s_;
  std::size_t pos_ = 0;
};

// "1, 3, 5 (of 6)": the 1-based MoE blocks of a pattern, the first few.
std::string moe_blocks(const std::vector<int>& p) {
  std::string out;
  int shown = 0;
  for (std::size_t l = 0; l < p.size(); ++l) {
    if (!p[l]) continue;
    if (shown++ == 6) {
      out += ", ...";
      break;
    }
    out += (out.empty() ? "" : ", ") + std::to_string(l + 1);
  }
  return out + " (of " + std::to_string(p.size()) + ")";
}

// Megatron: block l (from 0) is MoE when l % N == 0, or as a list says. moesim: block l is
// MoE when (l + 1) % n == 0 (--moe-every n; 0 = none). They agree for N = 1 and for a list
// that is moesim's pattern.
AliasMeaning layer_freq(const std::string& given) {
  std::string v = trim(given);
  if (v.size() >= 2 && (v.front() == '\'' || v.front() == '"') && v.back() == v.front()) v = trim(v.substr(1, v.size() - 2));
  if (v.find('[') == std::string::npos) {
    MOESIM_CONFIG_CHECK(!v.empty() && v.find_first_not_of("0123456789") == std::string::npos && v.size() < 10 &&
                            std::stoll(v) >= 1,
                        "--moe-layer-freq must be 1 or a list of 0 and 1 per block (got '" << given << "')");
    const I N = std::stoll(v);
    MOESIM_CONFIG_CHECK(N == 1, "--moe-layer-freq " << N << " makes blocks 1, " << N + 1 << ", " << 2 * N + 1
                                << ", ... MoE (Megatron-LM counts from the first block); moesim's --moe-every n makes "
                                   "blocks n, 2n, ... MoE: give --moe-every, or the pattern as a list (e.g. [0,1,0,1])");
    return {{{"moe-every", "1"}}, {}};
  }
  const std::vector<int> p = LayerPattern(v).parse();
  MOESIM_CONFIG_CHECK(!p.empty(), "--moe-layer-freq '" << given << "' lists no blocks");
  std::size_t n = 0;
  while (n < p.size() && !p[n]) ++n;
  n = n == p.size() ? 0 : n + 1;  // first MoE block, 1-based; 0: none
  for (std::size_t l = 0; l < p.size(); ++l)
    MOESIM_CONFIG_CHECK(p[l] == (n > 0 && (l + 1) % n == 0),
                        "--moe-layer-freq '" << given << "' makes blocks " << moe_blocks(p)
                                             << " MoE; moesim's --moe-every n makes every n-th block MoE (blocks n, 2n, "
                                                "...; [0,1,0,1] is --moe-every 2, all 0 is --moe-every 0), not this pattern");
  const I L = static_cast<I>(p.size()), every = static_cast<I>(n);
  return {{{"moe-every", std::to_string(every)}},
          [L, every, given](const po::variables_map& vm) {
            if (!vm.count("layers") || !vm.count("moe-every") || vm["moe-every"].as<I>() != every) return;
            MOESIM_CONFIG_CHECK(vm["layers"].as<I>() == L, "--moe-layer-freq '" << given << "' lists " << L
                                                           << " blocks, --layers is " << vm["layers"].as<I>()
                                                           << ": give one entry per block");
          }};
}

AliasMeaning dispatcher(const std::string& v) {
  if (v == "alltoall") return {{{"dispatch", "alltoallv"}}, {}};
  if (v == "allgather") return {{{"dispatch", "allgather"}}, {}};
  throw ConfigError("--moe-token-dispatcher-type " + v +
                    (v == "flex" ? " (DeepEP's or HybridEP's fused kernels) has no moesim counterpart" : " is not known") +
                    ": moesim maps alltoall (--dispatch alltoallv) and allgather (--dispatch allgather), and "
                    "offers --dispatch p2p and padded");
}

AliasMeaning balancing(const std::string& v) {
  const std::string offered =
      ": moesim maps aux_loss and global_aux_loss (--balance aux), sinkhorn (--gate sbase --balance none) and none "
      "(--balance none), and offers --balance bias (DeepSeek-V3's selection bias)";
  if (v == "aux_loss" || v == "global_aux_loss")
    return {{{"balance", "aux"}}, [v](const po::variables_map& vm) {
              if (!vm.count("gate") || !vm.count("balance") || vm["balance"].as<std::string>() != "aux") return;
              const std::string gate = vm["gate"].as<std::string>();
              MOESIM_CONFIG_CHECK(gate_traits(parse_gate(gate)).switch_loss,
                                  "--moe-router-load-balancing-type " << v << " is the Switch loss, which --gate " << gate
                                      << " does not use (--balance aux gives it its own losses or none): take --gate "
                                         "topk, switch or sbase, or give --balance");
            }};
  if (v == "none") return {{{"balance", "none"}}, {}};
  if (v == "sinkhorn")
    return {{{"gate", "sbase"}, {"balance", "none"}}, [](const po::variables_map& vm) {
              if (!vm.count("gate") || !vm.count("top-k") || vm["gate"].as<std::string>() != "sbase") return;
              MOESIM_CONFIG_CHECK(vm["top-k"].as<I>() != 1,
                                  "--moe-router-load-balancing-type sinkhorn with top-k 1 weighs a token by "
                                  "sigmoid(logit) in Megatron-LM, by its softmax probability in moesim's --gate sbase: "
                                  "give --gate sbase --balance none to run moesim's");
            }};
  throw ConfigError("--moe-router-load-balancing-type " + v +
                    (v == "seq_aux_loss" ? " (a loss per sequence) has no moesim counterpart" : " is not known") + offered);
}

// Megatron-LM's probs keeps an expert's assignments with the largest routing probability
// (its gate weight), as moesim's probs does. Its position keeps each expert's tokens in
// sequence order whatever the choice; moesim's position takes first choices before second
// ones (GShard): the same with one choice per token only.
AliasMeaning token_drop(const std::string& v) {
  if (v == "probs") return {{{"drop-policy", "probs"}}, {}};
  if (v == "position")
    return {{{"drop-policy", "position"}}, [](const po::variables_map& vm) {
              if (!vm.count("top-k") || !vm.count("granularity") || !vm.count("drop-policy") ||
                  vm["drop-policy"].as<std::string>() != "position")
                return;
              MOESIM_CONFIG_CHECK(vm["top-k"].as<I>() * vm["granularity"].as<I>() == 1,
                                  "--moe-token-drop-policy position keeps each expert's tokens in sequence order in "
                                  "Megatron-LM, whatever the choice; moesim's --drop-policy position takes every first "
                                  "choice before any second one (GShard), which differs with top-k > 1: give "
                                  "--drop-policy position to run moesim's");
            }};
  throw ConfigError("--moe-token-drop-policy " + v + " is not known: moesim maps probs (--drop-policy probs) and, "
                    "with top-k 1, position (--drop-policy position)");
}

struct AliasSpec {
  const char* name;
  const char* target;                           // the moesim option it equals, value as given
  AliasMeaning (*meaning)(const std::string&);  // or what each value means
  const char* help;
};

const AliasSpec kAliases[] = {
    {"num-experts", "experts", nullptr, "= --experts"},
    {"moe-router-topk", "top-k", nullptr, "= --top-k"},
    {"moe-aux-loss-coeff", "aux-loss-weight", nullptr, "= --aux-loss-weight (the Switch loss, per MoE layer)"},
    {"moe-z-loss-coeff", "z-loss", nullptr, "= --z-loss"},
    {"moe-layer-freq", nullptr, layer_freq,
     "1 = --moe-every 1; a list of 0 and 1 per block ([0,1]*2) = --moe-every n where it is moesim's pattern "
     "(blocks n, 2n, ...); Megatron's N > 1 counts from the first block and is refused"},
    {"moe-token-dispatcher-type", nullptr, dispatcher,
     "alltoall = --dispatch alltoallv, allgather = --dispatch allgather (flex: refused)"},
    {"moe-router-load-balancing-type", nullptr, balancing,
     "aux_loss, global_aux_loss = --balance aux; sinkhorn = --gate sbase --balance none (top-k > 1); none = "
     "--balance none (seq_aux_loss: refused)"},
    {"expert-model-parallel-size", "ep-size", nullptr, "= --ep-size"},
    {"moe-expert-capacity-factor", "capacity-factor", nullptr,
     "= --capacity-factor (over the global batch; Megatron's default, none, is moesim's 0: dropless)"},
    {"moe-token-drop-policy", nullptr, token_drop,
     "probs = --drop-policy probs; position = --drop-policy position (top-k 1 only: Megatron keeps sequence order)"},
    {"moe-input-jitter-eps", "router-jitter", nullptr, "= --router-jitter (moesim: training steps only)"},
    {"moe-router-score-function", "score-function", nullptr, "= --score-function (softmax or sigmoid, --gate topk)"},
};

const AliasSpec* find(const std::string& name) {
  for (const AliasSpec& a : kAliases)
    if (name == a.name) return &a;
  return nullptr;
}

}  // namespace

po::options_description megatron_aliases() {
  po::options_description d("Megatron-LM names (the moesim option is recorded; docs/options.md)");
  for (const AliasSpec& a : kAliases) d.add_options()(a.name, po::value<std::string>(), a.help);
  return d;
}

bool is_alias(const std::string& name) { return find(name) != nullptr; }

AliasMeaning alias_meaning(const std::string& name, const std::string& value) {
  const AliasSpec* a = find(name);
  MOESIM_REQUIRE(a != nullptr, "'" << name << "' is not an alias");
  if (a->target) return {{{a->target, value}}, {}};
  return a->meaning(trim(value));
}

}  // namespace moesim::cli
