"""Fault injection for `moesim sweep`: SIGKILL one random rank of a running sweep at a random
step of a random point, again on the next attempt for some trials, then rerun the sweep until it
exits 0 and check that every point is complete and bit-identical to an undisturbed sweep.

usage: python3 bench/fault_injection.py [--trials 20] [--seed 1] [--ranks 2,4] [--mix-ranks]
           [--max-kills 3] [--min-kill-step 1] [--max-kill-step 0] [--steps 300] [--experts 2,4]
           [--seeds 1,2,3] [--checkpoint-every 50]
           [--option KEY=VALUE ...] [--json FILE] [--keep] [--workdir DIR]

Per trial (its own RNG, seeded by --seed and the trial number): 1..--max-kills attempts, each
started into the trial's directory and killed by SIGKILL to one rank process (a process of the
job that has an MPI rank in its environment, never mpirun). Most kills wait until a random point
that is not complete yet has written a random step of its new attempt (its run file's
metrics/step rows, polled with h5py); a fraction (--time-kills) land after a random delay instead,
so some fall into start-up, checkpoint writes, final validation, between points and the summary.
Each killed job must end by itself (mpirun takes the other ranks down) within --job-timeout: one
that does not is a hang. Then undisturbed reruns, at most --max-reruns, until one exits 0.

Checks, per point: `complete` in the rerun's sweep.h5 and in the run file; every dataset of the
run file (metrics/, routing_recovery/, ...) and the attributes of every group, byte for byte
equal to the reference sweep's (one undisturbed sweep per rank count), except the wall-clock
ones (TIMING, TIMING_ATTRS, WALL_CLOCK_ROOT) and the point's own paths (`out`, `checkpoint`,
compared with the directory replaced); the final checkpoint's parameters, Adam moments and state
byte for byte equal. With --mix-ranks every attempt of a trial runs on another rank count
than the one before, so points resume on another P: they are compared with the reference of
the last attempt's P without the series the layout shapes (LAYOUT, and the metrics_until_step*
groups such a resume makes), as docs/model.md promises (`bit_identical = 1`). The references of
the different P are compared the same way.

Exit 0 when no point was lost (not complete after the reruns, or not identical), no job hung and
every trial's reruns ended in exit 0; 1 otherwise. The directory of a failed trial is kept.

Environment: MOESIM_BIN (or --moesim), MOESIM_MPIEXEC (default "mpirun --oversubscribe", plus
--allow-run-as-root as root), as tests/python/moesim_testing.py reads them.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
import moesim_testing as mt  # noqa: E402  (sets HDF5_USE_FILE_LOCKING before h5py is imported)

import h5py  # noqa: E402
import numpy as np  # noqa: E402

# Values of the machine, not the results: per-step datasets and `final` attributes that time
# the run or measure its memory.
TIMING = {"tokens_per_s", "step_seconds", "a2a_seconds", "a2a_wait_seconds", "compute_seconds", "a2a_seconds_by_phase"}
TIMING_ATTRS = {"tokens_per_s", "wall_seconds", "a2a_seconds", "a2a_wait_seconds", "logging_seconds", "peak_rss_bytes",
                "compute_seconds"}
# Root attributes that say when (and whether) this attempt started: never the results.
WALL_CLOCK_ROOT = {"start_time", "end_time", "resumed_at_step"}
# What the rank count shapes by nature (as tests/python/test_bit_identity.py's LAYOUT_METRICS).
LAYOUT = {"traffic", "rank_expert_tokens", "a2a_bytes", "a2a_bytes_by_phase", "padding_bytes"}
LAYOUT_ROOT = {"ranks", "nodes", "ranks_per_node", "ranks_per_node_min", "effective_ep_size",
               "effective_replica_groups", "memory_estimate_bytes"}
MODEL_GROUPS = ("replicated", "experts", "state")
# Killed ranks cannot remove their shared-memory segments: they go to the trial's directory.
SHM_ENV = "OMPI_MCA_btl_vader_backing_directory"


# --------------------------------------------------------------------------- the sweep


@dataclass
class SweepSpec:
    """A small `moe` sweep: experts x seeds points, each long enough for a kill to land inside."""
    experts: list = field(default_factory=lambda: [2, 4])
    seeds: list = field(default_factory=lambda: [1, 2, 3])
    steps: int = 300
    checkpoint_every: int = 50   # 0: a killed point starts again from step 1
    flush_every: int = 10
    eval_every: int = 100
    options: dict = field(default_factory=dict)  # any other `moesim moe` option

    def config_text(self) -> str:
        opts = {"command": "moe", "gate": "switch", "top-k": 1, "d-model": 16, "d-ff": 32, "layers": 2,
                "batch-tokens": 256, "val-tokens": 256, "quiet": "true", "steps": self.steps,
                "flush-every": self.flush_every, "eval-every": self.eval_every}
        if self.checkpoint_every > 0:
            opts["checkpoint-every"] = self.checkpoint_every
        opts.update(self.options)
        opts["experts"] = ",".join(map(str, self.experts))
        opts["seed"] = ",".join(map(str, self.seeds))
        return "".join(f"{k} = {v}\n" for k, v in opts.items())


def job_env(directory: Path) -> dict:
    return mt.subprocess_env({SHM_ENV: str(directory), **mt.QUICK_EXIT_ENV})


def run_sweep(config: Path, out: Path, np_: int, log_dir: Path, tag: str, timeout: float):
    """An undisturbed `mpirun -np NP moesim sweep CONFIG --out OUT`; returns (exit code or None
    when it hung, seconds). Output goes to LOG_DIR/TAG.stdout/.stderr."""
    job = mt.SessionJob(mt.mpirun_command(np_, "sweep", config, "--out", out), log_dir, tag, job_env(log_dir))
    t0 = time.monotonic()
    try:
        rc = job.proc.wait(timeout=timeout)
        _wait_session_empty(job, 30)
        return rc, time.monotonic() - t0
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - t0
    finally:
        job.close()


def _wait_session_empty(job: mt.SessionJob, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while mt.session_pids(job.proc.pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def point_ids(out: Path) -> list[str]:
    with h5py.File(out / "sweep.h5", "r") as f:
        return mt.strings(f["points/id"])


def summary_status(out: Path) -> dict:
    """{id: status} as the sweep's summary records it ({} when it cannot be read)."""
    try:
        with h5py.File(out / "sweep.h5", "r") as f:
            return dict(zip(mt.strings(f["points/id"]), mt.strings(f["points/status"])))
    except Exception:
        return {}


