"""Dense and constant gates, mixture losses, shared and fine-grained experts, end to end.

The collapse pair in experiments/ (Jacobs et al. 1991): the "global" loss of the combined prediction
leaves the dense gate soft and the experts entangled; the per-expert loss makes the gate
decisive and each expert a good predictor on its own tokens.
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from moesim_testing import QUICK_EXIT_ENV, REPO_ROOT, assert_no_complete_run_file, check_rejected, cli_args
from test_bad_input import TIMEOUT, build_args

SHORT = dict(steps=80, batch_tokens=256, val_tokens=512)


def metrics(path):
    with h5py.File(path, "r") as f:
        assert f.attrs["complete"] == 1
        out = {k: f["metrics"][k][()] for k in f["metrics"]}
        out["attrs"] = dict(f.attrs)
        out["final"] = dict(f["final"].attrs)
    return out


def run_config(mpirun, tmp_path, name, np_=2):
    """The config file as it is, shortened (run_moe's small defaults would override it)."""
    out = tmp_path / f"{name}.h5"
    args = ["moe", "--config", REPO_ROOT / "experiments" / f"{name}.ini", "--out", out, "--quiet"]
    mpirun(np_, *args, *cli_args(SHORT), check=True)
    return metrics(out)


def test_collapse_pair_separates(tmp_path, mpirun):
    g = run_config(mpirun, tmp_path, "collapse_global")
    p = run_config(mpirun, tmp_path, "collapse_per_expert")
    for m, loss in ((g, "global"), (p, "per-expert")):
        assert m["attrs"]["gate"] == "dense" and m["attrs"]["mixture_loss"] == loss
        assert m["attrs"]["effective_top_k"] == m["attrs"]["experts"], "the dense gate uses every expert"
        assert m["attrs"]["effective_capacity_factor"] == 0.0
        assert np.all(m["dropped_fraction"] == 0)
        for name in ("prediction_loss", "mixture_spread", "token_share", "top_expert_share"):
            assert name in m, name
    # Global: the objective is the prediction's loss; per-expert: it adds the spread.
    np.testing.assert_allclose(g["train_loss"], g["prediction_loss"], rtol=1e-6)
    np.testing.assert_allclose(p["train_loss"], p["prediction_loss"] + p["mixture_spread"], rtol=1e-4)
    E = int(g["attrs"]["experts"])
    h_g, h_p = g["gate_entropy"][-10:].mean(), p["gate_entropy"][-10:].mean()
    s_g, s_p = g["mixture_spread"][-10:].mean(), p["mixture_spread"][-10:].mean()
    print(f"\ngate entropy (log E = {np.log(E):.3f}): global {h_g:.3f}, per-expert {h_p:.3f}; "
          f"mixture spread: global {s_g:.4f}, per-expert {s_p:.4f}")
    assert h_p < 0.7 * h_g, "the per-expert loss should make the gate decisive"
    assert s_p < 0.1 * s_g, "with the global loss no expert predicts well alone"
    # Per-expert: at least two experts are the top expert of a real share of the tokens.
    assert (p["top_expert_share"][-1] > 0.15).sum() >= 2


@pytest.mark.parametrize("case", [
    dict(gate="dense", mixture_loss="per-expert", shared_experts=1, granularity=2, layers=2),
    dict(gate="topk", shared_experts=2, granularity=2, capacity_factor=1.0),
    dict(gate="constant", mixture_loss="global", problem="classification", layers=1),
    dict(gate="dense", problem="classification", mixture_loss="global", layers=1),
], ids=["dense-per-expert-shared-fine", "topk-shared-fine", "constant-classification", "dense-global-cls"])
def test_independent_of_rank_count(tmp_path, run_moe, case):
    runs = {}
    for p in (1, 2, 4):
        _, out = run_moe(tmp_path, p, experts=4, top_k=1, d_ff=32, steps=8, batch_tokens=128,
                         val_tokens=128, precision="fp64", seed=3, out=tmp_path / f"np{p}.h5", **case)
        runs[p] = metrics(out)
    for p in (2, 4):
        for name in ("train_loss", "gate_entropy", "top_expert_share", "token_share"):
            np.testing.assert_allclose(runs[p][name], runs[1][name], rtol=1e-10, atol=1e-14, err_msg=f"{name}, {p} ranks")
        np.testing.assert_allclose(runs[p]["final"]["val_loss"], runs[1]["final"]["val_loss"], rtol=1e-10)
    a = runs[1]["attrs"]
    M = case.get("granularity", 1)
    assert a["granularity"] == M and a["effective_experts"] == 4 * M
    assert a["effective_d_ff"] == 32 // M
    assert a["effective_top_k"] == (4 * M if case["gate"] != "topk" else M)
    m = runs[1]
    np.testing.assert_allclose(m["token_share"].sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(m["top_expert_share"].sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(m["token_share"], m["expert_tokens"] / m["expert_tokens"].sum(axis=1, keepdims=True),
                               rtol=1e-12)


def test_shared_and_fine_grained_parameter_counts(tmp_path, run_moe):
    base = dict(experts=4, top_k=2, d_model=16, d_ff=32, layers=1, steps=2, batch_tokens=64, val_tokens=64)
    _, a = run_moe(tmp_path, 1, out=tmp_path / "a.h5", **base)
    _, b = run_moe(tmp_path, 1, out=tmp_path / "b.h5", shared_experts=1, granularity=4, **base)
    fa, fb = metrics(a)["final"], metrics(b)["final"]
    D, F, E, K, M = 16, 32, 4, 2, 4
    expert = lambda f: 2 * D * f + f + D  # noqa: E731
    # 16 experts of F/4 (+1 shared) and a router of D x 16 instead of 4 experts of F.
    assert fb["params_total"] - fa["params_total"] == (D * E * M + (E * M + 1) * expert(F // M)) - (D * E + E * expert(F))
    assert fb["params_active"] - fa["params_active"] == (D * E * M + (K * M + 1) * expert(F // M)) - (D * E + K * expert(F))
    assert metrics(b)["gate_mass"].shape[1] == E * M


# (overrides, extra args, words the one error line must contain)
BAD = [
    ({}, ["--mixture-loss", "per-expert"], ["--mixture-loss", "per-expert", "dense", "topk"]),
    ({"--top-k": "1"}, ["--gate", "switch", "--mixture-loss", "global"], ["--mixture-loss", "switch"]),
    ({}, ["--gate", "dense", "--mixture-loss", "bogus"], ["--mixture-loss", "bogus"]),
    ({"--layers": "3"}, ["--gate", "dense", "--mixture-loss", "global", "--moe-every", "2"], ["last block", "--moe-every"]),
    ({}, ["--gate", "sparse"], ["--gate", "sparse"]),
    ({"--d-ff": "8"}, ["--granularity", "3"], ["--d-ff", "8", "--granularity", "3"]),
    ({}, ["--granularity", "0"], ["--granularity"]),
    ({}, ["--shared-experts", "-1"], ["--shared-experts"]),
    ({"--experts": "3", "--d-ff": "9"}, ["--granularity", "3", "--ep-size", "2"],
     ["--experts", "divisible", "granularity 3", "--ep-size (2)"]),
    ({"--top-k": "1"}, ["--gate", "switch", "--granularity", "2"], ["switch", "granularity"]),
]


@pytest.mark.parametrize("overrides,extra,mention", BAD, ids=[" ".join(b[1]) for b in BAD])
def test_bad_input(tmp_path, mpirun, overrides, extra, mention):
    args, out = build_args(tmp_path, overrides, extra)
    proc = mpirun(2, *args, timeout=TIMEOUT, env=QUICK_EXIT_ENV)
    check_rejected(proc, mention)
    assert_no_complete_run_file(out)
