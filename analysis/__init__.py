"""Analysis of moesim run files: loading, scaling-law fits, figures, reports, a network cost model.

Run as `python3 -m analysis {report,fit,table,simulate,calibrate} ...` from the repository root
(`python3 -m analysis --help`). Needs h5py, numpy, pandas, scipy and matplotlib (Debian's
/usr/bin/python3 has them).
"""
import os

# Rank 0 may still be writing a run file while we read it; HDF5's file locks would make the
# read fail. The variable must be set before h5py opens any file.
os.environ["HDF5_USE_FILE_LOCKING"] = "FALSE"

# Submodules load on first use, so `python3 -m analysis` answers a bad argument quickly.
_EXPORTS = {"load_runs": "load", "load_steps": "load", "load_expert_load": "load",
            "run_files": "load", "ScalingFit": "scaling", "fit_scaling_law": "scaling",
            "saturating_experts": "scaling"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