def is_complete(path: Path) -> bool:
    try:
        return mt.root_attrs(path).get("complete") == 1
    except Exception:
        return False


# --------------------------------------------------------------------------- killing a rank


def rank_processes(job: mt.SessionJob) -> dict[int, int]:
    """{pid: MPI rank} of the job's rank processes: the processes of its session whose
    environment names a rank (mpirun's does not)."""
    ranks = {}
    for pid in mt.session_pids(job.proc.pid):
        if pid == job.proc.pid:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
        except OSError:
            continue
        for key in (b"OMPI_COMM_WORLD_RANK", b"PMIX_RANK", b"PMI_RANK"):
            if key in env:
                ranks[pid] = int(env[key])
                break
    return ranks


def rows_since(path: Path, since_ns: int) -> int:
    """metrics/step rows of a run file this attempt has written (0 for an older file)."""
    try:
        if path.stat().st_mtime_ns < since_ns:
            return 0
    except OSError:
        return 0
    return mt.steps_written(path)


@dataclass
class Attempt:
    """One sweep invocation meant to be killed, and what happened to it."""
    ranks: int
    plan: str                      # "step": point and step; "time": delay
    point: str = ""
    step: int = 0
    delay: float = 0.0
    delivered: bool = False
    killed_rank: int = -1
    at: str = ""                   # where the kill landed, in words
    exit_code: int | None = None   # None: hung
    seconds: float = 0.0


