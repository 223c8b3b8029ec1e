"""`python3 -m moesim_analysis report DIR`: DIR/report/index.md and index.html with the figures, the
fitted scaling law (its identification warnings above its table, or why there is none) and a
table of the runs."""
from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path

import numpy as np
import pandas as pd

from .load import (NON_SCIENCE_OPTIONS, PROVENANCE, _py, load_expert_load, natural_key, open_h5,
                   require_runs, usable_runs)
from .scaling import ScalingFit, fit_scaling_law

MIN_FIT_RUNS = 5
ALWAYS_OPTIONS = ["experts", "top_k", "d_model", "d_ff", "seed", "data_seed"]
RESULT_COLUMNS = ["val_loss", "test_score", "params_total", "params_active", "tokens_per_s"]


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """id, status, the options that vary (and a few always), results, error."""
    skip = PROVENANCE | NON_SCIENCE_OPTIONS | {"id", "file", "steps_logged"} | set(RESULT_COLUMNS)
    finals = {c for c in runs.columns if c.startswith("final_")} | set(runs.attrs.get("final_columns", ()))
    # What varies among the runs: records of invalid or failed points, and unreadable files,
    # hold only some options (the rest would read as varying); they count where nothing else is.
    ran = runs[~runs["status"].isin(["invalid", "failed", "unreadable"])] if "status" in runs else runs
    ran = ran if len(ran) else runs
    varying = [c for c in runs.columns
               if c not in skip and c not in finals and not c.startswith("_")
               and ran[c].astype(str).nunique(dropna=False) > 1
               and c in _option_columns(runs)]
    opts = [c for c in ALWAYS_OPTIONS if c in runs.columns] + [c for c in varying if c not in ALWAYS_OPTIONS]
    cols = ["id", "kind", "status", "ranks"] + opts + [c for c in RESULT_COLUMNS if c in runs.columns]
    cols = [c for c in dict.fromkeys(cols) if c in runs.columns]
    t = runs[cols].copy()
    if "error" in runs and runs["error"].astype(str).str.len().gt(0).any():
        t["error"] = runs["error"].fillna("").astype(str).str.slice(0, 80)
    return t.sort_values("id", key=lambda ids: ids.map(natural_key)).reset_index(drop=True)


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
        with open_h5(p) as f:
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


def _pick_routing_runs(use: pd.DataFrame, loss: str, k: int = 3) -> list[str]:
    """Runs with routing-recovery counts (teacher and regimes tasks; teacher runs first): the
    highest NMI, the lowest loss, the most experts."""
    if use.empty or "val_routing_nmi" not in use:
        return []
    have = use[pd.to_numeric(use["val_routing_nmi"], errors="coerce").notna()]
    if "task" in have and (have["task"] == "teacher").any():
        have = have[have["task"] == "teacher"]
    if have.empty:
        return []
    picks = [have.loc[pd.to_numeric(have["val_routing_nmi"]).idxmax(), "file"]]
    if loss in have and pd.to_numeric(have[loss], errors="coerce").notna().any():
        picks.append(have.loc[pd.to_numeric(have[loss], errors="coerce").idxmin(), "file"])
    picks.append(have.sort_values(["experts", "id"]).iloc[-1]["file"])
    return list(dict.fromkeys(picks))[:k]


def _pick_traffic_runs(use: pd.DataFrame, loss: str, k: int = 2) -> list[str]:
    """Runs on two or more ranks: the one on the most ranks with the most experts, the lowest loss."""
    if use.empty or "ranks" not in use:
        return []
    multi = use[pd.to_numeric(use["ranks"], errors="coerce") >= 2]
    if multi.empty:
        return []
    picks = [multi.sort_values(["ranks", "experts", "id"]).iloc[-1]["file"]]
    if loss in multi and pd.to_numeric(multi[loss], errors="coerce").notna().any():
        picks.append(multi.loc[pd.to_numeric(multi[loss], errors="coerce").idxmin(), "file"])
    return list(dict.fromkeys(picks))[:k]


