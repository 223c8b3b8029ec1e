"""End to end on a real Slurm cluster: jobs/local_slurm.sh brings up munged, slurmctld and slurmd
in a scratch directory, and the job scripts in jobs/ run moesim through sbatch, srun --mpi=pmix
and job arrays. No part of Slurm is mocked. The cluster is taken down after the module, whatever
happened, and the test checks that its daemons are gone.

Needs root and Debian's slurm-wlm and munge (scripts/setup.sh). If the cluster does not come up,
the tests fail with the daemons' log tails.
"""
from __future__ import annotations

import calendar
import os
import re
import shlex
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from moesim_testing import REPO_ROOT, moesim_path, root_attrs, steps_written, strings

JOBS = REPO_ROOT / "jobs"
LOCAL_SLURM = JOBS / "local_slurm.sh"
RANKS = 2          # MPI ranks per job / array task
JOB_TIMEOUT = 180  # seconds to wait for a job to end
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED", "SPECIAL_EXIT"}

BASE = """\
top-k = 1
d-model = 16
d-ff = 32
layers = 2
batch-tokens = 256
val-tokens = 256
quiet = true
"""


# --------------------------------------------------------------------------- the cluster


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def daemon_pids(scratch: Path) -> dict[str, int]:
    files = {"munged": scratch / "munge" / "munged.pid",
             "slurmctld": scratch / "run" / "slurmctld.pid",
             "slurmd": scratch / "run" / "slurmd.pid"}
    pids = {}
    for name, f in files.items():
        try:
            pids[name] = int(f.read_text().strip())
        except (OSError, ValueError):
            pass
    return pids


def marked_pids(scratch: Path) -> list[int]:
    """Processes started by the cluster's daemons: local_slurm.sh marks their environment."""
    marker = f"LOCAL_SLURM_SCRATCH={scratch}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read().split(b"\0") and pid_alive(int(entry)):
                        found.append(int(entry))
            except OSError:
                pass
    return found


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"({e})"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, moesim):
    scratch = tmp_path_factory.mktemp("slurm").resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # not a job's own
    env.update({
        "SLURM_CONF": str(scratch / "etc" / "slurm.conf"),
        "MOESIM_BIN": str(Path(moesim_path()).resolve()),
        "HDF5_USE_FILE_LOCKING": "FALSE",
        # More ranks than cores: waiting ranks must give the CPU away.
        "OMPI_MCA_mpi_yield_when_idle": "1",
        # Open MPI's session directories and shared-memory segments go here, not to /tmp and
        # /dev/shm.
        "TMPDIR": str(scratch / "jobtmp"),
        "OMPI_MCA_btl_vader_backing_directory": str(scratch / "jobtmp"),
    })
    (scratch / "jobtmp").mkdir()
    c = SimpleNamespace(scratch=scratch, env=env, pids={}, log=scratch / "log")

    def logs() -> str:
        return "".join(f"\n--- tail of {p}\n{tail(p)}" for p in
                       (c.log / "slurmctld.log", c.log / "slurmd.log", scratch / "munge" / "munged.log"))

    c.logs = logs
    try:
        up = subprocess.run(["bash", str(LOCAL_SLURM), "up", str(scratch)], capture_output=True,
                            text=True, timeout=90, env=env)
        if up.returncode != 0:
            pytest.fail(f"jobs/local_slurm.sh up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}"
                        f"{logs()}")
        assert f"export SLURM_CONF={scratch}/etc/slurm.conf" in up.stdout
        c.pids = daemon_pids(scratch)
        assert set(c.pids) == {"munged", "slurmctld", "slurmd"}, c.pids
        yield c
    finally:
        started = daemon_pids(scratch) or c.pids
        down = subprocess.run(["bash", str(LOCAL_SLURM), "down", str(scratch)], capture_output=True,
                              text=True, timeout=120, env=env)
        left = {n: p for n, p in {**c.pids, **started}.items() if pid_alive(p)}
        strays = marked_pids(scratch)
        again = subprocess.run(["bash", str(LOCAL_SLURM), "down", str(scratch)],
                               capture_output=True, text=True, timeout=60, env=env)
        assert down.returncode == 0, f"local_slurm.sh down failed:\n{down.stdout}\n{down.stderr}"
        assert not left, f"daemons left running after down: {left}"
        assert not strays, f"processes of the cluster left running after down: {strays}"
        assert again.returncode == 0, f"a second down failed:\n{again.stdout}\n{again.stderr}"


def slurm(cluster, *args, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=cluster.env)
    if check and proc.returncode != 0:
        pytest.fail(f"{shlex.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n"
                    f"{proc.stderr}{cluster.logs()}")
    return proc


