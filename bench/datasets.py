"""Writes data sets for `moesim stack` / `moesim blend` as CSV files (header row, a
`target` column last): scikit-learn's bundled real data sets (no download) and, on
request, a synthetic classification table made by `moesim synth` (or by numpy).

Output is deterministic: the same call writes byte-identical files.

usage: python3 bench/datasets.py OUTDIR [--datasets iris,wine,...] [--synthetic ROWSxFEATURES]
                                       [--moesim PATH] [--ranks N]

As a module:
    from datasets import write_real, write_synthetic, REAL
    paths = write_real(outdir)                  # {name: Path}
    p = write_synthetic(outdir, rows=200000, features=50, moesim=BIN)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

# name -> (scikit-learn loader name, problem)
REAL = {
    "iris": ("load_iris", "classification"),
    "wine": ("load_wine", "classification"),
    "breast_cancer": ("load_breast_cancer", "classification"),
    "digits": ("load_digits", "classification"),
    "diabetes": ("load_diabetes", "regression"),
}

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests" / "python"))
from moesim_testing import moesim_path, mpiexec_prefix  # noqa: E402  (the tests' way to find and launch moesim)


def load_real(name: str):
    """(X float64 n x p, y, feature names, problem) of one bundled data set."""
    import sklearn.datasets as skd

    loader, problem = REAL[name]
    bunch = getattr(skd, loader)()
    X = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target)
    y = y.astype(np.int64) if problem == "classification" else y.astype(np.float64)
    names = getattr(bunch, "feature_names", None)
    if names is None or len(names) != X.shape[1]:
        names = [f"x{j}" for j in range(X.shape[1])]
    # Column names must be plain CSV cells: no commas, quotes or spaces; unique; not 'target'.
    clean = []
    for j, n in enumerate(names):
        s = "".join(c if (c.isalnum() or c == "_") else "_" for c in str(n)).strip("_") or f"x{j}"
        if s == "target" or s in clean:
            s = f"{s}_{j}"
        clean.append(s)
    return X, y, clean, problem


def write_csv(path: Path, X: np.ndarray, y: np.ndarray, names: list[str], classification: bool) -> Path:
    """Header row, features with 17 significant digits (exact round trip), `target` last."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="\n") as f:
        f.write(",".join([*names, "target"]) + "\n")
        for i in range(X.shape[0]):
            cells = [repr(float(v)) for v in X[i]]
            cells.append(str(int(y[i])) if classification else repr(float(y[i])))
            f.write(",".join(cells) + "\n")
    return path


def write_real(outdir, names=None) -> dict[str, Path]:
    """Writes OUTDIR/<name>.csv for each bundled data set; returns {name: path}."""
    outdir = Path(outdir)
    out = {}
    for name in names or REAL:
        X, y, cols, problem = load_real(name)
        out[name] = write_csv(outdir / f"{name}.csv", X, y, cols, problem == "classification")
    return out


def write_synthetic(outdir, rows=200_000, features=50, informative=10, redundant=5, classes=2,
                    seed=1, moesim: str | None = None, ranks: int = 1, use_numpy: bool = False,
                    name: str | None = None, timeout: float = 600) -> Path:
    """A synthetic classification table. By default `moesim synth` writes it (rank-count
    independent: the same table on any number of ranks), as CSV, or as HDF5 (datasets X, y)
    when `name` ends in .h5; use_numpy=True makes a table with scikit-learn's
    make_classification instead (CSV, no binary needed)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / (name or f"synth_{rows}x{features}.csv")
    if use_numpy and path.suffix in (".h5", ".hdf5"):
        raise ValueError("use_numpy writes CSV only; moesim synth writes .h5")
    if use_numpy:
        from sklearn.datasets import make_classification

        X, y = make_classification(n_samples=rows, n_features=features, n_informative=informative,
                                   n_redundant=redundant, n_classes=classes, random_state=seed)
        return write_csv(path, X, y, [f"x{j}" for j in range(features)], True)
    cmd = [moesim or moesim_path(), "synth", "--rows", str(rows), "--features", str(features),
           "--informative", str(informative), "--redundant", str(redundant), "--classes", str(classes),
           "--seed", str(seed), "--out", str(path)]
    if ranks > 1:
        cmd = [*mpiexec_prefix(), "-np", str(ranks), *cmd]
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"moesim synth failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--datasets", default=",".join(REAL), help="comma-separated subset of " + ",".join(REAL))
    ap.add_argument("--synthetic", default="", help="also write a synthetic table, e.g. 200000x50")
    ap.add_argument("--informative", type=int, default=10)
    ap.add_argument("--redundant", type=int, default=5)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--numpy", action="store_true", help="synthetic table from numpy, not moesim synth")
    ap.add_argument("--synthetic-name", default=None, help="file name of the synthetic table (.csv or .h5)")
    ap.add_argument("--moesim", default=None, help="moesim binary (default: $MOESIM_BIN or build/default)")
    ap.add_argument("--ranks", type=int, default=1, help="ranks for moesim synth")
    args = ap.parse_args(argv)
    names = [n for n in args.datasets.split(",") if n]
    bad = [n for n in names if n not in REAL]
    if bad:
        ap.error(f"unknown data set(s) {bad}; known: {', '.join(REAL)}")
    for name, path in write_real(args.outdir, names).items():
        X, _, _, problem = load_real(name)
        print(f"{path}: {X.shape[0]} rows x {X.shape[1]} features ({problem})")
    if args.synthetic:
        rows, features = (int(v) for v in args.synthetic.lower().split("x"))
        path = write_synthetic(args.outdir, rows, features, args.informative, args.redundant, args.classes,
                               args.seed, args.moesim, args.ranks, args.numpy, args.synthetic_name)
        print(f"{path}: {rows} rows x {features} features (classification, synthetic)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