# One line under each figure of the report (by file name).
CAPTIONS = {
    "loss_vs_experts.png": "Validation loss against the number of experts, one line per model size: "
                           "the mean over seeds, the band from the lowest to the highest seed, the "
                           "dense (E = 1) run of each size dotted, the fitted law dashed.",
    "routers_vs_experts.png": "Loss against experts, one line per gate, one panel per model size.",
    "loss_vs_compute.png": "Loss against training compute (FLOPs per token x tokens trained), one "
                           "line per expert count through the model sizes.",
    "iso_loss.png": "Iso-loss contours of the fitted law over parameters and experts, one panel per "
                    "K, the measured points on top.",
    "effective_params.png": "Clark et al.'s effective parameter count over the real one, against "
                            "experts: above 1, the MoE model is worth a dense model that many "
                            "times its size.",
    "loss_curves.png": "Training loss against step, one panel per model size, colour = expert "
                       "count: the mean over seeds with a band from the lowest to the highest seed; "
                       "dots are validation losses.",
    "loss_vs_wall_time.png": "Training loss against wall time (the running sum of each step's time "
                             "on the slowest rank), one line per run, colour = expert count.",
    "routing_health.png": "Per step: the share of assignments dropped by the capacity limit, the "
                          "load-balancing loss before its weight (1 = balanced) and the router's "
                          "mean entropy (dotted: ln E, a uniform router); mean over seeds, E = 1 "
                          "runs left out.",
    "expert_load.png": "Each step's share of the kept assignments per expert (all MoE layers): "
                       "bright rows are overloaded experts, dark rows starved ones.",
    "expert_load_per_layer.png": "The same per MoE layer (metrics/expert_tokens_per_layer): "
                                 "imbalance or collapse in one layer that the sum over layers hides.",
    "routing_confusion.png": "Which student expert takes the validation tokens of each source (the "
                             "teacher's top-1 expert, or the regime): routing_recovery/counts of the "
                             "MoE layer with the highest NMI, each column normalised (percent in the "
                             "cells), experts reordered to match the sources. A permutation matrix "
                             "is perfect recovery.",
    "traffic.png": "Bytes rank i sends to rank j per step (metrics/traffic, mean over steps); the "
                   "grey diagonal is a rank's own tokens, which never leave it.",
    "exchange_phases.png": "Per grid point, exchange time per step split by phase (transfer, the "
                           "least time any rank spent in it, summed over MoE layers; hatched: "
                           "waiting for the last rank), and the bytes of each phase; median over "
                           "steps after the first, mean over seeds.",
}


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
                 max_curves: int = 48, max_stack: int = 6) -> tuple[Path, list[str]]:
    """Write the report; returns the path of index.html and the fit's warnings (each line
    starts with "warning:"; the report shows them above the coefficient table)."""
    from . import figures  # matplotlib only when drawing

    directory = Path(directory)
    runs = require_runs(directory)
    out = Path(out) if out else (directory if directory.is_dir() else directory.parent) / "report"
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    figs: list[tuple[str, str, str]] = []  # (title, file name, caption)

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
        # A figure whose data the runs lack is a note, never a failed report.
        try:
            written = fn(*args, out / name, **kw)
            figs.append((title, Path(written).name, CAPTIONS.get(name, "")))
        except Exception as exc:  # noqa: BLE001
            known = isinstance(exc, (ValueError, KeyError, OSError))
            why = str(exc) if known else f"{type(exc).__name__}: {exc}"
            notes.append(f"Figure '{title}' ({name}) skipped: {why}")

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
        add("Loss curves", figures.loss_curves, "loss_curves.png", moe, max_runs=max_curves)
        add("Loss against wall time", figures.loss_vs_wall_time, "loss_vs_wall_time.png", moe,
            max_runs=max_curves)
        add("Dropped fraction, auxiliary loss and gate entropy", figures.routing_health,
            "routing_health.png", moe, max_runs=max_curves)
        picked = _pick_heatmap_runs(moe, loss, heatmaps)
        if picked:
            add("Expert load (lowest loss, most experts, most uneven load)",
                figures.expert_load_heatmap, "expert_load.png", picked)
            add("Expert load per MoE layer", figures.expert_load_per_layer,
                "expert_load_per_layer.png", picked[:2])
        for title, fn, name, picks, none in (
                ("Routing confusion matrix", figures.routing_confusion, "routing_confusion.png",
                 _pick_routing_runs(moe, loss), "no run has routing_recovery/counts (tasks teacher "
                                                "and regimes)"),
                ("Traffic between ranks", figures.traffic_heatmap, "traffic.png",
                 _pick_traffic_runs(moe, loss), "no run on two or more ranks")):
            if picks:
                add(title, fn, name, picks)
            else:
                notes.append(f"Figure '{title}' ({name}) skipped: {none}")
        add("Exchange time per phase", figures.exchange_phases, "exchange_phases.png", moe)
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
    for title, name, caption in figs:
        md += [f"### {title}", "", f"![{title}]({name})", ""] + ([caption, ""] if caption else [])
    md += ["## Runs", "", markdown_table(table), ""]
    (out / "index.md").write_text("\n".join(md))

    e = html.escape
    h = ["<!doctype html>", "<html><head><meta charset='utf-8'>",
         f"<title>moesim report: {e(str(directory))}</title>",
         "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
         "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
         "img{max-width:100%}figure{margin:0 0 1.5em 0}figcaption{font-size:13px;color:#333}.warning{color:#a00;font-weight:bold}</style></head><body>",
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
    for title, name, caption in figs:
        h.append(f"<h3>{e(title)}</h3><figure><img src='{e(name)}' alt='{e(title)}'>"
                 + (f"<figcaption>{e(caption)}</figcaption>" if caption else "") + "</figure>")
    h += ["<h2>Runs</h2>", html_table(table), "</body></html>"]
    (out / "index.html").write_text("\n".join(h))
    return out / "index.html", warnings
