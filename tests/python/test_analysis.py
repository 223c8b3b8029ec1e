"""The analysis package (moesim_analysis/): loading a real sweep made by the binary (runs,
sweep.h5, per-step series in long format, logged parameter counts), the scaling-law fit on
synthetic losses with known coefficients (arrays, and run directories written with h5py:
identified and under-identified grids, seeds, the fitted saturating transform), figures, the
report/fit/table commands, and the package itself (an offline install into a venv, an import
that changes nothing process-wide)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from moesim_testing import REPO_ROOT, analysis_cli, run_moe, run_mpi, subprocess_env

sys.path.insert(0, str(REPO_ROOT))
from moesim_analysis import (figures, load_expert_load, load_runs, load_steps,  # noqa: E402
                             load_steps_long, load_sweep)
from moesim_analysis.load import aggregate_seeds, natural_key, run_files, usable_runs  # noqa: E402
from moesim_analysis.params import (counts_of_run, derive_counts, logged_counts,  # noqa: E402
                                    model_counts)
from moesim_analysis.scaling import (E_MAX_SBASE, E_START_SBASE, fit_arrays,  # noqa: E402
                                     fit_scaling_law, saturating_experts)

STEPS = 20
# top-k 4 of 2 experts can never run: the sweep records those points as invalid, runs the rest.
SWEEP = f"""\
experts = 2,4,8,2
top-k = 1,1,1,4
zip = experts,top-k
d-model = 16,32
d-ff = 32,64
zip = d-model,d-ff
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
    assert proc.returncode == 0, f"invalid points do not fail a sweep\n{proc.stdout}\n{proc.stderr}"
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
    # the counts a run logged are its counts, and moesim_analysis.params derives the same
    for _, row in ok.iterrows():
        logged = (row["params_total"], row["params_active"], row["flops_per_token"])
        assert tuple(counts_of_run(row)) == tuple(logged_counts(row["file"])) == logged
        assert tuple(derive_counts(row)) == logged


def test_invalid_points_are_kept_apart(runs):
    bad = runs[~runs["complete"]]
    assert len(bad) == 2
    assert (bad["status"] == "invalid").all()
    assert (bad["top_k"] == 4).all()  # options of an invalid record are typed like the others
    assert bad["error"].str.contains("must not exceed").all()
    use, note = usable_runs(runs)
    assert len(use) == 6
    assert note == "skipped 2 invalid grid points (never run)"  # not runs, so none is "dropped"


def test_failed_incomplete_and_unreadable_files_are_flagged(sweep, runs, tmp_path):
    src = runs[runs["complete"]]["file"].iloc[0]
    shutil.copy(src, tmp_path / "half.h5")
    with h5py.File(tmp_path / "half.h5", "r+") as f:
        f.attrs["complete"] = 0
    with h5py.File(tmp_path / "bad.h5", "w") as f:  # as `moesim sweep` records a failure
        f.attrs.update({"complete": 0, "kind": "moe", "status": "failed", "error": "no corpus",
                        "experts": "4"})
    (tmp_path / "broken.h5").write_bytes(b"not an HDF5 file")
    shutil.copy(sweep / "sweep.h5", tmp_path / "sweep.h5")
    df = load_runs(tmp_path).set_index("id")
    assert sorted(df.index) == ["bad", "broken", "half"]  # sweep.h5 is not a run
    assert df.loc["half", "status"] == "incomplete" and not df.loc["half", "complete"]
    assert df.loc["bad", "status"] == "failed" and df.loc["bad", "experts"] == 4
    assert df.loc["broken", "status"] == "unreadable" and not df.loc["broken", "complete"]
    assert "unreadable" in df.loc["broken", "error"]
    _, note = usable_runs(df.reset_index())
    assert note.startswith("dropped 3 of 3 runs (") and "1 failed" in note


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
    # With the transform: Clark's S-BASE values fixed, as the data were made.
    fixed = {"e_start": E_START_SBASE, "e_max": E_MAX_SBASE} if saturating else {}
    fit = fit_arrays(N, E, L, saturating=saturating, **fixed, bootstrap=400, seed=1)
    for k, v in TRUE.items():
        lo, hi = fit.ci[k]
        assert lo <= v <= hi, (k, v, fit.ci[k])
        assert fit.coef[k] == pytest.approx(v, abs=0.02 if k == "d" else 0.005)
    assert fit.r2 > 0.99
    assert fit.residuals["residual"].abs().max() < 0.02
    assert fit.bootstrap_used > 300
    assert fit.warnings == []
    text = fit.format()
    for k in "abcd":
        assert f"\n{k} " in text
    assert "warning" not in text


