"""Self-describing files: every dataset of every kind of run file and of sweep.h5 carries `units`,
`description` and `axes` (one name per axis) from the writer's own table, which `moesim info
--schema` / `--metrics` print and docs/run-file.md carries verbatim; run files store the
options in effect (not the other tasks') and name them in `option_names`; sweep.h5 holds every
option of each point, typed as the run files store them."""
from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

from moesim_testing import (QUICK_EXIT_ENV, REPO_ROOT, blobs, cli_args, fail_with, run_moe, run_mpi,
                            run_stack, write_csv)

from moesim_analysis import load_sweep


def parse_tables(text: str) -> list[dict]:
    """Rows of every markdown table in `text` as dicts keyed by the header cells."""
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-"):
            rows.append(dict(zip(header, cells)))
    return rows


@pytest.fixture(scope="module")
def schema_text(mpirun):
    return mpirun(1, "info", "--schema", check=True).stdout


@pytest.fixture(scope="module")
def table(schema_text, mpirun):
    """[(compiled path pattern, row)] for every dataset of every file kind."""
    rows = parse_tables(schema_text)
    rows += parse_tables(mpirun(1, "info", "--metrics", check=True).stdout)
    out = []
    for r in rows:
        path = r["dataset"].strip("`")
        pattern = re.compile("^" + re.sub(r"<[^>]+>", "[^/]+", re.escape(path).replace(r"\<", "<").replace(r"\>", ">")) + "$")
        out.append((pattern, path, r))
    return out


def row_for(table, path):
    exact = [r for _, p, r in table if p == path]
    if exact:
        return exact[0], True
    family = [r for pat, _, r in table if pat.match(path)]
    assert family, f"{path} is in no table of `moesim info --schema` / `--metrics`"
    return family[0], False


def type_of(ds) -> str:
    k = ds.dtype.kind
    return {"i": "int64", "f": "float64", "b": "bool"}.get(k, "string" if k in "OSU" else k)


def check_described(path, table):
    """Every dataset in the file carries its table row's units, description and axes."""
    seen = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            seen.append(name)
            a = obj.attrs
            for key in ("units", "description", "axes"):
                assert key in a, f"{path}: {name} has no `{key}` attribute"
            axes = [x.decode() if isinstance(x, bytes) else str(x) for x in a["axes"]]
            assert len(axes) == obj.ndim and all(axes), (name, axes, obj.shape)
            assert str(a["description"]).strip(), name
            row, exact = row_for(table, name)
            if exact:
                assert str(a["units"]) == ("" if row["unit"] == "-" else row["unit"]), name
                assert " x ".join(axes) == row["axes"], name
                assert str(a["description"]) == row["description"], name
                assert type_of(obj) in row["type"].split(" or "), (name, obj.dtype, row["type"])
        f.visititems(visit)
    assert seen, f"{path} holds no dataset"
    return seen


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("schema")
    out = {}
    ckpt = d / "teacher.ckpt.h5"
    _, out["teacher"] = run_moe(d, 2, task="teacher", steps=6, checkpoint=ckpt, val_tokens=256)
    _, out["lm"] = run_moe(d, 1, task="lm", context=4, embed_dim=4, steps=3, val_tokens=256)
    _, out["regimes"] = run_moe(d, 2, steps=3, gate="noisy-topk", balance="bias", eval_every=2, val_tokens=256)
    proc = run_mpi(1, "merge", "--run", ckpt, "--experts", 3, "--out", d / "merge.h5", env=QUICK_EXIT_ENV)
    assert proc.returncode == 0, proc.stderr
    out["merge"] = d / "merge.h5"
    X, y = blobs(600, 5, 3, seed=2)
    data = d / "blobs.csv"
    write_csv(data, X, y)
    _, out["stack"] = run_stack(d, 2, data, learners="ridge,nb", folds=3)
    _, out["blend"] = run_stack(d, 2, data, command="blend", learners="ridge,nb")
    proc = run_mpi(2, "moe", *cli_args(dict(task="binned", rows=600, bins=3, gbdt_trees=5, seed=7, quiet=True,
                                            out=d / "binned.h5")), env=QUICK_EXIT_ENV)
    assert proc.returncode == 0, proc.stderr
    out["binned"] = d / "binned.h5"
    return out


@pytest.mark.parametrize("kind", ["teacher", "lm", "regimes", "merge", "stack", "blend", "binned"])
def test_every_dataset_is_described_by_its_table(files, table, kind):
    names = check_described(files[kind], table)
    if kind == "teacher":
        assert "routing_recovery/counts" in names and "metrics/traffic" in names
        with h5py.File(files[kind], "r") as f:
            assert list(f["metrics/traffic"].attrs["axes"]) == ["step", "sender", "receiver"]
            assert f["metrics/a2a_seconds"].attrs["units"] == "s"
            assert list(f["routing_recovery/counts"].attrs["axes"]) == ["moe_layer", "expert", "source"]
    if kind == "blend":
        assert "meta/tuning" in names
    if kind == "binned":
        assert "predictions/baseline" in names and "predictions/gate" in names


