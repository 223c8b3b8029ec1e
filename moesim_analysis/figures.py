"""Figures (PNG). Every function returns the path it wrote and refuses to write an empty figure
(ValueError when there is nothing to draw).

Figures are drawn on `matplotlib.figure.Figure` objects, not through pyplot: importing this
module neither picks a backend nor keeps figures alive, so it changes nothing for a program
(a notebook, say) that uses pyplot itself.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import (FormatStrFormatter, FuncFormatter, LogLocator, MaxNLocator,
                               NullFormatter)
import numpy as np
import pandas as pd

from .load import (PHASES, load_expert_load, load_metric, load_runs, load_steps, natural_key,
                   open_h5, point_columns, read_attrs, usable_runs)
from .params import derive_counts
from .scaling import ScalingFit

SIZE_KEYS = ("d_model", "d_ff", "layers", "moe_every", "top_k")
DPI = 100


def subplots(nrows: int = 1, ncols: int = 1, *, figsize, squeeze: bool = True, sharex=False,
             sharey=False, layout: str = "constrained"):
    """(Figure, axes) as pyplot.subplots gives them, without pyplot's global state."""
    fig = Figure(figsize=figsize, layout=layout)
    axes = fig.subplots(nrows, ncols, squeeze=squeeze, sharex=sharex, sharey=sharey)
    return fig, axes


def _colors() -> list:
    return matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


def _finish(fig, axes, path) -> str:
    for ax in axes:
        if not ax.has_data():
            raise ValueError(f"{path}: a panel has no data")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)  # layout="constrained" instead of a second, "tight" draw
    if path.stat().st_size == 0:
        raise RuntimeError(f"{path}: written empty")
    return str(path)


def _plain_log_y(ax) -> None:
    """Log y axis labelled 0.43 rather than 4.3x10^-1 (minor ticks labelled too where the axis
    spans less than a decade, else their labels would run into each other)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo < 8:
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
    else:  # 0.2, 0.5, 1, 2, 5 labelled; below 1000x also labelled minor ticks would collide
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if hi / lo < 1000 else (1.0,)))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _grouper(keys: list):
    """groupby's key: a lone column by name (a list of one gives 1-tuples in future pandas and
    warns about it now)."""
    return keys[0] if len(keys) == 1 else keys


def _size_groups(df: pd.DataFrame) -> list[str]:
    """The model-shape columns that vary (each combination is one model size)."""
    return [k for k in SIZE_KEYS if k in df.columns and df[k].nunique(dropna=False) > 1]


def _size_label(keys, values, n_mean) -> str:
    short = {"d_model": "D", "d_ff": "F", "layers": "L", "moe_every": "every", "top_k": "K"}
    if not isinstance(values, tuple):
        values = (values,)
    parts = [f"{short[k]}={v:g}" if isinstance(v, (int, float, np.number)) else f"{short[k]}={v}"
             for k, v in zip(keys, values)]
    return " ".join(parts) + f" (N≈{n_mean:,.0f})"


def _band_label(ax, color="0.5") -> None:
    """A legend entry for the seed bands."""
    ax.fill_between([], [], [], color=color, alpha=0.2, label="band: min to max over seeds")


def loss_vs_experts(runs: pd.DataFrame, path, *, loss: str = "val_loss", n: str = "params_active",
                    fit: ScalingFit | None = None) -> str:
    """Loss against experts (log x), one line per model size (Clark et al. 2022, Fig. 1a): the
    mean over seeds with a band from the lowest to the highest seed, each run a dot, the dense
    (E = 1) runs of a size as a dotted horizontal reference, the fitted law dashed if given."""
    use, note = usable_runs(runs, loss=loss, kind="moe", require=["experts"])
    if use.empty:
        raise ValueError(f"no complete MoE runs with {loss}" + (f" ({note})" if note else ""))
    keys = _size_groups(use)
    groups = use.groupby(_grouper(keys), sort=True) if keys else [((), use)]
    fig, ax = subplots(figsize=(6.8, 4.8), layout="constrained")
    colors = _colors()
    dense_drawn = banded = False
    for i, (values, g) in enumerate(groups):
        c = colors[i % len(colors)]
        by_e = g.groupby("experts")[loss]
        mean, low, high = by_e.mean(), by_e.min(), by_e.max()
        n_mean = float(g[n].mean()) if n in g else float("nan")
        ax.plot(mean.index, mean.values, "-o", color=c, label=_size_label(keys, values, n_mean))
        if (by_e.size() > 1).any():
            ax.fill_between(mean.index, low.values, high.values, color=c, alpha=0.2, lw=0)
            banded = True
        ax.scatter(g["experts"], g[loss], color=c, s=12, alpha=0.5)
        if 1 in mean.index:
            ax.axhline(mean.loc[1], color=c, ls=":", lw=1.2,
                       label=None if dense_drawn else "dense baseline (E = 1), per size")
            dense_drawn = True
        if fit is not None and np.isfinite(n_mean):
            Es = np.geomspace(g["experts"].min(), g["experts"].max(), 50)
            ax.plot(Es, fit.predict(n_mean, Es), "--", color=c, lw=1)
    if banded:
        _band_label(ax)
    ax.set_xscale("log", base=2)
    _plain_log_y(ax)
    ax.set_xlabel("experts E")
    ax.set_ylabel(f"{loss} (mean over seeds)")
    ax.set_title(f"{loss} against experts" + (" (dashed: fitted law)" if fit is not None else ""))
    ax.legend(fontsize=7)
    if note:
        fig.suptitle(note, fontsize=7)
    return _finish(fig, [ax], path)


def effective_params(runs: pd.DataFrame, fit: ScalingFit, path, *, loss: str | None = None) -> str:
    """Clark et al.'s effective parameter count over the real number of parameters, N̄/N,
    against experts, one line per model size, the band its interval over the fit's bootstrap."""
    loss = loss or fit.loss
    use, note = usable_runs(runs, loss=loss, kind="moe", require=["experts", fit.n_column])
    if use.empty:
        raise ValueError("no complete MoE runs to draw")
    keys = _size_groups(use)
    groups = use.groupby(_grouper(keys), sort=True) if keys else [((), use)]
    fig, ax = subplots(figsize=(6.4, 4.6), layout="constrained")
    colors = _colors()
    level = fit.level
    for i, (values, g) in enumerate(groups):
        c = colors[i % len(colors)]
        pts = g.groupby("experts")[fit.n_column].mean()
        E, N = pts.index.to_numpy(float), pts.to_numpy(float)
        ratio = fit.effective_params(N, E) / N
        if not np.isfinite(ratio).any():
            continue
        ax.plot(E, ratio, "-o", color=c, label=_size_label(keys, values, float(N.mean())))
        if len(fit.boot) >= 2:
            e_draws = fit.boot_e if fit.saturating and fit.boot_e is not None else [(None, None)] * len(fit.boot)
            draws = np.array([fit.effective_params(N, E, b, *e) for b, e in zip(fit.boot, e_draws)]) / N
            if np.isfinite(draws).any():
                lo, hi = np.nanquantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
                ax.fill_between(E, lo, hi, color=c, alpha=0.2, lw=0)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xscale("log", base=2)
    _plain_log_y(ax)
    ax.set_xlabel("experts E")
    ax.set_ylabel("effective parameters / parameters (N_eff / N)")
    ax.set_title(f"effective parameter count of the fitted law (band: {100 * level:g}% bootstrap interval)",
                 fontsize=9)
    ax.legend(fontsize=7)
    if note:
        fig.suptitle(note, fontsize=7)
    return _finish(fig, [ax], path)


