"""moesim stack vs scikit-learn's StackingClassifier / StackingRegressor, side by side, on
the same folds and the same train/test rows.

For each data set: `mpirun -np N moesim stack` (learners logistic,knn,forest,gbdt,nb and a
logistic meta-learner; regression: ridge,knn,forest,gbdt and a ridge meta-learner), then
scikit-learn's stacking of the equivalent estimators with cv = PredefinedSplit(oof/fold)
over the training rows oof/row of the moesim run file, fitted on those rows and scored on
the rest of the data (the rows moesim's --test-fraction held out).

Equivalents (moesim defaults):
  logistic  StandardScaler + LogisticRegression(C=1, multinomial)   [moesim: softmax, C=1]
  ridge     StandardScaler + Ridge(alpha=1)
  knn       StandardScaler + KNeighbors(5)
  forest    RandomForest(n_estimators=100, max_depth=12, max_features sqrt (clf) / 1.0 (reg))
  gbdt      HistGradientBoosting(max_iter=100, max_depth=3, learning_rate=0.1, early_stopping=False)
  nb        GaussianNB()
  meta      StandardScaler + LogisticRegression(C=1, multinomial) / StandardScaler + Ridge(1)
            (moesim's meta-learners standardise their inputs too), stack_method='predict_proba',
            passthrough=False
Differences that remain: scikit-learn drops the first probability column of binary
problems before the meta-learner (moesim keeps all columns); moesim's trees use 64
histogram bins (scikit-learn's HistGradientBoosting 255, its forest exact splits);
moesim's forest bootstraps with Poisson(1) weights.

Cores: moesim runs N ranks with one BLAS thread each; scikit-learn gets N threads
(RandomForest/KNN n_jobs=N, OpenMP/BLAS pools limited to N with threadpoolctl, joblib's
threading backend, so no worker processes; the stacking itself fits its estimators one
after the other).
Timings: moesim = the whole mpirun command (start-up, reading the file, writing the run
file); scikit-learn = fit + predict on arrays already in memory. Wall clock and CPU
seconds (all threads / processes) are both reported; on a machine shared with other
work the CPU seconds are the steadier number. scikit-learn's OpenMP threads wait
passively (OMP_WAIT_POLICY=passive, set before it loads).

usage: python3 bench/stack_vs_sklearn.py [--ranks 2] [--datasets iris,wine,...] [--skip-large]
                                         [--folds 5] [--out-json FILE] [--moesim BIN]
Nothing downloads: the real data sets are scikit-learn's bundled ones, the large one is
written by `moesim synth`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
# Before scikit-learn loads libgomp: idle OpenMP threads sleep instead of spinning. With
# spinning, a machine with any other load slows HistGradientBoosting down 10-30x (a spinning
# thread waits for a descheduled one), which would measure the machine, not the library.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

SYNTH = "synth_200k"
SYNTH_SPEC = dict(rows=200_000, features=50, informative=10, redundant=5, classes=2)
ALL = ["iris", "wine", "breast_cancer", "digits", "diabetes", SYNTH]
CLS_LEARNERS = "logistic,knn,forest,gbdt,nb"
REG_LEARNERS = "ridge,knn,forest,gbdt"


def sklearn_stack(classification: bool, cv, n_jobs: int):
    from sklearn.ensemble import (HistGradientBoostingClassifier, HistGradientBoostingRegressor,
                                  RandomForestClassifier, RandomForestRegressor, StackingClassifier,
                                  StackingRegressor)
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if classification:
        est = [
            ("logistic", make_pipeline(StandardScaler(), LogisticRegression(C=1.0, multi_class="multinomial",
                                                                            max_iter=1000))),
            ("knn", make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=5, n_jobs=n_jobs))),
            ("forest", RandomForestClassifier(n_estimators=100, max_depth=12, max_features="sqrt",
                                              n_jobs=n_jobs, random_state=0)),
            ("gbdt", HistGradientBoostingClassifier(max_iter=100, max_depth=3, learning_rate=0.1,
                                                    early_stopping=False, random_state=0)),
            ("nb", GaussianNB()),
        ]
        final = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, multi_class="multinomial", max_iter=1000))
        return StackingClassifier(est, final_estimator=final, cv=cv, stack_method="predict_proba",
                                  passthrough=False)
    est = [
        ("ridge", make_pipeline(StandardScaler(), Ridge(alpha=1.0))),
        ("knn", make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=5, n_jobs=n_jobs))),
        ("forest", RandomForestRegressor(n_estimators=100, max_depth=12, max_features=1.0, n_jobs=n_jobs,
                                         random_state=0)),
        ("gbdt", HistGradientBoostingRegressor(max_iter=100, max_depth=3, learning_rate=0.1,
                                               early_stopping=False, random_state=0)),
    ]
    return StackingRegressor(est, final_estimator=make_pipeline(StandardScaler(), Ridge(alpha=1.0)), cv=cv,
                             passthrough=False)


def mpirun_prefix() -> list[str]:
    return datasets.mpirun_prefix()


def prepare(name: str, workdir: Path, moesim: str, ranks: int):
    """(path for moesim, X, y, problem)."""
    if name == SYNTH:
        import h5py
        path = workdir / "synth_200000x50.h5"
        if not path.exists():
            datasets.write_synthetic(workdir, **SYNTH_SPEC, seed=1, moesim=moesim, ranks=ranks, name=path.name)
        with h5py.File(path, "r") as f:
            X, y = f["X"][()], f["y"][()].astype(np.int64)
        return path, X, y, "classification"
    path = datasets.write_real(workdir, [name])[name]
    X, y, _, problem = datasets.load_real(name)
    return path, X, y, problem


def run_moesim(moesim, ranks, path, problem, folds, seed, test_fraction, out, timeout):
    cls = problem == "classification"
    cmd = [*mpirun_prefix(), "-np", str(ranks), moesim, "stack", "--data", str(path), "--problem", problem,
           "--learners", CLS_LEARNERS if cls else REG_LEARNERS, "--meta", "logistic" if cls else "ridge",
           "--folds", str(folds), "--test-fraction", str(test_fraction), "--seed", str(seed),
           "--blas-threads", "1", "--quiet", "--out", str(out)]
    if str(path).endswith(".csv"):
        cmd[cmd.index("--data") + 2:cmd.index("--data") + 2] = ["--target", "target"]
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)  # mpirun and every rank
    if proc.returncode != 0:
        raise RuntimeError(f"moesim failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return wall, cpu, cmd


def read_run(out):
    import h5py
    with h5py.File(out, "r") as f:
        assert f.attrs["complete"] == 1
        r = dict(row=f["oof/row"][()], fold=f["oof/fold"][:, 0], final=dict(f["final"].attrs),
                 learners=f["scores"].attrs["learners"], columns=f["scores"].attrs["learner_columns"],
                 scores=f["scores/learner"][()])
    for k in ("learners", "columns"):
        r[k] = (r[k].decode() if isinstance(r[k], bytes) else str(r[k])).split(",")
    return r


def compare(name, args, workdir: Path):
    path, X, y, problem = prepare(name, workdir, args.moesim, args.ranks)
    cls = problem == "classification"
    out = workdir / f"{name}_run.h5"
    m_wall, m_cpu, cmd = run_moesim(args.moesim, args.ranks, path, problem, args.folds, args.seed, args.test_fraction,
                             out, args.timeout)
    run = read_run(out)
    rows = run["row"]
    test = np.setdiff1d(np.arange(len(y)), rows)
    assert len(test) == int(run["final"]["test_rows"]), "test rows disagree with the run file"

    from sklearn.model_selection import PredefinedSplit
    from threadpoolctl import threadpool_limits
    model = sklearn_stack(cls, PredefinedSplit(run["fold"]), args.ranks)
    from joblib import parallel_backend
    # Threads only (no worker processes), so that process_time() sees all of scikit-learn's CPU.
    with threadpool_limits(limits=args.ranks), parallel_backend("threading"):
        t0, c0 = time.perf_counter(), time.process_time()
        model.fit(X[rows], y[rows])
        pred = model.predict(X[test])
        s_wall, s_cpu = time.perf_counter() - t0, time.process_time() - c0  # CPU: all threads
    if cls:
        s_score = float(np.mean(pred == y[test]))
    else:
        s_score = float(math.sqrt(np.mean((pred - y[test]) ** 2)))
    m_score = float(run["final"]["test_score"])
    per_learner = {l: float(run["scores"][i, 0]) for i, l in enumerate(run["learners"])}
    return dict(dataset=name, problem=problem, rows=int(X.shape[0]), features=int(X.shape[1]),
                train_rows=int(len(rows)), test_rows=int(len(test)),
                metric="accuracy" if cls else "rmse", moesim_score=m_score, sklearn_score=s_score,
                difference=m_score - s_score, moesim_seconds=m_wall, moesim_inner_seconds=float(run["final"]["seconds"]),
                sklearn_seconds=s_wall, speed_ratio=s_wall / m_wall, moesim_cpu_seconds=m_cpu,
                sklearn_cpu_seconds=s_cpu, moesim_oof_by_learner=per_learner,
                moesim_command=" ".join(map(str, cmd)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2, help="MPI ranks for moesim = threads for scikit-learn")
    ap.add_argument("--datasets", default=",".join(ALL), help="subset of " + ",".join(ALL))
    ap.add_argument("--skip-large", action="store_true", help=f"leave out {SYNTH}")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--moesim", default=datasets.default_moesim())
    ap.add_argument("--workdir", default=None, help="keep data and run files here (default: a temporary dir)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per moesim run")
    ap.add_argument("--out-json", default=None)
    args = ap.parse_args(argv)
    names = [n for n in args.datasets.split(",") if n]
    bad = [n for n in names if n not in ALL]
    if bad:
        ap.error(f"unknown data set(s) {bad}; known: {', '.join(ALL)}")
    if args.skip_large:
        names = [n for n in names if n != SYNTH]
    if not os.access(args.moesim, os.X_OK):
        ap.error(f"no moesim binary at {args.moesim} (build it, or pass --moesim / set MOESIM_BIN)")

    import sklearn
    print(f"moesim: {args.ranks} MPI ranks x 1 BLAS thread = {args.ranks} cores | scikit-learn {sklearn.__version__}: "
          f"{args.ranks} threads (RandomForest/KNN n_jobs={args.ranks}, OpenMP/BLAS limited to {args.ranks})")
    print(f"machine: {os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.1f} at start "
          f"({platform.processor() or platform.machine()})")
    print(f"{args.folds} folds (moesim's, given to scikit-learn as PredefinedSplit), test share {args.test_fraction} "
          f"(moesim's split), seed {args.seed}; score = test accuracy (classification) or test RMSE (regression)")
    hdr = (f"{'data set':14s} {'rows':>7s} {'feat':>4s} {'metric':>8s} {'moesim':>8s} {'sklearn':>8s} {'diff':>8s} "
           f"{'moesim s':>9s} {'sklearn s':>9s} {'speed-up':>8s} {'moesim cpu':>10s} {'sklearn cpu':>11s}")
    print(hdr)
    print("-" * len(hdr))
    results = []
    with tempfile.TemporaryDirectory(prefix="stack_vs_sklearn_") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in names:
            r = compare(name, args, workdir)
            results.append(r)
            print(f"{r['dataset']:14s} {r['rows']:7d} {r['features']:4d} {r['metric']:>8s} {r['moesim_score']:8.4f} "
                  f"{r['sklearn_score']:8.4f} {r['difference']:+8.4f} {r['moesim_seconds']:9.2f} "
                  f"{r['sklearn_seconds']:9.2f} {r['speed_ratio']:7.2f}x {r['moesim_cpu_seconds']:10.2f} "
                  f"{r['sklearn_cpu_seconds']:11.2f}", flush=True)
    print("diff = moesim - sklearn (accuracy: higher is better; rmse: lower is better); "
          "speed-up = sklearn seconds / moesim seconds, wall clock (> 1: moesim faster); "
          "cpu = CPU seconds over all processes/threads (moesim: mpirun + ranks)")
    print(f"load average at end {os.getloadavg()[0]:.1f} (other work on the machine inflates both timings)")
    if args.out_json:
        meta = dict(ranks=args.ranks, sklearn_threads=args.ranks, folds=args.folds, seed=args.seed,
                    test_fraction=args.test_fraction, cores_visible=os.cpu_count(), moesim=args.moesim)
        Path(args.out_json).write_text(json.dumps(dict(settings=meta, results=results), indent=2) + "\n")
        print(f"wrote {args.out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
