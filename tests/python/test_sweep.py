"""`moesim sweep`: grid expansion, stable ids, run files and the summary, invalid points,
failures, resume.

Grid tests use `--list` on one rank (no launcher). Runs use 2 ranks with mpirun. The long
sweeps (resume, SIGTERM) are started in a session of their own and killed, like test_kill.py:
every process group of the session is signalled, and cleanup SIGKILLs whatever is left.
"""
from __future__ import annotations

import calendar
import itertools
import re
import signal
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from moesim_testing import (REPO_ROOT, check_rejected, SessionJob, attrs_of, fail_with, root_attrs, signal_job, signal_ranks, steps_written,
                            strings)

P = 2

# Small and fast; a point of BASE takes a fraction of a second on 2 ranks.
BASE = """\
command = moe
top-k = 1
d-model = 16
d-ff = 32
layers = 2
batch-tokens = 256
val-tokens = 256
quiet = true
"""

# INDEX ID STATUS key=value...  [# reason, for invalid and failed points]
LINE = re.compile(r"^\s*(\d+)\s+(\S+)\s+(pending|complete|incomplete|failed|invalid)\s*([^#]*?)\s*(?:#\s*(.*))?$")


# --------------------------------------------------------------------------- helpers


def write_config(tmp_path: Path, text: str, name: str = "grid.ini") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def list_points(moesim_direct, config, out) -> tuple[int, str, list[dict]]:
    """`moesim sweep CONFIG --out OUT --list` -> (announced count, command, points)."""
    proc = moesim_direct("sweep", config, "--out", out, "--list", timeout=60)
    assert proc.returncode == 0, f"--list failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    m = re.match(r"^(\d+) points \(command (\w+)\)$", lines[0])
    assert m, f"unexpected --list header: {lines[0]!r}"
    points = []
    for line in lines[1:]:
        pm = LINE.match(line)
        assert pm, f"unexpected --list line: {line!r}"
        swept = dict(kv.split("=", 1) for kv in pm.group(4).split())
        points.append({"index": int(pm.group(1)), "id": pm.group(2), "status": pm.group(3),
                       "swept": swept, "reason": pm.group(5) or ""})
    assert [p["index"] for p in points] == list(range(len(points)))
    return int(m.group(1)), m.group(2), points


def read_summary(out: Path) -> dict:
    with h5py.File(out / "sweep.h5", "r") as f:
        s = {"attrs": attrs_of(f)}
        g = f["points"]
        for name in ("id", "status", "error", "file"):
            s[name] = strings(g[name])
        s["index"] = g["index"][()].tolist()
        s["options"] = {k: g["options"][k][()] for k in g["options"]}
        s["final"] = {k: g["final"][k][()] for k in g["final"]}
    return s


def run_file(out: Path, point: dict) -> Path:
    return out / f"{point['id']}.h5"


class Sweep(SessionJob):
    """`mpirun -np P moesim sweep CONFIG --out OUT` in a session of its own, output to files."""

    def __init__(self, tmp_path: Path, cmd, config: Path, out: Path, tag: str):
        # Killed ranks cannot remove their shared-memory segments: keep them in tmp_path.
        env = cmd.env({"OMPI_MCA_btl_vader_backing_directory": str(tmp_path)})
        super().__init__(cmd.mpirun_command(P, "sweep", config, "--out", out), tmp_path, tag, env)


@pytest.fixture
def sweep_job(tmp_path, moesim_cmd):
    started = []

    def start(config, out, tag="sweep"):
        s = Sweep(tmp_path, moesim_cmd, config, out, tag)
        started.append(s)
        return s

    try:
        yield start
    finally:
        for s in started:
            s.close()


def is_complete(path: Path) -> bool:
    try:
        return root_attrs(path).get("complete") == 1
    except Exception:
        return False


