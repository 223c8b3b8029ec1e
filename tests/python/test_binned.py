"""`moesim moe --task binned` (the supervised-gate mixture) end to end: real mpirun,
run files read back with h5py.

- the run file holds what docs/stacking.md promises, and its numbers agree with its own predictions;
- the isotonic map is monotone, matches scikit-learn's IsotonicRegression fitted on the same
  validation rows, never raises the validation RMSE and raises the test RMSE by no more than
  two standard errors of the paired squared-error difference;
- the gate's bin accuracy beats always answering the majority bin;
- 1, 2 and 4 ranks give the same run, bit for bit (exact sums over rows, issue 12);
- CSV and HDF5 tables, given edges, other learners, clipping, the config in experiments/;
- bad input: exit 2 and one error line on every rank, no complete run file.
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from moesim_testing import (QUICK_EXIT_ENV, REPO_ROOT, assert_no_complete_run_file, attr_value, attrs_of,
                            check_rejected, cli_args, run_mpi)

RANKS = (1, 2, 4)
# Small and fast: 3000 regimes rows, 20 boosting rounds.
BASE = dict(task="binned", rows=3000, bins=3, gbdt_trees=20, seed=7, quiet=True)


def run(directory, np_, name, check=True, timeout=180, **opts):
    merged = dict(BASE)
    merged.update(opts)
    out = directory / f"{name}_np{np_}.h5"
    merged.setdefault("out", out)
    proc = run_mpi(np_, "moe", *cli_args(merged), timeout=timeout, env=QUICK_EXIT_ENV)
    if check:
        assert proc.returncode == 0, (proc.args, proc.stdout, proc.stderr)
    return proc, merged["out"]


def load(path):
    with h5py.File(path, "r") as f:
        r = {"attrs": attrs_of(f), "final": attrs_of(f["final"])}
        for g in ("bins", "gate", "experts", "calibration", "predictions"):
            r[g] = {k: f[g][k][()] for k in f[g]}
            r[g + "_attrs"] = attrs_of(f[g])
        return r


@pytest.fixture(scope="module")
def regimes(tmp_path_factory):
    d = tmp_path_factory.mktemp("binned")
    return {p: load(run(d, p, "regimes")[1]) for p in RANKS}


def masks(r):
    split = r["predictions"]["split"]
    return split == 0, split == 1, split == 2


def rmse(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_run_file_layout_and_root_attributes(regimes):
    r = regimes[1]
    a = r["attrs"]
    assert a["complete"] == 1 and a["schema_version"] == 2 and a["kind"] == "binned"
    assert a["task"] == "binned" and a["gate_learner"] == "gbdt" and a["expert_learner"] == "gbdt"
    assert a["ranks"] == 1 and a["rows"] == 3000
    B = int(r["final"]["bins"])
    assert B == 3
    n = 3000
    p = r["predictions"]
    for k in ("row", "split", "bin", "target", "mixture", "hard", "calibrated", "baseline", "cluster"):
        assert p[k].shape == (n,), k
    assert p["gate"].shape == (n, B) and p["experts"].shape == (n, B)
    np.testing.assert_array_equal(p["row"], np.arange(n))
    assert r["gate"]["probability_histogram"].shape == (B, B, 20)
    assert r["experts"]["loss"].shape == (B, 5)
    assert r["experts_attrs"]["loss_columns"].split(",")[0] == "train_rows"
    assert set(r["final"]) >= {"rmse_before_calibration", "rmse_after_calibration", "rmse_hard_gate",
                               "rmse_oracle_gate", "rmse_single_model", "val_rmse_before_calibration",
                               "val_rmse_after_calibration", "gate_accuracy", "gate_chance_accuracy"}


def test_bins_predictions_and_scores_agree(regimes):
    r = regimes[1]
    p, f = r["predictions"], r["final"]
    train, val, test = masks(r)
    y = p["target"]
    edges = r["bins"]["edges"]
    # Quantile edges: order statistics floor(j N / B) of the training targets.
    yt = np.sort(y[train])
    B = len(edges) + 1
    np.testing.assert_array_equal(edges, [yt[j * len(yt) // B] for j in range(1, B)])
    np.testing.assert_array_equal(p["bin"], np.searchsorted(edges, y, side="right"))
    counts = np.array([[np.sum((p["split"] == sp) & (p["bin"] == k)) for k in range(B)] for sp in range(3)])
    np.testing.assert_array_equal(r["bins"]["rows"], counts)
    # The gate gives distributions; the mixture is sum_k p_k f_k; hard takes the argmax.
    np.testing.assert_allclose(p["gate"].sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(p["mixture"], (p["gate"] * p["experts"]).sum(axis=1), atol=1e-12)
    np.testing.assert_allclose(p["hard"], p["experts"][np.arange(len(y)), p["gate"].argmax(axis=1)], atol=0)
    for key, pred, m in [("rmse_before_calibration", p["mixture"], test), ("rmse_after_calibration", p["calibrated"], test),
                         ("rmse_hard_gate", p["hard"], test), ("rmse_single_model", p["baseline"], test),
                         ("val_rmse_before_calibration", p["mixture"], val),
                         ("val_rmse_after_calibration", p["calibrated"], val)]:
        assert f[key] == pytest.approx(rmse(pred[m], y[m]), rel=1e-10), key
    oracle = p["experts"][np.arange(len(y)), p["bin"]]
    assert f["rmse_oracle_gate"] == pytest.approx(rmse(oracle[test], y[test]), rel=1e-10)
    assert f["gate_accuracy"] == pytest.approx(np.mean(p["gate"][test].argmax(axis=1) == p["bin"][test]), rel=1e-12)
    assert (f["train_rows"], f["val_rows"], f["test_rows"]) == tuple(int(m.sum()) for m in (train, val, test))


def test_gate_beats_chance_and_diagnostics_add_up(regimes):
    r = regimes[1]
    p, f, g = r["predictions"], r["final"], r["gate"]
    _, _, test = masks(r)
    B = int(f["bins"])
    majority = np.bincount(p["bin"][p["split"] == 0], minlength=B).argmax()
    assert f["gate_chance_accuracy"] == pytest.approx(np.mean(p["bin"][test] == majority), rel=1e-12)
    # Three quantile bins: chance is about 1/3; the regimes' inputs predict the bin well.
    assert f["gate_accuracy"] > f["gate_chance_accuracy"] + 0.2, f
    per_bin = np.bincount(p["bin"][test], minlength=B)
    np.testing.assert_array_equal(g["confusion"].sum(axis=1), per_bin)
    np.testing.assert_array_equal(g["probability_histogram"].sum(axis=2), np.repeat(per_bin[:, None], B, axis=1))
    np.testing.assert_allclose(g["mean_probability"].sum(axis=1), 1.0, atol=1e-12)
    # Histogram of p_j over the test rows of true bin k, buckets of width 1/H.
    H = g["probability_histogram"].shape[2]
    for k in range(B):
        for j in range(B):
            pj = p["gate"][test & (p["bin"] == k), j]
            want = np.bincount(np.clip(np.floor(pj * H).astype(int), 0, H - 1), minlength=H)
            np.testing.assert_array_equal(g["probability_histogram"][k, j], want)
    # Each expert is a specialist: better on its own bin's test rows than on all of them.
    loss = r["experts"]["loss"]
    np.testing.assert_array_equal(loss[:, 0], r["bins"]["rows"][0])
    assert np.all(loss[:, 2] < loss[:, 3]), loss
    np.testing.assert_allclose(np.diag(r["experts"]["rmse_by_bin"]), loss[:, 2], rtol=1e-12)


def test_calibration_monotone_matches_sklearn_and_does_not_hurt(regimes):
    from sklearn.isotonic import IsotonicRegression

    r = regimes[1]
    p, c = r["predictions"], r["calibration"]
    _, val, test = masks(r)
    assert np.all(np.diff(c["x"]) > 0) and np.all(np.diff(c["y"]) >= 0)
    order = np.argsort(p["mixture"], kind="stable")
    assert np.all(np.diff(p["calibrated"][order]) >= 0), "calibrated predictions are not monotone in the mixture"
    iso = IsotonicRegression(out_of_bounds="clip").fit(p["mixture"][val], p["target"][val])
    np.testing.assert_allclose(p["calibrated"], iso.predict(p["mixture"]), atol=1e-9)
    np.testing.assert_allclose(np.interp(p["mixture"], c["x"], c["y"]), p["calibrated"], atol=1e-12)
    f = r["final"]
    # Fitted on the validation rows: the least-squares monotone fit cannot be worse there.
    assert f["val_rmse_after_calibration"] <= f["val_rmse_before_calibration"] + 1e-12
    # Held-out test rows: no worse than noise (two standard errors of the paired difference).
    y = p["target"][test]
    d = (p["calibrated"][test] - y) ** 2 - (p["mixture"][test] - y) ** 2
    assert d.mean() <= 2 * d.std(ddof=1) / np.sqrt(len(d)), (f["rmse_before_calibration"], f["rmse_after_calibration"])


def test_rank_invariance(regimes):
    ref = regimes[1]
    for P in RANKS[1:]:
        r = regimes[P]
        assert r["attrs"]["ranks"] == P
        for k in ("row", "split", "bin", "cluster"):
            np.testing.assert_array_equal(r["predictions"][k], ref["predictions"][k], err_msg=f"{k}, {P} ranks")
        np.testing.assert_array_equal(r["bins"]["edges"], ref["bins"]["edges"])
        np.testing.assert_array_equal(r["bins"]["rows"], ref["bins"]["rows"])
        for k in ("target", "gate", "experts", "mixture", "hard", "calibrated", "baseline"):
            np.testing.assert_array_equal(r["predictions"][k], ref["predictions"][k],
                                          err_msg=f"predictions/{k}, {P} ranks")
        np.testing.assert_array_equal(r["gate"]["confusion"], ref["gate"]["confusion"])
        np.testing.assert_array_equal(r["gate"]["probability_histogram"], ref["gate"]["probability_histogram"])
        np.testing.assert_array_equal(r["experts"]["loss"], ref["experts"]["loss"])
        np.testing.assert_array_equal(r["calibration"]["y"], ref["calibration"]["y"])
        for k, v in ref["final"].items():
            if k.endswith("seconds") or k == "bytes_communicated":
                continue
            assert r["final"][k] == v or (np.isnan(v) and np.isnan(r["final"][k])), (k, P, r["final"][k], v)


def seed001_table(n=1500, seed=3):
    """Scores in [0, 10] in low / medium / high bands, each with its own noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    band = np.digitize(X[:, 0], [-0.5, 0.6])
    centre = np.array([2.0, 6.0, 9.0])[band]
    noise = np.array([0.3, 1.0, 0.2])[band]
    y = np.clip(centre + 0.8 * np.tanh(X[:, 1]) + noise * rng.normal(size=n), 0, 10)
    return X, y


