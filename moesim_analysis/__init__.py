"""moesim_analysis: reading moesim's run files and sweeps, the scaling-law fit, figures, reports
and a network cost model (docs/analysis.md).

    import moesim_analysis as ma
    runs = ma.load_runs("runs/quick")            # one row per run, natural order of ids
    points = ma.load_sweep("runs/quick/sweep.h5")  # one typed row per grid point
    steps = ma.load_steps_long(runs)             # run, step, metric, layer, expert, ..., value

Command line: `python3 -m moesim_analysis {report,fit,table,clark,simulate,calibrate} ...` or,
installed (`pip install --no-deps --no-build-isolation .` in the repository), `moesim-analysis`.
Needs h5py, numpy, pandas, scipy and matplotlib (Debian's python3-* packages have them).

Importing the package changes nothing process-wide: no environment variable, no matplotlib
backend (figures are drawn without pyplot), and files are opened without HDF5 file locks
through `open_h5` instead of HDF5_USE_FILE_LOCKING.
"""
__version__ = "0.1.0"

# Submodules load on first use, so `python3 -m moesim_analysis` answers a bad argument quickly.
_EXPORTS = {"load_runs": "load", "load_sweep": "load", "load_steps": "load",
            "load_steps_long": "load", "load_expert_load": "load", "load_metric": "load",
            "run_files": "load", "natural_key": "load", "open_h5": "load", "usable_runs": "load",
            "logged_counts": "params", "counts_of_run": "params", "model_counts": "params",
            "ScalingFit": "scaling", "fit_scaling_law": "scaling",
            "saturating_experts": "scaling", "write_report": "report"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'moesim_analysis' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
