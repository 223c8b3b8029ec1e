"""The teacher and lm tasks end to end: real mpirun, run files read back with h5py.

lm trains on the default corpus (Debian's `fortunes`, installed by scripts/setup.sh) and on
a file given by --data; teacher learns a random MoE. Both must give the same results on 1,
2 and 4 ranks, and bad data must be rejected on every rank before a run file exists.
"""
from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from moesim_testing import QUICK_EXIT_ENV, REPO_ROOT, error_lines, run_mpi

DEFAULT_CORPUS = Path("/usr/share/games/fortunes")
RANKS = (1, 2, 4)
LM = dict(task="lm", experts=4, top_k=2, d_model=32, d_ff=64, layers=2, context=8, embed_dim=8,
          batch_tokens=256, val_tokens=1024, lr=1e-2, seed=3)
TEACHER = dict(task="teacher", experts=4, top_k=1, gate="switch", d_model=32, d_ff=32, layers=1,
               input_dim=8, teacher_experts=4, teacher_top_k=1, batch_tokens=256,
               val_tokens=2048, lr=1e-2, seed=5, teacher_seed=11, capacity_factor=0)


def read(path):
    with h5py.File(path, "r") as f:
        assert f.attrs["complete"] == 1
        out = {name: f["metrics"][name][()] for name in f["metrics"]}
        out["final"] = dict(f["final"].attrs)
        out["task"] = dict(f["task"].attrs)
        if "routing_recovery" in f:
            out["recovery"] = {k: f["routing_recovery"][k][()] for k in f["routing_recovery"]}
        return out


def text_files(directory: Path):
    files = []
    for p in sorted(directory.iterdir()):
        if p.is_symlink() or not p.is_file():
            continue
        with open(p, "rb") as fh:
            if b"\0" in fh.read(4096):
                continue
        files.append(p)
    return files


@pytest.fixture(scope="module")
def corpus_present():
    if not DEFAULT_CORPUS.is_dir():
        pytest.fail(f"{DEFAULT_CORPUS} is missing: scripts/setup.sh installs the Debian package fortunes")


def test_lm_learns_the_default_corpus(tmp_path, run_moe, corpus_present):
    _, path = run_moe(tmp_path, 2, steps=80, **LM)
    r = read(path)
    uniform = math.log(256)
    loss = r["train_loss"]
    # An untrained head gives about uniform bytes (its random logits add a little).
    assert loss[0] > 0.9 * uniform, f"first step loss {loss[0]} should be near log 256 = {uniform}"
    fin = r["final"]
    # Well below the uniform byte model within 80 steps, and close to the training loss.
    assert fin["val_loss"] < 0.7 * uniform, fin
    assert np.mean(loss[-10:]) < 0.7 * uniform
    assert fin["val_bits_per_byte"] == pytest.approx(fin["val_loss"] / math.log(2), rel=1e-12)
    assert fin["train_bits_per_byte"] == pytest.approx(fin["train_loss"] / math.log(2), rel=1e-12)
    task = r["task"]
    files = text_files(DEFAULT_CORPUS)
    assert task["name"] == "lm" and task["vocab"] == 256
    assert task["corpus"] == str(DEFAULT_CORPUS)
    assert task["corpus_files"] == len(files)
    assert task["corpus_bytes"] == sum(p.stat().st_size for p in files)
    assert task["train_bytes"] + task["val_bytes"] == task["corpus_bytes"]
    assert task["val_bytes"] == math.ceil(0.1 * task["corpus_bytes"])
    assert "routing_recovery" not in r  # text has no known sources
    # Better than the best context-free model: the training split's byte frequencies
    # (add-one smoothed) scored on the validation split.
    text = np.frombuffer(b"".join(p.read_bytes() for p in files), dtype=np.uint8)
    split = task["train_bytes"]
    freq = np.bincount(text[:split], minlength=256) + 1.0
    unigram_bits = float(-np.mean(np.log2(freq / freq.sum())[text[split:]]))
    assert fin["val_bits_per_byte"] < unigram_bits - 0.3, (fin["val_bits_per_byte"], unigram_bits)


