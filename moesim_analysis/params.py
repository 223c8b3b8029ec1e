"""Parameter and FLOP counts of moesim's model.

A run's own counts are the ones it logged: `final/params_total`, `params_active` and
`flops_per_token` (docs/run-file.md, "Parameter counts and utilization"), read by
`logged_counts`. `model_counts` is a port of `count_params` (src/moe/model.cpp) for model sizes
that were not run (the iso-loss contours evaluate the fitted law on a grid of sizes), and the
fallback of `counts_of_run` for files that logged none; the tests check it against the logged
counts, shared experts, granularity, the lm task's vocabulary and the constant gate included.
"""
from __future__ import annotations

import os
from typing import Mapping, NamedTuple

import numpy as np

# Gates whose every token uses every expert (K' = E'), and the router matrices each gate
# trains: the constant gate has no router, noisy-topk a second matrix (W_noise).
ALL_EXPERT_GATES = {"dense", "constant"}
ROUTER_MATRICES = {"constant": 0, "noisy-topk": 2}
LM_VOCAB = 256  # the lm task's byte vocabulary (the run file's task/vocab)
COUNT_NAMES = ("params_total", "params_active", "flops_per_token")


class Counts(NamedTuple):
    params_total: float
    params_active: float
    flops_per_token: float


def model_counts(d_model, d_ff, experts, top_k, *, layers=2, moe_every=1, d_in=16, d_out=1,
                 gate="topk", shared_experts=0, granularity=1, vocab=0, embed_dim=0,
                 mixture=False) -> Counts:
    """(params_total, params_active, flops_per_token) of a model as `moesim moe` builds it;
    array arguments broadcast. `experts`, `top_k` and `d_ff` are the options as given: with
    granularity M an MoE layer runs E*M experts of width F/M, K*M of them per token (all of
    them for the dense and constant gates), plus `shared_experts` always-active ones of width
    F/M. Token tasks (`vocab` > 0, lm: `d_in` = the context C) embed C tokens in `embed_dim`
    each from a vocab x embed_dim table: all of it counts in params_total, the C rows a token
    looks up in params_active, none in the FLOPs. `mixture` (--mixture-loss) runs the head
    once per expert."""
    D, F, E, K = (np.asarray(x, float) for x in (d_model, d_ff, experts, top_k))
    M = float(granularity)
    S = float(shared_experts)
    Em, Fe = E * M, F / M
    Km = Em if gate in ALL_EXPERT_GATES else K * M
    adapter_in = d_in * embed_dim if vocab > 0 else d_in
    ffn = lambda width: 2 * D * width + width + D  # noqa: E731  (Ffn::param_count)
    dense, expert = ffn(F), ffn(Fe)
    total = (adapter_in + 1) * D + D + (D + 1) * d_out  # adapter, final norm, head
    active = total
    if vocab > 0:
        total = total + vocab * embed_dim
        active = active + d_in * embed_dim
    flops = 2 * adapter_in * D + 2 * D * d_out
    for l in range(int(layers)):
        total = total + D  # block norm
        active = active + D
        if moe_every > 0 and (l + 1) % moe_every == 0:
            router = ROUTER_MATRICES.get(gate, 1) * D * Em
            total = total + router + (Em + S) * expert
            active = active + router + (Km + S) * expert
            flops = flops + 2 * router + (Km + S) * 4 * D * Fe
        else:
            total = total + dense
            active = active + dense
            flops = flops + 4 * D * F
    if mixture:
        flops = flops + (Em - 1) * 2 * D * d_out
    return Counts(total, active, flops)


def _get(row, key, default):
    value = row.get(key, default) if hasattr(row, "get") else default
    try:
        if value is None or (np.ndim(value) == 0 and isinstance(value, float) and np.isnan(value)):
            return default
    except TypeError:
        pass
    return value


def derive_counts(row: Mapping) -> Counts:
    """model_counts from the options of one row of a load_runs table (or any mapping of
    option names to values; d_model, d_ff, experts and top_k may be arrays)."""
    task = _get(row, "task", "regimes")
    problem = _get(row, "problem", "regression")
    if task == "lm":
        vocab = int(_get(row, "vocab", LM_VOCAB))
        d_in, d_out, embed = int(_get(row, "context", 16)), vocab, int(_get(row, "embed_dim", 16))
    else:
        vocab, embed = 0, 0
        d_in = int(_get(row, "input_dim", 16))
        d_out = int(_get(row, "classes", 4)) if problem == "classification" else 1
    return model_counts(row["d_model"], row["d_ff"], row["experts"], row["top_k"],
                        layers=int(_get(row, "layers", 2)), moe_every=int(_get(row, "moe_every", 1)),
                        d_in=d_in, d_out=d_out, gate=str(_get(row, "gate", "topk")),
                        shared_experts=int(_get(row, "shared_experts", 0)),
                        granularity=int(_get(row, "granularity", 1)), vocab=vocab,
                        embed_dim=embed, mixture=str(_get(row, "mixture_loss", "none")) != "none")


def logged_counts(run) -> Counts:
    """The counts a run logged in its `final` attributes: `run` is a run file's path, or a row
    of a load_runs table (or a mapping holding params_total, params_active, flops_per_token).
    KeyError when they are absent (a failed, stopped or invalid run)."""
    if isinstance(run, (str, os.PathLike)):
        from .load import read_attrs
        final = read_attrs(run, "final") if _has_final(run) else {}
        missing = [k for k in COUNT_NAMES if k not in final]
        if missing:
            raise KeyError(f"{run}: no final/{missing[0]} (not a complete moe run file)")
        return Counts(*(float(final[k]) for k in COUNT_NAMES))
    values = [_get(run, k, None) for k in COUNT_NAMES]
    if any(v is None for v in values):
        raise KeyError(f"no logged {COUNT_NAMES[[v is None for v in values].index(True)]}")
    return Counts(*(float(v) for v in values))


def _has_final(path) -> bool:
    from .load import open_h5
    with open_h5(path) as f:
        return "final" in f


def counts_of_run(row) -> Counts:
    """A run's counts: the logged ones (`logged_counts`), else (files that logged none)
    derived from its options (`derive_counts`)."""
    try:
        return logged_counts(row)
    except KeyError:
        if isinstance(row, (str, os.PathLike)):
            from .load import read_attrs
            row = read_attrs(row)
        return derive_counts(row)
