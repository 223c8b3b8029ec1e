"""Reading moesim run files (docs/run-file.md) into pandas.

`load_runs` gives one row per run file: every root attribute (options and provenance; a
schema-1 moe run, whose `seed` drew the task too, gets `data_seed = seed`),
every attribute of group `final` (as `final_<name>` only where the name is already a column),
and `file`, `id` (the file's stem: the sweep point id), `kind`, `status`, `error` and a
boolean `complete`. Runs that failed, stopped, are still being written or cannot be read are
kept and flagged (`complete` False); `usable_runs` is what fits and figures use to drop them.
A sweep point whose options can never run (status `invalid`: a record written by
`moesim sweep`, not a run) is kept as a row with its reason in `error`; `usable_runs` leaves
it out and counts it apart from the runs it drops.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Union

os.environ["HDF5_USE_FILE_LOCKING"] = "FALSE"  # before h5py opens a file; see __init__.py

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

PathLike = Union[str, os.PathLike]

SUMMARY_NAME = "sweep.h5"
BASE_COLUMNS = ["id", "file", "kind", "status", "complete", "error"]
PROVENANCE = {"schema_version", "moesim_version", "git_revision", "compiler", "ranks", "host",
              "start_time", "end_time", "slurm_job_id", "slurm_array_job_id",
              "slurm_array_task_id", "slurm_job_nodelist", "stopped_at_step", "resumed_at_step",
              "sweep_point_id",
              "complete", "status", "error", "kind"}
# Options that say where or how loudly a run ran, not what it computed.
NON_SCIENCE_OPTIONS = {"out", "quiet", "progress_interval", "flush_every", "blas_threads", "config",
                       "checkpoint", "checkpoint_every", "resume"}


def run_files(path_or_paths: PathLike | Iterable[PathLike]) -> list[Path]:
    """Run files under a directory (every *.h5 but sweep.h5), a file, or a list of either."""
    if isinstance(path_or_paths, (str, os.PathLike)):
        items = [Path(path_or_paths)]
    else:
        items = [Path(p) for p in path_or_paths]
    files: list[Path] = []
    for p in items:
        if p.is_dir():
            files += sorted(q for q in p.glob("*.h5")
                            if q.name != SUMMARY_NAME and not q.name.startswith("."))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such file or directory: {p}")
    return files


def _py(value):
    """HDF5 attribute -> plain Python scalar (bytes decoded, 1-element arrays unwrapped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.size == 1:
            return _py(value.reshape(-1)[0])
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _coerce(value):
    """Failure records store options as text ("8", "0.003", "true"): give them their type back."""
    if not isinstance(value, str):
        return value
    low = value.strip().lower()
    if low in ("true", "false"):
        return int(low == "true")
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def read_run(path: PathLike) -> dict:
    """One run file -> dict of columns (see module docstring), and `_final_columns`: the names
    that came from its `final` group. Never raises for a bad file."""
    path = Path(path)
    row: dict = {"id": path.stem, "file": str(path), "kind": None, "status": "unreadable",
                 "complete": False, "error": ""}
    try:
        with h5py.File(path, "r") as f:
            root = {k: _coerce(_py(v)) for k, v in f.attrs.items()}
            final = {k: _py(v) for k, v in f["final"].attrs.items()} if "final" in f else {}
            steps = f["metrics/step"].shape[0] if "metrics/step" in f else None
    except Exception as exc:  # noqa: BLE001  (a file being written, truncated or not HDF5)
        row["error"] = f"unreadable: {exc}"
        return row
    complete = root.get("complete") == 1 and root.get("status") not in ("failed", "invalid")
    if root.get("status") in ("failed", "invalid"):
        status = root["status"]
    elif complete:
        status = "complete"
    elif "stopped_at_step" in root:
        status = "stopped"
    else:
        status = "incomplete"
    for key, value in root.items():
        if key not in ("complete", "status", "error"):
            row[key] = value
    row.update(kind=root.get("kind"), status=status, complete=bool(complete),
               error=str(root.get("error", "")))
    if row["kind"] == "moe" and "data_seed" not in row and "seed" in row and root.get("schema_version", 1) < 2:
        row["data_seed"] = row["seed"]  # schema 1: --seed drew the task as well as the model
    if steps is not None:
        row["steps_logged"] = steps
    names = []
    for key, value in final.items():
        names.append(f"final_{key}" if key in row else key)
        row[names[-1]] = value
    row["_final_columns"] = names
    return row


def load_runs(path_or_paths: PathLike | Iterable[PathLike]) -> pd.DataFrame:
    """One row per run file; see the module docstring for the columns. The names of the
    columns that came from `final` groups (results, not options) are in
    `df.attrs["final_columns"]`."""
    rows = [read_run(p) for p in run_files(path_or_paths)]
    finals: set = set()
    for r in rows:
        finals |= set(r.pop("_final_columns", ()))
    df = pd.DataFrame(rows)
    for col in BASE_COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series(dtype=object)
    df["complete"] = df["complete"].fillna(False).astype(bool)
    rest = [c for c in df.columns if c not in BASE_COLUMNS]
    df = df[BASE_COLUMNS + rest].reset_index(drop=True)
    df.attrs["final_columns"] = sorted(finals)
    return df


# Results a run file stores under `final` (used when a table carries no attrs["final_columns"],
# e.g. one built by hand).
KNOWN_RESULTS = {"val_loss", "train_loss", "val_accuracy", "test_score", "params_total",
                 "params_active", "flops_per_token", "param_utilization", "tokens_per_s",
                 "wall_seconds", "a2a_seconds", "a2a_wait_seconds", "compute_seconds", "a2a_bytes", "dropped_fraction",
                 "steps_done", "token_bytes", "steps_logged"}
# The model's and the task's seeds: runs that differ only in them are replicates of one grid
# point. The spread then measures initialisation alone (data_seed fixed), or initialisation and
# task (data_seed varies too; schema-1 files, whose seed drew both, always do).
SEED_OPTIONS = ("seed", "data_seed")


def point_columns(df: pd.DataFrame, extra: Iterable[str] = ()) -> list[str]:
    """The options that vary across `df` apart from the model seed (and where or how loudly a
    run ran), plus `extra`: runs equal in all of them are seeds of one grid point."""
    results = set(df.attrs.get("final_columns", ())) | KNOWN_RESULTS
    skip = set(BASE_COLUMNS) | PROVENANCE | NON_SCIENCE_OPTIONS | results | set(SEED_OPTIONS)
    cols = [c for c in df.columns
            if c not in skip and not c.startswith(("final_", "_"))
            and df[c].astype(str).nunique(dropna=False) > 1]
    return list(dict.fromkeys(list(extra) + cols))


def aggregate_seeds(df: pd.DataFrame, loss: str, by: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per grid point (runs equal in `by`, default point_columns): the first run's
    columns, `seeds` (runs averaged), `{loss}` their mean, `{loss}_sd` (sample standard
    deviation, NaN for one seed), `{loss}_min`, `{loss}_max`, `ids` (comma-joined) and
    `_losses` (the runs' losses, for resampling)."""
    by = list(point_columns(df) if by is None else by)
    if df.empty:
        return df.assign(seeds=pd.Series(dtype=int))
    grouped = df.groupby(by, dropna=False, sort=True) if by else [((), df)]
    rows = []
    for _, g in grouped:
        values = pd.to_numeric(g[loss], errors="coerce").to_numpy(float)
        row = g.iloc[0].to_dict()
        sd = float(values.std(ddof=1)) if len(values) > 1 else np.nan
        row.update({loss: float(values.mean()), f"{loss}_sd": sd, f"{loss}_min": float(values.min()), f"{loss}_max": float(values.max()),
                    "seeds": len(values), "ids": ",".join(map(str, g["id"])) if "id" in g else "",
                    "_losses": values})
        rows.append(row)
    out = pd.DataFrame(rows).reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out


def require_runs(directory: PathLike) -> pd.DataFrame:
    """load_runs for a command-line argument, with the command line's error messages."""
    d = Path(directory)
    if not d.exists():
        raise FileNotFoundError(f"no such directory: {d}")
    runs = load_runs(d)
    if runs.empty:
        raise FileNotFoundError(f"no run files (*.h5 other than sweep.h5) in {d}")
    return runs


def usable_runs(df: pd.DataFrame, loss: str | None = "val_loss", kind: str | None = "moe",
                require: Iterable[str] = ()) -> tuple[pd.DataFrame, str]:
    """Complete runs of `kind` with a finite positive `loss` (and finite `require` columns).

    Returns (rows, note); the note says how many runs were dropped and why ("" if none).
    Invalid sweep points were never runs: they are counted apart ("n invalid grid points").
    """
    if df.empty:
        return df, ""
    invalid = df["status"] == "invalid"
    n_invalid = int(invalid.sum())
    df = df[~invalid]
    keep = df["complete"].astype(bool)
    reasons: dict[str, int] = {}
    for status, n in df.loc[~keep, "status"].value_counts().items():
        reasons[str(status)] = int(n)
    if kind is not None:
        other = keep & (df["kind"] != kind)
        if other.any():
            reasons[f"kind other than {kind}"] = int(other.sum())
        keep &= df["kind"] == kind
    for col in ([loss] if loss else []) + list(require):
        values = pd.to_numeric(df[col], errors="coerce") if col in df else pd.Series(np.nan, index=df.index)
        ok = np.isfinite(values) & ((values > 0) if col == loss else True)
        bad = keep & ~ok
        if bad.any():
            reasons[f"no finite positive {col}" if col == loss else f"no {col}"] = int(bad.sum())
        keep &= ok
    dropped = int((~keep).sum())
    notes = []
    if dropped:
        detail = ", ".join(f"{n} {why}" for why, n in reasons.items())
        notes.append(f"dropped {dropped} of {len(df)} runs ({detail})")
    if n_invalid:
        notes.append(f"skipped {n_invalid} invalid grid point{'s' if n_invalid > 1 else ''} (never run)")
    return df[keep].copy(), "; ".join(notes)


def load_steps(file: PathLike) -> pd.DataFrame:
    """Per-step table of the 1-D datasets under metrics/, with val_loss (NaN between evaluations)."""
    with h5py.File(file, "r") as f:
        if "metrics" not in f:
            return pd.DataFrame({"step": pd.Series(dtype=np.int64)})
        g = f["metrics"]
        cols = {name: ds[()] for name, ds in g.items()
                if isinstance(ds, h5py.Dataset) and ds.ndim == 1 and not name.startswith("val_")}
        val = {name: g[name][()] for name in ("val_step", "val_loss") if name in g}
    n = min((len(v) for v in cols.values()), default=0)  # datasets grow one by one while written
    df = pd.DataFrame({k: v[:n] for k, v in cols.items()})
    if "step" not in df:
        df.insert(0, "step", np.arange(1, n + 1))
    else:
        df = df[["step"] + [c for c in df.columns if c != "step"]]
    if "val_step" in val and "val_loss" in val:
        m = min(len(val["val_step"]), len(val["val_loss"]))
        v = pd.DataFrame({"step": val["val_step"][:m], "val_loss": val["val_loss"][:m]})
        df = df.merge(v.drop_duplicates("step", keep="last"), on="step", how="left")
    return df


def load_metric(file: PathLike, name: str) -> np.ndarray:
    """metrics/<name> as an array (KeyError naming the file if it is absent)."""
    with h5py.File(file, "r") as f:
        key = f"metrics/{name}"
        if key not in f:
            raise KeyError(f"{file}: no dataset {key}")
        return f[key][()]


def load_expert_load(file: PathLike) -> np.ndarray:
    """metrics/expert_tokens: (steps x E) assignments each expert processed, all MoE layers."""
    return load_metric(file, "expert_tokens")


def read_attrs(file: PathLike, group: str = "/") -> dict:
    """Attributes of one group as plain Python values."""
    with h5py.File(file, "r") as f:
        return {k: _py(v) for k, v in f[group].attrs.items()}
