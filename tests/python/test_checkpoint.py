"""Checkpoints end to end: the HDF5 layout read back with h5py, resumed runs that give the
losses of an uninterrupted one (on the rank count that wrote the checkpoint and on others),
and runs stopped by SIGTERM or killed by SIGKILL that continue from their checkpoint."""
from __future__ import annotations

import shutil
import signal

import h5py
import numpy as np
import pytest

from moesim_testing import error_lines, signal_job, wait_job_gone
from test_kill import job  # noqa: F401  (a fixture)

RUN = dict(experts=4, top_k=2, precision="fp64", steps=12, flush_every=1, eval_every=4)
SERIES = ["step", "train_loss", "aux_loss", "dropped_fraction", "gate_entropy", "expert_tokens",
          "val_step", "val_loss"]


def metrics(path):
    with h5py.File(path, "r") as f:
        return ({name: f["metrics"][name][()] for name in f["metrics"]}, dict(f.attrs),
                dict(f["final"].attrs))


def test_checkpoint_layout(run_moe, tmp_path):
    ckpt = tmp_path / "ckpt.h5"
    _, out = run_moe(tmp_path, 2, **{**RUN, "steps": 6}, checkpoint=ckpt)
    assert not (tmp_path / "ckpt.h5.tmp").exists()
    with h5py.File(ckpt, "r") as f:
        a = f.attrs
        assert a["kind"] == "checkpoint" and a["complete"] == 1 and a["checkpoint_version"] == 1
        assert a["step"] == 6 and a["adam_t"] == 6 and a["ranks"] == 2 and a["experts"] == 4
        assert a["precision"] == "fp64"
        assert "experts = 4" in a["options"] and "checkpoint" not in a["options"]
        assert f["train"].attrs["step"] == 6
        # Every replicated parameter by name, with its Adam moments.
        rep = f["replicated"]
        assert {"adapter.w", "head.w", "block0.moe.router.w", "block1.norm.g"} <= set(rep)
        for name in rep:
            assert set(rep[name]) == {"value", "adam_m", "adam_v"}
            assert rep[name]["value"].dtype == np.float64
        assert rep["block0.moe.router.w/value"].shape == (16, 4)
        # Expert parameters stacked by global expert index; each row written by its owner.
        ex = f["experts"]
        assert set(ex) == {f"block{l}.moe.expert.{p}" for l in (0, 1) for p in ("w1", "b1", "w2", "b2")}
        w1 = ex["block0.moe.expert.w1/value"][()]
        assert w1.shape == (4, 16, 32)
        assert all(np.abs(w1[e]).sum() > 0 for e in range(4))
        assert not np.array_equal(w1[0], w1[3])
        assert np.all(ex["block0.moe.expert.w1/adam_v"][()] > 0)
        # The run's metrics so far.
        np.testing.assert_array_equal(f["metrics/step"][()], np.arange(1, 7))
    m, _, _ = metrics(out)
    with h5py.File(ckpt, "r") as f:
        np.testing.assert_array_equal(f["metrics/train_loss"][()], m["train_loss"])


def test_resume_gives_the_uninterrupted_losses_on_any_rank_count(run_moe, tmp_path):
    _, straight = run_moe(tmp_path, 2, **RUN)
    ref, _, ref_final = metrics(straight)
    half = tmp_path / "half.h5"
    run_moe(tmp_path, 2, **{**RUN, "steps": 6}, checkpoint=half)
    for np_ in (2, 4, 1):
        ckpt = tmp_path / f"resume_np{np_}.h5"
        shutil.copy(half, ckpt)
        _, out = run_moe(tmp_path, np_ if np_ > 1 else 0, **RUN, checkpoint=ckpt, resume=True)
        m, root, final = metrics(out)
        assert root["complete"] == 1 and root["resumed_at_step"] == 6 and root["ranks"] == max(np_, 1)
        for name in SERIES:
            assert m[name].shape == ref[name].shape, name
        np.testing.assert_array_equal(m["step"], np.arange(1, 13))
        np.testing.assert_array_equal(m["val_step"], [4, 8, 12])
        # Bit for bit on any rank count (--chunk-tokens: rank-count invariant sums).
        assert root["bit_identical"] == 1, root["bit_identical_reason"]
        np.testing.assert_array_equal(m["train_loss"], ref["train_loss"], err_msg=f"{np_} ranks")
        np.testing.assert_array_equal(m["val_loss"], ref["val_loss"], err_msg=f"{np_} ranks")
        assert final["val_loss"] == ref_final["val_loss"]
        np.testing.assert_array_equal(m["expert_tokens"], ref["expert_tokens"])
        assert final["steps_done"] == 12
        with h5py.File(ckpt, "r") as f:
            assert f.attrs["step"] == 12 and f.attrs["ranks"] == max(np_, 1)


