"""Command-line behaviour: `moesim info` and `--version`, `moesim moe --help` (groups, defaults
as written), unknown options and commands (a suggestion, exit 2), config files, progress output.
Megatron-LM's option names: test_cli_aliases.py."""
from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

from moesim_testing import QUICK_EXIT_ENV, check_rejected, error_lines, root_attrs

# Options the run-file contract and the docs talk about; all must be in --help.
CONTRACT_OPTIONS = ["experts", "top-k", "d-model", "d-ff", "layers", "moe-every", "steps",
                    "batch-tokens", "lr", "seed", "capacity-factor", "task", "problem", "classes",
                    "precision", "input-dim", "val-tokens", "eval-every", "out", "flush-every",
                    "progress-interval", "aux-loss-weight", "weight-decay", "grad-clip"]
FLAG_OPTIONS = ["config", "quiet", "help"]

# step | loss | [val, once a validation has run] | aux | dropped | tok/s (smoothed) | elapsed | left
PROGRESS_RE = re.compile(
    r"^step (\d+)/(\d+) \| loss ([0-9.]+) \| (?:val ([0-9.]+) \| )?aux .*\| ([0-9.]+)k tok/s \(smoothed ([0-9.]+)k\) "
    r"\| [0-9:]+ elapsed \| [0-9:]+ left$")


def progress_lines(stdout):
    return [PROGRESS_RE.match(line) for line in stdout.splitlines() if line.startswith("step ")]


# --------------------------------------------------------------------------- info


def test_info_reports_libraries(mpirun):
    proc = mpirun(2, "info", check=True)
    out = proc.stdout
    assert re.search(r"^moesim \d+\.\d+\.\d+", out, re.M), out
    assert re.search(r"git revision\s+\S+", out)
    assert re.search(r"compiler\s+\S+", out)
    mpi = [line for line in out.splitlines() if line.strip().startswith("MPI")]
    assert mpi, out
    hdf5 = [line for line in out.splitlines() if line.strip().startswith("HDF5")]
    assert hdf5 and "parallel" in hdf5[0], out
    assert re.search(r"^\s*BLAS\s+\S+", out, re.M)
    # The GPU path: built (runtime, driver or its absence, NCCL's version, the GPUs or why none) or not.
    cuda = re.search(r"^\s*CUDA\s+(.*)$", out, re.M).group(1)
    nccl = re.search(r"^\s*NCCL\s+(.*)$", out, re.M).group(1)
    if cuda != "not built":
        assert re.fullmatch(r"built, runtime \d+\.\d+, driver (\d+\.\d+|none \(no driver answers\))", cuda), cuda
        assert re.fullmatch(r"built, \d+\.\d+\.\d+", nccl), nccl
        assert re.search(r"^\s*GPUs\s+(\d+ \(.+\)|none: .+)$", out, re.M), out
    else:
        assert nccl == "not built", out
    # Printed once (rank 0), and it knows the rank count of this run.
    assert len(re.findall(r"^moesim \d", out, re.M)) == 1
    assert "2 ranks" in mpi[0]


def test_top_level_help_lists_commands(mpirun):
    proc = mpirun(1, "--help", check=True)
    assert "moe" in proc.stdout and "info" in proc.stdout
    assert "--version" in proc.stdout


@pytest.mark.parametrize("spelling", ["--version", "version"])
def test_version_prints_one_line(mpirun, spelling):
    """`moesim --version`: the project version and the build's git revision, once (rank 0)."""
    proc = mpirun(2, spelling, check=True)
    assert proc.stdout.count("\n") == 1, proc.stdout
    m = re.fullmatch(r"moesim (\d+\.\d+\.\d+)(?: \(git (\S+)\))?\n", proc.stdout)
    assert m, proc.stdout
    info = mpirun(1, "info", check=True).stdout
    assert re.search(rf"^moesim {re.escape(m.group(1))}$", info, re.M), info
    revision = re.search(r"git revision\s+(\S+)", info).group(1)
    assert m.group(2) == (None if revision == "unknown" else revision), (proc.stdout, info)


# --------------------------------------------------------------------------- --help


@pytest.fixture(scope="module")
def help_text(mpirun):
    proc = mpirun(1, "moe", "--help", check=True)
    return proc.stdout


def help_defaults(text):
    """{option: default string} from boost's '--name arg (=value)' lines."""
    return dict(re.findall(r"--([a-z][a-z0-9-]*) arg \(=([^)]*)\)", text))


