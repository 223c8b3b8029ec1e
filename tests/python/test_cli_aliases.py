"""Megatron-LM's option names (docs/options.md#megatron-lm-names): each gives the run its moesim
option gives (the same recorded options, bit-identical metrics), only moesim's names are
recorded, on the command line, in a --config file and in a sweep; an alias that disagrees with
its option, or a value with no moesim counterpart, is one error line and exit 2 on every rank."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from moesim_testing import QUICK_EXIT_ENV, attr_value, check_rejected, root_attrs

P = 2
TIMEOUT = 30
BASE = dict(experts=4, top_k=2, d_model=16, d_ff=32, layers=2, steps=3, batch_tokens=256, val_tokens=256)

ALIASES = ["num-experts", "moe-router-topk", "moe-aux-loss-coeff", "moe-z-loss-coeff", "moe-layer-freq",
           "moe-token-dispatcher-type", "moe-router-load-balancing-type", "expert-model-parallel-size",
           "moe-expert-capacity-factor", "moe-token-drop-policy", "moe-input-jitter-eps", "moe-router-score-function"]
# Root attributes that differ between two runs of the same options.
PER_RUN = {"start_time", "end_time", "out"}

# (id, options with a Megatron-LM name, the same run in moesim's names); None drops a BASE option.
SAME_RUN = [
    ("num-experts", dict(experts=None, num_experts=8), dict(experts=8)),
    ("moe-router-topk", dict(top_k=None, moe_router_topk=1), dict(top_k=1)),
    ("moe-aux-loss-coeff", dict(moe_aux_loss_coeff=0.05), dict(aux_loss_weight=0.05)),
    ("moe-z-loss-coeff", dict(moe_z_loss_coeff=1e-3), dict(z_loss=1e-3)),
    ("moe-layer-freq-1", dict(layers=3, moe_layer_freq=1), dict(layers=3, moe_every=1)),
    ("moe-layer-freq-list", dict(layers=4, moe_layer_freq="[0,1,0,1]"), dict(layers=4, moe_every=2)),
    ("moe-layer-freq-expression", dict(layers=6, moe_layer_freq="([0]*2+[1])*2"), dict(layers=6, moe_every=3)),
    ("moe-layer-freq-dense", dict(layers=2, moe_layer_freq="[0]*2"), dict(layers=2, moe_every=0)),
    ("dispatcher-alltoall", dict(moe_token_dispatcher_type="alltoall"), dict(dispatch="alltoallv")),
    ("dispatcher-allgather", dict(moe_token_dispatcher_type="allgather"), dict(dispatch="allgather")),
    ("balancing-aux_loss", dict(moe_router_load_balancing_type="aux_loss"), dict(balance="aux")),
    ("balancing-global_aux_loss", dict(moe_router_load_balancing_type="global_aux_loss"), dict(balance="aux")),
    ("balancing-none", dict(moe_router_load_balancing_type="none"), dict(balance="none")),
    ("balancing-sinkhorn", dict(moe_router_load_balancing_type="sinkhorn"), dict(gate="sbase", balance="none")),
    ("expert-model-parallel-size", dict(expert_model_parallel_size=2), dict(ep_size=2)),
    ("an alias and its option agreeing", dict(experts=8, num_experts="08"), dict(experts=8)),
    ("moe-expert-capacity-factor", dict(moe_expert_capacity_factor=0.5), dict(capacity_factor=0.5)),
    ("moe-token-drop-policy-probs", dict(capacity_factor=0.5, moe_token_drop_policy="probs"),
     dict(capacity_factor=0.5, drop_policy="probs")),
    ("moe-token-drop-policy-position", dict(top_k=1, capacity_factor=0.5, moe_token_drop_policy="position"),
     dict(top_k=1, capacity_factor=0.5, drop_policy="position")),
    ("moe-input-jitter-eps", dict(moe_input_jitter_eps=0.1), dict(router_jitter=0.1)),
    ("moe-router-score-function", dict(moe_router_score_function="sigmoid"), dict(score_function="sigmoid")),
]


def read_run(path, ignore=()):
    """(root attributes less PER_RUN and `ignore`, metrics less timings, final losses) of a run file."""
    with h5py.File(path, "r") as f:
        attrs = {k: attr_value(v) for k, v in f.attrs.items() if k not in PER_RUN and k not in ignore}
        # The option names, less the ignored ones (a --config run names `config` as well).
        attrs["option_names"] = [str(n) for n in f.attrs["option_names"] if str(n) not in ignore]
        metrics = {k: f["metrics"][k][()] for k in f["metrics"] if "seconds" not in k and k != "tokens_per_s"}
        final = {k: attr_value(f["final"].attrs[k]) for k in ("train_loss", "val_loss")}
    return attrs, metrics, final


def assert_same_run(alias_path, moesim_path, ignore=()):
    a_attrs, a_metrics, a_final = read_run(alias_path, ignore)
    m_attrs, m_metrics, m_final = read_run(moesim_path)
    assert a_attrs["complete"] == 1
    for name in ALIASES:
        assert name.replace("-", "_") not in a_attrs, f"the run file records the alias {name}"
    assert a_attrs.keys() == m_attrs.keys()
    for k in a_attrs:
        assert np.array_equal(a_attrs[k], m_attrs[k]), (k, a_attrs[k], m_attrs[k])
    assert a_metrics.keys() == m_metrics.keys()
    for k in a_metrics:
        np.testing.assert_array_equal(a_metrics[k], m_metrics[k], err_msg=k)
    assert a_final == m_final


@pytest.mark.parametrize("alias,own", [c[1:] for c in SAME_RUN], ids=[c[0] for c in SAME_RUN])
def test_alias_gives_the_run_of_its_moesim_option(tmp_path, run_moe, alias, own):
    _, a = run_moe(tmp_path, P, **{**BASE, **alias}, out=tmp_path / "alias.h5")
    _, m = run_moe(tmp_path, P, **{**BASE, **own}, out=tmp_path / "moesim.h5")
    assert_same_run(a, m)


def test_aliases_in_a_config_file(tmp_path, run_moe):
    cfg = tmp_path / "megatron.ini"
    cfg.write_text("num-experts = 8\nmoe-router-topk = 1\nmoe-token-dispatcher-type = allgather\n"
                   "moe-layer-freq = [0,1]*2\nmoe-aux-loss-coeff = 0.02\nlayers = 4\n")
    _, a = run_moe(tmp_path, P, **{**BASE, "experts": None, "top_k": None, "layers": None}, config=cfg,
                   out=tmp_path / "alias.h5")
    _, m = run_moe(tmp_path, P, **{**BASE, "experts": 8, "top_k": 1, "dispatch": "allgather", "moe_every": 2,
                                   "aux_loss_weight": 0.02, "layers": 4}, out=tmp_path / "moesim.h5")
    assert root_attrs(a)["config"] == str(cfg)
    assert_same_run(a, m, ignore={"config"})


def test_the_command_line_wins_over_a_config_file_in_either_name(tmp_path, run_moe):
    for file_text, given, want in [("experts = 2\n", dict(num_experts=8), 8), ("num-experts = 2\n", dict(experts=8), 8),
                                   ("num-experts = 8\n", dict(), 8)]:
        cfg = tmp_path / "c.ini"
        cfg.write_text(file_text)
        _, path = run_moe(tmp_path, P, **{**BASE, "experts": None, **given}, config=cfg)
        attrs = root_attrs(path)
        assert attrs["experts"] == want and "num_experts" not in attrs, (file_text, given)


def test_checkpoint_stores_moesim_names(tmp_path, run_moe):
    """A checkpoint's options (what merge and resume rebuild the run from) hold moesim's names."""
    ckpt = tmp_path / "c.h5"
    _, path = run_moe(tmp_path, P, **{**BASE, "experts": None}, num_experts=4, moe_token_dispatcher_type="allgather",
                      checkpoint=ckpt)
    with h5py.File(ckpt, "r") as f:
        options = attr_value(f.attrs["options"])
    lines = options.splitlines()
    assert "experts = 4" in lines and "dispatch = allgather" in lines, options
    assert not any(line.split(" = ")[0] in ALIASES for line in lines), options
    # Resuming with the alias is the same run.
    proc, _ = run_moe(tmp_path, P, **{**BASE, "experts": None, "steps": 4}, num_experts=4,
                      moe_token_dispatcher_type="allgather", checkpoint=ckpt, resume=True, out=tmp_path / "r.h5")
    assert root_attrs(tmp_path / "r.h5")["resumed_at_step"] == 3


def test_aliases_in_a_sweep(tmp_path, mpirun):
    cfg = tmp_path / "grid.ini"
    cfg.write_text("command = moe\nnum-experts = 2,4\nmoe-router-topk = 1\nmoe-token-dispatcher-type = allgather\n"
                   "d-model = 16\nd-ff = 32\nsteps = 2\nbatch-tokens = 256\nval-tokens = 256\nquiet = true\n")
    out = tmp_path / "sweep"
    mpirun(P, "sweep", cfg, "--out", out, check=True, timeout=120)
    runs = sorted(p for p in out.glob("*.h5") if p.name != "sweep.h5")
    assert len(runs) == 2
    attrs = [root_attrs(p) for p in runs]
    assert sorted(a["experts"] for a in attrs) == [2, 4]
    for a in attrs:
        assert a["complete"] == 1 and a["top_k"] == 1 and a["dispatch"] == "allgather"
        assert not {"num_experts", "moe_router_topk", "moe_token_dispatcher_type"} & a.keys()


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# (id, options, words the one error line must hold)
REFUSED = [
    ("alias and option disagree", dict(experts=4, num_experts=8),
     ["--experts 4 and --num-experts 8 (Megatron-LM's name for --experts 8) disagree: give one"]),
    ("sinkhorn and another gate", dict(moe_router_load_balancing_type="sinkhorn", gate="topk"),
     ["sinkhorn (Megatron-LM's name for --gate sbase --balance none)", "--gate topk", "disagree"]),
    ("ep-size disagrees", dict(ep_size=1, expert_model_parallel_size=2), ["--ep-size 1", "--expert-model-parallel-size 2", "disagree"]),
    ("alias value not a number", dict(num_experts="four"), ["'four'", "'--num-experts'", "invalid"]),
    ("dispatcher flex", dict(moe_token_dispatcher_type="flex"),
     ["--moe-token-dispatcher-type flex", "no moesim counterpart", "--dispatch alltoallv", "--dispatch allgather"]),
    ("dispatcher unknown", dict(moe_token_dispatcher_type="alltoall_seq"), ["alltoall_seq", "not known"]),
    ("balancing seq_aux_loss", dict(moe_router_load_balancing_type="seq_aux_loss"),
     ["seq_aux_loss", "no moesim counterpart", "--balance aux", "--gate sbase", "--balance none", "--balance bias"]),
    ("balancing unknown", dict(moe_router_load_balancing_type="switch"), ["switch", "not known"]),
    ("sinkhorn with top-k 1", dict(moe_router_load_balancing_type="sinkhorn", top_k=1), ["sinkhorn", "top-k 1", "sigmoid"]),
    ("aux_loss with a gate without it", dict(moe_router_load_balancing_type="aux_loss", gate="hash"),
     ["aux_loss", "Switch loss", "--gate hash"]),
    ("layer-freq N > 1", dict(moe_layer_freq=2), ["--moe-layer-freq 2", "blocks 1, 3, 5", "--moe-every"]),
    ("layer-freq zero", dict(moe_layer_freq=0), ["--moe-layer-freq must be 1 or a list"]),
    ("layer-freq other pattern", dict(moe_layer_freq="[1,0]"), ["'[1,0]'", "blocks 1 (of 2)", "not this pattern"]),
    ("layer-freq length", dict(moe_layer_freq="[0,1,0,1]"), ["lists 4 blocks", "--layers is 2"]),
    ("layer-freq not 0 or 1", dict(moe_layer_freq="[0,2]"), ["'[0,2]'", "neither"]),
    ("layer-freq too long", dict(moe_layer_freq="[1]*99999999"), ["--moe-layer-freq", "1048576"]),
    ("config file disagrees", dict(config="@experts = 4\nnum-experts = 8\n"), ["config file", "disagree"]),
    ("config file value", dict(config="@moe-token-dispatcher-type = flex\n"), ["config file", "flex"]),
    ("drop-policy position with top-k 2", dict(moe_token_drop_policy="position"),
     ["--moe-token-drop-policy position", "sequence order", "--drop-policy position"]),
    ("drop-policy unknown", dict(moe_token_drop_policy="random"), ["--moe-token-drop-policy random", "not known"]),
    ("drop-policy disagrees", dict(drop_policy="position", moe_token_drop_policy="probs"), ["disagree"]),
    ("score function with another gate", dict(gate="sbase", moe_router_score_function="sigmoid"),
     ["--score-function sigmoid", "topk only"]),
]


@pytest.mark.parametrize("opts,mention", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(tmp_path, run_moe, opts, mention):
    opts = dict(opts)
    if str(opts.get("config", "")).startswith("@"):
        opts["config"] = write(tmp_path, "bad.ini", opts["config"][1:])
    out = tmp_path / "refused.h5"
    proc, _ = run_moe(tmp_path, P, check=False, timeout=TIMEOUT, env=QUICK_EXIT_ENV, **{**BASE, **opts}, out=out)
    check_rejected(proc, mention, "moe")
    assert not out.exists()


def test_help_lists_the_aliases(mpirun):
    text = mpirun(1, "moe", "--help", check=True).stdout
    section = text[text.index("Megatron-LM names"):]
    for name in ALIASES:
        assert f"--{name} arg" in section, name
    # An alias has no default of its own: a run records only what it maps to.
    assert "--num-experts arg (=" not in section
