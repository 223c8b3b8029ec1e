"""Expert-data parallelism end to end (`--ep-size N`): P ranks form P/N groups of N
consecutive ranks, each group holding every expert and exchanging tokens only inside itself.

The same seed gives the same training run for every (P, N): per-step losses, expert token
counts and drops identical bit for bit (--chunk-tokens, the default, with --expert-chunks
B / C: every expert's gradient in as many leaves as token chunks, so that any N keeps them
whole; the default, fewer leaves, covers the default N only, tested below); E = 1 and
E < P run on any P; the run file records the effective N and the number of groups;
`metrics/traffic` stays P x P with bytes inside groups only; checkpoints written under one
(P, N) resume under any other. Run with `pytest -s` to see the measured errors.
"""
from __future__ import annotations

import math
import shutil

import h5py
import numpy as np
import pytest

from moesim_testing import error_lines

CFG = dict(d_model=16, d_ff=32, layers=2, steps=20, batch_tokens=256, val_tokens=512,
           seed=7, capacity_factor=1.0, expert_chunks=4)
# (E, P, N); N = 0: the default gcd(E, P). Every valid N on 2 and 4 ranks for E = 1, 2, 4.
PAIRS = [(1, 2, 0), (1, 4, 0),
         (2, 2, 1), (2, 2, 2), (2, 4, 1), (2, 4, 0),
         (4, 2, 1), (4, 4, 1), (4, 4, 2), (4, 4, 0), (8, 4, 2)]
EXPERTS = sorted({e for e, _, _ in PAIRS})


def top_k(e):
    return min(2, e)


def max_rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def read(path):
    with h5py.File(path, "r") as f:
        assert f.attrs["complete"] == 1
        m = {name: f["metrics"][name][()] for name in f["metrics"]}
        m["val_loss"] = f["final"].attrs["val_loss"]
        return m, dict(f.attrs)


@pytest.fixture(scope="module", params=["fp32", "fp64"])
def runs(request, tmp_path_factory, run_moe):
    precision = request.param
    d = tmp_path_factory.mktemp(f"ep_{precision}")
    out = {}
    for e in EXPERTS:
        _, path = run_moe(d, 1, precision=precision, experts=e, top_k=top_k(e), out=d / f"e{e}_np1.h5", **CFG)
        out[(e, 1, 0)] = read(path)
    for e, p, n in PAIRS:
        opts = dict(CFG, precision=precision, experts=e, top_k=top_k(e), out=d / f"e{e}_np{p}_n{n}.h5")
        if n:
            opts["ep_size"] = n
        _, path = run_moe(d, p, **opts)
        out[(e, p, n)] = read(path)
    return precision, out


def test_losses_equal_for_every_rank_count_and_ep_size(runs):
    precision, out = runs
    lines = []
    for e, p, n in PAIRS:
        m, _ = out[(e, p, n)]
        ref, _ = out[(e, 1, 0)]
        assert m["train_loss"].shape == (CFG["steps"],)
        err = max_rel_err(m["train_loss"], ref["train_loss"])
        abs_err = float(np.max(np.abs(m["train_loss"] - ref["train_loss"])))
        e_aux = max_rel_err(m["aux_loss"], ref["aux_loss"])
        e_val = max_rel_err(m["val_loss"], ref["val_loss"])
        lines.append(f"E={e} P={p} N={n or math.gcd(e, p)}: max |dloss| {abs_err:.3e} (rel {err:.3e}), "
                     f"aux {e_aux:.3e}, val {e_val:.3e}")
        assert np.array_equal(m["train_loss"], ref["train_loss"]), lines[-1]
        assert np.array_equal(m["aux_loss"], ref["aux_loss"]), lines[-1]
        assert m["val_loss"] == ref["val_loss"], lines[-1]
    print(f"\n[{precision}] vs 1 rank:\n  " + "\n  ".join(lines))


