"""`python3 -m moesim_analysis clark DIR`: Clark et al. (2022), "Unified Scaling Laws for Routed
Language Models", side by side with the three LM sweeps of scripts/run_clark.sh (DIR/clark_lm,
DIR/clark_lm_topk, DIR/clark_lm_routers). Writes DIR/clark.md and its figures, prints the md.

The fits of moesim_analysis.scaling use natural logs; the published law is read here as base-10 logs of
N in parameters (what its quoted cut-offs imply), so it is compared in base 10: a and b do not
depend on the base, c_10 = c_e ln 10, and d depends on the loss's unit (nats per byte here,
per token there) and is not comparable. The slope of log L in log E at a size N, b + c log N,
is what the first two findings are about; it is compared at the runs' own N.

Each finding's verdict follows a rule fixed before the runs (docs/analysis.md states it):
1. loss falls with E at fixed N: the fitted slope's 95% interval lies below 0 at every size;
2. the gain shrinks as N grows (c > 0): c's 95% interval lies above 0;
3. K matters little at equal compute: at every size, |mean log(L_K2 / L_K1)| over E is smaller
   than the gain of one doubling of E at that size (ln 2 times |slope|).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import figures
from .load import load_runs, usable_runs
from .report import markdown_table
from .scaling import E_MAX_SBASE, E_START_SBASE, ScalingFit, fit_scaling_law

SWEEPS = ("clark_lm", "clark_lm_topk", "clark_lm_routers")
LN10 = float(np.log(10.0))
LOSS = "val_loss"
# Eq. (1) with the saturating Ê, per router, as quoted by secondary sources (a table of the
# paper's fits in a public notes file, and its E_start/E_max): not checked against the paper here.
PUBLISHED = {
    "S-BASE": {"a": -0.082, "b": -0.108, "c": 0.009, "d": 1.104, "E_start": E_START_SBASE,
               "E_max": E_MAX_SBASE},
    "RL-R": {"a": -0.083, "b": -0.126, "c": 0.012, "d": 1.111, "E_start": 1.880, "E_max": 469.982},
    "Hash": {"a": -0.087, "b": -0.136, "c": 0.012, "d": 1.157, "E_start": 4.175, "E_max": 477.741},
}


def _runs(directory: Path, name: str) -> pd.DataFrame:
    d = directory / name
    if not d.is_dir():
        raise FileNotFoundError(f"no such directory: {d} (run scripts/run_clark.sh first)")
    use, _ = usable_runs(load_runs(d), loss=LOSS, kind="moe", require=["experts", "params_active"])
    if use.empty:
        raise ValueError(f"no complete MoE runs in {d}")
    return use


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if np.isfinite(x) else "-"


def _ci(lo: float, hi: float) -> str:
    return f"[{_fmt(lo)}, {_fmt(hi)}]"


def slope_at(fit: ScalingFit, N) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """d log L / d log Ê at parameter count N (natural logs), with its bootstrap interval."""
    logN = np.log(np.asarray(N, float))
    est = fit.coef["b"] + fit.coef["c"] * logN
    draws = fit.boot[:, 1][:, None] + fit.boot[:, 2][:, None] * logN[None, :]
    alpha = (1 - fit.level) / 2
    lo, hi = np.quantile(draws, [alpha, 1 - alpha], axis=0)
    return est, lo, hi


def coefficient_rows(fit: ScalingFit, label: str) -> dict:
    """The fit's a, b, c in base 10 with intervals (d is not comparable, see the docstring)."""
    row = {"fit": label}
    for k, scale in (("a", 1.0), ("b", 1.0), ("c", LN10)):
        lo, hi = fit.ci[k]
        row[k] = f"{_fmt(fit.coef[k] * scale)} {_ci(lo * scale, hi * scale)}"
    row["E_start, E_max"] = (f"{_fmt(fit.e_start, 4)}, {_fmt(fit.e_max, 4)}" +
                             (" (fitted)" if fit.fitted else " (fixed)") if fit.saturating else "Ê = E")
    row["warnings"] = len(fit.warnings)
    return row


def sizes_table(runs: pd.DataFrame, fit: ScalingFit) -> pd.DataFrame:
    """Per model size: N, dense and largest-E loss (mean over seeds), the fitted E-slope."""
    rows = []
    for d, g in runs.groupby("d_model"):
        N = float(g.loc[g["experts"] == g["experts"].min(), "params_active"].mean())
        by_e = g.groupby("experts")[LOSS].mean()
        est, lo, hi = slope_at(fit, [N])
        pub = PUBLISHED["S-BASE"]["b"] + PUBLISHED["S-BASE"]["c"] * np.log10(N)
        rows.append({"D": int(d), "N (active)": int(round(N)), "L(E=1)": by_e.iloc[0],
                     f"L(E={int(by_e.index[-1])})": by_e.iloc[-1],
                     "gain, %": 100 * (1 - by_e.iloc[-1] / by_e.iloc[0]),
                     "slope b + c log N": f"{_fmt(est[0])} {_ci(lo[0], hi[0])}",
                     "published slope at this N": _fmt(pub)})
    return pd.DataFrame(rows)


