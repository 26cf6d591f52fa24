"""``slimjax experiment=caching`` (placement or caching?) in quick mode on a tiny model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from slimjax import app
from slimjax.app import CONF_DIR
from slimjax.app._caching import region, with_costs

TINY = [
    "experiment=caching",
    "caching.quick=true",
    "model.experts=8",
    "model.top_k=2",
    "caching.layers=2",
    "caching.locality=[0.0,0.99]",
    "caching.storage=[0.3]",
    "caching.migration=[0.0,10.0]",
    "caching.budgets=[0.25]",
    "caching.caches=[token-lru,belady]",  # (token-lfu: one more compiled program; tests/test_dynamic.py)
    "caching.real=[]",
    "caching.solver=successive",
    "output.summary=false",
    "paths.jax_cache=null",
]


def make(tmp, *overrides):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("config", overrides=[*TINY, f"paths.output_dir={tmp}", *overrides])
    finally:
        GlobalHydra.instance().clear()


def test_caching_experiment_quick(tmp_path):
    out = tmp_path / "run"
    res = app.run(make(out))
    assert res["skipped"] is False
    for f in ("results.parquet", "region.csv", "summary.csv", "caching_region.png", "config.yaml", ".complete.json"):
        assert (out / f).is_file(), f
    df = pd.read_parquet(out / "results.parquet")
    # 2 localities x 1 storage x 1 network x 4 policies x 2 migration costs
    assert len(df) == 2 * 4 * 2
    assert set(df.policy) == {"static", "incremental@0.25", "token-lru", "belady"}
    np.testing.assert_allclose(df.cost, df.J + df.migration * df.gb_per_token, rtol=1e-12)
    assert (df[df.policy == "static"].gb_per_token == 0).all()
    assert (df[(df.policy == "token-lru") & (df.locality == 0.99)].gb_per_token > 0).all()
    hit = df[df.migration == 0].set_index(["locality", "policy"]).hit_rate
    for rho in (0.0, 0.99):
        # Belady's MIN with bypass maximises hits (one expert size here): never below LRU
        assert hit[(rho, "belady")] >= hit[(rho, "token-lru")]
    assert hit[(0.99, "token-lru")] > hit[(0.0, "token-lru")]  # locality is what a cache feeds on
    reg = pd.read_csv(out / "region.csv")
    assert len(reg) == 2 * 2 and set(reg.best_cache) == {"token-lru"}
    np.testing.assert_allclose(reg.ratio, reg.cache_cost / reg.plan_cost, rtol=1e-12)
    # free migration and near-repeating tokens: the cache wins; migration costs move the line
    r = reg.set_index(["locality", "migration"]).ratio
    assert r[(0.99, 0.0)] < 1.0 and r[(0.99, 0.0)] < r[(0.0, 0.0)] and r[(0.0, 10.0)] >= r[(0.0, 0.0)]
    again = app.run(make(out))
    assert again["skipped"] is True and set(again["summary"]) == set(res["summary"])


def test_region_picks_the_best_of_each_family():
    m = pd.DataFrame({
        "source": "synthetic", "locality": 0.5, "storage": 0.1, "rep": [0, 0, 0, 0, 1, 1, 1, 1],
        "policy": ["static", "incremental@0.1", "token-lru", "belady"] * 2,
        "family": ["plan", "plan", "cache", "oracle"] * 2,
        "J": [4.0, 3.0, 2.0, 1.0, 6.0, 5.0, 2.0, 1.0], "p99": [9.0, 8.0, 7.0, 6.0] * 2,
        "hit_rate": [0.1, 0.2, 0.5, 0.6] * 2, "gb_per_token": [0.0, 0.1, 1.0, 0.5] * 2,
    })
    reg = region(with_costs(m, [0.0, 10.0])).set_index("migration")
    # means over the two networks: static 5, incremental 4 (+1 at 10 s/GB), lru 2 (+10), belady 1 (+5)
    assert reg.loc[0.0, "best_plan"] == "incremental@0.1" and reg.loc[0.0, "ratio"] == pytest.approx(2 / 4)
    assert reg.loc[10.0, "best_plan"] in ("static", "incremental@0.1") and reg.loc[10.0, "plan_cost"] == 5.0
    assert reg.loc[10.0, "ratio"] == pytest.approx(12 / 5) and reg.loc[10.0, "belady_ratio"] == pytest.approx(6 / 5)
    assert reg.loc[0.0, "p99_ratio"] == pytest.approx(7 / 8)


@pytest.mark.parametrize(
    "override, field",
    [
        ("caching.locality=[1.5]", r"caching\.locality: every entry must be a number in \[0, 1\]"),
        ("caching.storage=[0]", r"caching\.storage: every entry must be a number in \(0, 1\]"),
        ("caching.caches=[nope]", r"caching\.caches: must be a list of"),
        ("caching.tokens=300", r"caching\.tokens: must hold at least 2 windows"),
        ("caching.preset=nope", r"caching\.preset: must be null or one of"),
    ],
)
def test_caching_experiment_refuses_bad_options(tmp_path, override, field):
    cfg = make(tmp_path / "bad", "caching.quick=false", "caching.window_tokens=256", override)
    with pytest.raises(ValueError, match=field):
        app.run(cfg)
    assert not (tmp_path / "bad").exists()  # a failed run leaves no directory it made


def test_caching_experiment_refuses_distributed(tmp_path):
    with pytest.raises(ValueError, match=r"distributed: experiment=caching runs its whole study in one process"):
        app.run(make(tmp_path / "d", "distributed=true"))
    assert not (tmp_path / "d").exists()
