"""Trace replay: per-token latency and its agreement with J."""

import numpy as np
import pytest

import slimjax
from tests.helpers import random_instance, random_placement


def instance_from_tokens(inst, ids, user_count=1):
    """The instance whose patterns are exactly the tokens (weight 1/T each)."""
    T, L, K = ids.shape
    v = {f: np.array(getattr(inst, f)) for f in slimjax._instance.FIELDS}
    v["patterns"] = np.transpose(ids, (1, 0, 2))[None].astype(np.int32)  # [1, L, T, K]
    v["weight"] = np.full((1, L, T), 1.0 / T)
    return slimjax.Instance(**v)


@pytest.mark.parametrize("aggregation", ["max", "sum"])
def test_replay_mean_equals_J(aggregation):
    rng = np.random.default_rng(0)
    inst = random_instance(0, U=1, N=3, L=3, E=6, M=4, K=2)
    ids = np.stack([[rng.choice(6, 2, replace=False) for _ in range(3)] for _ in range(200)])
    x = random_placement(inst, 1)
    lat = np.array(slimjax.replay(inst, x, ids, aggregation=aggregation))
    assert lat.shape == (200,)
    J = float(slimjax.objective(instance_from_tokens(inst, ids), x, aggregation))
    np.testing.assert_allclose(lat.mean(), J, rtol=1e-5)


def test_replay_chunked_equals_unchunked_and_user():
    rng = np.random.default_rng(1)
    inst = random_instance(3, U=2, N=3, L=2, E=5, M=3, K=2)
    ids = rng.integers(0, 5, size=(103, 2, 2))
    x = random_placement(inst, 2)
    a = np.array(slimjax.replay(inst, x, ids, user=1))
    b = np.array(slimjax.replay(inst, x, ids, user=1, chunk=16))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    d = np.array(slimjax.expert_latency(inst, x))[1]
    ref = np.array([sum(max(d[l, e] for e in ids[t, l]) for l in range(2)) for t in range(103)])
    np.testing.assert_allclose(a, ref, rtol=1e-6)
    withbase = np.array(slimjax.replay(inst, x, ids, user=1, include_base=True))
    np.testing.assert_allclose(withbase - a, float(inst.base[1]), rtol=1e-5)


def test_replay_stats_and_errors():
    s = slimjax.replay_stats(np.arange(101.0))
    assert s["mean"] == 50 and s["p50"] == 50 and s["p95"] == 95 and s["p99"] == 99
    inst = random_instance(0, U=1, L=2, E=4)
    x = random_placement(inst)
    with pytest.raises(ValueError, match="expert_ids: ids must be in"):
        slimjax.replay(inst, x, np.full((3, 2, 2), 4))
    with pytest.raises(ValueError, match="expert_ids: expected shape"):
        slimjax.replay(inst, x, np.zeros((3, 5, 2), int))
    with pytest.raises(ValueError, match="user"):
        slimjax.replay(inst, x, np.zeros((3, 2, 2), int), user=1)
    with pytest.raises(ValueError, match="empty"):
        slimjax.replay_stats([])
