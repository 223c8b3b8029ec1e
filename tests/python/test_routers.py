"""End-to-end tests of the gates and balancing options, read back from the run files."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from moesim_testing import QUICK_EXIT_ENV, REPO_ROOT, analysis_cli, assert_no_complete_run_file, check_rejected
from test_bad_input import TIMEOUT, build_args

M64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def derive_key(seed: int, stream: int, a: int, b: int) -> int:
    k = splitmix64(seed ^ 0x6D6F6573696D0000)
    k = splitmix64(k ^ stream)
    k = splitmix64(k ^ a)
    return splitmix64(k ^ ((b * 0xD1B54A32D192ED03) & M64))


def hash_expert(seed: int, layer_id: int, key: int, E: int) -> int:
    """The hash router's map, written from the definition in docs/gates.md (stream 9)."""
    return derive_key(seed, 9, layer_id + 1, key) % E


def metrics(path):
    with h5py.File(path, "r") as f:
        assert f.attrs["complete"] == 1
        return {k: f["metrics"][k][:] for k in f["metrics"]}, dict(f.attrs), dict(f["final"].attrs)


@pytest.mark.parametrize("gate,extra", [
    ("noisy-topk", {}),
    ("expert-choice", {"capacity_factor": 1.0}),
    ("hash", {}),
    ("sbase", {"top_k": 1}),
    ("topk", {"balance": "bias", "bias_update_rate": 0.01}),
    ("topk", {"score_function": "sigmoid", "balance": "bias", "drop_policy": "probs", "capacity_factor": 0.25,
              "router_jitter": 0.1, "min_capacity": 100}),
])
def test_gate_is_rank_invariant(tmp_path, run_moe, gate, extra):
    runs = {}
    for np_ in (1, 2, 4):
        _, out = run_moe(tmp_path, np_, gate=gate, steps=8, precision="fp64", seed=3, **extra)
        runs[np_] = metrics(out)
    m1, attrs, fin1 = runs[1]
    assert attrs["gate"] == gate
    for np_ in (2, 4):
        m, _, fin = runs[np_]
        np.testing.assert_allclose(m["train_loss"], m1["train_loss"], rtol=1e-10, err_msg=f"np={np_}")
        np.testing.assert_array_equal(m["expert_tokens_per_layer"], m1["expert_tokens_per_layer"])
        np.testing.assert_allclose(fin["val_loss"], fin1["val_loss"], rtol=1e-10)
        for name in ("importance_loss", "load_loss", "balance_bias"):
            if name in m1:
                np.testing.assert_allclose(m[name], m1[name], rtol=1e-10, atol=1e-14, err_msg=name)


def test_noisy_topk_deterministic_given_seed(tmp_path, run_moe):
    opts = dict(gate="noisy-topk", steps=10, seed=4)
    a, b, c = (metrics(run_moe(tmp_path, 2, **o)[1])[0] for o in (opts, opts, {**opts, "seed": 5}))
    np.testing.assert_array_equal(a["train_loss"], b["train_loss"])
    np.testing.assert_array_equal(a["expert_tokens_per_layer"], b["expert_tokens_per_layer"])
    assert not np.array_equal(a["train_loss"], c["train_loss"])
    assert a["importance_loss"].shape == (10,) and a["load_loss"].shape == (10,)
    assert np.all(a["importance_loss"] > 0) and np.all(a["load_loss"] > 0)


def test_noisy_topk_losses_follow_their_weights(tmp_path, run_moe):
    """--balance none turns the importance and load losses off; heavier weights lower CV."""
    base = dict(gate="noisy-topk", steps=60, experts=8, router_init_scale=10.0, lr=0.01, seed=2)
    heavy = metrics(run_moe(tmp_path, 1, importance_loss_weight=1.0, load_loss_weight=1.0, **base)[1])[0]
    none = metrics(run_moe(tmp_path, 1, balance="none", **base)[1])[0]
    assert heavy["load_loss"][-20:].mean() < none["load_loss"][-20:].mean()
    assert heavy["importance_loss"][-20:].mean() < none["importance_loss"][-20:].mean()


