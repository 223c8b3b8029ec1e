"""Fault injection (issue 13), a short run of bench/fault_injection.py: a sweep whose ranks are
SIGKILLed at random steps (once or twice per trial) must, rerun, end with every point complete
and bit-identical to an undisturbed sweep, with no job hanging. The long campaign is the script
itself (`python3 bench/fault_injection.py --trials 50`); here a few trials on 2 ranks, and one
whose attempts change the rank count, so that points resume on another P.
"""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from moesim_testing import bench_module

fi = bench_module("fault_injection")

# Two points of 120 steps, a checkpoint every 30: a kill lands inside a point and the rerun
# resumes it from a checkpoint or from step 1, depending on where it fell.
SPEC = dict(experts=[2, 4], seeds=[1], steps=120, checkpoint_every=30, flush_every=10, eval_every=60)


def figures(r) -> str:
    return "\n".join(fi.summary_lines(r) + r.trial_log)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, moesim):
    work = tmp_path_factory.mktemp("fault")
    # Step-triggered kills only (time_kills=0): every planned kill lands inside a point.
    r = fi.campaign(fi.SweepSpec(**SPEC), work, trials=3, seed=13, ranks=[2], max_kills=2, time_kills=0.0,
                    job_timeout=90, log=lambda line: None)
    return r, work


def test_killed_sweeps_rerun_to_the_undisturbed_results(campaign):
    r, _ = campaign
    assert r.hangs == 0, figures(r)
    assert r.unfinished == 0, figures(r)
    assert r.points_checked == 3 * 2
    assert r.points_lost == 0, figures(r) + f"\n{r.failures}"
    assert r.kills_planned >= 3 and r.kills_delivered == r.kills_planned, figures(r)
    assert r.kills_survived == r.kills_delivered
    assert r.max_reruns_in_a_trial == 1, "one undisturbed rerun must finish a killed sweep\n" + figures(r)


def test_resume_on_another_rank_count(tmp_path, moesim):
    """One kill on P ranks after a checkpoint (step >= 40 of 120: the rows of step 40 are out, so
    the checkpoint of step 30 is), the rerun on the other P resumes from it: metrics_until_step*
    in the run file, the rest identical to the reference. The kill waits for a step <= 60, so
    that the poll of the run file sees it long before the point ends (a kill planned at step
    105 once landed after the point had completed, and nothing was left to resume)."""
    r = fi.campaign(fi.SweepSpec(**SPEC), tmp_path, trials=1, seed=5, ranks=[1, 2], mix_ranks=True, max_kills=1,
                    time_kills=0.0, min_kill_step=40, max_kill_step=60, job_timeout=90, log=lambda line: None)
    assert r.references_agree, r.reference_differences
    assert r.kills_delivered == 1 and r.hangs == 0 and r.unfinished == 0, figures(r)
    assert r.points_resumed_across_ranks == 1, figures(r)
    assert r.points_lost == 0, figures(r) + f"\n{r.failures}"


def test_the_check_sees_one_changed_bit(campaign, tmp_path):
    """check_sweep itself: a copy of the reference passes; one bit of one loss, a changed final
    attribute or a point left incomplete is a lost point; a timing column is not compared."""
    _, work = campaign
    ref = work / "reference_np2"
    ids = fi.point_ids(ref)
    out = tmp_path / "copy"
    shutil.copytree(ref, out)
    for i in ids:  # the copy's own paths, as a sweep into `out` writes them
        with h5py.File(out / f"{i}.h5", "r+") as f:
            for key in ("out", "checkpoint"):
                f.attrs[key] = f.attrs[key].replace(str(ref), str(out))
    assert fi.check_sweep(out, ref, ids, layout_free=False) == {}

    with h5py.File(out / f"{ids[0]}.h5", "r+") as f:
        f["metrics/step_seconds"][3] += 1.0
        f["final"].attrs["wall_seconds"] = 0.0
    assert fi.check_sweep(out, ref, ids, layout_free=False) == {}

    with h5py.File(out / f"{ids[0]}.h5", "r+") as f:
        loss = f["metrics/train_loss"]
        v = loss[()]
        v[-1] = np.nextafter(v[-1], np.inf)
        loss[...] = v
    with h5py.File(out / f"{ids[1]}.h5", "r+") as f:
        f["final"].attrs["val_loss"] = np.nextafter(f["final"].attrs["val_loss"], 0)
    lost = fi.check_sweep(out, ref, ids, layout_free=False)
    assert lost == {ids[0]: ["dataset metrics/train_loss differs"], ids[1]: ["attribute final@val_loss differs"]}

    with h5py.File(out / f"{ids[1]}.h5", "r+") as f:
        f.attrs["complete"] = 0
    assert "run file not complete" in fi.check_sweep(out, ref, ids, layout_free=False)[ids[1]]
