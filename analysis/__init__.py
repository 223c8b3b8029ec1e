"""Old name of `moesim_analysis`, kept so that `python3 -m analysis ...` still works from the
repository root. Use `python3 -m moesim_analysis` (or the `moesim-analysis` command) and
`import moesim_analysis` instead; this shim is not installed."""


def __getattr__(name):
    import moesim_analysis
    return getattr(moesim_analysis, name)