def test_resume_with_fewer_steps_than_the_checkpoint_is_refused(run_moe, tmp_path):
    """A checkpoint at step 6 resumed with --steps 3 once wrote steps = 3 beside 6 rows of
    metrics. It is refused before --out is touched: the earlier complete run file survives."""
    ckpt = tmp_path / "six.h5"
    _, out = run_moe(tmp_path, 2, **{**RUN, "steps": 6}, checkpoint=ckpt, out=tmp_path / "run.h5")
    proc, _ = run_moe(tmp_path, 2, check=False, **{**RUN, "steps": 3}, checkpoint=ckpt, resume=True,
                      out=tmp_path / "run.h5")
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "--steps (3) is below the 6 steps" in lines[0], proc.stderr
    _, root, fin = metrics(out)
    assert root["complete"] == 1 and root["steps"] == 6 and fin["steps_done"] == 6


def test_resume_without_a_checkpoint_starts_afresh(run_moe, tmp_path):
    ckpt = tmp_path / "none_yet.h5"
    proc, out = run_moe(tmp_path, 2, **{**RUN, "steps": 4, "quiet": False}, checkpoint=ckpt, resume=True)
    assert "starting at step 1" in proc.stdout
    m, root, _ = metrics(out)
    assert root["complete"] == 1 and "resumed_at_step" not in root
    np.testing.assert_array_equal(m["step"], np.arange(1, 5))
    assert ckpt.exists()


def test_sigterm_writes_a_checkpoint_and_the_run_continues(job, run_moe, tmp_path):
    ckpt = tmp_path / "stopped.h5"
    j = job(precision="fp64", checkpoint=ckpt, checkpoint_every=0, quiet=True)
    j.wait_for_rows(4)
    signal_job(j.proc, signal.SIGTERM)
    j.proc.wait(timeout=60)
    wait_job_gone(j.proc)
    assert j.proc.returncode != 0
    with h5py.File(j.out, "r") as f:
        stopped = int(f.attrs["stopped_at_step"])
    with h5py.File(ckpt, "r") as f:
        assert f.attrs["complete"] == 1 and f.attrs["step"] == stopped
    total = stopped + 3
    opts = dict(experts=4, top_k=2, d_model=16, d_ff=32, layers=2, batch_tokens=256, val_tokens=256,
                precision="fp64", steps=total)
    _, straight = run_moe(tmp_path, 2, **opts)
    _, resumed = run_moe(tmp_path, 4, **opts, checkpoint=ckpt, resume=True, out=j.out)
    a, _, _ = metrics(straight)
    b, root, _ = metrics(resumed)
    assert root["complete"] == 1 and root["resumed_at_step"] == stopped
    np.testing.assert_array_equal(b["step"], np.arange(1, total + 1))
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-10, atol=0)


def test_sigkill_mid_run_resumes_from_the_last_periodic_checkpoint(job, run_moe, tmp_path):
    ckpt = tmp_path / "periodic.h5"
    j = job(precision="fp64", checkpoint=ckpt, checkpoint_every=3, quiet=True)
    j.wait_for_rows(8)
    signal_job(j.proc, signal.SIGKILL)
    wait_job_gone(j.proc)
    # Whatever the kill interrupted, the file under the checkpoint's name is whole.
    with h5py.File(ckpt, "r") as f:
        assert f.attrs["complete"] == 1
        step = int(f.attrs["step"])
        assert step % 3 == 0 and step >= 6
        assert f["metrics/step"].shape == (step,)
    total = step + 2
    opts = dict(experts=4, top_k=2, d_model=16, d_ff=32, layers=2, batch_tokens=256, val_tokens=256,
                precision="fp64", steps=total)
    _, straight = run_moe(tmp_path, 2, **opts)
    _, resumed = run_moe(tmp_path, 2, **opts, checkpoint=ckpt, resume=True, out=j.out)
    a, _, fa = metrics(straight)
    b, root, fb = metrics(resumed)
    assert root["complete"] == 1 and root["resumed_at_step"] == step
    np.testing.assert_array_equal(b["step"], np.arange(1, total + 1))
    np.testing.assert_array_equal(b["train_loss"], a["train_loss"])
    assert fb["val_loss"] == fa["val_loss"]