def test_help_lists_every_option_with_defaults(help_text):
    defaults = help_defaults(help_text)
    for opt in CONTRACT_OPTIONS:
        assert f"--{opt} " in help_text, f"--{opt} missing from moesim moe --help"
        assert opt in defaults, f"--{opt} shows no default in --help"
    for opt in FLAG_OPTIONS:
        assert f"--{opt}" in help_text
    assert defaults["task"] == "regimes"
    assert defaults["precision"] in ("fp32", "fp64")
    assert defaults["problem"] == "regression"


# The headings of `moesim moe --help`, in order, and an option each must list.
HELP_GROUPS = [("General", "config"), ("Model", "experts"), ("Routing", "top-k"), ("Balancing", "aux-loss-weight"),
               ("Parallelism", "ep-size"), ("Optimiser", "lr"), ("Task", "task"), ("Output", "out"),
               ("Checkpointing", "checkpoint"), ("Megatron-LM names", "num-experts")]


def help_groups(text):
    """{heading: [options]} of a --help text, in order."""
    groups, current = {}, None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line.split(" (")[0].rstrip(":")
            groups[current] = []
        elif current and (m := re.match(r"^  (?:-\w \[ )?--([a-z0-9-]+)", line)):
            groups[current].append(m.group(1))
    return groups


def test_help_is_grouped(help_text):
    groups = help_groups(help_text)
    assert list(groups) == [g for g, _ in HELP_GROUPS], list(groups)
    for heading, option in HELP_GROUPS:
        assert option in groups[heading], (heading, groups[heading])
    listed = [o for options in groups.values() for o in options]
    assert len(listed) == len(set(listed)), "an option is listed twice"
    assert {"moe-every", "granularity"} <= set(groups["Model"])
    assert {"gate", "capacity-factor", "z-loss"} <= set(groups["Routing"])
    assert {"balance", "bias-update-rate"} <= set(groups["Balancing"])
    assert {"dispatch", "chunk-tokens"} <= set(groups["Parallelism"])
    assert {"steps", "batch-tokens", "adam-beta1", "grad-clip"} <= set(groups["Optimiser"])
    assert {"problem", "teacher-seed", "context", "val-tokens"} <= set(groups["Task"])
    assert {"resume", "checkpoint-every"} <= set(groups["Checkpointing"])


@pytest.mark.parametrize("command", [["moe"], ["moe", "--task", "binned"], ["stack"], ["blend"], ["synth"]])
def test_help_shows_defaults_as_written(mpirun, command):
    """0.003, not 0.0030000000000000001; 1e-9, not 1.0000000000000001e-09; booleans as words."""
    text = mpirun(1, *command, "--help", check=True).stdout
    defaults = help_defaults(text)
    assert defaults, text
    for opt, shown in defaults.items():
        assert not re.search(r"\d{10}", shown), f"--{opt} (={shown})"
        assert not re.fullmatch(r"-?[0-9.]+e[-+]0\d+", shown), f"--{opt} (={shown})"
    if command == ["moe"]:
        assert "--lr arg (=0.003)" in text
        assert (defaults["adam-eps"], defaults["capacity-factor"], defaults["aux-loss-weight"]) == ("1e-8", "1.25", "0.01")
    if command[-1] == "binned":
        assert (defaults["baseline"], defaults["clip-max"], defaults["val-fraction"]) == ("true", "inf", "0.2")
    if command == ["stack"]:
        assert defaults["nb-var-smoothing"] == "1e-9"


def test_help_defaults_are_the_defaults_used(tmp_path, help_text, mpirun):
    """A run that sets almost nothing stores exactly the defaults --help advertises."""
    out = tmp_path / "defaults.h5"
    overridden = {"steps": "1", "batch-tokens": "64", "val-tokens": "64", "out": str(out)}
    args = ["moe", "--quiet"]
    for k, v in overridden.items():
        args += [f"--{k}", v]
    mpirun(1, *args, check=True)
    attrs = root_attrs(out)
    defaults = help_defaults(help_text)
    # The default task is a regimes regression: the lm and teacher options, and --classes,
    # are not in effect and the run file leaves them out.
    not_in_effect = {"classes", "data", "context", "embed-dim", "val-fraction"}
    checked = 0
    for opt, default in defaults.items():
        key = opt.replace("-", "_")
        if opt in not_in_effect or opt.startswith("teacher-"):
            assert key not in attrs, f"--{opt} is not in effect but stored in the run file"
            continue
        if opt in overridden or opt == "ranks-per-node":  # 0: the run file holds the machine's value
            continue
        assert key in attrs, f"option --{opt} not stored in the run file"
        value = attrs[key]
        if isinstance(value, str):
            assert value == default, opt
        elif isinstance(value, (int, np.integer)):
            assert value == int(default), opt
        else:
            # Shown as the shortest text that reads back as the stored double: exactly it.
            assert value == float(default), opt
        checked += 1
    assert checked >= 20
    assert attrs["quiet"] == 1


