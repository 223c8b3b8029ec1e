"""The HDF5 run file written by `moesim moe` follows the run-file contract."""
from __future__ import annotations

import math
import os
import re
import socket
from datetime import datetime

import h5py
import numpy as np
import pytest

from moesim_testing import attrs_of

P = 2
CFG = dict(experts=4, top_k=2, d_model=16, d_ff=32, layers=2, steps=60, batch_tokens=256,
           val_tokens=512, lr=3e-3, seed=3, capacity_factor=1.0, input_dim=16)

SERIES_1D = ["step", "train_loss", "aux_loss", "dropped_fraction", "tokens_per_s", "a2a_bytes",
             "a2a_seconds", "a2a_wait_seconds", "compute_seconds", "step_seconds"]
FINAL_ATTRS = ["val_loss", "params_total", "params_active", "flops_per_token",
               "param_utilization", "train_loss", "tokens_per_s", "steps_done", "dropped_fraction",
               "a2a_wait_seconds", "logging_seconds", "peak_rss_bytes"]


def expected_params(d_in, D, F, E, K, L, d_out=1):
    """Parameter and FLOP counts for --moe-every 1 (every block is an MoE block)."""
    head = (d_in + 1) * D + D + (D + 1) * d_out  # adapter, final norm, head
    expert = 2 * D * F + F + D
    total = head + L * (D + D * E + E * expert)
    active = head + L * (D + D * E + K * expert)
    flops = 2 * d_in * D + 2 * D * d_out + L * (2 * D * E + K * 4 * D * F)
    return total, active, flops


def load(path):
    with h5py.File(path, "r") as f:
        root = attrs_of(f)
        final = dict(f["final"].attrs) if "final" in f else {}
        metrics = {name: f["metrics"][name][()] for name in f["metrics"]}
        dtypes = {name: f["metrics"][name].dtype for name in f["metrics"]}
    return root, final, metrics, dtypes


@pytest.fixture(scope="module")
def main_run(tmp_path_factory, run_moe):
    proc, path = run_moe(tmp_path_factory.mktemp("run_file"), P, **CFG)
    return proc, path, *load(path)


@pytest.fixture(scope="module")
def info_text(mpirun):
    return mpirun(1, "info", check=True).stdout


