"""Helpers shared by the end-to-end tests (tests/python) and the scripts in bench/: where the
moesim binary is and how to launch it, command lines from keyword options, checks of rejected
input, run-file attributes, jobs started in a session of their own, and the inputs and run
files of `moesim stack` / `moesim blend`. The pytest fixtures are in conftest.py.

Not a test module (no test_ prefix): pytest puts tests/python on sys.path, so the tests import
it as `moesim_testing`; a bench script puts tests/python on sys.path first.

Environment (all optional, for running by hand):
  MOESIM_BIN      path to the moesim binary
                  (default: <repo root>/build/default/src/moesim)
  MOESIM_MPIEXEC  MPI launcher prefix as one string, without -np
                  (default: "mpirun --oversubscribe", plus --allow-run-as-root as root)
"""
from __future__ import annotations

import importlib
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

# The run file is written by rank 0 while tests may read it; HDF5 file locks
# would make those reads fail. Must be set before h5py opens any file.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TIMEOUT = 120  # seconds; every subprocess gets one so a hang fails instead of blocking

# Open MPI's mpirun sleeps ~2 s (odls_base_sigkill_timeout, twice) before it exits after a rank
# returned non-zero, even when every rank has already exited. Runs that may fail on purpose
# exit on every rank by themselves (rank 0 prints before MPI_Finalize), so they skip that grace
# period to keep the suite fast. Harmless for other launchers.
QUICK_EXIT_ENV = {"OMPI_MCA_odls_base_sigkill_timeout": "0"}

# Small, fast defaults for `run_moe`; any of them can be overridden per call.
SMALL_DEFAULTS = {
    "experts": 4,
    "top_k": 2,
    "d_model": 16,
    "d_ff": 32,
    "layers": 2,
    "steps": 20,
    "batch_tokens": 256,
    "val_tokens": 512,
    "quiet": True,
}


# --------------------------------------------------------------------------- the binary


def moesim_path() -> str:
    return os.environ.get("MOESIM_BIN") or str(REPO_ROOT / "build" / "default" / "src" / "moesim")


def mpiexec_prefix() -> list[str]:
    spec = os.environ.get("MOESIM_MPIEXEC")
    if spec:
        return shlex.split(spec)
    prefix = ["mpirun", "--oversubscribe"]
    if os.geteuid() == 0:
        prefix.append("--allow-run-as-root")
    return prefix


def subprocess_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["HDF5_USE_FILE_LOCKING"] = "FALSE"
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    if extra:
        env.update(extra)
    return env


def cli_args(opts: dict) -> list[str]:
    """{'top_k': 2, 'passthrough': True, 'x': None} -> ['--top-k', '2', '--passthrough']:
    underscores become dashes, True a bare flag; False and None are dropped."""
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


def mpirun_command(np: int, *args) -> list[str]:
    return [*mpiexec_prefix(), "-np", str(np), moesim_path(), *[str(a) for a in args]]


def fail_with(proc: subprocess.CompletedProcess, what: str):
    """pytest.fail naming the command line and its output."""
    pytest.fail(f"{what} (exit {proc.returncode}): {shlex.join(map(str, proc.args))}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")


