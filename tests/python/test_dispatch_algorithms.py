"""The dispatch algorithms (--dispatch alltoallv|allgather|p2p|padded|hierarchical) on the same
run: identical losses and token counts, their own timings, and padding only for `padded`; the
hierarchical exchange on every (P, G) of virtual nodes (--ranks-per-node G): the same run as the
flat one for hundreds of steps, the same bytes across nodes in fewer messages, each stage's
bytes and seconds apart, and the nodes in the run file."""
import h5py
import numpy as np
import pytest

from moesim_testing import error_lines

ALGORITHMS = ["alltoallv", "allgather", "p2p", "padded", "hierarchical"]


@pytest.mark.parametrize("np_ranks", [2, 4])
def test_same_run_every_algorithm(tmp_path, run_moe, np_ranks):
    runs = {}
    for algo in ALGORITHMS:
        _, out = run_moe(tmp_path, np_ranks, dispatch=algo, experts=8, top_k=2, steps=12,
                         capacity_factor=1.0, seed=3)
        with h5py.File(out, "r") as f:
            assert f.attrs["complete"] == 1
            assert f.attrs["dispatch"] == algo
            m = f["metrics"]
            runs[algo] = {k: m[k][:] for k in ("train_loss", "expert_tokens", "traffic", "padding_bytes",
                                               "a2a_bytes_by_phase", "a2a_seconds_by_phase", "a2a_bytes")}
    base = runs["alltoallv"]
    for algo in ALGORITHMS[1:]:
        r = runs[algo]
        # Every expert sees the same rows in the same order: bit-identical losses.
        np.testing.assert_array_equal(r["train_loss"], base["train_loss"], err_msg=algo)
        np.testing.assert_array_equal(r["expert_tokens"], base["expert_tokens"], err_msg=algo)
    for algo in ("alltoallv", "allgather", "p2p", "hierarchical"):
        r = runs[algo]
        assert np.all(r["padding_bytes"] == 0), algo
        if algo != "hierarchical":  # it relays rows through a node's ranks (here: one node)
            np.testing.assert_array_equal(r["traffic"], base["traffic"], err_msg=algo)
    padded = runs["padded"]
    assert np.all(padded["padding_bytes"] > 0)
    # Padded moves at least the useful bytes plus its padding.
    useful = base["a2a_bytes"]
    moved = padded["a2a_bytes_by_phase"].sum(axis=(1, 2))
    np.testing.assert_allclose(moved - padded["padding_bytes"], useful, rtol=1e-12)
    for algo, r in runs.items():
        assert r["a2a_bytes_by_phase"].shape == (12, 2, 4), algo
        # Per-phase bytes add up to the off-diagonal traffic.
        np.testing.assert_allclose(r["a2a_bytes_by_phase"].sum(axis=(1, 2)), r["a2a_bytes"], rtol=1e-12)
        assert np.all(r["a2a_seconds_by_phase"] >= 0)


def test_unknown_dispatch_is_rejected(tmp_path, mpirun):
    proc = mpirun(2, "moe", "--dispatch", "carrier-pigeon", "--out", tmp_path / "x.h5", timeout=30)
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "--dispatch" in lines[0]


def read_node_run(path):
    with h5py.File(path, "r") as f:
        m = f["metrics"]
        out = {k: m[k][()] for k in ("train_loss", "expert_tokens", "a2a_bytes", "a2a_bytes_inter_node",
                                     "a2a_messages_inter_node") if k in m}
        for k in ("a2a_bytes_by_stage", "a2a_seconds_by_stage"):
            out[k] = m[k][()] if k in m else None
        out["attrs"] = {k: f.attrs[k] for k in ("nodes", "ranks_per_node", "ranks_per_node_min", "nodes_are")}
    return out


