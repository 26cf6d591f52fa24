"""Certified lower bounds (slimjax.bounds): validity against brute force on many tiny instances,
agreement with HiGHS on the same LPs, validity at arbitrary dual points, batch vs loop, jit vs
eager, certify, bad input.

Tolerances. Bounds are float64 values of dual functions; the brute-force optimum J* is recomputed
in float64 (x64 on, the same float32 data cast exactly), so a valid bound satisfies
``bound ≤ J*`` up to the 1e-9 relative rounding margin the bounds subtract themselves: we assert
``bound ≤ J*·(1 + 1e-12)``. HiGHS reports its LP optimum with a 1e-7 feasibility tolerance, so
"equal to HiGHS" is checked to 1e-5 relative (the PDHG stopping tolerance) and "never above" to
1e-6 relative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slimjax
from slimjax.bounds import BoundStatus, certify, lower_bound, objective64
from slimjax.bounds import _assignment, _highs_lp, _levels, _pdhg, _threshold
from slimjax.bounds._api import host_batch
from slimjax.solvers._exact import brute_force_instance
from tests.helpers import random_instance

VALID_RTOL = 1e-12


def _tiny_batch(n=24, **shape):
    """Tiny random instances of one shape: several users, unreachable nodes, zero-weight padding,
    some zero capacities, some patterns that repeat an id, and some K = 1 instances (every
    pattern repeats one id, so its max is that expert's latency)."""
    shape = dict(dict(U=2, N=2, L=2, E=3, M=4, K=2), **shape)
    out = []
    for s in range(n):
        inst = random_instance(seed=100 + s, pad=1, **shape)
        cap = np.asarray(inst.capacity).copy()
        pat = np.asarray(inst.patterns).copy()
        if s % 5 == 0:
            cap[s % len(cap)] = 0.0
        if s % 7 == 3 and shape["K"] > 1:
            pat[0, 0, 0, :] = pat[0, 0, 0, 0]
        if s % 6 == 1:
            pat[...] = pat[..., :1]
        out.append(inst.replace(capacity=cap, patterns=pat))
    return slimjax.stack(out)


def _optimum64(batch, aggregation="max", placements=False):
    """Exact optimum of every instance (brute force on the float32 data, in float64)."""
    with jax.enable_x64(True):
        b64 = batch.astype(jnp.float64)
        res = [brute_force_instance(b64[i], aggregation=aggregation) for i in range(len(batch))]
        opt = np.array([float(r[1]) for r in res])
        if placements:
            return opt, np.stack([np.asarray(r[0]) for r in res])
        return opt


@pytest.fixture(scope="module")
def tiny():
    batch = _tiny_batch()
    opt, x_opt = _optimum64(batch, placements=True)
    bounds = {m: lower_bound(batch, m) for m in ("levels", "threshold", "lp", "auto")}
    return batch, opt, bounds, x_opt


# -- validity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["levels", "threshold", "lp", "auto"])
def test_bound_below_brute_force_optimum(tiny, method):
    batch, opt, bounds, _ = tiny
    v = bounds[method].value
    assert v.shape == opt.shape and np.isfinite(v).all()
    assert (v <= opt * (1 + VALID_RTOL)).all(), (method, np.max(v / opt - 1))
    assert (v > 0).all()


def _threshold_lp_value(batch):
    """HiGHS's optimum of the threshold LP (fractional knapsack) of every instance."""
    data = _threshold.build(host_batch(batch), "max")
    return np.array([_highs_lp.threshold_highs_one(data, b, None, None)[2] for b in range(len(batch))])


def test_threshold_reaches_its_lp_and_auto_the_best_of_both(tiny):
    batch, opt, b, _ = tiny
    lp = _threshold_lp_value(batch)
    assert (lp <= opt * (1 + 1e-6)).all()
    # the certified value uses the exact 0/1 knapsack, so it may exceed the LP (sizes differ here)
    assert (b["threshold"].value >= lp * (1 - 2e-5)).all()
    assert (b["auto"].value >= np.maximum(b["levels"].value, lp) * (1 - 2e-5)).all()
    assert (b["auto"].value >= b["levels"].value).all()
    assert b["threshold"].value.mean() > b["lp"].value.mean()  # the stronger formulation pays here


def test_bound_below_optimum_one_user_k3():
    shape = dict(U=1, N=2, L=2, E=3, M=4, K=3)
    batch = _tiny_batch(8, **shape)
    opt = _optimum64(batch)
    for method in ("levels", "threshold"):
        v = lower_bound(batch, method).value
        assert (v <= opt * (1 + VALID_RTOL)).all(), (method, shape, np.max(v / opt - 1))


@pytest.mark.slow
def test_sum_aggregation_below_optimum():
    batch = _tiny_batch(8, U=1, N=2, L=2, E=3, M=3, K=2)
    opt = _optimum64(batch, "sum")
    for method in ("levels", "threshold"):
        v = lower_bound(batch, method, aggregation="sum").value
        assert (v <= opt * (1 + VALID_RTOL)).all(), (method, np.max(v / opt - 1))
        print(method, np.median(opt / v - 1))


def test_zero_and_ample_capacity_are_tight(tiny):
    batch, _, _, _ = tiny
    B, N, L, E = len(batch), *batch.latency.shape[2:]
    empty = objective64(batch, np.zeros((B, N, L, E), bool))
    full = objective64(batch, np.ones((B, N, L, E), bool))
    zero = batch.replace(capacity=np.zeros((B, N), np.float32))
    ample = batch.replace(capacity=np.full((B, N), 1e3, np.float32))
    for method in ("levels", "threshold"):
        np.testing.assert_allclose(lower_bound(zero, method).value, empty, rtol=1e-6)
        np.testing.assert_allclose(lower_bound(ample, method).value, full, rtol=1e-6)
        assert (lower_bound(zero, method).value <= empty * (1 + VALID_RTOL)).all()


def test_coarse_level_grid_is_valid_and_weaker(tiny):
    batch, opt, bounds, _ = tiny
    coarse = lower_bound(batch, "levels", max_levels=2).value
    assert (coarse <= opt * (1 + VALID_RTOL)).all()
    assert (coarse <= bounds["levels"].value * (1 + 1e-6)).all()


def test_iteration_limit_still_valid(tiny):
    batch, opt, bounds, _ = tiny
    r = lower_bound(batch, "threshold", max_iters=64)
    assert (r.status == BoundStatus.ITERATION_LIMIT).any() and (r.status_names == "iteration_limit").any()
    assert (r.iterations <= 64).all()
    assert (r.value <= opt * (1 + VALID_RTOL)).all()
    assert (r.value <= bounds["threshold"].value * (1 + 1e-6)).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dual_value_is_a_bound_at_any_dual_point(tiny, seed):
    """Weak duality: the certified value at random (even negative, oversized) multipliers."""
    batch, opt, _, _ = tiny
    mb = host_batch(batch)
    rng = np.random.default_rng(seed)
    d = _threshold.build(mb)
    mu = rng.normal(size=d["act"].shape) * d["c"][:, :, :, :, None, :] * 3
    assert (_threshold.dual_value64(d, (mu, None)) <= opt * (1 + VALID_RTOL)).all()
    a = _assignment.build(mb)
    dual = tuple(rng.exponential(size=a[k].shape) * s for k, s in
                 (("useful", 0.01), ("anyu", 0.01), ("gm", 0.05), ("qcap", 0.01)))
    assert (_assignment.dual_value64(a, dual) <= opt * (1 + VALID_RTOL)).all()


# -- agreement with HiGHS on the same LP -------------------------------------------------------


def test_lp_equals_highs_lp(tiny):
    batch, _, bounds, _ = tiny
    ref = lower_bound(batch, "highs").value
    v = lower_bound(batch, "lp", rtol=1e-6).value
    assert (v <= ref * (1 + 1e-6)).all()
    np.testing.assert_allclose(v, ref, rtol=2e-5)
    assert (bounds["lp"].value <= ref * (1 + 1e-6)).all()


def test_threshold_on_highs_is_valid_and_matches(tiny):
    batch, opt, bounds, _ = tiny
    ref = lower_bound(batch, "threshold-highs")
    assert (ref.status == BoundStatus.OPTIMAL).all()
    assert (ref.value <= opt * (1 + VALID_RTOL)).all()
    assert (ref.value >= _threshold_lp_value(batch) * (1 - 1e-6)).all()


@pytest.mark.slow
def test_medium_instances_match_highs():
    model = dict(name="small", layers=6, experts=8, top_k=2, hidden=1024, ffn=2048)
    batch = slimjax.generate.instances(jax.random.key(3), 3, model=model, network=dict(storage_fraction=0.4))
    for ours, ref in (("lp", "highs"), ("threshold", "threshold-highs")):
        v, r = lower_bound(batch, ours, rtol=1e-6).value, lower_bound(batch, ref).value
        assert (v <= r * (1 + 1e-6)).all()  # equal sizes: the exact knapsack is the LP's
        np.testing.assert_allclose(v, r, rtol=2e-5)
    sol = slimjax.solve_batch(batch, "successive")
    assert (lower_bound(batch).value <= objective64(batch, sol.placement) * (1 + VALID_RTOL)).all()


# -- batch vs loop, jit vs eager, operators ----------------------------------------------------


def test_batch_agrees_with_loop(tiny):
    batch, _, bounds, _ = tiny
    for method, idx in (("levels", (0, 7)), ("threshold", (7,))):
        for i in idx:
            one = lower_bound(batch[i], method)
            assert np.ndim(one.value) == 0 and np.ndim(one.status) == 0 and isinstance(one.status_names, str)
            np.testing.assert_allclose(one.value, bounds[method].value[i], rtol=1e-5)


@pytest.mark.parametrize("mod", [_threshold, _assignment])
def test_operators_adjoint_weak_duality_jit_eager(tiny, mod):
    batch, _, _, _ = tiny
    data = mod.to_device(mod.build(host_batch(batch)), jnp.float32)
    F = mod.FORMULATION
    rng = np.random.default_rng(0)
    d0 = jax.tree_util.tree_map(lambda a: a[0], data)
    rand = lambda tree, scale=1.0: jax.tree_util.tree_map(  # noqa: E731
        lambda a: jnp.asarray(scale * rng.random((len(batch),) + a.shape), jnp.float32), tree)
    v, y = rand(F.upper(d0)), rand(F.rhs(d0), 0.1)
    if mod is _threshold:
        # the threshold LP's K and Kᵀ are adjoint on the dual points PDHG visits: 0 on the rows that
        # do not exist (their step σ is 0 and they start at 0; K reads F = 1 there, see _threshold._K)
        y = (y[0] * data.act, y[1])

    @jax.jit
    def checks(data, v, y):
        def one(d, vv, yy):
            kty = F.KT(d, yy)
            return _pdhg._dot(F.K(d, vv), yy), _pdhg._dot(vv, kty), F.primal(d, vv), F.bound(d, yy, kty)
        return jax.vmap(one)(data, v, y)

    lhs, rhs, primal, dual = (np.asarray(t, np.float64) for t in checks(data, v, y))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5, atol=1e-5)  # ⟨Kv, y⟩ = ⟨v, Kᵀy⟩
    assert (primal >= dual - 1e-4 * np.abs(primal)).all()  # repaired primal point vs any dual point
    v0, y0 = (jax.tree_util.tree_map(lambda a: a[0], t) for t in (v, y))
    for f, arg in ((F.K, v0), (F.KT, y0)):
        for e, j in zip(jax.tree_util.tree_leaves(f(d0, arg)), jax.tree_util.tree_leaves(jax.jit(f)(d0, arg))):
            np.testing.assert_allclose(np.asarray(e), np.asarray(j), rtol=1e-5, atol=1e-6)