def test_docs_carry_the_schema_verbatim(schema_text):
    page = (REPO_ROOT / "docs" / "run-file.md").read_text()
    assert schema_text in page, ("docs/run-file.md's dataset tables differ from `moesim info --schema`: "
                                 "paste that output between its markers")


def option_names(path) -> set:
    with h5py.File(path, "r") as f:
        names = {str(x) for x in f.attrs["option_names"]}
        assert names <= set(f.attrs), names - set(f.attrs)
    return names


def test_run_files_store_the_options_in_effect(files):
    lm, teacher, regimes = (option_names(files[k]) for k in ("lm", "teacher", "regimes"))
    for names in (lm, teacher, regimes):
        assert {"experts", "lr", "seed", "data_seed", "task", "steps"} <= names
        assert not {"ranks", "host", "effective_experts", "schema_version"} & names  # provenance, facts
    # Each task's own options, and none of the others'.
    assert {"context", "embed_dim", "data", "val_fraction"} <= lm
    assert not {"clusters", "noise_min", "input_dim", "problem", "classes", "teacher_experts", "teacher_seed"} & lm
    assert {"teacher_experts", "teacher_seed", "input_dim", "problem"} <= teacher
    assert not {"clusters", "context", "embed_dim", "classes"} & teacher
    assert {"clusters", "noise_min", "noise_max", "input_dim"} <= regimes
    assert not {"context", "teacher_experts", "teacher_seed", "classes"} & regimes  # a regression: no --classes
    with h5py.File(files["lm"], "r") as f:
        for key in ("clusters", "teacher_seed", "input_dim"):
            assert key not in f.attrs, key
    for kind in ("merge", "stack", "blend", "binned"):
        names = option_names(files[kind])
        assert "out" in names and "ranks" not in names, kind


def test_sweep_h5_holds_every_option_typed(tmp_path, mpirun):
    cfg = tmp_path / "s.sweep.ini"
    # A Megatron alias, a switch and a float swept; the second point is left pending.
    cfg.write_text("steps = 3\nbatch-tokens = 128\nval-tokens = 256\nquiet = true\n"
                   "num-experts = 2,4\nrouter-pre-softmax = true,false\nzip = num-experts,router-pre-softmax\n")
    out = tmp_path / "out"
    proc = mpirun(2, "sweep", cfg, "--out", out, "--index", 0, timeout=120)
    if proc.returncode != 0:
        fail_with(proc, "sweep failed")
    run_file = next(p for p in out.glob("*.h5") if p.name != "sweep.h5")
    with h5py.File(out / "sweep.h5", "r") as s, h5py.File(run_file, "r") as r:
        assert list(s.attrs["swept_options"]) == ["experts", "router_pre_softmax"]
        assert s.attrs["swept"] == "num-experts,router-pre-softmax"
        status = [x.decode() for x in s["points/status"][()]]
        assert status == ["complete", "pending"]
        opts = s["points/options"]
        names = {str(x) for x in r.attrs["option_names"]}
        assert set(opts) == names  # every option of the point, not only the config's
        for key in names:
            if key == "ranks_per_node":
                # 0 (the default) means "the machine's nodes": the run file holds the value in effect.
                assert opts[key][0] == 0 and r.attrs[key] >= 1
                continue
            col, want = opts[key], r.attrs[key]
            got = col[0]
            if col.dtype.kind == "b":
                assert isinstance(want, (np.integer, int)) and bool(want) == bool(got), key
            elif col.dtype.kind in "OS":
                assert got.decode() == str(want), key
            else:
                assert col.dtype == np.asarray(want).dtype and got == want, key
            assert key in str(col.attrs["description"]).replace("-", "_"), key
            assert list(col.attrs["axes"]) == ["point"]
        assert opts["experts"].dtype == np.int64 and opts["experts"][()].tolist() == [2, 4]
        assert opts["router_pre_softmax"].dtype.kind == "b" and opts["router_pre_softmax"][()].tolist() == [True, False]
        assert opts["quiet"].dtype.kind == "b" and opts["lr"].dtype == np.float64
        assert "clusters" in opts and "context" not in opts  # every regimes option; no lm option
        steps_done = s["points/final/steps_done"]
        assert steps_done.dtype == np.int64 and steps_done[0] == 3
        assert steps_done[1] == steps_done.attrs["missing_value"]
        assert np.isnan(s["points/final/val_loss"][1])
        for name in ("index", "id", "status", "error", "file", "options/lr", "final/val_loss"):
            assert {"units", "description", "axes"} <= set(s["points"][name].attrs), name
    df = load_sweep(out)
    assert str(df["experts"].dtype) == "Int64" and str(df["router_pre_softmax"].dtype) == "boolean"
    assert df["steps_done"].isna().tolist() == [False, True]
    assert df.attrs["sweep"]["swept_options"] == ["experts", "router_pre_softmax"]
