"""Reading moesim run files (docs/run-file.md) and sweep summaries (docs/sweeps.md) into pandas.

`load_runs` gives one row per run file, in natural order of ids (`p2` before `p10`): every
root attribute (options and provenance; a schema-1 moe run, whose `seed` drew the task too,
gets `data_seed = seed`), every attribute of group `final` (as `final_<name>` only where the
name is already a column), and `file`, `id` (the file's stem: the sweep point id), `kind`,
`status`, `error` and a boolean `complete`. Runs that failed, stopped, are still being written
or cannot be read are kept and flagged (`complete` False); `usable_runs` is what fits and
figures use to drop them. A sweep point whose options can never run (status `invalid`: a
record written by `moesim sweep`, not a run) is kept as a row with its reason in `error`;
`usable_runs` leaves it out and counts it apart from the runs it drops.

`load_sweep` reads a sweep's `sweep.h5` (one typed row per grid point), `load_steps` one run's
per-step scalars as a wide table, and `load_steps_long` the per-step series of one or many runs
in long format, per-layer, per-expert and per-phase series included.

Files are opened without HDF5's file locks (`open_h5`), so a run file that rank 0 is still
writing can be read; nothing here touches the process's environment.
"""
from __future__ import annotations

import glob as _glob
import os
import re
from pathlib import Path
from typing import Iterable, Union

import h5py
import numpy as np
import pandas as pd

PathLike = Union[str, os.PathLike]

SUMMARY_NAME = "sweep.h5"
BASE_COLUMNS = ["id", "file", "kind", "status", "complete", "error"]
PROVENANCE = {"schema_version", "moesim_version", "git_revision", "compiler", "ranks", "nodes",
              "ranks_per_node", "ranks_per_node_min", "host",
              "start_time", "end_time", "slurm_job_id", "slurm_array_job_id",
              "slurm_array_task_id", "slurm_job_nodelist", "stopped_at_step", "resumed_at_step",
              "sweep_point_id",
              "complete", "status", "error", "kind"}
# Options that say where or how loudly a run ran, not what it computed.
NON_SCIENCE_OPTIONS = {"out", "quiet", "progress_interval", "flush_every", "flush_seconds", "blas_threads", "config",
                       "checkpoint", "checkpoint_every", "resume"}
# The four exchanges of an MoE layer, in the order of metrics/*_by_phase's last axis.
PHASES = ("forward_dispatch", "forward_combine", "backward_dispatch", "backward_combine")


def open_h5(path: PathLike, mode: str = "r") -> h5py.File:
    """h5py.File without HDF5's file locks: rank 0 may still be writing a run file we read,
    and a lock would make the read fail. Where h5py or HDF5 is too old for `locking=`, the
    file opens with the library's default (set HDF5_USE_FILE_LOCKING=FALSE yourself then)."""
    try:
        return h5py.File(path, mode, locking=False)
    except (TypeError, ValueError) as exc:
        if "locking" not in str(exc):
            raise
        return h5py.File(path, mode)


_DIGITS = re.compile(r"(\d+)")