def test_threshold_regular_layout_matches_general(tiny):
    """Where every row of the threshold LP has speed rank i + 1 at interval i (node-wise
    latencies), the device data keeps one index per member (``slot``) instead of one per row:
    its F(x) and Kᵀμ equal the general layout's, and its bound is valid and equals the batch's
    (which takes the general layout: the tiny batch as a whole is not regular)."""
    batch, opt, bounds, _ = tiny
    assert _threshold.build(host_batch(batch))["slot"].shape[-1] == 0
    regular = [i for i in range(len(batch)) if _threshold.build(host_batch(batch[i : i + 1]))["slot"].shape[-1]]
    assert regular
    rng = np.random.default_rng(1)
    for i in regular[:4]:
        d64 = _threshold.build(host_batch(batch[i : i + 1]))
        gen = dict(d64, slot=np.zeros(d64["slot"].shape[:-1] + (0,), np.int32))
        dr, dg = (jax.tree_util.tree_map(lambda a: a[0], _threshold.to_device(d, jnp.float32)) for d in (d64, gen))
        assert dr.fidx.shape[-1] == 0 and dg.fidx.shape[-1] > 0
        U, L, E, N = dr.xgather.shape
        x = jnp.asarray(rng.random((N, L, E)), jnp.float32)
        act = np.asarray(dr.act) > 0
        np.testing.assert_allclose(np.asarray(_threshold._F(dr, x))[act], np.asarray(_threshold._F(dg, x))[act],
                                   rtol=1e-6)
        mu = jnp.asarray(rng.random(act.shape) * act, jnp.float32)
        np.testing.assert_allclose(np.asarray(_threshold._r(dr, mu)), np.asarray(_threshold._r(dg, mu)), rtol=1e-6)
        one = lower_bound(batch[i], "threshold")
        assert one.value <= opt[i] * (1 + VALID_RTOL)
        np.testing.assert_allclose(one.value, bounds["threshold"].value[i], rtol=1e-5)


