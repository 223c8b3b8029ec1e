"""`python3 -m analysis report DIR`: DIR/report/index.md and index.html with the figures, the
fitted scaling law (its identification warnings above its table, or why there is none) and a
table of the runs."""
from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .load import (NON_SCIENCE_OPTIONS, PROVENANCE, _py, load_expert_load, require_runs,
                   usable_runs)
from .scaling import ScalingFit, fit_scaling_law

MIN_FIT_RUNS = 5
ALWAYS_OPTIONS = ["experts", "top_k", "d_model", "d_ff", "seed", "data_seed"]
RESULT_COLUMNS = ["val_loss", "test_score", "params_total", "params_active", "tokens_per_s"]


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """id, status, the options that vary (and a few always), results, error."""
    skip = PROVENANCE | NON_SCIENCE_OPTIONS | {"id", "file", "steps_logged"} | set(RESULT_COLUMNS)
    finals = {c for c in runs.columns if c.startswith("final_")}
    varying = [c for c in runs.columns
               if c not in skip and c not in finals and not c.startswith("_")
               and runs[c].astype(str).nunique(dropna=False) > 1
               and c in _option_columns(runs)]
    opts = [c for c in ALWAYS_OPTIONS if c in runs.columns] + [c for c in varying if c not in ALWAYS_OPTIONS]
    cols = ["id", "kind", "status", "ranks"] + opts + [c for c in RESULT_COLUMNS if c in runs.columns]
    cols = [c for c in dict.fromkeys(cols) if c in runs.columns]
    t = runs[cols].copy()
    if "error" in runs and runs["error"].astype(str).str.len().gt(0).any():
        t["error"] = runs["error"].fillna("").astype(str).str.slice(0, 80)
    return t.sort_values("id").reset_index(drop=True)


def _option_columns(runs: pd.DataFrame) -> set:
    """Root-attribute columns: everything before the first `final` attribute is not knowable
    from the frame alone, so exclude known result names instead."""
    result_like = {"train_loss", "val_accuracy", "flops_per_token", "param_utilization",
                   "wall_seconds", "a2a_seconds", "a2a_wait_seconds", "compute_seconds", "a2a_bytes", "dropped_fraction",
                   "steps_done", "token_bytes", "metric", "meta_train_score", "train_rows",
                   "test_rows", "seconds", "bytes_communicated", "comm_seconds", "test_accuracy",
                   "test_log_loss", "test_rmse", "test_r2", "meta_tuned_value"}
    return {c for c in runs.columns if c not in result_like}


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{v:.5g}"
    return str(v)


def markdown_table(df: pd.DataFrame, index: bool = False) -> str:
    d = df.reset_index() if index else df
    head = "| " + " | ".join(map(str, d.columns)) + " |"
    sep = "|" + "|".join("---" for _ in d.columns) + "|"
    body = ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |"
            for row in d.itertuples(index=False)]
    return "\n".join([head, sep] + body)


def html_table(df: pd.DataFrame, index: bool = False) -> str:
    d = df.reset_index() if index else df
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in d.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in d.itertuples(index=False))
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody>\n</table>"


def _sweep_summary(directory: Path) -> str:
    p = directory / "sweep.h5"
    if not p.is_file():
        return ""
    try:
        with h5py.File(p, "r") as f:
            status = [_py(s) for s in f["points/status"][()]]
            cfg = _py(f.attrs.get("config", ""))
    except Exception as exc:  # noqa: BLE001
        return f"sweep.h5 is unreadable ({exc})"
    counts = pd.Series(status).value_counts()
    return (f"sweep.h5 ({cfg}): {len(status)} points, "
            + ", ".join(f"{n} {s}" for s, n in counts.items()))


POINTS_TEXT = ("Points (runs equal but for the seed): loss is the mean over seeds, loss_sd their "
               "standard deviation; residual = log L − predicted log L; N_eff is Clark et al.'s "
               "effective parameter count, the dense (E = 1) model size with the same predicted loss.")


def _points(fit: ScalingFit) -> pd.DataFrame:
    """The fit's per-point table with the run ids shortened (a point may hold many seeds)."""
    t = fit.residuals.copy()
    if "ids" in t:
        t["ids"] = [x if len(x) <= 60 else x[:57] + "..." for x in t["ids"].astype(str)]
    return t


