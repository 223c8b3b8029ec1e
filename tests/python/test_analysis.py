"""The analysis package (analysis/): loading a real sweep made by the binary, the scaling-law
fit on synthetic losses with known coefficients, figures, and the report/fit/table commands."""
from __future__ import annotations

import shutil
import sys

import h5py
import numpy as np
import pytest

from moesim_testing import REPO_ROOT, analysis_cli, run_mpi

sys.path.insert(0, str(REPO_ROOT))
from analysis import figures, load_expert_load, load_runs, load_steps  # noqa: E402
from analysis.load import usable_runs  # noqa: E402
from analysis.params import counts_of_run  # noqa: E402
from analysis.scaling import fit_arrays, fit_scaling_law, saturating_experts  # noqa: E402

STEPS = 20
# experts = 3 cannot be split over groups of 2 ranks: the sweep records those points as failed.
SWEEP = f"""\
ep-size = 2
experts = 2,3,4,8
d-model = 16,32
d-ff = 32,64
zip = d-model,d-ff
top-k = 1
layers = 2
steps = {STEPS}
batch-tokens = 256
val-tokens = 512
eval-every = 10
seed = 1
quiet = true
"""


@pytest.fixture(scope="module")
def sweep(moesim, tmp_path_factory):
    d = tmp_path_factory.mktemp("analysis")
    cfg = d / "grid.ini"
    cfg.write_text(SWEEP)
    out = d / "sweep"
    proc = run_mpi(2, "sweep", cfg, "--out", out, timeout=180)
    assert proc.returncode == 3, f"a point should fail (exit 3)\n{proc.stdout}\n{proc.stderr}"
    return out


@pytest.fixture(scope="module")
def runs(sweep):
    return load_runs(sweep)


# --- loading ---------------------------------------------------------------------------------

def test_one_row_per_run_file_with_options_and_finals(sweep, runs):
    files = sorted(p.name for p in sweep.glob("*.h5") if p.name != "sweep.h5")
    assert len(files) == 8
    assert sorted(runs["file"].map(lambda f: f.split("/")[-1])) == files
    for col in ("experts", "top_k", "d_model", "d_ff", "steps", "lr", "ranks", "git_revision",
                "val_loss", "params_total", "params_active", "flops_per_token",
                "param_utilization", "tokens_per_s", "token_bytes", "complete", "status", "kind"):
        assert col in runs.columns, col
    ok = runs[runs["complete"]]
    assert len(ok) == 6
    assert set(ok["experts"]) == {2, 4, 8}
    assert (ok["status"] == "complete").all() and (ok["kind"] == "moe").all()
    assert (ok["ranks"] == 2).all() and (ok["steps_done"] == STEPS).all()
    assert np.isfinite(ok["val_loss"]).all() and (ok["val_loss"] > 0).all()
    # the parameter counts the binary logged are the ones analysis/params.py computes
    for _, row in ok.iterrows():
        total, active, flops = counts_of_run(row)
        assert (total, active, flops) == (row["params_total"], row["params_active"], row["flops_per_token"])


def test_failed_points_are_kept_and_flagged(runs):
    bad = runs[~runs["complete"]]
    assert len(bad) == 2
    assert (bad["status"] == "failed").all()
    assert (bad["experts"] == 3).all()  # options of a failure record are typed like the others
    assert bad["error"].str.contains("divisible").all()
    use, note = usable_runs(runs)
    assert len(use) == 6 and "dropped 2 of 8 runs (2 failed)" in note


def test_incomplete_and_unreadable_files_are_flagged(sweep, runs, tmp_path):
    src = runs[runs["complete"]]["file"].iloc[0]
    shutil.copy(src, tmp_path / "half.h5")
    with h5py.File(tmp_path / "half.h5", "r+") as f:
        f.attrs["complete"] = 0
    (tmp_path / "broken.h5").write_bytes(b"not an HDF5 file")
    shutil.copy(sweep / "sweep.h5", tmp_path / "sweep.h5")
    df = load_runs(tmp_path).set_index("id")
    assert sorted(df.index) == ["broken", "half"]  # sweep.h5 is not a run
    assert df.loc["half", "status"] == "incomplete" and not df.loc["half", "complete"]
    assert df.loc["broken", "status"] == "unreadable" and not df.loc["broken", "complete"]
    assert "unreadable" in df.loc["broken", "error"]


