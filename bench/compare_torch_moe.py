#!/usr/bin/env python3
"""moesim's MoE layer against the same layer in PyTorch, forward + backward, same cores.

The PyTorch layer is written as real code writes it: a bias-free router Linear, softmax, top-k
with the gate a softmax over the chosen logits, the Switch load-balancing loss, one module per
expert (Linear, GELU (tanh), Linear, both with biases), index_add to combine. Both are dropless
(capacity factor 0), so both do the same FLOPs. Before any timing, PyTorch's output and input
gradient are checked against moesim's on the same inputs and weights (bench_moe_mpi --dump).

moesim: `mpirun -np P bench_moe_mpi --capacity-factor 0` (one BLAS thread per rank; B/P tokens
per rank; the slowest rank's mean), which also gives the machine's limit: the same expert
GEMMs as bare sgemm calls on every rank at once. PyTorch on P cores: every split of intra-op
threads and OpenBLAS threads whose product is at most P is tried, each in its own process
(OpenBLAS reads its thread count at load), and the best is compared.

Prints, per shape and core count: tokens/s of each, GFLOP/s on the expert FLOPs (12 B K D F
per forward + backward), moesim's fraction of the sgemm limit, PyTorch's best setting and the
ratio moesim / PyTorch.

  python3 bench/compare_torch_moe.py [--cores 1,2] [--shapes "D,F,E,K,B;..."] [--iters 10]
                                     [--bench build/default/bench/bench_moe_mpi] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTING = Path(__file__).resolve().parent.parent / "tests" / "python"

SHAPES = "64,256,8,2,4096;256,1024,8,2,4096;256,1024,64,2,4096;512,2048,16,1,2048;1024,4096,8,2,1024"
CHECK_SHAPE = "32,64,8,2,256"


def parse_shapes(text: str) -> list[tuple[int, int, int, int, int]]:
    return [tuple(int(v) for v in s.split(",")) for s in text.split(";") if s]


# ---------------------------------------------------------------- the PyTorch layer (worker)

def build_torch_layer(torch, D, F, E, K):
    nn = torch.nn

    class Expert(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(D, F)
            self.fc2 = nn.Linear(F, D)

        def forward(self, x):
            return self.fc2(torch.nn.functional.gelu(self.fc1(x), approximate="tanh"))

    class MoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.router = nn.Linear(D, E, bias=False)
            self.experts = nn.ModuleList(Expert() for _ in range(E))

        def forward(self, x):
            logits = self.router(x)
            probs = torch.softmax(logits, dim=-1)
            top_logits, top_idx = logits.topk(K, dim=-1)
            gates = torch.softmax(top_logits, dim=-1)
            counts = torch.bincount(top_idx.flatten(), minlength=E).to(x.dtype)
            aux = E * (counts / counts.sum() * probs.mean(dim=0)).sum()
            y = torch.zeros_like(x)
            for e, expert in enumerate(self.experts):
                tok, slot = (top_idx == e).nonzero(as_tuple=True)
                if tok.numel():
                    y.index_add_(0, tok, expert(x[tok]) * gates[tok, slot].unsqueeze(1))
            return y, aux

    return MoE()


def torch_worker(args) -> int:
    """One PyTorch setting in this process: check against the dump, or time one shape."""
    import numpy as np
    import torch
    torch.set_num_threads(args.intra)
    torch.set_num_interop_threads(1)
    if args.check:
        import h5py
        with h5py.File(args.check, "r") as f:
            d = {k: np.asarray(f[k][()], dtype=np.float32) for k in f}
            K, w_aux = int(f.attrs["top_k"]), float(f.attrs["aux_loss_weight"])
        B, D = d["x"].shape
        E, F = d["b1"].shape
        layer = build_torch_layer(torch, D, F, E, K)
        with torch.no_grad():
            layer.router.weight.copy_(torch.from_numpy(d["router_w"]).T)
            for e, ex in enumerate(layer.experts):
                ex.fc1.weight.copy_(torch.from_numpy(d["w1"][e]).T)
                ex.fc1.bias.copy_(torch.from_numpy(d["b1"][e]))
                ex.fc2.weight.copy_(torch.from_numpy(d["w2"][e]).T)
                ex.fc2.bias.copy_(torch.from_numpy(d["b2"][e]))
        x = torch.from_numpy(d["x"]).requires_grad_(True)
        y, aux = layer(x)
        ((y * torch.from_numpy(d["dy"])).sum() + w_aux * aux).backward()
        ey = float(np.abs(y.detach().numpy() - d["y"]).max() / np.abs(d["y"]).max())
        edx = float(np.abs(x.grad.numpy() - d["dx"]).max() / np.abs(d["dx"]).max())
        print(json.dumps({"y_rel_err": ey, "dx_rel_err": edx}))
        return 0
    D, F, E, K, B = args.shape
    torch.manual_seed(1)
    layer = build_torch_layer(torch, D, F, E, K)
    x = torch.randn(B, D, requires_grad=True)
    dy = torch.randn(B, D)

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y, aux = layer(x)
        ((y * dy).sum() + 0.01 * aux).backward()

    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    seconds = (time.perf_counter() - t0) / args.iters
    print(json.dumps({"seconds": seconds}))
    return 0


def run_torch(shape, intra: int, blas: int, iters: int, warmup: int) -> float:
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(blas), OMP_NUM_THREADS=str(intra))
    cmd = [sys.executable, __file__, "--worker", "--intra", str(intra), "--shape", ",".join(map(str, shape)),
           "--iters", str(iters), "--warmup", str(warmup)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


# ---------------------------------------------------------------- moesim

def mpiexec_prefix() -> list[str]:
    # The tests' launcher, loaded only here: the PyTorch workers have no use for it.
    sys.path.insert(0, str(TESTING))
    from moesim_testing import mpiexec_prefix as prefix
    return prefix()


def run_moesim(bench: str, cores: int, shapes: str, iters: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        js = Path(tmp) / "r.jsonl"
        subprocess.run(mpiexec_prefix() + ["-np", str(cores), bench, "--shapes", shapes, "--capacity-factor", "0", "--iters", str(iters),
                                          "--warmup", str(warmup), "--json", str(js)],
                       check=True, capture_output=True, text=True)
        out = {}
        for line in js.read_text().splitlines():
            r = json.loads(line)
            if r["what"] == "layer fwd+bwd":
                out[(r["D"], r["F"], r["E"], r["K"], r["B"])] = r
        return out


def check_equal(bench: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "layer.h5"
        subprocess.run(mpiexec_prefix() + ["-np", "1", bench, "--shapes", CHECK_SHAPE, "--capacity-factor", "0", "--dump", str(dump)],
                       check=True, capture_output=True, text=True)
        out = subprocess.run([sys.executable, __file__, "--worker", "--check", str(dump)],
                             env=dict(os.environ, OPENBLAS_NUM_THREADS="1"), check=True, capture_output=True,
                             text=True).stdout
        err = json.loads(out.strip().splitlines()[-1])
    if err["y_rel_err"] > 1e-4 or err["dx_rel_err"] > 1e-4:
        sys.exit(f"compare_torch_moe: PyTorch's layer does not match moesim's: {err}")
    return err


def splits(cores: int) -> list[tuple[int, int]]:
    return [(i, b) for i in range(1, cores + 1) for b in range(1, cores + 1) if i * b <= cores or i == b == cores]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", default="1,2", help="core counts: moesim ranks, PyTorch threads (default 1,2)")
    ap.add_argument("--shapes", default=SHAPES, help="D,F,E,K,B;... (B global tokens)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--bench", default=str(Path(__file__).resolve().parent.parent / "build/default/bench/bench_moe_mpi"))
    ap.add_argument("--json", help="write the rows here")
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--intra", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--check", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        if args.shape:
            args.shape = tuple(int(v) for v in args.shape.split(","))
        return torch_worker(args)
    if not Path(args.bench).exists():
        sys.exit(f"compare_torch_moe: no {args.bench}; build the project first")

    err = check_equal(args.bench)
    print(f"PyTorch matches moesim on {CHECK_SHAPE}: y rel. error {err['y_rel_err']:.1e}, "
          f"dx rel. error {err['dx_rel_err']:.1e}")
    rows = []
    print(f"{'shape (D,F,E,K,B)':<22} {'cores':>5} {'moesim tok/s':>13} {'GFLOP/s':>8} {'of sgemm':>8} "
          f"{'torch tok/s':>12} {'torch best (intra x blas)':>26} {'moesim/torch':>12}")
    for cores in (int(c) for c in args.cores.split(",")):
        ours = run_moesim(args.bench, cores, args.shapes, args.iters, args.warmup)
        for shape in parse_shapes(args.shapes):
            D, F, E, K, B = shape
            r = ours[shape]
            flops = 12.0 * B * K * D * F
            tried = {f"{i}x{b}": run_torch(shape, i, b, args.iters, args.warmup) for i, b in splits(cores)}
            best = min(tried, key=tried.get)
            t_torch = tried[best]
            row = dict(shape=list(shape), cores=cores, moesim_tokens_per_s=B / r["max_s"],
                       moesim_gflops=flops / r["max_s"] / 1e9, sgemm_fraction=r["sgemm_max_s"] / r["max_s"],
                       torch_tokens_per_s=B / t_torch, torch_best=best, torch_tried=tried,
                       ratio=t_torch / r["max_s"])
            rows.append(row)
            print(f"{','.join(map(str, shape)):<22} {cores:>5} {row['moesim_tokens_per_s']:>13.0f} "
                  f"{row['moesim_gflops']:>8.1f} {row['sgemm_fraction']:>8.2f} {row['torch_tokens_per_s']:>12.0f} "
                  f"{best:>26} {row['ratio']:>11.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(check=err, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
