#!/usr/bin/env python3
"""Regenerates bench/RESULTS.md: every performance table, both figures and their ratio, with
the machine, the load average during the run, the date and the revision.

  python3 bench/results.py [--out bench/RESULTS.md] [--iters 10] [--skip-default-job]
                           [--stacking] [--json FILE]

Sections (each measured in this one run; ratios are what compare across runs):
  1. bench_moe_mpi on 1 and 2 ranks (build/default/bench): per shape, the MoE layer forward +
     backward, its expert GEMMs and the bare sgemm limit on the same products; per dispatch
     algorithm on 2 ranks, dispatch and combine against the primitive it uses on the same counts
     (MPI_Alltoallv; padded MPI_Alltoall; p2p its messages by bare MPI_Isend/Irecv): the MPI
     part once the ranks are synchronised, and the whole call.
  2. compare_torch_moe.py: the same layer in PyTorch in its best thread split on 1 and 2 cores.
  3. The default job (experiments/quick.sweep.ini on one rank per core as README's first command
     runs it, and on 4 ranks): shares
     of the step spent in the exchange's transfer, waiting for the slowest rank, and HDF5
     logging; peak resident memory per rank; and the largest harness shape as a `moesim moe`
     run on 2 ranks for its peak resident memory.
  4. With --stacking: bench/stack_vs_sklearn.py on 2 ranks (its data sets; the 200k x 50 one
     takes scikit-learn about an hour, keep --sklearn-cache between runs).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
from moesim_testing import mpiexec_prefix  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "default"
SHAPES = "64,256,8,2,4096;256,1024,8,2,4096;256,1024,64,2,4096;512,2048,16,1,2048;1024,4096,8,2,1024"
LARGEST = dict(d_model=1024, d_ff=4096, experts=8, top_k=2, batch_tokens=1024)
ALGORITHMS = ("alltoallv", "allgather", "p2p", "padded", "hierarchical")


def run(cmd, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, **kw)
    if p.returncode != 0:
        sys.exit(f"results: {' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                         text=True).stdout.strip() or "unknown"
    return dict(cpu=model, cores=os.cpu_count(), memory_gib=round(mem / 2**30, 1), os=platform.platform(),
                revision=rev, date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


# Each pairing of the experts or the layer with the bare GEMMs runs at least this long: the
# small shapes' fractions moved by +-0.02 between runs of 10 pairs.
PAIR_SECONDS = 2.0


def harness(P: int, iters: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        js = Path(tmp) / "h.jsonl"
        run(mpiexec_prefix() + ["-np", str(P), BUILD / "bench" / "bench_moe_mpi", "--shapes", SHAPES, "--iters", iters,
                                "--min-seconds", PAIR_SECONDS, "--json", js])
        return [json.loads(line) for line in js.read_text().splitlines()]


def shape_key(r) -> str:
    return f"{r['D']},{r['F']},{r['E']},{r['K']},{r['B']}"


def harness_tables(rows_by_p: dict) -> list[str]:
    out = ["## 1. MoE layer and exchange (bench_moe_mpi)", "",
           "Expert FLOPs are 12 B K D F per forward + backward (kept rows only). `sgemm limit`: the same six "
           "products as bare sgemm calls on each expert's own weights and gradient accumulators (one OpenBLAS "
           "thread per rank, all ranks at once), each expert's forward and backward back to back; `in layer "
           "order`: every expert's forward, then every backward (last expert first), as a step must run them (its weights and "
           "hidden rows come back from memory). A fraction is the limit's time over ours on the same FLOPs, "
           "the expert GEMMs timed in turn with the back-to-back limit, the layer in turn with each limit "
           "(medians over those pairs, at least `--iters` of them and as many as fill "
           f"{PAIR_SECONDS:g} s; the limits' columns: their pairs with the expert GEMMs and with the "
           "layer). Seconds: the slowest rank's median.", "",
           "| shape D,F,E,K,B | P | layer tokens/s | layer s | expert GEMMs s | sgemm limit s | "
           "sgemm limit in layer order s | expert GEMMs / sgemm | layer / sgemm | layer / sgemm in layer order |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for P, rows in rows_by_p.items():
        by = {}
        for r in rows:
            by.setdefault(shape_key(r), {})[r["what"]] = r
        for key, w in by.items():
            lay, exp, lim = w["layer fwd+bwd"], w["expert GEMMs fwd+bwd"], w["sgemm limit (6 GEMMs)"]
            # Each fraction against the bare GEMMs timed in turn with it (medians, paired).
            out.append(f"| {key} | {P} | {lay['tokens_per_s']:.0f} | {lay['max_s']:.5f} | {exp['max_s']:.5f} | "
                       f"{lim['max_s']:.5f} | {lay['layer_order_sgemm_max_s']:.5f} | "
                       f"{exp['sgemm_max_s'] / exp['max_s']:.2f} | {lay['sgemm_max_s'] / lay['max_s']:.2f} | "
                       f"{lay['layer_order_sgemm_max_s'] / lay['layer_order_pair_max_s']:.2f} |")
    out += ["", "Per component (P = 2), seconds of the slowest rank:", "",
            "| shape | router+topk | capacity | layout | permute | unpermute | plan (alltoallv) |",
            "|---|---|---|---|---|---|---|"]
    by = {}
    for r in rows_by_p.get(2, []):
        by.setdefault(shape_key(r), {})[r["what"]] = r["max_s"]
    for key, w in by.items():
        out.append(f"| {key} | {w['router+topk']:.6f} | {w['capacity']:.6f} | {w['layout (local)']:.6f} | "
                   f"{w['permute']:.6f} | {w['unpermute (gate-weighted)']:.6f} | {w['alltoallv plan (counts)']:.6f} |")
    out += ["", "Exchange on 2 ranks against the primitive each algorithm uses, on the same counts (a raw "
            "`MPI_Alltoallv` each way; padded: a raw `MPI_Alltoall` of its slots; p2p: its own messages by bare "
            "`MPI_Isend`/`MPI_Irecv`; hierarchical on one node: its intra stage is one `MPI_Alltoallv`), each call "
            "right after the raw "
            "primitive, medians over the pairs. Ratio = ours / raw. MPI: the "
            "transfer, the least time any rank spent inside MPI (the last to arrive waits for no one), per pair "
            "over the raw call's slowest rank; call: "
            "the whole dispatch or combine, permutation copies included, slowest rank:", "",
            "| shape | raw alltoallv s | " + " | ".join(f"{a} dispatch MPI / call" for a in ALGORITHMS) + " | " +
            " | ".join(f"{a} combine MPI / call" for a in ALGORITHMS) + " |",
            "|---|---|" + "---|" * (2 * len(ALGORITHMS))]
    by = {}
    for r in rows_by_p.get(2, []):
        by.setdefault(shape_key(r), {})[r["what"]] = r
    for key, w in by.items():
        raw = w["raw MPI_Alltoallv"]["max_s"]
        cells = []
        for verb in ("dispatch", "combine"):
            for a in ALGORITHMS:
                r = w[f"{a} {verb}"]
                base = r["raw_max_s"]
                cells.append(f"{r['mpi_over_raw']:.2f}x / {r['max_s'] / base:.2f}x")
        out.append(f"| {key} | {raw:.6f} | " + " | ".join(cells) + " |")
    out += ["", "Overlap probe on 2 ranks (point 4, Tutel-style pipelining): an `MPI_Ialltoallv` of the dispatch's "
            "counts under the experts' forward GEMMs (progressed by `MPI_Test` after each expert) against the two "
            "one after the other; perfect overlap would save the shorter of the two:", "",
            "| shape | raw alltoallv s | expert fwd GEMMs s | one after the other s | overlapped s | overlapped / "
            "sequential | perfect overlap / sequential |", "|---|---|---|---|---|---|---|"]
    for key, w in by.items():
        if "overlap: Ialltoallv under GEMMs" not in w:
            continue
        raw, gemm = w["raw MPI_Alltoallv"]["max_s"], w["overlap: expert fwd GEMMs"]["max_s"]
        seq, ovl = w["overlap: alltoallv then GEMMs"]["max_s"], w["overlap: Ialltoallv under GEMMs"]["max_s"]
        out.append(f"| {key} | {raw:.6f} | {gemm:.6f} | {seq:.6f} | {ovl:.6f} | {ovl / seq:.2f} | "
                   f"{(seq - min(raw, gemm)) / seq:.2f} |")
    return out


def torch_table(iters: int) -> tuple[list[str], dict]:
    with tempfile.TemporaryDirectory() as tmp:
        js = Path(tmp) / "t.json"
        run([sys.executable, ROOT / "bench" / "compare_torch_moe.py", "--cores", "1,2", "--iters", iters,
             "--json", js, "--bench", BUILD / "bench" / "bench_moe_mpi"])
        data = json.loads(js.read_text())
    out = ["## 2. Against PyTorch (compare_torch_moe.py)", "",
           f"Checked equal first: output rel. error {data['check']['y_rel_err']:.1e}, input gradient "
           f"{data['check']['dx_rel_err']:.1e}. Dropless, same GELU (tanh) and biases; PyTorch in its best "
           "split of intra-op x OpenBLAS threads on the same cores.", "",
           "| shape D,F,E,K,B | cores | moesim tokens/s | expert GFLOP/s | of sgemm | PyTorch tokens/s | "
           "PyTorch best | moesim / PyTorch |", "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        out.append(f"| {','.join(map(str, r['shape']))} | {r['cores']} | {r['moesim_tokens_per_s']:.0f} | "
                   f"{r['moesim_gflops']:.1f} | {r['sgemm_fraction']:.2f} | {r['torch_tokens_per_s']:.0f} | "
                   f"{r['torch_best']} | {r['ratio']:.2f}x |")
    return out, data


def default_ranks() -> int:
    """scripts/common.sh's DEFAULT_RANKS: one per core, 2 to 4 (MOESIM_RANKS overrides)."""
    if os.environ.get("MOESIM_RANKS"):
        return int(os.environ["MOESIM_RANKS"])
    return min(4, max(2, os.cpu_count() or 2))


