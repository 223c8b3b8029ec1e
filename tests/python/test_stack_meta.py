"""`moesim stack` options end to end on 2 ranks: the meta-learners (nnls, greedy, logistic,
ridge) and what their stored coefficients mean, --passthrough, --level2, --repeats,
--fold-column, --test-predictions average, --weight-column and HDF5 input.

Base learners here are deterministic (logistic, nb, knn), so several checks rebuild a run's
numbers from another run's stored predictions.
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from moesim_testing import blobs, learner_block, load_run, run_stack, score_of, write_csv

NP = 2
K = 4
LEARNERS = ["logistic", "nb", "knn"]
C = 3


def accuracy(P, y):
    return float(np.mean(np.argmax(P, axis=1) == y.astype(int)))


def softmax(S):
    E = np.exp(S - S.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def one_hot(y, c=C):
    return np.eye(c)[y.astype(int)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("stack_meta")
    X, y = blobs(500, 4, C, seed=21, sep=1.0, weights=[0.4, 0.35, 0.25])
    return d, write_csv(d / "train.csv", X, y), X, y


def stack(data_, **opts):
    d, path, _, _ = data_
    merged = dict(learners=",".join(LEARNERS), folds=K, meta="logistic", test_fraction=0.2, seed=6)
    merged.update(opts)
    _, out = run_stack(d, NP, merged.pop("data", path), **merged)
    return load_run(out)


@pytest.fixture(scope="module")
def base_run(data):
    return stack(data)


def test_nnls_weights_on_the_simplex_and_optimal(data):
    run = stack(data, meta="nnls")
    w = run.coef[:, 0]
    assert run.coef.shape == (len(LEARNERS), 1)
    assert run.meta_rows == LEARNERS and run.meta_cols == ["weight"]
    print(f"\nnnls weights {dict(zip(LEARNERS, np.round(w, 6)))}")
    assert np.all(w >= -1e-12), w
    assert abs(w.sum() - 1) <= 1e-9, w.sum()
    # KKT conditions of min ||sum_l w_l P_l - Y||^2 on the simplex: the gradient is equal
    # (= lambda) on the learners in use and >= lambda on the others.
    blocks = [learner_block(run, l) for l in LEARNERS]
    Y = one_hot(run.target)
    G = np.array([[np.sum(a * b) for b in blocks] for a in blocks])
    b = np.array([np.sum(a * Y) for a in blocks])
    g = (G @ w - b) / len(Y)
    used = w > 1e-6
    lam = g[used].mean()
    kkt = f"nnls weights {w} are not the simplex least-squares optimum: gradient {g} (KKT violated)"
    assert np.all(np.abs(g[used] - lam) <= 1e-6), kkt
    assert np.all(g[~used] >= lam - 1e-6), kkt
    blend = sum(wi * P for wi, P in zip(w, blocks))
    assert run.final["meta_train_score"] == pytest.approx(accuracy(blend, run.target), abs=1e-12)


def test_greedy_weights_are_selection_counts(data):
    iters = 7
    run = stack(data, meta="greedy", greedy_iterations=iters)
    w = run.coef[:, 0]
    assert run.coef.shape == (len(LEARNERS), 1) and run.meta_rows == LEARNERS
    counts = w * iters
    print(f"\ngreedy weights {dict(zip(LEARNERS, np.round(w, 6)))}")
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
    assert np.all(w >= 0) and abs(w.sum() - 1) <= 1e-12
    # The first pick is the learner with the best out-of-fold log loss on its own.
    best = min(LEARNERS, key=lambda l: score_of(run, l, "oof_log_loss"))
    assert w[LEARNERS.index(best)] >= 1 / iters
    blend = sum(wi * learner_block(run, l) for wi, l in zip(w, LEARNERS))
    assert run.final["meta_train_score"] == pytest.approx(accuracy(blend, run.target), abs=1e-12)


def test_linear_meta_learners_one_row_per_column_plus_intercept(data, base_run):
    n_cols = len(LEARNERS) * C
    assert base_run.coef.shape == (n_cols + 1, C)
    assert base_run.meta_rows == base_run.columns + ["intercept"]
    ridge = stack(data, meta="ridge")
    assert ridge.coef.shape == (n_cols + 1, C)
    assert ridge.meta_rows == ridge.columns + ["intercept"] and ridge.meta_cols == ["0", "1", "2"]
    # Ridge on one-hot targets: clipped to [0, 1] scores whose argmax is the prediction.
    S = ridge.pred @ ridge.coef[:-1] + ridge.coef[-1]
    assert ridge.final["meta_train_score"] == pytest.approx(accuracy(S, ridge.target), abs=1e-12)
    np.testing.assert_array_equal(ridge.pred, base_run.pred)  # the meta-learner does not touch level 1


def test_passthrough_adds_the_feature_columns(data, base_run):
    _, _, X, _ = data
    run = stack(data, passthrough=True)
    p = X.shape[1]
    assert run.attrs["passthrough"] == 1
    assert run.coef.shape == (len(LEARNERS) * C + p + 1, C)
    assert run.meta_rows == run.columns + [f"passthrough:x{j}" for j in range(p)] + ["intercept"]
    Z = np.hstack([run.pred, X[run.row]])
    S = Z @ run.coef[:-1] + run.coef[-1]
    assert run.final["meta_train_score"] == pytest.approx(accuracy(softmax(S), run.target), abs=1e-12)
    np.testing.assert_array_equal(run.pred, base_run.pred)


def test_level2_learners(data, base_run):
    run = stack(data, level2="logistic,nb")
    assert run.learners == LEARNERS + ["L2.logistic", "L2.nb"]
    assert run.scores.shape == (5, 6) and run.fold_scores.shape == (5, K)
    assert run.columns == [f"L2.{l}:{c}" for l in ("logistic", "nb") for c in ("0", "1", "2")]
    assert run.pred.shape == (len(run.row), 2 * C)
    assert run.meta_rows == run.columns + ["intercept"]
    # Level 1 is unchanged by a second level.
    for l in LEARNERS:
        assert score_of(run, l, "oof_accuracy") == score_of(base_run, l, "oof_accuracy")
    for l in ("L2.logistic", "L2.nb"):
        block = run.pred[:, [j for j, c in enumerate(run.columns) if c.startswith(l + ":")]]
        assert score_of(run, l, "oof_accuracy") == pytest.approx(accuracy(block, run.target), abs=1e-12)
        assert score_of(run, l, "oof_accuracy") > 0.6


def test_repeats_average_two_fold_assignments(data, tmp_path):
    """--repeats 2: two stratified fold columns; the out-of-fold predictions are the mean of the
    two single-assignment runs, rebuilt here with --fold-column from the stored folds."""
    d, path, X, y = data
    run = stack(data, repeats=2, test_fraction=0)
    n = len(y)
    assert run.fold.shape == (n, 2) and run.fold_scores.shape == (len(LEARNERS), K)
    for r in range(2):
        for c in range(C):
            counts = np.bincount(run.fold[run.target == c, r], minlength=K)
            assert counts.max() - counts.min() <= 1, (r, c, counts)
    assert np.mean(run.fold[:, 0] == run.fold[:, 1]) < 0.5, "the two repeats use the same folds"
    single = []
    for r in range(2):
        f = run.fold[:, r]
        p = write_csv(tmp_path / f"folds{r}.csv", X[run.row], y[run.row], extra={"f": f})
        one = stack(data, data=p, fold_column="f", test_fraction=0)
        np.testing.assert_array_equal(one.fold[:, 0], f)  # --fold-column: folds as given
        single.append(one.pred)
    diff = float(np.max(np.abs(run.pred - (single[0] + single[1]) / 2)))
    print(f"\n--repeats 2 vs mean of the two --fold-column runs: max |d| {diff:.2e}")
    assert diff <= 1e-12


def test_test_predictions_average(data, base_run):
    run = stack(data, test_predictions="average")
    assert run.attrs["test_predictions"] == "average"
    np.testing.assert_array_equal(run.pred, base_run.pred)   # out of fold: the same fold models
    np.testing.assert_array_equal(run.fold, base_run.fold)
    assert run.final["test_rows"] == base_run.final["test_rows"]
    col = run.score_columns.index("test_log_loss")
    d = np.abs(run.scores[:, col] - base_run.scores[:, col])
    print(f"\ntest log loss, average vs refit: {dict(zip(LEARNERS, np.round(d, 6)))}")
    assert np.max(d) > 1e-9, "averaged fold models give exactly the refit's test predictions"
    assert 0.6 < run.final["test_accuracy"] <= 1


def test_weight_column(data, base_run, tmp_path):
    """Weights all 1 change nothing; weights all 2 double the logistic loss against its fixed
    L2 penalty (different model) but leave nb and knn (scale-free in the weights) unchanged.
    Either way the weight column is not a feature."""
    d, path, X, y = data
    ones = write_csv(tmp_path / "w1.csv", X, y, extra={"w": np.ones(len(y))})
    twos = write_csv(tmp_path / "w2.csv", X, y, extra={"w": np.full(len(y), 2.0)})
    r1 = stack(data, data=ones, weight_column="w")
    r2 = stack(data, data=twos, weight_column="w")
    assert r1.attrs["weight_column"] == "w"
    assert r1.meta_rows == base_run.meta_rows
    np.testing.assert_allclose(r1.pred, base_run.pred, rtol=0, atol=1e-12)
    for l in ("nb", "knn"):
        np.testing.assert_allclose(learner_block(r2, l), learner_block(base_run, l), rtol=0, atol=1e-10)
    assert np.max(np.abs(learner_block(r2, "logistic") - learner_block(base_run, "logistic"))) > 1e-6


def test_hdf5_input_matches_csv(data, base_run, tmp_path):
    """The same table as HDF5 (datasets X, y) gives the same run as the CSV; --test as HDF5 too."""
    _, _, X, y = data
    h5 = tmp_path / "train.h5"
    with h5py.File(h5, "w") as f:
        f["X"] = X
        f["y"] = y.astype(np.float64)
    run = stack(data, data=h5, target=None)
    np.testing.assert_array_equal(run.row, base_run.row)
    np.testing.assert_array_equal(run.fold, base_run.fold)
    np.testing.assert_allclose(run.pred, base_run.pred, rtol=0, atol=1e-12)
    assert run.final["test_score"] == pytest.approx(base_run.final["test_score"], abs=1e-12)
    te = tmp_path / "test.h5"
    with h5py.File(te, "w") as f:
        f["X"] = X[:77]
        f["y"] = y[:77].astype(np.float64)
    r2 = stack(data, data=h5, target=None, test=te)
    assert r2.final["test_rows"] == 77 and r2.final["train_rows"] == len(y)
    np.testing.assert_array_equal(r2.row, np.arange(len(y)))


def test_hdf5_large_integer_labels_stay_distinct(data, tmp_path):
    """HDF5 class labels are integers in y of any size: 1000001 and 1000002 are two classes
    (a CSV keeps them apart as text; HDF5 labels must not be rounded to a few digits)."""
    _, _, X, y = data
    h5 = tmp_path / "big_labels.h5"
    labels = np.array([1000001.0, 1000002.0, 7.0])[y.astype(int)]
    with h5py.File(h5, "w") as f:
        f["X"] = X
        f["y"] = labels
    d, _, _, _ = data
    proc, out = run_stack(d, NP, h5, check=False, target=None, learners="nb", folds=K, meta="logistic",
                          test_fraction=0.2, seed=6)
    assert proc.returncode == 0, f"3 distinct labels rejected or merged:\n{proc.stderr}"
    run = load_run(out)
    assert sorted(run.meta_cols, key=float) == ["7", "1000001", "1000002"], run.meta_cols
    assert run.pred.shape[1] == 3