# --------------------------------------------------------------------------- unknown names


@pytest.mark.parametrize("given,known", [("--expert", "--experts"), ("--top_k", "--top-k"),
                                         ("--lr-warmup", "--lr-warmup-steps"), ("--num-expert", "--num-experts")])
def test_unknown_option_names_the_closest(tmp_path, mpirun, given, known):
    """One error line with a suggestion, exit 2 on every rank, no run file."""
    out = tmp_path / "x.h5"
    proc = mpirun(2, "moe", given, "4", "--out", out, timeout=30, env=QUICK_EXIT_ENV)
    check_rejected(proc, [f"unknown option '{given}' (did you mean '{known}'?)"], "moe")
    assert not out.exists()


def test_unknown_option_without_a_close_name(mpirun):
    proc = mpirun(2, "moe", "--no-such-option", "1", timeout=30, env=QUICK_EXIT_ENV)
    check_rejected(proc, ["unknown option '--no-such-option'", "moesim moe --help"], "moe")
    assert "did you mean" not in proc.stderr
    # An abbreviation is no longer guessed: it is unknown, with the names it begins (up to three;
    # --exp now begins four, so it gets none).
    proc = mpirun(2, "moe", "--eval", "4", timeout=30, env=QUICK_EXIT_ENV)
    check_rejected(proc, ["unknown option '--eval' (did you mean '--eval-capacity-factor' or '--eval-every'?)"], "moe")


def test_unknown_config_key_names_the_closest(tmp_path, mpirun):
    cfg = tmp_path / "typo.ini"
    cfg.write_text("experts = 4\ncapacity-factr = 1.0\n")
    proc = mpirun(2, "moe", "--config", cfg, timeout=30, env=QUICK_EXIT_ENV)
    check_rejected(proc, [f"config file '{cfg}': unknown option 'capacity-factr' (did you mean 'capacity-factor'?)"], "moe")


@pytest.mark.parametrize("command,given,known", [(["stack"], "--seeed", "--seed"), (["synth"], "--row", "--rows"),
                                                 (["moe", "--task", "binned"], "--gate-lerner", "--gate-learner"),
                                                 (["merge"], "--methd", "--method"), (["sweep"], "--lst", "--list")])
def test_other_commands_suggest_too(mpirun, command, given, known):
    proc = mpirun(2, *command, given, "3", timeout=30, env=QUICK_EXIT_ENV)
    check_rejected(proc, [f"unknown option '{given}' (did you mean '{known}'?)"])


def test_unknown_command_names_the_closest(mpirun):
    proc = mpirun(2, "stak", timeout=30, env=QUICK_EXIT_ENV)
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "unknown command 'stak' (did you mean 'stack'?)" in lines[0], proc.stderr


# --------------------------------------------------------------------------- config file


def test_config_file_used_and_command_line_wins(tmp_path, run_moe):
    cfg = tmp_path / "run.ini"
    cfg.write_text(
        "# moesim test config\n"
        "experts = 2\n"
        "top-k = 1\n"
        "d-model = 8\n"
        "d-ff = 8\n"
        "capacity-factor = 0\n"
        "steps = 3\n"
        "seed = 5\n"
        "problem = classification\n"
        "classes = 3\n"
    )
    # Drop the helper's defaults for the options the file sets, so only the file sets them;
    # steps, seed and d-ff are given on the command line as well and must win.
    _, path = run_moe(tmp_path, 2, config=cfg, experts=None, top_k=None, d_model=None,
                      d_ff=24, steps=4, seed=9)
    a = root_attrs(path)
    assert a["complete"] == 1
    assert (a["experts"], a["top_k"], a["d_model"], a["capacity_factor"]) == (2, 1, 8, 0.0)
    assert (a["problem"], a["classes"]) == ("classification", 3)
    assert (a["steps"], a["seed"], a["d_ff"]) == (4, 9, 24)
    with h5py.File(path, "r") as f:
        # The values are used, not just stored.
        assert f["metrics/step"].shape == (4,)
        assert f["metrics/expert_tokens"].shape == (4, 2)
        assert np.all(f["metrics/dropped_fraction"][()] == 0)
        assert "val_accuracy" in f["final"].attrs


