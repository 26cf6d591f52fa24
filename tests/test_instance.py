"""Instance construction, pytree behaviour, batching, the storage grid and every validation rule."""

import math
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slimjax
from slimjax._instance import FIELDS
from slimjax.ops._grid import capacity_grid
from tests.helpers import random_instance


def fields(inst):
    return {f: np.array(getattr(inst, f)) for f in FIELDS}


def test_shape_and_defaults():
    inst = random_instance(0, U=2, N=3, L=4, E=5, M=6, K=2)
    assert inst.shape == (2, 3, 4, 5, 6, 2)
    assert inst.batch_shape == ()
    v = fields(inst)
    d = slimjax.Instance(**{k: v[k] for k in FIELDS if k not in ("traffic", "base")})
    np.testing.assert_allclose(np.array(d.traffic), [0.5, 0.5])
    np.testing.assert_array_equal(np.array(d.base), [0.0, 0.0])
    assert d.patterns.dtype == jnp.int32 and d.latency.dtype == jnp.float32


def test_pytree_roundtrip_and_jit():
    inst = random_instance(1)
    leaves, tree = jax.tree_util.tree_flatten(inst)
    assert len(leaves) == len(FIELDS)
    back = jax.tree_util.tree_unflatten(tree, leaves)
    assert back.shape == inst.shape
    out = jax.jit(lambda i: i.latency.sum())(inst)
    assert np.isfinite(float(out))


def test_stack_unstack_index():
    insts = [random_instance(s) for s in range(3)]
    b = slimjax.stack(insts)
    assert b.batch_shape == (3,) and len(b) == 3 and b.shape == insts[0].shape
    for i, inst in enumerate(slimjax.unstack(b)):
        for f in FIELDS:
            np.testing.assert_array_equal(np.array(getattr(inst, f)), np.array(getattr(insts[i], f)))
    assert b[1:].batch_shape == (2,)
    with pytest.raises(ValueError, match="same shape"):
        slimjax.stack([random_instance(0, E=4), random_instance(0, E=5)])
    with pytest.raises(ValueError, match="at least one"):
        slimjax.stack([])


def test_batched_construction_validates():
    b = slimjax.stack([random_instance(s) for s in range(2)])
    v = fields(b)
    slimjax.Instance(**v)  # a batch validates too
    v["weight"][1, 0, 0, 0] += 0.5
    with pytest.raises(ValueError, match=r"weight: must sum to 1.*index \(1, 0, 0\)"):
        slimjax.Instance(**v)


def test_float64_kept_with_x64(x64):
    inst = random_instance(0, dtype=np.float64)
    assert inst.latency.dtype == jnp.float64


def test_grid_rounding():
    inst = random_instance(0, L=3, E=2)
    v = fields(inst)
    v["size"] = np.array([[1.0, 1.0], [2.5, 2.5], [1.5, 1.5]], np.float32)
    v["capacity"] = np.array([3.9, 0.0], np.float32)
    g = capacity_grid(slimjax.Instance(**v), unit=1.0)
    np.testing.assert_array_equal(g.size_units, [1, 3, 2])  # sizes rounded up (unit = 1.0)
    np.testing.assert_array_equal(g.capacity_units, [3, 0])  # capacities rounded down
    assert g.max_units == 3
    g2 = capacity_grid(slimjax.Instance(**v))  # default: the coarsest unit dividing every size
    np.testing.assert_allclose(g2.unit, 0.5)
    np.testing.assert_array_equal(g2.size_units, [2, 5, 3])
    np.testing.assert_array_equal(g2.capacity_units, [7, 0])
    v["size"] = np.array([[1.0, 1.0], [1.37, 1.37], [1.0, 1.0]], np.float32)  # no small common unit
    g3 = capacity_grid(slimjax.Instance(**v))
    np.testing.assert_allclose(g3.unit, 1.0)  # falls back to the smallest size
    np.testing.assert_array_equal(g3.size_units, [1, 2, 1])
    # a placement feasible on the grid is feasible in real units
    assert (g2.size_units * g2.unit[..., None] >= v["size"][:, 0] - 1e-6).all()


def test_grid_clips_to_full_storage():
    inst = random_instance(0, L=2, E=3, equal_sizes=True)
    v = fields(inst)
    v["capacity"] = np.array([1e6, 2.0], np.float32)
    g = capacity_grid(slimjax.Instance(**v))
    np.testing.assert_array_equal(g.capacity_units, [6, 2])


