"""`cmake --install` of the build tree that holds the tested binary: `moesim` lands in
PREFIX/bin and runs from there, the Slurm scripts in PREFIX/share/moesim/jobs, and the scripts
find the installed binary on PATH when MOESIM_BIN is not set (sbatch and srun replaced by
stand-ins that only print what they were given)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from moesim_testing import REPO_ROOT

JOBS = ["run.sbatch", "sweep.sbatch", "submit_sweep.sh", "local_slurm.sh"]


@pytest.fixture(scope="module")
def prefix(moesim, tmp_path_factory):
    build = Path(moesim).resolve().parent.parent
    if not (build / "CMakeCache.txt").is_file() or not (build / "cmake_install.cmake").is_file():
        pytest.skip(f"{moesim} is not in a CMake build tree (an installed binary?)")
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("no cmake on PATH")
    dest = tmp_path_factory.mktemp("install") / "prefix"
    proc = subprocess.run([cmake, "--install", str(build), "--prefix", str(dest)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (dest / "bin" / "moesim").is_file(), (
        f"cmake --install put no bin/moesim under the prefix (reconfigure {build}?):\n{proc.stdout}")
    return dest


@pytest.fixture
def stand_ins(tmp_path):
    """A directory with `sbatch` (prints a job id) and `srun` (prints its arguments)."""
    d = tmp_path / "stand_ins"
    d.mkdir()
    (d / "sbatch").write_text('#!/bin/sh\necho "sbatch $*" >&2\necho 4242\n')
    (d / "srun").write_text('#!/bin/sh\necho "srun $*"\n')
    for f in d.iterdir():
        f.chmod(0o755)
    return d


def env_without_moesim(prefix, stand_ins):
    env = {k: v for k, v in os.environ.items() if k != "MOESIM_BIN"}
    # The installed bin first; no other directory on PATH holds a moesim.
    dirs = [str(prefix / "bin"), str(stand_ins)] + [
        p for p in env.get("PATH", "").split(os.pathsep) if p and not (Path(p) / "moesim").exists()]
    env["PATH"] = os.pathsep.join(dirs)
    return env


def test_installed_binary_runs(prefix):
    proc = subprocess.run([str(prefix / "bin" / "moesim"), "info"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("moesim "), proc.stdout


def test_jobs_scripts_are_installed(prefix):
    for name in JOBS:
        path = prefix / "share" / "moesim" / "jobs" / name
        assert path.is_file() and os.access(path, os.X_OK), path


def test_jobs_find_the_installed_binary_on_path(prefix, stand_ins, tmp_path):
    env = env_without_moesim(prefix, stand_ins)
    jobs = prefix / "share" / "moesim" / "jobs"
    config = tmp_path / "tiny.sweep.ini"
    config.write_text("experts = 2,4\nsteps = 2\n")
    proc = subprocess.run([str(jobs / "submit_sweep.sh"), str(config), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "array job 4242: 2 tasks (0-1) of 2 points" in proc.stdout, proc.stdout + proc.stderr

    proc = subprocess.run(["bash", str(jobs / "run.sbatch"), "some.ini", "--steps", "2"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"srun --mpi=pmix {prefix / 'bin' / 'moesim'} moe --config some.ini --steps 2" in proc.stdout, \
        proc.stdout


def test_jobs_without_any_binary_say_so(stand_ins, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MOESIM_BIN"}
    env["PATH"] = os.pathsep.join([str(stand_ins)] + [
        p for p in env.get("PATH", "").split(os.pathsep) if p and not (Path(p) / "moesim").exists()])
    # Run from a directory with no build tree below it.
    proc = subprocess.run(["bash", str(REPO_ROOT / "jobs" / "run.sbatch"), "some.ini"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no moesim binary" in proc.stderr and "srun" not in proc.stdout, proc.stdout + proc.stderr
