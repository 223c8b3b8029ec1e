"""`moesim stack` end to end on 2 ranks: the run-file contract (every dataset and attribute,
consistent shapes, scores recomputable from the stored predictions), the train/test split
and the folds (stratified balance, groups kept together), and leakage (a memorising
learner scores at chance out of fold on random labels).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from moesim_testing import (bench_module, blobs, learner_block, load_run, read_csv, run_stack, score_of,
                            write_csv)

bench_datasets = bench_module("datasets")  # bench/datasets.py: scikit-learn's bundled data sets as CSV

NP = 2
K = 5
CLASS_LEARNERS = ["logistic", "nb", "knn"]
CLASS_METRICS = ["oof_accuracy", "oof_log_loss", "test_accuracy", "test_log_loss", "fit_seconds",
                 "predict_seconds"]
REG_METRICS = ["oof_rmse", "oof_r2", "test_rmse", "test_r2", "fit_seconds", "predict_seconds"]


def accuracy(P, y):
    return float(np.mean(np.argmax(P, axis=1) == y.astype(int)))


def log_loss(P, y):
    p = P[np.arange(len(y)), y.astype(int)] / P.sum(axis=1)
    return float(-np.mean(np.log(np.clip(p, 1e-15, 1 - 1e-15))))


def softmax(S):
    S = S - S.max(axis=1, keepdims=True)
    E = np.exp(S)
    return E / E.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------ classification contract

@pytest.fixture(scope="module")
def cls_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("stack_cls")
    # Unequal classes, so that stratification is visible: 300 / 180 / 120 rows.
    X, y = blobs(600, 4, 3, seed=11, sep=1.2, weights=[0.5, 0.3, 0.2])
    path = write_csv(d / "train.csv", X, y)
    return d, path, X, y


@pytest.fixture(scope="module")
def cls_run(cls_data):
    d, path, X, y = cls_data
    _, out = run_stack(d, NP, path, learners=",".join(CLASS_LEARNERS), folds=K, meta="logistic",
                       test_fraction=0.25, seed=3)
    return load_run(out), out


def test_root_attributes_record_every_option(cls_data, cls_run):
    _, path, _, _ = cls_data
    run, out = cls_run
    a = run.attrs
    assert a["complete"] == 1
    assert a["kind"] == "stack"
    assert int(a["schema_version"]) >= 1
    expected = {
        "data": str(path), "target": "target", "problem": "classification",
        "learners": ",".join(CLASS_LEARNERS), "folds": K, "meta": "logistic", "passthrough": 0,
        "test": "", "test_fraction": 0.25, "seed": 3, "out": str(out), "repeats": 1, "level2": "",
        "group_column": "", "fold_column": "", "weight_column": "", "test_predictions": "refit",
        "knn_k": 5, "knn_weights": "uniform", "logistic_c": 1.0, "meta_c": 1.0, "forest_trees": 100,
        "gbdt_max_depth": 3, "max_bins": 64, "greedy_iterations": 50,
    }
    for key, value in expected.items():
        assert key in a, f"root attribute {key!r} missing; have {sorted(a)}"
        assert a[key] == value, f"root attribute {key!r} = {a[key]!r}, expected {value!r}"
    assert not any("-" in k for k in a), "option attributes must use underscores"


def test_datasets_and_shapes(cls_data, cls_run):
    _, _, X, y = cls_data
    run, _ = cls_run
    for key in ["oof/predictions", "oof/fold", "oof/row", "oof/target", "meta/coefficients",
                "scores/learner", "scores/fold"]:
        assert key in run.keys, f"{key} missing from the run file"
    assert "final" in run.keys
    n = len(run.row)
    L, C = len(CLASS_LEARNERS), 3
    assert run.pred.shape == (n, L * C)
    assert run.columns == [f"{l}:{c}" for l in CLASS_LEARNERS for c in ("0", "1", "2")]
    assert run.fold.shape == (n, 1)
    assert run.target.shape == (n,)
    assert run.oof_attrs["rows_are"] == "out-of-fold"
    assert run.scores.shape == (L, len(CLASS_METRICS))
    assert run.learners == CLASS_LEARNERS
    assert run.score_columns == CLASS_METRICS
    assert run.fold_scores.shape == (L, K)
    assert run.coef.shape == (L * C + 1, C)
    assert run.meta_rows == run.columns + ["intercept"]
    assert run.meta_cols == ["0", "1", "2"]
    # Every learner's block holds class probabilities.
    for l in CLASS_LEARNERS:
        P = learner_block(run, l)
        assert np.all(P >= -1e-12) and np.all(P <= 1 + 1e-12)
        np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-9)


def test_training_rows_are_the_non_test_rows(cls_data, cls_run):
    _, _, X, y = cls_data
    run, _ = cls_run
    N, n = len(y), len(run.row)
    assert np.all(np.diff(run.row) > 0), "oof/row must list distinct rows in global order"
    assert run.row.min() >= 0 and run.row.max() < N
    np.testing.assert_array_equal(run.target, y[run.row])
    fin = run.final
    assert fin["train_rows"] == n
    assert fin["test_rows"] == N - n
    # Bernoulli(0.25) per row: 150 +- 10.6 expected; 4 sigma.
    assert abs(fin["test_rows"] - 0.25 * N) <= 4 * math.sqrt(N * 0.25 * 0.75), fin["test_rows"]


def test_test_share_is_exactly_the_complement(cls_data, cls_run, tmp_path):
    """Writing the training rows and the other rows to two files and passing them as --data and
    --test must reproduce the split run bit for bit (same folds, predictions, test scores):
    so the run scored exactly the rows that oof/row leaves out."""
    _, _, X, y = cls_data
    run, _ = cls_run
    test_rows = np.setdiff1d(np.arange(len(y)), run.row)
    tr = write_csv(tmp_path / "tr.csv", X[run.row], y[run.row])
    te = write_csv(tmp_path / "te.csv", X[test_rows], y[test_rows])
    _, out = run_stack(tmp_path, NP, tr, test=te, learners=",".join(CLASS_LEARNERS), folds=K,
                       meta="logistic", seed=3)
    r2 = load_run(out)
    assert r2.attrs["test"] == str(te)
    np.testing.assert_array_equal(r2.row, np.arange(len(run.row)))
    np.testing.assert_array_equal(r2.fold, run.fold)
    np.testing.assert_allclose(r2.pred, run.pred, rtol=0, atol=1e-12)
    assert r2.final["test_rows"] == len(test_rows)
    for key in ["test_score", "test_accuracy", "test_log_loss", "meta_train_score"]:
        assert r2.final[key] == pytest.approx(run.final[key], abs=1e-12), key


def test_folds_are_stratified_and_balanced(cls_run):
    run, _ = cls_run
    f = run.fold[:, 0]
    assert f.min() >= 0 and f.max() <= K - 1
    assert len(np.unique(f)) == K
    for c in np.unique(run.target):
        counts = np.bincount(f[run.target == c], minlength=K)
        assert counts.max() - counts.min() <= 1, f"class {c}: rows per fold {counts}"
    sizes = np.bincount(f, minlength=K)
    assert sizes.max() - sizes.min() <= 3, sizes  # within 1 per class, 3 classes


def test_scores_match_stored_predictions(cls_run):
    run, _ = cls_run
    y, f = run.target, run.fold[:, 0]
    for l in CLASS_LEARNERS:
        P = learner_block(run, l)
        assert score_of(run, l, "oof_accuracy") == pytest.approx(accuracy(P, y), abs=1e-12), l
        assert score_of(run, l, "oof_log_loss") == pytest.approx(log_loss(P, y), rel=1e-9), l
        per_fold = [accuracy(P[f == k], y[f == k]) for k in range(K)]
        np.testing.assert_allclose(run.fold_scores[CLASS_LEARNERS.index(l)], per_fold, atol=1e-12)
        assert 0.5 < score_of(run, l, "test_accuracy") <= 1.0, l
        assert score_of(run, l, "test_log_loss") > 0
        assert score_of(run, l, "fit_seconds") >= 0 and score_of(run, l, "predict_seconds") >= 0


def test_meta_coefficients_reproduce_meta_train_score(cls_run):
    """The logistic meta-learner's stored (unstandardised) coefficients applied to the stored
    out-of-fold predictions give the reported meta_train_score."""
    run, _ = cls_run
    S = run.pred @ run.coef[:-1] + run.coef[-1]
    assert run.final["meta_train_score"] == pytest.approx(accuracy(softmax(S), run.target), abs=1e-12)


def test_final_attributes(cls_run):
    run, _ = cls_run
    fin = run.final
    for key in ["test_score", "metric", "test_accuracy", "test_log_loss", "meta_train_score", "train_rows",
                "test_rows", "seconds", "bytes_communicated", "comm_seconds"]:
        assert key in fin, f"final attribute {key!r} missing; have {sorted(fin)}"
    assert fin["metric"] == "accuracy"
    assert fin["test_score"] == fin["test_accuracy"]
    assert 0.6 < fin["test_accuracy"] <= 1.0  # separable blobs: far above the 0.5 majority share
    assert 0 < fin["test_log_loss"] < math.log(3)
    assert 0.6 < fin["meta_train_score"] <= 1.0
    assert fin["seconds"] > 0
    assert fin["bytes_communicated"] > 0  # 2 ranks: all-reduces and the KNN ring
    # comm_seconds is summed over ranks; each rank's share is bounded by its own elapsed time,
    # which may exceed rank 0's `seconds` by the launch skew (a rank that starts first waits
    # in its first collective): allow 2 s of skew per rank on a busy machine.
    assert 0 <= fin["comm_seconds"] <= NP * (fin["seconds"] + 2.0), (fin["comm_seconds"], fin["seconds"])


# ---------------------------------------------------------------------- regression contract

@pytest.fixture(scope="module")
def reg_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("stack_reg")
    path = bench_datasets.write_real(d, ["diabetes"])["diabetes"]
    X, y, _ = read_csv(path)
    _, out = run_stack(d, NP, path, problem="regression", learners="ridge,knn", folds=4, meta="ridge",
                       test_fraction=0.2, seed=5)
    return load_run(out), X, y


def test_regression_contract(reg_run):
    run, X, y = reg_run
    n, N = len(run.row), len(y)
    assert run.attrs["complete"] == 1 and run.attrs["problem"] == "regression"
    assert run.pred.shape == (n, 2) and run.columns == ["ridge", "knn"]
    np.testing.assert_allclose(run.target, y[run.row], rtol=0, atol=0)
    assert run.score_columns == REG_METRICS and run.scores.shape == (2, 6)
    assert run.fold_scores.shape == (2, 4)
    # Random folds: every block of K rows spread over the K folds.
    sizes = np.bincount(run.fold[:, 0], minlength=4)
    assert sizes.max() - sizes.min() <= 1, sizes
    for j, l in enumerate(["ridge", "knn"]):
        e = run.pred[:, j] - run.target
        rmse = math.sqrt(np.mean(e ** 2))
        assert score_of(run, l, "oof_rmse") == pytest.approx(rmse, rel=1e-10)
        r2 = 1 - np.sum(e ** 2) / np.sum((run.target - run.target.mean()) ** 2)
        assert score_of(run, l, "oof_r2") == pytest.approx(r2, rel=1e-9)
        per_fold = [math.sqrt(np.mean(e[run.fold[:, 0] == k] ** 2)) for k in range(4)]
        np.testing.assert_allclose(run.fold_scores[j], per_fold, rtol=1e-10)
    assert run.coef.shape == (3, 1)
    assert run.meta_rows == ["ridge", "knn", "intercept"] and run.meta_cols == ["coefficient"]
    meta = run.pred @ run.coef[:-1, 0] + run.coef[-1, 0]
    assert run.final["meta_train_score"] == pytest.approx(math.sqrt(np.mean((meta - run.target) ** 2)), rel=1e-9)
    fin = run.final
    assert fin["metric"] == "rmse" and fin["test_score"] == fin["test_rmse"]
    assert fin["train_rows"] == n and fin["test_rows"] == N - n
    # Diabetes: linear models reach R^2 ~ 0.45-0.5; the target's std is ~77.
    assert 0.3 < fin["test_r2"] < 0.7, fin["test_r2"]
    assert 40 < fin["test_rmse"] < 70, fin["test_rmse"]


# ------------------------------------------------------------------------------- leakage

@pytest.fixture(scope="module")
def random_labels(tmp_path_factory):
    """3000 rows of Gaussian noise with balanced random labels: nothing to learn."""
    d = tmp_path_factory.mktemp("stack_leak")
    rng = np.random.default_rng(2024)
    X = rng.normal(size=(3000, 5))
    y = rng.permutation(np.repeat([0, 1], 1500))
    return d, write_csv(d / "noise.csv", X, y), X, y


def test_memorising_learner_scores_at_chance_out_of_fold(random_labels):
    """1-NN memorises its training rows: scored on them (here: --test is the training file)
    it is perfect, scored out of fold it is at chance. An out-of-fold prediction that saw its
    own row would score 1.0 as well."""
    d, path, _, y = random_labels
    _, out = run_stack(d, NP, path, test=path, learners="knn", knn_k=1, folds=K, meta="logistic", seed=9)
    run = load_run(out)
    assert len(run.row) == len(y)
    oof = score_of(run, "knn", "oof_accuracy")
    own = score_of(run, "knn", "test_accuracy")
    print(f"\n1-NN on random labels: out-of-fold accuracy {oof:.4f}, on its own training rows {own:.4f}")
    # n = 3000: chance is 0.5 with sd 0.009; the band is > 5 sd.
    assert abs(oof - 0.5) <= 0.05, oof
    assert own == 1.0, own
    # Every fold on its own is at chance too.
    assert np.all(np.abs(run.fold_scores[0] - 0.5) <= 0.1), run.fold_scores[0]
    # The meta-learner on pure noise cannot do better than chance on its training rows.
    assert abs(run.final["meta_train_score"] - 0.5) <= 0.05


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """1500 distinct noise rows, each written twice in a row (same label, same group id)."""
    d = tmp_path_factory.mktemp("stack_groups")
    rng = np.random.default_rng(77)
    base = rng.normal(size=(1500, 5))
    labels = rng.permutation(np.repeat([0, 1], 750))
    X = np.repeat(base, 2, axis=0)
    y = np.repeat(labels, 2)
    g = np.repeat(np.arange(1500) * 7 + 3, 2)  # arbitrary integer ids
    with_groups = write_csv(d / "twins_groups.csv", X, y, extra={"g": g})
    plain = write_csv(d / "twins.csv", X, y)
    return d, with_groups, plain, g


def test_group_folds_keep_twins_together(twins):
    d, with_groups, _, g = twins
    _, out = run_stack(d, NP, with_groups, group_column="g", learners="knn", knn_k=1, folds=K,
                       meta="logistic", test_fraction=0, seed=4)
    run = load_run(out)
    assert run.attrs["group_column"] == "g"
    assert run.pred.shape[0] == len(g)          # test fraction 0: every row trains
    # The group column is not a feature: the meta-learner's rows name only knn's columns.
    assert run.meta_rows == ["knn:0", "knn:1", "intercept"]
    f = run.fold[:, 0]
    gr = g[run.row]
    # Every group in exactly one fold: as many distinct (group, fold) pairs as groups.
    pairs = np.unique(np.stack([gr, f], axis=1), axis=0)
    assert len(pairs) == len(np.unique(gr)), "a group straddles folds"
    assert len(np.unique(f)) == K
    oof = score_of(run, "knn", "oof_accuracy")
    print(f"\n1-NN on twins with --group-column: out-of-fold accuracy {oof:.4f}")
    # 1500 independent labels: sd 0.013; the band is ~4 sd.
    assert abs(oof - 0.5) <= 0.05, oof


def test_without_groups_a_twin_leaks_the_label(twins):
    """Control for the test above: without --group-column the twin lands in another fold almost
    always (adjacent rows of a class fall in one block of K, which spreads them over folds),
    and 1-NN copies its label: accuracy near 1.0, the leak the group folds prevent."""
    d, _, plain, _ = twins
    _, out = run_stack(d, NP, plain, learners="knn", knn_k=1, folds=K, meta="logistic", test_fraction=0,
                       seed=4)
    run = load_run(out)
    f = run.fold[:, 0]
    same_fold = np.mean(f[0::2] == f[1::2])
    oof = score_of(run, "knn", "oof_accuracy")
    print(f"\n1-NN on twins without groups: out-of-fold accuracy {oof:.4f}, twins sharing a fold {same_fold:.3f}")
    assert same_fold < 0.1
    assert oof >= 0.95, oof


def test_test_file_columns_are_matched_by_name(tmp_path):
    """A --test file's columns are matched to the training file's by name, so it may order them
    differently: with the feature columns in another order it runs and scores exactly as the
    same-order file. Read by position, the model would be scored on swapped features (accuracy
    near 0.5); refused, the run would exit 2."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 3))
    y = (X[:, 0] > 0).astype(int)
    names = ["a", "b", "c"]
    train = write_csv(tmp_path / "train.csv", X[:400], y[:400], names=names)
    same = write_csv(tmp_path / "test_same.csv", X[400:], y[400:], names=names)
    swapped = write_csv(tmp_path / "test_swapped.csv", X[400:][:, [1, 0, 2]], y[400:], names=["b", "a", "c"])
    _, ref = run_stack(tmp_path, NP, train, test=same, learners="logistic", folds=3, meta="logistic")
    _, out = run_stack(tmp_path, NP, train, test=swapped, learners="logistic", folds=3, meta="logistic")
    ref_final, got = load_run(ref).final, load_run(out).final
    assert ref_final["test_score"] > 0.9
    assert got["test_rows"] == ref_final["test_rows"] == 200
    for key in ("test_score", "test_log_loss"):
        assert got[key] == pytest.approx(ref_final[key], abs=1e-12), \
            f"test file with columns b,a,c: {key} {got[key]:.4f} (same order: {ref_final[key]:.4f}): read by position"