def test_normalize():
    v = fields(random_instance(0, U=2))
    v["weight"] = v["weight"] * 3
    v["traffic"] = np.array([1.0, 3.0], np.float32)
    inst = slimjax.Instance(**v, normalize=True)
    np.testing.assert_allclose(np.array(inst.weight).sum(-1), 1, rtol=1e-6)
    np.testing.assert_allclose(np.array(inst.traffic), [0.25, 0.75], rtol=1e-6)


BAD = [
    ("latency", lambda v: v["latency"].__setitem__((0, 0, 0, 0), np.nan), r"latency: NaN at index \(0, 0, 0, 0\)"),
    ("latency", lambda v: v["latency"].__setitem__((0, 1, 0, 2), -1.0), r"latency: must be >= 0.*\(0, 1, 0, 2\)"),
    ("fallback", lambda v: v["fallback"].__setitem__((0, 1, 1), np.inf), r"fallback: must be finite.*\(0, 1, 1\)"),
    ("fallback", lambda v: v["fallback"].__setitem__((0, 0, 1), -2.0), r"fallback: must be >= 0"),
    ("size", lambda v: v["size"].__setitem__((1, 0), 0.0), r"size: must be finite and > 0"),
    ("size", lambda v: v["size"].__setitem__((1, 2), v["size"][1, 2] + 1), r"size: all experts of one layer.*\(1, 2\)"),
    ("capacity", lambda v: v["capacity"].__setitem__(1, -1.0), r"capacity: must be finite and >= 0.*\(1,\)"),
    ("capacity", lambda v: v["capacity"].__setitem__(0, np.nan), r"capacity: NaN"),
    ("patterns", lambda v: v["patterns"].__setitem__((0, 1, 2, 0), 4), r"patterns: expert ids must be in \[0, E=4\).*\(0, 1, 2, 0\)"),
    ("patterns", lambda v: v["patterns"].__setitem__((0, 0, 0, 1), -1), r"patterns: expert ids"),
    ("weight", lambda v: v["weight"].__setitem__((0, 1, 0), v["weight"][0, 1, 0] + 0.1), r"weight: must sum to 1.*\(0, 1\)"),
    ("weight", lambda v: v["weight"].__setitem__((0, 0, 0), -0.1), r"weight: must be finite and >= 0"),
    ("traffic", lambda v: v["traffic"].__setitem__(0, 2.0), r"traffic: must sum to 1"),
    ("base", lambda v: v["base"].__setitem__(0, np.inf), r"base: must be finite"),
]


