"""Bounds as objects (slimjax.bounds): every method object against its string form (identical
results), validation naming the field, the integer status, the PDHG solver object (init / step /
terminate), the one compile cache, the warm start from a placement, and chunking to
``memory_budget_mb`` (every compiled bound program's XLA footprint within the budget)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slimjax
from slimjax import _compile
from slimjax.bounds import (METHODS, AssignmentLP, Auto, BoundStatus, HighsLP, Levels, ThresholdHighs, ThresholdLP,
                            Trivial, as_method, certify, lower_bound)
from slimjax.bounds import _api, _pdhg, _threshold
from tests.helpers import random_instance

VALID_RTOL = 1e-12


@pytest.fixture(scope="module")
def small():
    """Six tiny instances with node latencies that differ between experts (so ``auto`` runs both
    of its bounds)."""
    return slimjax.stack([random_instance(seed=300 + s, U=2, N=2, L=2, E=3, M=4, K=2) for s in range(6)])


# (name, string-form options, the object): every method of METHODS, options that apply to it
CASES = [
    ("auto", dict(max_iters=256, max_levels=4), Auto(max_iters=256, max_levels=4)),
    ("levels", dict(max_levels=4), Levels(max_levels=4)),
    ("threshold", dict(max_iters=256, rtol=1e-4), ThresholdLP(max_iters=256, rtol=1e-4)),
    ("lp", dict(max_iters=128, check_every=32), AssignmentLP(max_iters=128, check_every=32)),
    ("threshold-highs", dict(threads=1), ThresholdHighs(threads=1)),
    ("highs", dict(time_limit=30.0), HighsLP(time_limit=30.0)),
    ("trivial", {}, Trivial()),
]


def test_every_method_has_an_object():
    assert [c[0] for c in CASES] == list(METHODS)
    for name, _, obj in CASES:
        assert obj.name == name and as_method(name) == type(obj)()
        assert hash(obj) == hash(dataclasses.replace(obj))  # frozen, hashable: a static program argument
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.name2 = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("name, kw, obj", CASES, ids=[c[0] for c in CASES])
def test_string_form_equals_object(small, name, kw, obj):
    if "highs" in name:
        pytest.importorskip("highspy")
    by_name = lower_bound(small, name, **kw)
    by_obj = lower_bound(small, obj)
    np.testing.assert_array_equal(by_name.value, by_obj.value)  # the same programs on the same data
    np.testing.assert_array_equal(by_name.status, by_obj.status)
    np.testing.assert_array_equal(by_name.iterations, by_obj.iterations)
    assert by_name.method == by_obj.method == name
    assert by_obj.status.dtype == np.int8
    assert set(by_obj.status_names) <= {s.name.lower() for s in BoundStatus}
    c = certify(small, by_obj.value * 1.01, obj)
    assert (c.status == by_obj.status).all() or "threshold" in name or name in ("auto", "lp")  # target stops


def test_legacy_options_of_other_methods_are_ignored_but_checked(small):
    a = lower_bound(small, "levels", max_iters=5, threads=2, time_limit=1.0)  # the 1.x signature
    np.testing.assert_array_equal(a.value, lower_bound(small, Levels()).value)
    with pytest.raises(ValueError, match="max_iters"):
        lower_bound(small, "levels", max_iters=0)  # still validated, as before
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['bogus'\]"):
        lower_bound(small, "levels", bogus=1)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['max_iters'\] for bound 'levels'"):
        lower_bound(small, Levels(), max_iters=5)  # an object takes only its own options
    assert lower_bound(small, Levels(), max_levels=2).value.shape == (len(small),)


@pytest.mark.parametrize("make, msg", [
    (lambda: Levels(max_levels=0), "max_levels: must be an integer >= 1"),
    (lambda: Levels(dtype="int8"), "dtype"),
    (lambda: ThresholdLP(rtol=1.5), "rtol: must be a number in"),
    (lambda: ThresholdLP(max_iters=2.5), "max_iters"),
    (lambda: AssignmentLP(time_limit=-1), "time_limit"),
    (lambda: HighsLP(threads=0), "threads"),
    (lambda: Auto(patience=True), "patience"),
    (lambda: ThresholdLP(coarse_patterns=0), "coarse_patterns: must be an integer >= 1"),
    (lambda: Auto(coarse_patterns=2.5), "coarse_patterns"),
    (lambda: ThresholdLP(coarse_iters=None), "coarse_iters: must be an integer >= 1"),
    (lambda: as_method("simplex"), "method: unknown bound method"),
])
def test_validation_names_the_field(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


def test_string_form_takes_the_methods_own_options():
    """Options added after 1.x (the coarse warm start's) work with a name as with the object; an
    option of no 1.x form and not the method's own is refused, naming the valid ones."""
    assert as_method("auto", {"coarse_patterns": None}) == Auto(coarse_patterns=None)
    assert as_method("threshold", {"coarse_iters": 64, "max_iters": 128}) == ThresholdLP(coarse_iters=64, max_iters=128)
    assert as_method("levels", {"max_iters": 128}) == Levels()  # a 1.x option of another method: ignored
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['coarse_patterns'\] for bound 'levels'"):
        as_method("levels", {"coarse_patterns": 4})


def test_status_enum_and_names(small):
    r = lower_bound(small, ThresholdLP(max_iters=64))
    assert r.status.dtype == np.int8 and (r.status == BoundStatus.ITERATION_LIMIT).any()
    assert (r.status_names[r.status == BoundStatus.ITERATION_LIMIT] == "iteration_limit").all()
    one = lower_bound(small[0], Trivial())
    assert one.status == BoundStatus.EXACT and one.status_names == "exact"


def test_pdhg_object_init_step_terminate(small):
    """``run`` is ``step`` until ``terminate`` (one compiled loop vs the steps one by one: the same
    iterates, up to float32 reassociation between the two programs); a terminated instance is
    left unchanged by a further step."""
    d64 = _threshold.build(_api.host_batch(small))
    data = _threshold.to_device(d64, jnp.float32)
    solver = _pdhg.PDHG(_threshold.FORMULATION, check_every=16, patience=4)
    B = len(small)
    ctl = _pdhg.Controls(jnp.full(B, jnp.inf), jnp.float32(1e-4), jnp.float32(1e-7), jnp.int32(10 * 16))
    st = solver.init(data, jnp.full(B, -jnp.inf))
    assert not np.asarray(solver.terminate(st, ctl)).any()
    step = jax.jit(solver.step)
    s1 = st
    for _ in range(10):
        s1 = step(data, s1, ctl)
    s2 = jax.jit(lambda d, s, c: solver.run(d, s, c, 10))(data, st, ctl)
    assert np.asarray(solver.terminate(s1, ctl)).all()  # the iteration cap at the latest
    np.testing.assert_array_equal(np.asarray(s1.iters), np.asarray(s2.iters))
    np.testing.assert_allclose(np.asarray(s1.best_bound), np.asarray(s2.best_bound), rtol=1e-4)
    s3 = step(data, s1, ctl)
    for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s3)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bounds_use_the_one_compile_cache(small):
    assert not hasattr(_api, "_COMPILED") and not hasattr(_pdhg, "run_chunks")
    _compile.clear_cache()
    first = lower_bound(small, Auto(max_iters=64))
    names = {n for n, _ in _compile.compiled_programs()}
    assert {"_level_program", "_init_program", "_run_program"} <= names
    again = lower_bound(small, Auto(max_iters=64))
    assert first.compile_seconds > 0 and again.compile_seconds == 0.0
    np.testing.assert_array_equal(first.value, again.value)