def loss_vs_compute(runs: pd.DataFrame, path, *, loss: str = "val_loss") -> str:
    """Loss against training compute, FLOPs per token x tokens trained (log-log), one line per
    expert count through the model sizes; the mean over seeds with min-max bars."""
    use, note = usable_runs(runs, loss=loss, kind="moe", require=["experts", "flops_per_token", "batch_tokens"])
    if use.empty:
        raise ValueError(f"no complete MoE runs with {loss}, flops_per_token and batch_tokens")
    steps = use["steps_done"] if "steps_done" in use else use["steps"]
    use = use.assign(_compute=use["flops_per_token"].astype(float) * use["batch_tokens"].astype(float)
                     * pd.to_numeric(steps, errors="coerce"))
    use = use[np.isfinite(use["_compute"]) & (use["_compute"] > 0)]
    if use.empty:
        raise ValueError("no run has a positive compute (FLOPs per token x tokens trained)")
    keys = ["experts"] + _size_groups(use)
    fig, ax = subplots(figsize=(6.8, 4.8), layout="constrained")
    cmap = matplotlib.colormaps["viridis"]
    Es = sorted(use["experts"].unique())
    for i, e in enumerate(Es):
        g = use[use["experts"] == e]
        pts = g.groupby(keys, sort=True).agg(x=("_compute", "mean"), y=(loss, "mean"),
                                             lo=(loss, "min"), hi=(loss, "max")).sort_values("x")
        c = cmap(i / max(len(Es) - 1, 1))
        ax.errorbar(pts["x"], pts["y"], yerr=[pts["y"] - pts["lo"], pts["hi"] - pts["y"]],
                    fmt="-o" if e != 1 else "--s", color=c, ms=4, capsize=2,
                    label=f"E = {e:g}" + (" (dense)" if e == 1 else ""))
    ax.set_xscale("log")
    _plain_log_y(ax)
    ax.set_xlabel("training compute: FLOPs per token x tokens trained")
    ax.set_ylabel(f"{loss} (mean over seeds, bars: min to max)")
    ax.set_title(f"{loss} against compute, one line per expert count")
    ax.legend(fontsize=7)
    if note:
        fig.suptitle(note, fontsize=7)
    return _finish(fig, [ax], path)


def routers_vs_experts(runs: pd.DataFrame, path, *, loss: str = "val_loss",
                       n: str = "params_active") -> str:
    """Routers side by side (Clark et al. 2022, Fig. 4): loss against experts (log x), one
    line per gate, one panel per model size. Needs runs that differ in `gate`."""
    use, note = usable_runs(runs, loss=loss, kind="moe", require=["experts"])
    if use.empty or "gate" not in use or use["gate"].nunique() < 2:
        raise ValueError("no complete MoE runs with more than one gate")
    keys = [k for k in _size_groups(use) if k != "top_k"] or []
    groups = list(use.groupby(_grouper(keys), sort=True)) if keys else [((), use)]
    fig, axes = subplots(1, len(groups), figsize=(5.2 * len(groups), 4.4), squeeze=False,
                             sharey=True, layout="constrained")
    colors = _colors()
    gates = sorted(use["gate"].unique())
    for ax, (values, g) in zip(axes[0], groups):
        for i, gate in enumerate(gates):
            gg = g[g["gate"] == gate]
            if gg.empty:
                continue
            mean = gg.groupby("experts")[loss].mean()
            ax.plot(mean.index, mean.values, "-o", color=colors[i % len(colors)], label=gate)
            ax.scatter(gg["experts"], gg[loss], color=colors[i % len(colors)], s=12, alpha=0.5)
        n_mean = float(g[n].mean()) if n in g else float("nan")
        ax.set_title(_size_label(keys, values, n_mean) if keys else f"N≈{n_mean:,.0f}", fontsize=9)
        ax.set_xscale("log", base=2)
        _plain_log_y(ax)
        ax.set_xlabel("experts E")
        ax.legend(fontsize=8, title="gate", title_fontsize=8)
    axes[0][0].set_ylabel(loss)
    fig.suptitle(f"{loss} against experts, one line per router" + (f"\n{note}" if note else ""), fontsize=9)
    return _finish(fig, list(axes[0]), path)