def wait_inside_point(s: Sweep, points: list[dict], out: Path, min_done: int,
                      min_rows: int = 3, timeout: float = 60) -> int:
    """Poll until >= min_done points are complete and the next one has >= min_rows steps;
    returns the index of that running point."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if s.proc.poll() is not None:
            pytest.fail(f"sweep ended early with {s.proc.returncode}:\n{s.describe()}")
        done = 0
        while done < len(points) and is_complete(run_file(out, points[done])):
            done += 1
        if done >= min_done and done < len(points) and steps_written(run_file(out, points[done])) >= min_rows:
            return done
        time.sleep(0.02)
    pytest.fail(f"sweep did not get {min_done} points done and {min_rows} steps into the next "
                f"in {timeout} s:\n{s.describe()}")


def stat_key(path: Path) -> tuple:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def iso_seconds(stamp: str) -> int:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


# --------------------------------------------------------------------------- grid expansion


def test_cartesian_product_size_and_order(tmp_path, moesim_direct):
    cfg = write_config(tmp_path, BASE + "steps = 5\nexperts = 2,4\nseed = 1, 2 ,3\nlr = 0.001,0.003\n")
    n, command, points = list_points(moesim_direct, cfg, tmp_path / "out")
    assert (n, command) == (12, "moe")
    assert len(points) == 12
    # The first list in the file varies slowest; fixed options are not part of `swept`.
    expected = list(itertools.product(["2", "4"], ["1", "2", "3"], ["0.001", "0.003"]))
    assert [(p["swept"]["experts"], p["swept"]["seed"], p["swept"]["lr"]) for p in points] == expected
    assert all(set(p["swept"]) == {"experts", "seed", "lr"} for p in points)
    assert all(p["status"] == "pending" for p in points)
    ids = [p["id"] for p in points]
    assert len(set(ids)) == len(ids)
    for p in points:
        # readable swept values, then a hash of every value
        assert re.fullmatch(rf"experts{p['swept']['experts']}_seed{p['swept']['seed']}_"
                            rf"lr{re.escape(p['swept']['lr'])}_[0-9a-f]{{8}}", p["id"]), p["id"]
    assert not (tmp_path / "out").exists(), "--list must not create the output directory"


def test_single_point_grid(tmp_path, moesim_direct):
    cfg = write_config(tmp_path, BASE + "steps = 5\nexperts = 2\n")
    n, _, points = list_points(moesim_direct, cfg, tmp_path / "out")
    assert n == 1 and len(points) == 1
    assert points[0]["swept"] == {}
    assert re.fullmatch(r"run_[0-9a-f]{8}", points[0]["id"])


def test_zip_groups_advance_together(tmp_path, moesim_direct):
    # The zip group is one axis, placed where its first key is in the file.
    cfg = write_config(tmp_path, BASE.replace("d-model = 16\nd-ff = 32\n", "") +
                       "steps = 5\nexperts = 2,4\nd-model = 16,32,64\nseed = 1,2\n"
                       "d-ff = 32,64,128\nzip = d-model, d-ff\n")
    n, _, points = list_points(moesim_direct, cfg, tmp_path / "out")
    assert n == 12
    pairs = [("16", "32"), ("32", "64"), ("64", "128")]
    expected = [(e, dm, dff, s) for e, (dm, dff), s in itertools.product(["2", "4"], pairs, ["1", "2"])]
    got = [(p["swept"]["experts"], p["swept"]["d-model"], p["swept"]["d-ff"], p["swept"]["seed"])
           for p in points]
    assert got == expected


def test_two_zip_groups(tmp_path, moesim_direct):
    cfg = write_config(tmp_path, BASE.replace("d-model = 16\nd-ff = 32\n", "") +
                       "steps = 5\nd-model = 16,32\nd-ff = 32,64\nexperts = 2,4,8\nseed = 1,2,3\n"
                       "zip = d-model,d-ff\nzip = experts,seed\n")
    n, _, points = list_points(moesim_direct, cfg, tmp_path / "out")
    assert n == 6
    got = [(p["swept"]["d-model"], p["swept"]["d-ff"], p["swept"]["experts"], p["swept"]["seed"])
           for p in points]
    assert got == [(dm, dff, e, s) for (dm, dff), (e, s) in
                   itertools.product([("16", "32"), ("32", "64")], [("2", "1"), ("4", "2"), ("8", "3")])]


@pytest.mark.parametrize("extra, message", [
    ("experts = 2,4\nseed = 1,2,3\nzip = experts,seed\n", "equal length"),
    ("experts = 2,4\nzip = experts,nosuch\n", "nosuch"),
    ("experts = 2,4\nseed = 1,2\nzip = experts,seed\nzip = seed,experts\n", "two zip groups"),
    ("experts = 2,4\nexperts = 8\n", "twice"),
    ("experts = 2,,4\n", "empty value"),
    ("experts = 2\nout = x.h5\n", "out"),
    ("learners = [ridge,nb\n", "'[' without ']'"),
    ("learners = ridge],nb\n", "unmatched ']'"),
    ("learners = [ridge]x\n", "text after ']'"),
    ("learners = a[b]\n", "unexpected '['"),
])
def test_bad_grid_is_a_clear_error(tmp_path, moesim_direct, extra, message):
    cfg = write_config(tmp_path, BASE + extra)
    proc = moesim_direct("sweep", cfg, "--out", tmp_path / "out", "--list", timeout=60)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "points" not in proc.stdout


def test_second_config_file_is_an_error(tmp_path, moesim_direct):
    """`moesim sweep a.ini b.ini` once ran a.ini and ignored b.ini."""
    cfg = write_config(tmp_path, BASE + "experts = 2,4\n")
    proc = moesim_direct("sweep", cfg, cfg, "--out", tmp_path / "out", "--list", timeout=60)
    check_rejected(proc, ["unexpected argument", str(cfg)], "sweep")
    assert "points" not in proc.stdout


def test_bad_command_is_a_clear_error(tmp_path, moesim_direct):
    cfg = write_config(tmp_path, BASE.replace("command = moe", "command = nope") + "experts = 2\n")
    proc = moesim_direct("sweep", cfg, "--out", tmp_path / "out", "--list", timeout=60)
    assert proc.returncode != 0
    assert "command must be" in proc.stderr, proc.stderr


def test_ids_are_stable(tmp_path, moesim_direct):
    grid = "steps = 5\nexperts = 2,4\nseed = 1,2\n"
    a = write_config(tmp_path, BASE + grid, "a.ini")
    # Same values, other spacing, comments and file name: same ids.
    b = write_config(tmp_path, "# a comment\n" + BASE.replace(" = ", "=") +
                     "steps=5\nexperts = 2 , 4   # trailing comment\nseed=1,2\n", "b.ini")
    ids_a = [p["id"] for p in list_points(moesim_direct, a, tmp_path / "out1")[2]]
    assert ids_a == [p["id"] for p in list_points(moesim_direct, a, tmp_path / "out2")[2]]
    assert ids_a == [p["id"] for p in list_points(moesim_direct, b, tmp_path / "out1")[2]]

    # A changed fixed value changes every id (same swept values, other hash).
    c = write_config(tmp_path, BASE + grid.replace("steps = 5", "steps = 6"), "c.ini")
    ids_c = [p["id"] for p in list_points(moesim_direct, c, tmp_path / "out1")[2]]
    assert len(ids_c) == len(ids_a)
    assert all(x != y for x, y in zip(ids_a, ids_c))
    assert not set(ids_a) & set(ids_c)
    assert [i.rsplit("_", 1)[0] for i in ids_a] == [i.rsplit("_", 1)[0] for i in ids_c]

    # A longer list keeps the ids of the points that were there (their results are reused).
    d = write_config(tmp_path, BASE + grid.replace("experts = 2,4", "experts = 2,4,8"), "d.ini")
    ids_d = [p["id"] for p in list_points(moesim_direct, d, tmp_path / "out1")[2]]
    assert len(ids_d) == 6
    assert set(ids_a) <= set(ids_d)


# --------------------------------------------------------------------------- running sweeps


def test_sweep_writes_every_point_and_a_matching_summary(tmp_path, mpirun, moesim_direct):
    cfg = write_config(tmp_path, BASE + "steps = 8\nexperts = 2,4\nseed = 1,2\n")
    out = tmp_path / "out"
    _, _, points = list_points(moesim_direct, cfg, out)
    proc = mpirun(P, "sweep", cfg, "--out", out, timeout=120)
    if proc.returncode != 0:
        fail_with(proc, "sweep failed")
    for p in points:
        assert f"{p['id']}: running" in proc.stdout
    assert "[sweep] 4/4 points complete" in proc.stdout

    # One complete run file per point, nothing else but the summary and the points' checkpoints.
    assert sorted(x.name for x in out.iterdir() if not x.name.startswith('.')) == sorted([p["id"] + ".h5" for p in points] +
                                                          ["sweep.h5", "checkpoints"])
    assert sorted(x.name for x in (out / "checkpoints").iterdir()) == sorted(p["id"] + ".h5" for p in points)
    finals = []
    for p in points:
        f = run_file(out, p)
        a = root_attrs(f)
        assert a["complete"] == 1, f
        assert a["kind"] == "moe"
        assert a["ranks"] == P
        assert str(a["experts"]) == p["swept"]["experts"]
        assert str(a["seed"]) == p["swept"]["seed"]
        assert "start_time" in a and "end_time" in a
        with h5py.File(f, "r") as h:
            np.testing.assert_array_equal(h["metrics/step"][()], np.arange(1, 9))
            finals.append(dict(h["final"].attrs))
        assert finals[-1]["steps_done"] == 8

    s = read_summary(out)
    assert s["attrs"]["points"] == 4
    assert s["attrs"]["points_complete"] == 4
    assert s["attrs"]["command"] == "moe"
    assert s["attrs"]["kind"] == "sweep"
    assert s["attrs"]["swept"] == "experts,seed"
    assert s["id"] == [p["id"] for p in points]
    assert s["index"] == [0, 1, 2, 3]
    assert s["status"] == ["complete"] * 4
    assert s["error"] == [""] * 4
    assert s["file"] == [p["id"] + ".h5" for p in points]
    assert s["options"]["experts"].tolist() == [2, 2, 4, 4]
    assert s["options"]["seed"].tolist() == [1, 2, 1, 2]
    assert s["options"]["top_k"].tolist() == [1] * 4  # fixed options are columns too
    for key in ("train_loss", "val_loss", "steps_done", "tokens_per_s"):
        assert key in s["final"], sorted(s["final"])
        np.testing.assert_array_equal(s["final"][key], [fi[key] for fi in finals])
    assert all(p["status"] == "complete" for p in list_points(moesim_direct, cfg, out)[2])

    # Run again: every point is skipped and no file is touched.
    before = {p["id"]: stat_key(run_file(out, p)) for p in points}
    again = mpirun(P, "sweep", cfg, "--out", out, timeout=120)
    if again.returncode != 0:
        fail_with(again, "second sweep failed")
    assert again.stdout.count("complete, skipped") == 4
    assert "running" not in again.stdout
    assert before == {p["id"]: stat_key(run_file(out, p)) for p in points}

    # --summary-only rebuilds sweep.h5 from the run files without running anything.
    (out / "sweep.h5").unlink()
    rebuilt = moesim_direct("sweep", cfg, "--out", out, "--summary-only", timeout=60)
    if rebuilt.returncode != 0:
        fail_with(rebuilt, "--summary-only failed")
    assert "running" not in rebuilt.stdout and "skipped" not in rebuilt.stdout
    s2 = read_summary(out)
    assert s2["status"] == ["complete"] * 4 and s2["id"] == s["id"]
    np.testing.assert_array_equal(s2["final"]["val_loss"], s["final"]["val_loss"])
    assert not [x for x in out.iterdir() if x.name.startswith(".sweep.h5")], "summary temp file left"


def test_index_runs_exactly_one_point(tmp_path, mpirun, moesim_direct):
    cfg = write_config(tmp_path, BASE + "steps = 5\nexperts = 2,4\nseed = 1,2\n")
    out = tmp_path / "out"
    _, _, points = list_points(moesim_direct, cfg, out)
    proc = mpirun(P, "sweep", cfg, "--out", out, "--index", 2, timeout=120)
    if proc.returncode != 0:
        fail_with(proc, "sweep --index 2 failed")
    assert proc.stdout.count(": running") == 1
    assert f"[sweep 3/4] {points[2]['id']}: running" in proc.stdout
    assert sorted(x.name for x in out.iterdir() if not x.name.startswith('.')) == sorted([points[2]["id"] + ".h5", "sweep.h5", "checkpoints"])
    assert root_attrs(run_file(out, points[2]))["complete"] == 1
    assert read_summary(out)["status"] == ["pending", "pending", "complete", "pending"]
    assert [p["status"] for p in list_points(moesim_direct, cfg, out)[2]] == \
        ["pending", "pending", "complete", "pending"]

    again = mpirun(P, "sweep", cfg, "--out", out, "--index", 2, timeout=120)
    assert again.returncode == 0
    assert f"{points[2]['id']}: complete, skipped" in again.stdout and "running" not in again.stdout

    for bad in ("4", "-2"):
        proc = moesim_direct("sweep", cfg, "--out", out, "--index", bad, timeout=60)
        assert proc.returncode != 0
        assert "outside the grid" in proc.stderr, proc.stderr


def test_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path, mpirun, moesim_direct):
    # The second point's corpus does not exist: its options are fine, reading its data fails.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    cfg = write_config(tmp_path, BASE + "steps = 5\nexperts = 2\ntask = lm\ncontext = 4\n"
                       f"data = {corpus},{tmp_path / 'missing.txt'},{corpus}\nseed = 1,2,3\nzip = data,seed\n")
    out = tmp_path / "out"
    _, _, points = list_points(moesim_direct, cfg, out)
    assert [p["status"] for p in points] == ["pending"] * 3, "a missing file is not found by the option checks"
    proc = mpirun(P, "sweep", cfg, "--out", out, timeout=120)
    assert proc.returncode == 3, f"expected exit code 3:\n{proc.stdout}\n{proc.stderr}"
    bad = points[1]
    assert bad["swept"]["seed"] == "2"
    assert re.search(rf"\[sweep\] {bad['id']} failed: .*missing.txt", proc.stderr), proc.stderr
    a = root_attrs(run_file(out, bad))
    assert a["status"] == "failed"
    assert "missing.txt" in a["error"]
    assert a["complete"] == 0
    assert a["sweep_point_id"] == bad["id"]
    for p in (points[0], points[2]):  # before and after the failure
        assert root_attrs(run_file(out, p))["complete"] == 1
    s = read_summary(out)
    assert s["status"] == ["complete", "failed", "complete"]
    assert "missing.txt" in s["error"][1] and s["error"][0] == s["error"][2] == ""
    assert s["attrs"]["points_complete"] == 2
    assert s["attrs"]["points_invalid"] == 0
    assert np.isnan(s["final"]["val_loss"][1]) and np.all(np.isfinite(s["final"]["val_loss"][[0, 2]]))
    listed = list_points(moesim_direct, cfg, out)[2]
    assert [p["status"] for p in listed] == ["complete", "failed", "complete"]
    assert "missing.txt" in listed[1]["reason"]

    # Again: the complete points are skipped, the failed one is tried again (and fails again).
    again = mpirun(P, "sweep", cfg, "--out", out, timeout=120)
    assert again.returncode == 3
    assert again.stdout.count("complete, skipped") == 2
    assert f"{bad['id']}: running" in again.stdout
    # The failed point's result line says so (the error is on stderr); in the first sweep with
    # the ETA of the point after it, in this one with none (the point after it is complete).
    assert re.search(rf"^\[sweep 2/3\] {re.escape(bad['id'])}: failed, {DURATION}; ETA {DURATION} for 1 point$",
                     proc.stdout, re.M), proc.stdout
    assert re.search(rf"^\[sweep 2/3\] {re.escape(bad['id'])}: failed, {DURATION}$", again.stdout, re.M), again.stdout


def test_invalid_points_are_listed_recorded_and_not_run(tmp_path, mpirun, moesim_direct):
    # top-k 4 of 2 experts can never run; the other three points can.
    cfg = write_config(tmp_path, BASE.replace("top-k = 1\n", "") + "steps = 5\ntop-k = 1,4\nexperts = 2,4\n")
    out = tmp_path / "out"
    _, _, points = list_points(moesim_direct, cfg, out)
    assert [(p["swept"]["top-k"], p["swept"]["experts"]) for p in points] == \
        [("1", "2"), ("1", "4"), ("4", "2"), ("4", "4")]
    assert [p["status"] for p in points] == ["pending", "pending", "invalid", "pending"]
    bad = points[2]
    assert "--top-k (4) must not exceed --experts (2)" in bad["reason"], bad
    assert all(p["reason"] == "" for p in points if p is not bad)
    assert not out.exists(), "--list must not create the output directory"

    proc = mpirun(P, "sweep", cfg, "--out", out, timeout=120)
    assert proc.returncode == 0, f"invalid points must not fail the sweep:\n{proc.stdout}\n{proc.stderr}"
    assert f"{bad['id']}: invalid, not run: --top-k (4) must not exceed --experts (2)" in proc.stdout
    assert f"{bad['id']}: running" not in proc.stdout
    assert "[sweep] 3/4 points complete, 1 invalid (not run)" in proc.stdout
    assert "failed" not in proc.stderr
    for p in points:
        a = root_attrs(run_file(out, p))
        if p is bad:
            # A record of the point, not a run: no metrics, no checkpoint.
            assert (a["status"], a["complete"], a["sweep_point_id"]) == ("invalid", 0, bad["id"])
            assert "must not exceed" in a["error"]
            with h5py.File(run_file(out, p), "r") as f:
                assert "metrics" not in f and "final" not in f
            assert not (out / "checkpoints" / f"{p['id']}.h5").exists()
        else:
            assert a["complete"] == 1
    s = read_summary(out)
    assert s["status"] == ["complete", "complete", "invalid", "complete"]
    assert "--top-k (4) must not exceed --experts (2)" in s["error"][2]
    assert s["attrs"]["points_complete"] == 3 and s["attrs"]["points_invalid"] == 1
    assert np.isnan(s["final"]["val_loss"][2])
    assert [p["status"] for p in list_points(moesim_direct, cfg, out)[2]] == \
        ["complete", "complete", "invalid", "complete"]

    # The analysis skips the invalid point: three runs, no "unreadable" or "failed" row.
    sys.path.insert(0, str(REPO_ROOT))
    from moesim_analysis.load import load_runs, usable_runs
    runs = load_runs(out)
    assert sorted(runs["status"]) == ["complete", "complete", "complete", "invalid"]
    usable, note = usable_runs(runs)
    assert len(usable) == 3 and bad["id"] not in set(usable["id"])
    assert "failed" not in note and "unreadable" not in note

    # Again: nothing runs, still a success; the invalid point alone (a job array task) too.
    again = mpirun(P, "sweep", cfg, "--out", out, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "running" not in again.stdout
    one = mpirun(P, "sweep", cfg, "--out", out, "--index", 2, timeout=120)
    assert one.returncode == 0, one.stderr
    assert f"{bad['id']}: invalid, not run" in one.stdout


# --------------------------------------------------------------------------- progress lines

DURATION = r"(?:\d+\.\d s|\d+ min \d+ s|\d+ h \d\d min)"
# [sweep I/N] ID: WHAT[; ETA (DURATION|unknown) for M point(s)]
RESULT = re.compile(rf"^\[sweep (\d+)/(\d+)\] (\S+): (.*?)(?:; ETA ({DURATION}|unknown) for (\d+) points?)?$")


def result_lines(stdout: str) -> dict[str, re.Match]:
    """Each point's result line (not its `running` line), by point id."""
    found = {}
    for line in stdout.splitlines():
        m = RESULT.match(line)
        if m and m.group(4) != "running":
            assert m.group(3) not in found, f"two result lines for {m.group(3)}:\n{stdout}"
            found[m.group(3)] = m
    return found


