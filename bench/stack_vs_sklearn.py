"""moesim stack vs scikit-learn's StackingClassifier / StackingRegressor, side by side, on
the same folds and the same train/test rows.

For each data set: `mpirun -np N moesim stack` (learners logistic,knn,forest,gbdt,nb and a
logistic meta-learner; regression: ridge,knn,forest,gbdt and a ridge meta-learner), then
scikit-learn's stacking of the equivalent estimators with cv = PredefinedSplit(oof/fold)
over the training rows oof/row of the moesim run file, fitted on those rows and scored on
the rest of the data (the rows moesim's --test-fraction held out).

Equivalents (moesim defaults; checked option by option against moesim's learners):
  logistic  StandardScaler + LogisticRegression(C=1, multinomial)   [moesim: softmax, C=1,
            L2 on the coefficients only, Newton steps]
  ridge     StandardScaler + Ridge(alpha=1)
  knn       StandardScaler + KNeighbors(n_neighbors=5, weights='uniform', brute force,
            Euclidean)                                   [moesim: --knn-k 5, exact distances]
  forest    RandomForest(n_estimators=100, max_depth=12, max_features sqrt (clf) / 1.0 (reg),
            min_samples_leaf=1, bootstrap)               [moesim: --forest-trees 100,
            --forest-max-depth 12, Poisson(1) bootstrap weights, 64 quantile bins]
  gbdt      HistGradientBoosting(max_iter=100, max_depth=3, learning_rate=0.1, max_bins=64,
            min_samples_leaf=1, l2_regularization=1, max_leaf_nodes=None, early_stopping=False)
            [moesim: --gbdt-trees 100, --gbdt-max-depth 3, --gbdt-learning-rate 0.1,
            64 quantile bins, --tree-min-samples-leaf 1, Newton leaves -G / (H + 1), one tree
            per class and round for > 2 classes, as scikit-learn]. Both count depth in edges
            from the root, so depth 3 is at most 8 leaves on both sides.
  nb        GaussianNB(var_smoothing=1e-9)
  meta      StandardScaler + LogisticRegression(C=1, multinomial) / StandardScaler + Ridge(1)
            (moesim's meta-learners standardise their inputs too), stack_method='predict_proba',
            passthrough=False
Differences that remain: scikit-learn drops the first probability column of binary
problems before the meta-learner (moesim keeps all columns); moesim's forest splits on 64
quantile bins (scikit-learn's forest has exact splits only) and bootstraps with Poisson(1)
weights instead of a multinomial draw; KNN ties break on the global row id in moesim.

scikit-learn modes (--sklearn-mode):
  stack        StackingClassifier / StackingRegressor with cv=PredefinedSplit(moesim's folds)
  per-learner  the same computation written out (for each learner: fit on all training rows,
               cross_val_predict over the same folds, predict the test rows; then the final
               estimator on the out-of-fold matrix, dropping the first column of binary
               problems as StackingClassifier does), so that each learner is timed on its own;
               on data sets under 5,000 rows the bench asserts that its test predictions equal
               StackingClassifier's.
  auto         (default) per-learner on the synthetic set, stack on the real ones.
--sklearn-cache FILE keeps scikit-learn's results (keyed by data set, mode, cores, folds and
test rows) so that moesim can be re-measured without re-running scikit-learn's hour on the
large set; a reused result is marked "cached" with the time and load average it was measured
at.

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
                                         [--sklearn-mode auto|stack|per-learner]
                                         [--sklearn-cache FILE] [--markdown]
Nothing downloads: the real data sets are scikit-learn's bundled ones, the large one is
written by `moesim synth`.
"""
from __future__ import annotations

import argparse
import hashlib
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
import datasets  # noqa: E402
from moesim_testing import attr_list, moesim_path, mpiexec_prefix  # noqa: E402

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


def sklearn_estimators(classification: bool, n_jobs: int):
    """(base estimators, final estimator) equivalent to moesim's defaults (see the top)."""
    from sklearn.ensemble import (HistGradientBoostingClassifier, HistGradientBoostingRegressor,
                                  RandomForestClassifier, RandomForestRegressor)
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    hgb = dict(max_iter=100, max_depth=3, learning_rate=0.1, max_bins=64, min_samples_leaf=1,
               l2_regularization=1.0, max_leaf_nodes=None, early_stopping=False, random_state=0)
    knn = dict(n_neighbors=5, weights="uniform", algorithm="brute", metric="euclidean", n_jobs=n_jobs)
    if classification:
        est = [
            ("logistic", make_pipeline(StandardScaler(), LogisticRegression(C=1.0, multi_class="multinomial",
                                                                            max_iter=1000))),
            ("knn", make_pipeline(StandardScaler(), KNeighborsClassifier(**knn))),
            ("forest", RandomForestClassifier(n_estimators=100, max_depth=12, max_features="sqrt",
                                              min_samples_leaf=1, n_jobs=n_jobs, random_state=0)),
            ("gbdt", HistGradientBoostingClassifier(**hgb)),
            ("nb", GaussianNB(var_smoothing=1e-9)),
        ]
        final = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, multi_class="multinomial", max_iter=1000))
        return est, final
    est = [
        ("ridge", make_pipeline(StandardScaler(), Ridge(alpha=1.0))),
        ("knn", make_pipeline(StandardScaler(), KNeighborsRegressor(**knn))),
        ("forest", RandomForestRegressor(n_estimators=100, max_depth=12, max_features=1.0, min_samples_leaf=1,
                                         n_jobs=n_jobs, random_state=0)),
        ("gbdt", HistGradientBoostingRegressor(**hgb)),
    ]
    return est, make_pipeline(StandardScaler(), Ridge(alpha=1.0))