def test_load_steps_and_expert_load(runs):
    row = runs[runs["complete"] & (runs["experts"] == 4)].iloc[0]
    s = load_steps(row["file"])
    assert len(s) == STEPS
    assert list(s["step"]) == list(range(1, STEPS + 1))
    for col in ("train_loss", "a2a_seconds", "step_seconds", "tokens_per_s"):
        assert col in s.columns
    assert s["val_loss"].notna().sum() == 2  # eval-every 10 over 20 steps
    assert s.loc[s["step"] == STEPS, "val_loss"].iloc[0] == pytest.approx(row["val_loss"])
    load = load_expert_load(row["file"])
    assert load.shape == (STEPS, 4)
    # K = 1 over 2 MoE layers: at most 2 B assignments per step
    assert (load.sum(axis=1) <= 2 * 256).all() and (load.sum(axis=1) > 0).all()


# --- fit -------------------------------------------------------------------------------------

TRUE = {"a": -0.08, "b": -0.10, "c": 0.01, "d": 1.1}


def synthetic(saturating=False, noise=0.003, seed=0):
    rng = np.random.default_rng(seed)
    N, E = np.meshgrid(np.geomspace(1e4, 1e7, 6), [1, 2, 4, 8, 16, 32, 64])
    N, E = N.ravel(), E.ravel()
    Eh = saturating_experts(E) if saturating else E
    logL = (TRUE["a"] * np.log(N) + TRUE["b"] * np.log(Eh) + TRUE["c"] * np.log(N) * np.log(Eh)
            + TRUE["d"] + rng.normal(0, noise, N.size))
    return N, E, np.exp(logL)


@pytest.mark.parametrize("saturating", [False, True])
def test_fit_recovers_known_coefficients(saturating):
    N, E, L = synthetic(saturating)
    fit = fit_arrays(N, E, L, saturating=saturating, bootstrap=400, seed=1)
    for k, v in TRUE.items():
        lo, hi = fit.ci[k]
        assert lo <= v <= hi, (k, v, fit.ci[k])
        assert fit.coef[k] == pytest.approx(v, abs=0.02 if k == "d" else 0.005)
    assert fit.r2 > 0.99
    assert fit.residuals["residual"].abs().max() < 0.02
    assert fit.bootstrap_used > 300
    text = fit.format()
    for k in "abcd":
        assert f"\n{k} " in text


def test_fit_of_a_table_drops_incomplete_runs_and_says_so():
    import pandas as pd
    N, E, L = synthetic()
    df = pd.DataFrame({"id": [f"r{i}" for i in range(len(N))], "kind": "moe", "status": "complete",
                       "complete": True, "experts": E, "params_active": N, "val_loss": L})
    df.loc[:1, ["complete", "status"]] = [False, "failed"]
    df.loc[:1, "val_loss"] = 1e9  # would wreck the fit if used
    fit = fit_scaling_law(df, bootstrap=50)
    assert len(fit.residuals) == len(N) - 2
    assert "dropped 2" in fit.note
    assert fit.coef["a"] == pytest.approx(TRUE["a"], abs=0.005)


def test_fit_needs_two_sizes_and_two_expert_counts():
    with pytest.raises(ValueError, match="distinct"):
        fit_arrays([1e4] * 6, [1, 2, 4, 8, 16, 32], np.linspace(1, 2, 6), bootstrap=10)


def test_fit_of_the_real_sweep(runs):
    fit = fit_scaling_law(runs, bootstrap=100)
    assert len(fit.residuals) == 6 and "dropped 2" in fit.note
    assert np.isfinite(list(fit.coef.values())).all()