def show_job(cluster, job_id: str) -> list[dict]:
    """`scontrol show job -o ID`: one dict per job (an array gives one per task)."""
    proc = slurm(cluster, "scontrol", "show", "job", "-o", job_id, check=False)
    jobs = []
    for line in proc.stdout.splitlines():
        fields = dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))
        if "JobId" in fields:
            jobs.append(fields)
    return jobs


def diagnostics(cluster, outputs=()) -> str:
    q = slurm(cluster, "squeue", "-a", check=False)
    text = f"\n--- squeue\n{q.stdout}{q.stderr}"
    for p in outputs:
        text += f"\n--- {p}\n{tail(Path(p), 60)}"
    return text + cluster.logs()


def wait_for(cluster, job_id: str, outputs=(), timeout: float = JOB_TIMEOUT) -> list[dict]:
    """Poll until every task of the job has ended; returns `scontrol show job` records."""
    deadline = time.monotonic() + timeout
    jobs: list[dict] = []
    while time.monotonic() < deadline:
        jobs = show_job(cluster, job_id)
        if jobs and all(j["JobState"] in TERMINAL for j in jobs):
            return jobs
        time.sleep(0.2)
    pytest.fail(f"job {job_id} not done after {timeout} s: "
                f"{[(j.get('JobId'), j.get('ArrayTaskId'), j.get('JobState'), j.get('Reason')) for j in jobs]}"
                f"{diagnostics(cluster, outputs)}")


def sweep_list(cluster, config, out) -> list[dict]:
    proc = slurm(cluster, cluster.env["MOESIM_BIN"], "sweep", config, "--out", out, "--list")
    points = []
    for line in proc.stdout.splitlines()[1:]:
        index, pid, status = line.split()[:3]
        points.append({"index": int(index), "id": pid, "status": status})
    return points


# --------------------------------------------------------------------------- tests


def test_local_cluster_is_up_and_up_is_idempotent(cluster):
    state = slurm(cluster, "sinfo", "-h", "-o", "%T").stdout.strip()
    assert state.rstrip("*") == "idle", state
    again = subprocess.run(["bash", str(LOCAL_SLURM), "up", str(cluster.scratch)],
                           capture_output=True, text=True, timeout=60, env=cluster.env)
    assert again.returncode == 0, again.stderr
    assert daemon_pids(cluster.scratch) == cluster.pids, "a second `up` restarted the daemons"
    status = subprocess.run(["bash", str(LOCAL_SLURM), "status", str(cluster.scratch)],
                            capture_output=True, text=True, timeout=60, env=cluster.env)
    assert status.returncode == 0 and "slurmd: running" in status.stdout, status.stdout


def test_sweep_as_job_array(cluster, tmp_path):
    cfg = tmp_path / "grid.ini"
    cfg.write_text("command = moe\n" + BASE + "steps = 10\nexperts = 2,4\nseed = 1,2\n")
    out = tmp_path / "out"
    points = sweep_list(cluster, cfg, out)
    assert len(points) == 4
    logs = tmp_path / "logs"
    logs.mkdir()
    sub = slurm(cluster, "bash", JOBS / "submit_sweep.sh", cfg, out, f"--ntasks={RANKS}",
                f"--output={logs}/slurm-%A_%a.out", f"--chdir={tmp_path}", "--time=00:05:00")
    m = re.search(r"^array job (\d+): 4 tasks \(0-3\)", sub.stdout, re.M)
    assert m, sub.stdout
    array_id = m.group(1)
    m = re.search(r"^summary job (\d+)$", sub.stdout, re.M)
    assert m, sub.stdout
    summary_id = m.group(1)

    outputs = sorted(logs.glob("*.out"))
    tasks = wait_for(cluster, array_id, outputs=logs.glob("*.out"))
    summary = wait_for(cluster, summary_id, outputs=logs.glob("*.out"))
    outputs = sorted(logs.glob("*.out"))
    info = diagnostics(cluster, outputs)
    assert sorted(int(t["ArrayTaskId"]) for t in tasks) == [0, 1, 2, 3], tasks
    assert all(t["JobState"] == "COMPLETED" and t["ExitCode"] == "0:0" for t in tasks), \
        f"{[(t['ArrayTaskId'], t['JobState'], t['ExitCode']) for t in tasks]}{info}"
    assert summary[0]["JobState"] == "COMPLETED", f"{summary[0]}{info}"

    node = slurm(cluster, "sinfo", "-h", "-o", "%N").stdout.strip()
    job_of_task = {int(t["ArrayTaskId"]): t["JobId"] for t in tasks}
    for p in points:
        a = root_attrs(out / f"{p['id']}.h5")
        assert a["complete"] == 1, (p, info)
        assert a["ranks"] == RANKS and a["ranks_per_node"] == RANKS and a["nodes"] == 1
        assert a["slurm_array_job_id"] == array_id
        assert a["slurm_array_task_id"] == str(p["index"])
        assert a["slurm_job_id"] == job_of_task[p["index"]]
        assert a["slurm_job_nodelist"] == node
        log = logs / f"slurm-{array_id}_{p['index']}.out"
        assert f"--index {p['index']}" in log.read_text() and "moesim exited with 0" in log.read_text()
    with h5py.File(out / "sweep.h5", "r") as f:
        assert f.attrs["points"] == 4 and f.attrs["points_complete"] == 4
        assert strings(f["points/status"]) == ["complete"] * 4
        assert strings(f["points/id"]) == [p["id"] for p in points]

    # Everything is complete: submitting again submits nothing.
    again = slurm(cluster, "bash", JOBS / "submit_sweep.sh", cfg, out)
    assert "nothing to submit" in again.stdout and "array job" not in again.stdout