def attempt_with_kill(config: Path, out: Path, ids: list[str], spec: SweepSpec, np_: int, rng, log_dir: Path,
                      tag: str, time_kills: float, expected_seconds: float, timeout: float,
                      min_step: int = 1, max_step: int = 0) -> Attempt:
    """Start the sweep, SIGKILL one random rank at the planned moment, wait for the job to end."""
    pending = [i for i in ids if not is_complete(out / f"{i}.h5")]
    if pending and rng.random() >= time_kills:
        last = min(max_step, spec.steps) if max_step > 0 else spec.steps
        step = int(rng.integers(min(min_step, last), last + 1))
        a = Attempt(np_, "step", point=str(rng.choice(pending)), step=step)
    else:
        # Within what is left of the sweep (the undisturbed sweep's time, pro rata), after start-up.
        left = expected_seconds * max(len(pending), 1) / len(ids)
        a = Attempt(np_, "time", delay=float(rng.uniform(0, 1.0 + left)))
    start_ns = time.time_ns()
    job = mt.SessionJob(mt.mpirun_command(np_, "sweep", config, "--out", out), log_dir, tag, job_env(log_dir))
    t0 = time.monotonic()
    try:
        while job.proc.poll() is None and time.monotonic() - t0 < timeout:
            if a.plan == "step":
                target = out / f"{a.point}.h5"
                rows = rows_since(target, start_ns)
                fire = rows >= a.step or is_complete(target)
            else:
                fire = time.monotonic() - t0 >= a.delay
            ranks = rank_processes(job) if fire else {}
            if ranks:
                pid = int(rng.choice(sorted(ranks)))
                where = _where(out, ids, start_ns)
                try:
                    os.kill(pid, signal.SIGKILL)
                    a.delivered, a.killed_rank, a.at = True, ranks[pid], where
                except ProcessLookupError:
                    continue  # that rank has just exited: pick again
                break
            time.sleep(0.01)
        remaining = max(1.0, timeout - (time.monotonic() - t0))
        try:
            a.exit_code = job.proc.wait(timeout=remaining)
            if not _wait_session_empty(job, 30):
                a.exit_code = None  # ranks outlived mpirun
        except subprocess.TimeoutExpired:
            a.exit_code = None
        a.seconds = time.monotonic() - t0
        if not a.delivered:
            a.at = "not delivered: the job ended first" if a.exit_code is not None else "not delivered: hung"
        return a
    finally:
        job.close()


def _where(out: Path, ids: list[str], start_ns: int) -> str:
    """The point this attempt is in and its rows so far, in words."""
    for i in ids:
        path = out / f"{i}.h5"
        if is_complete(path):
            continue
        rows = rows_since(path, start_ns)
        try:
            touched = path.stat().st_mtime_ns >= start_ns
        except OSError:
            touched = False
        return f"{i} row {rows}" if touched else f"before {i}"
    return "after the last point"


# --------------------------------------------------------------------------- comparison


def _bits(v) -> tuple:
    """A value as (type, shape, bytes) for byte-for-byte comparison; strings decoded."""
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str):
        return ("str", v)
    a = np.asarray(v)
    if a.dtype.kind in "OSU":
        return ("strs", [x.decode() if isinstance(x, bytes) else str(x) for x in a.ravel()], a.shape)
    return (a.dtype.str, a.shape, a.tobytes())


def _read(path: Path, root_dir: Path) -> tuple[dict, dict]:
    """(datasets, attributes) of an HDF5 file: {name: bits}, {"object@attr": bits}; string
    attributes naming root_dir have it replaced, so two sweeps' paths compare equal."""
    data, attrs = {}, {}
    prefix = str(root_dir)

    def add_attrs(name, obj):
        for k, v in obj.attrs.items():
            if isinstance(v, bytes):
                v = v.decode()
            if isinstance(v, str):
                v = v.replace(prefix, "<DIR>")
            attrs[f"{name}@{k}"] = _bits(v)

    with h5py.File(path, "r") as f:
        add_attrs("/", f)

        def visit(name, obj):
            add_attrs(name, obj)
            if isinstance(obj, h5py.Dataset):
                data[name] = _bits(obj[()])
        f.visititems(visit)
    return data, attrs


def _kept_dataset(name: str, layout_free: bool) -> bool:
    base = name.rsplit("/", 1)[-1]
    if base in TIMING:
        return False
    if layout_free and (base in LAYOUT or name.startswith("metrics_until_step")):
        return False
    return True


def _kept_attr(key: str, layout_free: bool) -> bool:
    obj, name = key.rsplit("@", 1)
    if obj == "/":
        return name not in WALL_CLOCK_ROOT and not name.startswith("slurm_") and \
            not (layout_free and name in LAYOUT_ROOT)
    if obj == "final":
        return name not in TIMING_ATTRS and not (layout_free and name in LAYOUT)
    if obj.startswith("metrics_until_step") and layout_free:
        return False
    return True


