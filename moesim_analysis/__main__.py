"""Command line of moesim_analysis: `python3 -m moesim_analysis COMMAND ...` (or
`moesim-analysis COMMAND ...` once installed); each command's --help shows its options and
defaults."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

# Heavy modules (pandas, h5py, matplotlib, scipy) are imported by the command that needs them.
ALGORITHMS = ("pairwise", "bruck", "leader", "hierarchical")  # as moesim_analysis.costmodel
PLACEMENTS = ("contiguous", "round-robin")
DIR_HELP = "directory of run files (every *.h5 but sweep.h5)"


def prog_name() -> str:
    """How the user called us: `moesim-analysis` (the installed command) or `python3 -m moesim_analysis`."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name and not name.startswith("__main__") and name != "-c" else "python3 -m moesim_analysis"


class HelpWithDefaults(argparse.HelpFormatter):
    """--help lists each option's default, unless it has none (None, False) or says it itself."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False
                or default == argparse.SUPPRESS or "default" in text):
            return text
        return text + " (default: %(default)s)"


class _SubParser(argparse.ArgumentParser):
    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", HelpWithDefaults)
        super().__init__(*args, **kw)


def _fit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loss", default="val_loss", help="final attribute to fit")
    p.add_argument("--n", default="params_active", choices=["params_active", "params_total"],
                   help="parameter count N: params_active (the parameters one token uses) or params_total")
    p.add_argument("--saturating", action="store_true",
                   help="use Clark et al.'s saturating Ê instead of E (eq. 9), its E_start and E_max "
                        "fitted with intervals (unless fixed by --e-start / --e-max)")
    p.add_argument("--e-start", type=float,
                   help="fix E_start of the saturating Ê (implies --saturating; S-BASE: 1.847)")
    p.add_argument("--e-max", type=float,
                   help="fix E_max of the saturating Ê (implies --saturating; S-BASE: 314.478)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples (points, then seeds within points)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--strict", action="store_true",
                   help="exit 3 when the fit is not identified (any warning), after printing it")


def _ranks(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ranks takes comma-separated integers (got {text!r})")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--ranks takes integers >= 1 (got {text!r})")
    return values


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog_name(), description=__doc__, formatter_class=HelpWithDefaults)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_SubParser)

    p = sub.add_parser("report", help="write DIR/report/index.md and index.html with figures")
    p.add_argument("dir", help=DIR_HELP)
    p.add_argument("--out", help="report directory (default DIR/report)")
    _fit_options(p)

    p = sub.add_parser("fit", help="fit the unified scaling law and print it")
    p.add_argument("dir", help=DIR_HELP)
    _fit_options(p)

    p = sub.add_parser("clark", help="Clark et al. (2022) beside the sweeps of scripts/run_clark.sh "
                                     "(DIR/clark_lm, clark_lm_topk, clark_lm_routers): DIR/clark.md")
    p.add_argument("dir", help="directory holding the sweeps clark_lm, clark_lm_topk and clark_lm_routers")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")

    p = sub.add_parser("table", help="print the table of runs")
    p.add_argument("dir", help=DIR_HELP)
    p.add_argument("--csv", action="store_true", help="every column, as CSV")

    p = sub.add_parser("simulate", help="network cost model of a run's all-to-all exchanges",
                       description="Predict the exchange time per step of a run's routing on P' "
                                   "ranks of a described cluster (--assumptions lists the model's "
                                   "assumptions).")
    p.add_argument("run", nargs="?", help="an MoE run file")
    p.add_argument("--ranks", type=_ranks, help="target rank counts P', e.g. 8,64,512,4096 "
                                                "(default: the run's own)")
    p.add_argument("--ranks-per-node", type=int, default=1, help="ranks per node of the described cluster")
    p.add_argument("--intra-bw", type=float, default=50.0, help="intra-node bandwidth, GB/s")
    p.add_argument("--inter-bw", type=float, default=12.5, help="inter-node bandwidth, GB/s")
    p.add_argument("--intra-latency", type=float, default=1.0, help="intra-node latency, us")
    p.add_argument("--inter-latency", type=float, default=2.0, help="inter-node latency, us")
    p.add_argument("--algorithm", default="all", choices=list(ALGORITHMS) + ["all"],
                   help="all-to-all algorithm(s) to price")
    p.add_argument("--placement", default="contiguous", choices=list(PLACEMENTS),
                   help="experts on the ranks of a group: contiguous blocks (as moesim) or round-robin")
    p.add_argument("--ep-size", type=int,
                   help="expert group size N' (default: the run's --ep-size, else gcd(E', P'))")
    p.add_argument("--experts-per-rank", type=int,
                   help="scale experts with P' (E' = this x P'); default: the run's E")
    p.add_argument("--tokens-per-rank", type=int,
                   help="scale the batch with P' (B' = this x P'); default: the run's B")
    p.add_argument("--calibrate", nargs="+", metavar="RUNS",
                   help="replace the intra-node link by one fitted to these runs (see calibrate)")
    p.add_argument("--assumptions", action="store_true", help="print the model's assumptions")
    p.add_argument("--suggest-placement", action="store_true",
                   help="propose an --expert-placement list that keeps each node's likely experts on it (from the "
                        "run's routing, on nodes of --ranks-per-node) and compare it with the run's own at its P")

    p = sub.add_parser("calibrate", help="fit the intra-node link to measured runs, report the "
                                         "pairwise prediction's error")
    p.add_argument("paths", nargs="+", help="run files or directories of runs with P >= 2")
    p.add_argument("--per-step", action="store_true",
                   help="least squares over every step instead of one median point per run")
    p.add_argument("--fit-ranks", type=_ranks,
                   help="fit only runs with these rank counts (e.g. 2); the rest are predicted")
    return ap


def _saturation(a) -> dict:
    """Ê's options: a fixed E_start or E_max implies the transform; the rest is fitted."""
    for name, v in (("--e-start", a.e_start), ("--e-max", a.e_max)):
        if v is not None and not v > 0:
            raise ValueError(f"{name} must be > 0 (got {v:g})")
    return {"saturating": bool(a.saturating or a.e_start is not None or a.e_max is not None),
            "e_start": a.e_start, "e_max": a.e_max}


