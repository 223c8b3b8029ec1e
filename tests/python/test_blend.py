"""`moesim blend` end to end on 2 ranks: base learners on the train split, the meta-learner
on their validation predictions, its regularisation chosen on the hold-out split, scored
on the test split (or on --test FILE).

Rows are split by a per-row draw, so split sizes are binomial: the checks allow 4 standard
deviations.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from moesim_testing import blobs, learner_block, load_run, run_stack, score_of, write_csv

NP = 2
N = 3000
LEARNERS = ["logistic", "nb", "knn"]


def accuracy(P, y):
    return float(np.mean(np.argmax(P, axis=1) == y.astype(int)))


def softmax(S):
    E = np.exp(S - S.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def within_binomial(count, n, p, sigmas=4.0):
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("blend")
    X, y = blobs(N, 5, 3, seed=31, sep=1.0)
    return d, write_csv(d / "train.csv", X, y), X, y


def blend(data_, **opts):
    d, path, _, _ = data_
    merged = dict(learners=",".join(LEARNERS), meta="logistic", seed=2)
    merged.update(opts)
    _, out = run_stack(d, NP, merged.pop("data", path), command="blend", **merged)
    return load_run(out)


@pytest.mark.parametrize("fractions", [(0.5, 0.2, 0.1), (0.3, 0.3, 0.25)], ids=["50-20-10", "30-30-25"])
def test_fractions_honoured(data, fractions):
    _, _, X, y = data
    tr, va, ho = fractions
    run = blend(data, train_fraction=tr, val_fraction=va, holdout_fraction=ho)
    assert run.attrs["kind"] == "blend" and run.attrs["complete"] == 1
    assert (run.attrs["train_fraction"], run.attrs["val_fraction"], run.attrs["holdout_fraction"]) == fractions
    n_val = len(run.row)
    fin = run.final
    n_ho = N - fin["train_rows"] - n_val - fin["test_rows"]
    te = 1 - tr - va - ho
    print(f"\nfractions {fractions}: train {fin['train_rows']}, validation {n_val}, hold-out {n_ho}, "
          f"test {fin['test_rows']} of {N}")
    for name, count, p in [("train", fin["train_rows"], tr), ("validation", n_val, va),
                           ("hold-out", n_ho, ho), ("test", fin["test_rows"], te)]:
        assert within_binomial(count, N, p), f"{name}: {count} rows for a share of {p} of {N}"
    # oof/* holds the validation rows, the meta-learner's training rows.
    assert run.oof_attrs["rows_are"] == "validation"
    assert np.all(np.diff(run.row) > 0) and run.row.max() < N
    np.testing.assert_array_equal(run.target, y[run.row])
    assert np.all(run.fold == 1)
    assert run.pred.shape == (n_val, len(LEARNERS) * 3)
    for l in LEARNERS:
        assert score_of(run, l, "oof_accuracy") == pytest.approx(accuracy(learner_block(run, l), run.target),
                                                                 abs=1e-12)


def test_tuning_lists_candidates_and_picks_the_best(data):
    run = blend(data, train_fraction=0.5, val_fraction=0.2, holdout_fraction=0.1)
    assert run.tuning is not None, "meta/tuning missing"
    values, scores = run.tuning[:, 0], run.tuning[:, 1]
    print(f"\nlogistic meta C on the hold-out rows: {dict(zip(values, np.round(scores, 4)))}")
    np.testing.assert_array_equal(values, [0.01, 0.1, 1.0, 10.0, 100.0])
    assert np.all((scores > 0.5) & (scores <= 1))  # accuracy of a sensible blend on 3 classes
    chosen = run.final["meta_tuned_value"]
    assert chosen == values[int(np.argmax(scores))]  # first best
    # The stored coefficients are the chosen model's: they reproduce its validation score.
    S = run.pred @ run.coef[:-1] + run.coef[-1]
    assert run.final["meta_train_score"] == pytest.approx(accuracy(softmax(S), run.target), abs=1e-12)
    fin = run.final
    assert fin["metric"] == "accuracy" and fin["test_score"] == fin["test_accuracy"]
    assert 0.6 < fin["test_accuracy"] <= 1 and fin["test_log_loss"] > 0


def test_greedy_and_nnls_tuning_grids(data):
    g = blend(data, meta="greedy")
    np.testing.assert_array_equal(g.tuning[:, 0], [5, 10, 25, 50, 100])
    assert g.final["meta_tuned_value"] in (5, 10, 25, 50, 100)
    it = int(g.final["meta_tuned_value"])
    np.testing.assert_allclose(g.coef[:, 0] * it, np.round(g.coef[:, 0] * it), atol=1e-9)
    n = blend(data, meta="nnls")
    assert n.tuning.shape == (1, 2)  # nothing to tune
    assert abs(n.coef[:, 0].sum() - 1) <= 1e-9 and np.all(n.coef >= -1e-12)


def test_no_holdout_uses_the_given_value(data):
    run = blend(data, train_fraction=0.6, val_fraction=0.2, holdout_fraction=0, meta_c=3.5)
    assert run.tuning.shape == (1, 2)
    assert run.tuning[0, 0] == 3.5 and run.final["meta_tuned_value"] == 3.5
    assert within_binomial(run.final["test_rows"], N, 0.2)


def test_external_test_file(data, tmp_path):
    _, _, X, y = data
    Xt, yt = blobs(400, 5, 3, seed=31, sep=1.0)  # same centres (same seed), fresh noise rows
    te = write_csv(tmp_path / "test.csv", Xt[:250], yt[:250])
    run = blend(data, test=te, train_fraction=0.6, val_fraction=0.3, holdout_fraction=0.1)
    fin = run.final
    assert fin["test_rows"] == 250
    # Fractions summing to 1: every row of --data is train, validation or hold-out.
    n_ho = N - fin["train_rows"] - len(run.row)
    assert within_binomial(n_ho, N, 0.1), n_ho
    assert 0.6 < fin["test_accuracy"] <= 1


def test_regression_blend(tmp_path):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(2000, 4))
    y = 3 * X[:, 0] - 2 * X[:, 1] + X[:, 2] * X[:, 3] + 0.5 * rng.normal(size=2000)
    path = write_csv(tmp_path / "reg.csv", X, y, classification=False)
    _, out = run_stack(tmp_path, NP, path, command="blend", problem="regression", learners="ridge,knn",
                       meta="ridge")
    run = load_run(out)
    assert run.final["metric"] == "rmse" and run.final["test_score"] == run.final["test_rmse"]
    values, scores = run.tuning[:, 0], run.tuning[:, 1]
    np.testing.assert_array_equal(values, [0.01, 0.1, 1.0, 10.0, 100.0])
    assert run.final["meta_tuned_value"] == values[int(np.argmin(scores))]  # RMSE: lower is better
    meta = run.pred @ run.coef[:-1, 0] + run.coef[-1, 0]
    assert run.final["meta_train_score"] == pytest.approx(math.sqrt(np.mean((meta - run.target) ** 2)), rel=1e-9)
    # Noise sd 0.5, y's sd ~3.8: the blend of a linear model and KNN gets well under 1.5.
    assert run.final["test_rmse"] < 1.5 and run.final["test_r2"] > 0.85