def test_lm_rank_invariance_and_data_file(tmp_path, run_moe, corpus_present):
    # A file of our own: the first 200 kB of the corpus's largest text.
    src = max(text_files(DEFAULT_CORPUS), key=lambda p: p.stat().st_size)
    data = tmp_path / "text.txt"
    data.write_bytes(src.read_bytes()[:200_000])
    runs = {}
    for p in RANKS:
        _, path = run_moe(tmp_path, p, steps=8, precision="fp64", data=data, val_fraction=0.25,
                          capacity_factor=1.0, out=tmp_path / f"lm_np{p}.h5", **LM)
        runs[p] = read(path)
    assert runs[1]["task"]["corpus_bytes"] == 200_000
    assert runs[1]["task"]["val_bytes"] == 50_000
    for p in RANKS[1:]:
        np.testing.assert_allclose(runs[p]["train_loss"], runs[1]["train_loss"], rtol=1e-10, atol=0)
        np.testing.assert_array_equal(runs[p]["expert_tokens"], runs[1]["expert_tokens"])
        assert runs[p]["final"]["val_loss"] == pytest.approx(runs[1]["final"]["val_loss"], rel=1e-10)
        assert runs[p]["final"]["val_bits_per_byte"] == pytest.approx(
            runs[1]["final"]["val_bits_per_byte"], rel=1e-10)


@pytest.fixture(scope="module")
def teacher_runs(tmp_path_factory, run_moe):
    d = tmp_path_factory.mktemp("teacher")
    runs = {}
    for p in RANKS:
        _, path = run_moe(d, p, steps=60, precision="fp64", out=d / f"teacher_np{p}.h5", **TEACHER)
        runs[p] = read(path)
    # The same student before training: its router is a random linear partition.
    _, path = run_moe(d, 1, steps=1, precision="fp64", out=d / "teacher_untrained.h5", **TEACHER)
    runs["untrained"] = read(path)
    return runs


def test_teacher_student_loss_falls(teacher_runs):
    r = teacher_runs[1]
    loss = r["train_loss"]
    assert np.mean(loss[-5:]) < 0.3 * np.mean(loss[:5]), loss
    assert r["final"]["val_loss"] < 0.3 * loss[0]
    assert r["task"]["name"] == "teacher"


def test_teacher_routing_recovery_is_logged_and_consistent(teacher_runs):
    r = teacher_runs[1]
    rec, fin = r["recovery"], r["final"]
    counts = rec["counts"]
    assert counts.shape == (1, TEACHER["experts"], TEACHER["teacher_experts"])
    assert counts.sum() == TEACHER["val_tokens"]
    # Recompute the metrics from the counts.
    n = counts[0].astype(np.float64)
    N = n.sum()
    ps, pc, pj = n.sum(1) / N, n.sum(0) / N, n / N
    nz = pj > 0
    mi = float(np.sum(pj[nz] * np.log(pj[nz] / np.outer(ps, pc)[nz])))
    hs = -float(np.sum(ps[ps > 0] * np.log(ps[ps > 0])))
    hc = -float(np.sum(pc[pc > 0] * np.log(pc[pc > 0])))
    assert fin["val_routing_mi"] == pytest.approx(mi, rel=1e-9, abs=1e-12)
    assert fin["val_routing_nmi"] == pytest.approx(mi / math.sqrt(hs * hc), rel=1e-9, abs=1e-12)
    assert fin["val_routing_purity"] == pytest.approx(n.max(1).sum() / N, rel=1e-12)
    assert fin["val_routing_layer"] == 0
    np.testing.assert_allclose(rec["mutual_info"], [mi], rtol=1e-9, atol=1e-12)
    # Training makes the student's routing recover the teacher's experts (measured: NMI 0.06
    # untrained, 0.39 after 60 steps).
    untrained = teacher_runs["untrained"]["final"]
    assert fin["val_routing_nmi"] > untrained["val_routing_nmi"] + 0.2, (fin, untrained)
    assert fin["val_routing_purity"] > untrained["val_routing_purity"] + 0.1, (fin, untrained)