def final_val_loss(path: Path) -> float:
    with h5py.File(path, "r") as f:
        return float(f["final"].attrs["val_loss"])


def test_each_point_prints_its_result_and_the_eta_of_the_rest(tmp_path, mpirun, moesim_direct):
    # top-k 4 of 2 experts is invalid; the other three run. BASE sets quiet = true: the runs'
    # own progress lines stay off, the sweep's result lines do not.
    cfg = write_config(tmp_path, BASE.replace("top-k = 1\n", "") + "steps = 4\ntop-k = 1,4\nexperts = 2,4\n")
    out = tmp_path / "out"
    _, _, points = list_points(moesim_direct, cfg, out)
    assert [p["status"] for p in points] == ["pending", "pending", "invalid", "pending"]

    # A job array task: its one point's line, no ETA (nothing else is left to it).
    one = mpirun(P, "sweep", cfg, "--out", out, "--index", 0, timeout=120)
    if one.returncode != 0:
        fail_with(one, "sweep --index 0 failed")
    lines = result_lines(one.stdout)
    assert list(lines) == [points[0]["id"]], one.stdout
    m = lines[points[0]["id"]]
    assert m.group(1, 2) == ("1", "4") and m.group(5) is None, m.group(0)
    done = re.fullmatch(rf"done: val_loss ([0-9.]+), ({DURATION})", m.group(4))
    assert done, m.group(0)
    assert done.group(1) == f"{final_val_loss(run_file(out, points[0])):.5f}"

    # The whole grid: point 0 is skipped (before any point ran here: ETA unknown), 1 runs,
    # 2 is invalid, 3 runs. The ETA is the mean time of the points run so far times the
    # points still to run.
    proc = mpirun(P, "sweep", cfg, "--out", out, timeout=120)
    if proc.returncode != 0:
        fail_with(proc, "sweep failed")
    assert not [line for line in proc.stdout.splitlines() if line.startswith("step ")], proc.stdout
    lines = result_lines(proc.stdout)
    assert list(lines) == [p["id"] for p in points], proc.stdout
    r0, r1, r2, r3 = (lines[p["id"]] for p in points)
    assert [int(m.group(1)) for m in (r0, r1, r2, r3)] == [1, 2, 3, 4]
    assert r0.group(4) == f"complete, skipped: val_loss {final_val_loss(run_file(out, points[0])):.5f}"
    assert r0.group(5, 6) == ("unknown", "2"), r0.group(0)
    vals = {}
    for p, m in ((points[1], r1), (points[3], r3)):
        done = re.fullmatch(rf"done: val_loss ([0-9.]+), ({DURATION})", m.group(4))
        assert done, m.group(0)
        loss = final_val_loss(run_file(out, p))
        assert np.isfinite(loss) and float(done.group(1)) > 0
        assert done.group(1) == f"{loss:.5f}", (m.group(0), loss)
        vals[p["id"]] = done.group(2)
    # One point ran, one is left: the ETA is that point's time.
    assert r1.group(5, 6) == (vals[points[1]["id"]], "1"), r1.group(0)
    assert r2.group(4).startswith("invalid, not run: --top-k (4) must not exceed --experts (2)"), r2.group(0)
    assert r2.group(5, 6) == (vals[points[1]["id"]], "1"), r2.group(0)
    assert r3.group(5) is None, r3.group(0)  # the last: nothing left
    assert "[sweep] 3/4 points complete, 1 invalid (not run)" in proc.stdout


