"""The hierarchical all-to-all on virtual nodes against the flat one, beside the cost model.

Runs `moesim moe` on P ranks as P/G virtual nodes (--ranks-per-node G) with --dispatch alltoallv
and hierarchical at several widths D and batch sizes B, then prints per run: messages that cross
nodes per exchange (logged, and the model's from the run's own routing), bytes per stage per
step, and the measured exchange transfer seconds per step (median over steps 2..S) beside the
cost model's prediction with the link fitted to these runs (`calibrate`: in sample, and held out:
the run left out of the fit). Interleaved so that machine load hits both algorithms alike.

usage: python3 bench/hierarchical.py [--ranks 4] [--ranks-per-node 2] [--steps 60]
                                     [--widths 64,256] [--batches 1024,4096] [--keep DIR]
"""
import argparse
import pathlib
import subprocess
import sys
import tempfile

import h5py
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))
sys.path.insert(0, str(ROOT))
from moesim_testing import moesim_path, mpiexec_prefix  # noqa: E402

from moesim_analysis import costmodel  # noqa: E402

ALGORITHMS = ("alltoallv", "hierarchical")


def run(P, G, algo, D, B, steps, out):
    cmd = mpiexec_prefix() + ["-np", str(P), moesim_path(), "moe", "--quiet", "--dispatch", algo,
                              "--ranks-per-node", str(G), "--experts", "8", "--top-k", "2", "--layers", "2",
                              "--d-model", str(D), "--d-ff", str(4 * D), "--batch-tokens", str(B),
                              "--steps", str(steps), "--val-tokens", "512", "--capacity-factor", "1.25",
                              "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--ranks-per-node", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--widths", default="64,256")
    ap.add_argument("--batches", default="1024,4096")
    ap.add_argument("--keep", help="keep the run files in this directory")
    a = ap.parse_args()
    P, G = a.ranks, a.ranks_per_node
    widths = [int(x) for x in a.widths.split(",")]
    batches = [int(x) for x in a.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        d = pathlib.Path(a.keep or tmp)
        d.mkdir(parents=True, exist_ok=True)
        files = {}
        for D in widths:
            for B in batches:
                for algo in ALGORITHMS:
                    out = d / f"{algo}_D{D}_B{B}.h5"
                    run(P, G, algo, D, B, a.steps, out)
                    files[(D, B, algo)] = out
        cal = costmodel.calibrate(list(files.values()))
        table = cal.table.set_index("file")
        print(f"# {P} ranks as {P // G} virtual nodes of {G}; E = 8, K = 2, 2 MoE layers, {a.steps} steps")
        print(f"# link fitted to these {len(files)} runs: alpha = {cal.alpha * 1e6:.3g} us, "
              f"beta = {cal.beta / 1e9:.3g} GB/s")
        print("| D | B | dispatch | messages across nodes per exchange (logged / model) | bytes per step: "
              "intra stage, inter stage | across nodes per step | measured s/step | predicted (fit) | "
              "predicted (held out) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for (D, B, algo), path in files.items():
            r = costmodel.RunRouting.from_file(path)
            chk = r.node_check()
            exchanges = 4 * r.moe_layers
            with h5py.File(path, "r") as f:
                stage = f["metrics/a2a_bytes_by_stage"][()].sum(axis=1) if "a2a_bytes_by_stage" in f["metrics"] else None
            row = table.loc[path.name]
            stages = (f"{np.median(stage[:, 0]):.4g}, {np.median(stage[:, 1]):.4g}" if stage is not None
                      else "- (one stage)")
            print(f"| {D} | {B} | {algo} | {np.median(chk['logged_inter_messages']) / exchanges:g} / "
                  f"{np.median(chk['model_inter_messages']) / exchanges:g} | {stages} | "
                  f"{np.median(chk['logged_inter_bytes']):.4g} | {row['measured_s']:.4g} | "
                  f"{row['predicted_s']:.4g} ({row['rel_error']:+.0%}) | "
                  f"{row['held_out_s']:.4g} ({row['held_out_rel_error']:+.0%}) |")
        print()
        print(cal.summary().to_string(index=False, float_format=lambda v: f"{v:.1%}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
