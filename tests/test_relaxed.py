"""Method ``relaxed`` (DESIGN §4.6): feasibility, determinism, solve == solve_batch, quality vs brute force."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slimjax
from slimjax.ops._patterns import merge_patterns as _merge_patterns
from slimjax.solvers._relaxed import _fill, _fine_grid
from tests.helpers import assert_same_solutions, random_instance
from tests.reference import brute_force_ref, feasible_ref, latency_ref

# Cheaper than the defaults (compile time dominates these tests; the solver's logic is the same).
FAST = {"steps": 150, "restarts": 3, "samples": 8, "fill_steps": 8}


def _with_k(inst, k_active):
    """Keep K = 3 slots but route only ``k_active`` distinct experts (repeat the first id)."""
    pat = np.asarray(inst.patterns).copy()
    pat[..., k_active:] = pat[..., :1]
    return inst.replace(patterns=pat)


def test_registered():
    assert "relaxed" in slimjax.methods()


@pytest.mark.slow  # the default run keeps test_sum_aggregation_feasible_with_non_integer_sizes and the property test's relaxed
def test_quality_feasibility_and_solve_equals_solve_batch():
    """~30 tiny instances, U ∈ {1, 2}, K ∈ {1, 2, 3} (K < 3 as patterns repeating an id): median
    gain ≥ 0.90 of the brute-force optimum's; feasible; ``solve`` == ``solve_batch``; deterministic."""
    ratios = []
    for U in (1, 2):
        insts = [_with_k(random_instance(100 * U + s, U=U, N=2, L=2, E=3, M=4, K=3), 1 + s % 3) for s in range(15)]
        batch = slimjax.stack(insts)
        sol = slimjax.solve_batch(batch, "relaxed", key=0, **FAST)
        for i, inst in enumerate(insts):
            x = sol.placement[i]
            assert feasible_ref(inst, x)
            J = latency_ref(inst, x)
            assert J == pytest.approx(float(sol.objective[i]), rel=1e-5)
            assert float(sol.info["rounded_value"][i]) == pytest.approx(J, rel=1e-5)
            Jopt, _ = brute_force_ref(inst)
            J0 = latency_ref(inst, np.zeros_like(x))
            assert J >= Jopt - 1e-4 * Jopt
            ratios.append(1.0 if J0 - Jopt < 1e-9 else (J0 - J) / (J0 - Jopt))
        assert (sol.info["steps"] == FAST["steps"]).all()
        if U == 2:
            again = slimjax.solve_batch(batch, "relaxed", key=0, **FAST)
            np.testing.assert_array_equal(again.placement, sol.placement)
            for i in (0, 4, 8):
                # instance i of the batch uses fold_in(key, i); solve with that key gives the
                # same run. The two are different compiled programs (batch of 1 vs 12), so
                # floats agree to float32 rounding (1e-6), not bit for bit, and placements up to
                # exact ties.
                s = slimjax.solve(insts[i], "relaxed", key=jax.random.fold_in(jax.random.key(0), i), **FAST)
                assert_same_solutions(batch[i:i + 1], s.placement[None], sol.placement[i:i + 1], [s.objective],
                                      sol.objective[i:i + 1])
                for k in ("relaxed_value", "rounded_value"):
                    np.testing.assert_allclose(s.info[k], sol.info[k][i], rtol=1e-6)
                assert s.info["steps"] == sol.info["steps"][i]
    assert np.median(ratios) >= 0.9, sorted(ratios)
    assert np.mean(ratios) >= 0.85, sorted(ratios)


def test_sum_aggregation_feasible_with_non_integer_sizes():
    rng = np.random.default_rng(0)
    insts = []
    for s in range(4):
        inst = random_instance(s, U=2, N=3, L=3, E=4, M=5, K=2, pad=1)
        size = np.asarray(inst.size) * rng.uniform(0.37, 1.9, (3, 1))
        cap = rng.uniform(0.1, 0.6, 3) * size.sum()
        insts.append(inst.replace(size=size.astype(np.float32), capacity=cap.astype(np.float32)))
    batch = slimjax.stack(insts)
    grid = _fine_grid(batch, 1024)
    su, cu = grid.size_units[:, :, None].astype(np.float64), grid.capacity_units.astype(np.float64)
    assert (su * grid.unit[:, None, None] >= np.asarray(batch.size, np.float64) * (1 - 1e-9)).all()
    assert (cu * grid.unit[:, None] <= np.asarray(batch.capacity, np.float64) * (1 + 1e-9)).all()
    # the registry raises on an infeasible placement; check again here
    sol = slimjax.solve_batch(batch, "relaxed", aggregation="sum", **FAST)
    J0 = np.asarray(slimjax.objective(batch, np.zeros(sol.placement.shape, bool), "sum"))
    for i, inst in enumerate(insts):
        assert feasible_ref(inst, sol.placement[i])
        assert sol.objective[i] == pytest.approx(latency_ref(inst, sol.placement[i], "sum"), rel=1e-5)
        assert sol.objective[i] <= J0[i]
        assert np.isfinite(sol.info["relaxed_value"][i])
    assert (sol.objective < J0).any()


def test_merge_patterns_keeps_J():
    inst = random_instance(3, U=2, N=2, L=2, E=3, M=40, K=2, pad=4)
    batch = slimjax.stack([inst, random_instance(4, U=2, N=2, L=2, E=3, M=40, K=2, pad=4)])
    merged = _merge_patterns(batch)
    assert merged.shape[4] == 6  # C(3 + 2 - 1, 2) multisets
    np.testing.assert_allclose(np.asarray(merged.weight).sum(-1), 1.0, rtol=1e-5)
    for seed in range(4):
        x = np.random.default_rng(seed).random((2,) + inst.latency.shape[1:]) < 0.5
        for agg in ("max", "sum"):
            np.testing.assert_allclose(
                np.asarray(slimjax.objective(merged, x, agg)), np.asarray(slimjax.objective(batch, x, agg)), rtol=1e-6
            )
    # a single instance gets the same merged patterns alone as in the batch
    alone = _merge_patterns(slimjax.stack([inst]))
    np.testing.assert_array_equal(np.asarray(alone.patterns[0]), np.asarray(merged.patterns[0]))


def test_fill_matches_sequential_reference():
    rng = np.random.default_rng(1)
    fill = jax.jit(_fill)
    for _ in range(5):
        N, L, E = 3, 3, 4
        pr = np.where(rng.random((N, L, E)) < 0.2, 0.0, rng.random((N, L, E))).astype(np.float32)
        size = np.repeat(rng.integers(1, 5, L)[:, None], E, 1).astype(np.float32)
        cap = rng.integers(0, 20, N).astype(np.float32)
        x = np.asarray(fill(jnp.asarray(pr), jnp.asarray(size), jnp.asarray(cap)))
        for n in range(N):
            want = np.zeros(L * E, bool)
            used = 0.0
            for i in np.argsort(-pr[n].ravel(), kind="stable"):
                if pr[n].ravel()[i] > 0 and used + size.ravel()[i] <= cap[n]:
                    want[i] = True
                    used += size.ravel()[i]
            np.testing.assert_array_equal(x[n].ravel(), want)


@pytest.mark.parametrize(
    "opts,match",
    [
        ({"optimizer": "nope"}, "optimizer"),
        ({"schedule": "weird"}, "schedule"),
        ({"steps": 0}, "steps"),
        ({"restarts": 0}, "restarts"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"resolution": 0}, "resolution"),
        ({"bogus": 1}, "unknown option"),
    ],
)
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        slimjax.solve(random_instance(0), "relaxed", **opts)