def test_run_sbatch(cluster, tmp_path):
    cfg = tmp_path / "moe.ini"
    cfg.write_text(BASE + "experts = 4\nsteps = 50\n")
    out = tmp_path / "run.h5"
    log = tmp_path / "run.out"
    # Ranks per node passed through (MOESIM_RANKS_PER_NODE): one node runs the two-node layout of
    # the hierarchical exchange on virtual nodes of one rank.
    sub = slurm(cluster, "sbatch", "--parsable", f"--ntasks={RANKS}", f"--output={log}",
                f"--chdir={tmp_path}", "--export=ALL,MOESIM_RANKS_PER_NODE=1", JOBS / "run.sbatch", cfg,
                "--out", out, "--steps", 12, "--dispatch", "hierarchical")
    job_id = sub.stdout.strip().split(";")[0]
    (job,) = wait_for(cluster, job_id, outputs=[log])
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", \
        f"{job}{diagnostics(cluster, [log])}"
    a = root_attrs(out)
    assert a["complete"] == 1
    assert a["ranks"] == RANKS
    assert a["nodes"] == RANKS and a["ranks_per_node"] == 1 == a["ranks_per_node_min"]
    assert a["nodes_are"] == "virtual (--ranks-per-node)" and a["machine_nodes"] == 1
    assert a["dispatch"] == "hierarchical"
    assert a["blas_threads"] == 1  # the script's --cpus-per-task=1
    assert a["experts"] == 4 and a["steps"] == 12  # from the config file, and the command line
    assert a["slurm_job_id"] == job_id
    assert "slurm_array_task_id" not in a
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["metrics/step"][()], np.arange(1, 13))
        assert np.all(f["metrics/a2a_bytes_inter_node"][()] > 0)  # the virtual nodes' traffic
        assert f["metrics/a2a_bytes_by_stage"].shape == (12, 2, 2)


@pytest.mark.parametrize("launcher", ["mpirun", "srun"])
def test_batch_sigterm_stops_the_run(cluster, tmp_path, launcher):
    """What `--signal=B:TERM@120` does before the time limit, delivered at once by
    `scancel --batch --signal=TERM`: SIGTERM to the batch shell only, not to the ranks. run.sbatch
    forwards it to the launcher as SIGUSR1 (srun and mpirun answer SIGTERM by killing the
    ranks; SIGUSR1 they pass on), so the run stops at a step boundary, its file is left
    incomplete but readable, and the job ends with moesim's 143. With mpirun the ranks sit in
    the batch step, which a plain `scancel --signal=TERM` (the job steps) would never reach.
    Also: --cpus-per-task reaches the run's BLAS threads."""
    cfg = tmp_path / "moe.ini"
    cfg.write_text(BASE + "experts = 4\nflush-every = 1\n")
    out = tmp_path / "run.h5"
    log = tmp_path / "run.out"
    steps = 1_000_000  # never reached
    env = {**cluster.env, "MOESIM_LAUNCHER": launcher}
    proc = subprocess.run(["sbatch", "--parsable", f"--ntasks={RANKS}", "--cpus-per-task=2",
                           f"--output={log}", f"--chdir={tmp_path}", str(JOBS / "run.sbatch"), str(cfg),
                           "--out", str(out), "--steps", str(steps)],
                          capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    while steps_written(out) < 3:
        if time.monotonic() > deadline:
            pytest.fail(f"the run did not start{diagnostics(cluster, [log])}")
        time.sleep(0.05)
    slurm(cluster, "scancel", "--batch", "--signal=TERM", job_id)

    (job,) = wait_for(cluster, job_id, outputs=[log])
    info = diagnostics(cluster, [log])
    assert job["JobState"] == "FAILED" and job["ExitCode"] == "143:0", f"{job}{info}"
    text = log.read_text()
    assert f"SIGTERM: asking the ranks to stop (SIGUSR1 to {launcher})" in text, info
    assert "stopped by signal" in text and "moesim exited with 143" in text, info
    assert "--blas-threads 2" in text, info
    if launcher == "mpirun":
        assert f"mpirun -np {RANKS} " in text and "--bind-to none" in text, info
    a = root_attrs(out)
    assert a["complete"] == 0
    stopped = int(a["stopped_at_step"])
    assert 3 <= stopped < steps
    assert a["ranks"] == RANKS and a["nodes"] == 1 and a["ranks_per_node"] == RANKS
    assert a["blas_threads"] == 2
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["metrics/step"][()], np.arange(1, stopped + 1))
        assert f["final"].attrs["steps_done"] == stopped


