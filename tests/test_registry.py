"""The registry API (§3): methods(), refusals with the valid lists, Solution fields,
solve == solve_batch[i], the infeasible-return guard, no recompiles."""

import numpy as np
import pytest

import slimjax
from slimjax.solvers import _registry as registry
from slimjax.solvers._greedy import greedy_batch
from tests.helpers import random_instance
from tests.reference import latency_ref

MINE = ["brute-force", "coactivation-blind", "greedy", "layer-uniform", "milp", "polish", "popularity", "random"]


def _inst(seed=0, **kw):
    kw = dict(dict(U=2, N=2, L=2, E=4, M=5, K=2), **kw)
    return random_instance(seed, **kw)


def test_methods_content():
    ms = slimjax.methods()
    for m in MINE + ["successive", "successive-fast", "relaxed"]:
        assert m in ms, m
        assert isinstance(ms[m], str) and ms[m]
    assert registry.get_method("milp").exact and not registry.get_method("milp").jax_native
    assert registry.get_method("brute-force").exact
    assert registry.get_method("greedy").jax_native and not registry.get_method("greedy").exact


def test_unknown_method_and_option_refused_with_valid_lists():
    inst = _inst()
    with pytest.raises(ValueError, match=r"unknown method 'nope'.*'greedy'.*'popularity'"):
        slimjax.solve(inst, solver="nope")
    with pytest.raises(ValueError, match=r"unknown option.*'bogus'.*valid options are.*'enum_budget'.*'p'"):
        slimjax.solve(inst, solver="greedy", bogus=1)
    with pytest.raises(ValueError, match=r"valid options are.*'polish_rounds'"):
        slimjax.solve(inst, solver="greedy+polish", rounds=3)  # 'rounds' belongs to polish: polish_rounds
    with pytest.raises(ValueError, match=r"suffix"):
        slimjax.solve(inst, solver="greedy+magic")
    with pytest.raises(ValueError, match="aggregation"):
        slimjax.solve(inst, solver="popularity", aggregation="mean")
    with pytest.raises(ValueError, match="batch"):
        slimjax.solve_batch(inst, solver="greedy")


def test_solution_fields():
    insts = [_inst(s) for s in range(3)]
    batch = slimjax.stack(insts)
    sol = slimjax.solve_batch(batch, solver="greedy+polish")
    assert sol.method == "greedy+polish" and sol.seconds > 0
    assert sol.placement.shape == (3, 2, 2, 4) and sol.placement.dtype == bool
    assert sol.objective.shape == (3,) and sol.total.shape == (3,) and sol.used.shape == (3, 2)
    for i, inst in enumerate(insts):
        np.testing.assert_allclose(sol.objective[i], latency_ref(inst, sol.placement[i]), rtol=1e-5)
        base = float((np.asarray(inst.traffic) * np.asarray(inst.base)).sum())
        np.testing.assert_allclose(sol.total[i], sol.objective[i] + base, rtol=1e-5)
        used = np.einsum("nle,le->n", sol.placement[i].astype(float), np.asarray(inst.size))
        np.testing.assert_allclose(sol.used[i], used, rtol=1e-6)
        assert (used <= np.asarray(inst.capacity) + 1e-6).all()
    for k in ("rule", "start", "steps", "polish_moves"):
        assert sol.info[k].shape == (3,), k
    one = sol[1]
    assert one.placement.shape == (2, 2, 4) and np.ndim(one.objective) == 0 and one.info["rule"].shape == ()


@pytest.mark.parametrize("method", ["greedy", "popularity", "random", "coactivation-blind", "milp"])
def test_solve_equals_solve_batch_item(method):
    insts = [_inst(10 + s) for s in range(3)]
    sb = slimjax.solve_batch(slimjax.stack(insts), solver=method)
    for i, inst in enumerate(insts):
        s = slimjax.solve(inst, solver=method)
        np.testing.assert_array_equal(s.placement, sb.placement[i])
        np.testing.assert_allclose(s.objective, sb.objective[i], rtol=1e-6)


def test_chunking_matches_one_chunk():
    insts = [_inst(20 + s) for s in range(5)]
    batch = slimjax.stack(insts)
    a = slimjax.solve_batch(batch, solver="popularity")
    b = slimjax.solve_batch(batch, solver="popularity", chunk_size=2, progress=False)
    np.testing.assert_array_equal(a.placement, b.placement)


def test_infeasible_return_guard(monkeypatch):
    def overfill(batch, grid, key, options, **extra):
        return np.ones(batch.latency.shape[:1] + batch.latency.shape[-3:], bool), {}

    m = registry.Method("overfill-test", overfill, {}, "fills everything", True, False, None)
    monkeypatch.setitem(registry._REGISTRY, "overfill-test", m)
    inst = _inst(capacity=(0, 1))
    with pytest.raises(RuntimeError, match="infeasible placement"):
        slimjax.solve(inst, solver="overfill-test")
    with pytest.raises(RuntimeError, match="infeasible"):
        registry.check_feasible(slimjax.stack([inst]), np.ones((1, 2, 2, 4), bool), "x")


def test_no_recompile_on_second_same_shape_call():
    insts = [_inst(30 + s) for s in range(4)]
    slimjax.solve_batch(slimjax.stack(insts), solver="greedy")
    n = greedy_batch._cache_size()
    sol = slimjax.solve_batch(slimjax.stack(insts[::-1]), solver="greedy")  # other data, same shapes
    assert greedy_batch._cache_size() == n
    assert sol.placement.shape == (4, 2, 2, 4)
