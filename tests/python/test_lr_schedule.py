"""The learning-rate schedule and Adam's options end to end: metrics/lr follows
--lr-warmup-steps / --lr-decay / --min-lr, the defaults keep the constant --lr, a resumed run
continues the schedule from its step, and bad values are one error line."""
from __future__ import annotations

import math
import shutil

import h5py
import numpy as np
import pytest

from moesim_testing import QUICK_EXIT_ENV, check_rejected, run_mpi


def expected_lr(lr, warmup, decay, min_lr, steps):
    out = []
    for s in range(1, steps + 1):
        if s <= warmup:
            out.append(lr * s / warmup)
            continue
        u = (s - warmup) / (steps - warmup)
        if decay == "constant":
            out.append(lr)
        elif decay == "linear":
            out.append(min_lr + (lr - min_lr) * (1 - u))
        else:
            out.append(min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * u)))
    return np.array(out)


def metrics(path):
    with h5py.File(path, "r") as f:
        assert f.attrs["complete"] == 1
        return {k: f["metrics"][k][()] for k in f["metrics"]}, dict(f.attrs)


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
def test_logged_lr_follows_the_schedule(tmp_path, run_moe, decay):
    _, path = run_moe(tmp_path, 2, steps=16, lr=4e-3, lr_warmup_steps=4, lr_decay=decay, min_lr=5e-4)
    m, a = metrics(path)
    assert a["lr_warmup_steps"] == 4 and a["lr_decay"] == decay and a["min_lr"] == 5e-4
    want = expected_lr(4e-3, 4, decay, 5e-4, 16)
    np.testing.assert_allclose(m["lr"], want, rtol=1e-12, atol=0)
    assert m["lr"][0] == pytest.approx(1e-3) and m["lr"][3] == pytest.approx(4e-3)
    if decay != "constant":
        assert m["lr"][-1] == pytest.approx(5e-4, rel=1e-12)


def test_defaults_keep_the_constant_lr(tmp_path, run_moe):
    _, path = run_moe(tmp_path, 1, steps=5, lr=2e-3)
    m, a = metrics(path)
    np.testing.assert_array_equal(m["lr"], np.full(5, 2e-3))
    assert a["lr_decay"] == "constant" and a["lr_warmup_steps"] == 0
    assert (a["adam_beta1"], a["adam_beta2"], a["adam_eps"]) == (0.9, 0.999, 1e-8)


def test_resume_continues_the_schedule(tmp_path, run_moe):
    # A warmup longer than the first leg: its rates depend on the step only, not on --steps.
    run = dict(precision="fp64", steps=12, flush_every=1, lr_warmup_steps=10, lr_decay="cosine", min_lr=1e-4)
    _, straight = run_moe(tmp_path, 2, **run)
    ref, _ = metrics(straight)
    ckpt = tmp_path / "half.h5"
    run_moe(tmp_path, 2, **{**run, "steps": 6}, checkpoint=ckpt)
    _, resumed = run_moe(tmp_path, 2, **run, checkpoint=ckpt, resume=True)
    m, a = metrics(resumed)
    assert a["resumed_at_step"] == 6
    np.testing.assert_array_equal(m["lr"], ref["lr"])
    np.testing.assert_array_equal(m["train_loss"], ref["train_loss"])


def test_adam_options_change_the_run(tmp_path, run_moe):
    _, base = run_moe(tmp_path, 1, steps=6)
    _, other = run_moe(tmp_path, 1, steps=6, adam_beta1=0.5, adam_beta2=0.99, adam_eps=1e-6)
    mb, _ = metrics(base)
    mo, a = metrics(other)
    assert (a["adam_beta1"], a["adam_beta2"], a["adam_eps"]) == (0.5, 0.99, 1e-6)
    assert mb["train_loss"][0] == mo["train_loss"][0]  # the first forward pass precedes any update
    assert not np.array_equal(mb["train_loss"], mo["train_loss"])


@pytest.mark.parametrize("args, words", [
    (["--lr-decay", "step"], ["--lr-decay", "constant, linear or cosine", "step"]),
    (["--lr-warmup-steps", "-1"], ["--lr-warmup-steps", ">= 0"]),
    (["--min-lr", "0.01", "--lr", "0.001"], ["--min-lr", "[0, --lr]"]),
    (["--min-lr", "-1"], ["--min-lr"]),
    (["--adam-beta1", "1"], ["--adam-beta1", "[0, 1)"]),
    (["--adam-beta2", "-0.1"], ["--adam-beta2", "[0, 1)"]),
    (["--adam-eps", "0"], ["--adam-eps", "> 0"]),
])
def test_bad_schedule_options(tmp_path, args, words):
    out = tmp_path / "bad.h5"
    proc = run_mpi(2, "moe", "--steps", "2", "--quiet", "--out", out, *args, env=QUICK_EXIT_ENV)
    check_rejected(proc, words, "moe")
    assert not out.exists()