def _pick_heatmap_runs(use: pd.DataFrame, loss: str, k: int) -> list[str]:
    """The best run, the one with the most experts and the most unevenly loaded one."""
    if use.empty or k <= 0:
        return []
    picks = []
    if loss in use:
        picks.append(use.loc[use[loss].idxmin(), "file"])
    picks.append(use.sort_values(["experts", "id"]).iloc[-1]["file"])
    spread = {}
    for f in use["file"]:
        try:
            x = np.asarray(load_expert_load(f), float)
            share = x / np.maximum(x.sum(axis=1, keepdims=True), 1)
            spread[f] = float(np.mean(share.std(axis=1) * share.shape[1]))
        except (OSError, KeyError):
            pass
    if spread:
        picks.append(max(spread, key=spread.get))
    return list(dict.fromkeys(picks))[:k]


ROUTERS_TEXT = ("The sweep varies the gate: mean loss per gate (rows) and number of experts "
                "(columns) at each model size, lower is better. Clark et al. (2022) found S-BASE "
                ">= top-k >= hash routing.")


def _router_comparison(moe: pd.DataFrame, loss: str, n: str, saturating, e_start, e_max,
                       bootstrap, seed):
    # Per-gate fits use the full fit's own options; their warnings are not repeated here.
    """When runs differ in `gate`: (mean loss per size, gate and E; per-gate fitted law or
    None); None when they do not."""
    if moe.empty or "gate" not in moe or moe["gate"].nunique() < 2:
        return None
    sizes = [k for k in ("d_model", "d_ff", "layers", "top_k") if k in moe and moe[k].nunique() > 1]
    table = (moe.groupby(sizes + ["gate", "experts"])[loss].mean().unstack("experts")
             .reset_index())
    table.columns = [f"E={c}" if isinstance(c, (int, np.integer)) else str(c) for c in table.columns]
    rows = []
    for gate, g in moe.groupby("gate"):
        if len(g) < MIN_FIT_RUNS or g["experts"].nunique() < 2 or g[n].nunique() < 2:
            continue
        try:
            f = fit_scaling_law(g, loss=loss, n=n, saturating=saturating, e_start=e_start,
                                e_max=e_max, bootstrap=min(bootstrap, 200), seed=seed)
        except ValueError:
            continue
        rows.append({"gate": gate, **{k: f.coef[k] for k in f.coef}, "r2": f.r2})
    return table, (pd.DataFrame(rows) if rows else None)