def test_fit_intervals_do_not_depend_on_the_order_of_runs():
    # Two seeds per point, listed in two different orders (as two namings of the run files
    # would list them): the bootstrap must draw the same resamples, so equal intervals.
    N, E, L = synthetic(noise=0.02)
    N2, E2 = np.concatenate([N, N]), np.concatenate([E, E])
    L2 = np.concatenate([L, L * np.exp(np.random.default_rng(5).normal(0, 0.02, L.size))])
    ids = np.array([f"run{i:03d}" for i in range(L2.size)], dtype=object)
    perm = np.random.default_rng(7).permutation(L2.size)
    a = fit_arrays(N2, E2, L2, ids=ids, bootstrap=200, seed=3)
    b = fit_arrays(N2[perm], E2[perm], L2[perm], ids=ids[perm], bootstrap=200, seed=3)
    for k in "abcd":
        assert a.ci[k] == b.ci[k], k
    assert a.residuals["ids"].tolist() == b.residuals["ids"].tolist()


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


def test_fitted_saturation_recovers_e_start_and_e_max():
    # E up to 512, well past E_max = 40: the saturation is in the data.
    true = {"e_start": 2.5, "e_max": 40.0}
    rng = np.random.default_rng(3)
    N, E = (x.ravel() for x in np.meshgrid(np.geomspace(1e4, 1e7, 5), 2.0 ** np.arange(10)))
    Eh = saturating_experts(E, **true)
    L = np.exp(TRUE["a"] * np.log(N) + TRUE["b"] * np.log(Eh) + TRUE["c"] * np.log(N) * np.log(Eh)
               + TRUE["d"] + rng.normal(0, 0.001, N.size))
    fit = fit_arrays(N, E, L, saturating=True, bootstrap=200, seed=2)
    assert fit.fitted == ("E_start", "E_max")
    for name, key in (("E_start", "e_start"), ("E_max", "e_max")):
        lo, hi = fit.e_ci[name]
        assert lo <= true[key] <= hi, (name, fit.e_ci[name])
        assert getattr(fit, key) == pytest.approx(true[key], rel=0.2)
    for k, v in TRUE.items():
        assert fit.ci[k][0] <= v <= fit.ci[k][1], (k, fit.ci[k])
    assert fit.warnings == []
    tab = fit.coefficient_table()
    assert list(tab.index) == ["a", "b", "c", "d", "E_start", "E_max"]
    # Either may be fixed instead; a fixed value is not a row of the table.
    half = fit_arrays(N, E, L, saturating=True, e_start=2.5, bootstrap=50, seed=2)
    assert half.fitted == ("E_max",) and half.e_start == 2.5
    assert half.e_max == pytest.approx(40.0, rel=0.2)


def test_under_identified_designs_warn():
    # Two sizes, four expert counts, noisy: the 2-size fit of the old default job.
    rng = np.random.default_rng(0)
    N, E = (x.ravel() for x in np.meshgrid([2500.0, 8000.0], [2.0, 4.0, 8.0, 16.0]))
    L = np.exp(TRUE["a"] * np.log(N) + TRUE["b"] * np.log(E) + TRUE["c"] * np.log(N) * np.log(E)
               + TRUE["d"] + rng.normal(0, 0.02, N.size))
    fit = fit_arrays(N, E, L, bootstrap=200, seed=0)
    assert fit.warnings and all(w.startswith("warning: ") for w in fit.warnings)
    text = "\n".join(fit.warnings)
    assert "only 2 distinct model sizes" in text
    assert "interval of c" in text and "contains 0" in text
    assert fit.format().startswith("warning: ")
    # Three sizes within a few percent of each other: the levels are there, the spread is not.
    N3, E3 = (x.ravel() for x in np.meshgrid([1e4, 1.05e4, 1.1e4], [1.0, 4.0, 16.0]))
    L3 = np.exp(-0.08 * np.log(N3) - 0.1 * np.log(E3) + 1.1 + rng.normal(0, 0.001, N3.size))
    assert any("condition number" in w for w in fit_arrays(N3, E3, L3, bootstrap=50).warnings)


def test_fit_of_the_real_sweep(runs):
    fit = fit_scaling_law(runs, bootstrap=100)
    assert len(fit.residuals) == 6 and "skipped 2 invalid" in fit.note
    assert np.isfinite(list(fit.coef.values())).all()
    assert any(w.startswith("warning: only 2 distinct model sizes") for w in fit.warnings)


# --- figures ---------------------------------------------------------------------------------

def assert_png(path):
    import matplotlib.image as mpimg
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    img = mpimg.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100 and img[..., :3].std() > 0.01


# The figures of issue 15 (per-step series, traffic, routing) in every report that has their data.
NEW_FIGURES = ("loss_curves.png", "loss_vs_wall_time.png", "routing_health.png",
               "expert_load_per_layer.png", "routing_confusion.png", "traffic.png",
               "exchange_phases.png")