def quick_sweep(ranks: int) -> dict:
    """The default job on `ranks` ranks: shares of the exchange and of logging, peak RSS."""
    import h5py
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp) / "quick"
        t0 = time.monotonic()
        run(mpiexec_prefix() + ["-np", str(ranks), BUILD / "src" / "moesim", "sweep",
                                ROOT / "experiments" / "quick.sweep.ini", "--out", out_dir])
        wall = time.monotonic() - t0
        sums = dict(step=0.0, a2a=0.0, wait=0.0, log=0.0, run_wall=0.0)
        rss = 0.0
        files = sorted(p for p in out_dir.glob("*.h5") if p.name != "sweep.h5")
        for p in files:
            with h5py.File(p, "r") as f:
                m = f["metrics"]
                sums["step"] += float(np.sum(m["step_seconds"][1:]))
                sums["a2a"] += float(np.sum(m["a2a_seconds"][1:]))
                sums["wait"] += float(np.sum(m["a2a_wait_seconds"][1:])) if "a2a_wait_seconds" in m else 0.0
                fin = f["final"].attrs
                sums["log"] += float(fin.get("logging_seconds", np.nan))
                sums["run_wall"] += float(fin["wall_seconds"])
                rss = max(rss, float(fin.get("peak_rss_bytes", np.nan)))
    return dict(ranks=ranks, runs=len(files), sweep_wall=wall, transfer_share=sums["a2a"] / sums["step"],
                wait_share=sums["wait"] / sums["step"], logging_share=sums["log"] / sums["run_wall"],
                peak_rss_mib=rss / 2**20)


