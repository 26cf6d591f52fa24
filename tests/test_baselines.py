"""Baselines (§4.7): feasibility, closed forms, blind == greedy when K = 1, jit/vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slimjax
from slimjax.ops._fill import priority_fill as fill
from slimjax.ops._order import node_orders
from tests.helpers import assert_same_solutions, random_instance
from tests.reference import feasible_ref, latency_ref

BASELINES = ["random", "popularity", "layer-uniform", "coactivation-blind", "eplb"]


@pytest.mark.parametrize(("U", "K", "cap"), [(1, 1, None), (2, 2, (0, 2)), (2, 3, None)])
def test_feasible_on_random_instances(U, K, cap):
    insts = [random_instance(700 + s, U=U, N=3, L=2, E=4, M=5, K=K, capacity=cap, pad=1) for s in range(4)]
    batch = slimjax.stack(insts)
    J0 = np.array([latency_ref(i, np.zeros((3, 2, 4), bool)) for i in insts])
    for m in BASELINES:
        sol = slimjax.solve_batch(batch, solver=m)
        for i, inst in enumerate(insts):
            assert feasible_ref(inst, sol.placement[i]), m
            np.testing.assert_allclose(sol.objective[i], latency_ref(inst, sol.placement[i]), rtol=1e-5)
        assert (sol.objective <= J0 + 1e-5).all(), m


def _single_node(E=5, L=2, c=3, U=1, seed=0):
    rng = np.random.default_rng(seed)
    lat = rng.uniform(1, 5, (U, 2, L, E))
    lat[:, 1] = 50.0  # node 1 is slower than the fallback: no copy there can help
    fb = np.full((U, L, E), 10.0)
    pats = np.tile(np.arange(E)[None, None, :, None], (U, L, 1, 1))
    w = rng.random((U, L, E)) + 0.05
    w /= w.sum(-1, keepdims=True)
    return slimjax.Instance(lat, fb, np.ones((L, E)), np.array([float(c), 4.0]), pats, w)


def test_popularity_closed_form_and_useless_node():
    inst = _single_node(c=3)
    sol = slimjax.solve(inst, solver="popularity")
    w = np.asarray(inst.weight)[0]
    top = np.argsort(-w.ravel(), kind="stable")[:3]
    want = np.zeros(w.size, bool)
    want[top] = True
    np.testing.assert_array_equal(sol.placement[0].ravel(), want)
    assert not sol.placement[1].any()  # slower than the fallback: skipped


def test_layer_uniform_equal_slots():
    inst = _single_node(E=5, L=3, c=7)
    x = slimjax.solve(inst, solver="layer-uniform").placement[0]
    per_layer = x.sum(-1)
    assert per_layer.sum() == 7 and per_layer.max() - per_layer.min() <= 1
    w = np.asarray(inst.weight)[0]
    for l in range(3):  # within a layer the most popular first
        assert set(np.flatnonzero(x[l])) == set(np.argsort(-w[l], kind="stable")[: per_layer[l]])


def test_coactivation_blind_equals_greedy_when_k1():
    insts = [random_instance(800 + s, U=2, N=2, L=2, E=4, M=5, K=1) for s in range(4)]
    batch = slimjax.stack(insts)
    blind = slimjax.solve_batch(batch, solver="coactivation-blind")
    greedy = slimjax.solve_batch(batch, solver="greedy", p=0)
    np.testing.assert_allclose(blind.objective, greedy.objective, rtol=1e-5)


def test_random_depends_on_key_and_fill():
    inst = random_instance(3, U=1, N=2, L=2, E=4, M=5, K=2, capacity=(3, 5))
    a = slimjax.solve(inst, solver="random", key=0).placement
    b = slimjax.solve(inst, solver="random", key=1).placement
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, slimjax.solve(inst, solver="random", key=0).placement)
    took = fill(jnp.array([[3.0, -jnp.inf, 1.0], [2.0, 0.5, 4.0]]), jnp.array([2, 1]), jnp.int32(3))
    # by priority: (1,2) size 1, (0,0) size 2 -> used 3; (1,0) would not fit
    np.testing.assert_array_equal(took, [[True, False, False], [False, False, True]])
    order = node_orders(inst.latency, inst.traffic, inst.capacity)["fastest-first"]
    assert sorted(np.asarray(order).tolist()) == [0, 1]


def test_vmap_matches_loop_and_jit_matches_eager():
    insts = [random_instance(900 + s, U=2, N=2, L=2, E=4, M=5, K=2) for s in range(2)]
    batch = slimjax.stack(insts)
    for m in ("popularity", "layer-uniform", "eplb"):
        sb = slimjax.solve_batch(batch, solver=m)
        ones = [slimjax.solve(inst, solver=m) for inst in insts]  # batch of 1: another program
        assert_same_solutions(batch, [o.placement for o in ones], sb.placement, [o.objective for o in ones], sb.objective)
    from slimjax.ops._grid import capacity_grid
    from slimjax.solvers._baselines import popularity_instance
    g = capacity_grid(insts[0])
    xj = jax.jit(popularity_instance)(insts[0], g.size_units, g.capacity_units)
    with jax.disable_jit():
        xe = popularity_instance(insts[0], g.size_units, g.capacity_units)
    np.testing.assert_array_equal(xj, xe)
    from slimjax.solvers._baselines import eplb_instance
    xj = jax.jit(eplb_instance)(insts[0], g.size_units, g.capacity_units)
    with jax.disable_jit():
        xe = eplb_instance(insts[0], g.size_units, g.capacity_units)
    np.testing.assert_array_equal(xj, xe)


def _eplb_case(capacity, weights, unreachable=()):
    """U = 1, L = 1, K = 1: expert e is activated alone with probability weights[e]."""
    N, E = len(capacity), len(weights)
    lat = np.tile(np.linspace(1.0, 2.0, N)[None, :, None, None], (1, 1, 1, E))
    for n in unreachable:
        lat[:, n] = np.inf
    pats = np.arange(E, dtype=np.int32)[None, None, :, None]
    w = np.asarray(weights, float)[None, None]
    return slimjax.Instance(lat, np.full((1, 1, E), 10.0), np.ones((1, E)), np.asarray(capacity, float), pats, w)


def test_eplb_replicates_hot_experts_and_balances_load():
    # room for 6 copies, one expert with 70 % of the load: it is replicated on every node (shares
    # .7/1, .7/2, .7/3 beat the others' .1), each cold expert gets one copy, every node holds 2
    x = slimjax.solve(_eplb_case([2, 2, 2], [0.7, 0.1, 0.1, 0.1]), solver="eplb").placement[:, 0]
    assert x[:, 0].all()
    np.testing.assert_array_equal(x[:, 1:].sum(0), [1, 1, 1])
    np.testing.assert_array_equal(x.sum(1), [2, 2, 2])
    # equal loads and room for one copy each: no replica, and node loads differ by one expert at most
    x = slimjax.solve(_eplb_case([2, 1, 1], [0.25] * 4), solver="eplb").placement[:, 0]
    np.testing.assert_array_equal(x.sum(0), [1, 1, 1, 1])
    np.testing.assert_array_equal(x.sum(1), [2, 1, 1])
    # a node no user reaches gets nothing, and replicas stop at the usable nodes
    x = slimjax.solve(_eplb_case([2, 2, 2], [0.7, 0.1, 0.1, 0.1], unreachable=(1,)), solver="eplb").placement[:, 0]
    assert not x[1].any() and x[[0, 2], 0].all()