def k_table(runs: pd.DataFrame, fit: ScalingFit) -> pd.DataFrame:
    """K = 2 (F = D) against K = 1 (F = 2D) at equal compute, per size: log(L_K2 / L_K1)."""
    rows = []
    for d, g in runs.groupby("d_model"):
        k1 = g[g["top_k"] == 1].groupby("experts")[LOSS].mean()
        k2 = g[g["top_k"] == 2].groupby("experts")[LOSS].mean()
        both = k1.index.intersection(k2.index)
        if both.empty:
            continue
        diff = np.log(k2.loc[both] / k1.loc[both])
        N = float(g.loc[g["top_k"] == 1, "params_active"].mean())
        slope = float(slope_at(fit, [N])[0][0])
        doubling = abs(slope) * np.log(2.0)
        rows.append({"D": int(d), "E": ",".join(str(int(e)) for e in both),
                     "mean log(L_K2/L_K1)": float(diff.mean()), "min": float(diff.min()),
                     "max": float(diff.max()), "one doubling of E": doubling,
                     "K matters little": bool(abs(diff.mean()) < doubling)})
    return pd.DataFrame(rows)


def router_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per size and gate: mean loss over E and its log ratio to S-BASE's."""
    rows = []
    for d, g in runs.groupby("d_model"):
        mean = g.groupby(["gate", "experts"])[LOSS].mean().unstack("experts")
        common = mean.dropna(axis=1).columns
        ref = np.log(mean.loc["sbase", common]) if "sbase" in mean.index else None
        for gate in mean.index:
            row = {"D": int(d), "gate": gate, "mean loss over E": float(mean.loc[gate, common].mean())}
            if ref is not None:
                row["mean log(L / L_sbase)"] = float((np.log(mean.loc[gate, common]) - ref).mean())
            rows.append(row)
    out = pd.DataFrame(rows)
    out["rank at this size"] = out.groupby("D")["mean loss over E"].rank().astype(int)
    return out


def k_figure(runs: pd.DataFrame, path) -> str:
    """Loss against E, K = 1 solid and K = 2 (half-width experts) dashed, one colour per size."""
    fig, ax = figures.subplots(figsize=(6.8, 4.8), layout="constrained")
    colors = figures._colors()
    for i, (d, g) in enumerate(runs.groupby("d_model")):
        for k, style in ((1, "-o"), (2, "--s")):
            m = g[g["top_k"] == k].groupby("experts")[LOSS].mean()
            ax.plot(m.index, m.values, style, color=colors[i % len(colors)],
                    label=f"D={int(d)} K={k} F={int(g.loc[g['top_k'] == k, 'd_ff'].iloc[0])}")
    ax.set_xscale("log", base=2)
    figures._plain_log_y(ax)
    ax.set_xlabel("experts E")
    ax.set_ylabel(LOSS)
    ax.set_title("K = 1 against K = 2 at equal compute (equal active parameters and FLOPs)")
    ax.legend(fontsize=7)
    return figures._finish(fig, [ax], path)


def slope_figure(runs: pd.DataFrame, fit: ScalingFit, path) -> str:
    """Per size, the slope of log L in log E (own least squares over E, and the fitted law's
    b + c log N with its interval) against N; Clark's published S-BASE slope for scale."""
    fig, ax = figures.subplots(figsize=(6.8, 4.6), layout="constrained")
    Ns, own = [], []
    for _, g in runs.groupby("d_model"):
        m = g.groupby("experts").agg(loss=(LOSS, "mean"), N=("params_active", "mean"))
        Ns.append(float(m["N"].iloc[0]))
        own.append(float(np.polyfit(np.log(m.index.to_numpy(float)), np.log(m["loss"]), 1)[0]))
    grid = np.geomspace(min(Ns) / 1.5, max(Ns) * 1.5, 60)
    est, lo, hi = slope_at(fit, grid)
    ax.plot(grid, est, "-", color="C0", label="fitted law: b + c ln N (95% band)")
    ax.fill_between(grid, lo, hi, color="C0", alpha=0.2, lw=0)
    ax.plot(Ns, own, "o", color="C1", label="per size: slope of ln L on ln E")
    pub = PUBLISHED["S-BASE"]
    ax.plot(grid, pub["b"] + pub["c"] * np.log10(grid), ":", color="0.3",
            label="Clark et al. S-BASE, extrapolated (quoted values)")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("active parameters N")
    ax.set_ylabel("d log L / d log E")
    ax.set_title("Gain from experts against model size (c > 0: the slope rises toward 0)")
    ax.legend(fontsize=7)
    return figures._finish(fig, [ax], path)


def _verdict(ok: bool | None, no: str = "not reproduced") -> str:
    return "not measured" if ok is None else ("reproduced" if ok else no)