@pytest.mark.parametrize("opts, message", [
    (dict(resume=True), "--resume needs --checkpoint"),
    (dict(checkpoint_every=5), "--checkpoint-every needs --checkpoint"),
])
def test_bad_checkpoint_options(run_moe, tmp_path, opts, message):
    proc, _ = run_moe(tmp_path, 2, check=False, **opts)
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_resume_into_another_model_is_refused(run_moe, tmp_path):
    ckpt = tmp_path / "c.h5"
    run_moe(tmp_path, 2, **{**RUN, "steps": 2}, checkpoint=ckpt)
    proc, _ = run_moe(tmp_path, 2, check=False, **{**RUN, "d_ff": 48}, checkpoint=ckpt, resume=True)
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    # Refused by the options it stores, before any shape is compared (tests/mpi/test_checkpoint
    # covers a shape mismatch itself).
    assert len(lines) == 1 and "written by another run (--d-ff" in lines[0] and "error on rank" not in proc.stderr
    proc, _ = run_moe(tmp_path, 2, check=False, **{**RUN, "precision": "fp32"}, checkpoint=ckpt, resume=True)
    assert proc.returncode == 2 and "fp64" in proc.stderr
    (tmp_path / "junk.h5").write_text("not hdf5")
    proc, _ = run_moe(tmp_path, 2, check=False, **RUN, checkpoint=tmp_path / "junk.h5", resume=True)
    assert proc.returncode == 2 and "cannot read checkpoint" in proc.stderr and "error on rank" not in proc.stderr


@pytest.mark.parametrize("option, value", [("drop_policy", "probs"), ("min_capacity", 200),
                                           ("router_jitter", 0.1), ("score_function", "sigmoid")])
def test_resume_refuses_another_routing_option(run_moe, tmp_path, option, value):
    """The routing options change the trajectory: a resume that changes one is another run."""
    ckpt = tmp_path / "c.h5"
    run_moe(tmp_path, 2, **{**RUN, "steps": 2}, checkpoint=ckpt)
    proc, _ = run_moe(tmp_path, 2, check=False, **RUN, **{option: value}, checkpoint=ckpt, resume=True)
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "written by another run (--" + option.replace("_", "-") in lines[0], proc.stderr


def test_resume_may_change_the_device(run_moe, mpirun, tmp_path):
    """A checkpoint is the same file whichever device computed the experts: a resume with
    --device cuda is the same run (on a machine without a GPU it then stops for want of one,
    not as another run)."""
    ckpt = tmp_path / "c.h5"
    run_moe(tmp_path, 2, **{**RUN, "steps": 2, "precision": "fp32"}, checkpoint=ckpt)
    proc, _ = run_moe(tmp_path, 2, check=False, **{**RUN, "precision": "fp32"}, device="cuda", checkpoint=ckpt,
                      resume=True)
    info = mpirun(1, "info").stdout
    if "GPUs           none" not in info and "CUDA           not built" not in info:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "--device cuda" in lines[0] and "another run" not in lines[0], proc.stderr


def test_router_state_and_noise_weights_are_checkpointed(run_moe, tmp_path):
    """Noisy top-k's W_noise is a parameter, --balance bias's selection bias is state: both
    must come back, or the continued losses drift from the uninterrupted ones."""
    opts = {**RUN, "gate": "noisy-topk", "balance": "bias", "steps": 8, "eval_every": 0}
    _, straight = run_moe(tmp_path, 2, **opts)
    ckpt = tmp_path / "router.h5"
    run_moe(tmp_path, 2, **{**opts, "steps": 4}, checkpoint=ckpt)
    with h5py.File(ckpt, "r") as f:
        bias = f["state/block0.moe.router.selection_bias"][()]
        assert bias.shape == (4,) and np.any(bias != 0)
        assert "block0.moe.router.w_noise" in f["replicated"]
    _, resumed = run_moe(tmp_path, 2, **opts, checkpoint=ckpt, resume=True)
    np.testing.assert_array_equal(metrics(resumed)[0]["train_loss"], metrics(straight)[0]["train_loss"])
