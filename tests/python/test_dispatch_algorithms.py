"""The four dispatch algorithms (--dispatch alltoallv|allgather|p2p|padded) on the same run:
identical losses and token counts, their own timings, and padding only for `padded`."""
import h5py
import numpy as np
import pytest

from moesim_testing import error_lines

ALGORITHMS = ["alltoallv", "allgather", "p2p", "padded"]


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
    for algo in ("alltoallv", "allgather", "p2p"):
        r = runs[algo]
        assert np.all(r["padding_bytes"] == 0), algo
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
