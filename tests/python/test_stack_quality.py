"""Each base learner of `moesim stack` against its scikit-learn equivalent on real data
(scikit-learn's bundled iris, wine, breast_cancer and diabetes; nothing downloads), on the
same folds (oof/fold -> PredefinedSplit over the rows in oof/row) and the same test rows
(the rows of --data that oof/row leaves out).

Noise bands (stated, not tuned per case):
  out-of-fold accuracy   within 0.03 absolute (119-455 scored rows)
  test accuracy          within max(0.03, 2 / test rows): at most two test rows apart on
                         iris / wine (31 and 36 test rows), 0.03 on breast_cancer
  out-of-fold RMSE       within 5 % relative (diabetes, 353 rows)
  test RMSE              within 10 % relative (89 rows: a quarter of the rows, twice the sd)
Deterministic learners must also reproduce scikit-learn's predictions row by row:
  logistic (same objective: multinomial, C * sum CE + ||W||^2 / 2, unpenalised intercept)
           probabilities within 1e-3 (scikit-learn's lbfgs stops at its own tolerance)
  knn      probabilities identical (1e-12); ties are broken the same way on these data
  nb       probabilities within 1e-8
  ridge    predictions within 1e-8 relative
The tree learners bin features into 64 histogram bins, so their reference is
scikit-learn's histogram model where one exists (gbdt: HistGradientBoosting with
max_bins=64; regression tree: a one-round HistGradientBoostingRegressor with learning
rate 1, i.e. one histogram tree fitted to the mean's residuals), else the exact-split
estimator (classification tree, forest).
Run with `pytest -s` for the side-by-side table.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from moesim_testing import bench_module, learner_block, load_run, run_stack, score_of

bench_datasets = bench_module("datasets")  # bench/datasets.py: scikit-learn's bundled data sets as CSV

pytest.importorskip("sklearn")
from sklearn.ensemble import (HistGradientBoostingClassifier, HistGradientBoostingRegressor,  # noqa: E402
                              RandomForestClassifier, RandomForestRegressor)
from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402
from sklearn.model_selection import PredefinedSplit, cross_val_predict  # noqa: E402
from sklearn.naive_bayes import GaussianNB  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.tree import DecisionTreeClassifier  # noqa: E402

NP = 2
FOLDS = 5
CLASSIFICATION = ["iris", "wine", "breast_cancer"]
REGRESSION = ["diabetes"]
CLS_LEARNERS = ["logistic", "knn", "tree", "forest", "gbdt", "nb"]
REG_LEARNERS = ["ridge", "knn", "tree", "forest", "gbdt"]
ACC_BAND, RMSE_BAND, RMSE_TEST_BAND = 0.03, 0.05, 0.10
PRED_TOL = {"logistic": 1e-3, "knn": 1e-12, "nb": 1e-8, "ridge": 1e-8}


def sklearn_equivalent(learner: str, classification: bool):
    """scikit-learn's model for a moesim learner with moesim's default hyper-parameters."""
    if classification:
        return {
            "logistic": make_pipeline(StandardScaler(), LogisticRegression(
                C=1.0, multi_class="multinomial", tol=1e-10, max_iter=10000)),
            "knn": make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=5)),
            "tree": DecisionTreeClassifier(max_depth=8, random_state=0),
            "forest": RandomForestClassifier(n_estimators=100, max_depth=12, max_features="sqrt",
                                             random_state=0, n_jobs=1),
            "gbdt": HistGradientBoostingClassifier(max_iter=100, max_depth=3, learning_rate=0.1,
                                                   early_stopping=False, max_bins=64, l2_regularization=1.0,
                                                   min_samples_leaf=1, random_state=0),
            "nb": GaussianNB(var_smoothing=1e-9),
        }[learner]
    return {
        "ridge": make_pipeline(StandardScaler(), Ridge(alpha=1.0)),
        "knn": make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=5)),
        "tree": HistGradientBoostingRegressor(max_iter=1, learning_rate=1.0, max_depth=8, max_leaf_nodes=None,
                                              min_samples_leaf=1, l2_regularization=0.0, max_bins=64,
                                              early_stopping=False),
        "forest": RandomForestRegressor(n_estimators=100, max_depth=12, max_features=1.0, random_state=0,
                                        n_jobs=1),
        "gbdt": HistGradientBoostingRegressor(max_iter=100, max_depth=3, learning_rate=0.1,
                                              early_stopping=False, max_bins=64, l2_regularization=1.0,
                                              min_samples_leaf=1, random_state=0),
    }[learner]


@pytest.fixture(scope="module", autouse=True)
def single_threaded_sklearn():
    """scikit-learn's OpenMP/BLAS pools spin badly on a busy 2-core machine: one thread."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    """One 2-rank stack run per data set with every learner (each learner's out-of-fold
    predictions and scores are its own; the meta-learner is not under test here)."""
    d = tmp_path_factory.mktemp("stack_quality")
    paths = bench_datasets.write_real(d, CLASSIFICATION + REGRESSION)
    out = {}
    for name, path in paths.items():
        cls = name in CLASSIFICATION
        _, run_path = run_stack(d, NP, path, problem="classification" if cls else "regression",
                                learners=",".join(CLS_LEARNERS if cls else REG_LEARNERS), folds=FOLDS,
                                meta="logistic" if cls else "ridge", test_fraction=0.2, seed=1, timeout=180)
        X, y, _, _ = bench_datasets.load_real(name)
        out[name] = (load_run(run_path), X, y)
    return out


CASES = [(d, l) for d in CLASSIFICATION for l in CLS_LEARNERS] + [(d, l) for d in REGRESSION for l in REG_LEARNERS]


@pytest.mark.parametrize("dataset,learner", CASES, ids=[f"{d}-{l}" for d, l in CASES])
def test_learner_matches_sklearn(stacked, dataset, learner):
    run, X, y = stacked[dataset]
    cls = dataset in CLASSIFICATION
    rows = run.row
    test = np.setdiff1d(np.arange(len(y)), rows)
    assert len(test) == run.final["test_rows"] and len(test) > 0
    Xtr, ytr = X[rows], y[rows]
    np.testing.assert_array_equal(run.target, ytr)
    cv = PredefinedSplit(run.fold[:, 0])
    assert cv.get_n_splits() == FOLDS
    P = learner_block(run, learner)
    if cls:
        sk_oof = cross_val_predict(sklearn_equivalent(learner, True), Xtr, ytr, cv=cv, method="predict_proba")
        sk_test = sklearn_equivalent(learner, True).fit(Xtr, ytr).predict(X[test])
        sk_oof_score = float(np.mean(np.argmax(sk_oof, axis=1) == ytr))
        sk_test_score = float(np.mean(sk_test == y[test]))
        m_oof, m_test = score_of(run, learner, "oof_accuracy"), score_of(run, learner, "test_accuracy")
        test_band = max(ACC_BAND, 2.0 / len(test))
        print(f"\n{dataset:13s} {learner:8s} oof accuracy moesim {m_oof:.4f} sklearn {sk_oof_score:.4f} "
              f"(d {m_oof - sk_oof_score:+.4f}) | test moesim {m_test:.4f} sklearn {sk_test_score:.4f} "
              f"(d {m_test - sk_test_score:+.4f}) | max |dP| {np.max(np.abs(P - sk_oof)):.1e}")
        assert abs(m_oof - sk_oof_score) <= ACC_BAND, (m_oof, sk_oof_score)
        assert abs(m_test - sk_test_score) <= test_band, (m_test, sk_test_score, test_band)
        assert m_oof > 0.8  # every learner is far above chance on these data sets
    else:
        sk_oof = cross_val_predict(sklearn_equivalent(learner, False), Xtr, ytr, cv=cv)[:, None]
        sk_test = sklearn_equivalent(learner, False).fit(Xtr, ytr).predict(X[test])
        sk_oof_score = math.sqrt(np.mean((sk_oof[:, 0] - ytr) ** 2))
        sk_test_score = math.sqrt(np.mean((sk_test - y[test]) ** 2))
        m_oof, m_test = score_of(run, learner, "oof_rmse"), score_of(run, learner, "test_rmse")
        print(f"\n{dataset:13s} {learner:8s} oof RMSE moesim {m_oof:.3f} sklearn {sk_oof_score:.3f} "
              f"({m_oof / sk_oof_score - 1:+.2%}) | test moesim {m_test:.3f} sklearn {sk_test_score:.3f} "
              f"({m_test / sk_test_score - 1:+.2%})")
        assert abs(m_oof / sk_oof_score - 1) <= RMSE_BAND, (m_oof, sk_oof_score)
        assert abs(m_test / sk_test_score - 1) <= RMSE_TEST_BAND, (m_test, sk_test_score)
        if learner != "tree":  # a depth-8 tree overfits 353 rows (scikit-learn's too: RMSE > sd)
            assert m_oof < 0.85 * np.std(ytr)  # R^2 > 0.28: clearly better than the mean
    if learner in PRED_TOL:
        scale = 1.0 if cls else float(np.max(np.abs(sk_oof)))
        diff = float(np.max(np.abs(P - sk_oof)))
        assert diff <= PRED_TOL[learner] * scale, \
            f"{learner} on {dataset}: out-of-fold predictions differ from scikit-learn's by {diff:.3e}"