def compare_files(got: Path, got_dir: Path, ref: Path, ref_dir: Path, layout_free: bool,
                  only_groups: tuple | None = None) -> list[str]:
    """What differs between two run files (or checkpoints with only_groups), in words."""
    gd, ga = _read(got, got_dir)
    rd, ra = _read(ref, ref_dir)
    if only_groups is not None:
        keep = lambda n: n.split("/")[0] in only_groups  # noqa: E731
        gd, rd = {k: v for k, v in gd.items() if keep(k)}, {k: v for k, v in rd.items() if keep(k)}
        ga, ra = {}, {}
        if not rd:
            return [f"{ref.name}: no {'/'.join(only_groups)} datasets"]
    gd = {k: v for k, v in gd.items() if _kept_dataset(k, layout_free)}
    rd = {k: v for k, v in rd.items() if _kept_dataset(k, layout_free)}
    ga = {k: v for k, v in ga.items() if _kept_attr(k, layout_free)}
    ra = {k: v for k, v in ra.items() if _kept_attr(k, layout_free)}
    problems = []
    for what, g, r in (("dataset", gd, rd), ("attribute", ga, ra)):
        for k in sorted(set(g) | set(r)):
            if k not in g:
                problems.append(f"{what} {k} missing")
            elif k not in r:
                problems.append(f"{what} {k} not in the reference")
            elif g[k] != r[k]:
                problems.append(f"{what} {k} differs")
    return problems


def check_sweep(out: Path, ref: Path, ids: list[str], layout_free: bool) -> dict[str, list[str]]:
    """{point id: problems} for every point that is not complete or not identical to ref's."""
    lost = {}
    status = summary_status(out)
    for i in ids:
        problems = []
        if status.get(i) != "complete":
            problems.append(f"sweep.h5 status {status.get(i, 'missing')!r}")
        run = out / f"{i}.h5"
        if not is_complete(run):
            problems.append("run file not complete")
        else:
            try:
                problems += compare_files(run, out, ref / f"{i}.h5", ref, layout_free)
                problems += ["checkpoint: " + p for p in
                             compare_files(out / "checkpoints" / f"{i}.h5", out, ref / "checkpoints" / f"{i}.h5",
                                           ref, layout_free, only_groups=MODEL_GROUPS)]
            except Exception as e:  # an unreadable file is a lost point too
                problems.append(f"unreadable: {e}")
        if problems:
            lost[i] = problems
    return lost


def leftovers(out: Path, ids: list[str]) -> list[str]:
    """Files in the sweep directory that are neither a point's run file or checkpoint nor sweep.h5."""
    expected = {f"{i}.h5" for i in ids} | {"sweep.h5", "checkpoints"}
    extra = [p.name for p in out.iterdir() if p.name not in expected]
    ck = out / "checkpoints"
    if ck.is_dir():
        extra += ["checkpoints/" + p.name for p in ck.iterdir() if p.name not in {f"{i}.h5" for i in ids}]
    return sorted(extra)


# --------------------------------------------------------------------------- a campaign


@dataclass
class Trial:
    number: int
    attempts: list = field(default_factory=list)
    reruns: int = 0
    rerun_ranks: list = field(default_factory=list)
    finished: bool = False        # a rerun exited 0
    hung: bool = False
    lost: dict = field(default_factory=dict)
    resumed: int = 0              # points whose last attempt resumed from a checkpoint
    resumed_across_ranks: int = 0  # ... written on another P (the run file has metrics_until_step*)
    leftovers: list = field(default_factory=list)
    seconds: float = 0.0
    directory: str = ""


@dataclass
class Report:
    trials: int = 0
    points_per_trial: int = 0
    ranks: list = field(default_factory=list)
    mix_ranks: bool = False
    kills_planned: int = 0
    kills_delivered: int = 0
    kills_survived: int = 0
    kills_by_rank: dict = field(default_factory=dict)
    kills_by_plan: dict = field(default_factory=dict)
    exit_codes_after_kill: dict = field(default_factory=dict)
    reruns: int = 0
    max_reruns_in_a_trial: int = 0
    unfinished: int = 0           # trials whose reruns never exited 0
    hangs: int = 0
    points_checked: int = 0
    points_lost: int = 0
    points_resumed: int = 0
    points_resumed_across_ranks: int = 0
    leftover_files: int = 0
    reference_seconds: dict = field(default_factory=dict)
    references_agree: bool = True
    reference_differences: list = field(default_factory=list)
    seconds: float = 0.0
    failures: list = field(default_factory=list)
    trial_log: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.points_lost == 0 and self.hangs == 0 and self.unfinished == 0 and \
            self.references_agree and not self.failures