# --- figures ---------------------------------------------------------------------------------

def assert_png(path):
    import matplotlib.image as mpimg
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    img = mpimg.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100 and img[..., :3].std() > 0.01


def test_figures_are_written_and_not_empty(runs, tmp_path):
    ok = runs[runs["complete"]]
    fit = fit_scaling_law(runs, bootstrap=50)
    paths = [figures.loss_vs_experts(runs, tmp_path / "a.png", fit=fit),
             figures.iso_loss_contours(runs, fit, tmp_path / "b.png"),
             figures.loss_curves(ok["file"], tmp_path / "c.png"),
             figures.expert_load_heatmap(ok["file"].iloc[:2], tmp_path / "d.png")]
    for p in paths:
        assert_png(p)


def test_figures_refuse_to_draw_nothing(runs, tmp_path):
    with pytest.raises(ValueError):
        figures.loss_vs_experts(runs[~runs["complete"]], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_stacking_coefficients_figure(moesim, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 3))
    y = (X[:, 0] + rng.normal(0, 0.5, 150) > 0).astype(int)
    csv = tmp_path / "t.csv"
    csv.write_text("x0,x1,x2,target\n" + "".join(
        ",".join(f"{v:.5f}" for v in r) + f",{t}\n" for r, t in zip(X, y)))
    out = tmp_path / "stack.h5"
    proc = run_mpi(1, "stack", "--data", csv, "--target", "target", "--learners", "ridge,nb",
                   "--folds", "3", "--meta", "logistic", "--quiet", "--out", out)
    assert proc.returncode == 0, proc.stderr
    df = load_runs([out])
    assert df.loc[0, "kind"] == "stack" and df.loc[0, "complete"]
    assert "test_score" in df.columns
    assert_png(figures.stacking_coefficients(out, tmp_path / "s.png"))


# --- command line ----------------------------------------------------------------------------

def test_report_command(sweep):
    p = analysis_cli("report", sweep, "--bootstrap", "100")
    assert p.returncode == 0, p.stderr
    rep = sweep / "report"
    html = (rep / "index.html").read_text()
    md = (rep / "index.md").read_text()
    pngs = sorted(rep.glob("*.png"))
    names = {x.name for x in pngs}
    assert {"loss_vs_experts.png", "iso_loss.png", "loss_curves.png"} <= names
    for x in pngs:
        assert f"src='{x.name}'" in html and f"]({x.name})" in md
        assert_png(x)
    assert "<table>" in html and "| a |" in md  # coefficient table
    assert "failed" in html and "failed" in md  # the runs table keeps failures


def test_report_without_enough_runs_says_why(runs, tmp_path):
    for f in runs[runs["complete"]]["file"].iloc[:3]:
        shutil.copy(f, tmp_path)
    p = analysis_cli("report", tmp_path, "--bootstrap", "20")
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "report" / "index.md").read_text()
    assert "No scaling-law fit" in md and "at least 5" in md
    assert (tmp_path / "report" / "index.html").is_file()


def test_fit_command(sweep):
    p = analysis_cli("fit", sweep, "--bootstrap", "100", "--saturating")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    for k in "abcd":
        assert any(ln.split()[:1] == [k] and len(ln.split()) == 4 for ln in lines), k
    assert "residuals" in p.stdout and "saturating" in p.stdout


def test_table_command(sweep):
    p = analysis_cli("table", sweep)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("complete") == 6 and p.stdout.count("failed") == 2
    assert "val_loss" in p.stdout and "tokens_per_s" in p.stdout


def test_missing_or_empty_directory_is_a_clear_error(tmp_path):
    p = analysis_cli("fit", tmp_path / "nope")
    assert p.returncode != 0
    assert p.stderr.strip().count("\n") == 0 and "no such directory" in p.stderr
    p = analysis_cli("report", tmp_path)
    assert p.returncode != 0
    assert p.stderr.strip().count("\n") == 0 and "no run files" in p.stderr
