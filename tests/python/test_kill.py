"""Killed and interrupted runs leave a readable, honestly incomplete run file.

The job is started in its own session (start_new_session=True). Open MPI's mpirun puts every
rank into a process group of its own inside that session, so "the job's process group" is
really several groups: mpirun's (pgid == mpirun's pid) and one per rank. `signal_job` signals
all of them, the way a batch system or `kill -- -PGID` of every group does; `kill_job` SIGKILLs
them all in `finally`, so no rank outlives a test.
"""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from moesim_testing import SessionJob, attrs_of, signal_job, steps_written, wait_job_gone

P = 2
LONG_RUN = dict(experts=4, top_k=2, d_model=16, d_ff=32, layers=2, steps=100000,
                batch_tokens=256, val_tokens=256, flush_every=1, progress_interval=0)
SERIES_1D = ["step", "train_loss", "aux_loss", "dropped_fraction", "tokens_per_s", "a2a_bytes",
             "a2a_seconds", "a2a_wait_seconds", "compute_seconds", "step_seconds"]


class Job(SessionJob):
    """A long `moesim moe` run on P ranks in its own session, output to files."""

    def __init__(self, tmp_path: Path, cmd, **overrides):
        opts = dict(LONG_RUN)
        opts.update(overrides)
        self.out = tmp_path / "long.h5"
        super().__init__(cmd.mpirun_command(P, "moe", *cmd.cli_args(opts), "--out", self.out), tmp_path,
                         "long", cmd.env())

    def wait_for_rows(self, n: int, timeout: float = 60) -> int:
        """Poll the run file until metrics/step has >= n rows (it is being written meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"run ended early with {self.proc.returncode}:\n{self.describe()}")
            rows = steps_written(self.out)
            if rows >= n:
                return rows
            time.sleep(0.05)
        pytest.fail(f"run file never reached {n} steps in {timeout} s")


@pytest.fixture
def job(tmp_path, moesim_cmd):
    jobs = []

    def start(**overrides):
        j = Job(tmp_path, moesim_cmd, **overrides)
        jobs.append(j)
        return j

    try:
        yield start
    finally:
        for j in jobs:
            j.close()


def read_run(path):
    with h5py.File(path, "r") as f:
        root = attrs_of(f)
        final = dict(f["final"].attrs) if "final" in f else {}
        metrics = {name: f["metrics"][name][()] for name in f["metrics"]}
    return root, final, metrics


def assert_stopped_cleanly(j: Job, rows_seen: int):
    out, err = j.output()
    assert j.proc.returncode != 0, "an interrupted run must not report success"
    root, final, m = read_run(j.out)
    assert root["complete"] == 0
    assert "end_time" not in root
    assert "stopped_at_step" in root, f"no stopped_at_step; stderr:\n{err[-2000:]}"
    stopped = int(root["stopped_at_step"])
    assert rows_seen <= stopped < LONG_RUN["steps"]
    # Stopped at a step boundary: every series holds exactly the finished steps.
    for name in SERIES_1D:
        assert m[name].shape == (stopped,), name
    np.testing.assert_array_equal(m["step"], np.arange(1, stopped + 1))
    assert m["expert_tokens"].shape[0] == stopped
    assert m["traffic"].shape[0] == stopped
    assert np.all(np.isfinite(m["train_loss"]))
    assert final.get("steps_done") == stopped
    # Rank 0 says so, once, and names the step.
    msgs = [line for line in err.splitlines() if "moesim" in line and "stopped" in line]
    assert len(msgs) == 1, err
    assert re.search(rf"\b{stopped}\b", msgs[0]), msgs[0]
    assert "error on rank" not in err


# --------------------------------------------------------------------------- tests


def test_sigkill_leaves_readable_incomplete_file(job):
    j = job()
    rows_seen = j.wait_for_rows(5)
    signal_job(j.proc, signal.SIGKILL)
    wait_job_gone(j.proc)
    assert j.proc.returncode != 0

    root, final, m = read_run(j.out)
    assert root["complete"] == 0
    assert "end_time" not in root
    assert "stopped_at_step" not in root
    assert root["experts"] == LONG_RUN["experts"]  # options were written up front
    n = m["step"].shape[0]
    assert n >= rows_seen >= 5
    np.testing.assert_array_equal(m["step"], np.arange(1, n + 1))
    # A kill mid-flush may leave one series a row ahead of another; the common rows are sound.
    common = min(m[name].shape[0] for name in SERIES_1D)
    assert common >= rows_seen - 1
    assert np.all(np.isfinite(m["train_loss"][:common]))
    assert "val_loss" not in final


def test_sigterm_stops_at_step_boundary(job):
    j = job()
    rows_seen = j.wait_for_rows(5)
    t0 = time.monotonic()
    signal_job(j.proc, signal.SIGTERM)
    j.proc.wait(timeout=60)
    assert time.monotonic() - t0 < 30
    wait_job_gone(j.proc)
    assert_stopped_cleanly(j, rows_seen)


def test_sigterm_to_mpirun_only_is_forwarded(job):
    """SIGTERM to mpirun's own process group only: Open MPI forwards it to the ranks.

    --quiet matters: after SIGTERM, mpirun stops draining the ranks' stdout before it
    forwards the signal, so a rank 0 printing a progress line every step blocks in write()
    and is SIGKILLed without stopping cleanly (see the test report). Signalling the ranks
    directly, as test_sigterm_stops_at_step_boundary does, has no such problem.
    """
    launcher = os.path.basename(os.environ.get("MOESIM_MPIEXEC", "mpirun").split()[0])
    if launcher not in ("mpirun", "mpiexec", "orterun"):
        pytest.skip(f"signal forwarding checked for Open MPI's mpirun only, not {launcher}")
    j = job(quiet=True)
    rows_seen = j.wait_for_rows(5)
    os.killpg(j.proc.pid, signal.SIGTERM)
    j.proc.wait(timeout=60)
    wait_job_gone(j.proc)
    assert_stopped_cleanly(j, rows_seen)


def test_flush_by_time_alone(job):
    """--flush-every 0: the rows still reach the file, every --flush-seconds (agreed by the
    ranks at a step boundary), and keep coming; a kill loses at most that much."""
    j = job(flush_every=0, flush_seconds=0.25)
    rows = j.wait_for_rows(2)
    time.sleep(1.0)
    later = j.wait_for_rows(rows + 1, timeout=10)
    assert later > rows
    signal_job(j.proc, signal.SIGKILL)
    wait_job_gone(j.proc)
    _, _, m = read_run(j.out)
    np.testing.assert_array_equal(m["step"], np.arange(1, m["step"].shape[0] + 1))
    assert m["step"].shape[0] >= later


def test_no_flush_before_the_end_when_both_are_off(job):
    """The control: with neither interval the rows wait for the end (or a checkpoint)."""
    j = job(flush_every=0, flush_seconds=0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the run has started: its file has the options
        try:
            with h5py.File(j.out, "r") as f:
                if "experts" in f.attrs:
                    break
        except Exception:
            pass
        time.sleep(0.05)
    time.sleep(1.5)
    assert j.proc.poll() is None
    with h5py.File(j.out, "r") as f:
        assert f.attrs["experts"] == LONG_RUN["experts"]
        assert "metrics" not in f or "step" not in f["metrics"]
