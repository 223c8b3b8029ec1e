"""The network cost model (moesim_analysis/costmodel.py) against hand-computed cases, a brute-force
Bruck simulation, a real run's metrics/traffic, and a calibration with known answers."""
from __future__ import annotations

import math
import sys

import h5py
import numpy as np
import pytest

from moesim_testing import REPO_ROOT, analysis_cli, run_moe

sys.path.insert(0, str(REPO_ROOT))
from moesim_analysis import costmodel as cm  # noqa: E402

A_I, B_I, A_E, B_E = 1e-6, 10e9, 5e-6, 1e9  # intra/inter latency (s) and bandwidth (B/s)


def uniform(P, b):
    M = np.full((P, P), float(b))
    np.fill_diagonal(M, 0.0)
    return M


def cluster(R):
    return cm.Cluster(ranks_per_node=R, intra_bw=B_I, inter_bw=B_E, intra_latency=A_I,
                      inter_latency=A_E)


# --- hand-computed exchanges ---------------------------------------------------------------

def test_pairwise_uniform_one_rank_per_node():
    b = 1e6
    assert cm.pairwise_time(uniform(4, b), cluster(1)) == pytest.approx(3 * (A_E + b / B_E), rel=1e-12)


def test_pairwise_two_nodes_of_two_inter_node_rounds_dominate():
    b = 1e6
    t = cm.pairwise_time(uniform(4, b), cluster(2))
    # every round has a message crossing nodes (round 2 only such messages)
    assert t == pytest.approx(3 * (A_E + b / B_E), rel=1e-12)
    assert t > cm.pairwise_time(uniform(4, b), cluster(4))  # all on one node is faster
    assert cm.pairwise_time(uniform(4, b), cluster(4)) == pytest.approx(3 * (A_I + b / B_I), rel=1e-12)


def test_pairwise_round_takes_its_largest_message():
    M = uniform(3, 100.0)
    M[0, 1] = 1e6  # round 1 carries 0->1, 1->2, 2->0
    got = cm.pairwise_round_costs(M, cluster(1))
    assert got == pytest.approx([A_E + 1e6 / B_E, A_E + 100 / B_E], rel=1e-12)


def test_bruck_four_ranks_two_rounds_half_the_data():
    b = 1e6
    per_round = cm.bruck_round_bytes(uniform(4, b))
    assert len(per_round) == 2
    for sent in per_round:
        assert sent == pytest.approx([2 * b] * 4)  # offsets {1, 3}, then {2, 3}
    assert cm.bruck_time(uniform(4, b), cluster(1)) == pytest.approx(2 * (A_E + 2 * b / B_E), rel=1e-12)


def bruck_reference(M):
    """Moves every block hop by hop (bits of its offset, low first) and counts what each rank sends."""
    P = len(M)
    blocks = [[s, s, d, M[s, d]] for s in range(P) for d in range(P) if s != d]
    out = []
    for k in range(math.ceil(math.log2(P))):
        sent = np.zeros(P)
        for blk in blocks:
            cur, s, d, nbytes = blk
            if ((d - s) % P) >> k & 1:
                sent[cur] += nbytes
                blk[0] = (cur + (1 << k)) % P
        out.append(sent)
    assert all(blk[0] == blk[2] for blk in blocks), "every block must arrive"
    return out


@pytest.mark.parametrize("P", [2, 3, 5, 8, 12])
def test_bruck_matches_block_by_block_simulation(P):
    M = np.random.default_rng(P).integers(0, 1000, (P, P)).astype(float)
    got = cm.bruck_round_bytes(M)
    want = bruck_reference(M)
    assert len(got) == len(want) == math.ceil(math.log2(P))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w)


def test_leader_two_nodes_of_two_by_hand():
    b = 1e6
    ph = cm.leader_phases(uniform(4, b), cluster(2))
    # the non-leader sends its 3 blocks to the leader, leaders swap 2x2 blocks, scatter 3 blocks
    assert ph["gather"] == pytest.approx(A_I + 3 * b / B_I, rel=1e-12)
    assert ph["exchange"] == pytest.approx(A_E + 4 * b / B_E, rel=1e-12)
    assert ph["scatter"] == pytest.approx(A_I + 3 * b / B_I, rel=1e-12)
    assert cm.leader_time(uniform(4, b), cluster(2)) == pytest.approx(
        2 * (A_I + 3 * b / B_I) + A_E + 4 * b / B_E, rel=1e-12)