def cmd_fit(a) -> int:
    from .load import require_runs
    from .scaling import fit_scaling_law
    runs = require_runs(a.dir)
    fit = fit_scaling_law(runs, loss=a.loss, n=a.n, **_saturation(a), bootstrap=a.bootstrap,
                          seed=a.seed)
    print(fit.format())
    return 3 if a.strict and fit.warnings else 0


def cmd_clark(a) -> int:
    from .clark import clark_report
    path, text = clark_report(a.dir, bootstrap=a.bootstrap, seed=a.seed)
    print(text)
    print(f"written: {path}")
    return 0


def cmd_table(a) -> int:
    import pandas as pd

    from .load import require_runs
    from .report import runs_table
    runs = require_runs(a.dir)
    if a.csv:
        runs.to_csv(sys.stdout, index=False)
    else:
        with pd.option_context("display.width", 200, "display.max_columns", None,
                               "display.max_colwidth", 60):
            print(runs_table(runs).to_string(index=False))
    return 0


def cmd_report(a) -> int:
    from .report import write_report
    path, warnings = write_report(a.dir, a.out, loss=a.loss, n=a.n, bootstrap=a.bootstrap,
                                  seed=a.seed, **_saturation(a))
    for w in warnings:
        print(w)
    print(f"report written: {path} (and {path.with_name('index.md')})")
    return 3 if a.strict and warnings else 0


