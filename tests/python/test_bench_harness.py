"""The benchmark harnesses check before they time: bench_moe_mpi's correctness checks (every
dispatch algorithm's expert blocks == a raw MPI_Alltoallv of the same counts, combine returns
the rows unchanged) on 1, 2 and 4 ranks, its bad input, and compare_torch_moe's PyTorch layer
against moesim's on the same weights. Nothing here asserts a time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moesim_testing import mpiexec_prefix, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
ALGORITHMS = ("alltoallv", "allgather", "p2p", "padded")


@pytest.fixture(scope="module")
def bench():
    path = os.environ.get("MOESIM_BENCH_MOE_MPI")
    if not path or not Path(path).exists():
        pytest.skip("bench_moe_mpi not built (MOESIM_ENABLE_BENCHMARKS=OFF)")
    return path


def run_bench(bench, np_, *args, timeout=120):
    cmd = [*mpiexec_prefix(), "-np", str(np_), bench, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=subprocess_env())


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_every_figure_after_the_checks(bench, tmp_path, np_):
    js = tmp_path / "r.jsonl"
    # Dropping (capacity 1.0) and dropless; K = 1 and 2; an expert count of one per rank.
    shapes = "16,32,8,2,256;8,16,4,1,64"
    for cf in ("1.0", "0"):
        p = run_bench(bench, np_, "--shapes", shapes, "--iters", "1", "--exchange-iters", "1", "--warmup", "0",
                      "--capacity-factor", cf, "--json", str(js))
        assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in js.read_text().splitlines()]
    whats = {r["what"] for r in rows}
    for a in ALGORITHMS:
        assert {f"{a} dispatch", f"{a} combine", f"{a} plan (counts)"} <= whats
    assert {"raw MPI_Alltoallv", "expert GEMMs fwd+bwd", "sgemm limit (6 GEMMs)", "sgemm limit in layer order",
            "layer fwd+bwd"} <= whats
    # The layer against both limits, each from its own pairs (--iters of them).
    for r in rows:
        if r["what"] == "layer fwd+bwd":
            assert r["sgemm_max_s"] > 0 and r["layer_order_sgemm_max_s"] > 0 and r["layer_order_pair_max_s"] > 0
            assert r["pairs"] == 1
    # p2p against its own messages by bare MPI_Isend/Irecv, each way.
    assert {"raw MPI_Isend/Irecv (p2p messages)", "raw MPI_Isend/Irecv (p2p messages, back)"} <= whats
    # Two shapes at two capacity factors, every figure once each.
    assert len(rows) == 4 * len(whats)
    assert all(r["P"] == np_ and r["max_s"] >= r["min_s"] >= 0 for r in rows)


def test_min_seconds_adds_pairs_to_small_shapes(bench, tmp_path):
    # A pair of this shape takes well under 10 ms: 0.2 s of them is more than --iters 2,
    # the same count on every rank (it ran: a rank with fewer pairs would hang the others).
    js = tmp_path / "r.jsonl"
    p = run_bench(bench, 2, "--shapes", "16,32,4,2,128", "--iters", "2", "--exchange-iters", "1", "--warmup", "0",
                  "--min-seconds", "0.2", "--json", str(js))
    assert p.returncode == 0, p.stderr
    layer = [json.loads(line) for line in js.read_text().splitlines() if '"layer fwd+bwd"' in line]
    assert len(layer) == 1 and layer[0]["pairs"] > 2


def test_bad_shape_is_one_error_line(bench):
    p = run_bench(bench, 2, "--shapes", "16,32,8")
    assert p.returncode == 2
    errors = [line for line in p.stderr.splitlines() if "error:" in line]
    assert errors == ["bench_moe_mpi: error: --shapes: '16,32,8' is not D,F,E,K,B with 1 <= K <= E"], p.stderr
    p = run_bench(bench, 2, "--exchange-iters", "0")
    assert p.returncode == 2
    assert [line for line in p.stderr.splitlines() if "error:" in line] == [
        "bench_moe_mpi: error: --iters and --exchange-iters must be >= 1, --warmup and --min-seconds >= 0"], p.stderr
    p = run_bench(bench, 2, "--shapes", "16,32,3,1,64")
    assert p.returncode == 2 and "E must be divisible by the ranks" in p.stderr


def test_torch_layer_matches_before_timing(bench):
    p = subprocess.run([sys.executable, str(ROOT / "bench/compare_torch_moe.py"), "--bench", bench, "--cores", "1",
                        "--shapes", "16,32,4,2,128", "--iters", "1", "--warmup", "0"],
                       capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert p.returncode == 0, p.stderr
    line = p.stdout.splitlines()[0]
    assert line.startswith("PyTorch matches moesim"), p.stdout
    assert "16,32,4,2,128" in p.stdout