def test_in_loop_bound_matches_float64_value(tiny):
    """The float32 bound that picks the kept dual point is the fractional-knapsack value: at most the
    certified float64 value (exact 0/1 knapsack), and equal to it when all sizes are equal."""
    batch, _, _, _ = tiny
    fn = jax.jit(jax.vmap(lambda d, t: _threshold.FORMULATION.bound(d, t, None)))
    for b in (batch, batch.replace(size=np.ones_like(np.asarray(batch.size)))):
        d64 = _threshold.build(host_batch(b))
        data = _threshold.to_device(d64, jnp.float32)
        y = jax.vmap(_threshold.initial_dual)(data)
        in_loop = np.asarray(fn(data, y), np.float64)
        cert = _threshold.dual_value64(d64, jax.tree_util.tree_map(np.asarray, y))
        assert (cert >= in_loop - 1e-5 * np.abs(cert)).all()
    np.testing.assert_allclose(cert, in_loop, rtol=1e-5)


def test_levels_jit_matches_eager(tiny):
    batch, _, _, _ = tiny
    d = _levels.build(host_batch(batch[:2]))
    args = [jnp.asarray(d[k], jnp.float32 if k == "w" else jnp.int32) for k in
            ("masks", "w", "free", "elig", "cap", "s_hat")]
    E = batch.latency.shape[-1]
    one = [a[0] for a in args]
    eager = _levels._opt_one(*one, E=E, qmax=int(d["qmax"]))
    jitted = _levels.level_opt(*args, E=E, qmax=int(d["qmax"]))[0]
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=1e-6)


