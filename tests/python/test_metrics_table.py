"""The per-step metrics table (`moesim info --metrics`) describes the run files exactly:
every dataset under metrics/ is in it with the stated shape and type, a dataset is written
exactly when its "written" column says, and docs/run-file.md carries the table verbatim."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from moesim_testing import REPO_ROOT

P = 2
STEPS = 6
# One run per condition of the "written" column.
VARIANTS = {
    "default": dict(),
    "noisy_topk": dict(gate="noisy-topk"),
    "balance_bias": dict(balance="bias"),
    "dense_per_expert": dict(gate="dense", mixture_loss="per-expert"),
    "eval_every": dict(eval_every=4),
    "fine_grained_sparse_layers": dict(granularity=2, layers=3, moe_every=2),
    "hierarchical_virtual_nodes": dict(dispatch="hierarchical", ranks_per_node=1),
}


@pytest.fixture(scope="module")
def table_text(mpirun):
    return mpirun(1, "info", "--metrics", check=True).stdout


@pytest.fixture(scope="module")
def table(table_text):
    """name -> dict(shape, type, unit, written, description)."""
    lines = table_text.strip().splitlines()
    assert lines[0].startswith("| dataset | shape per row | axes | type | unit | written | description |")
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 7, line
        name = cells[0].strip("`")
        assert name.startswith("metrics/"), line
        name = name[len("metrics/"):]
        assert name not in rows, f"{name} listed twice"
        rows[name] = dict(zip(("shape", "axes", "type", "unit", "written", "description"), cells[1:]))
    return rows


def run_variant(tmp_path_factory, run_moe, opts):
    _, path = run_moe(tmp_path_factory.mktemp("metrics_table"), P, steps=STEPS, **opts)
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        datasets = {name: (f["metrics"][name].shape, f["metrics"][name].dtype) for name in f["metrics"]}
        described = {name: {k: f["metrics"][name].attrs[k] for k in ("units", "description", "axes")
                            if k in f["metrics"][name].attrs} for name in f["metrics"]}
    return attrs, datasets, described


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def variant(request, tmp_path_factory, run_moe):
    opts = VARIANTS[request.param]
    return opts, *run_variant(tmp_path_factory, run_moe, opts)


def sizes(attrs):
    layers, every = int(attrs["layers"]), int(attrs["moe_every"])
    l_moe = sum(1 for l in range(layers) if every > 0 and (l + 1) % every == 0)
    return {"E": int(attrs["effective_experts"]), "P": int(attrs["ranks"]), "L_moe": l_moe}


def written(condition, opts, l_moe):
    return {
        "always": True,
        "with MoE layers": l_moe > 0,
        "`--gate noisy-topk`": l_moe > 0 and opts.get("gate") == "noisy-topk",
        "`--balance bias`": l_moe > 0 and opts.get("balance") == "bias",
        "`--mixture-loss`": opts.get("mixture_loss", "none") != "none",
        "`--dispatch hierarchical`": l_moe > 0 and opts.get("dispatch") == "hierarchical",
    }.get(condition, opts.get("eval_every", 0) > 0 if condition.startswith("`--eval-every`") else None)


def test_every_dataset_is_in_the_table_with_its_shape(variant, table):
    opts, attrs, datasets, _ = variant
    size = sizes(attrs)
    for name, (shape, dtype) in datasets.items():
        assert name in table, f"metrics/{name} is not in `moesim info --metrics`"
        row = table[name]
        inner = () if row["shape"] == "scalar" else tuple(
            size[part] if part in size else int(part) for part in row["shape"].split(" x "))
        assert shape[1:] == inner, f"metrics/{name}: shape {shape}, table says (rows, {row['shape']})"
        assert dtype == np.dtype(row["type"]), f"metrics/{name}: {dtype}, table says {row['type']}"
        evals = opts.get("eval_every", 0)
        rows = len(range(evals, STEPS, evals)) + 1 if row["written"].startswith("`--eval-every`") else STEPS
        assert shape[0] == rows, f"metrics/{name}: {shape[0]} rows, expected {rows}"


def test_datasets_written_exactly_when_the_table_says(variant, table):
    opts, attrs, datasets, _ = variant
    l_moe = sizes(attrs)["L_moe"]
    expected = set()
    for name, row in table.items():
        w = written(row["written"], opts, l_moe)
        assert w is not None, f"unknown condition {row['written']!r} of metrics/{name}"
        if w:
            expected.add(name)
    assert set(datasets) == expected
    assert {n for n, r in table.items() if r["written"] == "always"} <= set(datasets)


def test_every_dataset_carries_its_rows_units_description_and_axes(variant, table):
    _, _, datasets, described = variant
    for name, (shape, _) in datasets.items():
        row, a = table[name], described[name]
        assert a.get("units") == row["unit"], name
        assert a.get("description") == row["description"], name
        axes = [str(x) for x in a.get("axes", [])]
        assert " x ".join(axes) == row["axes"] and axes[0] == "step" and len(axes) == len(shape), name


def test_table_rows_are_complete(table):
    for name, row in table.items():
        assert row["unit"] and row["description"] and row["written"], name
        assert row["type"] in ("int64", "float64"), name


def test_docs_carry_the_table_verbatim(table_text):
    page = (REPO_ROOT / "docs" / "run-file.md").read_text()
    assert table_text in page, ("docs/run-file.md's per-step metrics table differs from "
                                "`moesim info --metrics`: paste that output into docs/run-file.md")