def test_warm_start_from_a_placement_is_valid(small):
    """The threshold LP started from a placement: still a valid bound (the value is a dual function
    whatever the start), below that placement's J, and certify passes its placement on."""
    sol = slimjax.solve_batch(small, "successive")
    x = np.asarray(sol.placement)
    J = _api.objective64(small, x)
    warm = lower_bound(small, ThresholdLP(max_iters=256), placement=x)
    cold = lower_bound(small, ThresholdLP(max_iters=256))
    assert (warm.value <= J * (1 + VALID_RTOL)).all()
    np.testing.assert_allclose(warm.value, cold.value, rtol=1e-3)  # both near the LP optimum
    with pytest.raises(ValueError, match="placement: expected shape"):
        lower_bound(small, ThresholdLP(), placement=x[:, :1])


# -- chunking to the memory budget ---------------------------------------------------------------


@pytest.mark.parametrize("model, method", [pytest.param("phi3_5_moe", Levels(), marks=pytest.mark.slow),
                                           ("olmoe_1b_7b", ThresholdLP(max_iters=64))],
                         ids=["phi3_5_moe-levels", "olmoe-threshold"])
def test_every_bound_program_within_a_small_budget(model, method):
    """Multi-user instances: with a small budget every compiled bound program's XLA footprint
    (arguments + outputs + temporaries, ``memory_analysis``) stays within it, while one program
    for the whole batch would not; the values agree (the same per-instance computation in chunks:
    the programs differ in batch width only, hence the float32 tolerance of the PDHG iterates)."""
    batch = slimjax.generate.instances(jax.random.key(5), 6, model=model, network={"users": 4},
                                       routing={"tokens": 48})
    whole = lower_bound(batch, method, memory_budget_mb=4096.0)
    one = whole.peak_bytes / 2**20
    budget_mb = one / 3  # room for about two of the six instances
    small = lower_bound(batch, method, memory_budget_mb=budget_mb)
    assert 0 < small.peak_bytes <= budget_mb * 2**20, (small.peak_bytes / 2**20, budget_mb)
    assert whole.peak_bytes > budget_mb * 2**20  # the check above is not vacuous
    np.testing.assert_allclose(small.value, whole.value, rtol=1e-4)