@pytest.mark.parametrize("field,mutate,msg", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_validation_rules(field, mutate, msg):
    v = fields(random_instance(3, U=1, N=2, L=2, E=4, M=3, K=2))
    mutate(v)
    with pytest.raises(ValueError, match=msg):
        slimjax.Instance(**v)


def test_validation_shapes_and_k():
    v = fields(random_instance(0, E=4, K=2))
    bad = dict(v, fallback=v["fallback"][:, :, :3])
    with pytest.raises(ValueError, match="fallback: shape"):
        slimjax.Instance(**bad)
    bad = dict(v, capacity=v["capacity"][None])
    with pytest.raises(ValueError, match="capacity: expected 1 dims"):
        slimjax.Instance(**bad)
    with pytest.raises(ValueError, match="latency: expected shape"):
        slimjax.Instance(**dict(v, latency=v["latency"][0]))
    v3 = fields(random_instance(0, E=2, K=2))
    pats = np.concatenate([v3["patterns"], v3["patterns"][..., :1]], -1)
    with pytest.raises(ValueError, match="K <= E"):
        slimjax.Instance(**dict(v3, patterns=pats))


def test_validate_false_skips():
    v = fields(random_instance(0))
    v["weight"] = v["weight"] * 2
    inst = slimjax.Instance(**v, validate=False)
    assert inst.shape[0] == 1


def test_inf_latency_allowed():
    """latency = inf means user u cannot reach node n: the instance is accepted, such a copy never
    serves that user (d falls back), and a node no user reaches is worth nothing to a solver."""
    from tests.reference import brute_force_ref, latency_ref

    v = fields(random_instance(0, U=2, N=3, L=2, E=2, M=3, K=2, unreachable=False))
    v["latency"][0, 2] = np.inf  # user 0 cannot reach node 2
    v["latency"][1, 0] = np.inf  # user 1 cannot reach node 0
    inst = slimjax.Instance(**v)
    assert np.isinf(np.asarray(inst.latency)[0, 2]).all() and np.isfinite(np.asarray(inst.latency)[0, :2]).all()
    only2 = np.zeros((3, 2, 2), bool)
    only2[2] = True
    d = np.asarray(slimjax.expert_latency(inst, only2))
    np.testing.assert_array_equal(d[0], v["fallback"][0])  # copies only where user 0 cannot reach
    np.testing.assert_array_equal(d[1], np.minimum(v["fallback"][1], v["latency"][1, 2]))
    everywhere = np.ones((3, 2, 2), bool)
    assert np.isfinite(np.asarray(slimjax.expert_latency(inst, everywhere))).all()
    np.testing.assert_allclose(float(slimjax.objective(inst, everywhere)), latency_ref(inst, everywhere), rtol=1e-6)

    # node 2 unreachable for every user: the optimum is the one with node 2's storage taken away
    v["latency"][:, 2] = np.inf
    dead = slimjax.Instance(**v)
    v["capacity"][2] = 0.0
    no_room = slimjax.Instance(**v)
    sol = slimjax.solve_batch(slimjax.stack([inst, dead]), "brute-force")
    J = np.asarray(sol.objective, np.float64)
    assert np.isfinite(J).all()
    np.testing.assert_allclose(J[0], brute_force_ref(inst)[0], rtol=1e-6)
    np.testing.assert_allclose(J[1], brute_force_ref(no_room)[0], rtol=1e-6)
    np.testing.assert_allclose(J, [float(slimjax.objective(inst, sol.placement[0])),
                                   float(slimjax.objective(dead, sol.placement[1]))], rtol=1e-6)


def test_replace_validates():
    inst = random_instance(0)
    with pytest.raises(ValueError, match="capacity"):
        inst.replace(capacity=np.array([-1.0, 1.0]))
    assert inst.replace(capacity=np.array([5.0, 1.0])).capacity[0] == 5.0


def test_merge_patterns_keeps_J_and_shrinks():
    from slimjax.ops._patterns import merge_patterns
    from tests.helpers import random_placement

    rng = np.random.default_rng(0)
    inst = random_instance(0, U=2, N=3, L=2, E=4, M=40, K=2)
    v = fields(inst)
    v["patterns"][..., 1] = np.where(rng.random(v["patterns"].shape[:-1]) < 0.5, v["patterns"][..., 0], v["patterns"][..., 1])
    v["patterns"][0, 0, 3] = v["patterns"][0, 0, 3, ::-1]  # order inside a pattern does not matter
    inst = slimjax.Instance(**v)
    merged = merge_patterns(inst)
    assert merged.shape[4] == 10  # C(E + K - 1, K) = C(5, 2) multisets
    np.testing.assert_allclose(np.array(merged.weight).sum(-1), 1, rtol=1e-6)
    for s in range(3):
        x = random_placement(inst, s)
        for agg in ("max", "sum"):
            np.testing.assert_allclose(float(slimjax.objective(merged, x, agg)), float(slimjax.objective(inst, x, agg)), rtol=1e-6)
    b = slimjax.stack([inst, inst])
    mb = merge_patterns(b)
    np.testing.assert_array_equal(np.array(mb.patterns[1]), np.array(merged.patterns))
    big = random_instance(0, E=8, M=5, K=2)
    assert merge_patterns(big) is big  # cannot shrink: unchanged


@pytest.mark.parametrize("E,K", [(4, 2), (5, 3), (3, 4)])
def test_merge_patterns_device_paths_equal_numpy(E, K):
    """The JAX merge (histogram and sort variants) gives the NumPy path's patterns, in the same
    order, and the same weights; repeated members and shuffled positions included."""
    import jax.numpy as jnp

    from slimjax.ops._patterns import _merge_codes, _merge_numpy
    rng = np.random.default_rng(E * 10 + K)
    M = 60
    pat = rng.integers(0, E, (3, 2, 4, M, K)).astype(np.int32)  # [B, U, L, M, K], repeats likely
    w = rng.random((3, 2, 4, M)).astype(np.float32)
    w[..., :5] = 0.0  # zero-weight patterns still take a slot, as in NumPy
    Mp = math.comb(E + K - 1, K)
    ref_p, ref_w = _merge_numpy(pat, w, Mp)
    for hist_limit in (2**26, 0):  # histogram, then the sort variant
        p, wt = _merge_codes(jnp.asarray(pat), jnp.asarray(w), E, Mp, hist_limit=hist_limit)
        np.testing.assert_array_equal(np.asarray(p), ref_p)
        np.testing.assert_allclose(np.asarray(wt), ref_w, rtol=1e-6, atol=1e-7)