def default_job() -> tuple[list[str], dict]:
    import h5py
    ranks = default_ranks()
    jobs = [quick_sweep(ranks)] + ([quick_sweep(4)] if ranks != 4 else [])
    with tempfile.TemporaryDirectory() as tmp:
        largest = Path(tmp) / "largest.h5"
        run(mpiexec_prefix() + ["-np", "2", BUILD / "src" / "moesim", "moe", "--quiet", "--steps", "20", "--val-tokens", "1024",
                           "--out", largest] + [w for k, v in LARGEST.items() for w in (f"--{k.replace('_', '-')}",
                                                                                         str(v))])
        with h5py.File(largest, "r") as f:
            rss_largest = float(f["final"].attrs.get("peak_rss_bytes", np.nan))
    d = dict(jobs=jobs, largest_peak_rss_mib=rss_largest / 2**20)
    out = ["## 3. The default job and memory", "",
           f"`moesim sweep experiments/quick.sweep.ini` as README's first command runs it ({ranks} ranks: one per "
           "core, 2 to 4) and on 4 ranks (more ranks than cores: the exchange then waits for the operating "
           "system's time slicing). Shares are sums over runs (steps after the first) of each metric over "
           "`step_seconds`; logging is `final/logging_seconds` over `final/wall_seconds` (default flush: every "
           "10 s).", "",
           "| ranks | runs | sweep s | exchange transfer | waiting for the slowest rank | transfer + wait | "
           "HDF5 logging | peak RSS per rank |", "|---|---|---|---|---|---|---|---|"]
    for j in jobs:
        out.append(f"| {j['ranks']} | {j['runs']} | {j['sweep_wall']:.0f} | {100 * j['transfer_share']:.1f}% | "
                   f"{100 * j['wait_share']:.1f}% | {100 * (j['transfer_share'] + j['wait_share']):.1f}% | "
                   f"{100 * j['logging_share']:.2f}% | {j['peak_rss_mib']:.0f} MiB |")
    out += ["", f"Largest shape's peak RSS per rank: {d['largest_peak_rss_mib']:.0f} MiB (`moesim moe` " +
            " ".join(f"--{k.replace('_', '-')} {v}" for k, v in LARGEST.items()) + " on 2 ranks, 20 steps)."]
    return out, d