def write_report(directory, out=None, *, loss: str = "val_loss", n: str = "params_active",
                 saturating: bool = False, e_start: float | None = None,
                 e_max: float | None = None, bootstrap: int = 1000, seed: int = 0, heatmaps: int = 3,
                 max_curves: int = 12, max_stack: int = 6) -> tuple[Path, list[str]]:
    """Write the report; returns the path of index.html and the fit's warnings (each line
    starts with "warning:"; the report shows them above the coefficient table)."""
    from . import figures  # matplotlib only when drawing

    directory = Path(directory)
    runs = require_runs(directory)
    out = Path(out) if out else (directory if directory.is_dir() else directory.parent) / "report"
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    figs: list[tuple[str, str]] = []  # (title, file name)

    moe, drop_note = usable_runs(runs, loss=loss, kind="moe")
    fit: ScalingFit | None = None
    if len(moe) >= MIN_FIT_RUNS and moe["experts"].nunique() > 1:
        # Warned about, not refused: the numbers show how far the design is from identifying
        # the law, and the warnings say what to add.
        try:
            fit = fit_scaling_law(runs, loss=loss, n=n, saturating=saturating, e_start=e_start,
                                  e_max=e_max, bootstrap=bootstrap, seed=seed)
        except ValueError as exc:
            notes.append(f"No scaling-law fit: {exc}.")
    elif (runs["kind"] == "moe").any():
        notes.append(f"No scaling-law fit: it needs at least {MIN_FIT_RUNS} complete MoE runs with "
                     f"a finite {loss} and more than one expert count; there are {len(moe)} "
                     f"complete runs with {moe['experts'].nunique() if len(moe) else 0} expert "
                     "count(s)" + (f" ({drop_note})" if drop_note else "") + ".")

    def add(title, fn, name, *args, **kw):
        try:
            written = fn(*args, out / name, **kw)
            figs.append((title, Path(written).name))
        except (ValueError, KeyError, OSError) as exc:
            notes.append(f"Figure '{title}' skipped: {exc}")

    routers = _router_comparison(moe, loss, n, saturating, e_start, e_max, bootstrap, seed)
    if not moe.empty:
        add("Loss against experts", figures.loss_vs_experts, "loss_vs_experts.png", runs,
            loss=loss, n=n, fit=fit)
        if routers is not None:
            add("Routers side by side", figures.routers_vs_experts, "routers_vs_experts.png", runs,
                loss=loss, n=n)
        add("Loss against compute", figures.loss_vs_compute, "loss_vs_compute.png", runs, loss=loss)
        if fit is not None:
            add("Iso-loss contours of the fitted law", figures.iso_loss_contours,
                "iso_loss.png", runs, fit, loss=loss)
            add("Effective parameter count (Clark et al. 2022)", figures.effective_params,
                "effective_params.png", runs, fit, loss=loss)
        curves = moe.sort_values("id")["file"].tolist()
        add("Loss curves", figures.loss_curves, "loss_curves.png", curves, max_runs=max_curves)
        picked = _pick_heatmap_runs(moe, loss, heatmaps)
        if picked:
            add("Expert load (lowest loss, most experts, most uneven load)",
                figures.expert_load_heatmap, "expert_load.png", picked)
    stack, _ = usable_runs(runs, loss=None, kind=None)
    stack = stack[stack["kind"].isin(["stack", "blend"])] if not stack.empty else stack
    for i, f in enumerate(stack.sort_values("id")["file"].head(max_stack) if len(stack) else []):
        add(f"Stacking meta-coefficients: {Path(f).stem}", figures.stacking_coefficients,
            f"stacking_{i}.png", f)

    table = runs_table(runs)
    status = runs["status"].value_counts()
    header = (f"{len(runs)} run files in {directory}: "
              + ", ".join(f"{cnt} {s}" for s, cnt in status.items()))
    sweep = _sweep_summary(directory if directory.is_dir() else directory.parent)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    md = [f"# moesim report: {directory.name or directory}", "", f"Generated {stamp}.", "", header]
    if sweep:
        md += ["", sweep]
    md += ["", "## Scaling law", ""]
    warnings = list(fit.warnings) if fit is not None else []
    if fit is not None:
        for w in warnings:
            md += [w, ""]
        md += [f"`{fit.describe()}`", ""]
        if fit.note:
            md += [fit.note, ""]
        md += [markdown_table(fit.coefficient_table(), index=True), "", POINTS_TEXT, "",
               markdown_table(_points(fit), index=False)]
    if routers is not None:
        md += ["", "## Routers", "", ROUTERS_TEXT, "", markdown_table(routers[0]), ""]
        if routers[1] is not None:
            md += ["Scaling law fitted per gate:", "", markdown_table(routers[1]), ""]
    md += [""] + [f"- {x}" for x in notes]
    md += ["", "## Figures", ""]
    for title, name in figs:
        md += [f"### {title}", "", f"![{title}]({name})", ""]
    md += ["## Runs", "", markdown_table(table), ""]
    (out / "index.md").write_text("\n".join(md))

    e = html.escape
    h = ["<!doctype html>", "<html><head><meta charset='utf-8'>",
         f"<title>moesim report: {e(str(directory))}</title>",
         "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
         "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
         "img{max-width:100%}.warning{color:#a00;font-weight:bold}</style></head><body>",
         f"<h1>moesim report: {e(directory.name or str(directory))}</h1>",
         f"<p>Generated {e(stamp)}.</p>", f"<p>{e(header)}</p>"]
    if sweep:
        h.append(f"<p>{e(sweep)}</p>")
    h.append("<h2>Scaling law</h2>")
    if fit is not None:
        h += [f"<p class='warning'>{e(w)}</p>" for w in warnings]
        h.append(f"<p><code>{e(fit.describe())}</code></p>")
        if fit.note:
            h.append(f"<p>{e(fit.note)}</p>")
        h += [html_table(fit.coefficient_table(), index=True),
              f"<p>{e(POINTS_TEXT)}</p>", html_table(_points(fit))]
    if routers is not None:
        h += ["<h2>Routers</h2>", f"<p>{e(ROUTERS_TEXT)}</p>", html_table(routers[0])]
        if routers[1] is not None:
            h += ["<p>Scaling law fitted per gate:</p>", html_table(routers[1])]
    if notes:
        h.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in notes) + "</ul>")
    h.append("<h2>Figures</h2>")
    for title, name in figs:
        h.append(f"<h3>{e(title)}</h3><img src='{e(name)}' alt='{e(title)}'>")
    h += ["<h2>Runs</h2>", html_table(table), "</body></html>"]
    (out / "index.html").write_text("\n".join(h))
    return out / "index.html", warnings
