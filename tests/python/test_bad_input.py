"""Bad input: exit code 2, one `moesim moe: error: ...` line from rank 0, no complete run file."""
from __future__ import annotations

import h5py
import pytest

from moesim_testing import QUICK_EXIT_ENV, assert_no_complete_run_file, check_rejected, error_lines

TIMEOUT = 30  # a bad option must be rejected quickly, not hang in a collective

# Small valid defaults; each case replaces some of them (boost rejects repeated options).
BASE = {"--experts": "4", "--top-k": "2", "--d-model": "8", "--d-ff": "8", "--layers": "1",
        "--steps": "3", "--batch-tokens": "64", "--val-tokens": "64"}


def build_args(tmp_path, overrides: dict, extra: list[str]) -> tuple[list[str], object]:
    opts = dict(BASE)
    opts["--out"] = str(tmp_path / "bad.h5")
    opts.update(overrides)
    args = ["moe", "--quiet"]
    for k, v in opts.items():
        args += [k, v]
    return args + extra, opts["--out"]


def _write_unknown_key_config(tmp_path):
    p = tmp_path / "unknown_key.ini"
    p.write_text("experts = 4\nbogus-key = 3\n")
    return str(p)


# (id, overrides of BASE, extra args, words the error line must contain)
CASES = [
    ("top-k>experts", {"--top-k": "5", "--experts": "4"}, [], ["--top-k", "5", "4"]),
    ("experts-not-divisible", {"--experts": "3"}, ["--ep-size", "2"], ["--experts", "3", "divisible", "--ep-size"]),
    ("ep-size-not-dividing-ranks", {}, ["--ep-size", "4"], ["--ep-size", "4", "ranks (2)"]),
    ("d-model-zero", {"--d-model": "0"}, [], ["--d-model"]),
    ("steps-negative", {"--steps": "-1"}, [], ["--steps", "-1"]),
    ("batch-tokens-zero", {"--batch-tokens": "0"}, [], ["--batch-tokens"]),
    ("unwritable-out", {"--out": "/proc/forbidden/x.h5"}, [], ["/proc/forbidden"]),
    ("unknown-option", {}, ["--no-such-option", "1"], ["--no-such-option"]),
    ("missing-config", {}, ["--config", "@TMP@/does_not_exist.ini"], ["does_not_exist.ini"]),
    ("config-unknown-key", {}, ["--config", "@UNKNOWN_KEY_CONFIG@"], ["bogus-key"]),
    ("lr-nan", {}, ["--lr", "nan"], ["--lr"]),
    ("lr-negative", {}, ["--lr", "-0.1"], ["--lr"]),
    ("task-unknown", {}, ["--task", "nonsense"], ["nonsense"]),
    ("experts-non-numeric", {"--experts": "four"}, [], ["--experts", "four"]),
    ("precision-unknown", {}, ["--precision", "fp16"], ["--precision", "fp16"]),
    ("device-unknown", {}, ["--device", "gpu"], ["--device must be cpu or cuda", "gpu"]),
    ("device-cuda-fp64", {}, ["--device", "cuda", "--precision", "fp64"], ["--device cuda runs fp32", "fp64"]),
    # Words that belong to no option were dropped (the run trained E = 8 and ignored 16).
    ("stray-word", {"--experts": "8"}, ["16"], ["unexpected argument '16'", "comma-separated"]),
    ("config-directory", {}, ["--config", "@TMP@"], ["is a directory"]),
    # Counts beyond an int were cut silently (4294967300 trained E = 4 and recorded 4294967300).
    ("experts-beyond-int", {"--experts": "4294967300"}, [], ["--experts", "<= 1048576", "4294967300"]),
    # Found only at the first checkpoint, after the run's work, once.
    ("unwritable-checkpoint", {}, ["--checkpoint", "/proc/forbidden/c.h5"], ["--checkpoint", "/proc/forbidden/c.h5"]),
]


