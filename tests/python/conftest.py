"""Shared fixtures for the end-to-end tests of the `moesim` binary; the helpers behind them
(and the environment variables that steer them) are in moesim_testing.py.

Run with an interpreter that has h5py, numpy and pytest, e.g.
  /usr/bin/python3 -m pytest -q tests/python
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from moesim_testing import cli_args, moesim_path, mpirun_command, run_direct, run_moe, run_mpi, subprocess_env


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
    .mpirun_command(np, *args) -> argv, .env(extra=None) -> environment, .cli_args(opts) -> argv."""
    return SimpleNamespace(mpirun_command=mpirun_command, env=subprocess_env, cli_args=cli_args)