def test_second_call_does_not_recompile(tiny):
    batch, _, _, _ = tiny
    r = lower_bound(batch, "threshold")
    assert r.compile_seconds == 0.0 and r.seconds > 0


# -- certify ------------------------------------------------------------------------------------


def test_certify_placements_and_values(tiny):
    batch, opt, bounds, x_opt = tiny
    J = objective64(batch, x_opt)
    np.testing.assert_allclose(J, opt, rtol=1e-12)
    np.testing.assert_allclose(J, np.asarray(slimjax.objective(batch, x_opt)), rtol=1e-5)
    c = certify(batch, x_opt, bound=bounds["auto"])
    np.testing.assert_allclose(c.objective, J, rtol=1e-12)
    np.testing.assert_allclose(c.gap, J / bounds["auto"].value - 1, rtol=1e-12)
    assert (c.gap >= 0).all()
    c2 = certify(batch, J, bound=bounds["auto"])
    np.testing.assert_allclose(c2.gap, c.gap)

    class Sol:  # anything with a .placement, like a solver's Solution
        placement = x_opt

    np.testing.assert_allclose(certify(batch, Sol(), bound=bounds["auto"]).gap, c.gap)


def test_certify_single_instance_with_target(tiny):
    batch, opt, _, x_opt = tiny
    c = certify(batch[3], x_opt[3], method="levels", target_gap=0.5)
    assert np.ndim(c.gap) == 0 and c.gap >= 0 and c.bound.status in (BoundStatus.TARGET, BoundStatus.SOLVED)
    assert c.objective == pytest.approx(opt[3], rel=1e-12)