def run_mpi(np: int, *args, timeout: float = DEFAULT_TIMEOUT, check: bool = False,
            env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """`mpirun -np NP moesim ARGS...` with text output captured."""
    proc = subprocess.run(mpirun_command(np, *args), capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env(env), cwd=cwd)
    if check and proc.returncode != 0:
        fail_with(proc, "command failed")
    return proc


def run_direct(*args, timeout: float = DEFAULT_TIMEOUT, env: dict | None = None,
               cwd=None) -> subprocess.CompletedProcess:
    """The binary without a launcher (an MPI singleton, one rank)."""
    return subprocess.run([moesim_path(), *[str(a) for a in args]], capture_output=True,
                          text=True, timeout=timeout, env=subprocess_env(env), cwd=cwd)


_run_counter = itertools.count()


def run_moe(directory, np: int, *, check: bool = True, timeout: float = DEFAULT_TIMEOUT,
            env: dict | None = None, **opts):
    """Run `moesim moe` with SMALL_DEFAULTS updated by opts; returns (proc, run file path).

    np=0 runs the binary without a launcher. The run file goes to `directory`
    unless `out=` is given.
    """
    merged = dict(SMALL_DEFAULTS)
    merged.update(opts)
    if "out" not in merged:
        merged["out"] = Path(directory) / f"run_np{np}_{next(_run_counter)}.h5"
    out = Path(merged["out"])
    args = ["moe", *cli_args(merged)]
    if np == 0:
        proc = run_direct(*args, timeout=timeout, env=env)
    else:
        proc = run_mpi(np, *args, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        fail_with(proc, "moesim moe failed")
    return proc, out


def analysis_cli(*args, timeout: float = DEFAULT_TIMEOUT) -> subprocess.CompletedProcess:
    """`python -m moesim_analysis ARGS...` from the repository root."""
    return subprocess.run([sys.executable, "-m", "moesim_analysis", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, env=subprocess_env())


# --------------------------------------------------------------------------- rejected input

ERROR_RE = re.compile(r"^moesim( [a-z]+)?: error: .+")


def error_lines(stderr: str) -> list[str]:
    """moesim's own error lines; mpirun adds its own chatter to stderr."""
    return [line for line in stderr.splitlines() if "moesim" in line and "error" in line]


def check_rejected(proc, must_mention, command: str | None = None):
    """Exit code 2 and exactly one `moesim [COMMAND]: error: ...` line naming every word of
    must_mention; no traceback or uncaught exception."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, f"expected exactly one error line, got {lines!r}\n{proc.stderr}"
    pattern = ERROR_RE if command is None else re.compile(rf"^moesim {command}: error: .+")
    assert pattern.match(lines[0]), lines[0]
    for word in must_mention:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert "Traceback" not in proc.stderr and "terminate called" not in proc.stderr


def assert_no_complete_run_file(path):
    try:
        with h5py.File(path, "r") as f:
            assert f.attrs.get("complete", 0) != 1, f"{path} is marked complete after an error"
    except (FileNotFoundError, OSError):
        pass  # no file (or not an HDF5 file at all): fine


# --------------------------------------------------------------------------- run files


def attr_value(v):
    """An HDF5 attribute as plain Python: bytes decoded, 0-d arrays unwrapped."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.shape == ():
        return v.item()
    return v


def attr_list(v) -> list[str]:
    """A comma-separated string attribute as a list ([] when absent or empty)."""
    v = attr_value(v)
    return [x for x in str(v).split(",") if x] if v is not None else []


def attrs_of(obj) -> dict:
    """Every attribute of an h5py file, group or dataset, decoded by attr_value."""
    return {k: attr_value(v) for k, v in obj.attrs.items()}


def root_attrs(path) -> dict:
    with h5py.File(path, "r") as f:
        return attrs_of(f)


def strings(ds) -> list[str]:
    """A dataset of strings as str."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[()]]


def steps_written(path) -> int:
    """Rows of metrics/step in a run file that may be being written (0 if not readable yet)."""
    try:
        with h5py.File(path, "r") as f:
            return int(f["metrics/step"].shape[0])
    except Exception:  # not created yet, or caught mid-write
        return 0


# --------------------------------------------------------------------------- jobs in a session
# A job started with start_new_session=True: Open MPI's mpirun puts every rank into a process
# group of its own inside that session, so "the job's process group" is really several groups,
# mpirun's (pgid == mpirun's pid) and one per rank.


def session_pids(sid: int) -> list[int]:
    """Live processes in session `sid` (our mpirun and the ranks it started)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            pids.append(int(entry))
    return pids


def signal_job(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to every process group of the job: mpirun's and each rank's."""
    groups = {proc.pid}
    for pid in session_pids(proc.pid):
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def signal_ranks(proc: subprocess.Popen, sig: int) -> list[int]:
    """`sig` to the ranks only (every process of the session but mpirun)."""
    ranks = [pid for pid in session_pids(proc.pid) if pid != proc.pid]
    for pid in ranks:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return ranks


def wait_job_gone(proc: subprocess.Popen, timeout: float = 30) -> int:
    """Waits for mpirun, then for every rank; returns mpirun's exit code."""
    rc = proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not session_pids(proc.pid), "ranks outlived mpirun"
    return rc


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL to every process group of the job until none is left (for `finally`)."""
    signal_job(proc, signal.SIGKILL)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 10
    while session_pids(proc.pid) and time.monotonic() < deadline:
        signal_job(proc, signal.SIGKILL)
        time.sleep(0.05)


class SessionJob:
    """`argv` started in a session of its own, stdout and stderr to files TAG.stdout and
    TAG.stderr in `directory`; close() (for `finally`) kills whatever is left of it."""

    def __init__(self, argv, directory, tag: str, env: dict):
        self.cmd = argv
        self.stdout_path = Path(directory) / f"{tag}.stdout"
        self.stderr_path = Path(directory) / f"{tag}.stderr"
        self._out = open(self.stdout_path, "w")
        self._err = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)

    def output(self) -> tuple[str, str]:
        self._out.flush()
        self._err.flush()
        return self.stdout_path.read_text(), self.stderr_path.read_text()

    def describe(self) -> str:
        """The command line and the tail of its output, for failure messages."""
        out, err = self.output()
        return (f"{shlex.join(map(str, self.cmd))}\n--- stdout\n{out[-3000:]}\n"
                f"--- stderr\n{err[-3000:]}")

    def wait_gone(self, timeout: float = 30) -> int:
        return wait_job_gone(self.proc, timeout)

    def close(self) -> None:
        kill_job(self.proc)
        self._out.close()
        self._err.close()


# --------------------------------------------------------------------------- stack and blend

_stack_counter = itertools.count()


def bench_module(name: str):
    """A module of bench/ by name, e.g. "datasets" (scikit-learn's bundled data sets as CSV)."""
    bench = str(REPO_ROOT / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module(name)


def run_stack(directory, np_: int, data, *, command: str = "stack", check: bool = True,
              timeout: float = DEFAULT_TIMEOUT, **opts):
    """`mpirun -np NP moesim stack --data DATA ...`; returns (CompletedProcess, run file path).

    Defaults: --target target --problem classification --seed 1 --quiet, run file in
    `directory` unless out= is given. Keyword options use underscores for dashes.
    """
    merged = {"target": "target", "problem": "classification", "seed": 1, "quiet": True}
    merged.update(opts)
    if "out" not in merged:
        merged["out"] = Path(directory) / f"{command}_np{np_}_{next(_stack_counter)}.h5"
    out = Path(merged["out"])
    args = [command, "--data", str(data), *cli_args(merged)]
    proc = run_mpi(np_, *args, timeout=timeout, env=QUICK_EXIT_ENV)
    if check and proc.returncode != 0:
        fail_with(proc, f"moesim {command} failed")
    return proc, out


def load_run(path) -> SimpleNamespace:
    """Everything a stack/blend run file holds, as numpy arrays and plain attributes."""
    with h5py.File(path, "r") as f:
        r = SimpleNamespace()
        r.attrs = attrs_of(f)
        r.pred = f["oof/predictions"][()]
        r.fold = f["oof/fold"][()]
        r.row = f["oof/row"][()]
        r.target = f["oof/target"][()]
        r.oof_attrs = attrs_of(f["oof"])
        r.columns = attr_list(f["oof"].attrs.get("columns"))
        r.coef = f["meta/coefficients"][()]
        r.meta_rows = attr_list(f["meta"].attrs.get("rows"))
        r.meta_cols = attr_list(f["meta"].attrs.get("columns"))
        r.tuning = f["meta/tuning"][()] if "meta/tuning" in f else None
        r.scores = f["scores/learner"][()]
        r.learners = attr_list(f["scores"].attrs.get("learners"))
        r.score_columns = attr_list(f["scores"].attrs.get("learner_columns"))
        r.fold_scores = f["scores/fold"][()] if "scores/fold" in f else None
        r.final = attrs_of(f["final"])
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