def make_references(spec: SweepSpec, config: Path, workdir: Path, ranks: list[int], timeout: float,
                    report: Report) -> tuple[dict, list[str]]:
    refs = {}
    for p in ranks:
        out = workdir / f"reference_np{p}"
        rc, secs = run_sweep(config, out, p, workdir, f"reference_np{p}", timeout)
        if rc != 0:
            raise RuntimeError(f"the undisturbed sweep on {p} ranks exited {rc}: see {workdir}/reference_np{p}.stderr")
        refs[p] = out
        report.reference_seconds[p] = round(secs, 2)
    ids = point_ids(refs[ranks[0]])
    for p, out in refs.items():
        bad = {i: s for i, s in summary_status(out).items() if s != "complete"}
        if bad or len(summary_status(out)) != len(ids):
            raise RuntimeError(f"the undisturbed sweep on {p} ranks left points not complete: {bad}")
    # The rank count must not change the results (README: bit_identical = 1).
    first = ranks[0]
    for p in ranks[1:]:
        for i in ids:
            identical = mt.root_attrs(refs[p] / f"{i}.h5").get("bit_identical") == 1
            diff = compare_files(refs[p] / f"{i}.h5", refs[p], refs[first] / f"{i}.h5", refs[first], True)
            if diff and identical:
                report.references_agree = False
                report.reference_differences.append(f"{i}: {p} vs {first} ranks: {diff[:5]}")
            if not identical:
                report.reference_differences.append(f"{i}: bit_identical = 0, ranks not comparable")
                report.references_agree = report.references_agree and not report.mix_ranks
    return refs, ids


def run_trial(number: int, spec: SweepSpec, config: Path, workdir: Path, refs: dict, ids: list[str],
              ranks: list[int], args) -> Trial:
    rng = np.random.default_rng([args.seed, number])
    t = Trial(number)
    tdir = workdir / f"trial{number:03d}"
    tdir.mkdir(parents=True)
    out = tdir / "sweep"
    t.directory = str(tdir)
    t0 = time.monotonic()
    last = [int(rng.choice(ranks))]

    def pick() -> int:
        # Mixing: every attempt on another P than the one before, so points resume across P.
        if args.mix_ranks and len(ranks) > 1:
            last[0] = int(rng.choice([p for p in ranks if p != last[0]]))
        return last[0]
    for k in range(int(rng.integers(1, args.max_kills + 1))):
        p = pick()
        a = attempt_with_kill(config, out, ids, spec, p, rng, tdir, f"kill{k}", args.time_kills,
                              args.expected_seconds.get(p, 10.0), args.job_timeout, args.min_kill_step,
                              args.max_kill_step)
        t.attempts.append(a)
        if a.exit_code is None:
            t.hung = True
            break
    last_p = t.attempts[-1].ranks
    while not t.hung and not t.finished and t.reruns < args.max_reruns:
        p = pick()
        rc, _ = run_sweep(config, out, p, tdir, f"rerun{t.reruns}", args.job_timeout)
        t.reruns += 1
        t.rerun_ranks.append(p)
        last_p = p
        if rc is None:
            t.hung = True
        t.finished = rc == 0
    layout_free = len({a.ranks for a in t.attempts} | set(t.rerun_ranks)) > 1
    if out.is_dir():
        t.lost = check_sweep(out, refs[last_p], ids, layout_free)
        t.resumed = sum(1 for i in ids if is_complete(out / f"{i}.h5")
                        and "resumed_at_step" in mt.root_attrs(out / f"{i}.h5"))
        t.resumed_across_ranks = sum(1 for i in ids if is_complete(out / f"{i}.h5")
                                     and _resumed_across(out / f"{i}.h5"))
        t.leftovers = leftovers(out, ids)
    else:
        t.lost = {i: ["no sweep directory"] for i in ids}
    t.seconds = time.monotonic() - t0
    return t