def sklearn_stack(classification: bool, cv, n_jobs: int):
    from sklearn.ensemble import StackingClassifier, StackingRegressor

    est, final = sklearn_estimators(classification, n_jobs)
    if classification:
        return StackingClassifier(est, final_estimator=final, cv=cv, stack_method="predict_proba",
                                  passthrough=False)
    return StackingRegressor(est, final_estimator=final, cv=cv, passthrough=False)


def sklearn_per_learner(classification: bool, fold, Xtr, ytr, Xte, n_jobs: int):
    """StackingClassifier's / StackingRegressor's fit + predict written out, each learner
    timed: (test predictions, {learner: (wall s, cpu s)})."""
    from sklearn.base import clone
    from sklearn.model_selection import PredefinedSplit, cross_val_predict

    est, final = sklearn_estimators(classification, n_jobs)
    cv = PredefinedSplit(fold)
    method = "predict_proba" if classification else "predict"
    oof_cols, test_cols, times = [], [], {}
    for name, e in est:
        t0, c0 = time.perf_counter(), time.process_time()
        full = clone(e).fit(Xtr, ytr)
        oof = cross_val_predict(clone(e), Xtr, ytr, cv=cv, method=method)
        tp = getattr(full, method)(Xte)
        times[name] = (time.perf_counter() - t0, time.process_time() - c0)
        if classification and oof.shape[1] == 2:  # as StackingClassifier: drop the redundant column
            oof, tp = oof[:, 1:], tp[:, 1:]
        oof_cols.append(oof.reshape(len(Xtr), -1))
        test_cols.append(tp.reshape(len(Xte), -1))
    t0, c0 = time.perf_counter(), time.process_time()
    meta = clone(final).fit(np.hstack(oof_cols), ytr)
    pred = meta.predict(np.hstack(test_cols))
    times["meta"] = (time.perf_counter() - t0, time.process_time() - c0)
    return pred, times


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
    cmd = [*mpiexec_prefix(), "-np", str(ranks), moesim, "stack", "--data", str(path), "--problem", problem,
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
        r[k] = attr_list(r[k])
    return r


def load_cache(path):
    if not path or not Path(path).exists():
        return {}
    return json.loads(Path(path).read_text())


def run_sklearn(mode, cls, fold, Xtr, ytr, Xte, yte, cores):
    """scikit-learn's side on `cores` threads: dict(score, wall, cpu[, learners])."""
    from joblib import parallel_backend
    from sklearn.model_selection import PredefinedSplit
    from threadpoolctl import threadpool_limits

    def score(pred):
        if cls:
            return float(np.mean(pred == yte))
        return float(math.sqrt(np.mean((pred - yte) ** 2)))

    # Threads only (no worker processes), so that process_time() sees all of scikit-learn's CPU.
    with threadpool_limits(limits=cores), parallel_backend("threading"):
        t0, c0 = time.perf_counter(), time.process_time()
        if mode == "stack":
            model = sklearn_stack(cls, PredefinedSplit(fold), cores)
            model.fit(Xtr, ytr)
            pred = model.predict(Xte)
            times = None
        else:
            pred, times = sklearn_per_learner(cls, fold, Xtr, ytr, Xte, cores)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0  # CPU: all threads
        if mode == "per-learner" and len(Xtr) < 5000:
            ref = sklearn_stack(cls, PredefinedSplit(fold), cores).fit(Xtr, ytr).predict(Xte)
            assert np.allclose(ref, pred, rtol=1e-9, atol=1e-9), "per-learner stacking differs from StackingClassifier"
    out = dict(score=score(pred), wall=wall, cpu=cpu)
    if times is not None:
        out["learners"] = {k: dict(wall=v[0], cpu=v[1]) for k, v in times.items()}
    return out


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

    mode = args.sklearn_mode if args.sklearn_mode != "auto" else ("per-learner" if name == SYNTH else "stack")
    key = "|".join([name, mode, str(args.ranks), hashlib.sha1(run["fold"].tobytes()).hexdigest()[:16],
                    hashlib.sha1(np.ascontiguousarray(test).tobytes()).hexdigest()[:16]])
    cache = load_cache(args.sklearn_cache)
    sk = cache.get(key)
    if sk is None:
        sk = run_sklearn(mode, cls, run["fold"], X[rows], y[rows], X[test], y[test], args.ranks)
        sk.update(measured_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  load_average=os.getloadavg()[0])
        if args.sklearn_cache:
            cache = load_cache(args.sklearn_cache)
            cache[key] = sk
            Path(args.sklearn_cache).write_text(json.dumps(cache, indent=2) + "\n")
        sk["cached"] = False
    else:
        sk = dict(sk, cached=True)
    s_wall, s_cpu, s_score = sk["wall"], sk["cpu"], sk["score"]
    m_score = float(run["final"]["test_score"])
    per_learner = {l: float(run["scores"][i, 0]) for i, l in enumerate(run["learners"])}
    # scores/learner columns 4 and 5: fit and predict seconds over all folds and the refit
    m_learner_s = {l: float(run["scores"][i, 4] + run["scores"][i, 5]) for i, l in enumerate(run["learners"])}
    return dict(dataset=name, problem=problem, rows=int(X.shape[0]), features=int(X.shape[1]),
                train_rows=int(len(rows)), test_rows=int(len(test)),
                metric="accuracy" if cls else "rmse", moesim_score=m_score, sklearn_score=s_score,
                difference=m_score - s_score, moesim_seconds=m_wall, moesim_inner_seconds=float(run["final"]["seconds"]),
                sklearn_seconds=s_wall, speed_ratio=s_wall / m_wall, moesim_cpu_seconds=m_cpu,
                sklearn_cpu_seconds=s_cpu, moesim_oof_by_learner=per_learner,
                moesim_learner_seconds=m_learner_s, sklearn_mode=mode,
                sklearn_learner_seconds=sk.get("learners"), sklearn_cached=sk["cached"],
                sklearn_measured_at=sk["measured_at"], sklearn_load_average=sk["load_average"],
                moesim_command=" ".join(map(str, cmd)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2, help="MPI ranks for moesim = threads for scikit-learn")
    ap.add_argument("--datasets", default=",".join(ALL), help="subset of " + ",".join(ALL))
    ap.add_argument("--skip-large", action="store_true", help=f"leave out {SYNTH}")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--moesim", default=moesim_path())
    ap.add_argument("--workdir", default=None, help="keep data and run files here (default: a temporary dir)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per moesim run")
    ap.add_argument("--out-json", default=None)
    ap.add_argument("--sklearn-mode", default="auto", choices=["auto", "stack", "per-learner"])
    ap.add_argument("--sklearn-cache", default=None, help="JSON file of scikit-learn results to reuse / extend")
    ap.add_argument("--markdown", action="store_true", help="also print the table (and per-learner seconds) as markdown")
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
    for r in results:
        if r["sklearn_cached"]:
            print(f"{r['dataset']}: scikit-learn's figures are cached ({args.sklearn_cache}), measured "
                  f"{r['sklearn_measured_at']} at load average {r['sklearn_load_average']:.1f}")
        if r["sklearn_learner_seconds"]:
            sk = r["sklearn_learner_seconds"]
            parts = [f"{l} {r['moesim_learner_seconds'][l]:.1f} vs {sk[l]['wall']:.1f} s"
                     f" ({sk[l]['wall'] / max(r['moesim_learner_seconds'][l], 1e-9):.1f}x)"
                     for l in r["moesim_learner_seconds"] if l in sk]
            print(f"{r['dataset']} per learner, moesim vs scikit-learn wall (folds + refit + test): " + "; ".join(parts))
    if args.markdown:
        print()
        print("| data set | rows x features | metric | moesim | scikit-learn | diff | moesim s | scikit-learn s "
              "| speed-up |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in results:
            note = " (cached)" if r["sklearn_cached"] else ""
            print(f"| {r['dataset']} | {r['rows']} x {r['features']} | {r['metric']} | {r['moesim_score']:.4f} "
                  f"| {r['sklearn_score']:.4f} | {r['difference']:+.4f} | {r['moesim_seconds']:.2f} "
                  f"| {r['sklearn_seconds']:.2f}{note} | {r['speed_ratio']:.2f}x |")
    if args.out_json:
        meta = dict(ranks=args.ranks, sklearn_threads=args.ranks, folds=args.folds, seed=args.seed,
                    test_fraction=args.test_fraction, cores_visible=os.cpu_count(), moesim=args.moesim)
        Path(args.out_json).write_text(json.dumps(dict(settings=meta, results=results), indent=2) + "\n")
        print(f"wrote {args.out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
