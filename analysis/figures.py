"""Figures (PNG, matplotlib's Agg backend). Every function returns the path it wrote and
refuses to write an empty figure (ValueError when there is nothing to draw)."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .load import load_expert_load, load_steps, read_attrs, usable_runs  # noqa: E402
from .params import counts_of_run  # noqa: E402
from .scaling import ScalingFit  # noqa: E402

SIZE_KEYS = ("d_model", "d_ff", "layers", "moe_every", "top_k")
DPI = 100


def _finish(fig, axes, path) -> str:
    for ax in axes:
        if not ax.has_data():
            plt.close(fig)
            raise ValueError(f"{path}: a panel has no data")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)  # layout="constrained" instead of a second, "tight" draw
    plt.close(fig)
    if path.stat().st_size == 0:
        raise RuntimeError(f"{path}: written empty")
    return str(path)


def _plain_log_y(ax) -> None:
    """Log y axis labelled 0.43 rather than 4.3x10^-1."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)


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
    groups = use.groupby(keys, sort=True) if keys else [((), use)]
    fig, ax = plt.subplots(figsize=(6.8, 4.8), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
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
    groups = use.groupby(keys, sort=True) if keys else [((), use)]
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
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
    fig, ax = plt.subplots(figsize=(6.8, 4.8), layout="constrained")
    cmap = plt.get_cmap("viridis")
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
    groups = list(use.groupby(keys, sort=True)) if keys else [((), use)]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4.4), squeeze=False,
                             sharey=True, layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
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
    fig, axes = plt.subplots(1, len(ks), figsize=(4.8 * len(ks) + 1.2, 4.4), squeeze=False,
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
        total, active, _ = counts_of_run(row)
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


def loss_curves(files, path, *, max_runs: int = 12, labels=None) -> str:
    """train_loss against step for each run (val_loss as markers where logged)."""
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not files:
        raise ValueError("no run files to draw")
    fig, ax = plt.subplots(figsize=(8.4, 4.6), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = 0
    for i, f in enumerate(files[:max_runs]):
        try:
            s = load_steps(f)
        except OSError:
            continue
        if "train_loss" not in s or s.empty:
            continue
        c = colors[i % len(colors)]
        label = labels[i] if labels is not None else Path(f).stem
        ax.plot(s["step"], s["train_loss"], color=c, lw=1, label=label)
        if "val_loss" in s and s["val_loss"].notna().any():
            v = s.dropna(subset=["val_loss"])
            ax.plot(v["step"], v["val_loss"], "o", color=c, ms=4)
        drawn += 1
    if not drawn:
        plt.close(fig)
        raise ValueError("none of the run files has a train_loss")
    _plain_log_y(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (line: train, dots: validation)")
    more = f" (first {max_runs} of {len(files)})" if len(files) > max_runs else ""
    ax.set_title(f"loss curves{more}")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _finish(fig, [ax], path)


def expert_load_heatmap(files, path) -> str:
    """Share of each step's assignments per expert (step x expert), one panel per run."""
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not files:
        raise ValueError("no run files to draw")
    fig, axes = plt.subplots(len(files), 1, figsize=(7, 2.6 * len(files) + 0.6), squeeze=False,
                             layout="constrained")
    for ax, f in zip(axes[:, 0], files):
        load = np.asarray(load_expert_load(f), float)
        if load.ndim != 2 or load.shape[0] == 0:
            plt.close(fig)
            raise ValueError(f"{f}: no expert_tokens logged")
        tot = load.sum(axis=1, keepdims=True)
        share = np.divide(load, tot, out=np.zeros_like(load), where=tot > 0)
        S, E = share.shape
        im = ax.imshow(share.T, aspect="auto", origin="lower", interpolation="nearest",
                       extent=(0.5, S + 0.5, -0.5, E - 0.5), cmap="magma",
                       vmin=0, vmax=max(2.0 / E, float(share.max())))
        ax.set_xlabel("step")
        ax.set_ylabel("expert")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{Path(f).stem}: share of assignments per expert (balanced = 1/{E})", fontsize=9)
        fig.colorbar(im, ax=ax, label="share")
    return _finish(fig, axes[:, 0], path)


def _split(attr) -> list[str]:
    if attr is None:
        return []
    if isinstance(attr, (list, tuple)):
        return [str(a) for a in attr]
    return [s for s in str(attr).split(",") if s != ""]


def stacking_coefficients(file, path) -> str:
    """Meta-learner coefficients of a stacking/blending run (bars per input column), with the
    learners' test scores beside them."""
    import h5py

    with h5py.File(file, "r") as f:
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
    fig, axes = plt.subplots(1, panels, figsize=(6 + 4 * (panels - 1), 0.3 * len(rows) + 2.2),
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