def write_csv(path, X, y):
    with open(path, "w") as f:
        f.write(",".join([f"x{j}" for j in range(X.shape[1])] + ["score"]) + "\n")
        for i in range(len(y)):
            f.write(",".join(repr(float(v)) for v in X[i]) + f",{float(y[i])!r}\n")
    return path


def test_csv_and_hdf5_tables_given_edges_other_learners_and_clipping(tmp_path):
    X, y = seed001_table()
    csv = write_csv(tmp_path / "scores.csv", X, y)
    h5 = tmp_path / "scores.h5"
    with h5py.File(h5, "w") as f:
        f["X"] = X
        f["y"] = y
    opts = dict(bin_edges="4,8", gate_learner="logistic", expert_learner="ridge", clip_min=0, clip_max=10, rows=None)
    _, a = run(tmp_path, 2, "csv", data=csv, target="score", **opts)
    _, b = run(tmp_path, 4, "h5", data=h5, **opts)
    ra, rb = load(a), load(b)
    np.testing.assert_array_equal(ra["bins"]["edges"], [4.0, 8.0])
    assert ra["bins_attrs"]["mode"] == "given"
    assert ra["attrs"]["gate_learner"] == "logistic" and ra["attrs"]["expert_learner"] == "ridge"
    np.testing.assert_array_equal(ra["predictions"]["bin"], np.digitize(y, [4, 8]))
    np.testing.assert_allclose(ra["predictions"]["target"], y, rtol=0, atol=0)
    cal = ra["predictions"]["calibrated"]
    assert cal.min() >= 0 and cal.max() <= 10
    assert "cluster" not in ra["predictions"]
    # The same rows from either reader, on different rank counts: the same run.
    for k in ("mixture", "calibrated", "gate"):
        np.testing.assert_array_equal(rb["predictions"][k], ra["predictions"][k])
    assert ra["final"]["gate_accuracy"] > ra["final"]["gate_chance_accuracy"] + 0.2