def test_figures_are_written_and_not_empty(runs, tmp_path):
    ok = runs[runs["complete"]]
    fit = fit_scaling_law(runs, bootstrap=50)
    paths = [figures.loss_vs_experts(runs, tmp_path / "a.png", fit=fit),
             figures.iso_loss_contours(runs, fit, tmp_path / "b.png"),
             figures.loss_curves(ok["file"], tmp_path / "c.png"),
             figures.expert_load_heatmap(ok["file"].iloc[:2], tmp_path / "d.png"),
             figures.loss_vs_compute(runs, tmp_path / "e.png"),
             figures.effective_params(runs, fit, tmp_path / "f.png"),
             figures.loss_vs_wall_time(runs, tmp_path / "g.png"),
             figures.routing_health(ok, tmp_path / "h.png"),
             figures.expert_load_per_layer(ok["file"].iloc[-1:], tmp_path / "i.png"),
             figures.routing_confusion(ok["file"].iloc[-2:], tmp_path / "j.png"),
             figures.traffic_heatmap(ok["file"].iloc[-1:], tmp_path / "k.png"),
             figures.exchange_phases(ok, tmp_path / "l.png")]
    for p in paths:
        assert_png(p)


def test_figures_refuse_to_draw_nothing(runs, tmp_path):
    with pytest.raises(ValueError):
        figures.loss_vs_experts(runs[~runs["complete"]], tmp_path / "x.png")
    # Invalid points hold no metrics: nothing to draw, nothing written.
    for draw in (figures.loss_curves, figures.loss_vs_wall_time, figures.routing_health,
                 figures.exchange_phases):
        with pytest.raises(ValueError):
            draw(runs[~runs["complete"]], tmp_path / "x.png")
    for draw in (figures.routing_confusion, figures.traffic_heatmap, figures.expert_load_per_layer):
        with pytest.raises(ValueError):
            draw(runs[~runs["complete"]]["file"], tmp_path / "x.png")
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
    # The per-step figures: every one has its data in these runs (regimes on 2 ranks).
    assert set(NEW_FIGURES) <= names, set(NEW_FIGURES) - names
    for x in pngs:
        assert f"src='{x.name}'" in html and f"]({x.name})" in md
        assert_png(x)
    for name in NEW_FIGURES:  # each with its caption, under its image
        caption = md.split(f"]({name})", 1)[1].strip().split("\n", 1)[0]
        assert len(caption) > 40 and not caption.startswith("#"), (name, caption)
        assert "<figcaption>" in html.split(f"src='{name}'", 1)[1].split("</figure>", 1)[0]
    assert ") skipped: " not in md  # no figure note
    assert "<table>" in html and "| a |" in md  # coefficient table
    assert "invalid" in html and "invalid" in md  # the runs table keeps invalid points
    # Two sizes: the warning comes first on the command line and above the table in the report.
    assert p.stdout.startswith("warning: only 2 distinct model sizes"), p.stdout
    assert md.index("warning: only 2 distinct model sizes") < md.index("| a |")
    assert html.index("warning: only 2 distinct model sizes") < html.index("<th>estimate</th>")


def test_report_without_enough_runs_says_why(runs, tmp_path):
    for f in runs[runs["complete"]]["file"].iloc[:3]:
        shutil.copy(f, tmp_path)
    p = analysis_cli("report", tmp_path, "--bootstrap", "20")
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "report" / "index.md").read_text()
    assert "No scaling-law fit" in md and "at least 5" in md
    assert (tmp_path / "report" / "index.html").is_file()


def test_fit_command(sweep):
    p = analysis_cli("fit", sweep, "--bootstrap", "100", "--e-start", "1.847", "--e-max", "314.883")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    for k in "abcd":
        assert any(ln.split()[:1] == [k] and len(ln.split()) == 4 for ln in lines), k
    assert "residual" in p.stdout and "saturating" in p.stdout and "fixed at 1.847" in p.stdout
    assert lines[0].startswith("warning: only 2 distinct model sizes")
    strict = analysis_cli("fit", sweep, "--bootstrap", "20", "--strict")
    assert strict.returncode == 3 and "warning:" in strict.stdout
    # Six points cannot fit six parameters: a clear error, not a traceback.
    p = analysis_cli("fit", sweep, "--bootstrap", "20", "--saturating")
    assert p.returncode == 2 and "cannot fit 6 parameters" in p.stderr, p.stderr


