"""The unified scaling law of Clark et al. (2022), "Unified Scaling Laws for Routed Language
Models", eq. (1) with the saturating transform of eq. (9):

    log L(N, E) = a log N + b log Ê + c log N log Ê + d

N is the parameter count of the dense model a routed model extends, i.e. the parameters one
token uses: `params_active` by default (it also counts the router's D*E weights per MoE layer,
a small share at these sizes), or `params_total` on request. E is the number of experts and Ê
either E itself or the saturating transform

    1/Ê = 1/(E - 1 + (1/E_start - 1/E_max)^-1) + 1/E_max,

which is ~E for small E, equals E_start at E = 1 and saturates at E_max. With the transform,
E_start and E_max are fitted (least squares over all six parameters: for each (E_start, E_max)
the four coefficients are linear, so the two are found by minimising the profile's residual sum
of squares), or fixed to given values, e.g. E_start = 1.847, E_max = 314.478 (the values quoted
for S-BASE from Clark et al. by secondary sources: not checked against the paper here; moesim_analysis.clark holds every router's).
Natural logarithms throughout.

Seeds. Runs that differ only in the model seed are one grid point: the fit uses the log of each
point's mean loss, once per point (the spread over seeds is reported beside it). Intervals are
95% percentile intervals of a two-stage bootstrap: resample the points with replacement, then
the seeds within each drawn point, and refit. Resampling seeds alone would measure seed noise
but not how well the law fits (with one seed per point it would give intervals of width zero);
resampling points alone would ignore seed noise within a point. Resamples that lose the design's
rank or become far worse conditioned (they missed a model size) are skipped and counted.

Identification. Before anything is reported the fit checks: at least 3 model sizes (counted
as distinct N at one E, since the router's weights make N differ a little with E) and 3 expert
counts; the condition number of the design (log N, log Ê and log N log Ê each standardised to
mean 0 and standard deviation 1, plus the constant; above 100 the terms are nearly collinear);
a residual degree of freedom count of at least 3; whether the 95% interval of a, b or c contains
0 (d is an offset whose zero means nothing); how many bootstrap resamples could be fitted; and,
with a fitted transform, whether E_max lies within reach of the runs' experts and how wide
E_start's interval is. Each failed check is one line starting with `warning:`. The fit is still
reported (a warning, not a refusal): the numbers show how far a design is from identifying the
law, and the warnings say what to add. Fewer than 2 sizes or 2 expert counts cannot be fitted
at all (ValueError).

Effective parameter count (Clark et al. 2022, section 5): the N̄ of a dense model (E = 1) that
the law gives the same loss as (N, E): a log N̄ + b log Ê(1) + c log N̄ log Ê(1) + d = log L(N, E),
with Ê(1) = 1 (or E_start with the transform), so N̄(N, 1) = N.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .load import aggregate_seeds, point_columns, usable_runs

E_START_SBASE = 1.847
E_MAX_SBASE = 314.478
COEFFICIENTS = ("a", "b", "c", "d")
SIGNED = ("a", "b", "c")          # coefficients whose sign the study is about
MIN_LEVELS = 3                    # distinct model sizes and expert counts an identified fit needs
MAX_CONDITION = 100.0             # standardised design; Belsley et al.'s "serious" collinearity
MIN_RESIDUAL_DOF = 3
E_MAX_REACH = 10.0                # E_max beyond this many times the largest E: not identified
E_START_SPAN = 10.0               # E_start's interval wider than this factor: not identified
_E_MAX_CAP = 1e6                  # the optimiser's bound, in units of the largest E


def saturating_experts(E, e_start: float = E_START_SBASE, e_max: float = E_MAX_SBASE):
    """Ê of eq. (9): 1/Ê = 1/(E - 1 + (1/E_start - 1/E_max)^-1) + 1/E_max."""
    E = np.asarray(E, dtype=float)
    if not e_max > e_start > 0:
        raise ValueError(f"need 0 < E_start < E_max (got E_start={e_start}, E_max={e_max})")
    shift = 1.0 / (1.0 / e_start - 1.0 / e_max)
    return 1.0 / (1.0 / (E - 1.0 + shift) + 1.0 / e_max)


def _design(logN: np.ndarray, logE: np.ndarray) -> np.ndarray:
    return np.column_stack([logN, logE, logN * logE, np.ones_like(logN)])


def condition_number(logN, logE) -> float:
    """Condition number of the design with log N, log Ê and their product standardised (mean 0,
    sd 1) beside the constant: how nearly collinear the law's terms are over these points."""
    X = _design(np.asarray(logN, float), np.asarray(logE, float))[:, :3]
    sd = X.std(axis=0)
    if np.any(sd == 0):
        return float("inf")
    Z = np.column_stack([(X - X.mean(axis=0)) / sd, np.ones(len(X))])
    return float(np.linalg.cond(Z))