def test_a_grid_of_only_invalid_points_fails(tmp_path, mpirun, moesim_direct):
    cfg = write_config(tmp_path, BASE.replace("top-k = 1\n", "") + "steps = 5\nexperts = 2\ntop-k = 3,4\n")
    out = tmp_path / "out"
    assert [p["status"] for p in list_points(moesim_direct, cfg, out)[2]] == ["invalid", "invalid"]
    proc = mpirun(P, "sweep", cfg, "--out", out, timeout=120)
    assert proc.returncode == 3, f"expected exit code 3:\n{proc.stdout}\n{proc.stderr}"
    assert "no point of the grid can run" in proc.stderr
    assert "running" not in proc.stdout
    assert read_summary(out)["status"] == ["invalid", "invalid"]


def test_a_key_no_point_can_take_is_one_error_up_front(tmp_path, mpirun):
    """An unknown key once made every point invalid (a run file each, exit 3): it is a bad
    config, refused with one error line and exit 2 before the directory exists."""
    cfg = write_config(tmp_path, BASE + "experts = 2,4\nbogus-key = 3\n")
    out = tmp_path / "out"
    proc = mpirun(P, "sweep", cfg, "--out", out, timeout=120)
    check_rejected(proc, ["every point of the grid is refused", "bogus-key"], "sweep")
    assert not out.exists()


