"""``slimjax experiment=dynamic`` over a trace's time order (``routing.path``) instead of the
drift generator: a small trace written here, and the real Qwen1.5-MoE trace in ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from slimjax import app
from slimjax.app import CONF_DIR
from slimjax.traces import Trace


def make(tmp: Path, *overrides: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("config", overrides=[f"paths.output_dir={tmp}", "paths.jax_cache=null", "network.servers=1",
                                                 "output.summary=false", "logger=csv", "experiment=dynamic",
                                                 "dynamic.solver=successive", *overrides])
    finally:
        GlobalHydra.instance().clear()


def shift_trace(path: Path, T: int = 160, L: int = 2, E: int = 8, K: int = 2) -> Trace:
    """Tokens whose popular experts switch halfway (low ids, then high ids), saved as .npz."""
    rng = np.random.default_rng(0)
    pop = np.linspace(1.0, 0.05, E) ** 2
    ids = np.stack([[rng.choice(E, K, replace=False, p=(pop if t < T // 2 else pop[::-1]) / pop.sum())
                     for _ in range(L)] for t in range(T)]).astype(np.int32)
    tr = Trace(ids, E, source="synthetic shift")
    tr.save(path)
    return tr


def test_dynamic_experiment_on_a_trace_path(tmp_path):
    trace = shift_trace(tmp_path / "shift.npz")
    out = tmp_path / "run"
    cfg = make(out, "routing=trace", f"routing.path={tmp_path / 'shift.npz'}", "dynamic.timelines=2",
               "dynamic.windows=4", "dynamic.policies=[static,incremental,token-lru,belady]",
               "dynamic.budget_shares=[0.25]")
    res = app.run(cfg)
    rows = pd.read_parquet(out / "results.parquet")
    assert not res["skipped"] and (rows.source == "shift.npz").all()
    assert len(rows) == 4 * 2 * 4  # policies x timelines x windows (160 tokens / 4 windows)
    L, K = trace.expert_ids.shape[1:]
    # every window replays its 40 tokens of the trace (the drift generator would give tokens x users)
    assert (rows.accesses == 40 * L * K).all()
    st = rows[rows.policy == "static"]
    np.testing.assert_allclose(st.token_objective, st.objective, rtol=1e-5)  # patterns are the window's tokens
    bel, lru = rows[rows.policy == "belady"], rows[rows.policy == "token-lru"]
    ev = bel.evaluated.to_numpy()
    assert bel.hits.to_numpy()[ev].sum() >= lru.hits.to_numpy()[ev].sum()
    assert app.run(cfg)["skipped"]  # resume: the trace's content is part of the config hash
    with pytest.raises(ValueError, match="routing.path"):
        app.run(make(tmp_path / "bad", "routing=trace", f"routing.path={tmp_path / 'nope.npz'}"))
    with pytest.raises(ValueError, match="window_tokens"):
        app.run(make(tmp_path / "bad2", "routing=trace", f"routing.path={tmp_path / 'shift.npz'}",
                     "dynamic.window_tokens=0"))


@pytest.mark.slow
def test_dynamic_experiment_on_the_real_qwen_trace(shared_dir, tmp_path):
    path = os.path.join(shared_dir, "traces", "raw", "weiran0129__vLLM-MoE-Logger")
    if not os.path.isdir(path):
        pytest.skip(f"{path} is absent")
    out = tmp_path / "qwen"
    cfg = make(out, "routing=trace", f"routing.path={path}", "model=qwen1_5_moe_a2_7b", "dynamic.timelines=1",
               "dynamic.windows=4", "dynamic.window_tokens=512", "dynamic.policies=[static,incremental,token-lfu,belady]",
               "dynamic.budget_shares=[0.1]")
    app.run(cfg)
    rows = pd.read_parquet(out / "results.parquet")
    tot = pd.read_parquet(out / "totals.parquet")
    from slimjax.traces import load

    trace = load(path)
    L, K = trace.expert_ids.shape[1:]
    n_windows = trace.num_tokens // 512  # align=token, the last partial window dropped
    assert len(rows) == 4 * n_windows and (rows.accesses == 512 * L * K).all()
    inc, st = tot[tot.policy == "incremental"], tot[tot.policy == "static"]
    assert inc.total.iloc[0] <= st.total.iloc[0] * (1 + 1e-6)
    bel, lfu = tot[tot.policy == "belady"], tot[tot.policy == "token-lfu"]
    assert bel.hit_rate.iloc[0] >= lfu.hit_rate.iloc[0]