# -- the PDHG schemes and the certificate-relative stop ---------------------------------------------


@pytest.mark.slow
def test_halpern_and_averaged_schemes_reach_the_same_lp(small):
    """The threshold LP by the reflected Halpern scheme (its default) and by PDLP's averaged scheme:
    the same LP value (the in-loop bound, the LP's own dual function; the float64 value with exact
    knapsacks may differ between two optimal duals where sizes differ), both certified values valid."""
    d64 = _threshold.build(_api.host_batch(small))
    data = _threshold.to_device(d64, jnp.float32)
    B = len(small)
    ctl = _pdhg.Controls(jnp.full(B, jnp.inf), jnp.float32(1e-6), jnp.float32(1e-7), jnp.int32(4096))
    vals, lp = {}, {}
    for halpern in (True, False):
        solver = _pdhg.PDHG(_threshold.FORMULATION, check_every=32, patience=8, halpern=halpern)
        st = jax.jit(lambda d, s, c, sv=solver: sv.run(d, s, c, 128))(data, solver.init(data, jnp.full(B, -jnp.inf)),
                                                                       ctl)
        ys = jax.tree_util.tree_map(np.asarray, st.best_y)
        vals[halpern] = _threshold.dual_value64(d64, ys)
        lp[halpern] = np.asarray(st.best_bound, np.float64)
    assert _threshold.HALPERN
    np.testing.assert_allclose(lp[True], lp[False], rtol=1e-4)
    J = _api.objective64(small, np.asarray(slimjax.solve_batch(small, "successive").placement))
    assert (vals[True] <= J * (1 + VALID_RTOL)).all() and (vals[False] <= J * (1 + VALID_RTOL)).all()


def test_gap_rtol_stops_early_and_stays_valid(small):
    """certify with the certificate-relative stop (``gap_rtol``): a valid bound, at most the
    iterations of running on (``gap_rtol=0``), status ``sufficient`` where it stopped on it;
    ``gap_rtol`` is validated and needs ``target_gap``. (Its promise concerns the LP's own value;
    the float64 value with exact knapsacks can rise further where sizes differ, as on these.)"""
    x = np.asarray(slimjax.solve_batch(small, "successive").placement)
    J = _api.objective64(small, x)
    on = certify(small, x, ThresholdLP(gap_rtol=0.0, max_iters=1024))
    stop = certify(small, x, ThresholdLP(gap_rtol=0.25, max_iters=1024))
    assert (stop.lower <= J * (1 + VALID_RTOL)).all()
    assert (stop.bound.iterations <= on.bound.iterations).all()
    suff = stop.status == BoundStatus.SUFFICIENT
    assert suff.any() and (stop.status_names[suff] == "sufficient").all()
    free = lower_bound(small, ThresholdLP(gap_rtol=0.25, max_iters=1024), upper=J)  # no target_gap: run on
    assert not (free.status == BoundStatus.SUFFICIENT).any()
    with pytest.raises(ValueError, match="gap_rtol"):
        ThresholdLP(gap_rtol=1.5)


