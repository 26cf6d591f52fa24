"""The JAX objective against the naive NumPy reference (tests/reference.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slimjax
from tests.helpers import random_instance, random_placement
from tests.reference import expert_latency_ref, latency_ref

CASES = [
    dict(U=1, N=2, L=2, E=4, M=5, K=1),
    dict(U=1, N=3, L=3, E=5, M=6, K=2),
    dict(U=2, N=3, L=2, E=6, M=4, K=3, pad=2),
    dict(U=3, N=4, L=2, E=4, M=3, K=2, pad=1),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("aggregation", ["max", "sum"])
def test_latency_matches_reference(case, aggregation):
    for seed in range(4):
        inst = random_instance(seed, **case)
        x = random_placement(inst, seed)
        J = float(slimjax.objective(inst, x, aggregation))
        np.testing.assert_allclose(J, latency_ref(inst, x, aggregation), rtol=2e-6)


def test_float64_exact(x64):
    inst = random_instance(5, U=2, N=3, L=3, E=5, M=7, K=3, dtype=np.float64)
    for s in range(3):
        x = random_placement(inst, s)
        J = slimjax.objective(inst, x)
        assert J.dtype == jnp.float64
        np.testing.assert_allclose(float(J), latency_ref(inst, x), rtol=1e-12)


def test_expert_latency_and_inf():
    inst = random_instance(2, U=3, N=4, L=2, E=4, K=2)
    assert np.isinf(np.array(inst.latency)).any()  # unreachable pairs present
    x = np.ones((4, 2, 4), bool)
    d = np.array(slimjax.expert_latency(inst, x))
    np.testing.assert_allclose(d, expert_latency_ref(np.array(inst.latency), np.array(inst.fallback), x), rtol=1e-6)
    assert np.isfinite(d).all()
    # empty placement: every expert at its fallback
    d0 = np.array(slimjax.expert_latency(inst, np.zeros_like(x)))
    np.testing.assert_allclose(d0, np.array(inst.fallback))


def test_batched_equals_loop_and_jit():
    insts = [random_instance(s, U=2, N=3, L=2, E=5, M=4, K=2) for s in range(5)]
    b = slimjax.stack(insts)
    xs = np.stack([random_placement(i, s) for s, i in enumerate(insts)])
    Jb = np.array(slimjax.objective(b, xs))
    Jl = np.array([float(slimjax.objective(i, x)) for i, x in zip(insts, xs)])
    np.testing.assert_allclose(Jb, Jl, rtol=1e-6)
    Jj = np.array(jax.jit(slimjax.objective, static_argnames="aggregation")(b, jnp.asarray(xs)))
    np.testing.assert_allclose(Jj, Jb, rtol=1e-6)
    np.testing.assert_allclose(np.array(jax.vmap(slimjax.objective)(b, jnp.asarray(xs))), Jb, rtol=1e-6)


def test_total_adds_base():
    inst = random_instance(1, U=2)
    x = random_placement(inst)
    tot = float(slimjax.total_latency(inst, x))
    base = float((np.array(inst.traffic) * np.array(inst.base)).sum())
    np.testing.assert_allclose(tot, latency_ref(inst, x) + base, rtol=1e-6)


def test_layer_latency_sums_to_J_and_storage():
    inst = random_instance(4, L=3)
    x = random_placement(inst, 1)
    ll = np.array(slimjax.layer_latency(inst, x))
    assert ll.shape == (3,)
    np.testing.assert_allclose(ll.sum(), float(slimjax.objective(inst, x)), rtol=1e-6)
    used = np.array(slimjax.storage_used(inst, x))
    np.testing.assert_allclose(used, (np.array(inst.size)[None] * x).sum((1, 2)), rtol=1e-6)


def test_monotone_and_grad():
    inst = random_instance(6, N=2, L=2, E=4)
    x = random_placement(inst, 2)
    J = float(slimjax.objective(inst, x))
    for n, l, e in zip(*np.nonzero(~x)):
        y = x.copy()
        y[n, l, e] = True
        assert float(slimjax.objective(inst, y)) <= J + 1e-6  # caching one more copy never hurts
    g = jax.grad(lambda lat: slimjax.objective(inst.replace(latency=lat), x))(inst.latency)
    assert np.isfinite(np.array(g)).all()


def test_padding_patterns_do_not_count():
    inst = random_instance(7, M=3, pad=2)
    x = random_placement(inst, 0)
    v = {f: np.array(getattr(inst, f)) for f in slimjax._instance.FIELDS}
    v["patterns"][..., 3:, :] = 1  # change what the zero-weight padding points at
    np.testing.assert_allclose(float(slimjax.objective(slimjax.Instance(**v), x)), float(slimjax.objective(inst, x)), rtol=1e-7)


def test_bad_placement_shape():
    inst = random_instance(0)
    with pytest.raises(ValueError, match="placement"):
        slimjax.objective(inst, np.zeros((9, 9, 9), bool))
    with pytest.raises(ValueError, match="aggregation"):
        slimjax.objective(inst, random_placement(inst), "mean")
