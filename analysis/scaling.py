"""The unified scaling law of Clark et al. (2022), "Unified Scaling Laws for Routed Language
Models", eq. (1) with the saturating transform of eq. (9):

    log L(N, E) = a log N + b log Ê + c log N log Ê + d

N is the parameter count of the dense model a routed model extends, i.e. the parameters one
token uses: `params_active` by default (it also counts the router's D*E weights per MoE layer,
a small share at these sizes), or `params_total` on request. E is the number of experts and Ê
either E itself or the saturating transform

    1/Ê = 1/(E - 1 + (1/E_start - 1/E_max)^-1) + 1/E_max,

which is ~E for small E, equals E_start at E = 1 and saturates at E_max. Defaults
E_start = 1.847, E_max = 314.883 are the values Clark et al. report for S-BASE (Table 4, quoted
from memory of the paper: not checked against it here; pass your own with --e-start/--e-max).
Natural logarithms throughout.

The fit is ordinary least squares on the complete runs with a finite positive loss; the
intervals are percentile intervals of a bootstrap that resamples runs with replacement.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .load import usable_runs

E_START_SBASE = 1.847
E_MAX_SBASE = 314.883
COEFFICIENTS = ("a", "b", "c", "d")


def saturating_experts(E, e_start: float = E_START_SBASE, e_max: float = E_MAX_SBASE):
    """Ê of eq. (9): 1/Ê = 1/(E - 1 + (1/E_start - 1/E_max)^-1) + 1/E_max."""
    E = np.asarray(E, dtype=float)
    if not e_max > e_start > 0:
        raise ValueError(f"need 0 < E_start < E_max (got E_start={e_start}, E_max={e_max})")
    shift = 1.0 / (1.0 / e_start - 1.0 / e_max)
    return 1.0 / (1.0 / (E - 1.0 + shift) + 1.0 / e_max)


def _design(logN: np.ndarray, logE: np.ndarray) -> np.ndarray:
    return np.column_stack([logN, logE, logN * logE, np.ones_like(logN)])


@dataclass
class ScalingFit:
    """Fitted coefficients of log L = a log N + b log Ê + c log N log Ê + d."""
    coef: dict                 # name -> estimate
    ci: dict                   # name -> (low, high) at `level`
    level: float
    r2: float                  # of log L
    rmse: float                # of log L
    residuals: pd.DataFrame    # per run: id, file, N, E, E_hat, loss, predicted, residual (log)
    loss: str
    n_column: str
    saturating: bool
    e_start: float
    e_max: float
    bootstrap: int
    bootstrap_used: int        # resamples kept (full rank and not ill-conditioned)
    boot: np.ndarray = field(repr=False)  # (bootstrap_used x 4)
    note: str = ""             # runs dropped before the fit

    def e_hat(self, E):
        return saturating_experts(E, self.e_start, self.e_max) if self.saturating else np.asarray(E, float)

    def predict(self, N, E):
        """Loss the law predicts at parameter count N and E experts (broadcasting)."""
        logN = np.log(np.asarray(N, float))
        logE = np.log(self.e_hat(E))
        a, b, c, d = (self.coef[k] for k in COEFFICIENTS)
        return np.exp(a * logN + b * logE + c * logN * logE + d)

    def coefficient_table(self) -> pd.DataFrame:
        lo_name, hi_name = f"{100 * (1 - self.level) / 2:g}%", f"{100 * (1 + self.level) / 2:g}%"
        return pd.DataFrame({"estimate": [self.coef[k] for k in COEFFICIENTS],
                             lo_name: [self.ci[k][0] for k in COEFFICIENTS],
                             hi_name: [self.ci[k][1] for k in COEFFICIENTS]},
                            index=pd.Index(COEFFICIENTS, name="coefficient"))

    def describe(self) -> str:
        ehat = (f"saturating Ê (E_start={self.e_start:g}, E_max={self.e_max:g})"
                if self.saturating else "Ê = E")
        return (f"log {self.loss} = a log N + b log Ê + c log N log Ê + d, N = {self.n_column}, {ehat}; "
                f"{len(self.residuals)} runs, R² = {self.r2:.4f}, RMSE(log L) = {self.rmse:.4g}, "
                f"{self.bootstrap_used}/{self.bootstrap} bootstrap resamples")

    def format(self, residuals: bool = True) -> str:
        lines = [self.describe()]
        if self.note:
            lines.append(self.note)
        lines.append("")
        tab = self.coefficient_table()
        lines.append(tab.to_string(float_format=lambda v: f"{v:.5g}"))
        if residuals:
            lines += ["", "residuals (log L - predicted log L):",
                      self.residuals.to_string(index=False, float_format=lambda v: f"{v:.5g}")]
        return "\n".join(lines)

    __str__ = format


def fit_arrays(N, E, loss, *, saturating: bool = False, e_start: float = E_START_SBASE,
               e_max: float = E_MAX_SBASE, bootstrap: int = 1000, seed: int = 0,
               level: float = 0.95, ids=None, files=None, loss_name: str = "loss",
               n_column: str = "N", note: str = "") -> ScalingFit:
    """Fit the law to arrays of parameter counts, expert counts and losses."""
    N, E, L = (np.asarray(x, float) for x in (N, E, loss))
    if not (N.shape == E.shape == L.shape) or N.ndim != 1:
        raise ValueError("N, E and loss must be 1-D arrays of one length")
    if np.any(~np.isfinite(N) | (N <= 0)) or np.any(~np.isfinite(E) | (E < 1)) or \
            np.any(~np.isfinite(L) | (L <= 0)):
        raise ValueError("N and the loss must be finite and positive and E >= 1")
    E_hat = saturating_experts(E, e_start, e_max) if saturating else E
    logN, logE, y = np.log(N), np.log(E_hat), np.log(L)
    X = _design(logN, logE)
    if len(y) < 5 or np.linalg.matrix_rank(X) < 4:
        raise ValueError(f"cannot fit 4 coefficients to {len(y)} runs with {len(np.unique(N))} "
                         f"distinct N and {len(np.unique(E))} distinct E: need at least 5 runs, "
                         "2 parameter counts and 2 expert counts")
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    pred = X @ beta
    resid = y - pred
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid ** 2)) / ss_tot if ss_tot > 0 else float("nan")

    rng = np.random.default_rng(seed)
    # A resample that misses a model size may keep only N's that differ by the router's few
    # weights: full rank on paper, but its coefficients are noise. Such resamples are skipped.
    max_cond = 100.0 * np.linalg.cond(X)
    boots = []
    for _ in range(int(bootstrap)):
        idx = rng.integers(0, len(y), len(y))
        Xb = X[idx]
        if np.linalg.matrix_rank(Xb) < 4 or np.linalg.cond(Xb) > max_cond:
            continue
        boots.append(np.linalg.lstsq(Xb, y[idx], rcond=None)[0])
    boot = np.array(boots).reshape(-1, 4)
    alpha = (1 - level) / 2
    if len(boot) >= 2:
        lo, hi = np.quantile(boot, [alpha, 1 - alpha], axis=0)
    else:
        lo = hi = np.full(4, np.nan)
    table = pd.DataFrame({
        "id": ids if ids is not None else np.arange(len(y)),
        "N": N, "E": E, "E_hat": E_hat, loss_name: L,
        "predicted": np.exp(pred), "residual": resid})
    if files is not None:
        table.insert(1, "file", files)
    return ScalingFit(coef=dict(zip(COEFFICIENTS, map(float, beta))),
                      ci={k: (float(lo[i]), float(hi[i])) for i, k in enumerate(COEFFICIENTS)},
                      level=level, r2=r2, rmse=float(np.sqrt(np.mean(resid ** 2))),
                      residuals=table, loss=loss_name, n_column=n_column, saturating=saturating,
                      e_start=e_start, e_max=e_max, bootstrap=int(bootstrap),
                      bootstrap_used=len(boot), boot=boot, note=note)


def fit_scaling_law(runs: pd.DataFrame, *, loss: str = "val_loss", n: str = "params_active",
                    saturating: bool = False, e_start: float = E_START_SBASE,
                    e_max: float = E_MAX_SBASE, bootstrap: int = 1000, seed: int = 0,
                    level: float = 0.95) -> ScalingFit:
    """Fit the law to the complete MoE runs of a `load_runs` table (others are dropped, and the
    fit's `note` says how many)."""
    if n not in ("params_active", "params_total"):
        raise ValueError(f"n must be params_active or params_total (got {n!r})")
    use, note = usable_runs(runs, loss=loss, kind="moe", require=[n, "experts"])
    if use.empty:
        raise ValueError(f"no complete MoE runs with a finite positive {loss}"
                         + (f" ({note})" if note else ""))
    return fit_arrays(use[n].to_numpy(float), use["experts"].to_numpy(float),
                      use[loss].to_numpy(float), saturating=saturating, e_start=e_start,
                      e_max=e_max, bootstrap=bootstrap, seed=seed, level=level,
                      ids=use["id"].to_numpy(), loss_name=loss, n_column=n, note=note)