def test_initial_primal_weight_scale(small):
    """``PDHG.omega_scale`` multiplies PDLP's initial primal weight ``‖c‖/‖q‖`` (nothing else in
    the initial state changes), and the bound the threshold LP reaches from a scaled start is valid."""
    d64 = _threshold.build(_api.host_batch(small))
    data = _threshold.to_device(d64, jnp.float32)
    B = len(small)
    one = _pdhg.PDHG(_threshold.FORMULATION).init(data, jnp.full(B, -jnp.inf))
    scale = 100.0
    big = _pdhg.PDHG(_threshold.FORMULATION, omega_scale=scale).init(data, jnp.full(B, -jnp.inf))
    want = np.clip(np.asarray(one.omega, np.float64) * scale, _pdhg.OMEGA_MIN, _pdhg.OMEGA_MAX)
    np.testing.assert_allclose(np.asarray(big.omega), want, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(one._replace(omega=big.omega)), jax.tree_util.tree_leaves(big)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = np.asarray(slimjax.solve_batch(small, "successive").placement)
    J = _api.objective64(small, x)
    old = _threshold.OMEGA_SCALE
    try:
        _threshold.OMEGA_SCALE = scale
        lb = lower_bound(small, ThresholdLP(max_iters=256))
    finally:
        _threshold.OMEGA_SCALE = old
    assert (lb.value <= J * (1 + VALID_RTOL)).all()


def test_coarse_warm_start_is_valid_and_runs(monkeypatch):
    """``ThresholdLP.coarse_patterns``: where every layer has at least ``COARSE_MIN_RATIO`` times
    that many patterns, the full LP starts from a coarse LP's solution (the coarse start is built
    exactly once per chunk); the bound stays valid and reaches the LP optimum as without it; the
    kept patterns carry the coarse multipliers divided by the weight scale."""
    batch = slimjax.stack([random_instance(seed=700 + s, U=1, N=2, L=2, E=8, M=40, K=3) for s in range(2)])
    host = _api.host_batch(batch)
    assert host.weight.shape[-1] >= 8 * 4
    x = np.asarray(slimjax.solve_batch(batch, "successive").placement)
    J = _api.objective64(batch, x)
    calls = []
    real = _threshold.coarse_start
    monkeypatch.setattr(_threshold, "coarse_start", lambda *a: calls.append(1) or real(*a))
    m = ThresholdLP(max_iters=2048, coarse_patterns=4, coarse_iters=128)
    on = lower_bound(batch, m, placement=x)
    assert len(calls) == 1
    off = lower_bound(batch, m.replace(coarse_patterns=None), placement=x)
    assert len(calls) == 1  # off: not built
    big = lower_bound(batch, m.replace(coarse_patterns=8), placement=x)  # 40 < 8 x 8: skipped
    assert len(calls) == 1
    np.testing.assert_array_equal(big.value, off.value)
    assert (on.value <= J * (1 + VALID_RTOL)).all()
    np.testing.assert_allclose(on.value, off.value, rtol=1e-3)
    # the mapping of the coarse multipliers
    chost, top, scale = _threshold.coarse_batch(host, 4)
    np.testing.assert_allclose(chost.weight.sum(-1), host.weight.sum(-1))
    d64 = _threshold.build(host)
    c64 = _threshold.build(chost)
    data = _threshold.to_device(d64, jnp.float32)
    rng = np.random.default_rng(0)
    muc = rng.random(c64["act"].shape).astype(np.float32) * c64["act"]
    _, (mu, lam) = _threshold.coarse_start(data, d64["act"], jnp.asarray(x, jnp.float32), muc,
                                       jnp.ones((2, 2), jnp.float32), top, scale)
    mu = np.asarray(mu)
    n = min(mu.shape[-1], muc.shape[-1])
    for b in range(2):
        for l in range(2):
            got = mu[b, 0, l, top[b, 0, l], :, :n]
            want = muc[b, 0, l, :, :, :n] / scale[b, 0, l] * d64["act"][b, 0, l, top[b, 0, l], :, :n]
            np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(lam), 1.0)