def test_certify_refuses_infeasible_and_impossible(tiny):
    batch, _, bounds, _ = tiny
    B, N, L, E = len(batch), *batch.latency.shape[2:]
    with pytest.raises(ValueError, match="placement: infeasible"):
        certify(batch, np.ones((B, N, L, E), bool), bound=bounds["auto"])
    with pytest.raises(ValueError, match="objective: instance 0"):
        certify(batch, bounds["auto"].value * 0.5, bound=bounds["auto"])
    with pytest.raises(ValueError, match="solution: expected"):
        certify(batch, np.zeros((B, N, L)), bound=bounds["auto"])


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, msg", [
    (dict(method="simplex"), "method: unknown"),
    (dict(aggregation="mean"), "aggregation"),
    (dict(max_iters=0), "max_iters"),
    (dict(check_every=2.5), "check_every"),
    (dict(rtol=-1.0), "rtol"),
    (dict(target_gap=-0.1), "target_gap"),
    (dict(time_limit=0), "time_limit"),
    (dict(upper=np.ones(3)), "upper: expected"),
    (dict(max_levels=0), "max_levels"),
])
def test_bad_options(tiny, kw, msg):
    batch, _, _, _ = tiny
    with pytest.raises(ValueError, match=msg):
        lower_bound(batch, **kw)


def test_bad_batch_and_large_e_levels():
    with pytest.raises(ValueError, match="batch: expected"):
        lower_bound(np.zeros(3))
    inst = random_instance(seed=0, U=1, N=1, L=1, E=17, M=2, K=2)
    with pytest.raises(ValueError, match="E <= 16"):
        lower_bound(inst, "levels")


# -- the public entry points ------------------------------------------------------------------------


def test_public_lower_bound_and_certify(tiny):
    """slimjax.lower_bound / slimjax.certify are the bounds functions; "highs" is the HiGHS LP, and a
    solver's Solution is certified as its placement."""
    batch, opt, bounds, x_opt = tiny
    pub = slimjax.lower_bound(batch)
    np.testing.assert_array_equal(pub.value, bounds["auto"].value)  # same deterministic computation
    assert pub.value.shape == pub.status.shape == (len(batch),)
    hi = slimjax.lower_bound(batch[:4], "highs")
    assert (hi.status == BoundStatus.OPTIMAL).all() and (hi.value <= opt[:4] * (1 + 1e-6)).all()  # HiGHS tolerance
    sol = slimjax.solve_batch(batch, "successive-best")
    c = slimjax.certify(batch, sol)
    J = objective64(batch, np.asarray(sol.placement))
    np.testing.assert_allclose(c.objective, J, rtol=1e-12)
    assert (c.gap >= 0).all() and (c.lower <= opt * (1 + VALID_RTOL)).all()
    np.testing.assert_allclose(c.gap, J / c.lower - 1, rtol=1e-12)
    assert c.status.shape == (len(batch),) and c.seconds >= 0
    c1 = slimjax.certify(batch[2], np.asarray(sol.placement)[2])
    assert np.ndim(c1.gap) == 0 and c1.lower <= opt[2] * (1 + VALID_RTOL)