def test_root_attributes_and_completion(main_run, info_text):
    _, path, root, _, _, _ = main_run
    assert root["schema_version"] == 2
    assert root["data_seed"] == 1  # schema 2: the task's seed, apart from the model's `seed`
    assert root["complete"] == 1
    assert root["kind"] == "moe"
    # Every resolved option is stored under its own name, dashes as underscores.
    for key in ("experts", "top_k", "d_model", "d_ff", "layers", "steps", "batch_tokens", "seed",
                "input_dim", "val_tokens"):
        assert root[key] == CFG[key], key
        assert isinstance(root[key], (int, np.integer)), key
    assert root["lr"] == pytest.approx(CFG["lr"], rel=1e-12)
    assert root["capacity_factor"] == pytest.approx(CFG["capacity_factor"], rel=1e-12)
    assert root["task"] == "regimes"
    assert root["problem"] == "regression"
    assert root["precision"] == "fp32"
    # Options left at their defaults are stored too.
    assert root["moe_every"] == 1
    assert root["aux_loss_weight"] == pytest.approx(0.01)
    assert root["out"] == str(path)

    # Provenance.
    assert root["ranks"] == P
    # The placement, as MPI_COMM_TYPE_SHARED sees it: every rank of this test on this machine.
    assert (root["nodes"], root["ranks_per_node"], root["ranks_per_node_min"]) == (1, P, P)
    assert root["host"] == socket.gethostname()
    version = re.search(r"^moesim (\S+)", info_text, re.M).group(1)
    assert root["moesim_version"] == version
    revision = re.search(r"git revision\s+(\S+)", info_text).group(1)
    assert root["git_revision"] == revision
    compiler = re.search(r"compiler\s+(.+)$", info_text, re.M).group(1).strip()
    assert root["compiler"] == compiler
    start = datetime.fromisoformat(root["start_time"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(root["end_time"].replace("Z", "+00:00"))
    assert start <= end
    if "SLURM_JOB_ID" in os.environ:
        assert root["slurm_job_id"] == os.environ["SLURM_JOB_ID"]
    else:
        assert "slurm_job_id" not in root
    assert "stopped_at_step" not in root


def test_slurm_job_id_recorded(tmp_path, run_moe):
    env = {"SLURM_JOB_ID": "424242"}
    # One rank without a launcher: mpirun itself would react to SLURM variables.
    _, path = run_moe(tmp_path, 0, steps=2, env=env)
    root, _, _, _ = load(path)
    assert root["slurm_job_id"] == "424242"
    assert root["ranks"] == 1
    assert (root["nodes"], root["ranks_per_node"], root["ranks_per_node_min"]) == (1, 1, 1)
    assert root["complete"] == 1


def test_metric_shapes_and_dtypes(main_run):
    _, _, root, _, m, dtypes = main_run
    S, E, L = CFG["steps"], CFG["experts"], CFG["layers"]
    for name in SERIES_1D:
        assert m[name].shape == (S,), name
        assert np.all(np.isfinite(m[name])), name
    assert np.issubdtype(dtypes["step"], np.integer)
    for name in SERIES_1D[1:]:
        assert np.issubdtype(dtypes[name], np.floating), name
    np.testing.assert_array_equal(m["step"], np.arange(1, S + 1))
    assert m["expert_tokens"].shape == (S, E)
    assert m["expert_tokens_per_layer"].shape == (S, L, E)
    assert m["traffic"].shape == (S, P, P)
    for name in ("expert_tokens", "expert_tokens_per_layer", "traffic"):
        assert np.issubdtype(dtypes[name], np.integer), name
        assert np.all(m[name] >= 0), name


def test_timing_metrics_plausible(main_run):
    _, _, _, final, m, _ = main_run
    assert np.all(m["step_seconds"] > 0)
    assert np.all(m["tokens_per_s"] > 0)
    assert np.all(m["a2a_seconds"] >= 0)
    assert np.all(m["compute_seconds"] >= 0)
    assert np.all(m["a2a_seconds"] <= m["step_seconds"])
    assert np.all(m["a2a_wait_seconds"] >= 0)
    assert np.all(m["a2a_wait_seconds"] <= m["step_seconds"])
    # tokens/s of a step is the global batch over that step's time.
    np.testing.assert_allclose(m["tokens_per_s"] * m["step_seconds"], CFG["batch_tokens"], rtol=1e-6)
    assert final["tokens_per_s"] > 0


def test_traffic_matches_a2a_bytes(main_run):
    _, _, _, _, m, _ = main_run
    traffic = m["traffic"].astype(np.int64)
    diag = np.einsum("sii->s", traffic)
    off_diag = traffic.sum(axis=(1, 2)) - diag
    np.testing.assert_array_equal(m["a2a_bytes"], off_diag.astype(np.float64))
    # With 2 ranks and 4 experts both ranks keep some tokens and send some away.
    assert np.all(diag > 0)
    assert np.all(off_diag > 0)


def test_expert_token_accounting_with_drops(main_run):
    _, _, _, final, m, _ = main_run
    B, K, L, E = CFG["batch_tokens"], CFG["top_k"], CFG["layers"], CFG["experts"]
    et, per_layer, dropped = m["expert_tokens"], m["expert_tokens_per_layer"], m["dropped_fraction"]
    np.testing.assert_array_equal(per_layer.sum(axis=1), et)
    assert np.all((dropped >= 0) & (dropped < 1))
    # capacity-factor 1.0 must actually drop something, or the identity below is trivial.
    assert dropped.max() > 0
    kept = et.sum(axis=1)
    expected = np.round(B * K * L * (1.0 - dropped)).astype(np.int64)
    np.testing.assert_array_equal(kept, expected)
    # Expert capacity ceil(C*B*K/E) per MoE layer is never exceeded, and a layer only drops
    # tokens when one of its experts is full.
    cap = math.ceil(CFG["capacity_factor"] * B * K / E)
    assert per_layer.max() <= cap
    layer_kept = per_layer.sum(axis=2)
    full = per_layer.max(axis=2) == cap
    assert np.all(full[layer_kept < B * K])
    assert final["dropped_fraction"] == pytest.approx(dropped.mean(), rel=1e-9, abs=1e-12)


def test_final_group(main_run):
    _, _, root, final, m, _ = main_run
    for key in FINAL_ATTRS:
        assert key in final, key
    assert final["steps_done"] == CFG["steps"]
    # The slowest rank's HDF5 logging time is a part of the run's wall time; a rank holds at
    # least its code and MPI (many MiB) resident.
    assert 0 < final["logging_seconds"] < final["wall_seconds"]
    assert final["peak_rss_bytes"] > 16 * 2**20
    assert final["train_loss"] == pytest.approx(m["train_loss"][-1], rel=1e-12)
    assert math.isfinite(final["val_loss"]) and final["val_loss"] > 0
    total, active, flops = expected_params(CFG["input_dim"], CFG["d_model"], CFG["d_ff"],
                                           CFG["experts"], CFG["top_k"], CFG["layers"])
    assert final["params_total"] == total
    assert final["params_active"] == active
    assert final["flops_per_token"] == flops
    assert final["param_utilization"] == pytest.approx(total / flops, rel=1e-12)
    assert "val_accuracy" not in final  # regression has no accuracy


def test_losses_finite_and_training_learns(main_run):
    _, _, _, final, m, _ = main_run
    loss, aux = m["train_loss"], m["aux_loss"]
    assert np.all(np.isfinite(loss)) and np.all(loss > 0)
    assert np.all(np.isfinite(aux)) and np.all(aux > 0)
    first, last = loss[:5].mean(), loss[-5:].mean()
    assert last < 0.7 * first, f"loss did not go down: first 5 steps {first:.4f}, last 5 {last:.4f}"
    # Validation on a separate stream is in the same range as the final training loss.
    assert final["val_loss"] < first


def test_dropless_has_no_drops(tmp_path, run_moe):
    B, K, L = 256, 2, 2
    _, path = run_moe(tmp_path, P, steps=8, capacity_factor=0, batch_tokens=B, top_k=K, layers=L,
                      seed=11)
    root, final, m, _ = load(path)
    assert root["complete"] == 1
    np.testing.assert_array_equal(m["dropped_fraction"], np.zeros(8))
    np.testing.assert_array_equal(m["expert_tokens"].sum(axis=1), np.full(8, B * K * L))
    np.testing.assert_array_equal(m["expert_tokens_per_layer"].sum(axis=2), np.full((8, L), B * K))
    assert final["dropped_fraction"] == 0


def test_moe_every_two_counts_only_moe_layers(tmp_path, run_moe):
    B, K, L, E = 128, 2, 4, 4
    _, path = run_moe(tmp_path, P, steps=4, capacity_factor=0, batch_tokens=B, top_k=K, layers=L,
                      experts=E, moe_every=2)
    _, _, m, _ = load(path)
    L_moe = 2
    assert m["expert_tokens_per_layer"].shape == (4, L_moe, E)
    np.testing.assert_array_equal(m["expert_tokens"].sum(axis=1), np.full(4, B * K * L_moe))


def test_classification_run(tmp_path, run_moe):
    cfg = dict(problem="classification", classes=3, steps=20, seed=5)
    _, path = run_moe(tmp_path, P, **cfg)
    root, final, m, _ = load(path)
    assert root["complete"] == 1
    assert root["problem"] == "classification"
    assert root["classes"] == 3
    assert "val_accuracy" in final
    assert 0.0 <= final["val_accuracy"] <= 1.0
    assert math.isfinite(final["val_loss"])
    assert np.all(np.isfinite(m["train_loss"]))
    total, active, flops = expected_params(16, 16, 32, 4, 2, 2, d_out=3)
    assert (final["params_total"], final["params_active"], final["flops_per_token"]) == (total, active, flops)