def test_config_file_same_as_command_line(tmp_path, run_moe):
    """Options from a file and the same options on the command line give the same run."""
    cfg = tmp_path / "same.ini"
    cfg.write_text("seed = 13\nlr = 0.002\ncapacity-factor = 1.0\n")
    _, a = run_moe(tmp_path, 2, config=cfg, steps=5)
    _, b = run_moe(tmp_path, 2, seed=13, lr=0.002, capacity_factor=1.0, steps=5)
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        np.testing.assert_array_equal(fa["metrics/train_loss"][()], fb["metrics/train_loss"][()])
        np.testing.assert_array_equal(fa["metrics/expert_tokens"][()], fb["metrics/expert_tokens"][()])


# --------------------------------------------------------------------------- progress output


def test_progress_lines_and_summary(tmp_path, run_moe):
    steps = 5
    proc, path = run_moe(tmp_path, 2, quiet=False, progress_interval=0, steps=steps)
    lines = progress_lines(proc.stdout)
    assert all(lines), f"malformed progress line in:\n{proc.stdout}"
    # One line per step from rank 0 only (not one per rank).
    assert [int(m.group(1)) for m in lines] == list(range(1, steps + 1)), proc.stdout
    assert all(int(m.group(2)) == steps for m in lines)
    with h5py.File(path, "r") as f:
        loss = f["metrics/train_loss"][()]
        final = dict(f["final"].attrs)
    for m in lines:
        assert float(m.group(3)) == pytest.approx(loss[int(m.group(1)) - 1], abs=6e-6)
    # Summary at the end.
    out = proc.stdout
    tl = re.search(r"train loss ([0-9.]+)", out)
    vl = re.search(r"val loss ([0-9.]+)", out)
    assert tl and vl, out
    assert float(tl.group(1)) == pytest.approx(final["train_loss"], abs=6e-6)
    assert float(vl.group(1)) == pytest.approx(final["val_loss"], abs=6e-6)
    assert f"run file: {path}" in out


def test_progress_line_smoothed_speed_and_last_validation(tmp_path, run_moe):
    steps, every = 12, 4
    proc, path = run_moe(tmp_path, 2, quiet=False, progress_interval=0, steps=steps, eval_every=every)
    lines = progress_lines(proc.stdout)
    assert all(lines), f"malformed progress line in:\n{proc.stdout}"
    assert [int(m.group(1)) for m in lines] == list(range(1, steps + 1)), proc.stdout
    with h5py.File(path, "r") as f:
        val_step = f["metrics/val_step"][()].tolist()
        val_loss = f["metrics/val_loss"][()]
    assert val_step == [4, 8, 12], val_step
    for m in lines:
        step = int(m.group(1))
        assert float(m.group(5)) > 0 and float(m.group(6)) > 0, m.group(0)
        # The last validation before (or at) this step; none before the first. The final
        # validation runs after the last step's line, so that line shows step 8's.
        done = [i for i, s in enumerate(val_step) if s <= step and s != steps]
        if not done:
            assert m.group(4) is None, m.group(0)
        else:
            assert m.group(4) == f"{val_loss[done[-1]]:.5f}", m.group(0)
    # Smoothing starts afresh at the second step (the first warms up): there, as at step 1,
    # the smoothed speed is the step's own.
    for m in lines[:2]:
        assert m.group(5) == m.group(6), m.group(0)

    # Without --eval-every there is no validation to show.
    proc, _ = run_moe(tmp_path, 2, quiet=False, progress_interval=0, steps=3)
    lines = progress_lines(proc.stdout)
    assert all(lines) and len(lines) == 3, proc.stdout
    assert all(m.group(4) is None for m in lines), proc.stdout


def test_progress_interval_limits_lines(tmp_path, run_moe):
    proc, _ = run_moe(tmp_path, 2, quiet=False, progress_interval=1000, steps=10)
    steps = [int(m.group(1)) for m in progress_lines(proc.stdout)]
    assert steps == [1, 10], proc.stdout


def test_quiet_prints_nothing(tmp_path, run_moe):
    proc, path = run_moe(tmp_path, 2, quiet=True, progress_interval=0, steps=5)
    assert not [line for line in proc.stdout.splitlines() if line.startswith("step ")], proc.stdout
    assert "train loss" not in proc.stdout
    assert "run file:" not in proc.stdout
    assert proc.stdout.strip() == ""
    assert root_attrs(path)["complete"] == 1
