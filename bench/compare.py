"""Runs bench_moe and bench_stack and prints each fast path as a speed ratio against its baseline
measured in the same run (items per second; machines here are shared and noisy,
so ratios, not absolute times, are what compare across runs).

usage: python3 bench/compare.py [--bench BIN ...] [--filter REGEX] [--repetitions N]
(items: tokens for the MoE paths, queries for KNN)
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys

PAIRS = [
    ("BM_ExpertBlockGemm", "BM_ExpertTokenByToken", "expert FFN: contiguous block GEMM vs token by token"),
    ("BM_MoeLayerFwdBwd", "BM_ReferenceMoeFwdBwd", "MoE layer fwd+bwd: fast layer vs serial reference"),
    ("BM_RouterFwdBwd", "BM_RouterLoopsFwdBwd", "router fwd+bwd: sixteen-token lanes vs one-token loops"),
    ("BM_KnnPredictFloatGemm", "BM_KnnPredictDoubleGemm", "KNN predict: float vs double distance GEMM"),
    ("BM_KnnPredictFused", "BM_KnnPredictFloatGemm", "KNN predict: fused screen vs float distance GEMM"),
    ("BM_KnnPredictFusedBf16", "BM_KnnPredictFused", "KNN predict: bf16 vs float fused screen"),
]


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", action="append", default=None,
                    help="benchmark binary (repeatable; default: bench_moe and bench_stack)")
    ap.add_argument("--filter", default=None, help="--benchmark_filter regex")
    ap.add_argument("--repetitions", type=int, default=3)
    args = ap.parse_args()
    benches = args.bench or [str(root / "build/default/bench" / b) for b in ("bench_moe", "bench_stack")]
    samples = {}
    for bench in benches:
        cmd = [bench, "--benchmark_format=json", f"--benchmark_repetitions={args.repetitions}"]
        if args.filter:
            cmd.append(f"--benchmark_filter={args.filter}")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        for b in json.loads(out)["benchmarks"]:
            if b.get("run_type") == "iteration":
                samples.setdefault(b["run_name"], []).append(b["items_per_second"])
    rows = {name: statistics.median(v) for name, v in samples.items()}
    print(f"{'comparison':<55} {'shape':<22} {'fast item/s':>12} {'base item/s':>12} {'ratio':>8}")
    for fast, base, label in PAIRS:
        for name, rate in rows.items():
            if not name.startswith(fast + "/"):
                continue
            shape = name[len(fast) + 1:]
            base_rate = rows.get(f"{base}/{shape}")
            if base_rate:
                print(f"{label:<55} {shape:<22} {rate:>12.4g} {base_rate:>12.4g} {rate / base_rate:>7.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
