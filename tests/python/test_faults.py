"""Faults and concurrent misuse (issue 13): a full disk, two writers of one file, resumes from
checkpoints that are corrupt or belong to another run. Each ends in one error line and exit 2
on every rank count, never a hang or a crash, and leaves no file damaged or wrongly complete.

The disk-full tests mount a small tmpfs, which needs root (or CAP_SYS_ADMIN); elsewhere they
are skipped with a message.
"""
from __future__ import annotations

import hashlib
import signal
import subprocess
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

from moesim_testing import (SessionJob, blobs, check_rejected, cli_args, mpirun_command, root_attrs, run_moe, run_mpi,
                            run_stack, signal_job, steps_written, subprocess_env, write_csv)

TIMEOUT = 120  # every case must end well inside this: a hang is the failure

SMALL = dict(steps=20, batch_tokens=256, d_model=16, d_ff=32, experts=4, top_k=2, layers=2, val_tokens=256,
             quiet=True)
# About 3 MiB of checkpoint on any rank count.
BIG = dict(steps=300, batch_tokens=1024, d_model=64, d_ff=128, experts=4, top_k=2, layers=2, val_tokens=256,
           checkpoint_every=100, quiet=True)


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def small_disk(tmp_path):
    """A directory on a tmpfs of `size` (e.g. '1M'); unmounted afterwards."""
    mounted = []

    def make(size: str) -> Path:
        d = tmp_path / f"disk_{size}_{len(mounted)}"
        d.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a {size} tmpfs here (needs root): {proc.stderr.strip()}")
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def assert_readable_incomplete(path: Path):
    with h5py.File(path, "r") as f:
        assert f.attrs["complete"] == 0
        if "metrics" in f:
            steps = f["metrics/step"][()]
            np.testing.assert_array_equal(steps, np.arange(1, len(steps) + 1))


# --------------------------------------------------------------------------- disk full


@pytest.mark.parametrize("np_", [1, 4])
def test_a_checkpoint_that_does_not_fit_is_one_error_not_a_hang(tmp_path, small_disk, np_):
    disk = small_disk("1M")
    proc, out = run_moe(tmp_path, np_, check=False, timeout=TIMEOUT, checkpoint=disk / "c.h5", **BIG)
    check_rejected(proc, ["checkpoint", "No space left on device"])
    assert "Segmentation" not in proc.stderr and "MPI_ABORT" not in proc.stderr
    assert not (disk / "c.h5").exists() and not (disk / "c.h5.tmp").exists()
    assert_readable_incomplete(out)


@pytest.mark.parametrize("np_", [1, 4])
def test_a_second_checkpoint_that_does_not_fit_keeps_the_first(tmp_path, small_disk, np_):
    disk = small_disk("5M")  # one checkpoint fits, a second beside it does not
    proc, out = run_moe(tmp_path, np_, check=False, timeout=TIMEOUT, checkpoint=disk / "c.h5", **BIG)
    check_rejected(proc, ["checkpoint", "No space left on device"])
    assert "Segmentation" not in proc.stderr and "MPI_ABORT" not in proc.stderr
    with h5py.File(disk / "c.h5", "r") as f:
        assert f.attrs["complete"] == 1 and f.attrs["step"] == 100
    assert not (disk / "c.h5.tmp").exists()
    assert_readable_incomplete(out)
    # The kept checkpoint resumes (on a disk with room) to the same result as an undisturbed run.
    kept = tmp_path / "kept.h5"
    kept.write_bytes((disk / "c.h5").read_bytes())
    whole, ref = run_moe(tmp_path, np_, timeout=TIMEOUT, **{**BIG, "checkpoint_every": 0})
    proc, resumed = run_moe(tmp_path, np_, timeout=TIMEOUT, checkpoint=kept, resume=True,
                            **{**BIG, "checkpoint_every": 0})
    with h5py.File(ref, "r") as a, h5py.File(resumed, "r") as b:
        np.testing.assert_array_equal(a["metrics/train_loss"][()], b["metrics/train_loss"][()])
        assert a["final"].attrs["val_loss"] == b["final"].attrs["val_loss"]


@pytest.mark.parametrize("np_", [1, 4])
def test_a_run_file_that_fills_the_disk_stops_cleanly(tmp_path, small_disk, np_):
    disk = small_disk("256K")
    proc, out = run_moe(tmp_path, np_, check=False, timeout=TIMEOUT, out=disk / "run.h5",
                        **{**SMALL, "steps": 5000, "flush_every": 1})
    check_rejected(proc, ["run.h5", "no space left"])
    assert "Segmentation" not in proc.stderr and "MPI_ABORT" not in proc.stderr
    assert_readable_incomplete(out)
    assert steps_written(out) > 10  # it failed mid-run, with what it had written kept


