"""The layering of src/ that src/CMakeLists.txt states (MOESIM_LAYERS) holds for every file,
headers included: a folder includes only itself and the folders its line names."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"


def layers() -> dict[str, set[str]]:
    text = (SRC / "CMakeLists.txt").read_text()
    block = re.search(r"set\(MOESIM_LAYERS(.*?)\)", text, re.S).group(1)
    out = {}
    for folder, below in re.findall(r'"(\w+):([\w ]*)"', block):
        out[folder] = {folder, *below.split()}
    return out


def includes(path: Path) -> list[str]:
    return re.findall(r'^\s*#\s*include\s+"([^"]+)"', path.read_text(), re.M)


def test_every_folder_of_src_has_a_layer():
    table = layers()
    folders = {p.name for p in SRC.iterdir() if p.is_dir()}
    assert folders == set(table), f"folders without a layer: {folders - set(table)}; layers without a folder: {set(table) - folders}"


def test_the_layers_only_look_down():
    table = layers()
    order = list(table)
    for i, folder in enumerate(order):
        assert table[folder] <= set(order[: i + 1]), f"{folder} may include a folder above it"


def test_no_include_runs_up():
    table = layers()
    wrong = []
    for path in sorted(SRC.rglob("*")):
        if path.suffix not in {".hpp", ".cpp", ".h", ".cu", ".cuh", ".in"}:
            continue
        folder = path.relative_to(SRC).parts[0]
        for inc in includes(path):
            top = inc.split("/")[0]
            if top in table and top not in table[folder]:
                wrong.append(f"{path.relative_to(REPO)} includes {inc}")
    assert not wrong, "includes that run up the layering:\n" + "\n".join(wrong)


def test_the_check_can_fail(tmp_path):
    """The include scanner sees an upward include where one is written."""
    f = tmp_path / "x.hpp"
    f.write_text('#pragma once\n#include "train/trainer.hpp"\n')
    assert includes(f) == ["train/trainer.hpp"] and "train" not in layers()["data"]