def stacking_table() -> list[str]:
    p = run([sys.executable, ROOT / "bench" / "stack_vs_sklearn.py", "--ranks", "2", "--markdown"])
    return ["## 4. Stacking against scikit-learn (stack_vs_sklearn.py, 2 cores)", "", p.stdout.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--iters", type=int, default=10, help="timed iterations of the harnesses")
    ap.add_argument("--skip-default-job", action="store_true", help="leave out section 3 (about 5 minutes)")
    ap.add_argument("--stacking", action="store_true", help="add section 4 (long: see --help of stack_vs_sklearn)")
    ap.add_argument("--json", help="also write every figure here")
    args = ap.parse_args()
    for exe in (BUILD / "bench" / "bench_moe_mpi", BUILD / "src" / "moesim"):
        if not exe.exists():
            sys.exit(f"results: {exe} is missing; build first (cmake --preset default && cmake --build --preset default)")
    info = machine()
    load_before = os.getloadavg()
    t0 = time.monotonic()
    lines = ["# moesim performance results", "",
             "Generated by `python3 bench/results.py`; do not edit by hand.", ""]
    figures: dict = dict(machine=info)
    rows_by_p = {P: harness(P, args.iters) for P in (1, 2)}
    figures["harness"] = rows_by_p
    body = harness_tables(rows_by_p)
    t_lines, figures["torch"] = torch_table(args.iters)
    body += [""] + t_lines
    if not args.skip_default_job:
        d_lines, figures["default_job"] = default_job()
        body += [""] + d_lines
    if args.stacking:
        body += [""] + stacking_table()
    load_after = os.getloadavg()
    lines += [f"- date: {info['date']}", f"- revision: {info['revision']}",
              f"- machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, {info['os']}",
              f"- load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}",
              f"- took {time.monotonic() - t0:.0f} s", ""] + body + [""]
    Path(args.out).write_text("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