def test_expert_tokens_and_drops_identical(runs):
    _, out = runs
    assert out[(4, 1, 0)][0]["dropped_fraction"].max() > 0, "config must drop tokens for this test to mean anything"
    for e, p, n in PAIRS:
        m, _ = out[(e, p, n)]
        ref, _ = out[(e, 1, 0)]
        for name in ("expert_tokens", "expert_tokens_per_layer", "dropped_fraction", "top_expert_share"):
            np.testing.assert_array_equal(m[name], ref[name], err_msg=f"{name}: E={e} P={p} N={n}")


def test_effective_ep_size_and_groups_are_recorded(runs):
    _, out = runs
    for e, p, n in [(e, 1, 0) for e in EXPERTS] + PAIRS:
        _, attrs = out[(e, p, n)]
        want = n or math.gcd(e, p)
        assert attrs["effective_ep_size"] == want and attrs["effective_replica_groups"] == p // want, (e, p, n)
        assert attrs["ranks"] == p
        assert attrs["bit_identical"] == 1, attrs["bit_identical_reason"]
        if n:
            assert attrs["ep_size"] == n  # the option as given
        else:
            assert "ep_size" not in attrs


def test_traffic_stays_inside_groups(runs):
    _, out = runs
    for e, p, n in PAIRS:
        m, attrs = out[(e, p, n)]
        N = int(attrs["effective_ep_size"])
        t = m["traffic"]
        assert t.shape == (CFG["steps"], p, p)
        group = np.arange(p) // N
        across = group[:, None] != group[None, :]
        assert np.all(t[:, across] == 0), f"bytes between groups: E={e} P={p} N={N}"
        off_diag = t.sum(axis=(1, 2)) - np.trace(t, axis1=1, axis2=2)
        np.testing.assert_array_equal(m["a2a_bytes"], off_diag)
        if N == 1:
            assert np.all(m["a2a_bytes"] == 0)
        else:
            assert np.all(m["a2a_bytes"] > 0)
        # The same kept rows move (self included) whatever P and N.
        ref, _ = out[(e, 1, 0)]
        np.testing.assert_array_equal(t.sum(axis=(1, 2)), ref["traffic"].sum(axis=(1, 2)), err_msg=f"{e} {p} {n}")
        np.testing.assert_array_equal(m["rank_expert_tokens"].sum(axis=1), ref["rank_expert_tokens"].sum(axis=1))


def test_default_expert_chunks_cover_the_default_ep_size_only(run_moe, tmp_path):
    # E = 4, B / C = 4 token chunks: by default one leaf per expert (E >= B / C). The default
    # N = gcd(E, P) keeps one replica group on any P and matches 1 rank bit for bit; N = 2 on
    # 4 ranks makes 2 groups, which one leaf cannot serve: the run says so and how to fix it.
    opts = dict(CFG, steps=30, experts=4, top_k=1, gate="switch", precision="fp32")
    del opts["expert_chunks"]
    _, one = run_moe(tmp_path, 1, **opts, out=tmp_path / "one.h5")
    _, four = run_moe(tmp_path, 4, **opts, out=tmp_path / "four.h5")
    _, split = run_moe(tmp_path, 4, **opts, ep_size=2, out=tmp_path / "split.h5")
    (m1, a1), (m4, a4), (ms, as_) = read(one), read(four), read(split)
    assert a1["effective_expert_chunks"] == 1 and a4["effective_expert_chunks"] == 1
    assert a4["bit_identical"] == 1, a4["bit_identical_reason"]
    np.testing.assert_array_equal(m4["train_loss"], m1["train_loss"])
    assert m4["val_loss"] == m1["val_loss"]
    assert as_["bit_identical"] == 0 and as_["effective_expert_chunks"] == 2
    assert "--expert-chunks 2 or more restores bit-identity" in as_["bit_identical_reason"]
    proc, _ = run_moe(tmp_path, 1, check=False, **opts, expert_chunks=3, out=tmp_path / "bad.h5")
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "--expert-chunks (3) must be 0 (automatic) or a power of two" in lines[0], proc.stderr