def _family(g: pd.DataFrame) -> dict:
    """The architecture a panel's grid extrapolates: shared options, F/D ratio, ranges."""
    first = g.iloc[0]
    return {"ratio": float(np.median(g["d_ff"] / g["d_model"])),
            "d_range": (float(g["d_model"].min()), float(g["d_model"].max())),
            "e_range": (float(g["experts"].min()), float(g["experts"].max())),
            "row": first}


def iso_loss_contours(runs: pd.DataFrame, fit: ScalingFit, path, *, loss: str | None = None,
                      grid: int = 80) -> str:
    """Iso-loss contours of the fitted law over (parameters N, experts E), one panel per top_k,
    the points' mean losses overlaid (Clark et al. 2022, Fig. 1b). The grid varies D (F/D fixed
    at the runs' ratio) and E. (A second row over parameter utilization, params_total / FLOPs
    per token, used to be drawn: at fixed K that ratio grows with E alone, so every run fell on
    one diagonal and the panel showed nothing the first row does not.)"""
    loss = loss or fit.loss
    use, note = usable_runs(runs, loss=loss, kind="moe",
                            require=["experts", "d_model", "d_ff", "top_k", fit.n_column])
    if use.empty:
        raise ValueError("no complete MoE runs to draw")
    ks = sorted(use["top_k"].unique())
    fig, axes = subplots(1, len(ks), figsize=(4.8 * len(ks) + 1.2, 4.4), squeeze=False,
                             layout="constrained")
    lo, hi = np.log(use[loss].min()), np.log(use[loss].max())
    pad = 0.15 * (hi - lo if hi > lo else 1.0)
    levels = np.exp(np.linspace(lo - pad, hi + pad, 12))
    norm = matplotlib.colors.LogNorm(levels[0], levels[-1])
    cmap = "viridis"
    for col, k in enumerate(ks):
        g = use[use["top_k"] == k]
        fam = _family(g)
        D = np.geomspace(fam["d_range"][0] / 2, fam["d_range"][1] * 2, grid)
        E = np.geomspace(max(1.0, fam["e_range"][0] / 2), fam["e_range"][1] * 2, grid)
        DD, EE = np.meshgrid(D, E)
        row = fam["row"].copy()
        row["d_model"], row["d_ff"], row["experts"], row["top_k"] = DD, DD * fam["ratio"], EE, k
        total, active, _ = derive_counts(row)
        N = active if fit.n_column == "params_active" else total
        Z = fit.predict(N, EE)
        ax = axes[0, col]
        cs = ax.contour(N, EE, Z, levels=levels, cmap=cmap, norm=norm, linewidths=1)
        ax.clabel(cs, fontsize=6, fmt=lambda v: f"{v:.3g}")
        pts = g.groupby([fit.n_column, "experts"], as_index=False)[loss].mean()
        sc = ax.scatter(pts[fit.n_column], pts["experts"], c=pts[loss], cmap=cmap, norm=norm,
                        edgecolors="k", s=28, zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log", base=2)
        ax.set_xlabel(f"parameters N ({fit.n_column})", fontsize=8)
        ax.set_ylabel("experts E")
        ax.set_title(f"K = {k}: iso-{loss}", fontsize=9)
    cb = fig.colorbar(sc, ax=axes.ravel().tolist(), label=f"{loss} (points: mean over seeds; law: contours)")
    cb.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    cb.ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
    if note:
        fig.suptitle(note, fontsize=7)
    return _finish(fig, axes.ravel(), path)


# --------------------------------------------------------------------------- series over steps

# Root attributes that follow from the options (they vary with them but are no choice of
# their own): left out of the legends.
DERIVED_OPTIONS = {"memory_estimate_bytes", "bit_identical", "bit_identical_reason", "teacher_seed",
                   "eval_capacity_factor"}
SHORT = {"experts": "E", "top_k": "K", "d_model": "D", "d_ff": "F", "layers": "L",
         "moe_every": "every", "granularity": "M", "shared_experts": "shared", "data_seed": "data seed"}
LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 3, 2, 3))]


def _as_runs(runs_or_files) -> pd.DataFrame:
    """A load_runs table from a table, a run file, a directory, a glob or a list of files."""
    if isinstance(runs_or_files, pd.DataFrame):
        return runs_or_files
    if isinstance(runs_or_files, pd.Series):
        runs_or_files = runs_or_files.tolist()
    if not isinstance(runs_or_files, (str, os.PathLike)) and len(list(runs_or_files)) == 0:
        raise ValueError("no run files to draw")
    return load_runs(runs_or_files)