def natural_key(text) -> tuple:
    """Sort key that orders embedded numbers by value: `p2` < `p10`, `experts4_...` <
    `experts16_...` (text compares case-insensitively; digits as integers)."""
    parts = _DIGITS.split(str(text))
    return tuple((0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts if p != "")


def natural_sorted(items: Iterable, key=None) -> list:
    key = key or (lambda x: x)
    return sorted(items, key=lambda x: natural_key(key(x)))


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def run_files(path_or_paths: PathLike | Iterable[PathLike]) -> list[Path]:
    """Run files under a directory (every *.h5 but sweep.h5, in natural order of names), a
    file, a glob pattern (`runs/p*/*.h5`), or a list of any of these."""
    if isinstance(path_or_paths, (str, os.PathLike)):
        items = [path_or_paths]
    else:
        items = list(path_or_paths)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files += natural_sorted((q for q in p.glob("*.h5")
                                     if q.name != SUMMARY_NAME and not q.name.startswith(".")),
                                    key=lambda q: q.name)
        elif p.is_file():
            files.append(p)
        elif _is_glob(str(item)):
            hits = [Path(h) for h in _glob.glob(str(item))]
            hits = [h for h in hits if h.is_file() and h.name != SUMMARY_NAME]
            if not hits:
                raise FileNotFoundError(f"no run files match {item}")
            files += natural_sorted(hits, key=str)
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
        with open_h5(path) as f:
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
    """One row per run file of a directory, a file, a glob pattern or a list of them, in
    natural order of ids (`p2` before `p10`; equal ids by file); see the module docstring for
    the columns. The names of the columns that came from `final` groups (results, not options)
    are in `df.attrs["final_columns"]`."""
    rows = [read_run(p) for p in run_files(path_or_paths)]
    rows.sort(key=lambda r: (natural_key(r["id"]), natural_key(r["file"])))
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
    with open_h5(file) as f:
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
    with open_h5(file) as f:
        key = f"metrics/{name}"
        if key not in f:
            raise KeyError(f"{file}: no dataset {key}")
        return f[key][()]


def load_expert_load(file: PathLike) -> np.ndarray:
    """metrics/expert_tokens: (steps x E) assignments each expert processed, all MoE layers."""
    return load_metric(file, "expert_tokens")


def read_attrs(file: PathLike, group: str = "/") -> dict:
    """Attributes of one group as plain Python values."""
    with open_h5(file) as f:
        return {k: _py(v) for k, v in f[group].attrs.items()}


# --------------------------------------------------------------------------- long format

# metrics/<name> -> the names of its axes after the step axis (docs/run-file.md, "Per-step
# metrics"): layer = MoE layer (0-based among the MoE blocks), phase = one of PHASES, rank /
# peer = sending / receiving rank.
SERIES_AXES = {
    "gate_mass": ("expert",), "expert_tokens": ("expert",), "token_share": ("expert",),
    "top_expert_share": ("expert",),
    "expert_tokens_per_layer": ("layer", "expert"), "balance_bias": ("layer", "expert"),
    "a2a_bytes_by_phase": ("layer", "phase"), "a2a_seconds_by_phase": ("layer", "phase"),
    "traffic": ("rank", "peer"), "rank_expert_tokens": ("rank", "expert"),
}
# Series with a rank axis: P or P^2 rows per step, so only on request.
PER_RANK_SERIES = {"traffic", "rank_expert_tokens"}
LONG_COLUMNS = ["run", "step", "metric", "layer", "expert", "phase", "rank", "peer", "value"]
_INDEX_COLUMNS = ("layer", "expert", "rank", "peer")


def _axes_of(name: str, shape: tuple, experts: int | None) -> tuple | None:
    """The axis names of one dataset's row, or None when its layout is not known."""
    if len(shape) == 0:
        return ()
    if name in SERIES_AXES and len(SERIES_AXES[name]) == len(shape):
        return SERIES_AXES[name]
    if experts is not None and shape[-1] == experts:  # a series added since: per expert, per layer
        return {1: ("expert",), 2: ("layer", "expert")}.get(len(shape))
    return None


def _long_of_file(path: Path, run: str, wanted: set | None, per_rank: bool) -> dict[str, list]:
    parts: dict[str, list] = {c: [] for c in LONG_COLUMNS}
    with open_h5(path) as f:
        if "metrics" not in f:
            return parts
        g = f["metrics"]
        experts = f.attrs.get("effective_experts", f.attrs.get("experts"))
        experts = int(np.asarray(experts).reshape(-1)[0]) if experts is not None else None
        series = {name: ds for name, ds in g.items() if isinstance(ds, h5py.Dataset)
                  and name not in ("step", "val_step", "val_loss") and ds.ndim >= 1}
        n = min((ds.shape[0] for ds in series.values()), default=0)  # rows appear one by one while written
        steps = g["step"][:n].astype(np.int64) if "step" in g else np.arange(1, n + 1, dtype=np.int64)
        n = min(n, len(steps))
        chunks = []
        for name, ds in series.items():
            if (wanted is not None and name not in wanted) or (name in PER_RANK_SERIES and not per_rank
                                                               and (wanted is None or name not in wanted)):
                continue
            axes = _axes_of(name, ds.shape[1:], experts)
            if axes is None:
                continue
            values = np.asarray(ds[:n], dtype=float).reshape(n, -1)
            k = values.shape[1]
            idx = np.indices(ds.shape[1:]).reshape(len(axes), -1) if axes else np.zeros((0, 1), int)
            cols = {"step": np.repeat(steps[:n], k), "value": values.ravel()}
            for a, ax in enumerate(axes):
                cols[ax] = np.tile(idx[a], n)
            chunks.append((name, cols))
        if "val_step" in g and "val_loss" in g and (wanted is None or "val_loss" in wanted):
            m = min(g["val_step"].shape[0], g["val_loss"].shape[0])
            chunks.append(("val_loss", {"step": g["val_step"][:m].astype(np.int64),
                                        "value": np.asarray(g["val_loss"][:m], dtype=float)}))
    for name, cols in chunks:
        rows = len(cols["value"])
        parts["run"].append(np.full(rows, run, dtype=object))
        parts["metric"].append(np.full(rows, name, dtype=object))
        parts["step"].append(cols["step"])
        parts["value"].append(cols["value"])
        for c in _INDEX_COLUMNS:
            parts[c].append(cols[c].astype(float) if c in cols else np.full(rows, np.nan))
        parts["phase"].append(cols["phase"] if "phase" in cols else np.full(rows, -1))
    return parts


def load_steps_long(run_or_runs, metrics: Iterable[str] | None = None,
                    per_rank: bool = False) -> pd.DataFrame:
    """Per-step series in long format: one row per (run, step, metric, index), columns
    `run` (the run's id, or its file where ids repeat), `step`, `metric` (the dataset's name
    under metrics/, e.g. `train_loss`, `gate_mass`, `expert_tokens_per_layer`), `layer` (MoE
    layer, 0-based among the MoE blocks), `expert`, `phase` (forward_dispatch, forward_combine,
    backward_dispatch, backward_combine), `rank` and `peer` (sender and receiver) where the
    series has that axis (else <NA>), and `value` (float).

    `run_or_runs`: a run file, a directory, a glob, a list of them, or a load_runs table.
    Scalar series give one row per step, per-expert ones E, per-layer ones L_moe x E, the
    `*_by_phase` ones L_moe x 4; `val_loss` has a row per evaluation (at its `val_step`).
    `metrics` keeps only those names. The per-rank series (`traffic`, P x P, and
    `rank_expert_tokens`, P x E) come only with `per_rank=True` or when named in `metrics`.
    (Rows that a resume on another rank count moved to `metrics_until_step<s>/` are not read.)

        df = load_steps_long("runs/quick")
        df[df.metric == "expert_tokens_per_layer"].pivot_table(
            index="step", columns=["layer", "expert"], values="value")
    """
    if isinstance(run_or_runs, pd.DataFrame):
        pairs = [(Path(f), str(i)) for f, i in zip(run_or_runs["file"], run_or_runs["id"])]
    else:
        pairs = [(p, p.stem) for p in run_files(run_or_runs)]
    ids = [i for _, i in pairs]
    if len(set(ids)) < len(ids):
        pairs = [(p, str(p)) for p, _ in pairs]
    wanted = set(metrics) if metrics is not None else None
    parts: dict[str, list] = {c: [] for c in LONG_COLUMNS}
    for path, run in pairs:
        try:
            got = _long_of_file(path, run, wanted, per_rank)
        except OSError:
            continue  # unreadable: load_runs says why
        for c in LONG_COLUMNS:
            parts[c] += got[c]
    cat = {c: (np.concatenate(v) if v else np.array([])) for c, v in parts.items()}
    runs = list(dict.fromkeys(r for _, r in pairs))
    out = pd.DataFrame({
        "run": pd.Categorical(cat["run"], categories=runs),
        "step": cat["step"].astype(np.int64),
        "metric": pd.Categorical(cat["metric"]),
        **{c: pd.array(cat[c], dtype="float").astype("Int64") for c in ("layer", "expert")},
        "phase": pd.Categorical.from_codes(cat["phase"].astype(int), categories=list(PHASES)),
        **{c: pd.array(cat[c], dtype="float").astype("Int64") for c in ("rank", "peer")},
        "value": cat["value"].astype(float),
    }, columns=LONG_COLUMNS)
    return out


# --------------------------------------------------------------------------- sweep.h5

# Types of the known integer `final` attributes, where no run file beside sweep.h5 says them.
INT_RESULTS = {"params_total", "params_active", "flops_per_token", "steps_done", "token_bytes",
               "val_routing_layer", "train_rows", "test_rows"}


def _column(values: np.ndarray, want: str | None) -> pd.Series:
    """One column of sweep.h5 typed: text decoded ("true"/"false" as booleans), numbers as
    float64, or as nullable Int64 where `want` is "int" (or unknown and every value is whole)."""
    if values.dtype.kind in "OSU":
        text = pd.Series([_py(v) for v in values], dtype=object)
        low = text.map(lambda v: v.strip().lower() if isinstance(v, str) else v)
        if low.dropna().isin(["true", "false"]).all() and low.notna().any():
            return low.map({"true": True, "false": False}).astype("boolean")
        return text.map(_coerce) if want in ("int", "float") else text
    x = values.astype(float)
    finite = x[np.isfinite(x)]
    whole = finite.size > 0 and bool(np.all(finite == np.round(finite)))
    if want == "int" or (want is None and whole):
        if whole or finite.size == 0:
            return pd.Series(pd.array(x, dtype="float").astype("Int64"))
    if want == "bool":
        return pd.Series(pd.array(x, dtype="float").astype("boolean"))
    return pd.Series(x)


def _read_column(ds) -> pd.Series | np.ndarray:
    """A column of a sweep.h5 that describes its datasets, in its own type: bool, int64
    (nullable where `missing_value` marks points without a value), float64, text; the raw
    array for older files."""
    values = ds[()]
    if "units" not in ds.attrs:
        return values
    if values.dtype.kind == "b":
        return pd.Series(pd.array(values.astype(bool), dtype="boolean"))
    if values.dtype.kind in "iu":
        missing = ds.attrs.get("missing_value")
        arr = pd.array(values.astype(np.int64), dtype="Int64")
        if missing is not None:
            arr[values == missing] = pd.NA
        return pd.Series(arr)
    if values.dtype.kind == "f":
        return pd.Series(values.astype(float))
    return pd.Series([str(_py(v)) for v in values], dtype=object)


def _attr_types(directory: Path, files: list[str]) -> tuple[dict, dict]:
    """(root attribute -> "int"/"float"/"bool"/"str", final attribute -> ...) from the first
    complete run file beside sweep.h5, or ({}, {})."""
    def kind(v) -> str:
        v = np.asarray(v)
        return {"i": "int", "u": "int", "f": "float", "b": "bool"}.get(v.dtype.kind, "str")
    for name in files:
        p = directory / name
        if not name or not p.is_file():
            continue
        try:
            with open_h5(p) as f:
                if f.attrs.get("complete") != 1:
                    continue
                root = {k: kind(v) for k, v in f.attrs.items()}
                final = {k: kind(v) for k, v in f["final"].attrs.items()} if "final" in f else {}
                return root, final
        except (OSError, KeyError):
            continue
    return {}, {}


def load_sweep(path: PathLike) -> pd.DataFrame:
    """A sweep's summary (DIR/sweep.h5, or DIR) as one row per grid point in grid order:
    `index`, `id`, `status` (complete, failed, invalid, incomplete, pending), `complete`
    (bool), `error`, `file` (the run file's path beside sweep.h5, "" if none), then every
    option of each point under its own name (older sweep.h5 files: the options the config
    named) and every `final` attribute (as `final_<name>` where the name is already a column).
    Columns are typed as sweep.h5 stores them: switches as boolean, counts as nullable Int64 (<NA>
    where a point has none), the rest float64 (NaN where a point has none), text decoded; older
    files are typed from a complete run file beside them. The root attributes (`command`,
    `config`, `swept` as the config names them and `swept_options` as option names, both lists,
    `points`, ...) are in
    `df.attrs["sweep"]`, the option and result column names in `df.attrs["option_columns"]`
    and `df.attrs["final_columns"]`."""
    p = Path(path)
    if p.is_dir():
        p = p / SUMMARY_NAME
    if not p.is_file():
        raise FileNotFoundError(f"no such sweep summary: {p}")
    with open_h5(p) as f:
        if "points" not in f:
            raise ValueError(f"{p}: no group 'points' (not a sweep.h5)")
        root = {k: _py(v) for k, v in f.attrs.items()}
        g = f["points"]
        base = {k: g[k][()] for k in ("index", "id", "status", "error", "file") if k in g}
        options = {k: _read_column(ds) for k, ds in g["options"].items()} if "options" in g else {}
        finals = {k: _read_column(ds) for k, ds in g["final"].items()} if "final" in g else {}
        typed = "units" in g["index"].attrs if "index" in g else False
    n = max((len(v) for v in base.values()), default=0)
    files = [str(_py(v)) for v in base.get("file", [])]
    # sweep.h5 files that describe their datasets are typed already; older ones are typed by
    # a complete run file beside them.
    root_types, final_types = ({}, {}) if typed else _attr_types(p.parent, files)
    df = pd.DataFrame(index=range(n))
    df["index"] = pd.Series(base["index"]).astype(np.int64) if "index" in base else np.arange(n)
    for k in ("id", "status", "error"):
        df[k] = pd.Series([str(_py(v)) for v in base[k]], dtype=object) if k in base else ""
    df["complete"] = df["status"] == "complete"
    df["file"] = [str(p.parent / name) if name else "" for name in files] if files else ""
    for k, v in options.items():
        df[k] = (v if isinstance(v, pd.Series) else _column(v, root_types.get(k))).array
    final_names = []
    for k, v in finals.items():
        name = f"final_{k}" if k in df.columns else k
        want = final_types.get(k) if final_types else ("int" if k in INT_RESULTS else "float")
        df[name] = (v if isinstance(v, pd.Series) else _column(v, want)).array
        final_names.append(name)
    if isinstance(root.get("swept"), str):
        root["swept"] = [s for s in root["swept"].split(",") if s]
    if "swept_options" in root:
        root["swept_options"] = [str(_py(s)) for s in np.atleast_1d(root["swept_options"])]
    df.attrs["sweep"] = root
    df.attrs["option_columns"] = list(options)
    df.attrs["final_columns"] = final_names
    return df