def test_stack_points_with_impossible_options_are_invalid(tmp_path, mpirun, moesim_direct):
    # --folds 1 is refused by stack's option checks; the data file is only read by a run.
    data = tmp_path / "t.csv"
    synth = moesim_direct("synth", "--rows", 200, "--features", 4, "--informative", 2, "--classes", 2,
                          "--out", data, timeout=60)
    assert synth.returncode == 0, synth.stderr
    cfg = write_config(tmp_path, f"command = stack\ndata = {data}\ntarget = target\nlearners = nb\n"
                       "quiet = true\nfolds = 1,3\n")
    out = tmp_path / "out"
    points = list_points(moesim_direct, cfg, out)[2]
    assert [p["status"] for p in points] == ["invalid", "pending"]
    assert "--folds must be >= 2 (got 1)" in points[0]["reason"]
    proc = mpirun(P, "sweep", cfg, "--out", out, timeout=120)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert read_summary(out)["status"] == ["invalid", "complete"]
    # A stack point's result line shows its test score.
    m = result_lines(proc.stdout)[points[1]["id"]]
    done = re.fullmatch(rf"done: test_accuracy ([0-9.]+), {DURATION}", m.group(4))
    assert done, m.group(0)
    with h5py.File(run_file(out, points[1]), "r") as f:
        assert done.group(1) == f"{float(f['final'].attrs['test_accuracy']):.5f}"


