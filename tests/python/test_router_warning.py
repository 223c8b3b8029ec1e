"""The top-1 trap: with --gate topk and K = 1 the gate weight is the constant 1 and the router
learns from the balancing loss alone. moesim says so in one warning line (rank 0, stderr), and
--router-pre-softmax (the chosen expert weighted by its softmax probability) gives the router
its task gradient back."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from moesim_testing import QUICK_EXIT_ENV, check_rejected, run_mpi

WARNING = "moesim moe: warning:"


def warnings(proc):
    return [line for line in proc.stderr.splitlines() if WARNING in line]


def test_top_one_warns_once(tmp_path, run_moe):
    proc, _ = run_moe(tmp_path, 2, top_k=1, steps=2, layers=2)  # two MoE layers, two ranks
    lines = warnings(proc)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(WARNING)
    assert "--gate topk" in lines[0] and "--router-pre-softmax" in lines[0]
    proc, _ = run_moe(tmp_path, 2, top_k=1, steps=2, gate="noisy-topk")
    assert len(warnings(proc)) == 1, proc.stderr


@pytest.mark.parametrize("opts", [
    dict(top_k=2),
    dict(top_k=1, gate="switch"),
    dict(top_k=1, router_pre_softmax=True),
    dict(top_k=1, granularity=2),  # K = 2 as the layers run it
    dict(top_k=1, gate="hash"),
    dict(top_k=1, gate="sbase"),
    dict(top_k=1, moe_every=0),    # no MoE block
])
def test_no_warning(tmp_path, run_moe, opts):
    proc, _ = run_moe(tmp_path, 2, steps=2, **opts)
    assert warnings(proc) == [], proc.stderr


def test_no_warning_for_one_expert(tmp_path, run_moe):
    proc, _ = run_moe(tmp_path, 1, experts=1, top_k=1, steps=2)
    assert warnings(proc) == [], proc.stderr


def test_pre_softmax_needs_topk(tmp_path):
    proc = run_mpi(2, "moe", "--gate", "switch", "--top-k", "1", "--router-pre-softmax", "--steps", "1",
                   "--quiet", "--out", tmp_path / "x.h5", env=QUICK_EXIT_ENV)
    check_rejected(proc, ["--router-pre-softmax", "topk", "switch"], "moe")


def router_weights(path):
    with h5py.File(path, "r") as f:
        return {k: f["replicated"][k]["value"][()] for k in f["replicated"] if ".router." in k}


@pytest.mark.parametrize("pre_softmax", [False, True])
def test_router_learns_from_the_task_only_with_pre_softmax(tmp_path, run_moe, pre_softmax):
    # No balancing or z-loss: whatever moves the router comes from the task loss.
    opts = dict(top_k=1, aux_loss_weight=0, z_loss=0, precision="fp64", router_pre_softmax=pre_softmax)
    w = {}
    for steps in (1, 6):
        ckpt = tmp_path / f"ckpt_{pre_softmax}_{steps}.h5"
        _, out = run_moe(tmp_path, 2, steps=steps, checkpoint=ckpt, **opts)
        w[steps] = router_weights(ckpt)
        with h5py.File(out, "r") as f:
            assert f.attrs["router_pre_softmax"] == int(pre_softmax)
    assert w[1].keys() == w[6].keys() and len(w[1]) == 2
    moved = [not np.array_equal(w[1][k], w[6][k]) for k in w[1]]
    assert all(moved) if pre_softmax else not any(moved)
