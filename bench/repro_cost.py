"""Cost of rank-count invariant training (--chunk-tokens C) against the layout-dependent
sums (--chunk-tokens 0), measured in the same session: for each shape, runs of both modes
alternate (so machine load hits both alike). Each run's step time is the 10th percentile of
its steps after the first 10 (the step without interference from other jobs on a shared
machine); the median over repeats is compared. Also the CPU seconds of the whole run (all
ranks, from getrusage; on a loaded machine the steadier measure, startup included).
Prints one line per (shape, P) with both ratios.

usage: python3 bench/repro_cost.py [--ranks 1,4] [--steps 300] [--repeats 3] [--chunk 64]
Shapes: the default job's (experiments/quick.sweep.ini: teacher task, D = 16..64, E = 1..32,
B = 512, switch routing, 2 layers) and D = 256. With the default --expert-chunks, an expert's
gradient has B / C / gcd(E, B / C) leaves: 8 at E = 1, one at E >= 8 (B / C = 8).
"""
import argparse
import os
import pathlib
import resource
import subprocess
import sys
import tempfile

import h5py
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "python"))
from moesim_testing import moesim_path, mpiexec_prefix  # noqa: E402

COMMON = ["--gate", "switch", "--top-k", "1", "--layers", "2", "--batch-tokens", "512", "--lr", "0.005",
          "--capacity-factor", "1.25", "--task", "teacher", "--teacher-experts", "64", "--teacher-hidden", "32",
          "--teacher-noise", "0", "--val-tokens", "512"]
SHAPES = {  # name: (D, F, E)
    "quick D=16 E=32": (16, 32, 32),
    "quick D=32 E=4": (32, 64, 4),
    "quick D=64 E=1": (64, 128, 1),
    "quick D=64 E=32": (64, 128, 32),
    "D=256 E=16": (256, 512, 16),
}


def step_seconds(moesim, p, shape, chunk, steps, out):
    d, f, e = shape
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([*mpiexec_prefix(), "-np", str(p), moesim, "moe", *COMMON, "--d-model", str(d), "--d-ff", str(f),
                    "--experts", str(e), "--steps", str(steps), "--chunk-tokens", str(chunk), "--quiet", "--out", out],
                   check=True, timeout=1800, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with h5py.File(out, "r") as h:
        assert int(h.attrs["bit_identical"]) == (1 if chunk else 0), h.attrs["bit_identical_reason"]
        return float(np.percentile(h["metrics/step_seconds"][10:], 10)), cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moesim", default=moesim_path())
    ap.add_argument("--ranks", default="1,4")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names of SHAPES")
    args = ap.parse_args()
    print(f"{'shape':<18} {'P':>2} {'C=0 ms/step':>12} {'C=' + str(args.chunk) + ' ms/step':>13} {'ratio':>6}"
          f" {'C=0 cpu s':>10} {'C=' + str(args.chunk) + ' cpu s':>11} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shapes.split(","):
            for p in [int(x) for x in args.ranks.split(",")]:
                t = {0: [], args.chunk: []}
                for _ in range(args.repeats):
                    for c in (0, args.chunk):
                        t[c].append(step_seconds(args.moesim, p, SHAPES[name], c, args.steps,
                                                        os.path.join(tmp, "r.h5")))
                base, inv = (np.median([x[0] for x in t[c]]) for c in (0, args.chunk))
                cbase, cinv = (np.median([x[1] for x in t[c]]) for c in (0, args.chunk))
                print(f"{name:<18} {p:>2} {1e3 * base:>12.3f} {1e3 * inv:>13.3f} {inv / base:>6.3f}"
                      f" {cbase:>10.2f} {cinv:>11.2f} {cinv / cbase:>6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
