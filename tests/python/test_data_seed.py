"""--data-seed draws the task, --seed the model (run-file schema 2).

Two runs with different --seed and the same --data-seed see the same tokens: their validation
sources (regimes clusters, teacher experts), counted per MoE layer in routing_recovery/counts,
agree exactly, while the trained models differ. Another --data-seed gives other tokens. A run
with a data seed apart from its model seed is still rank-count invariant, and moesim_analysis.load
reads schema-1 files (where --seed drew both) beside schema-2 ones.
"""
from __future__ import annotations

import shutil
import sys

import h5py
import numpy as np

from moesim_testing import REPO_ROOT

REGIMES = dict(experts=4, top_k=2, steps=8, val_tokens=1024, capacity_factor=0)
TEACHER = dict(task="teacher", experts=4, top_k=2, layers=1, input_dim=8, steps=8,
               val_tokens=1024, capacity_factor=0)


def read(path):
    with h5py.File(path, "r") as f:
        assert f.attrs["complete"] == 1
        return dict(attrs=dict(f.attrs), train_loss=f["metrics/train_loss"][()],
                    counts=f["routing_recovery/counts"][()], val_loss=f["final"].attrs["val_loss"])


def source_totals(run):
    """Validation tokens per (MoE layer, source): a function of the data alone."""
    return run["counts"].sum(axis=1)


def test_model_seed_leaves_the_data_alone(tmp_path, run_moe):
    for name, cfg in (("regimes", REGIMES), ("teacher", TEACHER)):
        runs = {}
        for seed, data_seed in ((1, 3), (2, 3), (1, 4)):
            _, path = run_moe(tmp_path, 2, seed=seed, data_seed=data_seed,
                              out=tmp_path / f"{name}_{seed}_{data_seed}.h5", **cfg)
            runs[seed, data_seed] = read(path)
        a, b, other = runs[1, 3], runs[2, 3], runs[1, 4]
        assert a["attrs"]["seed"] == 1 and a["attrs"]["data_seed"] == 3
        assert a["attrs"]["schema_version"] == 2
        np.testing.assert_array_equal(source_totals(a), source_totals(b), err_msg=name)
        assert source_totals(a).sum() == cfg["val_tokens"] * source_totals(a).shape[0]
        assert not np.array_equal(a["train_loss"], b["train_loss"]), f"{name}: --seed must move the model"
        assert not np.array_equal(source_totals(a), source_totals(other)), f"{name}: --data-seed must move the data"
        if name == "teacher":  # the teacher follows --data-seed unless --teacher-seed is given
            assert a["attrs"]["teacher_seed"] == 3 and other["attrs"]["teacher_seed"] == 4


def test_same_seeds_same_run_and_explicit_teacher_seed(tmp_path, run_moe):
    _, p1 = run_moe(tmp_path, 2, seed=2, data_seed=5, **REGIMES)
    _, p2 = run_moe(tmp_path, 2, seed=2, data_seed=5, **REGIMES)
    np.testing.assert_array_equal(read(p1)["train_loss"], read(p2)["train_loss"])
    _, t = run_moe(tmp_path, 1, data_seed=5, teacher_seed=11, **TEACHER)
    assert read(t)["attrs"]["teacher_seed"] == 11 and read(t)["attrs"]["data_seed"] == 5


def test_rank_invariance_with_separate_seeds(tmp_path, run_moe):
    losses = {}
    for np_ in (1, 2, 4):
        _, path = run_moe(tmp_path, np_, seed=3, data_seed=6, precision="fp64", capacity_factor=1.0,
                          steps=10, out=tmp_path / f"np{np_}.h5")
        r = read(path)
        losses[np_] = r["train_loss"]
        if np_ > 1:
            np.testing.assert_allclose(losses[np_], losses[1], rtol=1e-10, atol=0)


def test_load_reads_schema_1_and_2(tmp_path, run_moe):
    runs = tmp_path / "runs"
    runs.mkdir()
    _, v2 = run_moe(runs, 1, seed=4, data_seed=9, steps=3, out=runs / "v2.h5")
    v1 = runs / "v1.h5"
    shutil.copy(v2, v1)
    with h5py.File(v1, "r+") as f:  # as a schema-1 file: no data_seed, seed drew the task
        f.attrs["schema_version"] = 1
        del f.attrs["data_seed"]
    sys.path.insert(0, str(REPO_ROOT))
    from moesim_analysis.load import load_runs
    df = load_runs(runs).set_index("id")
    assert df.loc["v2", "schema_version"] == 2 and df.loc["v2", "data_seed"] == 9
    assert df.loc["v1", "schema_version"] == 1 and df.loc["v1", "data_seed"] == 4
    assert bool(df.loc["v1", "complete"]) and bool(df.loc["v2", "complete"])
