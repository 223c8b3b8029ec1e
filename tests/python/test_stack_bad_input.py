"""Bad input to `moesim stack` / `moesim blend` on 2 ranks: exit code 2, exactly one
`moesim stack: error: ...` line naming the problem, within 30 s, no complete run file.

Malformed cells sit in the second half of the file, i.e. in rank 1's shard, so the error
must travel to rank 0, which prints it.
"""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from moesim_testing import QUICK_EXIT_ENV, assert_no_complete_run_file, check_rejected, cli_args, write_csv

NP = 2
TIMEOUT = 30  # a bad input must be rejected quickly, not hang in a collective


def edit_line(path, lineno: int, fn):
    """Replace line `lineno` (1-based, header = line 1) of a text file by fn(line)."""
    lines = path.read_text().splitlines()
    lines[lineno - 1] = fn(lines[lineno - 1])
    path.write_text("\n".join(lines) + "\n")


def set_cell(path, lineno: int, col: int, value: str):
    def fn(line):
        cells = line.split(",")
        cells[col] = value
        return ",".join(cells)
    edit_line(path, lineno, fn)


@pytest.fixture
def files(tmp_path):
    """Small valid inputs; each case breaks one thing."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(50, 3))
    y = (X[:, 0] > 0).astype(int)
    f = {}
    f["good"] = write_csv(tmp_path / "good.csv", X, y)
    f["with_folds"] = write_csv(tmp_path / "with_folds.csv", X, y, extra={"f": np.arange(50) % 3})
    f["reg"] = write_csv(tmp_path / "reg.csv", X, X[:, 0] * 2.5 + 0.1, classification=False)
    f["bad_cell"] = write_csv(tmp_path / "bad_cell.csv", X, y)
    set_cell(f["bad_cell"], 40, 2, "abc")        # line 40, column x2
    f["nan_cell"] = write_csv(tmp_path / "nan_cell.csv", X, y)
    set_cell(f["nan_cell"], 45, 1, "nan")        # line 45, column x1
    f["ragged"] = write_csv(tmp_path / "ragged.csv", X, y)
    edit_line(f["ragged"], 30, lambda line: ",".join(line.split(",")[:-1]))  # 3 of 4 fields
    y_test = y[:10].copy()
    y_test[7] = 7
    f["test_unseen"] = write_csv(tmp_path / "test_unseen.csv", X[:10], y_test)
    with h5py.File(tmp_path / "no_y.h5", "w") as h:
        h["X"] = X
    f["no_y"] = tmp_path / "no_y.h5"
    f["missing"] = tmp_path / "does_not_exist.csv"
    return f


BASE = {"target": "target", "problem": "classification", "learners": "logistic,nb", "folds": "3",
        "meta": "logistic", "seed": "1"}

# (id, command, data file key or None, option overrides, words the error line must contain)
CASES = [
    ("data-file-missing", "stack", "missing", {}, ["does_not_exist.csv"]),
    ("data-option-absent", "stack", None, {}, ["--data"]),
    ("non-numeric-cell", "stack", "bad_cell", {}, ["bad_cell.csv:40", "'x2'", "abc"]),
    ("nan-cell", "stack", "nan_cell", {}, ["nan_cell.csv:45", "'x1'", "NaN"]),
    ("ragged-row", "stack", "ragged", {}, ["ragged.csv:30", "4 fields", "found 3"]),
    ("unknown-target", "stack", "good", {"target": "nosuch"}, ["'nosuch'", "good.csv"]),
    ("unknown-learner", "stack", "good", {"learners": "logistic,bogus"}, ["'bogus'"]),
    ("folds-1", "stack", "good", {"folds": "1"}, ["--folds", "1"]),
    # Cut to 1215752192 by an int cast, once.
    ("folds-beyond-int", "stack", "good", {"folds": "100000000000"}, ["--folds", "100000000000", "out of range"]),
    ("meta-logistic-regression", "stack", "reg", {"problem": "regression"},
     ["--meta logistic", "--problem classification"]),
    ("passthrough-nnls", "stack", "good", {"meta": "nnls", "passthrough": True}, ["--passthrough", "nnls"]),
    ("test-unseen-class", "stack", "good", {"test": "@test_unseen"}, ["test_unseen.csv", "'7'"]),
    ("hdf5-without-y", "stack", "no_y", {"target": None}, ["no_y.h5", "'y'"]),
    ("unknown-meta", "stack", "good", {"meta": "median"}, ["--meta", "median"]),
    ("test-predictions-unknown", "stack", "good", {"test_predictions": "vote"}, ["--test-predictions"]),
    ("repeats-with-fold-column", "stack", "with_folds", {"fold_column": "f", "repeats": "2"},
     ["--fold-column", "--repeats"]),
    ("fold-id-out-of-range", "stack", "with_folds", {"fold_column": "f", "folds": "2"}, ["fold id 2", "0..1"]),
    ("blend-fractions-over-1", "blend", "good", {"train_fraction": "0.7", "val_fraction": "0.4"},
     ["fractions"]),
    ("blend-unknown-learner", "blend", "good", {"learners": "nope"}, ["'nope'"]),
]


@pytest.mark.parametrize("command,data,overrides,mention", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_two_ranks(tmp_path, files, mpirun, command, data, overrides, mention):
    opts = dict(BASE)
    if command == "blend":
        opts.pop("folds")
    opts.update(overrides)
    for k, v in list(opts.items()):
        if isinstance(v, str) and v.startswith("@"):
            opts[k] = str(files[v[1:]])
    out = tmp_path / "bad_run.h5"
    opts["out"] = str(out)
    args = [command, "--quiet"]
    if data is not None:
        args += ["--data", str(files[data])]
    args += cli_args(opts)
    proc = mpirun(NP, *args, timeout=TIMEOUT, env=QUICK_EXIT_ENV)
    check_rejected(proc, mention, command)
    assert_no_complete_run_file(out)


def test_error_keeps_an_existing_run_file(tmp_path, files, mpirun):
    """Inputs are validated before the run file is created: a failed run leaves an old one alone."""
    out = tmp_path / "keep.h5"
    good = ["stack", "--quiet", "--data", str(files["good"]), *cli_args(BASE), "--out", str(out)]
    assert mpirun(NP, *good, timeout=60, env=QUICK_EXIT_ENV).returncode == 0
    bad = ["stack", "--quiet", "--data", str(files["bad_cell"]), *cli_args(BASE), "--out", str(out)]
    assert mpirun(NP, *bad, timeout=TIMEOUT, env=QUICK_EXIT_ENV).returncode == 2
    with h5py.File(out, "r") as f:
        assert f.attrs["complete"] == 1
        assert f.attrs["data"] == str(files["good"])


@pytest.mark.parametrize("command", ["stack", "blend"])
def test_stray_word_is_an_error(tmp_path, files, mpirun, command):
    """`--learners ridge nb` once ran ridge alone: a word that belongs to no option is refused."""
    opts = {k: v for k, v in BASE.items() if k != "learners" and not (command == "blend" and k == "folds")}
    out = tmp_path / "stray.h5"
    args = [command, "--quiet", "--data", str(files["good"]), *cli_args(opts), "--learners", "ridge", "nb",
            "--out", str(out)]
    proc = mpirun(NP, *args, timeout=TIMEOUT, env=QUICK_EXIT_ENV)
    check_rejected(proc, ["unexpected argument 'nb'"], command)
    assert_no_complete_run_file(out)


@pytest.mark.parametrize("option", ["--class-sep", "--noise", "--label-noise"])
def test_synth_refuses_non_finite_scales(tmp_path, mpirun, option):
    """`synth --class-sep nan` once wrote a table of 70,000 NaN cells."""
    out = tmp_path / "synth.csv"
    proc = mpirun(NP, "synth", "--rows", "100", option, "nan", "--out", str(out), timeout=TIMEOUT, env=QUICK_EXIT_ENV)
    check_rejected(proc, [option, "finite", "nan"], "synth")
    assert not out.exists()


def test_no_test_rows_score_nan_not_zero(tmp_path, files, mpirun):
    """`--test-fraction 0` once recorded test scores of 0.0 for zero test rows."""
    out = tmp_path / "no_test.h5"
    args = ["stack", "--quiet", "--data", str(files["good"]), *cli_args(BASE), "--test-fraction", "0",
            "--out", str(out)]
    proc = mpirun(NP, *args, timeout=60, env=QUICK_EXIT_ENV)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out, "r") as f:
        assert f.attrs["complete"] == 1
        fin = f["final"].attrs
        assert fin["test_rows"] == 0
        for k in ("test_score", "test_accuracy", "test_log_loss"):
            assert math.isnan(fin[k]), (k, fin[k])
