"""The same seed gives the same training run on 1, 2 and 4 ranks.

Expert parallelism only changes where the work happens: routing, capacity decisions,
token counts and, with the default --chunk-tokens, losses are identical bit for bit
(test_bit_identity.py checks every metric and the model over more steps and configs).
Run with `pytest -s` to see the measured errors.
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest

RANKS = (1, 2, 4)
# capacity-factor 1.0 so that tokens are dropped and the capacity decision is exercised.
CFG = dict(experts=4, top_k=2, d_model=16, d_ff=32, layers=2, steps=30, batch_tokens=256,
           val_tokens=512, seed=7, capacity_factor=1.0)


def max_rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


@pytest.fixture(scope="module", params=["fp32", "fp64"])
def runs(request, tmp_path_factory, run_moe):
    precision = request.param
    d = tmp_path_factory.mktemp(f"ranks_{precision}")
    out = {}
    for p in RANKS:
        _, path = run_moe(d, p, precision=precision, out=d / f"np{p}.h5", **CFG)
        with h5py.File(path, "r") as f:
            assert f.attrs["complete"] == 1
            assert f.attrs["ranks"] == p
            assert f.attrs["precision"] == precision
            assert f.attrs["bit_identical"] == 1, f.attrs["bit_identical_reason"]
            out[p] = {name: f["metrics"][name][()] for name in f["metrics"]}
            out[p]["val_loss"] = f["final"].attrs["val_loss"]
    return precision, out


def test_train_loss_independent_of_rank_count(runs):
    precision, out = runs
    ref = out[1]["train_loss"]
    assert ref.shape == (CFG["steps"],)
    errs = {p: max_rel_err(out[p]["train_loss"], ref) for p in RANKS[1:]}
    print(f"\n[{precision}] max relative train_loss error vs 1 rank: "
          + ", ".join(f"{p} ranks {e:.3e}" for p, e in errs.items()))
    for p, e in errs.items():
        assert np.array_equal(out[p]["train_loss"], ref), f"{p} ranks: max rel. train_loss error {e:.3e}, not 0"


def test_aux_and_val_loss_independent_of_rank_count(runs):
    precision, out = runs
    for p in RANKS[1:]:
        e_aux = max_rel_err(out[p]["aux_loss"], out[1]["aux_loss"])
        e_val = max_rel_err(out[p]["val_loss"], out[1]["val_loss"])
        print(f"\n[{precision}] {p} ranks: max rel. aux_loss error {e_aux:.3e}, val_loss error {e_val:.3e}")
        assert np.array_equal(out[p]["aux_loss"], out[1]["aux_loss"]), f"{p} ranks: aux_loss {e_aux:.3e}"
        assert out[p]["val_loss"] == out[1]["val_loss"], f"{p} ranks: val_loss {e_val:.3e}"


def test_routing_and_drops_identical(runs):
    _, out = runs
    ref = out[1]
    assert ref["dropped_fraction"].max() > 0, "config must drop tokens for this test to mean anything"
    for p in RANKS[1:]:
        np.testing.assert_array_equal(out[p]["expert_tokens"], ref["expert_tokens"], err_msg=f"{p} ranks")
        np.testing.assert_array_equal(out[p]["expert_tokens_per_layer"], ref["expert_tokens_per_layer"],
                                      err_msg=f"{p} ranks")
        np.testing.assert_array_equal(out[p]["dropped_fraction"], ref["dropped_fraction"],
                                      err_msg=f"{p} ranks")


def test_traffic_shape_follows_rank_count(runs):
    _, out = runs
    for p in RANKS:
        assert out[p]["traffic"].shape == (CFG["steps"], p, p)
    # One rank talks only to itself; more ranks move bytes between ranks.
    assert np.all(out[1]["a2a_bytes"] == 0)
    for p in RANKS[1:]:
        assert np.all(out[p]["a2a_bytes"] > 0)
    # The total traffic (self included) moves the same kept tokens whatever the rank count.
    totals = {p: out[p]["traffic"].sum(axis=(1, 2)) for p in RANKS}
    for p in RANKS[1:]:
        np.testing.assert_array_equal(totals[p], totals[1], err_msg=f"{p} ranks")