@pytest.mark.parametrize("np_ranks,G", [(4, 1), (4, 2), (4, 4), (2, 1), (2, 2)])
def test_hierarchical_is_the_flat_run_with_fewer_messages_across_nodes(tmp_path, run_moe, np_ranks, G):
    opts = dict(experts=8, top_k=2, steps=200, capacity_factor=1.0, seed=5, ranks_per_node=G, batch_tokens=128,
                val_tokens=256)
    _, flat = run_moe(tmp_path, np_ranks, dispatch="alltoallv", **opts)
    _, hier = run_moe(tmp_path, np_ranks, dispatch="hierarchical", **opts)
    a, b = read_node_run(flat), read_node_run(hier)
    np.testing.assert_array_equal(b["train_loss"], a["train_loss"])
    np.testing.assert_array_equal(b["expert_tokens"], a["expert_tokens"])
    nodes = np_ranks // G
    for r in (a, b):
        assert (r["attrs"]["nodes"], r["attrs"]["ranks_per_node"], r["attrs"]["ranks_per_node_min"]) == (nodes, G, G)
        assert r["attrs"]["nodes_are"] == "virtual (--ranks-per-node)"
    # Every row crosses nodes once either way; the hierarchical exchange aggregates the messages.
    np.testing.assert_array_equal(b["a2a_bytes_inter_node"], a["a2a_bytes_inter_node"])
    if nodes == 1:
        assert np.all(a["a2a_bytes_inter_node"] == 0) and np.all(b["a2a_messages_inter_node"] == 0)
    else:
        assert np.all(a["a2a_bytes_inter_node"] > 0)
        assert np.all(b["a2a_messages_inter_node"] <= a["a2a_messages_inter_node"])
        if G > 1:
            assert b["a2a_messages_inter_node"].sum() < a["a2a_messages_inter_node"].sum()
    assert a["a2a_bytes_by_stage"] is None and a["a2a_seconds_by_stage"] is None  # flat: no stages
    stages = b["a2a_bytes_by_stage"]
    assert stages.shape == (200, 2, 2) and b["a2a_seconds_by_stage"].shape == (200, 2, 2)
    np.testing.assert_allclose(stages[:, :, 1].sum(axis=1), b["a2a_bytes_inter_node"], rtol=1e-12)
    np.testing.assert_allclose(stages.sum(axis=(1, 2)), b["a2a_bytes"], rtol=1e-12)
    assert np.all(b["a2a_seconds_by_stage"] >= 0)


def test_ranks_per_node_must_divide_the_ranks(tmp_path, mpirun):
    proc = mpirun(4, "moe", "--ranks-per-node", "3", "--out", tmp_path / "x.h5", timeout=30)
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "--ranks-per-node" in lines[0], lines
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("np_ranks,dispatch,placement", [
    (4, "alltoallv", "round-robin"), (4, "hierarchical", "round-robin"), (2, "p2p", "round-robin"),
    (2, "padded", "round-robin"), (4, "hierarchical", "5,2,7,0,3,6,1,4")])
def test_other_placements_are_the_same_run(tmp_path, run_moe, np_ranks, dispatch, placement):
    """--expert-placement round-robin (expert e on rank e mod N) or a listed order moves other
    rows between other ranks and gives the same bits: K = 3 choices and a shared expert, so the
    order in which a token's expert outputs are summed would show."""
    opts = dict(experts=8, top_k=3, shared_experts=1, steps=200, capacity_factor=1.0, seed=7, batch_tokens=128,
                val_tokens=256, dispatch=dispatch, ranks_per_node=2)
    _, contiguous = run_moe(tmp_path, np_ranks, expert_placement="contiguous", **opts)
    _, round_robin = run_moe(tmp_path, np_ranks, expert_placement=placement, **opts)
    with h5py.File(contiguous, "r") as a, h5py.File(round_robin, "r") as b:
        assert b.attrs["expert_placement"] == placement
        for k in ("train_loss", "expert_tokens", "rank_expert_tokens", "gate_mass"):
            np.testing.assert_array_equal(b["metrics"][k][()], a["metrics"][k][()], err_msg=k)
        assert b["final"].attrs["val_loss"] == a["final"].attrs["val_loss"]
        # The experts sit elsewhere: rank 0 sends other ranks other rows (padded moves fixed
        # slots whatever they hold).
        if dispatch != "padded":
            assert not np.array_equal(b["metrics/traffic"][()], a["metrics/traffic"][()])
    # The cost model rebuilds the round-robin run's traffic from its routing and placement
    # (rank to rank for the flat exchanges; the hierarchical one relays, so across nodes).
    from moesim_analysis import costmodel
    run = costmodel.RunRouting.from_file(round_robin)
    assert run.placement == placement
    if dispatch in ("alltoallv", "p2p"):
        rec = run.reconstruction_error()
        assert rec["relative_error"] == 0.0 and rec["max_element_relative_error"] == 0.0
    if dispatch in ("alltoallv", "hierarchical"):
        chk = run.node_check()
        np.testing.assert_array_equal(chk["model_inter_bytes"], chk["logged_inter_bytes"])
