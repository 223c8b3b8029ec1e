"""Writes the PyTorch reference for the MoE layer test (tests/mpi/test_torch_reference.cpp).

A straightforward PyTorch MoE layer in float64 (top-k softmax router, or with pre_softmax the
chosen experts' probabilities over all E logits (Megatron's pre-softmax), capacity in the
global (choice, token) order, GELU experts, Switch load-balancing loss) with autograd
gradients, for a few shapes. The C++ layer loads the same weights and inputs and must
reproduce the outputs and every gradient.

usage: python3 moe_torch_reference.py --out FILE.h5
"""
import argparse
import math

import h5py
import numpy as np
import torch
import torch.nn.functional as F

CASES = [
    # B tokens, D, F, E experts, K, capacity factor (0 = dropless), aux weight
    dict(B=48, D=6, F=5, E=4, K=1, capacity_factor=1.0, aux_loss_weight=0.01),
    dict(B=40, D=5, F=7, E=8, K=2, capacity_factor=0.75, aux_loss_weight=0.1),
    dict(B=36, D=4, F=6, E=4, K=2, capacity_factor=0.0, aux_loss_weight=0.0),
    dict(B=44, D=5, F=6, E=4, K=1, capacity_factor=1.0, aux_loss_weight=0.05, pre_softmax=1),
    dict(B=40, D=6, F=5, E=8, K=2, capacity_factor=0.75, aux_loss_weight=0.01, pre_softmax=1),
]


def moe_forward(x, router, w1, b1, w2, b2, K, capacity_factor, aux_loss_weight, pre_softmax=0):
    B, _ = x.shape
    E = router.shape[1]
    logits = x @ router
    probs = torch.softmax(logits, dim=-1)
    top_logits, top_idx = torch.topk(logits, K, dim=-1)
    gate = probs.gather(1, top_idx) if pre_softmax else torch.softmax(top_logits, dim=-1)
    cap = math.ceil(capacity_factor * B * K / E) if capacity_factor > 0 else None
    kept = np.ones((B, K), dtype=bool)
    used = np.zeros(E, dtype=np.int64)
    for j in range(K):  # first choices of every token before any second choice
        for t in range(B):
            e = int(top_idx[t, j])
            if cap is not None and used[e] >= cap:
                kept[t, j] = False
            else:
                used[e] += 1
    rows = []
    for t in range(B):
        acc = torch.zeros_like(x[t])
        for j in range(K):
            if kept[t, j]:
                e = int(top_idx[t, j])
                h = F.gelu(x[t] @ w1[e] + b1[e], approximate="tanh")
                acc = acc + gate[t, j] * (h @ w2[e] + b2[e])
        rows.append(acc)
    y = torch.stack(rows)
    f = torch.zeros(E, dtype=x.dtype)
    for e in top_idx.flatten().tolist():
        f[e] += 1.0 / (B * K)
    aux = E * torch.sum(f * probs.mean(dim=0))
    return y, aux, kept, used


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    with h5py.File(args.out, "w") as out:
        out.attrs["torch_version"] = str(torch.__version__)
        out.attrs["cases"] = len(CASES)
        for i, c in enumerate(CASES):
            B, D, Fh, E, K = c["B"], c["D"], c["F"], c["E"], c["K"]
            t = lambda *shape, s=1.0: torch.tensor(rng.normal(0, s, shape), dtype=torch.float64, requires_grad=True)
            x, dy = t(B, D), t(B, D)
            router = t(D, E, s=1.5)
            w1, b1 = t(E, D, Fh, s=1 / math.sqrt(D)), t(E, Fh, s=0.2)
            w2, b2 = t(E, Fh, D, s=1 / math.sqrt(Fh)), t(E, D, s=0.2)
            y, aux, kept, used = moe_forward(x, router, w1, b1, w2, b2, K,
                                             c["capacity_factor"], c["aux_loss_weight"],
                                             c.get("pre_softmax", 0))
            loss = (y * dy.detach()).sum() + c["aux_loss_weight"] * aux
            loss.backward()
            g = out.create_group(f"case{i}")
            for k, v in c.items():
                g.attrs[k] = v
            g.attrs["pre_softmax"] = int(c.get("pre_softmax", 0))
            g.attrs["aux_loss"] = float(aux)
            g.attrs["dropped"] = int((~kept).sum())
            for name, v in dict(x=x, dy=dy, router=router, w1=w1, b1=b1, w2=w2, b2=b2).items():
                g[name] = v.detach().numpy()
            g["y"] = y.detach().numpy()
            g["expert_tokens"] = used.astype(np.float64)
            for name, v in dict(dx=x, drouter=router, dw1=w1, db1=b1, dw2=w2, db2=b2).items():
                g[name] = v.grad.numpy()


if __name__ == "__main__":
    main()