def _resumed_across(path: Path) -> bool:
    with h5py.File(path, "r") as f:
        return any(k.startswith("metrics_until_step") for k in f)


def describe(t: Trial) -> str:
    kills = []
    for a in t.attempts:
        plan = f"{a.point} step {a.step}" if a.plan == "step" else f"t={a.delay:.2f}s"
        got = f"rank {a.killed_rank} at {a.at}" if a.delivered else a.at
        kills.append(f"P={a.ranks} [{plan}] {got} -> exit {a.exit_code}")
    state = "ok" if not t.lost and t.finished and not t.hung else "FAILED"
    return (f"trial {t.number}: {state}; " + "; ".join(kills) +
            f"; reruns {t.reruns} on P={t.rerun_ranks}, resumed {t.resumed} ({t.resumed_across_ranks} across P),"
            f" lost {len(t.lost)}"
            f"{', hung' if t.hung else ''}, {t.seconds:.1f} s")


def campaign(spec: SweepSpec, workdir: Path, *, trials: int, seed: int = 1, ranks=(2,), mix_ranks: bool = False,
             max_kills: int = 3, max_reruns: int = 3, time_kills: float = 0.25, min_kill_step: int = 1,
             max_kill_step: int = 0, job_timeout: float = 180, keep: bool = False, log=print) -> Report:
    """References on every P in `ranks`, then `trials` trials; returns the figures."""
    ranks = list(ranks)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    report = Report(trials=trials, ranks=ranks, mix_ranks=mix_ranks)
    t0 = time.monotonic()
    config = workdir / "fault.sweep.ini"
    config.write_text(spec.config_text())
    refs, ids = make_references(spec, config, workdir, ranks, job_timeout, report)
    report.points_per_trial = len(ids)
    args = argparse.Namespace(seed=seed, mix_ranks=mix_ranks, max_kills=max_kills, max_reruns=max_reruns,
                              time_kills=time_kills, min_kill_step=min_kill_step,
                              max_kill_step=max_kill_step, job_timeout=job_timeout,
                              expected_seconds=report.reference_seconds)
    log(f"references: {len(ids)} points, " +
        ", ".join(f"{s} s on {p} ranks" for p, s in report.reference_seconds.items()) +
        ("" if report.references_agree else "; DIFFER across rank counts"))
    for n in range(trials):
        t = run_trial(n, spec, config, workdir, refs, ids, ranks, args)
        for a in t.attempts:
            report.kills_planned += 1
            if a.delivered:
                report.kills_delivered += 1
                report.kills_by_rank[a.killed_rank] = report.kills_by_rank.get(a.killed_rank, 0) + 1
                report.kills_by_plan[a.plan] = report.kills_by_plan.get(a.plan, 0) + 1
                key = str(a.exit_code)
                report.exit_codes_after_kill[key] = report.exit_codes_after_kill.get(key, 0) + 1
        report.reruns += t.reruns
        report.max_reruns_in_a_trial = max(report.max_reruns_in_a_trial, t.reruns)
        report.hangs += t.hung
        report.unfinished += not t.finished and not t.hung
        report.points_checked += len(ids)
        report.points_lost += len(t.lost)
        report.points_resumed += t.resumed
        report.points_resumed_across_ranks += t.resumed_across_ranks
        report.leftover_files += len(t.leftovers)
        good = not t.lost and t.finished and not t.hung
        if good:
            report.kills_survived += sum(a.delivered for a in t.attempts)
        else:
            report.failures.append({"trial": t.number, "directory": t.directory, "lost": t.lost,
                                    "attempts": [asdict(a) for a in t.attempts]})
        line = describe(t)
        if t.leftovers:
            line += f"; left in the directory: {', '.join(t.leftovers)}"
        report.trial_log.append(line)
        log(line)
        for i, problems in t.lost.items():
            log(f"  lost {i}: {'; '.join(problems[:6])}{' ...' if len(problems) > 6 else ''}")
        if good and not keep:
            shutil.rmtree(t.directory, ignore_errors=True)
    report.seconds = round(time.monotonic() - t0, 1)
    return report


