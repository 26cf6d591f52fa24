"""(max,+) convolution and the capacity DP (slimjax.maxconv) against brute force."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slimjax.ops._maxconv import BACKENDS, DEFAULT_EPS, _exact, capacity_dp, fptas_levels, maxplus_conv, upper_envelope
from tests.reference_successive import dp_dense_ref, dp_fptas_ref, dp_hull_ref

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


@functools.cache
def batched(backend: str, Qmax: int | None = None, eps: float | None = None):
    """One jitted, vmapped ``capacity_dp`` per configuration, shared by the tests (one compile each)."""
    kw = {} if eps is None else {"eps": eps}
    return jax.jit(jax.vmap(lambda g, s, q: capacity_dp(g, s, q, Qmax=Qmax, backend=backend, **kw)))


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
    elif kind == "signed":  # not monotone: some counts are worth less than none
        inc = rng.normal(size=(n, L, C1 - 1)) * 2
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
    res = batched("dense", QMAX)(jnp.asarray(g, jnp.float32), jnp.asarray(s, jnp.int32), jnp.asarray(Q, jnp.int32))
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
    res = batched("hull")(jnp.asarray(g, jnp.float32), jnp.asarray(s, jnp.int32), jnp.asarray(Q, jnp.int32))
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
        res = batched("hull")(jnp.asarray(g, jnp.float32), jnp.asarray(s, jnp.int32), jnp.asarray(Q, jnp.int32))
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
    dense = batched("dense", QMAX)(jnp.asarray(g), jnp.asarray(s), jnp.asarray(Q))
    hull = batched("hull")(jnp.asarray(g), jnp.asarray(s), jnp.asarray(Q))
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


@pytest.mark.slow  # the default run keeps the backends' reference tests
def test_jit_vs_eager_and_vmap_vs_loop():
    rng = np.random.default_rng(5)
    g = jnp.asarray(random_curves(rng, "nonconcave", 6), jnp.float32)
    s = jnp.asarray(rng.integers(1, 3, size=(6, L)), jnp.int32)
    Q = jnp.asarray(rng.integers(0, QMAX, size=6), jnp.int32)
    for backend, qmax in (("dense", QMAX), ("hull", QMAX), ("fptas", QMAX), ("fptas", None)):
        fn = functools.partial(capacity_dp, Qmax=qmax, backend=backend)
        vm = jax.jit(jax.vmap(fn))(g, s, Q)
        jf = jax.jit(fn)
        for i in range(6):
            runs = [jf(g[i], s[i], Q[i])]
            if i == 0:  # eager (op by op) is slow: one problem per backend
                with jax.disable_jit():
                    runs.append(fn(g[i], s[i], Q[i]))
            for r in runs:
                assert float(r.value) == pytest.approx(float(vm.value[i]), rel=1e-6)
                assert float(r.bound) == pytest.approx(float(vm.bound[i]), rel=1e-6)
                np.testing.assert_array_equal(np.asarray(r.counts), np.asarray(vm.counts[i]))


def test_bad_input():
    g = jnp.zeros((2, 3))
    s = jnp.ones(2, jnp.int32)
    with pytest.raises(ValueError, match="backend"):
        capacity_dp(g, s, 3, Qmax=3, backend="nope")
    with pytest.raises(ValueError, match="Qmax"):
        capacity_dp(g, s, 3)
    with pytest.raises(ValueError, match="fptas"):  # the message lists the valid backends
        capacity_dp(g, s, 3, backend="nope")
    for eps in (0.0, 1.0, -0.1, 1.5, True, "0.1", float("nan")):
        with pytest.raises(ValueError, match="eps"):
            capacity_dp(g, s, 3, backend="fptas", eps=eps)
    with pytest.raises(ValueError, match="Qmax"):
        capacity_dp(g, s, 3, Qmax=-1, backend="fptas")
    with pytest.raises(ValueError, match="g, s"):
        capacity_dp(g, jnp.ones(3, jnp.int32), 3, backend="fptas")
    with pytest.raises(ValueError, match="g, s"):
        capacity_dp(jnp.zeros(3), jnp.ones(3, jnp.int32), 3, Qmax=3)


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


# ---------------------------------------------------------------------------------------------
# fptas: value-scaled multiple-choice knapsack, value >= (1 - eps)·OPT
# ---------------------------------------------------------------------------------------------

KINDS = ("random", "concave", "nonconcave", "pairs", "signed")


def mixed_problems(seed, n_per_kind=24):
    """Curves of every kind, mixed sizes (a quarter equal), capacities 0..QMAX (some zero)."""
    rng = np.random.default_rng(seed)
    g = np.concatenate([random_curves(rng, k, n_per_kind) for k in KINDS])
    n = len(g)
    s = rng.integers(1, 4, size=(n, L))
    s[::4] = 1
    Q = rng.integers(0, QMAX + 1, size=n)
    Q[::10] = 0
    return g, s, Q


def check_result(res, g, s, Q, opts, eps):
    """Feasible, value = Σ g[counts], (1 - eps)·OPT <= value <= OPT <= bound."""
    n_inexact = 0
    for i in range(len(g)):
        opt = opts[i]
        counts = np.asarray(res.counts[i])
        v, b = float(res.value[i]), float(res.bound[i])
        assert (counts >= 0).all() and (counts * s[i]).sum() <= Q[i]
        assert sum(g[i, l, counts[l]] for l in range(L)) == pytest.approx(v, rel=1e-5, abs=1e-5)
        assert v <= opt + 1e-5 * (1 + abs(opt))
        assert v >= (1 - eps) * opt - 1e-5 * (1 + abs(opt))
        assert b >= opt - 1e-5 * (1 + abs(opt))
        assert b >= v
        n_inexact += v < opt - 1e-4 * (1 + abs(opt))
    return n_inexact


def test_fptas_levels():
    assert fptas_levels(64, 0.1) == 1281  # 2·64/0.1 + 1
    assert fptas_levels(64, 0.1, Qmax=8192) == 1281
    assert fptas_levels(3, 0.5, Qmax=2) == 9  # at most Qmax layers can be used: n = 2
    assert fptas_levels(3, 0.3) == 21
    assert 0 < DEFAULT_EPS < 1 and "fptas" in BACKENDS


@pytest.mark.parametrize("eps", [0.9, 0.5, 0.2])
def test_fptas_guarantee_against_enumeration(eps):
    """Profit table (Qmax=None): the (1 - eps) guarantee and the certified bound hold on every
    problem, also for coarse eps where the rounding does lose value (so the check has teeth)."""
    g, s, Q = mixed_problems(31)
    opts = [brute_dp(g[i], s[i], Q[i]) for i in range(len(g))]
    res = batched("fptas", None, eps)(jnp.asarray(g, jnp.float32), jnp.asarray(s, jnp.int32), jnp.asarray(Q, jnp.int32))
    n_inexact = check_result(res, g, s, Q, opts, eps)
    if eps == 0.9:
        assert n_inexact > 0  # 8 profit levels for 3 layers: the rounding is visible
    for i in np.flatnonzero(Q == 0):
        assert (np.asarray(res.counts[i]) == 0).all() and float(res.value[i]) == 0.0


def test_fptas_matches_numpy_reference(x64):
    """Same counts, value and certified bound as the NumPy reference, in float64."""
    g, s, Q = mixed_problems(41, n_per_kind=8)
    for eps, qmax in ((0.5, None), (0.25, None)):
        res = batched("fptas", qmax, eps)(jnp.asarray(g), jnp.asarray(s), jnp.asarray(Q))
        assert res.value.dtype == jnp.float64
        for i in range(len(g)):
            v, c, b = dp_fptas_ref(g[i], s[i], Q[i], eps, qmax)
            np.testing.assert_array_equal(np.asarray(res.counts[i]), c)
            assert float(res.value[i]) == pytest.approx(v, rel=1e-12, abs=1e-12)
            assert float(res.bound[i]) == pytest.approx(b, rel=1e-9, abs=1e-12)


def test_fptas_exact_when_the_capacity_table_is_smaller():
    """With Qmax + 1 <= the profit levels fptas solves exactly: the counts, value and table of
    ``dense`` (its fused kernel has the same smallest-count tie rule; integer curves make ties)."""
    rng = np.random.default_rng(12)
    g, s, Q = mixed_problems(13, n_per_kind=8)
    ties = rng.integers(0, 3, size=(16, L, C1)).astype(float)
    ties[..., 0] = 0
    g = np.concatenate([g, np.cumsum(ties, axis=-1)])
    s = np.concatenate([s, rng.integers(1, 3, size=(16, L))])
    Q = np.concatenate([Q, rng.integers(0, QMAX + 1, size=16)])
    args = (jnp.asarray(g, jnp.float32), jnp.asarray(s, jnp.int32), jnp.asarray(Q, jnp.int32))
    assert fptas_levels(L, DEFAULT_EPS, QMAX) > QMAX + 1
    dense = batched("dense", QMAX)(*args)
    fast = batched("fptas", QMAX)(*args)
    fused = jax.vmap(lambda g, s, q: _exact(g, s, q, QMAX))(*args)
    # Bitwise equal although compiled separately: every table entry is the max (exact) of the same
    # float additions G[q - c·s] + g[c], done in the same order by both kernels.
    for r in (fast, fused):
        np.testing.assert_array_equal(np.asarray(r.counts), np.asarray(dense.counts))
        np.testing.assert_array_equal(np.asarray(r.value), np.asarray(dense.value))
        np.testing.assert_array_equal(np.asarray(r.bound), np.asarray(dense.value))
    np.testing.assert_array_equal(np.asarray(fused.table), np.asarray(dense.table))


def test_fptas_many_layers_against_dense(x64):
    """16 layers, 12 counts, mixed sizes, capacities up to 120 units (profit table of 2·16/eps
    levels): the guarantee and the bound against the exact DP."""
    rng = np.random.default_rng(29)
    n, Lb, Cb = 32, 16, 13
    inc = rng.random((n, Lb, Cb - 1)) * (rng.random((n, Lb, Cb - 1)) < 0.6) * rng.uniform(0.2, 3, (n, Lb, 1))
    inc[: n // 2, :, ::2] = 0  # half the problems: only pairs are worth anything
    g = np.concatenate([np.zeros((n, Lb, 1)), np.cumsum(inc, -1)], -1)
    s = rng.integers(1, 10, size=(n, Lb))
    Q = rng.integers(0, 120, size=n)
    args = (jnp.asarray(g), jnp.asarray(s, jnp.int32), jnp.asarray(Q, jnp.int32))
    opt = np.asarray(batched("dense", 120)(*args).value)
    for eps in (0.2,):
        res = batched("fptas", None, eps)(*args)
        v, b = np.asarray(res.value), np.asarray(res.bound)
        assert ((np.asarray(res.counts) * s).sum(-1) <= Q).all()
        assert (v >= (1 - eps) * opt - 1e-9).all() and (v <= opt + 1e-9).all()
        assert (b >= opt - 1e-9).all()


@pytest.mark.slow
def test_fptas_on_real_layer_curves():
    """Layer-oracle curves of mixtral_8x7b instances (far from concave): the profit table keeps
    the guarantee and bound against the exact DP, and the solver's configuration (Qmax given,
    capacity table smaller) is exact; the hull loses value on these curves."""
    from tests.maxconv_curves import model_problems

    pr = model_problems("mixtral_8x7b", 2)
    args = (jnp.asarray(pr.g), jnp.asarray(pr.s), jnp.asarray(pr.Q))
    opt = np.asarray(batched("dense", pr.Qmax)(*args).value)
    prof = batched("fptas", None, DEFAULT_EPS)(*args)
    v = np.asarray(prof.value)
    assert (v >= (1 - DEFAULT_EPS) * opt - 1e-5 * (1 + opt)).all() and (v <= opt + 1e-5 * (1 + opt)).all()
    assert (np.asarray(prof.bound) >= opt - 1e-5 * (1 + opt)).all()
    exact = batched("fptas", pr.Qmax, DEFAULT_EPS)(*args)
    np.testing.assert_array_equal(np.asarray(exact.value), opt)
    hull = np.asarray(batched("hull", pr.Qmax)(*args).value)
    assert (hull < opt - 1e-4 * opt).any()


@pytest.mark.slow
def test_successive_with_fptas_matches_dense_on_mixtral():
    """``maxconv="fptas"`` reaches the solver; on mixtral the capacity table is the smaller one,
    so the placements are the dense DP's (the same counts at every node, bitwise: see
    test_fptas_exact_when_the_capacity_table_is_smaller)."""
    import slimjax

    batch = slimjax.generate.instances(jax.random.key(0), 2, model="mixtral_8x7b")
    sols = {b: slimjax.solve_batch(batch, "successive", maxconv=b, oracle="exact")
            for b in ("dense", "fptas")}
    np.testing.assert_array_equal(np.asarray(sols["fptas"].placement), np.asarray(sols["dense"].placement))


def test_dual_bound_is_the_lp_bound(x64):
    """The bisection on the Lagrangian dual reaches the LP bound over the concave envelopes (the
    hull's, NumPy reference) and bounds the optimum, also with equal slopes across layers (ties)."""
    from slimjax.ops._maxconv import _dual_bound

    g, s, Q = mixed_problems(17, n_per_kind=6)
    rng = np.random.default_rng(2)
    ties = np.cumsum(rng.integers(0, 2, size=(12, L, C1)).astype(float), axis=-1)
    ties[..., 0] = 0
    g = np.concatenate([g, ties])
    s = np.concatenate([s, np.ones((12, L), int)])
    Q = np.concatenate([Q, rng.integers(0, QMAX + 1, size=12)])
    c = np.arange(C1)[None, None, :]
    ok = ((c * s[..., None]) <= Q[:, None, None]) & ((g >= 0) | (c == 0))
    ub, lb = jax.vmap(_dual_bound)(jnp.asarray(g), jnp.asarray(s, jnp.int32), jnp.asarray(Q, jnp.int32), jnp.asarray(ok))
    for i in range(len(g)):
        lp = dp_hull_ref(np.where(ok[i], g[i], -1.0), s[i], Q[i])[2]  # unusable counts never on the envelope
        opt = brute_dp(g[i], s[i], Q[i])
        assert float(ub[i]) == pytest.approx(max(lp, 0.0), rel=1e-9, abs=1e-9)
        assert float(ub[i]) >= opt - 1e-9
        # lb is the value of a feasible choice, and the LP argument puts it within a factor 2 of ub
        assert float(lb[i]) <= opt + 1e-9
        assert float(lb[i]) >= float(ub[i]) / 2 - 1e-6 * (1 + float(ub[i]))


@pytest.mark.parametrize("C1", [2, 9, 65, 257])
def test_upper_envelope_matches_the_pairwise_definition(C1):
    """upper_envelope loops over the offset j - i (unrolled by 8): on every curve length, including
    ones not a multiple of 8, ``on`` and ``nxt`` equal the definition evaluated on all pairs in NumPy
    (float32 slopes, computed by the same subtraction and division, so exact equality)."""
    rng = np.random.default_rng(C1)
    for trial in range(6):
        inc = np.sort(rng.exponential(size=C1 - 1))[::-1] + (rng.uniform(size=C1 - 1) < 0.2) * rng.exponential(size=C1 - 1)
        g = np.concatenate([[0.0], np.cumsum(inc)]).astype(np.float32)
        if trial % 2:
            g = np.round(g * 2) / 2  # ties and collinear runs
        cmax = int(rng.integers(0, C1))
        tol = np.float32(64 * np.finfo(np.float32).eps * (np.abs(g).max() + np.finfo(np.float32).tiny))
        c = np.arange(C1)
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = (g[None, :] - g[:, None]) / (c[None, :] - c[:, None]).astype(np.float32)
        lower = c[:, None] < c[None, :]
        valid = c <= cmax
        left = np.where(lower & valid[:, None], slope, np.inf).min(axis=0)
        right = np.where(lower & valid[None, :], slope, -np.inf).max(axis=1)
        on_ref = valid & (left >= right - tol)
        nxt_ref = np.where(lower & on_ref[None, :], c[None, :], C1).min(axis=1)
        on, nxt = upper_envelope(jnp.asarray(g), cmax)
        np.testing.assert_array_equal(np.asarray(on), on_ref)
        np.testing.assert_array_equal(np.asarray(nxt), nxt_ref)
