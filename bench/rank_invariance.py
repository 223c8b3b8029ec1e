"""Measures how much a run's per-step losses depend on the rank count: runs one config on
1, 2 and 4 local ranks and prints the max relative difference of metrics/train_loss (and of
the validation loss) against 1 rank, with identical-or-not for token counts and for the
final checkpoint (every parameter and Adam moment, bit for bit).

usage: python3 bench/rank_invariance.py [--config experiments/default.ini] [--precision fp32]
           [--ranks 1,2,4] [-- MOESIM_MOE_OPTIONS...]
e.g. the issue-12 check: --ranks 1,2,4,8 -- --experts 8 --d-model 64 --d-ff 128
     --batch-tokens 2048 --steps 1000
"""
import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

import h5py
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "python"))
from moesim_testing import moesim_path, mpiexec_prefix  # noqa: E402


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(root / "experiments/default.ini"))
    ap.add_argument("--moesim", default=moesim_path())
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp64"])
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more `moesim moe` options")
    args = ap.parse_args()
    extra = [a for a in args.extra if a != "--"]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in [int(x) for x in args.ranks.split(",")]:
            out, ck = os.path.join(tmp, f"p{p}.h5"), os.path.join(tmp, f"ck{p}.h5")
            subprocess.run([*mpiexec_prefix(), "-np", str(p), args.moesim, "moe", "--config", args.config,
                            "--precision", args.precision, "--quiet", "--out", out, "--checkpoint", ck, *extra],
                           check=True, timeout=3600)
            with h5py.File(out, "r") as f:
                runs[p] = dict(loss=f["metrics/train_loss"][:], tokens=f["metrics/expert_tokens"][:],
                               drop=f["metrics/dropped_fraction"][:], val=f["final"].attrs["val_loss"],
                               bit_identical=int(f.attrs["bit_identical"]))
            model = {}
            with h5py.File(ck, "r") as f:
                f.visititems(lambda name, o: model.__setitem__(name, o[()])
                             if isinstance(o, h5py.Dataset) and name.split("/")[0] in ("replicated", "experts", "state")
                             else None)
            runs[p]["model"] = model
    base_p = min(runs)
    base = runs[base_p]
    print(f"precision {args.precision}, {len(base['loss'])} steps, reference {base_p} rank(s)")
    for p, r in sorted(runs.items()):
        if p == base_p:
            continue
        rel = np.max(np.abs(r["loss"] - base["loss"]) / np.abs(base["loss"]))
        vrel = abs(r["val"] - base["val"]) / abs(base["val"])
        same = np.array_equal(r["tokens"], base["tokens"]) and np.array_equal(r["drop"], base["drop"])
        dmax = float(np.max(np.abs(r["loss"] - base["loss"])))
        ck_same = set(r["model"]) == set(base["model"]) and all(
            np.array_equal(r["model"][k], base["model"][k]) for k in base["model"])
        print(f"P={p}: bit_identical={r['bit_identical']}, max |d train_loss| {dmax:.3e} (rel {rel:.3e}), "
              f"val_loss rel {vrel:.3e}, expert tokens and drops {'identical' if same else 'DIFFERENT'}, "
              f"checkpoint ({len(base['model'])} datasets) {'identical' if ck_same else 'DIFFERENT'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
