"""Helpers for the end-to-end tests of `moesim stack` and `moesim blend` (test_stack*.py,
test_blend*.py): running the binary under mpirun, writing small tables, reading run files.

Not a test module itself (no test_ prefix): pytest puts tests/python on sys.path, so the
test modules import it as `stack_util`.
"""
from __future__ import annotations

import itertools
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from conftest import REPO_ROOT, run_mpi

sys.path.insert(0, str(REPO_ROOT / "bench"))
import datasets as bench_datasets  # noqa: E402  (bench/datasets.py: sklearn's bundled data sets as CSV)

__all__ = ["ENV", "TIMEOUT", "bench_datasets", "blobs", "cli_args", "learner_block", "load_run", "read_csv",
           "run_stack", "score_of", "write_csv"]

# Open MPI's mpirun waits ~2 s after a rank exits non-zero before it gives up (see
# test_bad_input.py); every rank exits on its own here, so skip the grace period.
ENV = {"OMPI_MCA_odls_base_sigkill_timeout": "0"}
TIMEOUT = 120  # seconds for a successful run; bad input has its own, shorter limit

_counter = itertools.count()


def cli_args(opts: dict) -> list[str]:
    """{'test_fraction': 0.2, 'passthrough': True, 'x': None} -> ['--test-fraction', '0.2', '--passthrough']."""
    args: list[str] = []
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False or value is None:
            continue
        else:
            args += [flag, str(value)]
    return args


def run_stack(directory, np_: int, data, *, command: str = "stack", check: bool = True,
              timeout: float = TIMEOUT, **opts):
    """`mpirun -np NP moesim stack --data DATA ...`; returns (CompletedProcess, run file path).

    Defaults: --target target --problem classification --seed 1 --quiet, run file in
    `directory` unless out= is given. Keyword options use underscores for dashes.
    """
    merged = {"target": "target", "problem": "classification", "seed": 1, "quiet": True}
    merged.update(opts)
    if "out" not in merged:
        merged["out"] = Path(directory) / f"{command}_np{np_}_{next(_counter)}.h5"
    out = Path(merged["out"])
    args = [command, "--data", str(data), *cli_args(merged)]
    proc = run_mpi(np_, *args, timeout=timeout, env=ENV)
    if check and proc.returncode != 0:
        pytest.fail(f"moesim {command} failed with exit code {proc.returncode}: {shlex.join(proc.args)}\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc, out


def _s(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.shape == ():
        return v.item()
    return v


def _list(v) -> list[str]:
    v = _s(v)
    return [x for x in str(v).split(",") if x] if v is not None else []


def load_run(path) -> SimpleNamespace:
    """Everything a stack/blend run file holds, as numpy arrays and plain attributes."""
    with h5py.File(path, "r") as f:
        r = SimpleNamespace()
        r.attrs = {k: _s(v) for k, v in f.attrs.items()}
        r.pred = f["oof/predictions"][()]
        r.fold = f["oof/fold"][()]
        r.row = f["oof/row"][()]
        r.target = f["oof/target"][()]
        r.oof_attrs = {k: _s(v) for k, v in f["oof"].attrs.items()}
        r.columns = _list(f["oof"].attrs.get("columns"))
        r.coef = f["meta/coefficients"][()]
        r.meta_rows = _list(f["meta"].attrs.get("rows"))
        r.meta_cols = _list(f["meta"].attrs.get("columns"))
        r.tuning = f["meta/tuning"][()] if "meta/tuning" in f else None
        r.scores = f["scores/learner"][()]
        r.learners = _list(f["scores"].attrs.get("learners"))
        r.score_columns = _list(f["scores"].attrs.get("learner_columns"))
        r.fold_scores = f["scores/fold"][()] if "scores/fold" in f else None
        r.final = {k: _s(v) for k, v in f["final"].attrs.items()}
        r.keys = set()
        f.visit(r.keys.add)
    return r


def score_of(run, learner: str, metric: str) -> float:
    """scores/learner entry for a learner (name as in attr `learners`) and metric column."""
    return float(run.scores[run.learners.index(learner), run.score_columns.index(metric)])


def learner_block(run, learner: str) -> np.ndarray:
    """oof/predictions columns of one learner ('name' or 'name:class' prefixes in attr columns)."""
    idx = [j for j, c in enumerate(run.columns) if c == learner or c.startswith(learner + ":")]
    assert idx, f"no columns for {learner!r} in {run.columns}"
    return run.pred[:, idx]


def write_csv(path, X, y, *, names=None, extra: dict | None = None, classification: bool = True):
    """Header row, features, optional extra integer/float columns, then `target` (last)."""
    X = np.asarray(X, dtype=np.float64)
    names = names or [f"x{j}" for j in range(X.shape[1])]
    extra = extra or {}
    cols = [*names, *extra.keys(), "target"]
    with open(path, "w") as f:
        f.write(",".join(cols) + "\n")
        for i in range(X.shape[0]):
            cells = [repr(float(v)) for v in X[i]]
            for v in extra.values():
                cells.append(str(v[i]))
            cells.append(str(int(y[i])) if classification else repr(float(y[i])))
            f.write(",".join(cells) + "\n")
    return Path(path)


def blobs(n: int, p: int, classes: int, seed: int, sep: float = 1.5, weights=None):
    """Gaussian classes around random centres (class proportions `weights`), rows shuffled."""
    rng = np.random.default_rng(seed)
    weights = np.asarray(weights if weights is not None else [1.0] * classes, dtype=float)
    counts = np.floor(n * weights / weights.sum()).astype(int)
    counts[0] += n - counts.sum()
    centres = rng.normal(0, sep, size=(classes, p))
    y = np.concatenate([np.full(c, k) for k, c in enumerate(counts)])
    rng.shuffle(y)
    X = centres[y] + rng.normal(size=(n, p))
    return X, y


def read_csv(path):
    """(X, y, feature names) of a CSV written by write_csv or bench/datasets.py (target last)."""
    with open(path) as f:
        header = f.readline().strip().split(",")
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    t = header.index("target")
    feats = [j for j in range(len(header)) if j != t]
    return data[:, feats], data[:, t], [header[j] for j in feats]