def test_expert_choice_respects_capacity_exactly(tmp_path, run_moe):
    E, K, B, cf = 8, 2, 256, 0.75
    _, out = run_moe(tmp_path, 2, gate="expert-choice", experts=E, top_k=K, batch_tokens=B,
                     capacity_factor=cf, steps=6)
    m, attrs, fin = metrics(out)
    C = int(np.ceil(cf * B * K / E))
    assert np.all(m["expert_tokens_per_layer"] == C)
    assert np.all(m["dropped_fraction"] == 0)
    # 0.75 * K slots per token on average: some tokens get no expert at all.
    assert np.all(m["unrouted_fraction"] > 0) and np.all(m["unrouted_fraction"] < 1)
    assert attrs["eval_capacity_factor"] == cf


def test_hash_position_is_a_fixed_map(tmp_path, run_moe):
    E, B, L, seed = 8, 200, 2, 7
    _, out = run_moe(tmp_path, 2, gate="hash", hash_key="position", experts=E, top_k=1,
                     batch_tokens=B, layers=L, capacity_factor=0, steps=5, seed=seed)
    m, attrs, _ = metrics(out)
    assert attrs["hash_key"] == "position"
    expect = np.zeros((L, E), dtype=np.int64)
    for layer in range(L):
        for t in range(B):
            expect[layer, hash_expert(seed, layer + 1, t, E)] += 1
    for s in range(5):
        np.testing.assert_array_equal(m["expert_tokens_per_layer"][s], expect)


def test_hash_input_ignores_learning_of_router(tmp_path, run_moe):
    """The hash gate has no learned routing: router weights never get a gradient, so two
    runs that differ only in the router init route identically."""
    runs = [metrics(run_moe(tmp_path, 1, gate="hash", steps=6, router_init_scale=s, seed=2)[1])[0]
            for s in (0.1, 5.0)]
    np.testing.assert_array_equal(runs[0]["expert_tokens_per_layer"], runs[1]["expert_tokens_per_layer"])
    np.testing.assert_array_equal(runs[0]["train_loss"], runs[1]["train_loss"])


def test_sbase_loads_near_balanced(tmp_path, run_moe):
    opts = dict(experts=8, top_k=1, capacity_factor=0, steps=20, router_init_scale=10.0, seed=6)
    sb = metrics(run_moe(tmp_path, 2, gate="sbase", sinkhorn_iters=20, **opts)[1])[0]
    top = metrics(run_moe(tmp_path, 2, gate="switch", balance="none", **opts)[1])[0]
    assert sb["max_over_mean_load"].mean() < 1.3
    assert sb["max_over_mean_load"].mean() < 0.7 * top["max_over_mean_load"].mean()


def test_bias_balancing_reduces_imbalance(tmp_path, run_moe):
    E, L, rate = 8, 2, 0.05
    opts = dict(experts=E, top_k=2, layers=L, capacity_factor=0, steps=60, router_init_scale=10.0, seed=8)
    _, bias_out = run_moe(tmp_path, 2, balance="bias", bias_update_rate=rate, **opts)
    _, none_out = run_moe(tmp_path, 2, balance="none", **opts)
    mb, attrs, _ = metrics(bias_out)
    mn, _, _ = metrics(none_out)
    assert attrs["balance"] == "bias" and attrs["bias_update_rate"] == rate
    assert "balance_bias" not in mn
    bias = mb["balance_bias"]
    assert bias.shape == (60, L, E)
    # Each step moves each bias by +rate below the mean load and -rate above it (dropless:
    # the logged load is the load before dropping).
    load = mb["expert_tokens_per_layer"].astype(float)
    mean = load.mean(axis=2, keepdims=True)
    step = rate * np.sign(mean - load)
    np.testing.assert_allclose(bias, np.cumsum(step, axis=0), atol=1e-12)
    assert mb["max_over_mean_load"][-20:].mean() < mn["max_over_mean_load"][-20:].mean()