def _moe_with_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    """MoE runs that may hold per-step metrics (complete, stopped or still running), natural order."""
    if runs.empty:
        raise ValueError("no run files to draw")
    use = runs[(runs["kind"] == "moe") & runs["status"].isin(["complete", "stopped", "incomplete"])]
    if use.empty:
        raise ValueError("no MoE runs with per-step metrics")
    order = sorted(range(len(use)), key=lambda i: natural_key(use["id"].iloc[i]))
    return use.iloc[order]


def _value(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, float, np.integer, np.floating)):
        return f"{v:g}"
    return str(v)


def _ordered(keys) -> list:
    """Option names as a label reads them: experts, the model-size options, the rest."""
    first = ["experts", *SIZE_KEYS]
    return [k for k in first if k in keys] + [k for k in keys if k not in first]


def _label(keys, row) -> str:
    return " ".join(f"{SHORT.get(k, k)}={_value(row[k])}" for k in keys)


def _sortable(values: tuple) -> tuple:
    return tuple((0, v, "") if isinstance(v, (int, float, np.integer, np.floating)) and not
                 isinstance(v, bool) else (1, 0, str(v)) for v in values)


class _Styles:
    """Colour by expert count (viridis, as in loss_vs_compute), line style by the other options
    that vary (model size, gate, ...; seeds never), and the legends that say so: one entry
    per expert count and one per style, never one per run."""

    def __init__(self, use: pd.DataFrame, exclude=()):
        self.keys = _ordered([c for c in point_columns(use) if c != "experts" and c not in exclude
                              and not c.startswith("effective_") and c not in DERIVED_OPTIONS])
        experts = (pd.to_numeric(use["experts"], errors="coerce") if "experts" in use
                   else pd.Series(dtype=float))
        es = sorted(experts.dropna().unique())
        cmap = matplotlib.colormaps["viridis"]
        self.e_color = {e: cmap(0.9 * i / max(len(es) - 1, 1)) for i, e in enumerate(es)}
        variants = sorted({self.variant(r) for _, r in use.iterrows()}, key=_sortable)
        self.ls = {v: LINESTYLES[i % len(LINESTYLES)] for i, v in enumerate(variants)}
        self.variant_label = {self.variant(r): _label(self.keys, r) for _, r in use.iterrows()}

    def variant(self, row) -> tuple:
        return tuple(row[k] for k in self.keys)

    def color(self, row):
        e = pd.to_numeric(pd.Series([row.get("experts")]), errors="coerce").iloc[0]
        return self.e_color.get(e, "0.3")

    def linestyle(self, row):
        return self.ls.get(self.variant(row), "-")

    def legend(self, ax, *, loc="upper left", anchor=(1.02, 1.0), extra=(), only=None) -> None:
        """The expert-count legend (the counts in `only`, default all) and, when more than one,
        the style legend, right of `ax`."""
        h = [Line2D([], [], color=c, lw=2, label=f"E = {e:g}" + (" (dense)" if e == 1 else ""))
             for e, c in self.e_color.items() if only is None or e in only]
        first = ax.legend(handles=h + list(extra), title="experts", fontsize=7, title_fontsize=7,
                          loc=loc, bbox_to_anchor=anchor, borderaxespad=0)
        if len(self.ls) > 1:
            ax.add_artist(first)
            h2 = [Line2D([], [], color="0.2", lw=1.4, ls=ls, label=self.variant_label[v])
                  for v, ls in self.ls.items()]
            ax.legend(handles=h2, fontsize=7, loc="upper left", bbox_to_anchor=(anchor[0], 0.45),
                      borderaxespad=0, handlelength=3.2)


def _points(use: pd.DataFrame) -> list[pd.DataFrame]:
    """The runs of `use` grouped into grid points (equal in every option that varies but the
    seeds), in natural order of their first id."""
    keys = point_columns(use)
    groups = [g for _, g in use.groupby(_grouper(keys), dropna=False, sort=False)] if keys else [use]
    return sorted(groups, key=lambda g: natural_key(g["id"].iloc[0]))


def _steps_of(files, columns) -> dict:
    """file -> load_steps table (only files that can be read and hold one of `columns`)."""
    out = {}
    for f in files:
        try:
            s = load_steps(f)
        except (OSError, KeyError):
            continue
        if not s.empty and any(c in s for c in columns):
            out[f] = s
    return out


def _seed_mean(tables, column) -> pd.DataFrame | None:
    """Mean, min and max over runs of one column, aligned on the step."""
    cols = [t.set_index("step")[column].rename(i) for i, t in enumerate(tables) if column in t]
    cols = [c for c in cols if c.notna().any()]
    if not cols:
        return None
    m = pd.concat(cols, axis=1).sort_index()
    return pd.DataFrame({"mean": m.mean(axis=1), "min": m.min(axis=1), "max": m.max(axis=1),
                         "n": m.notna().sum(axis=1)}).dropna(subset=["mean"])


