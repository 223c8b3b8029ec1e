"""Command-line behaviour: `moesim info`, `moesim moe --help`, config files, progress output."""
from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

from moesim_testing import root_attrs

# Options the run-file contract and the docs talk about; all must be in --help.
CONTRACT_OPTIONS = ["experts", "top-k", "d-model", "d-ff", "layers", "moe-every", "steps",
                    "batch-tokens", "lr", "seed", "capacity-factor", "task", "problem", "classes",
                    "precision", "input-dim", "val-tokens", "eval-every", "out", "flush-every",
                    "progress-interval", "aux-loss-weight", "weight-decay", "grad-clip"]
FLAG_OPTIONS = ["config", "quiet", "help"]

PROGRESS_RE = re.compile(
    r"^step (\d+)/(\d+) \| loss ([0-9.]+) \| .*\| [0-9.]+k tok/s \| [0-9:]+ elapsed \| [0-9:]+ left$")


def progress_lines(stdout):
    return [PROGRESS_RE.match(line) for line in stdout.splitlines() if line.startswith("step ")]


# --------------------------------------------------------------------------- info


def test_info_reports_libraries(mpirun):
    proc = mpirun(2, "info", check=True)
    out = proc.stdout
    assert re.search(r"^moesim \d+\.\d+\.\d+", out, re.M), out
    assert re.search(r"git revision\s+\S+", out)
    assert re.search(r"compiler\s+\S+", out)
    mpi = [line for line in out.splitlines() if line.strip().startswith("MPI")]
    assert mpi, out
    hdf5 = [line for line in out.splitlines() if line.strip().startswith("HDF5")]
    assert hdf5 and "parallel" in hdf5[0], out
    assert re.search(r"^\s*BLAS\s+\S+", out, re.M)
    assert re.search(r"^\s*CUDA\s+\S+", out, re.M)
    assert re.search(r"^\s*NCCL\s+\S+", out, re.M)
    # Printed once (rank 0), and it knows the rank count of this run.
    assert len(re.findall(r"^moesim \d", out, re.M)) == 1
    assert "2 ranks" in mpi[0]


def test_top_level_help_lists_commands(mpirun):
    proc = mpirun(1, "--help", check=True)
    assert "moe" in proc.stdout and "info" in proc.stdout


# --------------------------------------------------------------------------- --help


@pytest.fixture(scope="module")
def help_text(mpirun):
    proc = mpirun(1, "moe", "--help", check=True)
    return proc.stdout


def help_defaults(text):
    """{option: default string} from boost's '--name arg (=value)' lines."""
    return dict(re.findall(r"--([a-z][a-z0-9-]*) arg \(=([^)]*)\)", text))


def test_help_lists_every_option_with_defaults(help_text):
    defaults = help_defaults(help_text)
    for opt in CONTRACT_OPTIONS:
        assert f"--{opt} " in help_text, f"--{opt} missing from moesim moe --help"
        assert opt in defaults, f"--{opt} shows no default in --help"
    for opt in FLAG_OPTIONS:
        assert f"--{opt}" in help_text
    assert defaults["task"] == "regimes"
    assert defaults["precision"] in ("fp32", "fp64")
    assert defaults["problem"] == "regression"


def test_help_defaults_are_the_defaults_used(tmp_path, help_text, mpirun):
    """A run that sets almost nothing stores exactly the defaults --help advertises."""
    out = tmp_path / "defaults.h5"
    overridden = {"steps": "1", "batch-tokens": "64", "val-tokens": "64", "out": str(out)}
    args = ["moe", "--quiet"]
    for k, v in overridden.items():
        args += [f"--{k}", v]
    mpirun(1, *args, check=True)
    attrs = root_attrs(out)
    defaults = help_defaults(help_text)
    checked = 0
    for opt, default in defaults.items():
        if opt in overridden:
            continue
        key = opt.replace("-", "_")
        assert key in attrs, f"option --{opt} not stored in the run file"
        value = attrs[key]
        if isinstance(value, str):
            assert value == default, opt
        elif isinstance(value, (int, np.integer)):
            assert value == int(default), opt
        else:
            assert value == pytest.approx(float(default), rel=1e-12), opt
        checked += 1
    assert checked >= 20
    assert attrs["quiet"] == 1