def test_a_list_valued_option_is_swept_as_bracketed_values(tmp_path, mpirun, moesim_direct):
    """`learners = ridge,nb` is two points; `[ridge,nb], [ridge]` two points whose values are lists."""
    data = tmp_path / "t.csv"
    synth = moesim_direct("synth", "--rows", 200, "--features", 4, "--informative", 2, "--classes", 2,
                          "--out", data, timeout=60)
    assert synth.returncode == 0, synth.stderr
    cfg = write_config(tmp_path, f"command = stack\ndata = {data}\ntarget = target\nquiet = true\nfolds = 3\n"
                       "learners = [ridge, nb], [ridge], nb\n")
    out = tmp_path / "out"
    points = list_points(moesim_direct, cfg, out)[2]
    assert [p["swept"]["learners"] for p in points] == ["ridge,nb", "ridge", "nb"]
    proc = mpirun(P, "sweep", cfg, "--out", out, timeout=120)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    learners = []
    for p in sorted(out.glob("*.h5")):
        if p.name == "sweep.h5":
            continue
        with h5py.File(p, "r") as f:
            assert f.attrs["complete"] == 1
            learners.append(str(f["scores"].attrs["learners"]))  # the learners the run fitted
    assert sorted(learners) == ["nb", "ridge", "ridge,nb"], learners