def loss_curves(runs_or_files, path, *, max_runs: int = 48, loss: str = "train_loss") -> str:
    """Training loss against step, one panel per model size, one line per grid point coloured
    by its expert count (the mean over seeds, a band from the lowest to the highest seed), the
    validation losses as dots where logged; other options that vary set the line style."""
    runs = _moe_with_metrics(_as_runs(runs_or_files))
    size_keys = _size_groups(runs)
    as_tuple = lambda v: v if isinstance(v, tuple) else (v,)  # noqa: E731
    sizes = (sorted(runs.groupby(_grouper(size_keys), sort=False).groups,
                    key=lambda v: _sortable(as_tuple(v))) if size_keys else [()])
    styles = _Styles(runs, exclude=size_keys)
    points = _points(runs)
    more = ""
    if sum(len(p) for p in points) > max_runs:
        kept, n = [], 0
        for p in points:
            if n + len(p) > max_runs:
                break
            kept.append(p)
            n += len(p)
        more = f" (the first {n} of {len(runs)} runs)"
        points = kept
    tables = _steps_of([f for p in points for f in p["file"]], [loss])
    ncols = len(sizes) if len(sizes) <= 3 else (2 if len(sizes) == 4 else 3)
    nrows = -(-len(sizes) // ncols)
    fig, axes = subplots(nrows, ncols, figsize=(4.3 * ncols + 2.0, 3.3 * nrows + 0.5), squeeze=False,
                         sharey=True)
    panel = {as_tuple(s): ax for s, ax in zip(sizes, axes.ravel())}
    for ax in axes.ravel()[len(sizes):]:
        ax.set_visible(False)
    drawn = set()
    for p in points:
        row = p.iloc[0]
        t = [tables[f] for f in p["file"] if f in tables]
        m = _seed_mean(t, loss)
        if m is None:
            continue
        key = tuple(row[k] for k in size_keys)
        ax = panel[key]
        c, ls = styles.color(row), styles.linestyle(row)
        ax.plot(m.index, m["mean"], color=c, ls=ls, lw=1.2)
        if (m["n"] > 1).any():
            ax.fill_between(m.index, m["min"], m["max"], color=c, alpha=0.15, lw=0)
        v = _seed_mean(t, "val_loss")
        if v is not None:
            ax.plot(v.index, v["mean"], "o", color=c, ms=3.5)
        drawn.add(key)
    if not drawn:
        raise ValueError(f"none of the run files has a {loss}")
    for key, ax in panel.items():
        if key not in drawn:
            ax.set_visible(False)
            continue
        _plain_log_y(ax)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(_label(size_keys, dict(zip(size_keys, key))) if size_keys else "all runs", fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{loss} (dots: val_loss)", fontsize=8)
    top = [ax for ax in axes[0] if ax.get_visible()]  # the legend right of the first row
    styles.legend(top[-1] if top else panel[next(iter(drawn))])
    fig.suptitle(f"loss curves: mean over seeds (band: lowest to highest seed){more}", fontsize=9)
    return _finish(fig, [panel[k] for k in drawn], path)


def loss_vs_wall_time(runs_or_files, path, *, max_runs: int = 48, loss: str = "train_loss") -> str:
    """Training loss against wall time (the running sum of metrics/step_seconds, the slowest
    rank's step), one line per run coloured by its expert count, validation losses as dots."""
    runs = _moe_with_metrics(_as_runs(runs_or_files)).head(max_runs)
    styles = _Styles(runs)
    tables = _steps_of(runs["file"], [loss])
    fig, ax = subplots(figsize=(8.4, 4.6))
    drawn = 0
    for _, row in runs.iterrows():
        s = tables.get(row["file"])
        if s is None or loss not in s or "step_seconds" not in s:
            continue
        t = s["step_seconds"].cumsum()
        c, ls = styles.color(row), styles.linestyle(row)
        ax.plot(t, s[loss], color=c, ls=ls, lw=1, alpha=0.85)
        if "val_loss" in s and s["val_loss"].notna().any():
            ok = s["val_loss"].notna()
            ax.plot(t[ok], s.loc[ok, "val_loss"], "o", color=c, ms=3.5)
        drawn += 1
    if not drawn:
        raise ValueError(f"no run file has {loss} and step_seconds")
    _plain_log_y(ax)
    ax.set_xlabel("wall time: sum of step times so far, slowest rank (s)")
    ax.set_ylabel(f"{loss} (dots: val_loss)")
    more = f" (first {max_runs} runs)" if len(runs) == max_runs else ""
    ax.set_title(f"loss against wall time, one line per run{more}", fontsize=9)
    styles.legend(ax)
    return _finish(fig, [ax], path)


HEALTH = (("dropped_fraction", "dropped fraction of assignments", None),
          ("aux_loss", "load-balancing loss (1 = balanced)", 1.0),
          ("gate_entropy", "gate entropy (nats; dotted: ln E, a uniform router)", "lnE"))


def routing_health(runs_or_files, path, *, max_runs: int = 48) -> str:
    """Dropped fraction, auxiliary (load-balancing) loss and gate entropy against step, one
    line per grid point coloured by its expert count (mean over seeds). Runs with one expert
    (nothing to route) are left out."""
    runs = _moe_with_metrics(_as_runs(runs_or_files))
    styles = _Styles(runs)  # before E = 1 goes: the colours of the other figures
    eff = pd.to_numeric(runs.get("effective_experts", runs["experts"]), errors="coerce")
    runs = runs[eff.fillna(pd.to_numeric(runs["experts"], errors="coerce")) > 1]
    if runs.empty:
        raise ValueError("no MoE run with more than one expert")
    runs = runs.head(max_runs)
    tables = _steps_of(runs["file"], [m for m, _, _ in HEALTH])
    present = [h for h in HEALTH if any(h[0] in t for t in tables.values())]
    if not present:
        raise ValueError("no run file has dropped_fraction, aux_loss or gate_entropy")
    fig, axes = subplots(len(present), 1, figsize=(8.4, 2.4 * len(present) + 0.6), squeeze=False,
                         sharex=True)
    axes = axes[:, 0]
    for ax, (metric, title, ref) in zip(axes, present):
        for p in _points(runs):
            row = p.iloc[0]
            m = _seed_mean([tables[f] for f in p["file"] if f in tables], metric)
            if m is None:
                continue
            c = styles.color(row)
            ax.plot(m.index, m["mean"], color=c, ls=styles.linestyle(row), lw=1.1)
            if ref == "lnE":
                e = float(row.get("effective_experts", row["experts"]))
                ax.axhline(np.log(e), color=c, ls=":", lw=0.8)
        if isinstance(ref, float):
            ax.axhline(ref, color="0.5", ls=":", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(metric, fontsize=8)
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    styles.legend(axes[0], only=set(pd.to_numeric(runs["experts"], errors="coerce")))
    fig.suptitle("routing over training: mean over seeds", fontsize=9)
    return _finish(fig, list(axes), path)


def _files(files) -> list:
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not files:
        raise ValueError("no run files to draw")
    return files


def expert_load_heatmap(files, path) -> str:
    """Share of each step's assignments per expert (step x expert), one panel per run."""
    files = _files(files)
    fig, axes = subplots(len(files), 1, figsize=(7, 2.6 * len(files) + 0.6), squeeze=False)
    for ax, f in zip(axes[:, 0], files):
        load = np.asarray(load_expert_load(f), float)
        if load.ndim != 2 or load.shape[0] == 0:
            raise ValueError(f"{f}: no expert_tokens logged")
        _share_map(fig, ax, load, f"{Path(f).stem}: share of assignments per expert")
    return _finish(fig, axes[:, 0], path)


def _share_map(fig, ax, load, title, colorbar=True):
    tot = load.sum(axis=1, keepdims=True)
    share = np.divide(load, tot, out=np.zeros_like(load), where=tot > 0)
    S, E = share.shape
    im = ax.imshow(share.T, aspect="auto", origin="lower", interpolation="nearest",
                   extent=(0.5, S + 0.5, -0.5, E - 0.5), cmap="magma",
                   vmin=0, vmax=max(2.0 / E, float(share.max())))
    ax.set_xlabel("step")
    ax.set_ylabel("expert")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{title} (balanced = 1/{E})", fontsize=9)
    if colorbar:
        fig.colorbar(im, ax=ax, label="share")
    return im


def expert_load_per_layer(files, path) -> str:
    """Per MoE layer, each step's share of the layer's assignments per expert (step x expert,
    metrics/expert_tokens_per_layer): one row of panels per run, one panel per MoE layer."""
    files = _files(files)
    loads = []
    for f in files:
        try:
            x = np.asarray(load_metric(f, "expert_tokens_per_layer"), float)
        except KeyError:
            continue
        if x.ndim == 3 and x.shape[0] > 0 and x.shape[1] > 0:
            loads.append((f, x))
    if not loads:
        raise ValueError("no run file has metrics/expert_tokens_per_layer")
    L = max(x.shape[1] for _, x in loads)
    fig, axes = subplots(len(loads), L, figsize=(3.6 * L + 1.4, 2.5 * len(loads) + 0.6), squeeze=False)
    used = []
    for r, (f, x) in enumerate(loads):
        for layer in range(L):
            ax = axes[r, layer]
            if layer >= x.shape[1]:
                ax.set_visible(False)
                continue
            im = _share_map(fig, ax, x[:, layer, :], f"MoE layer {layer}", colorbar=False)
            if layer:
                ax.set_ylabel("")
            used.append(ax)
        fig.colorbar(im, ax=list(axes[r, :x.shape[1]]), label="share", shrink=0.9)
        axes[r, 0].set_ylabel(f"{_short_id(f)}\nexpert", fontsize=8)
    fig.suptitle("expert load per MoE layer: share of the layer's kept assignments per expert", fontsize=9)
    return _finish(fig, used, path)


def _short_id(f, width: int = 40) -> str:
    s = Path(f).stem
    return s if len(s) <= width else s[:width - 3] + "..."


def _bytes(x: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} B"


def traffic_heatmap(files, path) -> str:
    """Bytes rank i sent to rank j per step (metrics/traffic, mean over steps), one P x P panel
    per run; the diagonal (a rank's own tokens, which never leave it) is grey."""
    mats = []
    for f in _files(files):
        try:
            t = np.asarray(load_metric(f, "traffic"), float)
        except KeyError:
            continue
        if t.ndim == 3 and t.shape[0] > 0 and t.shape[1] >= 2:
            mats.append((f, t.mean(axis=0), t.shape[0]))
    if not mats:
        raise ValueError("no run file of two or more ranks has metrics/traffic")
    n = len(mats)
    fig, axes = subplots(1, n, figsize=(4.6 * n + 0.4, 4.2), squeeze=False)
    cmap = matplotlib.colormaps["viridis"].copy()
    cmap.set_bad("0.85")
    for ax, (f, m, steps) in zip(axes[0], mats):
        P = m.shape[0]
        off = np.ma.masked_array(m, mask=np.eye(P, dtype=bool))
        im = ax.imshow(off, cmap=cmap, vmin=0, interpolation="nearest")
        if P <= 8:
            hi = float(off.max()) if off.count() else 0.0
            for i in range(P):
                for j in range(P):
                    txt = "own" if i == j else _bytes(m[i, j])
                    dark = i != j and m[i, j] < 0.6 * hi
                    ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
        ax.set_xlabel("to rank j")
        ax.set_ylabel("from rank i")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{_short_id(f, 34)}\nP = {P}, {_bytes(float(off.sum()))} between ranks per step",
                     fontsize=8)
        fig.colorbar(im, ax=ax, label="bytes per step (mean over steps)", shrink=0.85)
    fig.suptitle("token traffic between ranks (grey diagonal: a rank's own tokens, never sent)",
                 fontsize=9)
    return _finish(fig, list(axes[0]), path)


PHASE_LABELS = {"forward_dispatch": "forward dispatch (+ counts)", "forward_combine": "forward combine",
                "backward_dispatch": "backward dispatch", "backward_combine": "backward combine"}


def exchange_phases(runs_or_files, path, *, max_points: int = 16) -> str:
    """Per grid point (mean over seeds), the exchange time per step by phase (transfer: the
    least time any rank spent in it, metrics/a2a_seconds_by_phase summed over MoE layers) with
    the waiting beyond it (a2a_wait_seconds) stacked on top, and the bytes per phase; the median
    over steps, the first step (warm-up) left out when there are more."""
    runs = _moe_with_metrics(_as_runs(runs_or_files))
    rows = []
    for p in _points(runs):
        secs, byts, wait = [], [], []
        for f in p["file"]:
            try:
                s = np.asarray(load_metric(f, "a2a_seconds_by_phase"), float)
            except (KeyError, OSError):
                continue
            if s.ndim != 3 or s.shape[0] == 0:
                continue
            skip = 1 if s.shape[0] > 1 else 0
            secs.append(np.median(s[skip:].sum(axis=1), axis=0))
            try:
                b = np.asarray(load_metric(f, "a2a_bytes_by_phase"), float)
                byts.append(np.median(b[skip:].sum(axis=1), axis=0))
            except KeyError:
                pass
            try:
                w = np.asarray(load_metric(f, "a2a_wait_seconds"), float)
                wait.append(float(np.median(w[skip:])))
            except KeyError:
                pass
        if secs:
            rows.append((p.iloc[0], np.mean(secs, axis=0), np.mean(byts, axis=0) if byts else None,
                         float(np.mean(wait)) if wait else 0.0, len(secs)))
    if not rows:
        raise ValueError("no run file has metrics/a2a_seconds_by_phase")
    more = f" (first {max_points} of {len(rows)} points)" if len(rows) > max_points else ""
    rows = rows[:max_points]
    keys = _ordered([c for c in point_columns(runs) if not c.startswith("effective_")
                     and c not in DERIVED_OPTIONS])
    labels = [(_label(keys, r) if keys else _short_id(r["file"])) + (f" ({n} seeds)" if n > 1 else "")
              for r, *_, n in rows]
    y = np.arange(len(rows))
    fig, axes = subplots(1, 2, figsize=(11, 0.38 * len(rows) + 2.0), squeeze=False, sharey=True)
    ax, bx = axes[0]
    colors = _colors()
    left = np.zeros(len(rows))
    for k, phase in enumerate(PHASES):
        v = np.array([r[1][k] if len(r[1]) > k else 0.0 for r in rows]) * 1e3
        ax.barh(y, v, left=left, color=colors[k], label=PHASE_LABELS[phase])
        left += v
    w = np.array([r[3] for r in rows]) * 1e3
    ax.barh(y, w, left=left, color="none", edgecolor="0.4", hatch="///", label="waiting (most-waiting rank)")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms per step (median over steps, all MoE layers)")
    ax.set_title("exchange time per phase", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1 - 0.5 / (len(rows) + 3)), ncol=3)
    used = [ax]
    if any(r[2] is not None for r in rows):
        left = np.zeros(len(rows))
        for k, phase in enumerate(PHASES):
            v = np.array([r[2][k] if r[2] is not None and len(r[2]) > k else 0.0 for r in rows])
            bx.barh(y, v, left=left, color=colors[k], label=PHASE_LABELS[phase])
            left += v
        bx.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _bytes(v)))
        bx.set_xlabel("bytes between ranks per step (median over steps)")
        bx.set_title("bytes per phase", fontsize=9)
        used.append(bx)
    else:
        bx.set_visible(False)
    fig.suptitle(f"all-to-all exchanges per grid point, mean over seeds{more}", fontsize=9)
    return _finish(fig, used, path)


