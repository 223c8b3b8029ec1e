"""Parameter and FLOP counts of moesim's model (a port of count_params in src/moe/model.cpp),
for evaluating a fitted law at model sizes that were not run."""
from __future__ import annotations

import numpy as np


def model_counts(d_model, d_ff, experts, top_k, *, layers=2, moe_every=1, d_in=16, d_out=1,
                 gate="topk"):
    """(params_total, params_active, flops_per_token); array arguments broadcast. The
    noisy-topk gate has a second router matrix (W_noise)."""
    D, F, E, K = (np.asarray(x, float) for x in (d_model, d_ff, experts, top_k))
    expert = 2 * D * F + F + D
    total = (d_in + 1) * D + D + (D + 1) * d_out
    active = total
    flops = 2 * d_in * D + 2 * D * d_out
    for l in range(int(layers)):
        total = total + D
        active = active + D
        if moe_every > 0 and (l + 1) % moe_every == 0:
            router = (2 if gate == "noisy-topk" else 1) * D * E
            total = total + router + E * expert
            active = active + router + K * expert
            flops = flops + 2 * router + K * 4 * D * F
        else:
            total = total + expert
            active = active + expert
            flops = flops + 4 * D * F
    return total, active, flops


def counts_of_run(row) -> tuple[float, float, float]:
    """model_counts for one row of a load_runs table (its options)."""
    d_out = int(row.get("classes", 4)) if row.get("problem") == "classification" else 1
    return model_counts(row["d_model"], row["d_ff"], row["experts"], row["top_k"],
                        layers=int(row.get("layers", 2)), moe_every=int(row.get("moe_every", 1)),
                        d_in=int(row.get("input_dim", 16)), d_out=d_out,
                        gate=row.get("gate", "topk"))
