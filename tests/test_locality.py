"""The locality generator (slimjax.generate.locality_tokens / locality_trace) and reuse_rates."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

import slimjax
from slimjax import generate
from slimjax.generate import (
    LOCALITY_PRESETS,
    LocalityConfig,
    RoutingConfig,
    as_locality_config,
    locality_tokens,
    locality_trace,
    reuse_rates,
    sample_routing,
)

KEY = jax.random.key(7)
SHAPE = {"layers": 3, "experts": 16, "top_k": 4}

# Reuse rates of the shared real traces at windows 1, 4, 16, 64 (mean over logged layers), measured
# with reuse_rates (docs/caching.md); the presets are calibrated to them.
REAL = {
    "qwen1_5_moe_a2_7b": ("weiran0129__vLLM-MoE-Logger", 3, 4357, (0.1148, 0.3002, 0.7043, 0.9745)),
    "olmoe_1b_7b": ("KaxitPandya__cerebras-assesment2", 1, 4471, (0.2429, 0.5256, 0.8750, 0.9934)),
}


def naive_reuse(ids: np.ndarray, w: int) -> np.ndarray:
    """The definition, token by token: share of token t's experts among tokens t-w..t-1's."""
    T, L, _ = ids.shape
    out = np.zeros(L)
    for l in range(L):
        hits = []
        for t in range(w, T):
            seen = set(ids[t - w : t, l].ravel().tolist())
            hits.append(np.mean([e in seen for e in ids[t, l]]))
        out[l] = np.mean(hits)
    return out


def test_reuse_rates_against_the_definition():
    ids = np.random.default_rng(0).integers(0, 6, size=(40, 2, 3))
    got = reuse_rates(ids, (1, 3, 7), num_experts=6)
    for i, w in enumerate((1, 3, 7)):
        np.testing.assert_allclose(got[i], naive_reuse(ids, w), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"windows: .*\[1, T=40\)"):
        reuse_rates(ids, (0,))


def test_tokens_are_valid_and_flow_into_traces():
    tr = locality_trace(KEY, {"tokens": 256, "locality": 0.5, "window": 3, "drift": 0.2}, **SHAPE)
    assert isinstance(tr, slimjax.traces.Trace) and tr.shape == (256, 3, 4) and tr.num_experts == 16
    ids = tr.expert_ids
    assert ids.min() >= 0 and ids.max() < 16
    assert all(len(set(row)) == 4 for row in ids.reshape(-1, 4).tolist())  # distinct experts per token
    assert tr.task is not None and tr.task.shape == (256,) and tr.task.max() < 64
    pats, w = slimjax.traces.patterns(tr)
    assert pats.shape[0] == 3 and np.allclose(w.sum(-1), 1.0)


def test_locality_zero_and_drift_one_is_the_latent_generator():
    """ρ = 0, δ = 1 draws the latent pool with the same key: the same tokens as sample_routing."""
    cfg = LocalityConfig(tokens=256, locality=0.0, drift=1.0)
    ids, _ = locality_tokens(KEY, cfg, **SHAPE)
    pats, _ = jax.jit(sample_routing, static_argnums=(1, 2, 3, 4))(KEY, RoutingConfig(tokens=256), 3, 16, 4)
    ref = np.asarray(pats[0]).transpose(1, 0, 2)
    # two compiled programs compute the router logits (same float32 operations, possibly fused
    # differently): a near-tie of two logits may rank differently, so allow a few tokens to differ.
    assert (np.asarray(ids) == ref).all(-1).mean() >= 0.99


@pytest.mark.parametrize("window", [1, 3])
def test_reuse_increases_with_locality(window):
    """The reuse the knob controls (at the generator's own window) rises with ρ, to 1 at ρ = 1.

    (At windows much longer than ``window`` it need not: copying concentrates the recent past,
    so the union of many tokens covers fewer experts; docs/caching.md.)"""
    rates = []
    for rho in (0.0, 0.25, 0.5, 0.75, 1.0):
        tr = locality_trace(KEY, {"tokens": 256, "locality": rho, "window": window, "drift": 0.5}, **SHAPE)
        rates.append(reuse_rates(tr, (window,))[0])
    rates = np.stack(rates)  # [rho, L]
    assert (np.diff(rates, axis=0) > 0.01).all(), rates
    assert np.all(rates[-1] == 1.0)  # ρ = 1: every set is one of the last `window`


@pytest.mark.parametrize("window", [1, 3])
def test_full_locality_without_drift_reuses_exactly(window):
    tr = locality_trace(KEY, {"tokens": 256, "locality": 1.0, "window": window, "drift": 0.0}, **SHAPE)
    assert np.all(reuse_rates(tr, (window,)) == 1.0)
    if window == 1:  # the first token's sets forever
        assert (tr.expert_ids == tr.expert_ids[:1]).all()
    assert (tr.task == tr.task[0]).all()  # δ = 0: one task


def test_drift_zero_keeps_one_task_and_raises_reuse():
    lo = locality_trace(KEY, {"tokens": 256, "drift": 1.0}, **SHAPE)
    hi = locality_trace(KEY, {"tokens": 256, "drift": 0.0}, **SHAPE)
    assert len(np.unique(hi.task)) == 1 and len(np.unique(lo.task)) > 10
    assert (reuse_rates(hi, (1,)) > reuse_rates(lo, (1,))).all()


def test_deterministic_for_a_seed():
    cfg = {"tokens": 256, "locality": 0.4, "window": 3, "drift": 0.3}
    a, b = locality_trace(KEY, cfg, **SHAPE), locality_trace(KEY, cfg, **SHAPE)
    c = locality_trace(jax.random.key(8), cfg, **SHAPE)
    assert np.array_equal(a.expert_ids, b.expert_ids) and np.array_equal(a.task, b.task)
    assert np.array_equal(reuse_rates(a), reuse_rates(b))
    assert not np.array_equal(a.expert_ids, c.expert_ids)


def test_a_sweep_over_the_knobs_compiles_once():
    core = generate._locality._core
    locality_tokens(KEY, {"tokens": 256, "locality": 0.1}, **SHAPE)
    n = core._cache_size()
    for rho, delta in ((0.3, 0.1), (0.9, 1.0), (0.0, 0.0)):
        locality_tokens(KEY, {"tokens": 256, "locality": rho, "drift": delta, "skew": 0.4}, **SHAPE)
    assert core._cache_size() == n


@pytest.mark.parametrize(
    "cfg, field",
    [
        ({"locality": 1.5}, "locality.locality"),
        ({"locality": float("nan")}, "locality.locality"),
        ({"drift": -0.1}, "locality.drift"),
        ({"window": 0}, "locality.window"),
        ({"tokens": True}, "locality.tokens"),
        ({"skew": float("inf")}, "locality.skew"),
        ({"nope": 1}, r"locality: unknown field"),
        ("no-such-preset", "locality: unknown preset"),
    ],
)
def test_bad_config_names_the_field(cfg, field):
    with pytest.raises(ValueError, match=field):
        as_locality_config(cfg)


def test_bad_shape_names_the_field():
    with pytest.raises(ValueError, match="top_k: must be <= experts"):
        locality_tokens(KEY, None, layers=1, experts=4, top_k=5)
    with pytest.raises(ValueError, match="layers: give it or a model preset"):
        locality_tokens(KEY, None, experts=4, top_k=2)


def test_presets_reproduce_the_real_traces_reuse():
    """At locality 0 the calibrated presets give the real traces' reuse rates (within 0.02)."""
    for name, (_, L, T, real) in REAL.items():
        cfg = as_locality_config({"preset": name, "tokens": T})
        assert cfg.locality == 0.0 and cfg.drift == LOCALITY_PRESETS[name]["drift"]
        got = np.mean(
            [
                reuse_rates(locality_trace(jax.random.key(s), cfg, model=name, layers=L), (1, 4, 16, 64)).mean(1)
                for s in range(2)
            ],
            axis=0,
        )
        np.testing.assert_allclose(got, real, atol=0.02, err_msg=name)
        more = reuse_rates(locality_trace(KEY, cfg.replace(locality=0.5), model=name, layers=L), (1, 4, 16, 64)).mean(1)
        assert more[0] > got[0] + 0.2  # previous-token reuse (the default window 1)


def test_real_traces_reuse_rates(shared_dir):
    """The committed real rates are what reuse_rates measures on ../shared (and above shuffled tokens)."""
    for folder, L, T, real in REAL.values():
        tr = slimjax.traces.load(os.path.join(shared_dir, "traces", "raw", folder))
        assert tr.shape[:2] == (T, L)
        got = reuse_rates(tr, (1, 4, 16, 64)).mean(1)
        np.testing.assert_allclose(got, real, atol=1e-4)
        shuffled = tr.select(np.random.default_rng(0).permutation(T))
        assert reuse_rates(shuffled, (1,)).mean() < got[0]