def test_eval_capacity_factor_only_changes_validation(tmp_path, run_moe):
    opts = dict(capacity_factor=0.5, steps=10, precision="fp64", seed=9, router_init_scale=5.0)
    ma, _, fa = metrics(run_moe(tmp_path, 2, eval_capacity_factor=0, **opts)[1])
    mb, attrs, fb = metrics(run_moe(tmp_path, 2, **opts)[1])
    np.testing.assert_array_equal(ma["train_loss"], mb["train_loss"])
    assert fa["val_loss"] != fb["val_loss"]
    assert attrs["eval_capacity_factor"] == 0.5


def test_drop_policy_changes_which_assignments_drop_not_how_many(tmp_path, run_moe):
    """The first step's first MoE layer routes the same: as many kept tokens per expert under
    either policy, other tokens kept (a different loss); the policy is recorded."""
    opts = dict(capacity_factor=0.5, steps=2, precision="fp64", seed=9, router_init_scale=5.0)
    mp, ap, _ = metrics(run_moe(tmp_path, 2, **opts, out=tmp_path / "position.h5")[1])
    mq, aq, _ = metrics(run_moe(tmp_path, 2, drop_policy="probs", **opts, out=tmp_path / "probs.h5")[1])
    assert (ap["drop_policy"], aq["drop_policy"]) == ("position", "probs")
    assert mp["dropped_fraction"][0] > 0
    np.testing.assert_array_equal(mq["expert_tokens_per_layer"][0, 0], mp["expert_tokens_per_layer"][0, 0])
    assert mq["train_loss"][0] != mp["train_loss"][0]


def test_min_capacity_raises_the_capacity(tmp_path, run_moe):
    """capacity-factor 0.25 on B = 1024, K = 2, E = 4 gives 128 slots per expert; a minimum of
    300 keeps more tokens, and no expert takes more than the minimum."""
    opts = dict(capacity_factor=0.25, steps=2, seed=9, router_init_scale=5.0, batch_tokens=1024)
    m0, _, _ = metrics(run_moe(tmp_path, 2, **opts, out=tmp_path / "plain.h5")[1])
    m1, attrs, _ = metrics(run_moe(tmp_path, 2, min_capacity=300, **opts, out=tmp_path / "min.h5")[1])
    assert attrs["min_capacity"] == 300
    assert m0["expert_tokens_per_layer"].max() == 128 and m1["expert_tokens_per_layer"].max() == 300
    assert m1["dropped_fraction"][0] < m0["dropped_fraction"][0]


def test_router_jitter_in_training_only(tmp_path, run_moe):
    """Jitter changes training (other routing, other losses) and is recorded; after one step
    too small to move a parameter (lr 1e-300), validation sees the same model either way."""
    opts = dict(steps=3, precision="fp64", seed=9, router_init_scale=5.0)
    m0, _, f0 = metrics(run_moe(tmp_path, 2, **opts, out=tmp_path / "plain.h5")[1])
    m1, attrs, f1 = metrics(run_moe(tmp_path, 2, router_jitter=0.5, **opts, out=tmp_path / "jitter.h5")[1])
    assert attrs["router_jitter"] == 0.5
    assert not np.array_equal(m0["train_loss"], m1["train_loss"])
    opts = dict(opts, steps=1, lr=1e-300)
    _, _, g0 = metrics(run_moe(tmp_path, 2, **opts, out=tmp_path / "plain1.h5")[1])
    _, _, g1 = metrics(run_moe(tmp_path, 2, router_jitter=0.5, **opts, out=tmp_path / "jitter1.h5")[1])
    assert g0["val_loss"] == g1["val_loss"]


