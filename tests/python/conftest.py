"""Shared fixtures for the end-to-end tests of the `moesim` binary.

Environment (all optional, for running by hand):
  MOESIM_BIN      path to the moesim binary
                  (default: <repo root>/build/default/src/moesim)
  MOESIM_MPIEXEC  MPI launcher prefix as one string, without -np
                  (default: "mpirun --oversubscribe", plus --allow-run-as-root as root)

Run with an interpreter that has h5py, numpy and pytest, e.g.
  /usr/bin/python3 -m pytest -q tests/python
"""
from __future__ import annotations

import itertools
import os
import shlex
from types import SimpleNamespace
import subprocess
from pathlib import Path

# The run file is written by rank 0 while tests may read it; HDF5 file locks
# would make those reads fail. Must be set before h5py opens any file.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

import h5py  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TIMEOUT = 120  # seconds; every subprocess gets one so a hang fails instead of blocking

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


def mpirun_command(np: int, *args) -> list[str]:
    return [*mpiexec_prefix(), "-np", str(np), moesim_path(), *[str(a) for a in args]]


def run_mpi(np: int, *args, timeout: float = DEFAULT_TIMEOUT, check: bool = False,
            env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """`mpirun -np NP moesim ARGS...` with text output captured."""
    cmd = mpirun_command(np, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env(env), cwd=cwd)
    if check and proc.returncode != 0:
        pytest.fail(f"command failed with exit code {proc.returncode}: {shlex.join(cmd)}\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def run_direct(*args, timeout: float = DEFAULT_TIMEOUT, env: dict | None = None,
               cwd=None) -> subprocess.CompletedProcess:
    """The binary without a launcher (an MPI singleton, one rank)."""
    return subprocess.run([moesim_path(), *[str(a) for a in args]], capture_output=True,
                          text=True, timeout=timeout, env=subprocess_env(env), cwd=cwd)


def moe_args(**opts) -> list[str]:
    """Keyword options -> command line: top_k=2 -> --top-k 2; True -> bare flag; False/None dropped."""
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
    args = ["moe", *moe_args(**merged)]
    if np == 0:
        proc = run_direct(*args, timeout=timeout, env=env)
    else:
        proc = run_mpi(np, *args, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        pytest.fail(f"moesim moe failed with exit code {proc.returncode}: {shlex.join(proc.args)}\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc, out


@pytest.fixture(scope="session")
def moesim() -> str:
    path = moesim_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"moesim binary not found at {path}: build it "
                    f"(cmake --build build/default --target moesim) or set MOESIM_BIN")
    return path


@pytest.fixture(scope="session")
def mpirun(moesim):
    """mpirun(np, *args, timeout=..., check=..., env=...) -> CompletedProcess (text)."""
    return run_mpi


@pytest.fixture(name="run_moe", scope="session")
def run_moe_fixture(moesim):
    """run_moe(directory, np, **opts) -> (CompletedProcess, Path of the run file)."""
    return run_moe


@pytest.fixture(scope="session")
def moesim_direct(moesim):
    """moesim_direct(*args, timeout=..., env=...) -> CompletedProcess: one rank, no launcher."""
    return run_direct


@pytest.fixture(scope="session")
def moesim_cmd(moesim):
    """Building blocks for tests that start moesim themselves (e.g. with Popen):
    .mpirun_command(np, *args) -> argv, .env(extra=None) -> environment, .moe_args(**opts) -> argv."""
    return SimpleNamespace(mpirun_command=mpirun_command, env=subprocess_env, moe_args=moe_args)
