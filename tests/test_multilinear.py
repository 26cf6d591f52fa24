"""The exact multilinear extension E_{x~Bernoulli(p)} J(x) (DESIGN §4.6) against brute force."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slimjax
from slimjax._objective import multilinear
from tests.helpers import random_instance
from tests.reference import latency_ref


def _expectation_ref(inst, p, aggregation):
    """Σ_x P(x) J(x) over all 0/1 placements, NumPy float64."""
    N, L, E = p.shape
    total = 0.0
    for bits in itertools.product([False, True], repeat=N * L * E):
        x = np.array(bits).reshape(N, L, E)
        prob = np.prod(np.where(x, p, 1.0 - p))
        total += prob * latency_ref(inst, x, aggregation)
    return total


def _tiny(seed, U, K, L=1, E=3, N=2, pad=1, dup=False):
    """A tiny float64 instance with an unreachable node and a node slower than the fallback."""
    inst = random_instance(seed, U=U, N=N, L=L, E=E, M=3, K=K, pad=pad, dtype=np.float64)
    lat = np.asarray(inst.latency).copy()
    fb = np.asarray(inst.fallback)
    if U > 1:
        lat[1, 0] = np.inf  # user 1 cannot reach node 0
    lat[:, N - 1, 0, 0] = fb[:, 0, 0] + 3.0  # slower than the fallback
    lat[0, 0, 0, 1] = lat[0, N - 1, 0, 1]  # a tie between two nodes
    pat = np.asarray(inst.patterns).copy()
    if dup and K > 1:
        pat[:, :, 0, 1] = pat[:, :, 0, 0]  # a pattern that repeats an id
    return inst.replace(latency=lat, patterns=pat)


@pytest.mark.parametrize("aggregation", ["max", "sum"])
@pytest.mark.parametrize("U,K", [(1, 1), (1, 2), (2, 2), (1, 3), (2, 3)])
def test_matches_brute_force_expectation(x64, U, K, aggregation):
    for seed in range(2):
        inst = _tiny(seed, U, K, dup=seed == 1)
        assert inst.latency.dtype == jnp.float64
        p = np.random.default_rng(seed).random(inst.latency.shape[1:])
        p[0, 0, 2] = 0.0
        p[1, 0, 1] = 1.0
        got = float(multilinear(inst, jnp.asarray(p), aggregation))
        want = _expectation_ref(inst, p, aggregation)
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_two_layers_against_brute_force(x64):
    inst = _tiny(3, U=2, K=2, L=2, E=2)
    p = np.random.default_rng(3).random(inst.latency.shape[1:])
    for agg in ("max", "sum"):
        np.testing.assert_allclose(float(multilinear(inst, p, agg)), _expectation_ref(inst, p, agg), rtol=1e-12)


@pytest.mark.parametrize("aggregation", ["max", "sum"])
def test_equals_latency_exactly_at_01_points(x64, aggregation):
    for seed in range(4):
        inst = _tiny(seed, U=1 + seed % 2, K=1 + seed % 3, L=3, E=5, N=3, dup=True)
        rng = np.random.default_rng(seed)
        for q in (0.0, 0.3, 0.7, 1.0):
            x = rng.random(inst.latency.shape[1:]) < q
            ml = multilinear(inst, jnp.asarray(x, jnp.float64), aggregation)
            J = slimjax.objective(inst, x, aggregation)
            assert float(ml) == float(J), (seed, q, float(ml), float(J))
            assert abs(float(ml) - latency_ref(inst, x, aggregation)) <= 1e-12 * abs(float(J))


def test_batched_is_vmapped(x64):
    batch = slimjax.stack([_tiny(s, U=2, K=2, L=2, E=3) for s in range(3)])
    p = jnp.asarray(np.random.default_rng(0).random((3,) + batch.latency.shape[2:]))
    got = multilinear(batch, p)
    assert got.shape == (3,)
    for i in range(3):
        np.testing.assert_allclose(float(got[i]), float(multilinear(batch[i], p[i])), rtol=1e-14)
    x = np.asarray(p) < 0.5
    np.testing.assert_array_equal(
        np.asarray(multilinear(batch, jnp.asarray(x, jnp.float64))), np.asarray(slimjax.objective(batch, x))
    )


@pytest.mark.parametrize("aggregation", ["max", "sum"])
def test_gradient_matches_finite_differences(x64, aggregation):
    inst = _tiny(5, U=2, K=3, L=2, E=3, N=3, dup=True)
    p = jnp.asarray(np.random.default_rng(5).uniform(0.1, 0.9, inst.latency.shape[1:]))
    f = jax.jit(lambda q: multilinear(inst, q, aggregation))
    g = np.asarray(jax.grad(f)(p))
    h = 1e-4
    fd = np.zeros_like(g)
    for idx in np.ndindex(*g.shape):
        e = np.zeros(g.shape)
        e[idx] = h
        fd[idx] = (float(f(p + e)) - float(f(p - e))) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-7, atol=1e-9)
    assert (g <= 1e-12).all()  # monotone: caching more never hurts
    # the node slower than the fallback never matters for expert (0, 0)
    assert abs(g[2, 0, 0]) <= 1e-12


def test_gradient_at_01_points_is_finite(x64):
    inst = _tiny(6, U=2, K=2, L=2, E=3)
    for q in (0.0, 1.0):
        g = jax.grad(lambda p: multilinear(inst, p))(jnp.full(inst.latency.shape[1:], q))
        assert np.isfinite(np.asarray(g)).all()


def test_monte_carlo_float32():
    inst = random_instance(7, U=2, N=3, L=2, E=4, M=6, K=2)
    p = np.random.default_rng(7).random(inst.latency.shape[1:]).astype(np.float32)
    x = np.random.default_rng(8).random((20000,) + p.shape) < p
    batch = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (x.shape[0],) + a.shape), inst)
    J = np.asarray(slimjax.objective(batch, jnp.asarray(x)), np.float64)
    ml = float(multilinear(inst, jnp.asarray(p)))
    assert abs(ml - J.mean()) < 4 * J.std() / np.sqrt(len(J)) + 1e-5 * abs(ml)


def test_bad_input():
    inst = random_instance(0)
    with pytest.raises(ValueError, match="placement"):
        multilinear(inst, jnp.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="aggregation"):
        multilinear(inst, jnp.zeros(inst.latency.shape[1:]), "mean")


@pytest.mark.parametrize("aggregation", ["max", "sum"])
def test_k8_against_enumeration(x64, aggregation):
    """K = 8 over E = 8 experts, 2 nodes: all 2^16 placements, J from the batched objective."""
    inst = _tiny(11, U=2, K=8, L=1, E=8, N=2, pad=0, dup=True)
    shape = inst.latency.shape[1:]
    p = np.random.default_rng(11).random(shape)
    bits = ((np.arange(2**16)[:, None] >> np.arange(16)) & 1).astype(bool).reshape((-1,) + shape)
    prob = np.prod(np.where(bits, p, 1.0 - p), axis=(1, 2, 3))
    batch = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (len(bits),) + a.shape), inst)
    J = np.asarray(slimjax.objective(batch, jnp.asarray(bits), aggregation))
    np.testing.assert_allclose(float(multilinear(inst, jnp.asarray(p), aggregation)), (prob * J).sum(), rtol=1e-11)