def test_sigmoid_scores_normalise_the_gates(tmp_path, run_moe):
    """--score-function sigmoid trains (finite, falling loss) and is recorded; without the
    top-1 warning, since its K = 1 gate is sigmoid(logit), not 1."""
    proc, out = run_moe(tmp_path, 2, score_function="sigmoid", top_k=1, steps=30, seed=9, lr=0.01)
    m, attrs, _ = metrics(out)
    assert attrs["score_function"] == "sigmoid"
    assert np.all(np.isfinite(m["train_loss"])) and m["train_loss"][-5:].mean() < m["train_loss"][:5].mean()
    assert "warning" not in proc.stderr


def test_fp64_router_in_fp32_model(tmp_path, run_moe):
    """An fp32 model with an fp64 router tracks the all-fp64 model at least as closely
    as the fp32 router does, on 1 and 2 ranks."""
    opts = dict(steps=10, seed=10, gate="sbase", top_k=1)
    exact = metrics(run_moe(tmp_path, 1, precision="fp64", **opts)[1])[0]["train_loss"]
    r64 = {np_: metrics(run_moe(tmp_path, np_, router_precision="fp64", **opts)[1]) for np_ in (1, 2)}
    r32 = metrics(run_moe(tmp_path, 1, **opts)[1])[0]["train_loss"]
    assert r64[1][1]["router_precision"] == "fp64"
    err64 = np.abs(r64[1][0]["train_loss"] - exact).max()
    assert err64 < 1e-4
    assert err64 <= np.abs(r32 - exact).max() * 1.5
    np.testing.assert_allclose(r64[2][0]["train_loss"], r64[1][0]["train_loss"], rtol=1e-4)


def test_gate_from_config_file(tmp_path, run_moe):
    cfg = tmp_path / "router.ini"
    cfg.write_text("gate = sbase\ntop-k = 1\nsinkhorn-iters = 5\nbalance = none\n"
                   "eval-capacity-factor = 2.0\nrouter-precision = fp64\n")
    _, out = run_moe(tmp_path, 2, config=cfg, top_k=None, steps=3)
    _, attrs, _ = metrics(out)
    assert (attrs["gate"], attrs["sinkhorn_iters"], attrs["balance"]) == ("sbase", 5, "none")
    assert (attrs["eval_capacity_factor"], attrs["router_precision"]) == (2.0, "fp64")


BAD = [
    ("gate-unknown", {}, ["--gate", "learned"], ["--gate", "learned"]),
    ("switch-k2", {"--top-k": "2"}, ["--gate", "switch"], ["switch", "--top-k 1"]),
    ("expert-choice-dropless", {}, ["--gate", "expert-choice", "--capacity-factor", "0"], ["expert-choice"]),
    ("expert-choice-eval-dropless", {}, ["--gate", "expert-choice", "--eval-capacity-factor", "0"],
     ["--eval-capacity-factor"]),
    ("balance-unknown", {}, ["--balance", "loss"], ["--balance", "loss"]),
    ("bias-with-hash", {}, ["--gate", "hash", "--balance", "bias"], ["--balance bias", "hash"]),
    ("bias-with-sbase", {}, ["--gate", "sbase", "--balance", "bias"], ["--balance bias", "sbase"]),
    ("hash-key-unknown", {}, ["--gate", "hash", "--hash-key", "vocab"], ["--hash-key", "vocab"]),
    ("router-precision-unknown", {}, ["--router-precision", "bf16"], ["--router-precision", "bf16"]),
    ("sinkhorn-iters-zero", {}, ["--gate", "sbase", "--sinkhorn-iters", "0"], ["--sinkhorn-iters"]),
    ("bias-rate-negative", {}, ["--bias-update-rate", "-1"], ["--bias-update-rate"]),
    ("eval-cf-nan", {}, ["--eval-capacity-factor", "nan"], ["--eval-capacity-factor"]),
    ("drop-policy-unknown", {}, ["--drop-policy", "random"], ["--drop-policy", "random"]),
    ("drop-probs-with-dense", {}, ["--gate", "dense", "--drop-policy", "probs"], ["--drop-policy probs", "dense"]),
    ("drop-probs-with-expert-choice", {}, ["--gate", "expert-choice", "--drop-policy", "probs"],
     ["--drop-policy probs", "expert-choice"]),
    ("min-capacity-negative", {}, ["--min-capacity", "-1"], ["--min-capacity", "-1"]),
    ("min-capacity-not-a-count", {}, ["--min-capacity", "1.5"], ["--min-capacity"]),
    ("score-function-unknown", {}, ["--score-function", "tanh"], ["--score-function", "tanh"]),
    ("sigmoid-with-switch", {"--top-k": "1"}, ["--gate", "switch", "--score-function", "sigmoid"],
     ["--score-function sigmoid", "switch"]),
    ("sigmoid-with-pre-softmax", {}, ["--score-function", "sigmoid", "--router-pre-softmax"],
     ["--score-function sigmoid", "--router-pre-softmax"]),
    ("router-jitter-one", {}, ["--router-jitter", "1"], ["--router-jitter", "[0, 1)"]),
    ("router-jitter-negative", {}, ["--router-jitter", "-0.1"], ["--router-jitter"]),
    ("router-jitter-nan", {}, ["--router-jitter", "nan"], ["--router-jitter"]),
    ("router-jitter-with-hash", {}, ["--gate", "hash", "--router-jitter", "0.1"], ["--router-jitter", "hash"]),
]


