"""(max,+) convolution and the capacity DP (slimjax.maxconv) against brute force."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slimjax.ops._maxconv import capacity_dp, maxplus_conv, upper_envelope
from tests.reference_successive import dp_dense_ref, dp_hull_ref

L, C1, QMAX = 3, 5, 14


def brute_conv(a, b, stride):
    out = np.full(len(a), -np.inf)
    for q in range(len(a)):
        for c in range(len(b)):
            if c * stride <= q:
                out[q] = max(out[q], a[q - c * stride] + b[c])
    return out


def brute_dp(g, s, Q):
    """Enumerate every allocation (c_1..c_L) that fits."""
    best = 0.0
    for cs in itertools.product(range(g.shape[1]), repeat=g.shape[0]):
        if sum(c * sl for c, sl in zip(cs, s)) <= Q:
            best = max(best, sum(g[l, c] for l, c in enumerate(cs)))
    return best


def random_curves(rng, kind, n):
    """n curves [n, L, C1] (non-decreasing, g[:, 0] = 0) of one kind."""
    inc = rng.random((n, L, C1 - 1))
    if kind == "concave":
        inc = -np.sort(-inc, axis=-1)
    elif kind == "nonconcave":
        inc = inc * (rng.random((n, L, C1 - 1)) < 0.5) * rng.uniform(0, 4, (n, L, C1 - 1))
    elif kind == "pairs":  # singles worth nothing, pairs a lot (co-activation)
        inc = np.zeros((n, L, C1 - 1))
        inc[..., 1] = rng.uniform(1, 5, (n, L))
        inc[..., 3] = rng.uniform(0, 3, (n, L))
    g = np.concatenate([np.zeros((n, L, 1)), np.cumsum(inc, -1)], -1)
    return g


def test_maxplus_conv_matches_brute_force():
    rng = np.random.default_rng(0)
    f = jax.jit(jax.vmap(maxplus_conv))
    a = rng.normal(size=(20, 11))
    b = rng.normal(size=(20, 4))
    strides = rng.integers(1, 4, size=20)
    out, arg = f(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), jnp.asarray(strides, jnp.int32))
    for i in range(20):
        ref = brute_conv(a[i], b[i], strides[i])
        np.testing.assert_allclose(np.asarray(out[i]), ref, rtol=1e-5, atol=1e-5)
        # the argmax reproduces the value
        q = np.arange(11)
        recon = a[i][q - arg[i] * strides[i]] + b[i][arg[i]]
        np.testing.assert_allclose(np.asarray(out[i]), recon, rtol=1e-5, atol=1e-5)
        assert (np.asarray(arg[i]) * strides[i] <= q).all()


@pytest.mark.parametrize("kind", ["random", "concave", "nonconcave", "pairs"])
def test_dense_dp_equals_enumeration(kind):
    rng = np.random.default_rng(hash(kind) % 1000)
    n = 40
    g = random_curves(rng, kind, n)
    s = rng.integers(1, 4, size=(n, L))
    s[: n // 4] = 1  # equal sizes too
    Q = rng.integers(0, QMAX + 1, size=n)
    Q[:3] = 0  # zero capacity
    f = jax.jit(jax.vmap(lambda g, s, q: capacity_dp(g, s, q, Qmax=QMAX)))
    res = f(jnp.asarray(g, jnp.float32), jnp.asarray(s, jnp.int32), jnp.asarray(Q, jnp.int32))
    for i in range(n):
        opt = brute_dp(g[i], s[i], Q[i])
        counts = np.asarray(res.counts[i])
        assert (counts * s[i]).sum() <= Q[i]
        assert float(res.value[i]) == pytest.approx(opt, rel=1e-5, abs=1e-5)
        assert sum(g[i, l, counts[l]] for l in range(L)) == pytest.approx(opt, rel=1e-5, abs=1e-5)
        assert float(res.table[i][Q[i]]) == pytest.approx(opt, rel=1e-5, abs=1e-5)
        if Q[i] == 0:
            assert (counts == 0).all() and float(res.value[i]) == 0.0


@pytest.mark.parametrize("kind", ["random", "concave", "nonconcave", "pairs"])
def test_hull_guarantees(kind):
    rng = np.random.default_rng(7 + len(kind))
    n = 40
    g = random_curves(rng, kind, n)
    s = rng.integers(1, 4, size=(n, L))
    Q = rng.integers(0, QMAX + 1, size=n)
    Q[:2] = 0
    f = jax.jit(jax.vmap(lambda g, s, q: capacity_dp(g, s, q, backend="hull")))
    res = f(jnp.asarray(g, jnp.float32), jnp.asarray(s, jnp.int32), jnp.asarray(Q, jnp.int32))
    for i in range(n):
        opt = brute_dp(g[i], s[i], Q[i])
        counts = np.asarray(res.counts[i])
        v, lp = float(res.value[i]), float(res.bound[i])
        assert (counts * s[i]).sum() <= Q[i]
        assert sum(g[i, l, counts[l]] for l in range(L)) == pytest.approx(v, rel=1e-5, abs=1e-5)
        assert v <= opt + 1e-4
        assert lp >= opt - 1e-4  # LP bound is an upper bound
        # value >= LP - largest envelope segment, and >= OPT / 2
        largest = max(g[i, l, min(C1 - 1, Q[i] // s[i, l])] for l in range(L))
        assert v >= lp - largest - 1e-4
        assert v >= opt / 2 - 1e-5


def test_hull_exact_on_concave_equal_sizes():
    rng = np.random.default_rng(3)
    n = 40
    g = random_curves(rng, "concave", n)
    for sz in (1, 2):
        s = np.full((n, L), sz)
        Q = rng.integers(0, QMAX + 1, size=n)
        res = jax.vmap(lambda g, s, q: capacity_dp(g, s, q, backend="hull"))(
            jnp.asarray(g, jnp.float32), jnp.asarray(s, jnp.int32), jnp.asarray(Q, jnp.int32)
        )
        for i in range(n):
            opt = brute_dp(g[i], s[i], Q[i])
            assert float(res.value[i]) == pytest.approx(opt, rel=1e-5, abs=1e-5)
            # LP bound is tight up to the fraction of one segment
            assert float(res.bound[i]) >= opt - 1e-5


def test_backends_match_numpy_reference(x64):
    rng = np.random.default_rng(11)
    n = 30
    g = np.concatenate([random_curves(rng, k, n // 3) for k in ("random", "nonconcave", "pairs")])
    s = rng.integers(1, 4, size=(n, L))
    Q = rng.integers(0, QMAX + 1, size=n)
    dense = jax.vmap(lambda g, s, q: capacity_dp(g, s, q, Qmax=QMAX))(jnp.asarray(g), jnp.asarray(s), jnp.asarray(Q))
    hull = jax.vmap(lambda g, s, q: capacity_dp(g, s, q, backend="hull"))(jnp.asarray(g), jnp.asarray(s), jnp.asarray(Q))
    assert dense.value.dtype == jnp.float64
    for i in range(n):
        v, c = dp_dense_ref(g[i], s[i], Q[i])
        assert float(dense.value[i]) == pytest.approx(v, rel=1e-12)
        np.testing.assert_array_equal(np.asarray(dense.counts[i]), c)
        hv, hc, hb = dp_hull_ref(g[i], s[i], Q[i])
        assert float(hull.value[i]) == pytest.approx(hv, rel=1e-12)
        np.testing.assert_array_equal(np.asarray(hull.counts[i]), hc)
        assert float(hull.bound[i]) == pytest.approx(hb, rel=1e-9)


def test_upper_envelope_points():
    g = jnp.array([0.0, 0.0, 3.0, 3.5, 6.0, 6.0])
    on, nxt = upper_envelope(g, 5)
    # envelope of (0,0),(2,3),(4,6) is the line 1.5 c: 0, 2, 4 on it; 3 below; 5 on it (flat after 4)
    assert np.asarray(on).tolist() == [True, False, True, False, True, True]
    assert int(nxt[0]) == 2 and int(nxt[2]) == 4 and int(nxt[4]) == 5
    on2, _ = upper_envelope(g, 3)  # only c <= 3 usable
    assert np.asarray(on2).tolist() == [True, False, True, True, False, False]


def test_jit_vs_eager_and_vmap_vs_loop():
    rng = np.random.default_rng(5)
    g = jnp.asarray(random_curves(rng, "nonconcave", 6), jnp.float32)
    s = jnp.asarray(rng.integers(1, 3, size=(6, L)), jnp.int32)
    Q = jnp.asarray(rng.integers(0, QMAX, size=6), jnp.int32)
    for backend in ("dense", "hull"):
        fn = lambda g, s, q: capacity_dp(g, s, q, Qmax=QMAX, backend=backend)  # noqa: E731
        batched = jax.jit(jax.vmap(fn))(g, s, Q)
        for i in range(6):
            with jax.disable_jit():
                eager = fn(g[i], s[i], Q[i])
            jitted = jax.jit(fn)(g[i], s[i], Q[i])
            for r in (eager, jitted):
                assert float(r.value) == pytest.approx(float(batched.value[i]), rel=1e-6)
                np.testing.assert_array_equal(np.asarray(r.counts), np.asarray(batched.counts[i]))


def test_bad_input():
    g = jnp.zeros((2, 3))
    s = jnp.ones(2, jnp.int32)
    with pytest.raises(ValueError, match="backend"):
        capacity_dp(g, s, 3, Qmax=3, backend="nope")
    with pytest.raises(ValueError, match="Qmax"):
        capacity_dp(g, s, 3)


def test_hull_many_rounds_matches_reference(x64):
    """Many layers, mixed sizes, capacities that leave a tail: the round-based skip-greedy takes
    exactly the segments of the sequential one (NumPy reference), and keeps the guarantees."""
    rng = np.random.default_rng(23)
    n, Lb, Cb = 40, 16, 13
    inc = rng.random((n, Lb, Cb - 1)) * (rng.random((n, Lb, Cb - 1)) < 0.9) * rng.uniform(0.2, 3, (n, Lb, 1))
    g = np.concatenate([np.zeros((n, Lb, 1)), np.cumsum(inc, -1)], -1)
    s = rng.integers(1, 10, size=(n, Lb))
    Q = rng.integers(0, 120, size=n)
    res = jax.jit(jax.vmap(lambda g, s, q: capacity_dp(g, s, q, backend="hull")))(
        jnp.asarray(g), jnp.asarray(s, jnp.int32), jnp.asarray(Q, jnp.int32)
    )
    dense = jax.jit(jax.vmap(lambda g, s, q: capacity_dp(g, s, q, Qmax=120)))(
        jnp.asarray(g), jnp.asarray(s, jnp.int32), jnp.asarray(Q, jnp.int32)
    )
    for i in range(n):
        hv, hc, hb = dp_hull_ref(g[i], s[i], Q[i])
        np.testing.assert_array_equal(np.asarray(res.counts[i]), hc)
        assert float(res.value[i]) == pytest.approx(hv, rel=1e-12)
        assert float(res.bound[i]) == pytest.approx(hb, rel=1e-9)
        opt = float(dense.value[i])
        assert float(res.bound[i]) >= opt - 1e-9
        assert opt / 2 - 1e-9 <= float(res.value[i]) <= opt + 1e-9