def test_alias_and_rejected_ep_sizes(run_moe, tmp_path):
    opts = dict(CFG, steps=3, experts=4, top_k=2)
    _, a = run_moe(tmp_path, 4, **opts, ep_size=2, out=tmp_path / "a.h5")
    _, b = run_moe(tmp_path, 4, **opts, expert_model_parallel_size=2, out=tmp_path / "b.h5")
    ma, aa = read(a)
    mb, ab = read(b)
    # Recorded under moesim's name only (cli/aliases).
    assert ab["effective_ep_size"] == 2 and ab["ep_size"] == 2 and "expert_model_parallel_size" not in ab
    np.testing.assert_array_equal(ma["train_loss"], mb["train_loss"])
    np.testing.assert_array_equal(ma["traffic"], mb["traffic"])
    for extra, message in [
        (dict(ep_size=3), "--ep-size (3) must divide the number of ranks (4)"),
        (dict(ep_size=4, experts=2), "--experts (2) must be divisible by --ep-size (4)"),
        (dict(ep_size=0), "--ep-size must be >= 1 (got 0)"),
        (dict(ep_size=2, expert_model_parallel_size=4), "--ep-size 2 and --expert-model-parallel-size 4 (Megatron-LM's name for --ep-size 4) disagree"),
    ]:
        proc, _ = run_moe(tmp_path, 4, check=False, **{**opts, **extra}, out=tmp_path / "bad.h5")
        assert proc.returncode == 2, proc.stderr
        lines = error_lines(proc.stderr)
        assert len(lines) == 1 and message in lines[0], proc.stderr


RESUME = dict(experts=4, top_k=2, d_model=16, d_ff=32, layers=2, batch_tokens=256, val_tokens=256,
              precision="fp64", steps=12, flush_every=1, capacity_factor=1.0, expert_chunks=4)


def test_checkpoint_written_under_one_ep_size_resumes_under_any_other(run_moe, tmp_path):
    _, straight = run_moe(tmp_path, 1, **RESUME, out=tmp_path / "straight.h5")
    ref, _ = read(straight)
    half = tmp_path / "half.h5"
    run_moe(tmp_path, 4, **{**RESUME, "steps": 6}, ep_size=2, checkpoint=half, out=tmp_path / "first.h5")
    with h5py.File(half, "r") as f:
        assert f.attrs["experts"] == 4 and f.attrs["ranks"] == 4
        w1 = f["experts/block0.moe.expert.w1/value"][()]
        assert w1.shape == (4, 16, 32) and all(np.abs(w1[e]).sum() > 0 for e in range(4))
    for p, n in [(2, 2), (1, 1), (4, 4), (4, 1)]:
        ckpt = tmp_path / f"resume_{p}_{n}.h5"
        shutil.copy(half, ckpt)
        _, out = run_moe(tmp_path, p, **RESUME, ep_size=n, checkpoint=ckpt, resume=True,
                         out=tmp_path / f"resumed_{p}_{n}.h5")
        m, root = read(out)
        assert root["resumed_at_step"] == 6 and root["effective_ep_size"] == n
        np.testing.assert_array_equal(m["step"], np.arange(1, 13))
        np.testing.assert_array_equal(m["train_loss"], ref["train_loss"], err_msg=f"resumed on P={p} N={n}")
        np.testing.assert_array_equal(m["val_loss"], ref["val_loss"])
        np.testing.assert_array_equal(m["expert_tokens"], ref["expert_tokens"])
        # Written again under (p, n): the same experts come back from every replica.
        with h5py.File(ckpt, "r") as f:
            assert f.attrs["step"] == 12 and f.attrs["ranks"] == p
            assert f["experts/block0.moe.expert.w1/value"].shape == (4, 16, 32)


def test_help_documents_ep_size(mpirun):
    out = mpirun(1, "moe", "--help", check=True).stdout
    assert "--ep-size" in out and "--expert-model-parallel-size" in out
    text = " ".join(out.split())
    assert "default gcd(E, P)" in text and "N must divide P and E" in text