def test_leader_one_rank_per_node_is_pairwise():
    M = np.random.default_rng(1).integers(0, 1000, (6, 6)).astype(float)
    assert cm.leader_time(M, cluster(1)) == pytest.approx(cm.pairwise_time(M, cluster(1)))


def test_hierarchical_two_nodes_of_two_by_hand():
    """--dispatch hierarchical's stages: (n, l) hands (n, l') the rows for (0, l') and (1, l'),
    then (n, l') sends (m, l') the rows of both of node n's ranks."""
    b = 1e6
    st = cm.hierarchical_stages(uniform(4, b), cluster(2))
    assert st["intra"] == pytest.approx(A_I + 2 * b / B_I, rel=1e-12)
    assert st["inter"] == pytest.approx(A_E + 2 * b / B_E, rel=1e-12)
    assert cm.hierarchical_time(uniform(4, b), cluster(2)) == pytest.approx(st["intra"] + st["inter"])
    # Every row crosses nodes once, as in a flat exchange, in half the messages here.
    flat = cm.flat_inter_node(uniform(4, b), cluster(2))
    assert st["inter_bytes"] == flat["inter_bytes"] == 8 * b
    assert (st["inter_messages"], flat["inter_messages"]) == (4, 8)
    assert st["intra_bytes"] == 8 * b


def test_hierarchical_one_rank_per_node_is_pairwise_and_one_node_is_intra_only():
    M = np.random.default_rng(1).integers(0, 1000, (6, 6)).astype(float)
    assert cm.hierarchical_time(M, cluster(1)) == pytest.approx(cm.pairwise_time(M, cluster(1)))
    one = cm.hierarchical_stages(M, cluster(6))
    assert one["inter"] == 0 and one["inter_bytes"] == 0
    assert one["intra"] == pytest.approx(cm.pairwise_time(M, cluster(6)))
    with pytest.raises(ValueError, match="whole nodes"):
        cm.hierarchical_stages(M, cluster(4))


def test_leader_gather_is_serial_at_the_leader():
    b = 1e6
    ph = cm.leader_phases(uniform(8, b), cluster(4))  # 2 nodes of 4
    assert ph["gather"] == pytest.approx(3 * (A_I + 7 * b / B_I), rel=1e-12)
    assert ph["exchange"] == pytest.approx(A_E + 16 * b / B_E, rel=1e-12)


# --- routing to bytes ------------------------------------------------------------------------

