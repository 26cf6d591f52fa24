"""polish (§4.9): never worsens, ends in a local optimum (NumPy enumeration of adds/swaps)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slimjax
from slimjax.ops._grid import capacity_grid
from slimjax.solvers._polish import polish_batch, polish_instance
from tests.helpers import random_instance
from tests.reference import feasible_ref, latency_ref

SHAPE = dict(N=2, L=2, E=4, M=5)


def neighbours(x, su, cu):
    """Every add that fits and every same-node (drop i, add j) swap that fits on the grid."""
    N, L, E = x.shape
    used = np.einsum("nle,l->n", x.astype(int), su)
    for n in range(N):
        for l in range(L):
            for e in range(E):
                if not x[n, l, e] and used[n] + su[l] <= cu[n]:
                    y = x.copy()
                    y[n, l, e] = True
                    yield y
        for li, ei in zip(*np.nonzero(x[n])):
            for lj in range(L):
                for ej in range(E):
                    if not x[n, lj, ej] and (lj == li or used[n] - su[li] + su[lj] <= cu[n]):
                        y = x.copy()
                        y[n, li, ei] = False
                        y[n, lj, ej] = True
                        yield y


def _feasible_on_grid(x, su, cu):
    return (np.einsum("nle,l->n", x.astype(int), su) <= cu).all()


def _start(inst, seed, su, cu):
    """A random placement made feasible on the grid (drop items until every node fits)."""
    rng = np.random.default_rng(seed)
    x = rng.random(inst.latency.shape[-3:]) < 0.4
    for n in range(x.shape[0]):
        while np.einsum("le,l->", x[n].astype(int), su) > cu[n]:
            on = np.argwhere(x[n])
            x[n][tuple(on[rng.integers(len(on))])] = False
    return x


@pytest.mark.parametrize(("U", "K", "agg"), [(1, 1, "max"), (2, 2, "max"), (2, 3, "max"), (2, 2, "sum")])
def test_never_worse_and_local_optimum(U, K, agg):
    insts = [random_instance(300 + 10 * K + s, U=U, K=K, **SHAPE) for s in range(4)]
    batch = slimjax.stack(insts)
    grid = capacity_grid(batch)
    starts = np.stack([_start(i, s, grid.size_units[s], grid.capacity_units[s]) for s, i in enumerate(insts)])
    x, moves = polish_batch(batch, jnp.asarray(grid.size_units), jnp.asarray(grid.capacity_units),
                            jnp.asarray(starts), rounds=100, aggregation=agg)
    x = np.asarray(x)
    for b, inst in enumerate(insts):
        su, cu = grid.size_units[b], grid.capacity_units[b]
        assert feasible_ref(inst, x[b]) and _feasible_on_grid(x[b], su, cu)
        J0 = latency_ref(inst, starts[b], agg)
        J = latency_ref(inst, x[b], agg)
        assert J <= J0 + 1e-9
        if int(moves[b]) > 0:
            assert J < J0
        best = min([latency_ref(inst, y, agg) for y in neighbours(x[b], su, cu)] + [J])
        assert best >= J - 1e-4 * J, (b, J, best)  # no improving add or swap is left


def test_from_empty_via_registry_and_suffix():
    insts = [random_instance(400 + s, U=2, K=2, **SHAPE) for s in range(4)]
    batch = slimjax.stack(insts)
    pol = slimjax.solve_batch(batch, solver="polish")
    assert (pol.info["moves"] > 0).any()
    base = slimjax.solve_batch(batch, solver="popularity")
    both = slimjax.solve_batch(batch, slimjax.chain(slimjax.solvers.Popularity(), slimjax.solvers.Polish(rounds=50)))
    assert both.solver == "popularity+polish"
    assert (both.objective <= base.objective + 1e-6).all()
    assert "polish.moves" in both.info
    for i, inst in enumerate(insts):
        assert feasible_ref(inst, pol.placement[i]) and feasible_ref(inst, both.placement[i])
        np.testing.assert_allclose(both.objective[i], latency_ref(inst, both.placement[i]), rtol=1e-5)


def test_rounds_zero_is_identity_and_bad_options():
    inst = random_instance(5, U=1, K=2, **SHAPE)
    g = capacity_grid(inst)
    x0 = jnp.asarray(_start(inst, 0, g.size_units, g.capacity_units))
    x, m = polish_instance(inst, g.size_units, g.capacity_units, x0, rounds=0)
    np.testing.assert_array_equal(x, x0)
    assert int(m) == 0
    with pytest.raises(ValueError, match="rounds"):
        slimjax.solve(inst, solver="polish", rounds=-1)


def test_restricted_swaps_large_e_never_worse():
    """E > swap_candidates: a restricted neighbourhood, still feasible and never worse."""
    inst = random_instance(9, U=1, N=2, L=2, E=12, M=12, K=3)
    g = capacity_grid(inst)
    x0 = _start(inst, 1, g.size_units, g.capacity_units)
    x, _ = jax.jit(lambda i, s, c, p: polish_instance(i, s, c, p, rounds=30, swap_candidates=3))(
        inst, g.size_units, g.capacity_units, jnp.asarray(x0))
    x = np.asarray(x)
    assert _feasible_on_grid(x, g.size_units, g.capacity_units)
    assert latency_ref(inst, x) <= latency_ref(inst, x0) + 1e-9


def test_jit_matches_eager_and_no_recompile():
    inst = random_instance(11, U=1, K=2, **SHAPE)
    g = capacity_grid(inst)
    x0 = jnp.zeros(inst.latency.shape[-3:], bool)
    # two rounds: the second starts from the first one's moves (eager runs op by op: seconds per round)
    xj, mj = jax.jit(lambda *a: polish_instance(*a, rounds=2))(inst, g.size_units, g.capacity_units, x0)
    with jax.disable_jit():
        xe, me = polish_instance(inst, g.size_units, g.capacity_units, x0, rounds=2)
    np.testing.assert_array_equal(xj, xe)
    assert int(mj) == int(me)
    batch = slimjax.stack([inst, random_instance(12, U=1, K=2, **SHAPE)])
    first = slimjax.solve_batch(batch, solver="polish", rounds=7)
    again = slimjax.solve_batch(batch, solver="polish", rounds=7)
    assert first.compile_seconds > 0 and again.compile_seconds == 0.0  # no recompile on the second call


@pytest.mark.slow  # ~30 s; the default run reaches the swap table through the polish tests below and above
def test_dense_swap_table_matches_candidate_enumeration():
    """The pair-correction form of the same-layer swaps == direct joint evaluation (k = E)."""
    from slimjax.solvers import _polish as P

    for seed in range(4):  # U = 1, 2; K = 1..4; a repeated id at seeds 0 and 3
        inst = random_instance(seed, U=1 + seed % 2, N=3, L=1, E=6, M=7, K=1 + seed % 4, pad=1)
        x = np.random.default_rng(seed).random((3, 6)) < 0.5
        lat_l, fb_l, w_l, tr = inst.latency[:, :, 0], inst.fallback[:, 0], inst.weight[:, 0], inst.traffic
        pat_l = inst.patterns[:, 0]
        if seed % 3 == 0:
            pat_l = pat_l.at[:, 0, -1].set(pat_l[:, 0, 0])  # a repeated id
        d_l = jnp.minimum(fb_l, jnp.where(x[None], lat_l, jnp.inf).min(1))
        dd = P.second_best(lat_l, fb_l, x)
        tv, ti, dup = P.pattern_top(d_l, pat_l, 3)
        add = P.add_gain_layer(lat_l, d_l, tv, ti, w_l, tr)
        drop = jnp.where(x, P.drop_loss_layer(dd, pat_l, tv, ti, dup, w_l, tr), 0.0)
        g1 = P._same_layer_swaps_dense(lat_l, d_l, dd, x, pat_l, tv, ti, dup, w_l, tr, add, drop)[0][0]
        g2 = P._same_layer_swaps(lat_l, d_l, dd, x, pat_l, tv, ti, w_l, tr, add, drop, 6)[0]
        np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-4)  # float32 sums of two formulations


def test_pair_add_gain_is_exact():
    """Best pair add of one layer per node == enumeration of J over all uncached pairs."""
    from slimjax.solvers import _polish as P

    for seed in range(4):  # (U, K) = (1, 2) and (2, 3), two seeds each
        inst = random_instance(50 + seed, U=1 + seed % 2, N=2, L=1, E=5, M=6, K=2 + seed % 2)
        x = np.random.default_rng(seed).random((2, 1, 5)) < 0.3
        lat_l, fb_l, w_l, tr, pat_l = (inst.latency[:, :, 0], inst.fallback[:, 0], inst.weight[:, 0],
                                       inst.traffic, inst.patterns[:, 0])
        xl = x[:, 0]
        d_l = jnp.minimum(fb_l, jnp.where(xl[None], lat_l, jnp.inf).min(1))
        dd = P.second_best(lat_l, fb_l, xl)
        tv, ti, dup = P.pattern_top(d_l, pat_l, 3)
        add = P.add_gain_layer(lat_l, d_l, tv, ti, w_l, tr)
        drop = jnp.where(xl, P.drop_loss_layer(dd, pat_l, tv, ti, dup, w_l, tr), 0.0)
        _, (pg, _, _) = P._same_layer_swaps_dense(lat_l, d_l, dd, xl, pat_l, tv, ti, dup, w_l, tr, add, drop)
        J = latency_ref(inst, x)
        for n in range(2):
            free = np.flatnonzero(~xl[n])
            best = -np.inf
            for i in range(len(free)):
                for j in range(i + 1, len(free)):
                    y = x.copy()
                    y[n, 0, [free[i], free[j]]] = True
                    best = max(best, J - latency_ref(inst, y))
            if np.isfinite(best):
                np.testing.assert_allclose(pg[n], best, atol=1e-5)