@pytest.mark.parametrize("overrides,extra,mention", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_router_options(tmp_path, mpirun, overrides, extra, mention):
    args, out = build_args(tmp_path, overrides, extra)
    proc = mpirun(2, *args, timeout=TIMEOUT, env=QUICK_EXIT_ENV)
    check_rejected(proc, mention)
    assert_no_complete_run_file(out)


ROUTER_SWEEP = """\
gate = topk,hash,sbase
experts = 2,4
d-model = 8,16
d-ff = 16,32
zip = d-model,d-ff
top-k = 1
steps = 15
batch-tokens = 128
val-tokens = 256
seed = 1
quiet = true
"""


def test_router_sweep_report_sets_gates_side_by_side(tmp_path, mpirun):
    import sys

    cfg = tmp_path / "routers.ini"
    cfg.write_text(ROUTER_SWEEP)
    out = tmp_path / "sweep"
    proc = mpirun(2, "sweep", cfg, "--out", out, timeout=240)
    assert proc.returncode == 0, proc.stderr
    rep = analysis_cli("report", out, "--bootstrap", "20")
    assert rep.returncode == 0, rep.stderr
    md = (out / "report" / "index.md").read_text()
    assert "![Routers side by side](routers_vs_experts.png)" in md
    assert (out / "report" / "routers_vs_experts.png").stat().st_size > 5000
    # One row per (model size, gate), one column per E, with the runs' mean loss.
    section = md.split("## Routers", 1)[1]
    for gate in ("topk", "hash", "sbase"):
        assert f"| {gate} |" in section
    assert "E=2" in section and "E=4" in section
    sys.path.insert(0, str(REPO_ROOT))
    from moesim_analysis import load_runs
    runs = load_runs(out)
    one = runs[(runs["gate"] == "hash") & (runs["experts"] == 4) & (runs["d_model"] == 16)]
    assert f"{one['val_loss'].iloc[0]:.5g}" in section


def test_expert_choice_routing_recovery_counts_every_token(tmp_path, run_moe):
    """Routing recovery takes each token's most probable expert among those that chose it,
    so the counts spread over the experts rather than all landing on expert 0."""
    E = 4
    _, out = run_moe(tmp_path, 2, gate="expert-choice", experts=E, steps=20, val_tokens=512, seed=2,
                     router_init_scale=5.0)
    with h5py.File(out, "r") as f:
        counts = f["routing_recovery/counts"][:]  # L x E x S
    assert counts.sum(axis=(1, 2)).tolist() == [512] * counts.shape[0]
    assert (counts.sum(axis=2) > 0).sum(axis=1).min() >= 2