def test_balanced_gate_class_weight(tmp_path):
    """N / (B N_k) weights pull the gate's mean probabilities towards 1/B on a small bin."""
    X, y = seed001_table(1500)
    csv = write_csv(tmp_path / "scores.csv", X, y)
    opts = dict(data=csv, target="score", rows=None, bin_edges="4,9", gate_learner="logistic", expert_learner="ridge")
    mass = {}
    for cw in ("none", "balanced"):
        r = load(run(tmp_path, 2, f"cw_{cw}", gate_class_weight=cw, **opts)[1])
        assert r["attrs"]["gate_class_weight"] == cw
        train = r["predictions"]["split"] == 0
        mass[cw] = r["predictions"]["gate"][train].mean(axis=0)
        counts = r["bins"]["rows"][0]
    share = counts / counts.sum()
    assert share.min() < 0.2, share  # a small bin, or the test shows nothing
    k = share.argmin()
    # Unweighted, the gate's mass follows the bin shares; balanced, the small bin gains.
    assert mass["balanced"][k] > mass["none"][k] + 0.05, mass
    assert np.abs(mass["balanced"] - 1 / 3).max() < np.abs(mass["none"] - 1 / 3).max(), mass


def test_experiment_config_runs(tmp_path):
    """experiments/binned.ini selects the binned task from the file alone."""
    ini = REPO_ROOT / "experiments" / "binned.ini"
    assert "supervised-gate mixture" in ini.read_text().lower()
    out = tmp_path / "cfg.h5"
    proc = run_mpi(2, "moe", "--config", ini, "--rows", 1200, "--gbdt-trees", 5, "--quiet", "--out", out,
                   timeout=180, env=QUICK_EXIT_ENV)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out, "r") as f:
        assert f.attrs["complete"] == 1 and attr_value(f.attrs["kind"]) == "binned" and attr_value(f.attrs["task"]) == "binned"
        assert f.attrs["rows"] == 1200