# Three points; the middle one is long enough to be caught inside (a few seconds on a loaded
# 2-core machine, well under one when idle), the others are short.
LONG_STEPS = 200
LONG = BASE + f"experts = 2\nflush-every = 1\nseed = 1,2,3\nsteps = 20,{LONG_STEPS},20\nzip = seed,steps\n"


def test_resume_after_sigkill(tmp_path, sweep_job, mpirun, moesim_direct):
    cfg = write_config(tmp_path, LONG)
    out = tmp_path / "out"
    _, _, points = list_points(moesim_direct, cfg, out)
    s = sweep_job(cfg, out, "first")
    running = wait_inside_point(s, points, out, min_done=1)
    assert running == 1
    t_kill = time.time()
    signal_job(s.proc, signal.SIGKILL)
    assert s.wait_gone() != 0
    done, interrupted, later = points[:running], points[running], points[running + 1:]
    statuses = [p["status"] for p in list_points(moesim_direct, cfg, out)[2]]
    assert statuses == ["complete"] * running + ["incomplete"] + ["pending"] * len(later), statuses
    before = {p["id"]: (root_attrs(run_file(out, p))["start_time"], stat_key(run_file(out, p))) for p in done}
    rows_at_kill = steps_written(run_file(out, interrupted))
    assert 0 < rows_at_kill < LONG_STEPS

    r = mpirun(P, "sweep", cfg, "--out", out, timeout=120)
    if r.returncode != 0:
        fail_with(r, "resumed sweep failed")
    for p in done:
        assert f"{p['id']}: complete, skipped" in r.stdout
        assert f"{p['id']}: running" not in r.stdout
        # Not run again: same file, same start time.
        assert (root_attrs(run_file(out, p))["start_time"], stat_key(run_file(out, p))) == before[p["id"]]
    for p in [interrupted, *later]:
        assert f"{p['id']}: running" in r.stdout
    # The interrupted point was run again from scratch: one row per step, no leftovers of the
    # first attempt, and started after the kill.
    a = root_attrs(run_file(out, interrupted))
    assert a["complete"] == 1
    assert iso_seconds(a["start_time"]) >= int(t_kill)
    with h5py.File(run_file(out, interrupted), "r") as f:
        np.testing.assert_array_equal(f["metrics/step"][()], np.arange(1, LONG_STEPS + 1))
        assert f["final"].attrs["steps_done"] == LONG_STEPS
    assert all(root_attrs(run_file(out, p))["complete"] == 1 for p in points)
    assert read_summary(out)["status"] == ["complete"] * len(points)


