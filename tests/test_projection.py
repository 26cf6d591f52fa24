"""Euclidean projection onto {0 ≤ p ≤ 1, Σ size·p ≤ capacity} (DESIGN §4.6) against a QP solver."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from slimjax.ops._projection import project_storage
project = jax.jit(project_storage, static_argnames=("iters",))


def _case(seed, N=2, L=2, E=3):
    rng = np.random.default_rng(seed)
    y = rng.normal(0.5, 0.8, (N, L, E))
    size = np.repeat(rng.integers(1, 4, L).astype(float)[:, None], E, 1) * rng.uniform(0.5, 1.5)
    cap = rng.uniform(0.0, 1.2, N) * size.sum()
    return y, size, cap


def _qp(y, size, cap):
    """min ||p − y||² s.t. 0 ≤ p ≤ 1, size·p ≤ cap for one node (SLSQP)."""
    y, s = y.ravel(), size.ravel()
    res = minimize(
        lambda p: ((p - y) ** 2).sum(),
        np.clip(y, 0, 1) * 0.0,
        jac=lambda p: 2 * (p - y),
        bounds=[(0, 1)] * len(y),
        constraints=[{"type": "ineq", "fun": lambda p: cap - s @ p, "jac": lambda p: -s}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert res.success, res.message
    return res.x.reshape(size.shape)


def test_matches_qp(x64):
    for seed in range(8):
        y, size, cap = _case(seed)
        p = np.asarray(project(jnp.asarray(y), jnp.asarray(size), jnp.asarray(cap), iters=80))
        for n in range(y.shape[0]):
            q = _qp(y[n], size, cap[n])
            np.testing.assert_allclose(p[n], q, atol=1e-6)
            # optimality: p is at least as close to y as the QP's answer (both feasible)
            assert ((p[n] - y[n]) ** 2).sum() <= ((q - y[n]) ** 2).sum() + 1e-9


def test_feasible_and_kkt(x64):
    for seed in range(20):
        y, size, cap = _case(seed, N=3, L=3, E=4)
        p = np.asarray(project(jnp.asarray(y), jnp.asarray(size), jnp.asarray(cap), iters=80))
        assert (p >= 0).all() and (p <= 1).all()
        used = (size * p).sum(axis=(1, 2))
        assert (used <= cap * (1 + 1e-12) + 1e-12).all()
        for n in range(3):
            clipped = np.clip(y[n], 0, 1)
            if (size * clipped).sum() <= cap[n]:
                np.testing.assert_allclose(p[n], clipped, atol=1e-12)
            else:  # KKT: p = clip(y − τ·size) for one τ > 0, with the storage full
                assert used[n] == pytest.approx(cap[n], rel=1e-9, abs=1e-9)
                free = (p[n] > 1e-9) & (p[n] < 1 - 1e-9)
                if free.any():
                    tau = (y[n] - p[n])[free] / size[free]
                    assert tau.min() > 0
                    np.testing.assert_allclose(tau, tau.mean(), rtol=1e-7)
                    np.testing.assert_allclose(p[n], np.clip(y[n] - tau.mean() * size, 0, 1), atol=1e-7)


def test_float32_feasible_and_batched():
    ys, sizes, caps = zip(*[_case(s, N=4, L=3, E=5) for s in range(6)])
    y, size, cap = (jnp.asarray(np.stack(a), jnp.float32) for a in (ys, sizes, caps))
    p = project(y, size, cap, iters=40)
    assert p.shape == y.shape and p.dtype == jnp.float32
    used = np.asarray((size[:, None] * p).sum(axis=(2, 3)), np.float64)
    assert (used <= np.asarray(cap, np.float64) * (1 + 1e-6)).all()
    for b in range(6):
        np.testing.assert_array_equal(np.asarray(p[b]), np.asarray(project(y[b], size[b], cap[b], iters=40)))


def test_edge_cases():
    y = jnp.full((2, 1, 3), 0.7)
    size = jnp.ones((1, 3))
    p = project(y, size, jnp.array([0.0, 10.0]), iters=40)
    np.testing.assert_array_equal(np.asarray(p[0]), 0.0)  # no storage: nothing
    np.testing.assert_allclose(np.asarray(p[1]), 0.7)  # everything fits: the clipped point
    with pytest.raises(ValueError, match="size"):
        project_storage(y, jnp.ones((2, 3)), jnp.ones(2))
    with pytest.raises(ValueError, match="capacity"):
        project_storage(y, size, jnp.ones(3))