@pytest.mark.parametrize("signalled", ["batch", "steps"])
def test_sigterm_requeues_the_array_task(cluster, tmp_path, signalled):
    """SIGTERM to a task's batch shell (what --signal=B:TERM@120 sends before the time limit; here
    by `scancel --batch --signal=TERM`), which sweep.sbatch forwards to the ranks as SIGUSR1, or
    to its job steps, i.e. straight to srun's ranks (`scancel --signal=TERM`, as preemption
    does): the point stops at a step boundary and writes its checkpoint, the task requeues itself
    and its second run continues the point from that checkpoint to completion. The other task is
    not disturbed."""
    steps = 400  # of point 1, long enough to be caught inside; point 0 is short
    cfg = tmp_path / "grid.ini"
    cfg.write_text("command = moe\n" + BASE + f"flush-every = 1\nexperts = 2\nseed = 1,2\n"
                   f"steps = 20,{steps}\nzip = seed,steps\n")
    out = tmp_path / "out"
    points = sweep_list(cluster, cfg, out)
    assert len(points) == 2
    logs = tmp_path / "logs"
    logs.mkdir()
    sub = slurm(cluster, "sbatch", "--parsable", "--array=0-1", f"--ntasks={RANKS}",
                f"--output={logs}/slurm-%A_%a.out", f"--chdir={tmp_path}",
                JOBS / "sweep.sbatch", cfg, out)
    array_id = sub.stdout.strip().split(";")[0]
    target = out / f"{points[1]['id']}.h5"
    deadline = time.monotonic() + 60
    while steps_written(target) < 3:
        if time.monotonic() > deadline:
            pytest.fail(f"task 1 did not start its point{diagnostics(cluster, logs.glob('*.out'))}")
        time.sleep(0.05)
    t_signal = time.time()
    slurm(cluster, "scancel", *(["--batch"] if signalled == "batch" else []), "--signal=TERM",
          f"{array_id}_1")

    tasks = {int(t["ArrayTaskId"]): t for t in wait_for(cluster, array_id, outputs=logs.glob("*.out"))}
    log1 = logs / f"slurm-{array_id}_1.out"
    info = diagnostics(cluster, sorted(logs.glob("*.out")))
    assert tasks[1]["JobState"] == "COMPLETED", f"{tasks[1]}{info}"
    assert tasks[1]["Restarts"] == "1", f"{tasks[1]}{info}"
    assert tasks[0]["JobState"] == "COMPLETED" and tasks[0]["Restarts"] == "0", f"{tasks[0]}{info}"
    text = log1.read_text()
    assert "moesim exited with 143" in text and f"requeueing {array_id}_1" in text, info
    assert "(restart 1)" in text and "moesim exited with 0" in text, info
    assert "stopped by signal" in text, info
    assert ("SIGTERM: asking the ranks to stop (SIGUSR1 to srun)" in text) == (signalled == "batch"), info
    a = root_attrs(target)
    assert a["complete"] == 1
    assert a["slurm_array_task_id"] == "1"
    # The second run continued from the checkpoint the signal made, not from scratch, and its
    # run file holds every step once.
    assert calendar.timegm(time.strptime(a["start_time"], "%Y-%m-%dT%H:%M:%SZ")) >= int(t_signal)
    assert 3 <= a["resumed_at_step"] < steps, info
    with h5py.File(target, "r") as f:
        np.testing.assert_array_equal(f["metrics/step"][()], np.arange(1, steps + 1))
    with h5py.File(out / "checkpoints" / f"{points[1]['id']}.h5", "r") as f:
        assert f.attrs["step"] == steps and f.attrs["complete"] == 1
    assert root_attrs(out / f"{points[0]['id']}.h5")["complete"] == 1