@pytest.mark.parametrize("overrides,extra,mention", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_two_ranks(tmp_path, mpirun, overrides, extra, mention):
    extra = [e.replace("@TMP@", str(tmp_path)) for e in extra]
    if "@UNKNOWN_KEY_CONFIG@" in extra:
        extra = [_write_unknown_key_config(tmp_path) if e == "@UNKNOWN_KEY_CONFIG@" else e
                 for e in extra]
    args, out = build_args(tmp_path, overrides, extra)
    proc = mpirun(2, *args, timeout=TIMEOUT, env=QUICK_EXIT_ENV)
    check_rejected(proc, mention)
    assert_no_complete_run_file(out)


def test_bad_input_single_rank_without_launcher(tmp_path, moesim_direct):
    args, out = build_args(tmp_path, {"--top-k": "5", "--experts": "4"}, [])
    proc = moesim_direct(*args, timeout=TIMEOUT, env=QUICK_EXIT_ENV)
    check_rejected(proc, ["--top-k"])
    # Without mpirun there is nothing else on stderr: exactly one line.
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == ""
    assert_no_complete_run_file(out)


def test_bad_input_single_rank_mpirun(tmp_path, mpirun):
    args, out = build_args(tmp_path, {"--batch-tokens": "0"}, [])
    proc = mpirun(1, *args, timeout=TIMEOUT, env=QUICK_EXIT_ENV)
    check_rejected(proc, ["--batch-tokens"])
    assert_no_complete_run_file(out)


def test_divisibility_depends_on_rank_count(tmp_path, mpirun):
    """--ep-size 2 is fine on two ranks; it is the rank count that makes it wrong on one.
    --experts 3 runs on any rank count with the default --ep-size gcd(E, P)."""
    args, out = build_args(tmp_path, {"--experts": "4"}, ["--ep-size", "2"])
    proc = mpirun(2, *args, timeout=TIMEOUT, env=QUICK_EXIT_ENV)
    assert proc.returncode == 0, proc.stderr
    proc = mpirun(1, *args, timeout=TIMEOUT, env=QUICK_EXIT_ENV)
    check_rejected(proc, ["--ep-size", "2", "ranks (1)"])
    args, out = build_args(tmp_path, {"--experts": "3"}, [])
    proc = mpirun(2, *args, timeout=TIMEOUT, env=QUICK_EXIT_ENV)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out, "r") as f:
        assert f.attrs["complete"] == 1 and f.attrs["effective_ep_size"] == 1


def test_error_does_not_clobber_existing_run_file(tmp_path, mpirun, run_moe):
    """Validation happens before the run file is created: a bad option keeps an old result."""
    _, path = run_moe(tmp_path, 2, steps=2)
    args, _ = build_args(tmp_path, {"--out": str(path), "--d-model": "0"}, [])
    proc = mpirun(2, *args, timeout=TIMEOUT, env=QUICK_EXIT_ENV)
    check_rejected(proc, ["--d-model"])
    with h5py.File(path, "r") as f:
        assert f.attrs["complete"] == 1
        assert f["metrics/step"].shape == (2,)


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("gpu_option", [["--device", "cuda"], ["--dispatch", "nccl"]], ids=["device", "dispatch"])
def test_gpu_options_without_a_gpu(tmp_path, mpirun, ranks, gpu_option):
    """Where no GPU answers (or CUDA was not built), the GPU path is one error line saying why,
    exit 2 on every rank, before any run file."""
    info = mpirun(1, "info", timeout=TIMEOUT).stdout
    if "GPUs           none" not in info and "CUDA           not built" not in info:
        pytest.skip("a GPU answers here: bench/gpu_check.sh tests the GPU path")
    args, out = build_args(tmp_path, {}, gpu_option)
    proc = mpirun(ranks, *args, timeout=TIMEOUT, env=QUICK_EXIT_ENV)
    why = "built without CUDA" if "CUDA           not built" in info else "no CUDA device answers"
    check_rejected(proc, [gpu_option[0], why])
    assert_no_complete_run_file(out)
    assert not (tmp_path / "bad.h5").exists()


def test_unknown_command(mpirun):
    proc = mpirun(2, "frobnicate", timeout=TIMEOUT, env=QUICK_EXIT_ENV)
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "frobnicate" in lines[0], proc.stderr


def test_huge_capacity_factor_drops_nothing(tmp_path, run_moe):
    """--capacity-factor 1e18 overflowed the capacity's cast to 1 and dropped 98% of tokens."""
    _, out = run_moe(tmp_path, 2, capacity_factor=1e18, experts=4, top_k=1, steps=3)
    with h5py.File(out, "r") as f:
        assert f.attrs["complete"] == 1
        assert float(f["metrics/dropped_fraction"][()].max()) == 0.0


def test_a_loss_grown_by_orders_of_magnitude_stops_the_run(tmp_path, mpirun):
    """--lr 1e3 in fp64 stays finite (train loss 5 -> 1e14, validation 5e11) and was marked
    complete; it is a divergence: one error line naming the step, exit 2, complete = 0."""
    args, out = build_args(tmp_path, {"--experts": "4", "--d-model": "16", "--d-ff": "32", "--batch-tokens": "256",
                                      "--steps": "20"}, ["--lr", "1e3", "--precision", "fp64"])
    proc = mpirun(2, *args, timeout=60, env=QUICK_EXIT_ENV)
    check_rejected(proc, ["training diverged at step 2", "times the first step's", "--lr"])
    assert_no_complete_run_file(out)
