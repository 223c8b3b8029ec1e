"""A network cost model for moesim's expert-parallel all-to-all exchanges.

From a run's routing (metrics/rank_expert_tokens) it builds the bytes each rank sends to each
rank in one training step, for any rank count P', expert group size N' (--ep-size) and expert
placement, and prices the exchanges with an alpha-beta model on a described cluster for four
all-to-all algorithms (pairwise exchange, Bruck, a leader per node, and the two-stage exchange
`--dispatch hierarchical` runs), and the all-reduce of expert
gradients across the replica groups. `python3 -m moesim_analysis simulate RUN.h5 ...` prints the prediction,
`python3 -m moesim_analysis calibrate RUNS...` fits the intra-node link to measured runs and reports
the prediction error. The assumptions (also printed by `simulate --assumptions`):
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .load import _py, open_h5, run_files

ASSUMPTIONS = """\
Cost model assumptions (moesim_analysis/costmodel.py):
 1. Traffic. metrics/rank_expert_tokens[s, p, e] counts the token rows rank p sent to expert e
    at step s (kept assignments, summed over MoE layers). Rank j receives the rows of the
    experts it holds, from the ranks of its expert group (11). Every MoE layer runs four exchanges of rows of token_bytes = D x the
    size of one number (final/token_bytes): forward dispatch (i -> owner of the expert),
    forward combine (the reverse way), backward dispatch of output gradients (as forward
    dispatch) and backward combine of input gradients (as forward combine). So one step sends
    bytes(i -> j) = token_bytes x (2 T[i, j] + 2 T[j, i]), T[i, j] = rows of rank i for experts
    on rank j. The diagonal (a rank's own rows) is a local copy and costs nothing. This is
    what moesim's alltoallv, allgather and p2p dispatches move; --dispatch padded sends
    fixed-size slots instead (its extra bytes are metrics/padding_bytes) and is not modelled.
 2. Projection to P' ranks. The routing distribution is the run's assignments per expert,
    summed over source ranks and averaged over steps. Each of the P' ranks holds B'/P' tokens
    (B' = the run's batch B, or P' x --tokens-per-rank) with that same distribution, so rank
    i sends (rows per step for expert e) / P' rows to expert e; rows per step scale with B'/B
    (same K and drop rate). Inside each expert group of N' ranks (11) experts are placed in
    contiguous blocks of E'/N' (group rank r holds [r E'/N', (r+1) E'/N'), as moesim does) or
    round-robin (e on group rank e mod N'); E' must be divisible by N' and N' must divide P'.
    With --experts-per-rank m, E' = m P' and the run's load profile over
    expert index is stretched or squeezed: expert k of E' takes the share of the run's
    experts between k/E' and (k+1)/E' of the index range (piecewise-linear cumulative share),
    so a run expert split into f children gives each 1/f of its load.
 3. Exchanges priced. Each MoE layer's routing is the step total divided by the number of MoE
    layers (the file sums layers). A step's exchange time is, per MoE layer, one all-to-all of
    the per-expert counts (E'/N' 4-byte integers per rank pair) plus two exchanges of the
    dispatch matrix and two of its transpose, each a separate collective priced on its own
    (each pays its own latencies).
 4. Links (alpha-beta). A message of b bytes between ranks i and j costs alpha + b / beta,
    with intra-node (alpha, beta) when i and j are on one node (node = rank // ranks_per_node)
    and inter-node parameters otherwise. Zero-byte messages still pay alpha. A rank sends one
    and receives one message at a time; link contention, NIC sharing between the ranks of a
    node, topology, protocol switches (eager/rendezvous) and overlap with compute are ignored.
 5. Pairwise exchange: P'-1 rounds; in round k rank i sends its block to (i + k) mod P'. A
    round costs the maximum over its messages; the exchange costs the sum of its rounds.
 6. Bruck: ceil(log2 P') rounds; in round k rank i sends to (i + 2^k) mod P' every block it
    currently holds whose destination offset (dst - src) mod P' has bit k set (blocks travel by
    the bits of their offset, low bits first, so with uniform blocks each round carries about
    half of the data). The local rotations before and after are ignored. Round cost = maximum
    over ranks of alpha + bytes / beta of the link to i + 2^k.
 7. Leader: one leader per node (its first rank). (a) Intra-node gather: every other rank
    of the node sends the leader all its off-rank data, one message each, received one after
    another (the gather costs the sum of those messages); (b) the leaders run a pairwise
    exchange over the inter-node links, node n sending node m one aggregated message of all
    bytes from n's ranks to m's ranks (nodes - 1 rounds); (c) intra-node scatter: the leader
    sends every other rank of its node all the data bound for it, one after another. Each
    phase costs its slowest node; the phases add. A last node may hold fewer ranks.
 7b. Hierarchical (what `moesim moe --dispatch hierarchical` runs, Tutel's 2D-hierarchical
    all-to-all): ranks sit on nodes of G consecutive ranks, rank (n, l) = n G + l. (a) Intra
    stage: (n, l) sends (n, l') everything bound for the ranks (m, l') of every node m, a
    pairwise exchange inside each node (G - 1 rounds, the nodes in parallel); (b) inter stage:
    (n, l') sends (m, l') the rows of all of node n's ranks bound for (m, l'), a pairwise
    exchange among the nodes for each local index l' (nodes - 1 rounds, the G exchanges in
    parallel: they share a node's NIC, which 4 ignores). The counts travel the same way first.
    Per exchange it sends nodes x (nodes - 1) x G messages across nodes (the flat exchanges
    send P x (P - G)); every row crosses nodes once either way. An expert group must cover
    whole nodes or lie inside one.
 8. Calibration (`calibrate`): on one node every message is intra-node, so the pairwise time
    of a step is n_rounds x alpha + (sum over rounds of the largest message) / beta, linear in
    (alpha, 1/beta). Both (kept positive) are fitted by least squares of log(predicted /
    measured) to the measured metrics/a2a_seconds of runs on this machine (one point per run:
    the medians over steps after step 1, or every step with --per-step; --fit-ranks picks the
    runs fitted). The error reported is (predicted - measured) / measured of the median
    seconds per step, in sample and held out (the run left out of the fit, or not in it).
    The prediction is pairwise whatever algorithm the MPI library chose for MPI_Alltoallv.
    metrics/a2a_seconds is the exchanges' transfer: per layer and phase the least time any
    rank spent inside it (the last rank to arrive waits for no one); the time ranks wait there
    for a more loaded rank is metrics/a2a_wait_seconds, left out of the fit, so imbalance is
    not fitted as bandwidth. With more ranks than cores or a busy machine it still holds time
    slicing by the OS scheduler, which the model does not describe.
 9. Reconstruction check: at the run's own P and placement the step matrix of (1)
    is compared with the run's metrics/traffic (off-diagonal totals over all steps).
10. Rows are averages, not integers: with B'/P' below one token per rank the projection still
    spreads fractional rows evenly (use --tokens-per-rank to scale the batch with P').
11. Expert groups (--ep-size N). The P ranks form P/N groups of N consecutive ranks (group g =
    ranks [gN, (g+1)N)); each group holds all E experts and a rank's rows go only to ranks of
    its own group, so every exchange of (3) is P/N all-to-alls of N ranks, one per group, run
    at the same time: an exchange costs its slowest group (groups sharing a link or a NIC do
    not slow each other, as in 4). The run's N is the root attribute effective_ep_size (files
    without it: N = P). Projected to P' ranks, N' is the run's --ep-size when it was given
    (it must divide P' and E'), otherwise moesim's default gcd(E', P'). With N = 1 nothing
    crosses ranks and the exchanges cost nothing.
12. Expert-gradient all-reduce (column expert_allreduce_s, once per step, not part of the
    all-to-all columns). With G = P/N > 1 the G ranks holding the same experts (ranks r,
    r + N, ..., r + (G-1)N) sum their expert gradients, E/N experts x the parameters of one
    expert over the MoE layers (2 D F_e + F_e + D each, F_e = effective_d_ff) x the bytes of a
    number, by a ring all-reduce: 2(G-1) rounds, in each every rank sends 1/G of the bytes to
    the next rank of its ring; a round costs its slowest message over all rings. The
    all-reduce of the replicated parameters, over all P ranks whatever N, is not modelled.
"""
__doc__ += "\n" + ASSUMPTIONS

ALGORITHMS = ("pairwise", "bruck", "leader", "hierarchical")
PLACEMENTS = ("contiguous", "round-robin")
COUNT_BYTES = 4  # the per-expert counts exchanged before each dispatch are C ints


@dataclass(frozen=True)
class Cluster:
    """Where the ranks run: nodes of `ranks_per_node`; bandwidths in bytes/s, latencies in s."""
    ranks_per_node: int = 1
    intra_bw: float = 50e9
    inter_bw: float = 12.5e9
    intra_latency: float = 1e-6
    inter_latency: float = 2e-6

    def __post_init__(self):
        if self.ranks_per_node < 1:
            raise ValueError("ranks_per_node must be >= 1")
        for name in ("intra_bw", "inter_bw"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("intra_latency", "inter_latency"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")

    def message_cost(self, src, dst, nbytes):
        """alpha + bytes/beta of messages src -> dst (arrays broadcast)."""
        same = (np.asarray(src) // self.ranks_per_node) == (np.asarray(dst) // self.ranks_per_node)
        return np.where(same, self.intra_latency + np.asarray(nbytes, float) / self.intra_bw,
                        self.inter_latency + np.asarray(nbytes, float) / self.inter_bw)

    def describe(self) -> str:
        return (f"{self.ranks_per_node} ranks/node; intra-node {self.intra_bw / 1e9:g} GB/s, "
                f"{self.intra_latency * 1e6:g} us; inter-node {self.inter_bw / 1e9:g} GB/s, "
                f"{self.inter_latency * 1e6:g} us")


# --- one exchange -------------------------------------------------------------------------

def _rank_ids(P: int, ranks) -> np.ndarray:
    """The world ranks of the rows of an exchange among P ranks (default 0..P-1); nodes follow them."""
    return np.arange(P) if ranks is None else np.asarray(ranks)


def pairwise_round_costs(M: np.ndarray, cluster: Cluster, ranks=None) -> np.ndarray:
    """Seconds of each of the P-1 rounds of a pairwise exchange of M (M[i, j] = bytes i sends j)
    among the world ranks `ranks` (default 0..P-1)."""
    P = M.shape[0]
    i = np.arange(P)
    w = _rank_ids(P, ranks)
    out = np.empty(max(P - 1, 0))
    chunk = max(1, (1 << 22) // max(P, 1))  # rounds per vectorised batch, bounded memory
    for k0 in range(1, P, chunk):
        k = np.arange(k0, min(P, k0 + chunk))
        J = (i[None, :] + k[:, None]) % P
        out[k - 1] = cluster.message_cost(w[i][None, :], w[J], M[i[None, :], J]).max(axis=1)
    return out


def pairwise_time(M: np.ndarray, cluster: Cluster, ranks=None) -> float:
    """Pairwise exchange of the byte matrix M (diagonal ignored): the sum of its rounds."""
    return float(pairwise_round_costs(M, cluster, ranks).sum())


def _offset_blocks(M: np.ndarray) -> np.ndarray:
    """D[s, d] = M[s, (s + d) mod P]: blocks by source and destination offset."""
    P = M.shape[0]
    i = np.arange(P)
    return M[i[:, None], (i[:, None] + i[None, :]) % P]


def bruck_round_bytes(M: np.ndarray) -> list[np.ndarray]:
    """Bytes each rank sends in each Bruck round (list over rounds of length-P arrays)."""
    P = M.shape[0]
    rounds = max(0, math.ceil(math.log2(P))) if P > 1 else 0
    width = 1 << rounds
    D = np.zeros((P, width))
    D[:, :P] = _offset_blocks(M)
    i = np.arange(P)
    out = []
    for k in range(rounds):
        step = 1 << k
        # offset d = q*step + low: sent in round k when q is odd; before round k it has
        # travelled `low` ranks, so it sits on rank src + low.
        S = D.reshape(P, width // step, step)[:, 1::2, :].sum(axis=1)  # (src, low)
        low = np.arange(step)
        src = (i[:, None] - low[None, :]) % P
        out.append(S[src, low[None, :]].sum(axis=1))
    return out


def bruck_time(M: np.ndarray, cluster: Cluster, ranks=None) -> float:
    P = M.shape[0]
    i = np.arange(P)
    w = _rank_ids(P, ranks)
    total = 0.0
    for k, msg in enumerate(bruck_round_bytes(M)):
        total += float(np.max(cluster.message_cost(w[i], w[(i + (1 << k)) % P], msg)))
    return total


def leader_phases(M: np.ndarray, cluster: Cluster, ranks=None) -> dict:
    """Seconds of the gather, leader exchange and scatter phases of the leader-based exchange
    among the world ranks `ranks` (default 0..P-1; a node may hold only some of them)."""
    P = M.shape[0]
    node = _rank_ids(P, ranks) // cluster.ranks_per_node
    _, leader_row, node_of = np.unique(node, return_index=True, return_inverse=True)
    nodes = len(leader_row)
    off = np.array(M, float)
    np.fill_diagonal(off, 0.0)
    local = np.ones(P, bool)
    local[leader_row] = False  # ranks other than their node's leader (its first rank here)

    def serial_at_leader(nbytes):
        per_msg = np.where(local, cluster.intra_latency + nbytes / cluster.intra_bw, 0.0)
        return float(np.bincount(node_of, per_msg, minlength=nodes).max())

    gather = serial_at_leader(off.sum(axis=1))
    scatter = serial_at_leader(off.sum(axis=0))
    A = np.zeros((nodes, nodes))
    np.add.at(A, (node_of[:, None], node_of[None, :]), off)
    n = np.arange(nodes)
    exchange = 0.0
    for k in range(1, nodes):
        exchange += float(np.max(cluster.inter_latency + A[n, (n + k) % nodes] / cluster.inter_bw))
    return {"gather": gather, "exchange": exchange, "scatter": scatter}


def leader_time(M: np.ndarray, cluster: Cluster, ranks=None) -> float:
    return sum(leader_phases(M, cluster, ranks).values())


def _node_blocks(P: int, cluster: Cluster, ranks=None) -> int:
    """G of the two-stage exchange among `ranks`: their nodes' size when they cover whole nodes of
    consecutive ranks, P when they lie inside one node (ValueError otherwise)."""
    w = _rank_ids(P, ranks)
    G = cluster.ranks_per_node
    if np.all(w // G == w[0] // G):
        return P
    if P % G or w[0] % G or not np.array_equal(w, w[0] + np.arange(P)):
        raise ValueError(f"the hierarchical exchange needs its {P} ranks to cover whole nodes of {G} "
                         "consecutive ranks or lie inside one")
    return G


def hierarchical_stages(M: np.ndarray, cluster: Cluster, ranks=None) -> dict:
    """The two-stage exchange of M among `ranks` as `--dispatch hierarchical` runs it: seconds of
    the intra- and inter-node stages, the bytes each sends to other ranks, and the non-empty
    messages between ranks of different nodes (assumption 7b)."""
    M = np.asarray(M, float)
    P = M.shape[0]
    w = _rank_ids(P, ranks)
    G = _node_blocks(P, cluster, ranks)
    nodes = P // G
    R = M.reshape(nodes, G, nodes, G)  # [n, l, m, l']
    S1 = R.sum(axis=2)  # [n, l, l']: (n, l) -> (n, l')
    S2 = R.sum(axis=1)  # [n, m, l']: (n, l') -> (m, l')
    rounds = np.zeros(max(G - 1, 0))
    for n in range(nodes):
        rounds = np.maximum(rounds, pairwise_round_costs(S1[n], cluster, w[n * G:(n + 1) * G]))
    intra = float(rounds.sum())
    rounds = np.zeros(max(nodes - 1, 0))
    for lp in range(G):
        rounds = np.maximum(rounds, pairwise_round_costs(S2[:, :, lp], cluster, w[lp::G]))
    inter = float(rounds.sum())
    off1 = S1.copy()
    off1[:, np.arange(G), np.arange(G)] = 0.0
    off2 = S2.copy()
    off2[np.arange(nodes), np.arange(nodes), :] = 0.0
    return {"intra": intra, "inter": inter, "intra_bytes": float(off1.sum()), "inter_bytes": float(off2.sum()),
            "inter_messages": int(np.count_nonzero(off2))}


def hierarchical_time(M: np.ndarray, cluster: Cluster, ranks=None) -> float:
    st = hierarchical_stages(M, cluster, ranks)
    return st["intra"] + st["inter"]


def flat_inter_node(M: np.ndarray, cluster: Cluster, ranks=None) -> dict:
    """Bytes and non-empty messages between ranks of different nodes of a flat exchange of M."""
    M = np.asarray(M, float)
    node = _rank_ids(M.shape[0], ranks) // cluster.ranks_per_node
    cross = node[:, None] != node[None, :]
    return {"inter_bytes": float(M[cross].sum()), "inter_messages": int(np.count_nonzero(M[cross]))}


_COSTS = {"pairwise": pairwise_time, "bruck": bruck_time, "leader": leader_time,
          "hierarchical": hierarchical_time}


def exchange_time(M: np.ndarray, cluster: Cluster, algorithm: str, ranks=None) -> float:
    """One all-to-all of M among the world ranks `ranks` (default 0..P-1)."""
    if algorithm not in _COSTS:
        raise ValueError(f"unknown algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    return _COSTS[algorithm](np.asarray(M, float), cluster, ranks)


def ring_allreduce_time(nbytes: float, P: int, N: int, cluster: Cluster) -> float:
    """Assumption 12: every rank's `nbytes` summed over the P/N ranks r, r + N, ... by a ring."""
    G = P // N
    if G <= 1 or nbytes <= 0:
        return 0.0
    src = np.arange(P)
    dst = (src + N) % P  # the next replica; the last one wraps to the first (r + N - P)
    return 2 * (G - 1) * float(np.max(cluster.message_cost(src, dst, nbytes / G)))


# --- routing -> byte matrices ----------------------------------------------------------------

def parse_order(placement: str, E: int) -> np.ndarray | None:
    """The expert at each slot of an --expert-placement list ("4,5,0,1,..."), or None for a name."""
    if placement in PLACEMENTS:
        return None
    try:
        order = np.array([int(x) for x in placement.split(",")])
    except ValueError:
        raise ValueError(f"unknown placement {placement!r} (known: {', '.join(PLACEMENTS)}, or the experts "
                         "listed slot by slot)") from None
    if len(order) != E or sorted(order.tolist()) != list(range(E)):
        raise ValueError(f"placement {placement!r} does not list each of the {E} experts once")
    return order


def expert_owner(E: int, P: int, placement: str = "contiguous") -> np.ndarray:
    """Rank holding each of E experts on P ranks (the ranks of one expert group): contiguous,
    round-robin, or an --expert-placement list (the expert at each slot; rank r holds slots
    [r E/P, (r+1) E/P))."""
    if E % P:
        raise ValueError(f"{E} experts are not divisible by {P} ranks")
    e = np.arange(E)
    if placement == "contiguous":
        return e // (E // P)
    if placement == "round-robin":
        return e % P
    order = parse_order(placement, E)
    owner = np.empty(E, int)
    owner[order] = np.arange(E) // (E // P)
    return owner


def locality_order(rank_expert: np.ndarray, N: int, ranks_per_node: int) -> list[int]:
    """An --expert-placement list that keeps each node's likely experts on it: rank_expert (P x E,
    rows each rank routes to each expert, e.g. summed over steps) in expert groups of N ranks
    on nodes of ranks_per_node; the nodes of a group take E / (nodes per group) experts each,
    greedily by their ranks' demand (largest first; ties to the lower node, then expert), and
    spread them over their ranks. Every group holds the same order (demand summed over
    groups by node position)."""
    P, E = rank_expert.shape
    G = min(ranks_per_node, N)
    if N % G or E % N:
        raise ValueError(f"groups of {N} ranks must cover whole nodes of {G} and divide E = {E}")
    nodes = N // G
    demand = np.zeros((nodes, E))
    for r in range(P):
        demand[(r % N) // G] += rank_expert[r]
    room = np.full(nodes, E // nodes)
    node_of = np.full(E, -1)
    for flat in np.argsort(-demand, axis=None, kind="stable"):
        k, e = divmod(int(flat), E)
        if node_of[e] < 0 and room[k] > 0:
            node_of[e] = k
            room[k] -= 1
    order = []
    for k in range(nodes):
        order.extend(int(e) for e in np.flatnonzero(node_of == k))
    return order


def rank_rows(counts: np.ndarray, owner: np.ndarray, P: int, ep_size: int | None = None) -> np.ndarray:
    """(P x E) rows each rank sends each expert -> (P x P) rows rank i sends rank j. With groups
    of N = ep_size ranks, `owner` is the group rank holding each expert and rank i sends only
    to the ranks of its group (assumption 11)."""
    N = P if ep_size is None else int(ep_size)
    return in_groups(group_rows(counts, owner, N), N)


def group_rows(counts: np.ndarray, owner: np.ndarray, N: int) -> np.ndarray:
    """(senders x E) rows for each expert -> (senders x N) rows for each rank of the group."""
    counts = np.asarray(counts, float)
    order = np.argsort(owner, kind="stable")
    starts = np.searchsorted(owner[order], np.arange(N))  # every rank holds E/N >= 1 experts
    return np.add.reduceat(counts[:, order], starts, axis=1)


def in_groups(local: np.ndarray, N: int) -> np.ndarray:
    """(P x N) rows rank i sends rank j of its group -> (P x P), zero between groups."""
    P = local.shape[0]
    if N == P:
        return local
    i = np.arange(P)
    T = np.zeros((P, P))
    T[i[:, None], (i // N * N)[:, None] + np.arange(N)[None, :]] = local
    return T


def group_size(E: int, P: int, given: int | None = None) -> int:
    """N on P ranks: `given` (--ep-size), or moesim's default gcd(E, P); ValueError if invalid."""
    N = math.gcd(E, P) if not given else int(given)
    if P % N:
        raise ValueError(f"{P} ranks are not divisible by ep-size {N}")
    if E % N:
        raise ValueError(f"{E} experts are not divisible by ep-size {N}")
    return N


def step_bytes(T: np.ndarray, token_bytes: float) -> np.ndarray:
    """Bytes of one step, all four exchanges: dispatch twice, combine (the reverse) twice."""
    return token_bytes * (2.0 * T + 2.0 * T.T)


@dataclass
class Workload:
    """What one step moves: T[i, j] token rows i sends j per step (all MoE layers together),
    inside expert groups of ep_size ranks (None: one group of all P)."""
    T: np.ndarray
    token_bytes: float
    moe_layers: int
    experts: int
    ep_size: int | None = None
    expert_bytes: float = 0.0  # one rank's expert gradients (E/N experts), assumption 12

    @property
    def P(self) -> int:
        return self.T.shape[0]

    @property
    def N(self) -> int:
        return self.P if self.ep_size is None else int(self.ep_size)

    def group_ranks(self) -> list[np.ndarray]:
        N = self.N
        return [np.arange(g * N, (g + 1) * N) for g in range(self.P // N)]

    def step_bytes(self) -> np.ndarray:
        return step_bytes(self.T, self.token_bytes)

    def exchanges(self) -> list[tuple[int, np.ndarray]]:
        """(how many per step, byte matrix) of every collective in a step."""
        L = max(1, self.moe_layers)
        per_layer = self.T * self.token_bytes / L
        counts = in_groups(np.full((self.P, self.N), COUNT_BYTES * self.experts / self.N), self.N)
        return [(self.moe_layers, counts), (2 * self.moe_layers, per_layer),
                (2 * self.moe_layers, per_layer.T)]

    def time(self, cluster: Cluster, algorithm: str) -> float:
        """All-to-all seconds of a step: each exchange costs its slowest group (assumption 11)."""
        if self.moe_layers == 0 or self.N == 1:
            return 0.0
        return sum(m * max(exchange_time(M[np.ix_(r, r)], cluster, algorithm, r) for r in self.group_ranks())
                   for m, M in self.exchanges())

    def node_traffic(self, cluster: Cluster, algorithm: str) -> dict:
        """Bytes and non-empty messages across nodes in a step (all MoE layers and exchanges,
        sum over ranks; the count exchanges left out), and for the hierarchical exchange each
        stage's bytes. Messages count a rank pair in every layer when it exchanges rows in the
        step's sum."""
        L = max(1, self.moe_layers)
        out = {"inter_bytes": 0.0, "inter_messages": 0, "intra_stage_bytes": 0.0, "inter_stage_bytes": 0.0}
        if self.moe_layers == 0:
            return out
        for r in self.group_ranks():
            T = self.T[np.ix_(r, r)]
            for M in (T, T.T):  # dispatch (forward and backward), combine (both)
                if algorithm == "hierarchical":
                    st = hierarchical_stages(M * self.token_bytes, cluster, r)
                    out["intra_stage_bytes"] += 2 * st["intra_bytes"]
                    out["inter_stage_bytes"] += 2 * st["inter_bytes"]
                else:
                    st = flat_inter_node(M * self.token_bytes, cluster, r)
                out["inter_bytes"] += 2 * st["inter_bytes"]
                out["inter_messages"] += 2 * L * st["inter_messages"]
        return out

    def allreduce_time(self, cluster: Cluster) -> float:
        """The expert-gradient all-reduce across the replica groups (assumption 12)."""
        return ring_allreduce_time(self.expert_bytes, self.P, self.N, cluster)


def stretch_shares(shares: np.ndarray, E_new: int) -> np.ndarray:
    """Load shares of E experts mapped onto E_new through the piecewise-linear cumulative share."""
    shares = np.asarray(shares, float)
    E = len(shares)
    if E_new == E:
        return shares / shares.sum()
    cdf = np.concatenate([[0.0], np.cumsum(shares) / shares.sum()])
    at = np.interp(np.arange(E_new + 1) / E_new, np.arange(E + 1) / E, cdf)
    return np.diff(at)


@dataclass
class RunRouting:
    """The routing and exchange measurements of one run file."""
    file: str
    rank_expert: np.ndarray   # (S, P, E)
    traffic: np.ndarray | None  # (S, P, P)
    a2a_seconds: np.ndarray | None  # (S,)
    token_bytes: float
    moe_layers: int
    batch_tokens: int
    top_k: int
    d_model: int
    dispatch: str = "alltoallv"
    ep_size: int | None = None        # the run's N (effective_ep_size); None: P (older files)
    ep_size_given: int | None = None  # --ep-size as given, kept when projecting
    expert_params: int = 0            # parameters of one expert over all MoE layers
    ranks_per_node: int = 0           # the run's nodes (root attribute ranks_per_node); 0: unknown
    placement: str = "contiguous"     # the run's --expert-placement
    logged: dict | None = None        # per-step node metrics the run logged (inter-node bytes, ...)

    @property
    def P(self) -> int:
        return self.rank_expert.shape[1]

    @property
    def N(self) -> int:
        return self.P if self.ep_size is None else int(self.ep_size)

    @property
    def number_bytes(self) -> float:
        return self.token_bytes / self.d_model if self.d_model else 0.0

    @property
    def E(self) -> int:
        return self.rank_expert.shape[2]

    @property
    def steps(self) -> int:
        return self.rank_expert.shape[0]

    @classmethod
    def from_file(cls, file) -> "RunRouting":
        with open_h5(file) as f:
            if "metrics/rank_expert_tokens" not in f:
                raise ValueError(f"{file}: no metrics/rank_expert_tokens (not an MoE run file of "
                                 "this moesim version)")
            root = {k: _py(v) for k, v in f.attrs.items()}
            final = {k: _py(v) for k, v in f["final"].attrs.items()} if "final" in f else {}
            re = f["metrics/rank_expert_tokens"][()]
            traffic = f["metrics/traffic"][()] if "metrics/traffic" in f else None
            a2a = f["metrics/a2a_seconds"][()] if "metrics/a2a_seconds" in f else None
            per_layer = f["metrics/expert_tokens_per_layer"] if "metrics/expert_tokens_per_layer" in f else None
            layers_logged = per_layer.shape[1] if per_layer is not None and per_layer.ndim == 3 else None
            logged = {k: f["metrics"][k][()] for k in ("a2a_bytes_inter_node", "a2a_messages_inter_node",
                                                       "a2a_bytes_by_stage") if k in f["metrics"]}
        S = re.shape[0]
        for arr in (traffic, a2a):
            if arr is not None:
                S = min(S, arr.shape[0])  # datasets are appended one after another
        D = int(root.get("d_model", 0))
        tb = final.get("token_bytes")
        if tb is None:
            tb = D * (8 if root.get("precision") == "fp64" else 4)
        if layers_logged is None:
            every = int(root.get("moe_every", 1))
            layers_logged = sum(1 for l in range(int(root.get("layers", 0)))
                                if every > 0 and (l + 1) % every == 0)
        given = root.get("ep_size", root.get("expert_model_parallel_size"))
        Fe = int(root.get("effective_d_ff", int(root.get("d_ff", 0)) // max(1, int(root.get("granularity", 1)))))
        return cls(file=str(file), rank_expert=re[:S].astype(float),
                   traffic=None if traffic is None else traffic[:S].astype(float),
                   a2a_seconds=None if a2a is None else a2a[:S].astype(float),
                   token_bytes=float(tb), moe_layers=int(layers_logged),
                   batch_tokens=int(root.get("batch_tokens", 0)), top_k=int(root.get("top_k", 0)),
                   d_model=D, dispatch=str(root.get("dispatch", "alltoallv")),
                   ep_size=int(root["effective_ep_size"]) if "effective_ep_size" in root else None,
                   ep_size_given=int(given) if given is not None else None,
                   expert_params=int(layers_logged) * (2 * D * Fe + Fe + D),
                   ranks_per_node=int(root.get("ranks_per_node", 0)), logged=logged or None,
                   placement=str(root.get("expert_placement", "contiguous")))

    def node_traffic(self, step: int, algorithm: str | None = None) -> dict:
        """What the model says the run's own exchanges sent at step index `step` on its own
        nodes: bytes and non-empty messages across nodes, and for the hierarchical exchange each
        stage's bytes (all MoE layers, all four exchanges, sum over ranks). Messages assume that
        a rank pair exchanging rows in the step's layer sum does so in every layer."""
        cluster = Cluster(max(1, self.ranks_per_node or self.P))
        return self.own_workload(step).node_traffic(cluster, algorithm or self.dispatch)

    def node_check(self) -> pd.DataFrame:
        """Per step, the model's node traffic (node_traffic) beside what the run logged; the
        bytes agree exactly, the messages where every layer routes like the step's sum."""
        if not self.logged or "a2a_bytes_inter_node" not in self.logged:
            raise ValueError(f"{self.file}: no metrics/a2a_bytes_inter_node (logged by moesim runs since "
                             "the hierarchical exchange)")
        if self.dispatch not in ("alltoallv", "allgather", "hierarchical"):
            raise ValueError(f"{self.file}: --dispatch {self.dispatch} sends other messages than the model's rows")
        rows = []
        for s in range(self.steps):
            m = self.node_traffic(s)
            row = {"step": s + 1, "model_inter_bytes": m["inter_bytes"],
                   "logged_inter_bytes": float(self.logged["a2a_bytes_inter_node"][s]),
                   "model_inter_messages": m["inter_messages"],
                   "logged_inter_messages": int(self.logged["a2a_messages_inter_node"][s])}
            if "a2a_bytes_by_stage" in self.logged:
                st = self.logged["a2a_bytes_by_stage"][s]
                row.update(model_intra_stage_bytes=m["intra_stage_bytes"], logged_intra_stage_bytes=float(st[:, 0].sum()),
                           model_inter_stage_bytes=m["inter_stage_bytes"], logged_inter_stage_bytes=float(st[:, 1].sum()))
            rows.append(row)
        return pd.DataFrame(rows)

    def own_workload(self, step: int) -> Workload:
        """The run's own exchange at step index `step` (0-based), in the run's placement."""
        N = self.N
        T = rank_rows(self.rank_expert[step], expert_owner(self.E, N, self.placement), self.P, N)
        return Workload(T, self.token_bytes, self.moe_layers, self.E, N,
                        self.E // N * self.expert_params * self.number_bytes)

    def expert_rows(self) -> np.ndarray:
        """Rows per step for each expert, summed over source ranks, averaged over steps."""
        return self.rank_expert.sum(axis=1).mean(axis=0)

    def projected_workload(self, P: int, placement: str = "contiguous", experts: int | None = None,
                           batch_tokens: int | None = None, ep_size: int | None = None) -> Workload:
        """The step on P ranks in groups of ep_size (default: assumption 11), assumptions 2,
        3 and 11 of ASSUMPTIONS."""
        E_new = self.E if experts is None else int(experts)
        B_new = self.batch_tokens if batch_tokens is None else int(batch_tokens)
        N = group_size(E_new, P, ep_size or self.ep_size_given)
        owner = expert_owner(E_new, N, placement)
        rows = self.expert_rows()
        total = rows.sum() * (B_new / self.batch_tokens if self.batch_tokens else 1.0)
        per_expert = stretch_shares(rows, E_new) * total if rows.sum() > 0 else np.zeros(E_new)
        to_rank = group_rows((per_expert / P)[None, :], owner, N)  # every rank routes alike
        return Workload(in_groups(np.repeat(to_rank, P, axis=0), N), self.token_bytes, self.moe_layers, E_new,
                        N, E_new // N * self.expert_params * self.number_bytes)

    def reconstruction_error(self) -> dict:
        """Assumption 9: the step matrix from rank_expert_tokens against metrics/traffic."""
        if self.traffic is None:
            raise ValueError(f"{self.file}: no metrics/traffic to compare with")
        pred = np.stack([self.own_workload(s).step_bytes() for s in range(self.steps)])
        off = ~np.eye(self.P, dtype=bool)
        p_tot = float(pred[:, off].sum())
        m_tot = float(self.traffic[:, off].sum())
        rel = (p_tot - m_tot) / m_tot if m_tot > 0 else (0.0 if p_tot == 0 else float("inf"))
        denom = np.maximum(np.abs(self.traffic), 1.0)
        return {"predicted_bytes": p_tot, "measured_bytes": m_tot, "relative_error": rel,
                "max_element_relative_error": float(np.max(np.abs(pred - self.traffic) / denom))
                if pred.size else 0.0}


# --- projection table -----------------------------------------------------------------------

def simulate(run: RunRouting, ranks: list[int], cluster: Cluster, algorithms=ALGORITHMS,
             placement: str = "contiguous", experts_per_rank: int | None = None,
             tokens_per_rank: int | None = None, ep_size: int | None = None) -> pd.DataFrame:
    """Predicted exchange seconds per step for every P' and algorithm (one row per P'), in
    expert groups of ep_size ranks (default: assumption 11), and the expert-gradient
    all-reduce across the groups."""
    rows = []
    for P in ranks:
        E_new = experts_per_rank * P if experts_per_rank else run.E
        B_new = tokens_per_rank * P if tokens_per_rank else run.batch_tokens
        row = {"ranks": P, "experts": E_new, "nodes": math.ceil(P / cluster.ranks_per_node),
               "tokens_per_rank": B_new / P, "note": ""}
        try:
            w = run.projected_workload(P, placement, E_new, B_new, ep_size)
        except ValueError as exc:
            row["note"] = str(exc)
            rows.append(row)
            continue
        row["ep_size"] = w.N
        row["groups"] = P // w.N
        sb = w.step_bytes()
        row["bytes_per_step"] = float(sb.sum() - np.trace(sb))
        row["max_rank_bytes_out"] = float((sb.sum(axis=1) - np.diag(sb)).max())
        for alg in algorithms:
            try:
                row[f"{alg}_s"] = w.time(cluster, alg)
            except ValueError as exc:
                row[f"{alg}_s"] = float("nan")
                row["note"] = (row["note"] + "; " if row["note"] else "") + str(exc)
        row["expert_allreduce_s"] = w.allreduce_time(cluster)
        row["flat_inter_messages"] = w.node_traffic(cluster, "pairwise")["inter_messages"]
        try:
            row["hierarchical_inter_messages"] = w.node_traffic(cluster, "hierarchical")["inter_messages"]
        except ValueError:
            row["hierarchical_inter_messages"] = float("nan")
        rows.append(row)
    df = pd.DataFrame(rows)
    return df[[c for c in df.columns if c != "note"] + ["note"]]


def crossover_line(table: pd.DataFrame, algorithm: str = "hierarchical") -> str:
    """Where `algorithm` beats the pairwise exchange (what moesim's flat dispatches are priced
    as) and where it is the fastest of all, from which P' on, in a simulate table."""
    algs = [c for c in table.columns if c.endswith("_s") and c != "expert_allreduce_s"]
    col = f"{algorithm}_s"
    if col not in algs or len(algs) < 2:
        return f"{algorithm}: not compared"
    ranks = table["ranks"].to_numpy()

    def from_where(others: list[str]) -> str:
        best = table[others].min(axis=1)
        wins = (table[col] < best).to_numpy()
        if not wins.any():
            return "at none of these rank counts"
        first = len(wins)
        while first > 0 and wins[first - 1]:
            first -= 1
        ratio = float((best / table[col]).iloc[-1])
        if first == len(wins):
            return (f"at P' = {', '.join(str(r) for r in ranks[wins])} but not at P' = {ranks[-1]} "
                    f"({ratio:.2f}x there)")
        return f"from P' = {ranks[first]} on ({ratio:.2f}x at P' = {ranks[-1]})"

    parts = []
    if "pairwise_s" in algs and col != "pairwise_s":
        parts.append(f"{algorithm} beats pairwise {from_where(['pairwise_s'])}")
    parts.append(f"it is the fastest of {', '.join(c[:-2] for c in algs)} {from_where([c for c in algs if c != col])}")
    return "; ".join(parts)


# --- calibration against measured runs ----------------------------------------------------------

def _pairwise_features(w: Workload) -> tuple[float, float]:
    """(rounds, sum over rounds of the largest message in bytes) of one step on one node; with
    expert groups, of the group whose rounds carry the most (assumption 11)."""
    if w.moe_layers == 0 or w.N == 1:
        return 0.0, 0.0
    N = w.N
    i = np.arange(N)
    rounds = 0.0
    biggest = 0.0
    for mult, M in w.exchanges():
        rounds += mult * (N - 1)
        biggest += mult * max(sum(float(np.max(M[np.ix_(r, r)][i, (i + k) % N])) for k in range(1, N))
                              for r in w.group_ranks())
    return rounds, biggest


def _hierarchical_features(w: Workload, ranks_per_node: int) -> tuple[float, float]:
    """(rounds, sum over rounds of the largest message) of the two-stage exchange (7b) of one
    step, intra and inter links alike (one machine's virtual nodes), the slowest group."""
    if w.moe_layers == 0 or w.N == 1:
        return 0.0, 0.0
    # A link whose cost is the bytes: the stages' seconds are then their rounds' largest messages.
    bytes_only = Cluster(max(1, ranks_per_node), 1.0, 1.0, 0.0, 0.0)
    rounds = biggest = 0.0
    for mult, M in w.exchanges():
        groups = w.group_ranks()
        G = _node_blocks(len(groups[0]), bytes_only, groups[0])
        rounds += mult * (G - 1 + len(groups[0]) // G - 1)
        biggest += mult * max(hierarchical_time(M[np.ix_(r, r)], bytes_only, r) for r in groups)
    return rounds, biggest


def _features(w: Workload, dispatch: str, ranks_per_node: int) -> tuple[float, float]:
    """Calibration features of the exchange the run ran: two-stage for --dispatch hierarchical,
    pairwise for the flat ones."""
    if dispatch == "hierarchical":
        return _hierarchical_features(w, ranks_per_node)
    return _pairwise_features(w)


@dataclass
class Calibration:
    alpha: float          # s per message
    beta: float           # bytes/s
    table: pd.DataFrame   # per run: measured and predicted median s/step, relative errors
    per_step: bool
    fit_ranks: tuple | None = None

    def cluster(self, ranks_per_node: int, inter_bw: float, inter_latency: float) -> Cluster:
        return Cluster(ranks_per_node, self.beta, inter_bw, self.alpha, inter_latency)

    def summary(self) -> pd.DataFrame:
        """Mean and max |relative error| per rank count, in sample and held out."""
        t = self.table.assign(abs_rel=self.table["rel_error"].abs(),
                              abs_held=self.table["held_out_rel_error"].abs())
        return t.groupby(["dispatch", "P"]).agg(runs=("file", "size"), oversubscribed=("oversubscribed", "any"),
                                  mean_abs_rel_error=("abs_rel", "mean"),
                                  max_abs_rel_error=("abs_rel", "max"),
                                  mean_abs_held_out_error=("abs_held", "mean")).reset_index()

    def format(self) -> str:
        used = self.table["in_fit"].sum()
        which = "every step" if self.per_step else "median over steps 2..S per run"
        ranks = f", P in {list(self.fit_ranks)}" if self.fit_ranks else ""
        lines = [f"intra-node link fitted to {used} runs ({which}{ranks}; least squares of "
                 "log(predicted/measured)): "
                 f"alpha = {self.alpha * 1e6:.4g} us, beta = {self.beta / 1e9:.4g} GB/s",
                 self.table.to_string(index=False, float_format=lambda v: f"{v:.4g}"), "",
                 "prediction (pairwise, or two-stage for --dispatch hierarchical) vs measured median a2a "
                 "seconds/step, by algorithm and rank count "
                 "(held out: run left out of the fit, or not in it):",
                 self.summary().to_string(index=False, float_format=lambda v: f"{v:.1%}")]
        if self.table["oversubscribed"].any():
            lines.append("oversubscribed: more ranks than this host's cores (time slicing, not the "
                         "network, sets those times)")
        return "\n".join(lines)


def _nnls(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls
    scale = np.maximum(np.abs(X).max(axis=0), 1e-300)  # columns differ by ~1e6 (rounds vs bytes)
    coef, _ = nnls(X / scale, y)
    return coef / scale


def calibrate(paths, per_step: bool = False, skip_steps: int = 1, fit_ranks=None) -> Calibration:
    """Fit alpha and beta of the intra-node link to measured a2a seconds (assumption 8).

    Minimises the squared log ratio of predicted to measured time (the measured times span
    orders of magnitude), started from non-negative relative least squares. fit_ranks restricts the fit to runs with those P;
    the others are predicted out of sample.
    """
    import os
    import socket

    files = run_files(paths)
    runs = []
    for file in files:
        try:
            r = RunRouting.from_file(file)
            with open_h5(file) as f:
                host = _py(f.attrs.get("host", ""))
        except (OSError, ValueError, KeyError):
            continue
        if r.P < 2 or r.a2a_seconds is None or r.moe_layers == 0 or r.steps <= skip_steps:
            continue
        feats = np.array([_features(r.own_workload(s), r.dispatch, r.ranks_per_node)
                          for s in range(skip_steps, r.steps)])
        over = host == socket.gethostname() and r.P > (os.cpu_count() or r.P)
        runs.append((r, feats, r.a2a_seconds[skip_steps:], over))
    fit_set = [k for k, (r, *_) in enumerate(runs) if not fit_ranks or r.P in fit_ranks]
    if len(fit_set) < 2:
        raise ValueError(f"calibration needs at least 2 run files with P >= 2 ranks and MoE layers"
                         f"{' and P in ' + str(list(fit_ranks)) if fit_ranks else ''} "
                         f"(found {len(fit_set)} among {len(files)} files)")

    def fit(idx):
        sub = [runs[k] for k in idx]
        if per_step:
            X = np.concatenate([f for _, f, _, _ in sub])
            y = np.concatenate([t for _, _, t, _ in sub])
        else:
            X = np.array([np.median(f, axis=0) for _, f, _, _ in sub])
            y = np.array([np.median(t) for _, _, t, _ in sub])
        ok = y > 0
        X, y = X[ok], y[ok]
        w = 1.0 / y
        c0 = np.maximum(_nnls(X * w[:, None], y * w), 1e-30)  # start: relative least squares
        # then least squares of log(predicted / measured): over- and under-prediction by the
        # same factor weigh the same, which relative errors (bounded by -1 below) do not do
        from scipy.optimize import least_squares
        res = least_squares(lambda p: np.log(X @ np.exp(p)) - np.log(y), np.log(c0))
        c = np.exp(res.x)
        return c[0], 1.0 / c[1]

    alpha, beta = fit(fit_set)
    rows = []
    for k, (r, feats, t, over) in enumerate(runs):
        measured = float(np.median(t))
        pred = float(np.median(feats[:, 0] * alpha + feats[:, 1] / beta))
        rest = [j for j in fit_set if j != k]
        if k in fit_set and len(rest) >= 2:
            a_h, b_h = fit(rest)
            held = float(np.median(feats[:, 0] * a_h + feats[:, 1] / b_h))
        elif k in fit_set:
            held = float("nan")
        else:
            held = pred
        step_bytes_med = float(np.median([(lambda m: m.sum() - np.trace(m))(r.own_workload(s).step_bytes())
                                          for s in range(skip_steps, r.steps)]))
        rows.append({"file": Path(r.file).name, "dispatch": r.dispatch, "P": r.P, "G": r.ranks_per_node,
                     "E": r.E, "D": r.d_model,
                     "in_fit": k in fit_set, "oversubscribed": over,
                     "bytes_per_step": step_bytes_med, "measured_p10_s": float(np.quantile(t, 0.1)),
                     "measured_s": measured, "predicted_s": pred,
                     "rel_error": (pred - measured) / measured,
                     "held_out_s": held, "held_out_rel_error": (held - measured) / measured})
    return Calibration(alpha=float(alpha), beta=float(beta), table=pd.DataFrame(rows),
                       per_step=per_step, fit_ranks=tuple(fit_ranks) if fit_ranks else None)


def replace_intra(cluster: Cluster, cal: Calibration) -> Cluster:
    return replace(cluster, intra_bw=cal.beta, intra_latency=cal.alpha)