# --------------------------------------------------------------------------- config file


def test_config_file_used_and_command_line_wins(tmp_path, run_moe):
    cfg = tmp_path / "run.ini"
    cfg.write_text(
        "# moesim test config\n"
        "experts = 2\n"
        "top-k = 1\n"
        "d-model = 8\n"
        "d-ff = 8\n"
        "capacity-factor = 0\n"
        "steps = 3\n"
        "seed = 5\n"
        "problem = classification\n"
        "classes = 3\n"
    )
    # Drop the helper's defaults for the options the file sets, so only the file sets them;
    # steps, seed and d-ff are given on the command line as well and must win.
    _, path = run_moe(tmp_path, 2, config=cfg, experts=None, top_k=None, d_model=None,
                      d_ff=24, steps=4, seed=9)
    a = root_attrs(path)
    assert a["complete"] == 1
    assert (a["experts"], a["top_k"], a["d_model"], a["capacity_factor"]) == (2, 1, 8, 0.0)
    assert (a["problem"], a["classes"]) == ("classification", 3)
    assert (a["steps"], a["seed"], a["d_ff"]) == (4, 9, 24)
    with h5py.File(path, "r") as f:
        # The values are used, not just stored.
        assert f["metrics/step"].shape == (4,)
        assert f["metrics/expert_tokens"].shape == (4, 2)
        assert np.all(f["metrics/dropped_fraction"][()] == 0)
        assert "val_accuracy" in f["final"].attrs


def test_config_file_same_as_command_line(tmp_path, run_moe):
    """Options from a file and the same options on the command line give the same run."""
    cfg = tmp_path / "same.ini"
    cfg.write_text("seed = 13\nlr = 0.002\ncapacity-factor = 1.0\n")
    _, a = run_moe(tmp_path, 2, config=cfg, steps=5)
    _, b = run_moe(tmp_path, 2, seed=13, lr=0.002, capacity_factor=1.0, steps=5)
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        np.testing.assert_array_equal(fa["metrics/train_loss"][()], fb["metrics/train_loss"][()])
        np.testing.assert_array_equal(fa["metrics/expert_tokens"][()], fb["metrics/expert_tokens"][()])


# --------------------------------------------------------------------------- progress output


def test_progress_lines_and_summary(tmp_path, run_moe):
    steps = 5
    proc, path = run_moe(tmp_path, 2, quiet=False, progress_interval=0, steps=steps)
    lines = progress_lines(proc.stdout)
    assert all(lines), f"malformed progress line in:\n{proc.stdout}"
    # One line per step from rank 0 only (not one per rank).
    assert [int(m.group(1)) for m in lines] == list(range(1, steps + 1)), proc.stdout
    assert all(int(m.group(2)) == steps for m in lines)
    with h5py.File(path, "r") as f:
        loss = f["metrics/train_loss"][()]
        final = dict(f["final"].attrs)
    for m in lines:
        assert float(m.group(3)) == pytest.approx(loss[int(m.group(1)) - 1], abs=6e-6)
    # Summary at the end.
    out = proc.stdout
    tl = re.search(r"train loss ([0-9.]+)", out)
    vl = re.search(r"val loss ([0-9.]+)", out)
    assert tl and vl, out
    assert float(tl.group(1)) == pytest.approx(final["train_loss"], abs=6e-6)
    assert float(vl.group(1)) == pytest.approx(final["val_loss"], abs=6e-6)
    assert f"run file: {path}" in out


def test_progress_interval_limits_lines(tmp_path, run_moe):
    proc, _ = run_moe(tmp_path, 2, quiet=False, progress_interval=1000, steps=10)
    steps = [int(m.group(1)) for m in progress_lines(proc.stdout)]
    assert steps == [1, 10], proc.stdout


def test_quiet_prints_nothing(tmp_path, run_moe):
    proc, path = run_moe(tmp_path, 2, quiet=True, progress_interval=0, steps=5)
    assert not [line for line in proc.stdout.splitlines() if line.startswith("step ")], proc.stdout
    assert "train loss" not in proc.stdout
    assert "run file:" not in proc.stdout
    assert proc.stdout.strip() == ""
    assert root_attrs(path)["complete"] == 1
