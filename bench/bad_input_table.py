#!/usr/bin/env python3
"""The hostile-user table: bad options, data, configs and files on 1 and 4 ranks.

Each case runs the real binary under mpirun and records the exit status, the error line(s)
rank 0 printed, the seconds it took and, where the case is about a file, whether that file
survived unchanged. Prints one Markdown table. The tests assert each case; this script is
for reading all of them side by side.

  MOESIM_BIN=build/default/src/moesim python3 bench/bad_input_table.py [--ranks 1,4]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
from moesim_testing import moesim_path, mpiexec_prefix  # noqa: E402

BASE = {"--steps": "20", "--batch-tokens": "256", "--d-model": "16", "--d-ff": "32",
        "--experts": "4"}
TIMEOUT = 120


def moe(**changes) -> list[str]:
    """`moe` with the small base options, some replaced (`d_ff="64"` -> `--d-ff 64`)."""
    opts = dict(BASE)
    opts.update({"--" + k.replace("_", "-"): v for k, v in changes.items()})
    return ["moe", "--quiet"] + [w for kv in opts.items() for w in kv]


def run(np: int, args: list[str], cwd: Path) -> tuple[int, str, float]:
    env = dict(os.environ, OMPI_MCA_odls_base_sigkill_timeout="0", HDF5_USE_FILE_LOCKING="FALSE")
    t0 = time.monotonic()
    try:
        p = subprocess.run(mpiexec_prefix() + ["-np", str(np), moesim_path()] + args, cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=TIMEOUT)
        return p.returncode, p.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired:
        return -1, "HANG (timeout)", time.monotonic() - t0


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def file_facts(path: Path) -> str:
    """What a run that finished wrote: the numbers the issue found wrong."""
    import h5py  # only here: the table runs without h5py when no case finishes
    if not path.exists():
        return "no file"
    with h5py.File(path, "r") as f:
        a = dict(f.attrs)
        final = dict(f["final"].attrs) if "final" in f else {}
        facts = [f"complete={int(a.get('complete', 0))}"]
        if "metrics/dropped_fraction" in f:
            facts.append(f"max dropped_fraction={f['metrics/dropped_fraction'][:].max():g}")
        if "test_rows" in final:
            facts.append(f"test_rows={final['test_rows']}, test_score={final.get('test_score')}")
        if "steps" in a and "metrics/step" in f:
            facts.append(f"steps={a['steps']}, rows={f['metrics/step'].shape[0]}")
    return "; ".join(facts)


def first_error(stderr: str) -> str:
    lines = [l for l in stderr.splitlines() if "error:" in l or "warning:" in l]
    if not lines:
        lines = [l for l in stderr.splitlines() if l.strip()]
    line = lines[0] if lines else ""
    extra = f" (+{len(lines) - 1} more)" if len(lines) > 1 else ""
    return line.replace("|", "\\|")[:220] + extra


def prepare(work: Path) -> None:
    """Shared inputs: a complete run file with its checkpoint, a CSV, corrupt files."""
    def must(np, args):
        rc, err, _ = run(np, args, work)
        if rc != 0:
            sys.exit(f"bad_input_table: preparing {args} failed: {err}")
    ckpt = ["--checkpoint-every", "10"]
    must(1, moe() + ["--out", "good.h5", "--checkpoint", "good_ckpt.h5"] + ckpt)
    must(1, moe(d_ff="64") + ["--out", "other.h5", "--checkpoint", "other_ckpt.h5"] + ckpt)
    must(1, moe(steps="1000") + ["--out", "long.h5", "--checkpoint", "long_ckpt.h5",
                                 "--checkpoint-every", "1000"])
    data = (work / "good_ckpt.h5").read_bytes()
    (work / "trunc_ckpt.h5").write_bytes(data[: len(data) // 2])
    (work / "garbage.h5").write_bytes(os.urandom(4096))
    must(1, ["synth", "--rows", "600", "--features", "8", "--out", "good.csv"])
    (work / "binary.txt").write_bytes(bytes(range(256)) * 64)
    (work / "unknown_key.ini").write_text("command = moe\nexperts = 2,4\nbogus-key = 3\n")
    (work / "empty_value.ini").write_text("command = moe\nexperts = 2,\n")
    (work / "a.ini").write_text("command = moe\nexperts = 2,4\n")
    (work / "b.ini").write_text("command = moe\nexperts = 8\n")


def cases() -> list[tuple[str, str, list[str], str | None]]:
    """(issue point, description, arguments, file that must stay unchanged)."""
    return [
        ("6", "--capacity-factor 1e17", moe(capacity_factor="1e17") + ["--out", "x.h5"], None),
        ("6", "--experts 4294967300", ["moe", "--quiet", "--experts", "4294967300", "--out", "x.h5"], None),
        ("6", "stack --folds 1e11", ["stack", "--data", "good.csv", "--target", "target", "--folds", "1e11",
                                     "--out", "x.h5"], None),
        ("6", "--lr 1e30 --precision fp64 (divergence)", moe(lr="1e30", precision="fp64") + ["--out", "x.h5"], None),
        ("6", "stack --test-fraction 0", ["stack", "--data", "good.csv", "--target", "target",
                                          "--learners", "ridge", "--test-fraction", "0", "--out", "x.h5"], None),
        ("6", "synth --class-sep nan", ["synth", "--class-sep", "nan", "--out", "x.csv"], None),
        ("6", "checkpoint at step 1000 resumed with --steps 100",
         moe(steps="100") + ["--out", "long.h5", "--checkpoint",
                                                               "long_ckpt.h5", "--resume"], "long.h5"),
        ("7", "stray word: --experts 8 16", ["moe", "--quiet", "--experts", "8", "16", "--out", "x.h5"], None),
        ("7", "stray word: --learners ridge nb", ["stack", "--data", "good.csv", "--target", "target",
                                                  "--learners", "ridge", "nb", "--out", "x.h5"], None),
        ("7", "--config DIRECTORY", moe() + ["--config", ".", "--out", "x.h5"], None),
        ("7", "sweep with two config files", ["sweep", "a.ini", "b.ini", "--out", "sw"], None),
        ("7", "binary file as the LM corpus", moe() + ["--task", "lm", "--data", "binary.txt", "--out", "x.h5"], None),
        ("4", "--resume from a truncated checkpoint", moe() + ["--out", "good.h5", "--checkpoint",
                                                            "trunc_ckpt.h5", "--resume"], "good.h5"),
        ("4", "--resume from a random-bytes file", moe() + ["--out", "good.h5", "--checkpoint",
                                                         "garbage.h5", "--resume"], "good.h5"),
        ("4/5", "--resume from another run's checkpoint (--d-ff 64)",
         moe() + ["--out", "good.h5", "--checkpoint", "other_ckpt.h5", "--resume"], "good.h5"),
        ("5", "--resume with another --seed", moe(seed="7") + ["--out", "good.h5", "--checkpoint",
                                                    "good_ckpt.h5", "--resume"], "good.h5"),
        ("4", "merge --run on a random-bytes file", ["merge", "--run", "garbage.h5", "--experts", "2", "--out", "x.h5"], None),
        ("8", "unwritable --checkpoint", moe() + ["--checkpoint", "/proc/forbidden/c.h5", "--out", "x.h5"], None),
        ("8", "sweep: unknown key", ["sweep", "unknown_key.ini", "--out", "sw"], None),
        ("8", "sweep: empty value", ["sweep", "empty_value.ini", "--out", "sw"], None),
        ("8", "--experts 1000000", ["moe", "--quiet", "--experts", "1000000", "--out", "x.h5"], None),
        ("8", "--batch-tokens 100000000", ["moe", "--quiet", "--batch-tokens", "100000000", "--out", "x.h5"], None),
        ("8", "blend with an unknown learner", ["blend", "--data", "good.csv", "--target", "target",
                                                "--learners", "ridge,bogus", "--out", "x.h5"], None),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="1,4", help="comma-separated rank counts (default 1,4)")
    opts = ap.parse_args()
    ranks = [int(r) for r in opts.ranks.split(",")]
    if not Path(moesim_path()).exists():
        sys.exit(f"bad_input_table: no binary at {moesim_path()} (set MOESIM_BIN)")
    work = Path(tempfile.mkdtemp(prefix="moesim_bad_input_"))
    os.environ["MOESIM_BIN"] = str(Path(moesim_path()).resolve())
    try:
        prepare(work)
        print("| point | case | P | exit | s | file kept | rank 0's line |")
        print("|---|---|---|---|---|---|---|")
        for point, what, args, kept in cases():
            for np in ranks:
                before = digest(work / kept) if kept else None
                for leftover in ("x.h5", "x.csv"):
                    (work / leftover).unlink(missing_ok=True)
                shutil.rmtree(work / "sw", ignore_errors=True)
                rc, err, secs = run(np, args, work)
                same = "" if not kept else ("yes" if digest(work / kept) == before else "**no**")
                said = first_error(err) if rc != 0 else "(exit 0) " + file_facts(work / "x.h5")
                print(f"| {point} | {what} | {np} | {rc} | {secs:.1f} | {same} | {said} |",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