def test_sigterm_stops_the_point_and_the_sweep(tmp_path, sweep_job, mpirun, moesim_direct):
    cfg = write_config(tmp_path, LONG)
    out = tmp_path / "out"
    _, _, points = list_points(moesim_direct, cfg, out)
    s = sweep_job(cfg, out, "term")
    running = wait_inside_point(s, points, out, min_done=1)
    assert running == 1
    rows_seen = steps_written(run_file(out, points[running]))
    ranks = signal_ranks(s.proc, signal.SIGTERM)
    assert len(ranks) == P, f"expected {P} ranks in the session, found {ranks}"
    t0 = time.monotonic()
    rc = s.wait_gone(timeout=60)
    out_text, err_text = s.output()
    assert rc == 143, f"expected exit code 143, got {rc}:\n{s.describe()}"
    assert time.monotonic() - t0 < 30

    # The current point stopped at a step boundary and is incomplete.
    cur = points[running]
    a = root_attrs(run_file(out, cur))
    assert a["complete"] == 0
    stopped = int(a["stopped_at_step"])
    assert rows_seen <= stopped < LONG_STEPS
    with h5py.File(run_file(out, cur), "r") as f:
        np.testing.assert_array_equal(f["metrics/step"][()], np.arange(1, stopped + 1))
    assert "stopped by signal" in err_text
    # No later point was started; earlier ones are untouched.
    for p in points[running + 1:]:
        assert not run_file(out, p).exists(), f"{p['id']} was started after SIGTERM"
        assert f"{p['id']}: running" not in out_text
    assert all(root_attrs(run_file(out, p))["complete"] == 1 for p in points[:running])
    # The summary was still rebuilt, and says so.
    s_ = read_summary(out)
    assert s_["status"] == (["complete"] * running + ["incomplete"] +
                            ["pending"] * (len(points) - running - 1))
    # The stop wrote the point's checkpoint; the next sweep continues the point from it.
    ckpt = out / "checkpoints" / f"{cur['id']}.h5"
    with h5py.File(ckpt, "r") as f:
        assert f.attrs["complete"] == 1 and f.attrs["step"] == stopped
    r = mpirun(P, "sweep", cfg, "--out", out, timeout=120)
    assert r.returncode == 0, r.stderr
    a = root_attrs(run_file(out, cur))
    assert a["complete"] == 1 and a["resumed_at_step"] == stopped
    with h5py.File(run_file(out, cur), "r") as f:
        np.testing.assert_array_equal(f["metrics/step"][()], np.arange(1, LONG_STEPS + 1))
        assert f["final"].attrs["steps_done"] == LONG_STEPS


def test_sigterm_after_the_last_step_starts_no_further_point(tmp_path, sweep_job, moesim_direct):
    """SIGTERM while a point is past its last step (here: in its long final validation) must not
    let the sweep start the next point: it exits 143 with the later points untouched."""
    cfg = write_config(tmp_path, BASE.replace("val-tokens = 256", "val-tokens = 60000") +
                       "experts = 2\nflush-every = 1\nsteps = 5\nseed = 1,2\n")
    out = tmp_path / "out"
    _, _, points = list_points(moesim_direct, cfg, out)
    s = sweep_job(cfg, out, "term_eval")
    first = run_file(out, points[0])
    deadline = time.monotonic() + 60
    while not (steps_written(first) == 5 and not is_complete(first)):
        if s.proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"never saw point 0 in its final validation:\n{s.describe()}")
        time.sleep(0.01)
    ranks = signal_ranks(s.proc, signal.SIGTERM)
    assert len(ranks) == P
    rc = s.wait_gone(timeout=60)
    assert rc == 143, f"expected exit code 143, got {rc}:\n{s.describe()}"
    out_text, _ = s.output()
    assert f"{points[1]['id']}: running" not in out_text, \
        f"the sweep started point 1 after SIGTERM:\n{s.describe()}"
    assert not run_file(out, points[1]).exists(), "point 1 has a run file although SIGTERM came first"

def test_binned_points_with_impossible_options_are_invalid(tmp_path, mpirun, moesim_direct):
    # moe --task binned has options of its own; --bins 1 can never run.
    cfg = write_config(tmp_path, "command = moe\ntask = binned\nrows = 600\nquiet = true\nbins = 1,3\n")
    out = tmp_path / "out"
    points = list_points(moesim_direct, cfg, out)[2]
    assert [p["status"] for p in points] == ["invalid", "pending"]
    assert "--bins must be in 2..100 (got 1)" in points[0]["reason"]
    proc = mpirun(P, "sweep", cfg, "--out", out, timeout=120)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert read_summary(out)["status"] == ["invalid", "complete"]
    # Its result line shows the calibrated test RMSE (no val_loss in a binned run file).
    m = result_lines(proc.stdout)[points[1]["id"]]
    done = re.fullmatch(rf"done: rmse_after_calibration ([0-9.]+), {DURATION}", m.group(4))
    assert done, m.group(0)
    with h5py.File(run_file(out, points[1]), "r") as f:
        assert done.group(1) == f"{float(f['final'].attrs['rmse_after_calibration']):.5f}"