def distinct_sizes(N, E) -> int:
    """Model sizes among the points: the most distinct N at any one E (N of one size differs a
    little between expert counts through the router's weights)."""
    N, E = np.asarray(N, float), np.asarray(E, float)
    return max((len(np.unique(np.round(N[E == e], 6))) for e in np.unique(E)), default=0)


def _ols(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    r = y - X @ beta
    return beta, float(r @ r)


class _Transform:
    """Ê's parameters: fixed, fitted, or no transform (Ê = E)."""

    def __init__(self, saturating: bool, e_start: float | None, e_max: float | None):
        self.saturating = saturating
        self.fixed_start, self.fixed_max = e_start, e_max
        self.free = [k for k, v in (("E_start", e_start), ("E_max", e_max)) if saturating and v is None]

    def values(self, theta) -> tuple[float, float]:
        """(E_start, E_max) from the free parameters theta (log E_start, log(E_max - E_start))."""
        t = dict(zip(self.free, theta))
        es = float(np.exp(t["E_start"])) if "E_start" in t else self.fixed_start
        em = es + float(np.exp(t["E_max"])) if "E_max" in t else self.fixed_max
        return es, em

    def log_e(self, E, es, em):
        return np.log(saturating_experts(E, es, em)) if self.saturating else np.log(E)

    def fit(self, logN, E, y, starts):
        """Least squares over the coefficients and the free transform parameters: (beta,
        E_start, E_max, rss). `starts`: initial (E_start, E_max) pairs for the optimiser."""
        if not self.free:
            es, em = (self.fixed_start, self.fixed_max) if self.saturating else (np.nan, np.nan)
            beta, rss = _ols(_design(logN, self.log_e(E, es, em)), y)
            return beta, es, em, rss
        from scipy.optimize import minimize

        cap = np.log(_E_MAX_CAP * max(float(E.max()), 1.0))

        def rss_of(theta):
            theta = np.minimum(np.asarray(theta, float), cap)  # flat beyond the cap, no overflow
            es, em = self.values(theta)
            if not (np.isfinite(es) and np.isfinite(em) and em > es > 1e-6):
                return np.inf
            return _ols(_design(logN, self.log_e(E, es, em)), y)[1]

        best = None
        for es0, em0 in starts:
            theta0 = [np.log(es0) if k == "E_start" else np.log(max(em0 - es0, 1e-3)) for k in self.free]
            r = minimize(rss_of, theta0, method="Nelder-Mead",
                         options={"xatol": 1e-6, "fatol": 1e-14, "maxiter": 2000})
            if best is None or r.fun < best.fun:
                best = r
        es, em = self.values(np.minimum(best.x, cap))
        beta, rss = _ols(_design(logN, self.log_e(E, es, em)), y)
        return beta, es, em, rss


@dataclass
class ScalingFit:
    """Fitted coefficients of log L = a log N + b log Ê + c log N log Ê + d."""
    coef: dict                 # name -> estimate
    ci: dict                   # name -> (low, high) at `level`
    level: float
    r2: float                  # of the points' log mean loss
    rmse: float                # of the points' log mean loss
    residuals: pd.DataFrame    # per point: ids, N, E, E_hat, seeds, loss mean and sd, predicted,
                               # residual (log), N_eff (effective parameter count) and N_eff/N
    loss: str
    n_column: str
    saturating: bool
    e_start: float
    e_max: float
    bootstrap: int
    bootstrap_used: int        # resamples kept (full rank and not ill-conditioned)
    boot: np.ndarray = field(repr=False)  # (bootstrap_used x 4)
    note: str = ""             # runs dropped before the fit
    fitted: tuple = ()         # which of E_start, E_max were fitted
    e_ci: dict = field(default_factory=dict)   # fitted E_start / E_max -> (low, high)
    boot_e: np.ndarray = field(default=None, repr=False)  # (bootstrap_used x 2): E_start, E_max
    warnings: list = field(default_factory=list)  # each starts with "warning:"
    condition: float = float("nan")
    sizes: int = 0             # distinct model sizes
    expert_counts: int = 0
    runs: int = 0

    def e_hat(self, E, e_start=None, e_max=None):
        E = np.asarray(E, float)
        if not self.saturating:
            return E
        return saturating_experts(E, self.e_start if e_start is None else e_start,
                                  self.e_max if e_max is None else e_max)

    def predict(self, N, E):
        """Loss the law predicts at parameter count N and E experts (broadcasting)."""
        logN = np.log(np.asarray(N, float))
        logE = np.log(self.e_hat(E))
        a, b, c, d = (self.coef[k] for k in COEFFICIENTS)
        return np.exp(a * logN + b * logE + c * logN * logE + d)

    def effective_params(self, N, E, coef=None, e_start=None, e_max=None):
        """Clark et al.'s effective parameter count N̄: the dense (E = 1) model's N with the
        loss the law predicts at (N, E). NaN where the law's loss does not fall with N at E = 1."""
        a, b, c, d = (coef if coef is not None else [self.coef[k] for k in COEFFICIENTS])
        logN = np.log(np.asarray(N, float))
        l1 = np.log(self.e_hat(1.0, e_start, e_max))
        le = np.log(self.e_hat(E, e_start, e_max))
        log_loss = a * logN + b * le + c * logN * le + d
        slope = a + c * l1
        with np.errstate(all="ignore"):  # a bootstrap draw may put N_eff beyond any float
            out = np.exp((log_loss - d - b * l1) / slope)
        return np.where(slope < 0, out, np.nan)

    def coefficient_table(self) -> pd.DataFrame:
        lo_name, hi_name = f"{100 * (1 - self.level) / 2:g}%", f"{100 * (1 + self.level) / 2:g}%"
        names = list(COEFFICIENTS) + list(self.fitted)
        est = [self.coef[k] for k in COEFFICIENTS] + [self.e_start if k == "E_start" else self.e_max
                                                      for k in self.fitted]
        ci = [self.ci[k] for k in COEFFICIENTS] + [self.e_ci[k] for k in self.fitted]
        return pd.DataFrame({"estimate": est, lo_name: [c[0] for c in ci], hi_name: [c[1] for c in ci]},
                            index=pd.Index(names, name="coefficient"))

    def describe(self) -> str:
        if not self.saturating:
            ehat = "Ê = E"
        else:
            parts = [f"{k} {'fitted' if k in self.fitted else 'fixed'} at "
                     f"{self.e_start if k == 'E_start' else self.e_max:.4g}" for k in ("E_start", "E_max")]
            ehat = "saturating Ê (" + ", ".join(parts) + ")"
        points = len(self.residuals)
        seeds = self.residuals["seeds"] if "seeds" in self.residuals else pd.Series([1] * points)
        per = (f"{int(seeds.min())}" if seeds.min() == seeds.max()
               else f"{int(seeds.min())}-{int(seeds.max())}")
        return (f"log {self.loss} = a log N + b log Ê + c log N log Ê + d, N = {self.n_column}, {ehat}; "
                f"{points} points ({self.runs} runs, {per} seed(s) per point: mean loss fitted), "
                f"{self.sizes} model sizes x {self.expert_counts} expert counts, "
                f"condition number {self.condition:.3g}, R² = {self.r2:.4f}, "
                f"RMSE(log L) = {self.rmse:.4g}; {100 * self.level:g}% intervals: two-stage bootstrap "
                f"(points, then seeds within points), {self.bootstrap_used}/{self.bootstrap} resamples")

    def format(self, residuals: bool = True) -> str:
        lines = list(self.warnings) + [self.describe()]
        if self.note:
            lines.append(self.note)
        lines.append("")
        tab = self.coefficient_table()
        lines.append(tab.to_string(float_format=lambda v: f"{v:.5g}"))
        if residuals:
            lines += ["", "points (loss: mean over seeds; residual: log L - predicted log L; "
                          "N_eff: effective parameter count):",
                      self.residuals.to_string(index=False, float_format=lambda v: f"{v:.5g}")]
        return "\n".join(lines)

    __str__ = format


def _check(fit: ScalingFit, logN, E, dof: int) -> list[str]:
    """The identification warnings (module docstring), one line each."""
    w = []
    if fit.sizes < MIN_LEVELS:
        w.append(f"warning: only {fit.sizes} distinct model sizes N (need at least {MIN_LEVELS}): "
                 "the N terms a and c are not identified")
    if fit.expert_counts < MIN_LEVELS:
        w.append(f"warning: only {fit.expert_counts} distinct expert counts E (need at least "
                 f"{MIN_LEVELS}): the E terms b and c are not identified")
    if not fit.condition <= MAX_CONDITION:
        w.append(f"warning: the design's condition number is {fit.condition:.3g} (above "
                 f"{MAX_CONDITION:g}): log N, log Ê and their product are nearly collinear over these runs")
    if dof < MIN_RESIDUAL_DOF:
        w.append(f"warning: {len(logN)} points for {len(logN) - dof} parameters leave {dof} residual "
                 f"degrees of freedom (need at least {MIN_RESIDUAL_DOF})")
    if fit.bootstrap > 0 and fit.bootstrap_used < fit.bootstrap / 2:
        w.append(f"warning: only {fit.bootstrap_used} of {fit.bootstrap} bootstrap resamples could be "
                 "fitted (the others lost a model size or expert count): the intervals are unreliable")
    pct = f"{100 * fit.level:g}%"
    for k in SIGNED:
        lo, hi = fit.ci[k]
        if not (np.isfinite(lo) and np.isfinite(hi)):
            w.append(f"warning: {k} has no {pct} interval: too few usable bootstrap resamples")
        elif lo <= 0 <= hi:
            w.append(f"warning: the {pct} interval of {k} ({lo:.3g}, {hi:.3g}) contains 0: "
                     "its sign is not determined by these runs")
    largest = float(np.max(E))
    if "E_max" in fit.fitted:
        hi = fit.e_ci["E_max"][1]
        if not np.isfinite(hi) or hi > E_MAX_REACH * largest or fit.e_max > E_MAX_REACH * largest:
            w.append(f"warning: E_max is not identified: fitted {fit.e_max:.4g}, {pct} interval up to "
                     f"{hi:.4g}, beyond {E_MAX_REACH:g} x the largest E run ({largest:g}); the runs "
                     "show no saturation")
    if "E_start" in fit.fitted:
        lo, hi = fit.e_ci["E_start"]
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi > E_START_SPAN * lo:
            w.append(f"warning: E_start is not identified: {pct} interval ({lo:.4g}, {hi:.4g}) spans "
                     f"more than a factor {E_START_SPAN:g}" + ("" if np.any(E == 1) else " (no E = 1 runs)"))
    a, b, c, d = (fit.coef[k] for k in COEFFICIENTS)
    if not a + c * np.log(fit.e_hat(1.0)) < 0:
        w.append("warning: the fitted loss does not fall with N at E = 1: no effective parameter count")
    return w


def fit_arrays(N, E, loss, *, saturating: bool = False, e_start: float | None = None,
               e_max: float | None = None, bootstrap: int = 1000, seed: int = 0,
               level: float = 0.95, ids=None, files=None, points=None, loss_name: str = "loss",
               n_column: str = "N", note: str = "") -> ScalingFit:
    """Fit the law to runs given as arrays of parameter counts, expert counts and losses.

    `points`: a label per run; runs with one label are seeds of one grid point (default: runs
    with equal N and E). With `saturating`, E_start and E_max are fitted unless given.
    """
    N, E, L = (np.asarray(x, float) for x in (N, E, loss))
    if not (N.shape == E.shape == L.shape) or N.ndim != 1:
        raise ValueError("N, E and loss must be 1-D arrays of one length")
    if np.any(~np.isfinite(N) | (N <= 0)) or np.any(~np.isfinite(E) | (E < 1)) or \
            np.any(~np.isfinite(L) | (L <= 0)):
        raise ValueError("N and the loss must be finite and positive and E >= 1")
    if saturating and e_start is not None and e_max is not None and not e_max > e_start > 0:
        raise ValueError(f"need 0 < E_start < E_max (got E_start={e_start}, E_max={e_max})")
    ids = np.asarray(ids if ids is not None else np.arange(len(L)), dtype=object)
    labels = (pd.Series(list(zip(N, E))) if points is None else pd.Series(list(points))).astype(str)
    # One canonical order (N, E, point, id), so that the bootstrap's draws, and so the
    # intervals, do not depend on the order in which run files were named or listed.
    order = np.lexsort((ids.astype(str), labels.to_numpy(), E, N))
    N, E, L, ids = N[order], E[order], L[order], ids[order]
    labels = labels.iloc[order].reset_index(drop=True)
    codes, uniq = pd.factorize(labels, sort=False)
    P = len(uniq)
    members = [np.flatnonzero(codes == p) for p in range(P)]
    Np = np.array([N[m[0]] for m in members])
    Ep = np.array([E[m[0]] for m in members])
    losses = [L[m] for m in members]
    yp = np.log([x.mean() for x in losses])
    tr = _Transform(saturating, e_start, e_max)
    n_par = 4 + len(tr.free)
    sizes, counts = distinct_sizes(Np, Ep), len(np.unique(Ep))
    if P < n_par + 1 or sizes < 2 or counts < 2 or np.linalg.matrix_rank(_design(np.log(Np), np.log(Ep))) < 4:
        raise ValueError(f"cannot fit {n_par} parameters to {P} points ({len(L)} runs) with {sizes} "
                         f"distinct N and {counts} distinct E: need at least {n_par + 1} points, "
                         "2 parameter counts and 2 expert counts")
    logN = np.log(Np)
    largest = float(Ep.max())
    starts = [(es, em) for es in (1.2, 2.0, 5.0) for em in (2 * largest, 10 * largest, 100 * largest)]
    beta, es, em, rss = tr.fit(logN, Ep, yp, starts)
    logE = tr.log_e(Ep, es, em)
    X = _design(logN, logE)
    pred = X @ beta
    resid = yp - pred
    ss_tot = float(np.sum((yp - yp.mean()) ** 2))
    r2 = 1.0 - rss / ss_tot if ss_tot > 0 else float("nan")

    rng = np.random.default_rng(seed)
    # A resample that misses a model size may keep only N's that differ by the router's few
    # weights: full rank on paper, but its coefficients are noise. Such resamples are skipped.
    X_raw = _design(logN, np.log(Ep))
    max_cond = 100.0 * np.linalg.cond(X_raw)
    boots, boots_e = [], []
    for _ in range(int(bootstrap)):
        idx = rng.integers(0, P, P)
        Xb = X_raw[idx]
        if np.linalg.matrix_rank(Xb) < 4 or np.linalg.cond(Xb) > max_cond:
            continue
        yb = np.log([losses[p][rng.integers(0, len(losses[p]), len(losses[p]))].mean() for p in idx])
        bb, bes, bem, _ = tr.fit(logN[idx], Ep[idx], yb, [(es, em)])
        boots.append(bb)
        boots_e.append((bes, bem))
    boot = np.array(boots).reshape(-1, 4)
    boot_e = np.array(boots_e, float).reshape(-1, 2)
    alpha = (1 - level) / 2

    def interval(draws):
        if len(draws) >= 2:
            return np.quantile(draws, [alpha, 1 - alpha], axis=0)
        return np.full((2,) + draws.shape[1:], np.nan)

    lo, hi = interval(boot)
    elo, ehi = interval(boot_e)
    table = pd.DataFrame({
        "ids": [",".join(map(str, ids[m])) for m in members],
        "N": Np, "E": Ep, "E_hat": np.exp(logE), "seeds": [len(m) for m in members],
        loss_name: np.exp(yp), f"{loss_name}_sd": [x.std(ddof=1) if len(x) > 1 else np.nan for x in losses],
        "predicted": np.exp(pred), "residual": resid})
    if files is not None:
        files = np.asarray(files, dtype=object)[order]
        table.insert(1, "files", [",".join(map(str, files[m])) for m in members])
    fit = ScalingFit(coef=dict(zip(COEFFICIENTS, map(float, beta))),
                     ci={k: (float(lo[i]), float(hi[i])) for i, k in enumerate(COEFFICIENTS)},
                     level=level, r2=r2, rmse=float(np.sqrt(np.mean(resid ** 2))),
                     residuals=table, loss=loss_name, n_column=n_column, saturating=saturating,
                     e_start=float(es), e_max=float(em), bootstrap=int(bootstrap),
                     bootstrap_used=len(boot), boot=boot, note=note, fitted=tuple(tr.free),
                     e_ci={k: (float(elo[i]), float(ehi[i])) for i, k in enumerate(("E_start", "E_max"))
                           if k in tr.free},
                     boot_e=boot_e, condition=condition_number(logN, logE), sizes=sizes,
                     expert_counts=counts, runs=len(L))
    # Clark's effective parameter count per point, with its interval over the bootstrap.
    n_eff = fit.effective_params(Np, Ep)
    table["N_eff"] = n_eff
    table["N_eff/N"] = n_eff / Np
    if len(boot) >= 2:
        draws = np.array([fit.effective_params(Np, Ep, b, *(e if saturating else (None, None)))
                          for b, e in zip(boot, boot_e)]) / Np
        with np.errstate(all="ignore"):
            q = np.nanquantile(draws, [alpha, 1 - alpha], axis=0) if np.isfinite(draws).any() else \
                np.full((2, P), np.nan)
        table[f"N_eff/N {100 * alpha:g}%"], table[f"N_eff/N {100 * (1 - alpha):g}%"] = q[0], q[1]
    fit.warnings = _check(fit, logN, Ep, P - n_par)
    return fit


def fit_scaling_law(runs: pd.DataFrame, *, loss: str = "val_loss", n: str = "params_active",
                    saturating: bool = False, e_start: float | None = None,
                    e_max: float | None = None, bootstrap: int = 1000, seed: int = 0,
                    level: float = 0.95) -> ScalingFit:
    """Fit the law to the complete MoE runs of a `load_runs` table (others are dropped, and the
    fit's `note` says how many). Runs equal in every varying option but the seed are one point."""
    if n not in ("params_active", "params_total"):
        raise ValueError(f"n must be params_active or params_total (got {n!r})")
    use, note = usable_runs(runs, loss=loss, kind="moe", require=[n, "experts"])
    if use.empty:
        raise ValueError(f"no complete MoE runs with a finite positive {loss}"
                         + (f" ({note})" if note else ""))
    keys = point_columns(use, extra=[n, "experts"])
    labels = use[keys].astype(str).agg("|".join, axis=1).to_numpy()
    return fit_arrays(use[n].to_numpy(float), use["experts"].to_numpy(float),
                      use[loss].to_numpy(float), saturating=saturating, e_start=e_start,
                      e_max=e_max, bootstrap=bootstrap, seed=seed, level=level,
                      ids=use["id"].to_numpy(), points=labels, loss_name=loss, n_column=n, note=note)


def seed_table(runs: pd.DataFrame, *, loss: str = "val_loss") -> pd.DataFrame:
    """The complete MoE runs aggregated over seeds (load.aggregate_seeds): one row per point."""
    use, _ = usable_runs(runs, loss=loss, kind="moe", require=["experts"])
    return aggregate_seeds(use, loss)