def clark_report(directory, bootstrap: int = 1000, seed: int = 0) -> tuple[Path, str]:
    """Write DIR/clark.md and its figures; return (path, markdown)."""
    directory = Path(directory)
    main = _runs(directory, SWEEPS[0])
    plain = fit_scaling_law(main, loss=LOSS, bootstrap=bootstrap, seed=seed)
    fixed = fit_scaling_law(main, loss=LOSS, saturating=True, e_start=PUBLISHED["S-BASE"]["E_start"],
                            e_max=PUBLISHED["S-BASE"]["E_max"], bootstrap=bootstrap, seed=seed)
    try:
        free_row = coefficient_rows(fit_scaling_law(main, loss=LOSS, saturating=True,
                                                    bootstrap=bootstrap, seed=seed), "moesim, Ê fitted")
    except ValueError as exc:  # E_start and E_max need more points than the others
        free_row = {"fit": "moesim, Ê fitted", "a": f"no fit: {exc}"}
    figs = {"experts": figures.loss_vs_experts(main, directory / "clark_loss_vs_experts.png", loss=LOSS,
                                               fit=plain),
            "slope": slope_figure(main, plain, directory / "clark_slope_vs_size.png")}
    coef = pd.DataFrame([coefficient_rows(plain, "moesim, Ê = E"),
                         coefficient_rows(fixed, "moesim, Clark's S-BASE Ê"),
                         free_row] +
                        [{"fit": f"Clark et al. {r} (quoted)", "a": _fmt(p["a"]), "b": _fmt(p["b"]),
                          "c": _fmt(p["c"]), "E_start, E_max": f"{p['E_start']:g}, {p['E_max']:g}",
                          "warnings": ""} for r, p in PUBLISHED.items()])
    sizes = sizes_table(main, plain)
    slopes_ok = bool(all(slope_at(plain, [n])[2][0] < 0 for n in sizes["N (active)"]))
    c_lo, c_hi = plain.ci["c"]
    lines = ["# Clark et al. (2022) on text: moesim's byte-level LM", "",
             f"Runs: {len(main)} in {SWEEPS[0]} (S-BASE, K = 1, {plain.sizes} sizes x "
             f"{plain.expert_counts} expert counts), fits on the mean {LOSS} over seeds "
             "(natural-log fit shown in base 10: c x ln 10; d omitted, its unit differs).", "",
             markdown_table(coef), ""]
    for w in plain.warnings:
        lines.append(f"- Ê = E fit {w}")
    lines += ["", "## 1. Loss falls with E at fixed N: " + _verdict(slopes_ok), "",
              markdown_table(sizes), "", f"![loss against experts]({Path(figs['experts']).name})", "",
              "## 2. The gain shrinks as N grows (c > 0): " +
              _verdict(c_lo > 0, "contradicted (c < 0)" if c_hi < 0 else
                       "not reproduced (c's interval contains 0)"),
              "", f"c = {_fmt(plain.coef['c'] * LN10)} {_ci(c_lo * LN10, c_hi * LN10)} (base 10).", "",
              f"![slope against size]({Path(figs['slope']).name})", ""]
    ktab = pd.DataFrame()
    if (directory / SWEEPS[1]).is_dir():
        kruns = _runs(directory, SWEEPS[1])
        ktab = k_table(kruns, plain)
        figs["k"] = k_figure(kruns, directory / "clark_k.png")
    k_ok = bool(ktab["K matters little"].all()) if not ktab.empty else None
    lines += ["## 3. K matters little at equal compute: " + _verdict(k_ok), ""]
    if not ktab.empty:
        lines += [markdown_table(ktab), "", f"![K = 1 against K = 2]({Path(figs['k']).name})", ""]
    if (directory / SWEEPS[2]).is_dir():
        rruns = _runs(directory, SWEEPS[2])
        # S-BASE's runs of these shapes are the main grid's (seed 1, the same options).
        same = (main["gate"] == "sbase") & (main["seed"] == 1) & main["d_model"].isin(rruns["d_model"]) \
            & main["experts"].isin(rruns["experts"])
        rruns = pd.concat([rruns, main[same]], ignore_index=True)
        figs["routers"] = figures.routers_vs_experts(rruns, directory / "clark_routers.png", loss=LOSS)
        per_gate = []
        for gate, g in rruns.groupby("gate"):
            try:
                per_gate.append(coefficient_rows(fit_scaling_law(g, loss=LOSS, bootstrap=bootstrap,
                                                                 seed=seed), f"{gate}, Ê = E"))
            except ValueError as exc:
                per_gate.append({"fit": f"{gate}: {exc}"})
        lines += ["## Routers (S-BASE, learned top-k standing in for RL-R, hash)", "",
                  markdown_table(router_table(rruns)), "", markdown_table(pd.DataFrame(per_gate)), "",
                  f"![routers]({Path(figs['routers']).name})", ""]
    text = "\n".join(lines)
    path = directory / "clark.md"
    path.write_text(text + "\n")
    return path, text