# --------------------------------------------------------------------------- two writers


def start(tmp_path: Path, np_: int, tag: str, *args) -> SessionJob:
    return SessionJob(mpirun_command(np_, *args), tmp_path, tag, subprocess_env())


def wait_for(pred, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.parametrize("np_", [1, 4])
def test_a_second_writer_of_one_out_is_refused_before_it_touches_the_file(tmp_path, np_):
    out = tmp_path / "shared.h5"
    first = start(tmp_path, np_, "first", "moe", *cli_args({**SMALL, "steps": 1000000, "flush_every": 1}),
                  "--out", out)
    try:
        wait_for(lambda: out.exists() and steps_written(out) >= 5, "the first run's rows")
        second = run_mpi(np_, "moe", *cli_args(SMALL), "--out", out, timeout=TIMEOUT)
        check_rejected(second, ["shared.h5", "being written by another moesim run"])
        assert first.proc.poll() is None, "the first run must still be writing"
        signal_job(first.proc, signal.SIGTERM)  # it stops at a step boundary, its file consistent
        assert first.wait_gone(TIMEOUT) != 0, first.describe()  # stopped, not complete
    finally:
        first.close()
    with h5py.File(out, "r") as f:
        stopped = int(f.attrs["stopped_at_step"])
        assert stopped >= 5 and f.attrs["complete"] == 0
        np.testing.assert_array_equal(f["metrics/step"][()], np.arange(1, stopped + 1))
    assert not Path(str(out) + ".lock").exists()


SWEEP = """\
command = moe
top-k = 1
d-model = 16
d-ff = 32
layers = 2
batch-tokens = 256
val-tokens = 256
steps = 300
quiet = true
experts = 2, 4
seed = 1, 2
"""


def test_a_second_sweep_of_one_directory_is_refused(tmp_path):
    cfg = tmp_path / "grid.ini"
    cfg.write_text(SWEEP)
    out = tmp_path / "sweep"
    first = start(tmp_path, 2, "sweep1", "sweep", cfg, "--out", out)
    try:
        wait_for(lambda: any(out.glob("*.h5")), "the first sweep's first run file")
        second = run_mpi(2, "sweep", cfg, "--out", out, timeout=TIMEOUT)
        check_rejected(second, ["in use by another moesim sweep"], command="sweep")
        assert first.wait_gone(TIMEOUT) == 0, first.describe()
    finally:
        first.close()
    runs = sorted(p for p in out.glob("*.h5") if p.name != "sweep.h5")
    assert len(runs) == 4
    for p in runs:
        a = root_attrs(p)
        assert a["complete"] == 1, (p, a.get("status"), a.get("error"))


# --------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A complete run with its checkpoint, for the resume cases."""
    d = tmp_path_factory.mktemp("finished")
    proc, out = run_moe(d, 2, timeout=TIMEOUT, checkpoint=d / "c.h5", out=d / "a.h5", **SMALL)
    return d


def bad_checkpoints(d: Path) -> dict[str, tuple[Path, dict, list[str]]]:
    """name -> (checkpoint, option overrides, words of the error)."""
    truncated = d / "truncated.h5"
    truncated.write_bytes((d / "c.h5").read_bytes()[:5000])
    noise = d / "noise.h5"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    return {
        "truncated": (truncated, {}, ["truncated.h5", "not a readable HDF5 file"]),
        "not-hdf5": (noise, {}, ["noise.h5", "not a readable HDF5 file"]),
        "a-run-file": (d / "a.h5", {}, ["a.h5", "not a moesim checkpoint"]),
        "other-shape": (d / "c.h5", {"d_model": 32}, ["c.h5", "another run", "--d-model 16 there, 32 here"]),
        "other-seed": (d / "c.h5", {"seed": 2}, ["c.h5", "another run", "--seed 1 there, 2 here"]),
        "fewer-steps": (d / "c.h5", {"steps": 10}, ["c.h5", "--steps (10)"]),
    }


@pytest.mark.parametrize("np_", [1, 4])
@pytest.mark.parametrize("case", ["truncated", "not-hdf5", "a-run-file", "other-shape", "other-seed", "fewer-steps"])
def test_a_refused_resume_leaves_out_as_it_was(tmp_path, finished, case, np_):
    ckpt, overrides, words = bad_checkpoints(finished)[case]
    out = tmp_path / "done.h5"
    out.write_bytes((finished / "a.h5").read_bytes())  # a complete run file of earlier work
    before = digest(out)
    proc = run_mpi(np_, "moe", *cli_args({**SMALL, **overrides}), "--checkpoint", ckpt, "--resume", "--out", out,
                   timeout=TIMEOUT)
    check_rejected(proc, words)
    assert "HDF5-DIAG" not in proc.stderr and "MPI_ABORT" not in proc.stderr
    assert digest(out) == before


@pytest.mark.parametrize("case", ["truncated", "not-hdf5"])
def test_merge_of_a_corrupt_checkpoint_is_one_error(tmp_path, finished, case):
    ckpt, _, words = bad_checkpoints(finished)[case]
    proc = run_mpi(2, "merge", "--run", ckpt, "--experts", 2, "--method", "average", "--out", tmp_path / "m.h5",
                   timeout=TIMEOUT)
    check_rejected(proc, words, command="merge")
    assert "HDF5-DIAG" not in proc.stderr and "MPI_ABORT" not in proc.stderr


def test_a_sweep_that_names_one_checkpoint_gives_each_point_its_own(tmp_path):
    cfg = tmp_path / "grid.ini"
    cfg.write_text(SWEEP.replace("steps = 300", "steps = 30") + f"checkpoint = {tmp_path / 'ck' / 'c.h5'}\n")
    out = tmp_path / "sweep"
    proc = run_mpi(2, "sweep", cfg, "--out", out, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    runs = sorted(p for p in out.glob("*.h5") if p.name != "sweep.h5")
    assert len(runs) == 4
    losses = set()
    for p in runs:
        with h5py.File(p, "r") as f:
            assert f.attrs["complete"] == 1 and "resumed_at_step" not in f.attrs, p
            np.testing.assert_array_equal(f["metrics/step"][()], np.arange(1, 31))
            losses.add(float(f["final"].attrs["val_loss"]))
    assert len(losses) == 4  # no point took another's trajectory
    assert len(list((tmp_path / "ck").glob("c.*.h5"))) == 4
    # Run again: every point is complete and skipped, nothing resumed across points.
    again = run_mpi(2, "sweep", cfg, "--out", out, timeout=TIMEOUT)
    assert again.returncode == 0 and again.stdout.count("complete, skipped") == 4, again.stdout


# --------------------------------------------------------------------------- late errors


@pytest.mark.parametrize("np_", [1, 4])
@pytest.mark.parametrize("command,opts,words", [
    ("stack", {"folds": 40, "learners": "ridge"}, ["training rows for 40 folds"]),
    ("blend", {"learners": "ridge", "val_fraction": 0.01, "train_fraction": 0.5}, ["validation split is empty"]),
])
def test_a_stacking_error_found_while_fitting_leaves_out_as_it_was(tmp_path, np_, command, opts, words):
    X, y = blobs(30, 3, 2, seed=1)
    data = write_csv(tmp_path / "small.csv", X, y)
    proc, out = run_stack(tmp_path, np_, data, command=command, check=False, **opts)
    check_rejected(proc, words, command=command)
    assert not out.exists()  # no half-written run file
    earlier = tmp_path / "earlier.h5"
    run_stack(tmp_path, np_, data, command=command, out=earlier, learners="ridge")
    before = digest(earlier)
    proc, _ = run_stack(tmp_path, np_, data, command=command, check=False, out=earlier, **opts)
    check_rejected(proc, words, command=command)
    assert digest(earlier) == before


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize("np_", [1, 4])
@pytest.mark.parametrize("opts,words", [
    ({"experts": 1000000}, ["needs at least", "GiB per rank", "parameters", "--experts"]),
    ({"batch_tokens": 100000000}, ["needs at least", "GiB per rank", "activations", "--batch-tokens"]),
])
def test_sizes_that_cannot_fit_are_refused_with_the_estimate(tmp_path, np_, opts, words):
    proc, out = run_moe(tmp_path, np_, check=False, timeout=TIMEOUT, **{**SMALL, **opts})
    check_rejected(proc, words)
    assert not out.exists()


def test_the_memory_estimate_is_a_lower_bound_of_what_a_run_uses(tmp_path):
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc, out = run_moe(tmp_path, 2, timeout=TIMEOUT, **{**SMALL, "steps": 3, "experts": 64, "d_model": 256,
                                                          "d_ff": 1024, "batch_tokens": 4096})
    used = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest rank's peak, bytes
    assert used > before * 1024, "no child grew past the earlier peak; measure in a fresh process"
    estimate = root_attrs(out)["memory_estimate_bytes"]
    assert estimate <= used, (estimate, used)
    assert estimate >= used / 4, (estimate, used)  # close enough to refuse what cannot fit