def _routing_counts(f):
    """(counts (E, S) of the MoE layer with the highest NMI, layer, nmi, purity, task)."""
    with open_h5(f) as h:
        if "routing_recovery/counts" not in h:
            raise KeyError(f"{f}: no routing_recovery/counts")
        counts = np.asarray(h["routing_recovery/counts"][()], float)
        nmi = np.asarray(h["routing_recovery/nmi"][()], float) if "routing_recovery/nmi" in h else None
        purity = (np.asarray(h["routing_recovery/purity"][()], float)
                  if "routing_recovery/purity" in h else None)
        task = h.attrs.get("task", b"")
    task = task.decode() if isinstance(task, bytes) else str(task)
    if counts.ndim != 3 or counts.shape[0] == 0 or counts.sum() == 0:
        raise ValueError(f"{f}: routing_recovery/counts is empty")
    layer = int(np.nanargmax(nmi)) if nmi is not None and np.isfinite(nmi).any() else 0
    pick = lambda a: float(a[layer]) if a is not None and len(a) > layer else float("nan")  # noqa: E731
    return counts[layer], layer, pick(nmi), pick(purity), task


def _match_order(C: np.ndarray) -> np.ndarray:
    """Rows (student experts) reordered so that the source each one takes most lies on the
    diagonal where possible (a best one-to-one matching), the rest after, by their main source."""
    from scipy.optimize import linear_sum_assignment
    share = C / np.maximum(C.sum(axis=0, keepdims=True), 1)
    r, c = linear_sum_assignment(-share)
    matched = [int(i) for i in r[np.argsort(c)]]
    rest = sorted(set(range(C.shape[0])) - set(matched),
                  key=lambda i: (int(np.argmax(share[i])), -share[i].max()))
    return np.array(matched + rest, dtype=int)


