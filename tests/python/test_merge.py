"""`moesim merge` end to end: a trained run's checkpoint merged to fewer experts, the validation
loss before and after in the run file, the same on any rank count, and bad input refused."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from moesim_testing import QUICK_EXIT_ENV, error_lines, run_moe, run_mpi

TRAIN = dict(experts=4, top_k=1, precision="fp64", steps=15, capacity_factor=0, eval_every=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, moesim):
    d = tmp_path_factory.mktemp("merge")
    ckpt = d / "trained.ckpt.h5"
    _, run = run_moe(d, 2, **TRAIN, checkpoint=ckpt)
    return d, run, ckpt


def merge(np_, *args, check=True):
    proc = run_mpi(np_, "merge", *args, env=QUICK_EXIT_ENV)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def read(path):
    with h5py.File(path, "r") as f:
        return dict(f.attrs), dict(f["final"].attrs), {k: f["merge"][k][()] for k in f["merge"]}


def test_merge_reports_the_loss_before_and_after(trained):
    d, run, ckpt = trained
    with h5py.File(run, "r") as f:
        run_val = f["final"].attrs["val_loss"]
    results = {}
    for np_ in (2, 1):
        out = d / f"merged_np{np_}.h5"
        proc = merge(np_, "--run", ckpt, "--experts", 2, "--method", "slerp", "--pair-by", "weights", "--out", out)
        assert "val loss" in proc.stdout
        root, final, m = read(out)
        assert root["complete"] == 1 and root["kind"] == "merge"
        assert root["experts_before"] == 4 and root["experts_after"] == 2 and root["method"] == "slerp"
        assert final["experts_after"] == 2
        assert final["params_total_after"] < final["params_total_before"]
        assert np.isfinite(final["val_loss_after"]) and final["val_loss_after"] != final["val_loss_before"]
        assert m["pairs"].shape == (2, 2, 2) and m["group_of"].shape == (2, 4) and m["similarity"].shape == (2, 4, 4)
        for layer in range(2):
            assert sorted(m["pairs"][layer].ravel().tolist()) == [0, 1, 2, 3]
            np.testing.assert_allclose(np.diag(m["similarity"][layer]), 1.0, rtol=1e-12)
        results[np_] = final
    # Before merging, it is the trained model: the run's own validation loss.
    assert results[2]["val_loss_before"] == run_val
    for key in ("val_loss_before", "val_loss_after"):
        np.testing.assert_allclose(results[1][key], results[2][key], rtol=1e-10)


def test_merge_by_routing_from_the_run_file(trained):
    d, run, _ = trained
    out = d / "merged_routing.h5"
    merge(2, "--run", run, "--experts", 2, "--pair-by", "routing", "--out", out, "--quiet")
    root, final, m = read(out)
    assert root["pair_by"] == "routing" and root["complete"] == 1
    assert np.isfinite(final["val_loss_after"])
    # Routing similarity: cosine of router-probability columns, all positive.
    assert np.all(m["similarity"] > 0) and np.all(m["similarity"] <= 1 + 1e-12)


def test_averaging_identical_experts_leaves_the_loss_unchanged(trained):
    d, _, ckpt = trained
    twin = d / "twins.ckpt.h5"
    shutil.copy(ckpt, twin)
    with h5py.File(twin, "r+") as f:
        # Experts 1 and 3 become copies of 0 and 2, router columns included.
        for key in f["experts"]:
            v = f["experts"][key]["value"]
            w = v[()]
            w[1], w[3] = w[0], w[2]
            v[...] = w
        for layer in (0, 1):
            r = f["replicated"][f"block{layer}.moe.router.w"]["value"]
            w = r[()]
            w[:, 1], w[:, 3] = w[:, 0], w[:, 2]
            r[...] = w
    for method in ("average", "slerp"):
        out = d / f"twins_{method}.h5"
        merge(2, "--run", twin, "--experts", 2, "--method", method, "--out", out)
        _, final, m = read(out)
        for layer in range(2):
            assert sorted(m["pairs"][layer].tolist()) == [[0, 1], [2, 3]]
        np.testing.assert_allclose(final["val_loss_after"], final["val_loss_before"], rtol=1e-12)


def test_merge_to_a_count_the_ranks_do_not_divide(trained):
    """E2 = 3 on 2 ranks: the merged layers run in expert groups of gcd(3, 2) = 1 rank."""
    d, _, ckpt = trained
    out = d / "merged_3.h5"
    merge(2, "--run", ckpt, "--experts", 3, "--out", out)
    _, final, m = read(out)
    assert final["experts_after"] == 3 and np.isfinite(final["val_loss_after"])
    assert m["pairs"].shape == (2, 1, 2)
    ref = d / "merged_3_np1.h5"
    merge(1, "--run", ckpt, "--experts", 3, "--out", ref)
    np.testing.assert_allclose(read(ref)[1]["val_loss_after"], final["val_loss_after"], rtol=1e-10)


def test_merge_of_a_fine_grained_run(tmp_path):
    """--granularity M: the checkpoint holds E x M experts of F / M hidden units each, and the
    merged model must be E2 of those (it once read past them and reported nan). The merged
    model's loss must equal that of the same model assembled by hand and evaluated by
    `moesim moe --resume` with no steps left."""
    fine = dict(TRAIN, experts=2, granularity=2, d_ff=32, shared_experts=1)
    ckpt = tmp_path / "fine.ckpt.h5"
    run_moe(tmp_path, 2, **fine, checkpoint=ckpt)
    out = tmp_path / "fine_merged.h5"
    merge(2, "--run", ckpt, "--experts", 2, "--out", out)
    root, final, m = read(out)
    assert root["complete"] == 1 and final["experts_before"] == 4 and final["experts_after"] == 2
    assert np.isfinite(final["val_loss_after"])

    # The merged architecture (2 fine-grained experts per MoE layer), trained as long, gives
    # a checkpoint of the right shapes; its weights are then replaced by the merge's.
    small = dict(fine, experts=1)
    hand = tmp_path / "hand.ckpt.h5"
    _, small_run = run_moe(tmp_path, 2, **small, checkpoint=hand)
    with h5py.File(small_run, "r") as f:
        assert final["params_total_after"] == f["final"].attrs["params_total"] < final["params_total_before"]
    with h5py.File(ckpt, "r") as src, h5py.File(hand, "r+") as dst:
        for key in dst["experts"]:
            layer = int(key.split(".")[0].removeprefix("block"))
            w = src["experts"][key]["value"][()]
            merged = [w[m["group_of"][layer] == j].mean(axis=0) for j in range(2)]
            dst["experts"][key]["value"][...] = np.stack(merged)
        for name in dst["replicated"]:
            w = src["replicated"][name]["value"][()]
            if name.endswith("router.w"):
                layer = int(name.split(".")[0].removeprefix("block"))
                w = np.stack([w[:, m["group_of"][layer] == j].mean(axis=1) for j in range(2)], axis=1)
            dst["replicated"][name]["value"][...] = w
    _, evaluated = run_moe(tmp_path, 2, **small, checkpoint=hand, resume=True)
    with h5py.File(evaluated, "r") as f:
        assert f.attrs["resumed_at_step"] == TRAIN["steps"]
        np.testing.assert_allclose(final["val_loss_after"], f["final"].attrs["val_loss"], rtol=1e-12)


@pytest.mark.parametrize("args, message", [
    (["--experts", 4], "must be below the run's E = 4"),
    (["--experts", 5], "must be below the run's E = 4"),
    (["--experts", 1], "not reachable"),
    (["--experts", 2, "--method", "ties"], "--method must be average or slerp"),
    (["--experts", 2, "--pair-by", "luck"], "--pair-by must be weights or routing"),
])
def test_bad_merge_input(trained, args, message):
    d, _, ckpt = trained
    out = d / "bad.h5"
    proc = merge(2, "--run", ckpt, "--out", out, *args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("moesim merge: error:") and message in lines[0], proc.stderr
    assert not out.exists()


def test_merge_of_a_missing_or_checkpointless_run(trained, tmp_path):
    d, _, _ = trained
    proc = merge(2, "--run", tmp_path / "nope.h5", "--experts", 2, "--out", tmp_path / "o.h5", check=False)
    assert proc.returncode == 2 and "no such file" in proc.stderr and "error on rank" not in proc.stderr
    _, plain = run_moe(tmp_path, 2, steps=2)
    proc = merge(2, "--run", plain, "--experts", 2, "--out", tmp_path / "o.h5", check=False)
    assert proc.returncode == 2 and "train with --checkpoint" in proc.stderr
    assert not (tmp_path / "o.h5").exists()