def summary_lines(r: Report) -> list[str]:
    p = ",".join(map(str, r.ranks))
    return [
        f"trials: {r.trials} ({r.points_per_trial} points each; ranks {p}, "
        f"{'each attempt on another P than the one before' if r.mix_ranks else 'one P per trial'})",
        f"kills delivered: {r.kills_delivered} of {r.kills_planned} planned "
        f"(by rank {dict(sorted(r.kills_by_rank.items()))}, by trigger {r.kills_by_plan}; "
        f"exit codes after a kill {r.exit_codes_after_kill})",
        f"kills survived: {r.kills_survived}",
        f"reruns needed: {r.reruns} (at most {r.max_reruns_in_a_trial} in a trial); "
        f"trials never finishing: {r.unfinished}",
        f"points checked: {r.points_checked}, resumed from a checkpoint in their last attempt: {r.points_resumed}"
        f" ({r.points_resumed_across_ranks} of them written on another P)",
        f"points lost (not complete or not bit-identical): {r.points_lost}",
        f"hangs: {r.hangs}",
        f"files left beside the points: {r.leftover_files}",
        f"references agree across rank counts: {'yes' if r.references_agree else 'NO'}"
        + (f" ({'; '.join(r.reference_differences[:3])})" if r.reference_differences else ""),
        f"time: {r.seconds} s",
    ]


def int_list(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--moesim", help="the moesim binary (default: MOESIM_BIN or build/default/src/moesim)")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1, help="seeds every trial's choices (trial t: [seed, t])")
    ap.add_argument("--ranks", type=int_list, default=[2, 4], help="rank counts, e.g. 2,4")
    ap.add_argument("--mix-ranks", action="store_true",
                    help="every attempt of a trial runs on another P than the one before")
    ap.add_argument("--max-kills", type=int, default=3, help="kills per trial: 1..N, drawn")
    ap.add_argument("--max-reruns", type=int, default=3, help="undisturbed reruns allowed to reach exit 0")
    ap.add_argument("--time-kills", type=float, default=0.25,
                    help="fraction of kills after a random delay instead of at a random step")
    ap.add_argument("--min-kill-step", type=int, default=1, help="the earliest step a step-triggered kill waits for")
    ap.add_argument("--max-kill-step", type=int, default=0,
                    help="the latest step a step-triggered kill waits for (default 0: the last step)")
    ap.add_argument("--job-timeout", type=float, default=180, help="seconds before a job counts as hung")
    ap.add_argument("--experts", type=int_list, default=[2, 4])
    ap.add_argument("--seeds", type=int_list, default=[1, 2, 3])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--checkpoint-every", type=int, default=50, help="0: killed points restart from step 1")
    ap.add_argument("--flush-every", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="another `moesim moe` option of every point (repeatable)")
    ap.add_argument("--workdir", help="where the sweeps go (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep every trial's directory, not only failed ones")
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args(argv)
    if a.moesim:
        os.environ["MOESIM_BIN"] = str(Path(a.moesim).resolve())
    if not os.access(mt.moesim_path(), os.X_OK):
        ap.error(f"no moesim binary at {mt.moesim_path()}: build it or give --moesim")
    if a.max_kills < 1 or a.trials < 1:
        ap.error("--trials and --max-kills must be >= 1")
    spec = SweepSpec(experts=a.experts, seeds=a.seeds, steps=a.steps, checkpoint_every=a.checkpoint_every,
                     flush_every=a.flush_every, eval_every=a.eval_every,
                     options=dict(o.split("=", 1) for o in a.option))
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="moesim_fault_"))
    print(f"fault injection: {shlex.join(mt.mpiexec_prefix())} ... {mt.moesim_path()} sweep; work in {workdir}")
    r = campaign(spec, workdir, trials=a.trials, seed=a.seed, ranks=a.ranks, mix_ranks=a.mix_ranks,
                 max_kills=a.max_kills, max_reruns=a.max_reruns, time_kills=a.time_kills,
                 min_kill_step=a.min_kill_step, max_kill_step=a.max_kill_step, job_timeout=a.job_timeout, keep=a.keep)
    print("\n".join(summary_lines(r)))
    if a.json:
        Path(a.json).write_text(json.dumps({**asdict(r), "ok": r.ok, "spec": asdict(spec)}, indent=1))
    if r.ok and not a.keep and not a.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not r.ok:
        print(f"FAILED: directories kept in {workdir}")
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main())