def routing_confusion(files, path) -> str:
    """Which student expert takes the tokens of each source (teacher's top-1 expert, or regime):
    routing_recovery/counts of the MoE layer with the highest NMI, each source column normalised
    to 1, experts reordered to match the sources; one panel per run."""
    mats = []
    for f in _files(files):
        try:
            mats.append((f, *_routing_counts(f)))
        except (KeyError, ValueError):
            continue
    if not mats:
        raise ValueError("no run file has routing_recovery/counts (tasks teacher and regimes)")
    n = len(mats)
    fig, axes = subplots(1, n, figsize=(4.4 * n + 1.0, 4.4), squeeze=False)
    for ax, (f, C, layer, nmi, purity, task) in zip(axes[0], mats):
        order = _match_order(C)
        share = (C / np.maximum(C.sum(axis=0, keepdims=True), 1))[order]
        E, S = share.shape
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        if E * S <= 144:
            for i in range(E):
                for j in range(S):
                    if share[i, j] >= 0.005:
                        ax.text(j, i, f"{100 * share[i, j]:.0f}", ha="center", va="center", fontsize=7,
                                color="white" if share[i, j] > 0.6 else "black")
        ax.set_yticks(range(E))
        ax.set_yticklabels([str(i) for i in order], fontsize=7 if E <= 32 else 5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        source = {"teacher": "teacher's top-1 expert", "regimes": "regime (cluster)"}.get(task, "source")
        ax.set_xlabel(source)
        ax.set_ylabel("student's top-1 expert (reordered)")
        ax.set_title(f"{_short_id(f, 34)}\nMoE layer {layer}: NMI {nmi:.2f}, purity {purity:.2f}", fontsize=8)
    fig.colorbar(im, ax=list(axes[0]), label="share of the source's tokens (%: in the cells)", shrink=0.9)
    fig.suptitle("routing confusion matrix (validation tokens)", fontsize=9)
    return _finish(fig, list(axes[0]), path)


def _split(attr) -> list[str]:
    if attr is None:
        return []
    if isinstance(attr, (list, tuple)):
        return [str(a) for a in attr]
    return [s for s in str(attr).split(",") if s != ""]


def stacking_coefficients(file, path) -> str:
    """Meta-learner coefficients of a stacking/blending run (bars per input column), with the
    learners' test scores beside them."""
    with open_h5(file) as f:
        if "meta/coefficients" not in f:
            raise ValueError(f"{file}: no meta/coefficients (not a stack or blend run)")
        coef = np.atleast_2d(f["meta/coefficients"][()])
        scores = f["scores/learner"][()] if "scores/learner" in f else None
    meta = read_attrs(file, "meta")
    root = read_attrs(file)
    rows, cols = _split(meta.get("rows")), _split(meta.get("columns"))
    rows = rows if len(rows) == coef.shape[0] else [str(i) for i in range(coef.shape[0])]
    cols = cols if len(cols) == coef.shape[1] else [str(j) for j in range(coef.shape[1])]
    panels = 2 if scores is not None else 1
    fig, axes = subplots(1, panels, figsize=(6 + 4 * (panels - 1), 0.3 * len(rows) + 2.2),
                             squeeze=False, layout="constrained")
    ax = axes[0, 0]
    y = np.arange(len(rows))
    h = 0.8 / len(cols)
    for j, c in enumerate(cols):
        ax.barh(y + (j - (len(cols) - 1) / 2) * h, coef[:, j], height=h, label=c)
    ax.set_yticks(y)
    ax.set_yticklabels(rows, fontsize=7)
    ax.axvline(0, color="k", lw=0.5)
    ax.invert_yaxis()
    ax.set_xlabel("coefficient")
    ax.set_title(f"{root.get('kind', '')} meta-learner ({root.get('meta', '?')})", fontsize=9)
    if len(cols) > 1:
        ax.legend(fontsize=7)
    used = [ax]
    if scores is not None:
        sattr = read_attrs(file, "scores")
        learners = _split(sattr.get("learners"))
        scols = _split(sattr.get("learner_columns"))
        ax2 = axes[0, 1]
        j = next((i for i, c in enumerate(scols) if c.startswith("test")), 0)
        names = learners if len(learners) == scores.shape[0] else [str(i) for i in range(scores.shape[0])]
        ax2.barh(np.arange(len(names)), scores[:, j], color="tab:gray")
        ax2.set_yticks(np.arange(len(names)))
        ax2.set_yticklabels(names, fontsize=7)
        ax2.invert_yaxis()
        ax2.set_xlabel(scols[j] if j < len(scols) else "score")
        ax2.set_title("base learners", fontsize=9)
        used.append(ax2)
    return _finish(fig, used, path)