def cmd_simulate(a) -> int:
    from dataclasses import replace

    import numpy as np
    import pandas as pd

    from . import costmodel
    if a.assumptions:
        print(costmodel.ASSUMPTIONS)
        if not a.run:
            return 0
    if not a.run:
        raise ValueError("give a run file (or --assumptions)")
    if not Path(a.run).is_file():
        raise FileNotFoundError(f"no such run file: {a.run}")
    run = costmodel.RunRouting.from_file(a.run)
    cluster = costmodel.Cluster(a.ranks_per_node, a.intra_bw * 1e9, a.inter_bw * 1e9,
                                a.intra_latency * 1e-6, a.inter_latency * 1e-6)
    if a.calibrate:
        cal = costmodel.calibrate(a.calibrate)
        print(cal.format())
        cluster = costmodel.replace_intra(cluster, cal)
    print(f"run {a.run}: P={run.P}, N={run.N}, E={run.E}, K={run.top_k}, B={run.batch_tokens}, "
          f"D={run.d_model}, token_bytes={run.token_bytes:g}, MoE layers={run.moe_layers}, "
          f"steps={run.steps}")
    if run.dispatch == "padded":
        print("note: this run used --dispatch padded (fixed slots); the model prices the rows "
              "actually routed, so its traffic exceeds the reconstruction by metrics/padding_bytes")
    if run.traffic is not None and run.steps:
        rec = run.reconstruction_error()
        print(f"traffic reconstruction at P={run.P} ({run.placement}): off-diagonal bytes "
              f"{rec['predicted_bytes']:.6g} predicted, {rec['measured_bytes']:.6g} in metrics/traffic, "
              f"relative error {rec['relative_error']:.3%} (largest per-entry error "
              f"{rec['max_element_relative_error']:.3%})")
    if run.logged and run.dispatch in ("alltoallv", "allgather", "hierarchical") and run.steps:
        chk = run.node_check()
        cols = [c[len("model_"):] for c in chk.columns if c.startswith("model_")]
        agree = {c: int((chk[f"model_{c}"] == chk[f"logged_{c}"]).sum()) for c in cols}
        print(f"node traffic at the run's own P={run.P}, {run.ranks_per_node} ranks per node (--dispatch "
              f"{run.dispatch}), model against metrics, steps agreeing exactly of {len(chk)}: "
              + ", ".join(f"{c} {n}" for c, n in agree.items())
              + f"; per step: {chk['model_inter_messages'].iloc[-1]:g} messages and "
              f"{chk['model_inter_bytes'].iloc[-1]:.6g} bytes across nodes")
    if run.a2a_seconds is not None and run.steps > 1:
        own = [run.own_workload(s).time(cluster, "pairwise") for s in range(1, run.steps)]
        print(f"measured a2a seconds/step (median, steps 2..S): {np.median(run.a2a_seconds[1:]):.4g}; "
              f"pairwise on this cluster with the run's own routing: {np.median(own):.4g}")
    print(f"cluster: {cluster.describe()}; placement {a.placement}")
    if a.suggest_placement:
        order = costmodel.locality_order(run.rank_expert.sum(axis=0), run.N, cluster.ranks_per_node)
        text = ",".join(map(str, order))
        print(f"suggested --expert-placement {text}")
        for name, placement in ((run.placement, run.placement), ("suggested", text)):
            alt = replace(run, placement=placement)
            mid = run.steps // 2
            w = alt.own_workload(mid)
            nt = w.node_traffic(cluster, "pairwise")
            print(f"  {name}: at P={run.P}, step {mid + 1}: {nt['inter_bytes']:.6g} bytes across nodes, "
                  f"pairwise {w.time(cluster, 'pairwise'):.4g} s")
    algs = costmodel.ALGORITHMS if a.algorithm == "all" else (a.algorithm,)
    table = costmodel.simulate(run, a.ranks or [run.P], cluster, algs, a.placement,
                               a.experts_per_rank, a.tokens_per_rank, ep_size=a.ep_size)
    with pd.option_context("display.width", 200, "display.max_columns", None,
                           "display.max_colwidth", 80):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    times = [c for c in table.columns if c.endswith("_s")]
    if not times or table[times].isna().all().all():
        raise ValueError("no rank count could be simulated (see the note column)")
    print(costmodel.crossover_line(table))
    return 0


def cmd_calibrate(a) -> int:
    from . import costmodel
    print(costmodel.calibrate(a.paths, per_step=a.per_step, fit_ranks=a.fit_ranks).format())
    return 0


COMMANDS = {"fit": cmd_fit, "clark": cmd_clark, "table": cmd_table, "report": cmd_report, "simulate": cmd_simulate,
            "calibrate": cmd_calibrate}


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    # Every file is opened without HDF5's locks (load.open_h5); for an h5py too old for that,
    # this process (and only this one: the command line) also turns them off for itself.
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `... | head` ends quietly
    where = getattr(a, "dir", None)
    if where is not None and a.command != "clark":  # clark's DIR holds sweep directories
        d = Path(where)
        problem = (f"no such directory: {d}" if not d.exists() else
                   f"no run files (*.h5 other than sweep.h5) in {d}"
                   if d.is_dir() and not any(p.name != "sweep.h5" and not p.name.startswith(".")
                                             for p in d.glob("*.h5")) else "")
        if problem:
            print(f"{prog_name()} {a.command}: error: {problem}", file=sys.stderr)
            return 2
    try:
        return COMMANDS[a.command](a)
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"{prog_name()} {a.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