def test_teacher_rank_invariance(teacher_runs):
    for p in RANKS[1:]:
        np.testing.assert_allclose(teacher_runs[p]["train_loss"], teacher_runs[1]["train_loss"],
                                   rtol=1e-10, atol=0)
        np.testing.assert_array_equal(teacher_runs[p]["expert_tokens"], teacher_runs[1]["expert_tokens"])
        np.testing.assert_array_equal(teacher_runs[p]["recovery"]["counts"],
                                      teacher_runs[1]["recovery"]["counts"])
        assert teacher_runs[p]["final"]["val_routing_nmi"] == teacher_runs[1]["final"]["val_routing_nmi"]


def test_teacher_classification(tmp_path, run_moe):
    _, path = run_moe(tmp_path, 2, steps=30, problem="classification", classes=3,
                      **{**TEACHER, "val_tokens": 512})
    r = read(path)
    assert 0 <= r["final"]["val_accuracy"] <= 1
    assert r["final"]["val_accuracy"] > 1 / 3 + 0.1
    assert r["recovery"]["counts"].sum() == 512


def _rejected(proc, out, words):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not Path(out).exists(), "no run file may be created for bad data"


@pytest.mark.parametrize("case", ["missing", "empty", "short", "context0", "directory", "binary-file"])
def test_lm_bad_data_is_rejected_on_every_rank(tmp_path, case):
    data = tmp_path / "text.txt"
    extra = []
    words = []
    if case == "missing":
        words = ["does not exist", str(data)]
    elif case == "empty":
        data.write_bytes(b"")
        words = ["is empty"]
    elif case == "short":
        data.write_bytes(b"0123456789")
        words = ["too short", "--context 8"]
    elif case == "context0":
        data.write_bytes(b"hello world " * 100)
        extra = ["--context", "0"]
        words = ["--context must be >= 1"]
    elif case == "binary-file":  # named directly it was trained on, once; a directory skips it
        data = tmp_path / "model.h5"
        data.write_bytes(b"\x89HDF\r\n\x1a\n\0\0\0\0" + b"abc" * 400)
        words = ["is not a text file", str(data)]
    else:
        data = tmp_path / "bin"
        data.mkdir()
        (data / "x.dat").write_bytes(b"\0\0\0\2")
        words = ["without text files"]
    out = tmp_path / "run.h5"
    args = ["moe", "--task", "lm", "--data", str(data), "--experts", "2", "--steps", "2",
            "--batch-tokens", "32", "--val-tokens", "32", "--quiet", "--out", str(out)]
    if not extra:
        args += ["--context", "8"]
    proc = run_mpi(2, *args, *extra, timeout=30, env=QUICK_EXIT_ENV)
    _rejected(proc, out, words)


def test_teacher_bad_options_are_rejected(tmp_path):
    out = tmp_path / "run.h5"
    proc = run_mpi(2, "moe", "--task", "teacher", "--teacher-experts", "2", "--teacher-top-k", "3",
                   "--experts", "2", "--quiet", "--out", str(out), timeout=30, env=QUICK_EXIT_ENV)
    _rejected(proc, out, ["--teacher-top-k"])


@pytest.mark.parametrize("name", ["lm", "teacher"])
def test_experiment_configs_run(tmp_path, name, corpus_present):
    cfg = REPO_ROOT / "experiments" / f"{name}.ini"
    out = tmp_path / f"{name}.h5"
    run_mpi(2, "moe", "--config", cfg, "--steps", "3", "--val-tokens", "256", "--quiet",
            "--out", out, check=True, timeout=120)
    with h5py.File(out, "r") as f:
        assert f.attrs["complete"] == 1
        assert f.attrs["task"] == name
        assert f["task"].attrs["name"] == name
        if name == "lm":
            assert "val_bits_per_byte" in f["final"].attrs
        else:
            assert "val_routing_nmi" in f["final"].attrs


def test_lm_experts_sweep_lists_its_grid(tmp_path, moesim_direct):
    proc = moesim_direct("sweep", REPO_ROOT / "experiments" / "lm_experts.sweep.ini",
                         "--out", tmp_path / "sweep", "--list", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("8 points (command moe)")
    assert sum("pending" in line for line in proc.stdout.splitlines()) == 8
