"""greedy (§4.5): ratio against brute force for K = 1, closed forms, feasibility, jit/vmap."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slimjax
from slimjax.ops._grid import capacity_grid
from slimjax.solvers._greedy import enumeration_starts, greedy_instance
from tests.helpers import random_instance
from tests.reference import brute_force_ref, feasible_ref, latency_ref

BOUND = 1 - 1 / math.e


def _gain_ratio(inst, J, Jopt, agg="max"):
    J0 = latency_ref(inst, np.zeros(inst.latency.shape[-3:], bool), agg)
    if J0 - Jopt < 1e-9 * J0:
        return 1.0
    return (J0 - J) / (J0 - Jopt)


@pytest.mark.parametrize("U", [1, 2])
def test_k1_ratio_vs_brute_force(U):
    """Every K = 1 tiny instance: greedy >= 1 - 1/e of the optimal gain (measured: == 1 here)."""
    insts = [random_instance(1000 * U + s, U=U, N=2, L=2, E=3, M=4, K=1) for s in range(12)]
    # integer sizes: a unit of 1 makes the storage grid exact (the default unit, the smallest
    # expert size, rounds sizes like 3 on a unit of 2 up and would lose feasible placements)
    sol = slimjax.solve_batch(slimjax.stack(insts), solver="greedy", capacity_unit=1.0)
    sol0 = slimjax.solve_batch(slimjax.stack(insts), solver="greedy", capacity_unit=1.0, p=0)
    ratios, ratios0 = [], []
    for i, inst in enumerate(insts):
        assert feasible_ref(inst, sol.placement[i])
        Jopt, _ = brute_force_ref(inst)
        ratios.append(_gain_ratio(inst, float(sol.objective[i]), Jopt))
        ratios0.append(_gain_ratio(inst, float(sol0.objective[i]), Jopt))
    assert min(ratios) >= BOUND, ratios
    assert min(ratios0) >= BOUND, ratios0
    assert all(r >= r0 - 1e-6 for r, r0 in zip(ratios, ratios0))  # enumeration never hurts
    assert np.median(ratios) > 0.99


def test_k1_single_node_closed_form():
    """One node, one user, K = 1, equal sizes: the optimum caches the c largest act·(fb − lat)."""
    rng = np.random.default_rng(0)
    L, E, c = 3, 5, 4
    lat = rng.uniform(1, 5, (1, 1, L, E))
    fb = rng.uniform(6, 9, (1, L, E))
    pats = np.tile(np.arange(E)[None, None, :, None], (1, L, 1, 1))
    w = rng.random((1, L, E)) + 0.1
    w /= w.sum(-1, keepdims=True)
    inst = slimjax.Instance(lat, fb, np.ones((L, E)), np.array([float(c)]), pats, w)
    gain = (w[0] * (fb[0] - lat[0, 0])).ravel()
    top = np.argsort(-gain)[:c]
    J_closed = (w[0] * fb[0]).sum() - gain[top].sum()
    sol = slimjax.solve(inst, solver="greedy")
    np.testing.assert_allclose(sol.objective, J_closed, rtol=1e-5)
    assert sol.placement.sum() == c


def test_capacity_zero_and_full():
    inst = random_instance(3, U=2, N=3, L=2, E=3, M=4, K=2, capacity=(0, 0))
    sol = slimjax.solve(inst, solver="greedy")
    assert not sol.placement.any()
    # capacity for everything: every expert reaches its fastest reachable latency
    v = {f: np.asarray(getattr(inst, f)) for f in ("latency", "fallback", "size", "patterns", "weight", "traffic")}
    full = slimjax.Instance(capacity=np.full(3, 1e3), **v)
    sol = slimjax.solve(full, solver="greedy")
    d_best = np.minimum(v["fallback"], v["latency"].min(axis=1))
    d_sol = np.asarray(slimjax.expert_latency(full, sol.placement))
    np.testing.assert_allclose(d_sol, d_best, rtol=1e-6)


@pytest.mark.parametrize(("K", "agg"), [(1, "max"), (3, "max"), (2, "sum")])
def test_feasible_and_not_worse_than_empty(K, agg):
    insts = [random_instance(40 + s, U=2, N=3, L=2, E=4, M=5, K=K, capacity=(0, K + 2)) for s in range(4)]
    sol = slimjax.solve_batch(slimjax.stack(insts), solver="greedy", aggregation=agg)
    for i, inst in enumerate(insts):
        assert feasible_ref(inst, sol.placement[i])
        J = latency_ref(inst, sol.placement[i], agg)
        np.testing.assert_allclose(sol.objective[i], J, rtol=1e-5)
        assert J <= latency_ref(inst, np.zeros_like(sol.placement[i]), agg) + 1e-6


def test_k2_coactivated_pair_found():
    """K = 2, one pattern {0, 1}: single gains are 0, the pair is worth everything; greedy finds it."""
    lat = np.full((1, 1, 1, 3), 1.0)
    fb = np.full((1, 1, 3), 10.0)
    pats = np.array([[[[0, 1]]]])
    inst = slimjax.Instance(lat, fb, np.ones((1, 3)), np.array([2.0]), pats, np.ones((1, 1, 1)))
    sol = slimjax.solve(inst, solver="greedy")
    assert sol.placement[0, 0, :2].all()
    np.testing.assert_allclose(sol.objective, 1.0)


def test_enumeration_starts():
    s = enumeration_starts(1, 2, 2, 2, 100)
    assert s.shape == (1 + 4 + 6, 1, 2, 2)
    assert len({tuple(r.ravel()) for r in s}) == len(s)
    assert len(enumeration_starts(1, 2, 2, "auto", 100)) == 11
    assert len(enumeration_starts(5, 32, 8, "auto", 256)) == 1  # mixtral: p = 0
    with pytest.raises(ValueError, match="enum_budget"):
        enumeration_starts(2, 2, 5, 3, 100)
    with pytest.raises(ValueError, match="p:"):
        enumeration_starts(2, 2, 5, -1, 100)


def test_jit_matches_eager():
    inst = random_instance(7, U=1, N=2, L=2, E=3, M=4, K=2)
    g = capacity_grid(inst)
    start = jnp.zeros(inst.latency.shape[-3:], bool)
    args = (inst, g.size_units, g.capacity_units, start, jnp.bool_(True))
    xj, vj, _ = jax.jit(lambda *a: greedy_instance(*a))(*args)
    with jax.disable_jit():
        xe, ve, _ = greedy_instance(*args)
    np.testing.assert_array_equal(xj, xe)
    np.testing.assert_allclose(vj, ve, rtol=1e-6)
