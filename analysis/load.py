"""Reading moesim run files (README, "Run file") into pandas.

`load_runs` gives one row per run file: every root attribute (options and provenance; a
schema-1 moe run, whose `seed` drew the task too, gets `data_seed = seed`),
every attribute of group `final` (as `final_<name>` only where the name is already a column),
and `file`, `id` (the file's stem: the sweep point id), `kind`, `status`, `error` and a
boolean `complete`. Runs that failed, stopped, are still being written or cannot be read are
kept and flagged (`complete` False); `usable_runs` is what fits and figures use to drop them.
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
    """One run file -> dict of columns (see module docstring). Never raises for a bad file."""
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
    complete = root.get("complete") == 1 and root.get("status") != "failed"
    if root.get("status") == "failed":
        status = "failed"
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
    for key, value in final.items():
        row[f"final_{key}" if key in row else key] = value
    return row


def load_runs(path_or_paths: PathLike | Iterable[PathLike]) -> pd.DataFrame:
    """One row per run file; see the module docstring for the columns."""
    rows = [read_run(p) for p in run_files(path_or_paths)]
    df = pd.DataFrame(rows)
    for col in BASE_COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series(dtype=object)
    df["complete"] = df["complete"].fillna(False).astype(bool)
    rest = [c for c in df.columns if c not in BASE_COLUMNS]
    return df[BASE_COLUMNS + rest].reset_index(drop=True)


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
    """
    if df.empty:
        return df, ""
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
    note = ""
    if dropped:
        detail = ", ".join(f"{n} {why}" for why, n in reasons.items())
        note = f"dropped {dropped} of {len(df)} runs ({detail})"
    return df[keep].copy(), note


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