def test_table_command(sweep):
    p = analysis_cli("table", sweep)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("complete") == 6 and p.stdout.count("invalid") == 2
    assert "val_loss" in p.stdout and "tokens_per_s" in p.stdout
    # The old name still runs from the repository root (analysis/ forwards to the package).
    old = subprocess.run([sys.executable, "-m", "analysis", "table", sweep], cwd=REPO_ROOT,
                         capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert old.returncode == 0 and old.stdout == p.stdout, old.stderr


def test_missing_or_empty_directory_is_a_clear_error(tmp_path):
    p = analysis_cli("fit", tmp_path / "nope")
    assert p.returncode != 0
    assert p.stderr.strip().count("\n") == 0 and "no such directory" in p.stderr
    p = analysis_cli("report", tmp_path)
    assert p.returncode != 0
    assert p.stderr.strip().count("\n") == 0 and "no run files" in p.stderr


# --- synthetic run directories ---------------------------------------------------------------

LAYERS = 2


def write_run(directory, name, *, d_model, experts, seed, loss, top_k=1, steps=40, batch_tokens=256,
              d_ff=None, gate="topk"):
    """A complete run file as `moesim moe` writes one (the attributes and datasets the analysis
    reads), with a chosen validation loss."""
    d_ff = 2 * d_model if d_ff is None else d_ff
    directory.mkdir(parents=True, exist_ok=True)
    total, active, flops = model_counts(d_model, d_ff, experts, top_k, layers=LAYERS)
    with h5py.File(directory / f"{name}.h5", "w") as f:
        f.attrs.update({"schema_version": 1, "kind": "moe", "complete": 1, "ranks": 2,
                        "experts": experts, "top_k": top_k, "d_model": d_model, "d_ff": d_ff,
                        "layers": LAYERS, "moe_every": 1, "input_dim": 16, "problem": "regression",
                        "gate": gate, "task": "regimes", "seed": seed, "lr": 0.003,
                        "steps": steps, "batch_tokens": batch_tokens, "out": f"{name}.h5"})
        g = f.create_group("final")
        g.attrs.update({"val_loss": loss, "train_loss": loss * 0.98, "params_total": float(total),
                        "params_active": float(active), "flops_per_token": float(flops),
                        "param_utilization": float(total / flops), "steps_done": steps,
                        "tokens_per_s": 1e5})
        m = f.create_group("metrics")
        m["step"] = np.arange(1, steps + 1)
        m["train_loss"] = loss * (1 + 1.0 / np.arange(1, steps + 1))
        m["val_step"] = np.array([steps])
        m["val_loss"] = np.array([loss])
        m["expert_tokens"] = np.full((steps, experts), batch_tokens * top_k * LAYERS // experts)


def law(N, E):
    return np.exp(TRUE["a"] * np.log(N) + TRUE["b"] * np.log(E) + TRUE["c"] * np.log(N) * np.log(E)
                  + TRUE["d"])


def synthetic_dir(directory, sizes, experts, seeds=(1, 2), noise=0.002, rng_seed=0, gate="topk"):
    """Run files of the known law on a grid of sizes (d_model), experts and seeds; returns the
    (d_model, E) -> list of losses written."""
    rng = np.random.default_rng(rng_seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for d in sizes:
        for e in experts:
            _, active, _ = model_counts(d, 2 * d, e, 1, layers=LAYERS)
            for s in seeds:
                loss = float(law(active, e) * np.exp(rng.normal(0, noise)))
                write_run(directory, f"d{d}_e{e}_s{s}", d_model=d, experts=e, seed=s, loss=loss, gate=gate)
                written.setdefault((d, e), []).append(loss)
    return written


@pytest.fixture(scope="module")
def identified(tmp_path_factory):
    d = tmp_path_factory.mktemp("identified") / "runs"
    written = synthetic_dir(d, sizes=(8, 16, 32, 64), experts=(1, 2, 4, 8, 16))
    return d, written


def test_identified_synthetic_grid_fits_the_known_law_without_warnings(identified):
    d, _ = identified
    fit = fit_scaling_law(load_runs(d), bootstrap=300, seed=1)
    assert fit.warnings == [], fit.warnings
    assert (fit.sizes, fit.expert_counts, fit.runs, len(fit.residuals)) == (4, 5, 40, 20)
    for k, v in TRUE.items():
        lo, hi = fit.ci[k]
        assert lo <= v <= hi, (k, v, fit.ci[k])
    p = analysis_cli("fit", d, "--bootstrap", "200", "--strict")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "warning" not in p.stdout and "40 runs, 2 seed(s) per point" in p.stdout


def test_seeds_are_aggregated_to_their_mean(identified):
    d, written = identified
    runs = load_runs(d)
    fit = fit_scaling_law(runs, bootstrap=20)
    t = fit.residuals
    assert (t["seeds"] == 2).all()
    for (dm, e), losses in written.items():
        row = t[t["ids"].str.contains(f"d{dm}_e{e}_s1") & t["ids"].str.contains(f"d{dm}_e{e}_s2")]
        assert len(row) == 1, (dm, e)
        assert row["val_loss"].iloc[0] == pytest.approx(np.mean(losses), rel=1e-12)
        assert row["val_loss_sd"].iloc[0] == pytest.approx(np.std(losses, ddof=1), rel=1e-9)
    # The seed is the only option apart: other options that vary make other points.
    pts = aggregate_seeds(usable_runs(runs)[0], "val_loss")
    assert len(pts) == 20 and (pts["seeds"] == 2).all()
    assert set(pts.columns) >= {"val_loss", "val_loss_sd", "val_loss_min", "val_loss_max", "ids"}


def test_effective_parameter_count(identified):
    d, _ = identified
    fit = fit_scaling_law(load_runs(d), bootstrap=50)
    N = fit.residuals["N"].to_numpy()
    E = fit.residuals["E"].to_numpy()
    dense = E == 1
    np.testing.assert_allclose(fit.residuals["N_eff/N"][dense], 1.0, rtol=1e-9)
    # Where the law predicts a loss, the dense model of size N_eff predicts the same.
    np.testing.assert_allclose(fit.predict(fit.residuals["N_eff"], 1), fit.predict(N, E), rtol=1e-9)
    # Experts are worth parameters exactly where the law's loss falls with E at that N.
    helps = fit.coef["b"] + fit.coef["c"] * np.log(N) < 0
    assert ((fit.residuals["N_eff/N"][~dense] > 1) == helps[~dense]).all()
    assert helps[~dense].any()


def test_report_of_an_identified_grid_draws_every_figure(identified):
    d, _ = identified
    p = analysis_cli("report", d, "--bootstrap", "100")
    assert p.returncode == 0, p.stderr
    assert "warning" not in p.stdout
    rep = d / "report"
    names = {x.name for x in rep.glob("*.png")}
    assert names == {"loss_vs_experts.png", "loss_vs_compute.png", "iso_loss.png",
                     "effective_params.png", "loss_curves.png", "expert_load.png"}, names
    for x in rep.glob("*.png"):
        assert_png(x)
    md = (rep / "index.md").read_text()
    assert "warning" not in md and "N_eff" in md
    # These files hold no step times, traffic or routing counts: each such figure is a note.
    for name in set(NEW_FIGURES) - {"loss_curves.png"}:
        assert f"({name}) skipped: " in md, name


def test_two_size_grid_warns_and_the_report_shows_it(tmp_path):
    d = tmp_path / "runs"
    synthetic_dir(d, sizes=(16, 32), experts=(1, 2, 4, 8), noise=0.01)
    p = analysis_cli("fit", d, "--bootstrap", "200")
    assert p.returncode == 0, p.stderr
    warned = [ln for ln in p.stdout.splitlines() if ln.startswith("warning:")]
    assert any("only 2 distinct model sizes" in w for w in warned), p.stdout
    assert p.stdout.startswith("warning:")
    r = analysis_cli("report", d, "--bootstrap", "200")  # the same fit as above
    assert r.returncode == 0, r.stderr
    md = (d / "report" / "index.md").read_text()
    html = (d / "report" / "index.html").read_text()
    for w in warned:
        assert f"\n{w}\n" in md and md.index(w) < md.index("| a |")
        assert html.index(w.split(":", 1)[1].strip()[:30]) < html.index("<th>estimate</th>")
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("warning:")] == warned


def test_fitted_saturation_from_the_command_line(identified):
    d, _ = identified
    p = analysis_cli("fit", d, "--bootstrap", "50", "--saturating")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    for k in ("E_start", "E_max"):
        row = [ln for ln in lines if ln.split()[:1] == [k]]
        assert len(row) == 1 and len(row[0].split()) == 4, lines
    assert "E_start fitted at" in p.stdout and "E_max fitted at" in p.stdout
    # E only up to 16 shows no saturation: E_max is not identified, and the fit says so.
    assert any(ln.startswith("warning: E_max is not identified") for ln in lines), p.stdout
    bad = analysis_cli("fit", d, "--e-start", "0")
    assert bad.returncode == 2 and "--e-start must be > 0" in bad.stderr


def test_clark_command_states_each_finding_by_its_rule(tmp_path):
    """`moesim_analysis clark` on the three sweeps' layout: a main grid of the known law (c > 0), a K
    sweep whose K = 2 runs are 0.2% worse (far less than a doubling of E gains), and a router
    sweep with hash 3% worse than sbase (the main grid's seed-1 runs) and top-k in between. (At
    D = 64 the known law's slope in E turns positive, so the sizes stop at 32.)"""
    synthetic_dir(tmp_path / "clark_lm", sizes=(8, 16, 32), experts=(1, 2, 4, 8, 16), gate="sbase")
    for d in (8, 16, 32):
        for e in (2, 4, 8):
            _, active, _ = model_counts(d, 2 * d, e, 1, layers=LAYERS)
            base = float(law(active, e))
            write_run(tmp_path / "clark_lm_topk", f"k1_d{d}_e{e}", d_model=d, experts=e, seed=1,
                      loss=base, top_k=1)
            write_run(tmp_path / "clark_lm_topk", f"k2_d{d}_e{e}", d_model=d, d_ff=d, experts=e,
                      seed=1, loss=base * 1.002, top_k=2)
            for gate, worse in (("topk", 1.01), ("hash", 1.03)):
                write_run(tmp_path / "clark_lm_routers", f"{gate}_d{d}_e{e}", d_model=d, experts=e,
                          seed=1, loss=base * worse * (1 + 0.001 * e), gate=gate)
    p = analysis_cli("clark", tmp_path, "--bootstrap", "200")
    assert p.returncode == 0, p.stdout + p.stderr
    out = (tmp_path / "clark.md").read_text()
    assert "## 1. Loss falls with E at fixed N: reproduced" in out
    assert "## 2. The gain shrinks as N grows (c > 0): reproduced" in out
    assert "## 3. K matters little at equal compute: reproduced" in out
    c10 = TRUE["c"] * np.log(10)
    assert f"c = {c10:.3g}"[:8] in out, out
    ranks = [line for line in out.splitlines()
             if line.startswith("| 16 | ") and line.split(" | ")[1] in ("hash", "sbase", "topk")]
    assert [r.split(" | ")[1] for r in ranks] == ["hash", "sbase", "topk"], ranks
    assert [r.split(" | ")[-1].rstrip(" |") for r in ranks] == ["3", "1", "2"], ranks
    for png in ("clark_loss_vs_experts", "clark_slope_vs_size", "clark_k", "clark_routers"):
        assert_png(tmp_path / f"{png}.png")


def test_clark_command_says_when_a_finding_is_not_reproduced(tmp_path):
    """K = 2 runs 10% worse: more than a doubling of E gains, so finding 3 is not reproduced."""
    synthetic_dir(tmp_path / "clark_lm", sizes=(8, 16, 32, 64), experts=(1, 2, 4, 8, 16))
    for d in (8, 16, 32):
        for e in (2, 4):
            _, active, _ = model_counts(d, 2 * d, e, 1, layers=LAYERS)
            write_run(tmp_path / "clark_lm_topk", f"k1_d{d}_e{e}", d_model=d, experts=e, seed=1,
                      loss=float(law(active, e)))
            write_run(tmp_path / "clark_lm_topk", f"k2_d{d}_e{e}", d_model=d, d_ff=d, experts=e,
                      seed=1, loss=float(law(active, e)) * 1.1, top_k=2)
    p = analysis_cli("clark", tmp_path, "--bootstrap", "100")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "## 3. K matters little at equal compute: not reproduced" in p.stdout
    assert "## Routers" not in p.stdout
    p = analysis_cli("clark", tmp_path / "nowhere")
    assert p.returncode == 2 and "run scripts/run_clark.sh first" in p.stderr, p.stderr


# --- the package: loaders, parameter counts, install, import ----------------------------------

def test_runs_are_in_natural_order_of_ids(sweep, runs, tmp_path):
    assert list(runs["id"]) == sorted(runs["id"], key=natural_key)
    src = runs[runs["complete"]]["file"].iloc[0]
    for name in ("p10", "p2", "p1", "p2b"):
        shutil.copy(src, tmp_path / f"{name}.h5")
    order = ["p1", "p2", "p2b", "p10"]
    assert [p.stem for p in run_files(tmp_path)] == order
    assert list(load_runs(tmp_path)["id"]) == order
    assert list(load_runs(str(tmp_path / "p*.h5"))["id"]) == order  # a glob
    assert list(load_runs(sorted(tmp_path.glob("*.h5"), reverse=True))["id"]) == order
    with pytest.raises(FileNotFoundError):
        load_runs(str(tmp_path / "q*.h5"))


def test_load_sweep_gives_one_typed_row_per_point(sweep, runs):
    pts = load_sweep(sweep / "sweep.h5")
    assert load_sweep(sweep).equals(pts)  # the directory holding it works too
    assert len(pts) == 8 and list(pts["index"]) == list(range(8))
    assert pts.attrs["sweep"]["command"] == "moe"
    assert {"experts", "top-k"} <= set(pts.attrs["sweep"]["swept"])
    for col in ("experts", "top_k", "d_model", "d_ff", "steps", "batch_tokens", "params_total",
                "params_active", "flops_per_token", "steps_done"):
        assert str(pts[col].dtype) == "Int64", (col, pts[col].dtype)
    for col in ("val_loss", "train_loss", "tokens_per_s", "dropped_fraction"):
        assert pts[col].dtype == np.float64, (col, pts[col].dtype)
    assert str(pts["quiet"].dtype) == "boolean" and pts["quiet"].all()
    assert pts["complete"].dtype == bool and pts["complete"].sum() == 6
    assert set(pts["status"]) == {"complete", "invalid"} and isinstance(pts["id"].iloc[0], str)
    bad = pts[pts["status"] == "invalid"]
    assert bad["params_total"].isna().all() and bad["val_loss"].isna().all()
    assert (bad["top_k"] == 4).all() and bad["error"].str.contains("must not exceed").all()
    # The same numbers as the run files, under the same ids.
    by_id = runs.set_index("id")
    for _, pt in pts[pts["complete"]].iterrows():
        run = by_id.loc[pt["id"]]
        assert pt["val_loss"] == run["val_loss"] and pt["params_total"] == run["params_total"]
        assert pt["experts"] == run["experts"] and pt["file"] == run["file"]


def test_long_format_steps_hold_the_per_expert_and_per_layer_series(runs):
    row = runs[runs["complete"] & (runs["experts"] == 4)].iloc[0]
    E, L = 4, 2
    df = load_steps_long(row["file"])
    assert list(df.columns) == ["run", "step", "metric", "layer", "expert", "phase", "rank",
                                "peer", "value"]
    assert set(df["run"]) == {row["id"]} and df["value"].dtype == np.float64
    with h5py.File(row["file"], "r") as f:
        per_layer = f["metrics/expert_tokens_per_layer"][()]
        per_expert = f["metrics/expert_tokens"][()]
        by_phase = f["metrics/a2a_seconds_by_phase"][()]
    t = df[df["metric"] == "expert_tokens_per_layer"]
    assert len(t) == STEPS * L * E
    assert set(t["layer"]) == set(range(L)) and set(t["expert"]) == set(range(E))
    got = t.pivot_table(index="step", columns=["layer", "expert"], values="value")
    np.testing.assert_array_equal(got.to_numpy().reshape(STEPS, L, E), per_layer)
    t = df[df["metric"] == "expert_tokens"]
    assert len(t) == STEPS * E and t["layer"].isna().all()
    np.testing.assert_array_equal(t.pivot(index="step", columns="expert", values="value").to_numpy(),
                                  per_expert)
    np.testing.assert_array_equal(per_layer.sum(axis=1), per_expert)  # the layers add up
    t = df[df["metric"] == "a2a_seconds_by_phase"]
    assert len(t) == STEPS * L * 4
    assert set(t["phase"]) == {"forward_dispatch", "forward_combine", "backward_dispatch",
                               "backward_combine"}
    first = t[(t["step"] == 1) & (t["layer"] == 1)].set_index("phase")["value"]
    assert first["backward_combine"] == by_phase[0, 1, 3]
    steps = load_steps(row["file"])
    t = df[df["metric"] == "train_loss"]
    assert list(t["step"]) == list(range(1, STEPS + 1))
    np.testing.assert_array_equal(t["value"], steps["train_loss"])
    assert t[["layer", "expert", "rank", "peer"]].isna().all().all() and t["phase"].isna().all()
    assert list(df.loc[df["metric"] == "val_loss", "step"]) == [10, 20]
    # Per-rank series on request only (P x P rows per step).
    assert "traffic" not in set(df["metric"])
    tr = load_steps_long(row["file"], metrics=["traffic"])
    assert set(tr["metric"]) == {"traffic"} and len(tr) == STEPS * 2 * 2
    assert set(zip(tr["rank"], tr["peer"])) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert "rank_expert_tokens" in set(load_steps_long(row["file"], per_rank=True)["metric"])
    # Many runs: a load_runs table (invalid records hold no metrics), runs in natural order.
    many = load_steps_long(runs, metrics=["train_loss", "gate_mass"])
    ok = runs[runs["complete"]]
    assert set(many["run"]) == set(ok["id"]) and set(many["metric"]) == {"train_loss", "gate_mass"}
    assert len(many[many["metric"] == "train_loss"]) == STEPS * len(ok)


# Options whose counts the old derivation missed: shared experts, granularity, the lm task's
# vocabulary (embedding table), the constant gate (no router), plus noisy-topk, a dense
# mixture, classification and a dense block.
COUNT_CASES = {
    "lm_shared_granular": dict(task="lm", context=8, embed_dim=8, shared_experts=1,
                               granularity=2, experts=4, top_k=1),
    "constant": dict(gate="constant", experts=4),
    "teacher_noisy": dict(task="teacher", problem="classification", classes=3, gate="noisy-topk",
                          experts=4, top_k=2, layers=3, moe_every=2),
    "dense_mixture": dict(gate="dense", experts=4, mixture_loss="global", shared_experts=2),
}


def test_parameter_counts_are_the_ones_the_run_logged(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog; pack my box with five dozen "
                      "liquor jugs.\n" * 300)
    for name, opts in COUNT_CASES.items():
        extra = {"data": corpus} if opts.get("task") == "lm" else {}
        _, out = run_moe(tmp_path, 1, out=tmp_path / f"{name}.h5", steps=2, batch_tokens=128,
                         val_tokens=128, d_model=16, d_ff=32, **extra, **opts)
        with h5py.File(out, "r") as f:
            final = {k: f["final"].attrs[k] for k in ("params_total", "params_active", "flops_per_token")}
        logged = tuple(float(final[k]) for k in ("params_total", "params_active", "flops_per_token"))
        row = load_runs(out).iloc[0]
        assert tuple(logged_counts(out)) == logged, name
        assert tuple(counts_of_run(row)) == logged, name  # read, not derived
        assert tuple(derive_counts(row)) == logged, (name, tuple(derive_counts(row)), logged)
    # The lm run's whole V x De table is in its total, the C rows a token looks up in its
    # active count: the rest of the difference is the experts a token does not use.
    lm = logged_counts(tmp_path / "lm_shared_granular.h5")
    expert = 2 * 16 * 16 + 16 + 16  # F / M = 16 wide
    unused = 2 * (8 - 2) * expert  # per MoE layer E' - K' = 8 - 2 experts
    assert lm.params_total - lm.params_active == (256 - 8) * 8 + unused


WRITER = """
import sys, h5py
f = h5py.File(sys.argv[1], "w")  # HDF5's default: an exclusive lock while open
f.attrs.update({"kind": "moe", "complete": 0, "experts": 4})
f.flush()
print("ready", flush=True)
sys.stdin.readline()
f.close()
"""
READER = """
import os, sys, h5py
try:
    h5py.File(sys.argv[1], "r").close()
    print("no lock")
except OSError:
    print("locked")
before = dict(os.environ)
from moesim_analysis import load_runs
df = load_runs(sys.argv[1])
print(df.loc[0, "status"], df.loc[0, "experts"])
assert dict(os.environ) == before
"""


def _no_lock_env(**extra):
    env = subprocess_env({"PYTHONPATH": str(REPO_ROOT), **extra})
    env.pop("HDF5_USE_FILE_LOCKING", None)
    env.pop("MPLBACKEND", None)
    return env


def test_a_file_being_written_is_read_without_hdf5_file_locks(tmp_path):
    path = tmp_path / "live.h5"
    env = _no_lock_env()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert writer.stdout.readline().strip() == "ready"
        p = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=60)
    finally:
        writer.stdin.close()
        writer.wait(timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split()
    # Where the filesystem locks at all, a plain open fails; the package reads it all the same.
    assert lines[0] in ("locked", "no") and lines[-2:] == ["incomplete", "4"], p.stdout


def test_importing_the_package_changes_nothing_process_wide(sweep, tmp_path):
    code = textwrap.dedent(f"""
        import os, sys
        before = dict(os.environ)
        import matplotlib
        backend = dict.__getitem__(matplotlib.rcParams, "backend")
        import moesim_analysis
        from moesim_analysis import clark, costmodel, figures, load, params, report, scaling
        runs = moesim_analysis.load_runs({str(sweep)!r})
        moesim_analysis.load_steps_long(runs)
        figures.loss_curves(runs, {str(tmp_path / "c.png")!r})
        assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())
        assert dict.__getitem__(matplotlib.rcParams, "backend") == backend
        assert "matplotlib.pyplot" not in sys.modules
        print("unchanged")
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=_no_lock_env(), cwd=tmp_path, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "unchanged", p.stdout + p.stderr


def test_the_package_installs_offline_into_a_venv(tmp_path):
    """pip install --no-deps --no-build-isolation of a copy of the package (pyproject.toml and
    moesim_analysis/) into a venv that sees the system's numpy, h5py, pandas, scipy and
    matplotlib, with no index: then importable from anywhere, with its two commands."""
    pytest.importorskip("pip", reason="no pip for this interpreter (Debian: python3-pip)")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO_ROOT / "pyproject.toml", src)
    shutil.copytree(REPO_ROOT / "moesim_analysis", src / "moesim_analysis",
                    ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv],
                   check=True, timeout=120)
    py = venv / "bin" / "python"
    env = _no_lock_env(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH")
    p = subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                        "--no-index", str(src)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    where = tmp_path / "elsewhere"
    where.mkdir()
    p = subprocess.run([py, "-c", "import moesim_analysis as m; print(m.__file__, m.__version__)"],
                       capture_output=True, text=True, env=env, cwd=where, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith(str(venv)), p.stdout + p.stderr
    cmd = subprocess.run([venv / "bin" / "moesim-analysis", "report", "--help"],
                         capture_output=True, text=True, env=env, cwd=where, timeout=60)
    assert cmd.returncode == 0 and cmd.stdout.startswith("usage: moesim-analysis report"), cmd.stdout
    assert "(default: 1000)" in cmd.stdout and "(default: val_loss)" in cmd.stdout
    mod = subprocess.run([py, "-m", "moesim_analysis", "simulate", "--help"],
                         capture_output=True, text=True, env=env, cwd=where, timeout=60)
    assert mod.returncode == 0 and mod.stdout.startswith("usage: python3 -m moesim_analysis simulate")
    for default in ("(default: 50.0)", "(default: 12.5)", "(default: all)", "(default: contiguous)"):
        assert default in mod.stdout, default