def test_expert_placement():
    np.testing.assert_array_equal(cm.expert_owner(8, 4, "contiguous"), [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(cm.expert_owner(8, 4, "round-robin"), [0, 1, 2, 3, 0, 1, 2, 3])
    with pytest.raises(ValueError, match="not divisible"):
        cm.expert_owner(6, 4)


def test_step_bytes_four_exchanges_by_hand():
    counts = np.array([[10, 20, 30, 40], [1, 2, 3, 4]], float)  # 2 ranks x 4 experts
    T = cm.rank_rows(counts, cm.expert_owner(4, 2), 2)
    np.testing.assert_array_equal(T, [[30, 70], [3, 7]])
    tb = 64
    S = cm.step_bytes(T, tb)
    # dispatch twice (i -> j) plus combine twice (j -> i)
    np.testing.assert_array_equal(S, tb * np.array([[4 * 30, 2 * 70 + 2 * 3], [2 * 3 + 2 * 70, 4 * 7]]))


def test_workload_time_sums_the_exchanges_of_a_step():
    P, E, L, tb, rows = 4, 8, 2, 100.0, 50.0
    T = np.full((P, P), rows)
    w = cm.Workload(T, tb, L, E)
    cl = cluster(1)
    per_layer = rows * tb / L
    count_bytes = 4 * E / P
    want = L * 3 * (A_E + count_bytes / B_E) + 4 * L * 3 * (A_E + per_layer / B_E)
    assert w.time(cl, "pairwise") == pytest.approx(want, rel=1e-12)


def test_groups_send_only_inside_themselves():
    counts = np.array([[10, 20], [1, 2], [3, 4], [5, 6]], float)  # 4 ranks x 2 experts, N = 2
    T = cm.rank_rows(counts, cm.expert_owner(2, 2), 4, ep_size=2)
    np.testing.assert_array_equal(T, [[10, 20, 0, 0], [1, 2, 0, 0], [0, 0, 3, 4], [0, 0, 5, 6]])
    np.testing.assert_array_equal(cm.rank_rows(counts, cm.expert_owner(2, 1), 4, ep_size=1), np.diag([30, 3, 7, 11]))
    assert cm.group_size(4, 3) == 1 and cm.group_size(8, 4) == 4 and cm.group_size(8, 4, 2) == 2
    with pytest.raises(ValueError, match="4 ranks are not divisible by ep-size 3"):
        cm.group_size(6, 4, 3)
    with pytest.raises(ValueError, match="2 experts are not divisible by ep-size 4"):
        cm.group_size(2, 4, 4)


def test_workload_time_is_the_slowest_group():
    P, N, E, L, tb, rows = 4, 2, 4, 2, 100.0, 50.0
    T = cm.in_groups(np.full((P, N), rows), N)
    T[2, 3] = 4 * rows  # group 1 carries more in one direction
    w = cm.Workload(T, tb, L, E, ep_size=N)
    assert [list(r) for r in w.group_ranks()] == [[0, 1], [2, 3]]
    per_layer, big = rows * tb / L, 4 * rows * tb / L
    count_bytes = 4 * E / N
    # N - 1 = 1 round per exchange; dispatch twice carries 2->3's big block, combine twice 3->2's
    want = L * (A_E + count_bytes / B_E) + 4 * L * (A_E + big / B_E)
    assert w.time(cluster(1), "pairwise") == pytest.approx(want, rel=1e-12)
    # Groups of 2 on nodes of 2: every message stays on its node.
    want_intra = L * (A_I + count_bytes / B_I) + 4 * L * (A_I + big / B_I)
    assert w.time(cluster(2), "pairwise") == pytest.approx(want_intra, rel=1e-12)
    assert w.time(cluster(2), "bruck") == pytest.approx(want_intra, rel=1e-12)  # 1 round as well
    # Leader on nodes of 2: each group is one node (no leader exchange); the leader
    # (first rank) gathers the other rank's block and scatters the block bound for it; in
    # group 1 one of the two is the big block, whichever way the exchange goes.
    small = rows * tb / L
    gathered = 2 * L * (A_I + count_bytes / B_I) + 4 * L * (2 * A_I + (small + big) / B_I)
    assert w.time(cluster(2), "leader") == pytest.approx(gathered, rel=1e-12)
    assert cm.Workload(T, tb, L, E, ep_size=1).time(cluster(1), "pairwise") == 0.0
    # N = P: one group of all ranks, as before.
    full = cm.Workload(np.full((P, P), rows), tb, L, E)
    assert full.time(cluster(1), "pairwise") == pytest.approx(
        L * 3 * (A_E + 4 * E / P / B_E) + 4 * L * 3 * (A_E + per_layer / B_E), rel=1e-12)


def test_exchanges_of_a_group_use_its_world_ranks():
    """A group of ranks 2, 3 on nodes of 2 is one node, whatever its index in the group."""
    b = 1e6
    assert cm.pairwise_time(uniform(2, b), cluster(2), ranks=[2, 3]) == pytest.approx(A_I + b / B_I)
    assert cm.pairwise_time(uniform(2, b), cluster(2), ranks=[1, 2]) == pytest.approx(A_E + b / B_E)
    assert cm.bruck_time(uniform(2, b), cluster(2), ranks=[1, 2]) == pytest.approx(A_E + b / B_E)
    ph = cm.leader_phases(uniform(2, b), cluster(2), ranks=[1, 2])  # two nodes, one rank each
    assert ph["gather"] == 0 and ph["scatter"] == 0
    assert ph["exchange"] == pytest.approx(A_E + b / B_E)
    # ranks=None is 0..P-1
    M = np.arange(36, dtype=float).reshape(6, 6) * 1e3
    for alg in cm.ALGORITHMS:
        assert cm.exchange_time(M, cluster(3), alg) == cm.exchange_time(M, cluster(3), alg, np.arange(6))


def test_expert_gradient_ring_allreduce_by_hand():
    b = 8e6
    # P = 4, N = 2: rings {0, 2} and {1, 3}, 2 (G - 1) = 2 rounds of b / 2
    assert cm.ring_allreduce_time(b, 4, 2, cluster(1)) == pytest.approx(2 * (A_E + b / 2 / B_E), rel=1e-12)
    # P = 4, N = 1: one ring of 4, 6 rounds of b / 4; nodes of 2 put 1 -> 2 and 3 -> 0 across nodes
    assert cm.ring_allreduce_time(b, 4, 1, cluster(2)) == pytest.approx(6 * (A_E + b / 4 / B_E), rel=1e-12)
    assert cm.ring_allreduce_time(b, 4, 1, cluster(4)) == pytest.approx(6 * (A_I + b / 4 / B_I), rel=1e-12)
    assert cm.ring_allreduce_time(b, 4, 4, cluster(1)) == 0.0


def test_stretch_shares_keeps_the_load_profile():
    s = np.array([0.4, 0.3, 0.2, 0.1])
    np.testing.assert_allclose(cm.stretch_shares(s, 8), [0.2, 0.2, 0.15, 0.15, 0.1, 0.1, 0.05, 0.05])
    np.testing.assert_allclose(cm.stretch_shares(s, 2), [0.7, 0.3])
    np.testing.assert_allclose(cm.stretch_shares(np.ones(4), 12), np.full(12, 1 / 12))


# --- a real run ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_run(moesim, tmp_path_factory):
    d = tmp_path_factory.mktemp("costmodel")
    _, path = run_moe(d, 2, experts=4, top_k=2, steps=20, d_model=16, d_ff=32)
    return path


@pytest.fixture(scope="module")
def ep_run(moesim, tmp_path_factory):
    """E = 4 on 4 ranks in 2 groups of 2 (--ep-size 2)."""
    d = tmp_path_factory.mktemp("costmodel_ep")
    _, path = run_moe(d, 4, experts=4, top_k=2, steps=20, d_model=16, d_ff=32, ep_size=2)
    return path


def test_groups_of_a_real_run(ep_run):
    run = cm.RunRouting.from_file(ep_run)
    assert (run.P, run.E, run.N, run.ep_size_given) == (4, 4, 2, 2)
    assert run.expert_params == 2 * (2 * 16 * 32 + 32 + 16)
    rec = run.reconstruction_error()
    assert rec["measured_bytes"] > 0
    assert abs(rec["relative_error"]) < 0.02 and rec["max_element_relative_error"] < 0.02
    w = run.own_workload(0)
    assert w.N == 2 and np.all(w.step_bytes()[:2, 2:] == 0) and np.all(w.step_bytes()[2:, :2] == 0)
    assert w.expert_bytes == 2 * run.expert_params * 4
    # Projections keep the given N: 8 ranks are 4 groups of 2, each moving a quarter of the rows.
    big = run.projected_workload(8)
    assert big.N == 2 and big.T.sum() == pytest.approx(run.expert_rows().sum())
    assert np.all(big.T[np.arange(8)[:, None] // 2 != np.arange(8)[None, :] // 2] == 0)
    table = cm.simulate(run, [2, 4, 8], cluster(2))
    assert list(table["ep_size"]) == [2, 2, 2] and list(table["groups"]) == [1, 2, 4]
    assert table.loc[0, "expert_allreduce_s"] == 0 and (table.loc[1:, "expert_allreduce_s"] > 0).all()
    # Groups of 2 on nodes of 2 never cross a node: at equal tokens per rank the all-to-all
    # time does not grow with P' (weak scaling by replica groups).
    weak = cm.simulate(run, [2, 4, 8], cluster(2), tokens_per_rank=run.batch_tokens // run.P)
    assert weak["pairwise_s"].iloc[2] == pytest.approx(weak["pairwise_s"].iloc[0], rel=1e-9)
    assert weak["pairwise_s"].iloc[1] == pytest.approx(weak["pairwise_s"].iloc[0], rel=1e-9)
    # An explicit N overrides the run's.
    assert cm.simulate(run, [8], cluster(2), ep_size=4).loc[0, "ep_size"] == 4
    p = analysis_cli("simulate", ep_run, "--ranks", "4,8")
    assert p.returncode == 0, p.stderr
    assert "ep_size" in p.stdout and "expert_allreduce_s" in p.stdout and "relative error 0.000%" in p.stdout


def test_traffic_reconstruction_matches_the_run(real_run):
    run = cm.RunRouting.from_file(real_run)
    assert (run.P, run.E, run.moe_layers, run.token_bytes) == (2, 4, 2, 16 * 4)
    rec = run.reconstruction_error()
    assert rec["measured_bytes"] > 0
    assert abs(rec["relative_error"]) < 0.02
    assert rec["max_element_relative_error"] < 0.02


def test_projection_at_own_rank_count_keeps_the_bytes(real_run):
    run = cm.RunRouting.from_file(real_run)
    w = run.projected_workload(2)
    # same rows per expert, spread evenly over ranks: total bytes equal the run's mean step
    measured = run.traffic.sum(axis=(1, 2)).mean()
    assert w.step_bytes().sum() == pytest.approx(measured, rel=1e-9)
    big = run.projected_workload(64, experts=128, batch_tokens=64 * 128)
    assert big.P == 64 and big.experts == 128
    assert big.T.sum() == pytest.approx(run.expert_rows().sum() * 64 * 128 / run.batch_tokens)


def test_simulate_cli(real_run):
    p = analysis_cli("simulate", real_run, "--ranks", "2,4,8", "--ranks-per-node", "2",
                     "--experts-per-rank", "2", "--intra-bw", "10", "--inter-bw", "1",
                     "--intra-latency", "1", "--inter-latency", "5")
    assert p.returncode == 0, p.stderr
    assert "traffic reconstruction at P=2" in p.stdout and "relative error 0.000%" in p.stdout
    for col in ("pairwise_s", "bruck_s", "leader_s", "hierarchical_s", "hierarchical_inter_messages"):
        assert col in p.stdout
    lines = [ln.split() for ln in p.stdout.splitlines() if ln.split()[:1] in (["4"], ["8"])]
    assert {ln[0] for ln in lines} == {"4", "8"}


def test_simulate_cli_default_ep_size_on_an_indivisible_rank_count(real_run):
    """E = 4 on 3 ranks: moesim's default N = gcd(4, 3) = 1, so nothing crosses ranks."""
    p = analysis_cli("simulate", real_run, "--ranks", "3")
    assert p.returncode == 0, p.stderr
    row = cm.simulate(cm.RunRouting.from_file(real_run), [3], cluster(1)).iloc[0]
    assert row["ep_size"] == 1 and row["groups"] == 3 and row["bytes_per_step"] == 0
    assert row["pairwise_s"] == 0 and row["expert_allreduce_s"] > 0


def test_simulate_cli_refuses_an_indivisible_rank_count(ep_run):
    """A run's explicit --ep-size 2 is kept when projecting; 3 ranks cannot hold groups of 2."""
    p = analysis_cli("simulate", ep_run, "--ranks", "3")
    assert p.returncode == 2
    assert "not divisible" in p.stdout + p.stderr


def test_simulate_assumptions():
    p = analysis_cli("simulate", "--assumptions")
    assert p.returncode == 0
    assert "Pairwise exchange" in p.stdout and "Bruck" in p.stdout and "Hierarchical" in p.stdout


# --- calibration with known alpha, beta -------------------------------------------------------

def pairwise_reference(M, alpha, beta):
    P = len(M)
    return sum(max(alpha + M[i, (i + k) % P] / beta for i in range(P)) for k in range(1, P))


def write_synthetic_run(path, P, E, D, seed, alpha, beta, steps=6, L=2, N=None):
    """A run file whose a2a seconds are the pairwise exchanges, by hand; with N, in groups of
    N ranks, each costing its slowest group."""
    rng = np.random.default_rng(seed)
    re = rng.integers(10, 200, (steps, P, E))
    tb = 4 * D
    a2a = []
    G = N or P
    owner = np.arange(E) // (E // G)
    for s in range(steps):
        T = np.zeros((P, G))
        for i in range(P):
            for e in range(E):
                T[i, owner[e]] += re[s, i, e]
        t = 0.0
        ex = [(L, lambda g: np.full((G, G), 4.0 * E / G)), (2 * L, lambda g: T[g * G:(g + 1) * G] * tb / L),
              (2 * L, lambda g: (T[g * G:(g + 1) * G] * tb / L).T)]
        for mult, block in ex:
            t += mult * max(pairwise_reference(block(g), alpha, beta) for g in range(P // G))
        a2a.append(t)
    with h5py.File(path, "w") as f:
        f.attrs.update({"kind": "moe", "complete": 1, "d_model": D, "batch_tokens": 256,
                        "top_k": 2, "layers": L, "moe_every": 1, "host": "synthetic"})
        if N:
            f.attrs.update({"effective_ep_size": N, "ep_size": N})
        f.create_group("final").attrs["token_bytes"] = tb
        f["metrics/rank_expert_tokens"] = re
        f["metrics/a2a_seconds"] = np.array(a2a)


def test_calibration_recovers_a_known_link(tmp_path):
    alpha, beta = 7e-6, 2e9
    for k, (P, E, D) in enumerate([(2, 4, 16), (2, 8, 64), (4, 8, 32), (4, 4, 128)]):
        write_synthetic_run(tmp_path / f"r{k}.h5", P, E, D, k, alpha, beta)
    cal = cm.calibrate(tmp_path)
    assert cal.alpha == pytest.approx(alpha, rel=1e-6)
    assert cal.beta == pytest.approx(beta, rel=1e-6)
    assert cal.table["rel_error"].abs().max() < 1e-6
    assert cal.table["held_out_rel_error"].abs().max() < 1e-6
    held = cm.calibrate(tmp_path, fit_ranks=[2])  # fit on P=2, predict P=4
    assert held.table.loc[held.table["P"] == 4, "held_out_rel_error"].abs().max() < 1e-6


def test_calibration_with_expert_groups(tmp_path):
    """Runs in groups of N < P: the fit sees each run's slowest group and recovers the link."""
    alpha, beta = 3e-6, 5e9
    for k, (P, E, D, N) in enumerate([(4, 4, 16, 2), (4, 8, 64, 2), (4, 8, 32, 4), (2, 4, 128, None)]):
        write_synthetic_run(tmp_path / f"g{k}.h5", P, E, D, 10 + k, alpha, beta, N=N)
    cal = cm.calibrate(tmp_path)
    assert cal.alpha == pytest.approx(alpha, rel=1e-6)
    assert cal.beta == pytest.approx(beta, rel=1e-6)
    assert cal.table["rel_error"].abs().max() < 1e-6


@pytest.mark.parametrize("dispatch", ["alltoallv", "hierarchical"])
def test_node_traffic_agrees_exactly_with_the_run(tmp_path, run_moe, dispatch):
    """At the run's own P and G the model's bytes across nodes, messages and stage bytes are
    what the run logged, step by step."""
    _, path = run_moe(tmp_path, 4, dispatch=dispatch, ranks_per_node=2, experts=8, top_k=2, steps=6,
                      batch_tokens=512, capacity_factor=1.0)
    run = cm.RunRouting.from_file(path)
    assert run.ranks_per_node == 2
    chk = run.node_check()
    assert len(chk) == 6
    for c in [c[len("model_"):] for c in chk.columns if c.startswith("model_")]:
        np.testing.assert_array_equal(chk[f"model_{c}"], chk[f"logged_{c}"], err_msg=c)
    assert (chk["logged_inter_bytes"] > 0).all()
    if dispatch == "hierarchical":
        assert "model_inter_stage_bytes" in chk
        # 2 nodes of 2: each rank sends one message across per exchange, 4 exchanges, 2 layers.
        assert (chk["logged_inter_messages"] == 4 * 4 * 2).all()
    else:
        assert (chk["logged_inter_messages"] == 4 * 2 * 4 * 2).all()
    p = analysis_cli("simulate", path, "--ranks-per-node", "2")
    assert p.returncode == 0, p.stderr
    assert "steps agreeing exactly of 6: inter_bytes 6, inter_messages 6" in p.stdout


def test_locality_order_keeps_a_nodes_likely_experts_on_it():
    """Ranks 0, 1 (node 0) route mostly to experts 4..7, ranks 2, 3 to 0..3: the suggested order
    puts 4..7 on node 0, and fewer bytes cross nodes than with the contiguous placement."""
    E, P = 8, 4
    re = np.full((P, E), 10.0)
    re[0:2, 4:8] = 100.0
    re[2:4, 0:4] = 100.0
    order = cm.locality_order(re, N=P, ranks_per_node=2)
    assert order == [4, 5, 6, 7, 0, 1, 2, 3]
    text = ",".join(map(str, order))
    owner = cm.expert_owner(E, P, text)
    assert owner.tolist() == [2, 2, 3, 3, 0, 0, 1, 1]
    cl = cluster(2)
    def inter(placement):
        T = cm.rank_rows(re, cm.expert_owner(E, P, placement), P)
        return cm.Workload(T, 64.0, 1, E).node_traffic(cl, "pairwise")["inter_bytes"]
    assert inter(text) < inter("contiguous")
    with pytest.raises(ValueError, match="once"):
        cm.expert_owner(E, P, "0,1,2")
    with pytest.raises(ValueError, match="unknown placement"):
        cm.expert_owner(E, P, "nearby")


def test_suggest_placement_cli(real_run):
    p = analysis_cli("simulate", real_run, "--ranks-per-node", "1", "--suggest-placement")
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("suggested --expert-placement "))
    order = [int(x) for x in line.split()[-1].split(",")]
    assert sorted(order) == list(range(len(order)))
    assert "  suggested: at P=" in p.stdout