BAD = [
    ("unknown-gate-learner", dict(gate_learner="bogus"), ["'bogus'", "known"]),
    ("classifier-as-expert", dict(expert_learner="logistic"), ["--expert-learner", "logistic"]),
    ("edges-not-increasing", dict(bin_edges="0.5,0.1"), ["--bin-edges", "strictly increasing"]),
    ("edges-equal", dict(bin_edges="1,1"), ["strictly increasing"]),
    ("edge-not-a-number", dict(bin_edges="1,abc"), ["--bin-edges", "'abc'"]),
    ("empty-bin", dict(bin_edges="100,200"), ["bin 1", "no training rows"]),
    ("target-missing", dict(data="@csv", target="nosuch", rows=None), ["'nosuch'"]),
    ("target-absent", dict(data="@csv", target=None, rows=None), ["--target"]),
    ("data-missing", dict(data="@missing", target="score", rows=None), ["does_not_exist.csv"]),
    ("clip-range", dict(clip_min=5, clip_max=1), ["--clip-min", "--clip-max"]),
    ("moe-only-option", dict(experts=4), ["experts"]),
    ("one-bin", dict(bins=1), ["--bins"]),
    ("class-weight", dict(gate_class_weight="auto"), ["--gate-class-weight", "'auto'"]),
]


@pytest.mark.parametrize("overrides,mention", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_two_ranks(tmp_path, overrides, mention):
    X, y = seed001_table(200)
    files = {"csv": write_csv(tmp_path / "t.csv", X, y), "missing": tmp_path / "does_not_exist.csv"}
    opts = dict(BASE, rows=400, gbdt_trees=3)
    opts.update(overrides)
    for k, v in list(opts.items()):
        if isinstance(v, str) and v.startswith("@"):
            opts[k] = files[v[1:]]
    out = tmp_path / "bad.h5"
    opts["out"] = out
    proc = run_mpi(2, "moe", *cli_args(opts), timeout=30, env=QUICK_EXIT_ENV)
    check_rejected(proc, mention, "moe")
    assert_no_complete_run_file(out)
