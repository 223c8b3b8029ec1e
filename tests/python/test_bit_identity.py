"""Bit-identical training on 1, 2 and 4 ranks (issue 12): with --chunk-tokens (default 64)
every per-step metric, the validation loss and the final model (parameters and Adam moments
in the checkpoint) are the same bits for any power-of-two rank count dividing B / C and any
--ep-size whose replica groups divide --expert-chunks, in fp32, over enough steps for a drift to show. Where the conditions fail the run
file says so (bit_identical = 0 and the reason).
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest

RANKS = (1, 2, 4)
STEPS = 320
BASE = dict(d_model=16, d_ff=32, layers=2, steps=STEPS, batch_tokens=256, val_tokens=512, seed=7,
            precision="fp32", lr=0.01)
# Representative: each gate family, every dispatch algorithm, replica groups (--ep-size below
# P, with --expert-chunks B / C so that every replica group holds whole leaves; the other
# configurations use the default, fewer leaves), shared and fine-grained experts, the mixture
# loss, the teacher and LM tasks, fp64 once, and the routing options (--drop-policy probs,
# --min-capacity, --router-jitter, --score-function sigmoid).
CONFIGS = {
    "topk-alltoallv-zloss": dict(experts=4, top_k=2, capacity_factor=1.0, z_loss=0.01),
    "sbase-padded-shared-fine-ep1": dict(experts=4, top_k=2, gate="sbase", dispatch="padded", shared_experts=1,
                                         granularity=2, ep_size=1, expert_chunks=4),
    "noisy-p2p-teacher": dict(experts=4, top_k=2, gate="noisy-topk", dispatch="p2p", task="teacher"),
    "dense-mixture-allgather-ep2": dict(experts=4, gate="dense", mixture_loss="global", dispatch="allgather",
                                        ep_size={1: None, 2: 2, 4: 2}, expert_chunks=4, problem="classification"),
    "expert-choice-lm": dict(experts=4, gate="expert-choice", task="lm", context=4, embed_dim=4),
    "switch-bias-fp64": dict(experts=4, top_k=1, gate="switch", balance="bias", precision="fp64", steps=120),
    # The routing options: a drop decided by gate over the global batch, a minimum capacity
    # (64 -> 96 slots), jitter keyed by global token, DeepSeek-V3's sigmoid scores.
    "topk-drop-probs-jitter-min-capacity": dict(experts=4, top_k=2, capacity_factor=0.5, min_capacity=96,
                                                drop_policy="probs", router_jitter=0.1),
    "sigmoid-bias-drop-probs": dict(experts=4, top_k=2, score_function="sigmoid", balance="bias",
                                    drop_policy="probs", capacity_factor=1.0, router_jitter=0.05),
}
# Timings and the traffic matrix depend on the layout by nature.
LAYOUT_METRICS = {"step_seconds", "a2a_seconds", "a2a_wait_seconds", "compute_seconds", "tokens_per_s", "a2a_seconds_by_phase",
                  "traffic", "rank_expert_tokens", "a2a_bytes", "a2a_bytes_by_phase", "padding_bytes"}
MODEL_GROUPS = ("replicated", "experts", "state")


def datasets(path, groups):
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name.split("/")[0] in groups:
                out[name] = obj[()]
        f.visititems(visit)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    rng = np.random.default_rng(3)
    words = ["the", "expert", "router", "token", "rank", "mixture", "of", "chunk"]
    path.write_text(" ".join(rng.choice(words, 4000)))
    return path


@pytest.fixture(scope="module", params=list(CONFIGS))
def runs(request, tmp_path_factory, run_moe, corpus):
    name = request.param
    d = tmp_path_factory.mktemp(name)
    out = {}
    for p in RANKS:
        opts = dict(BASE, **CONFIGS[name])
        if isinstance(opts.get("ep_size"), dict):
            opts["ep_size"] = opts["ep_size"][p]
        if opts.get("task") == "lm":
            opts["data"] = corpus
        _, path = run_moe(d, p, out=d / f"np{p}.h5", checkpoint=d / f"ck{p}.h5", timeout=600, **opts)
        with h5py.File(path, "r") as f:
            assert f.attrs["complete"] == 1 and f.attrs["ranks"] == p
            assert f.attrs["bit_identical"] == 1, f.attrs["bit_identical_reason"]
            final = dict(f["final"].attrs)
        metrics = {k: v for k, v in datasets(path, ("metrics",)).items() if k.split("/")[1] not in LAYOUT_METRICS}
        out[p] = dict(metrics=metrics, final=final, model=datasets(d / f"ck{p}.h5", MODEL_GROUPS))
    return name, out


def test_every_metric_identical(runs):
    name, out = runs
    ref = out[1]["metrics"]
    assert len(ref["metrics/train_loss"]) == CONFIGS[name].get("steps", STEPS)
    for p in RANKS[1:]:
        assert set(out[p]["metrics"]) == set(ref), f"{name}, {p} ranks: other metrics"
        for k, v in ref.items():
            got = out[p]["metrics"][k]
            assert got.shape == v.shape and np.array_equal(got, v, equal_nan=True), (
                f"{name}, {p} ranks: {k} differs, max |diff| "
                f"{np.nanmax(np.abs(got.astype(float) - v.astype(float))):.3e}")


def test_validation_and_final_attributes_identical(runs):
    name, out = runs
    for p in RANKS[1:]:
        for k in ("train_loss", "val_loss", "val_accuracy", "dropped_fraction", "steps_done"):
            if k in out[1]["final"]:
                assert out[p]["final"][k] == out[1]["final"][k], f"{name}, {p} ranks: final {k}"


def test_final_model_identical(runs):
    name, out = runs
    ref = out[1]["model"]
    assert any(k.endswith("adam_v") for k in ref) and any(k.startswith("experts/") for k in ref)
    for p in RANKS[1:]:
        assert set(out[p]["model"]) == set(ref)
        for k, v in ref.items():
            assert np.array_equal(out[p]["model"][k], v), f"{name}, {p} ranks: checkpoint {k} differs"


@pytest.mark.parametrize("np_, opts, reason", [
    (3, dict(experts=3, top_k=2), "3 ranks: not a power of two"),
    (2, dict(chunk_tokens=0), "--chunk-tokens 0"),
    (1, dict(batch_tokens=192), "not a power of two times --chunk-tokens"),
    (2, dict(chunk_tokens=12), "not a multiple of 8"),
    (2, dict(val_tokens=288), "last validation batch"),
])
def test_where_identity_cannot_hold_the_run_file_says_why(tmp_path, run_moe, np_, opts, reason):
    _, path = run_moe(tmp_path, np_, **{**dict(steps=2, batch_tokens=256, val_tokens=512), **opts})
    with h5py.File(path, "r") as f:
        assert f.attrs["bit_identical"] == 0
        assert reason in f.attrs["bit_identical_reason"]
