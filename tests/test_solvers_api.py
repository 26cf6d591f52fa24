"""The solver API: objects, names, chain, options, Solution, status, keys, timings, guards
(slimjax/solvers/_base.py, _methods.py, _solve.py, _compile.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slimjax
from slimjax.solvers import (
    EPLB,
    MILP,
    BruteForce,
    CoactivationBlind,
    Greedy,
    LayerUniform,
    Polish,
    Popularity,
    Random,
    Relaxed,
    Solver,
    Status,
    Successive,
    chain,
)
from slimjax._compile import clear_cache
from tests.helpers import assert_same_solutions, random_instance
from tests.reference import latency_ref

CLASSES = [Successive, Greedy, Relaxed, Polish, Random, Popularity, LayerUniform, CoactivationBlind, EPLB, BruteForce, MILP]


def _inst(seed=0, **kw):
    kw = dict(dict(U=2, N=2, L=2, E=4, M=5, K=2), **kw)
    return random_instance(seed, **kw)


def test_methods_are_objects_with_metadata():
    ms = slimjax.methods()
    expect = {"successive": Successive, "successive-fast": Successive, "greedy": Greedy, "relaxed": Relaxed,
              "polish": Polish, "random": Random, "popularity": Popularity, "layer-uniform": LayerUniform,
              "coactivation-blind": CoactivationBlind, "eplb": EPLB, "brute-force": BruteForce, "milp": MILP}
    for name, cls in expect.items():
        assert type(ms[name]) is cls, name
    assert ms["successive"] == Successive()  # the paper's method is the class default
    assert ms["successive-fast"] == Successive(maxconv=ms["successive-fast"].maxconv) != ms["successive"]
    best = ms["successive-best"]
    assert [type(s) for s in best.stages()] == [Successive, Polish] and best.stages()[0].order == "best-of"
    assert MILP.exact and not MILP.jax_native and BruteForce.exact
    assert Greedy.jax_native and not Greedy.exact and Polish.refines and not Successive.refines


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_option_is_documented_and_hashable(cls):
    obj = cls()
    hash(obj)  # a static argument of the compiled program
    for f in dataclasses.fields(cls):
        doc = f.metadata.get("doc", "")
        assert len(doc) > 10, f"{cls.__name__}.{f.name} has no documentation"
        assert f.name in cls.__doc__, f"help({cls.__name__}) does not list {f.name}"
    with pytest.raises(dataclasses.FrozenInstanceError):
        obj.x = 1  # immutable


@pytest.mark.parametrize("bad", [
    (MILP, dict(time_limit=-5), "time_limit"),
    (MILP, dict(threads=0), "threads"),
    (Polish, dict(rounds=-1), "rounds"),
    (Polish, dict(rounds=1.5), "rounds"),
    (Successive, dict(restarts=-2), "restarts"),
    (Successive, dict(revisit=True), "revisit"),
    (Successive, dict(order="sideways"), "order"),
    (Greedy, dict(p=-1), "p"),
    (Relaxed, dict(steps=0), "steps"),
    (Relaxed, dict(learning_rate=float("nan")), "learning_rate"),
    (Relaxed, dict(optimizer="adam"), "optimizer"),
], ids=lambda b: f"{b[0].__name__}-{b[2]}")
def test_invalid_values_refused_at_construction(bad):
    cls, kw, field = bad
    with pytest.raises(ValueError, match=f"^{field}:"):
        cls(**kw)
    with pytest.raises(ValueError, match=f"^{field}:"):  # the string form validates the same way
        slimjax.solve(_inst(), {Successive: "successive", MILP: "milp", Polish: "polish", Greedy: "greedy",
                                Relaxed: "relaxed"}[cls], **kw)


def test_lists_become_tuples():
    s = Successive(order="best-of", best_of=["given", "fastest-first"])
    assert s.best_of == ("given", "fastest-first")
    hash(s)


def test_string_form_equals_object_form():
    batch = slimjax.stack([_inst(s) for s in range(3)])
    pairs = [
        (("successive", dict(order="given")), Successive(order="given")),
        (("greedy+polish", dict(rounds=5)), chain(Greedy(), Polish(rounds=5))),
        (("successive-best", dict(order="given")), chain(
            Successive(order="given", union_first="auto", revisit="auto", restarts="auto"), Polish(rounds=16))),
        (("relaxed", dict(steps=10, restarts=2)), Relaxed(steps=10, restarts=2)),
    ]
    for (name, opts), obj in pairs:
        a = slimjax.solve_batch(batch, name, key=1, **opts)
        b = slimjax.solve_batch(batch, obj, key=1)
        np.testing.assert_array_equal(a.placement, b.placement)  # same compiled program: exact
        np.testing.assert_array_equal(a.objective, b.objective)


def test_unknown_names_and_options_refused_with_valid_lists():
    inst = _inst()
    with pytest.raises(ValueError, match=r"unknown name 'nope'.*'greedy'.*'popularity'"):
        slimjax.solve(inst, "nope")
    with pytest.raises(ValueError, match=r"unknown option.*'bogus'.*valid options are.*'enum_budget'.*'p'"):
        slimjax.solve(inst, "greedy", bogus=1)
    with pytest.raises(ValueError, match=r"unknown name 'magic'"):
        slimjax.solve(inst, "greedy+magic")
    with pytest.raises(ValueError, match="twice"):
        slimjax.solve(inst, "successive+polish+polish")
    with pytest.raises(ValueError, match="cannot refine"):
        chain(Greedy(), Successive())
    with pytest.raises(ValueError, match="aggregation"):
        slimjax.solve(inst, "popularity", aggregation="mean")
    with pytest.raises(ValueError, match="batch"):
        slimjax.solve_batch(inst, "greedy")
    with pytest.raises(ValueError, match="chunk_size"):
        slimjax.solve_batch(slimjax.stack([inst]), "greedy", chunk_size=0)
    with pytest.raises(ValueError, match="memory_budget_mb"):
        slimjax.solve_batch(slimjax.stack([inst]), "greedy", memory_budget_mb=-1)
    with pytest.raises(ValueError, match="key"):
        slimjax.solve(inst, "random", key="seven")


def test_solution_fields_and_chain_info():
    insts = [_inst(s) for s in range(3)]
    batch = slimjax.stack(insts)
    sol = slimjax.solve_batch(batch, "greedy+polish")
    assert sol.solver == "greedy+polish" and sol.seconds > 0 and sol.compile_seconds >= 0
    assert sol.placement.shape == (3, 2, 2, 4) and sol.placement.dtype == bool
    assert sol.objective.shape == (3,) and sol.total.shape == (3,) and sol.used.shape == (3, 2)
    assert (sol.status == Status.FEASIBLE).all() and list(sol.status_names) == ["feasible"] * 3
    for i, inst in enumerate(insts):
        np.testing.assert_allclose(sol.objective[i], latency_ref(inst, sol.placement[i]), rtol=1e-5)
        base = float((np.asarray(inst.traffic) * np.asarray(inst.base)).sum())
        np.testing.assert_allclose(sol.total[i], sol.objective[i] + base, rtol=1e-5)
        used = np.einsum("nle,le->n", sol.placement[i].astype(float), np.asarray(inst.size))
        np.testing.assert_allclose(sol.used[i], used, rtol=1e-6)
    for k in ("rule", "start", "steps", "polish.moves"):
        assert sol.info[k].shape == (3,), k
    one = sol[1]
    assert one.placement.shape == (2, 2, 4) and np.ndim(one.objective) == 0 and one.info["rule"].shape == ()
    leaves = jax.tree_util.tree_leaves(sol)  # a pytree
    assert any(leaf is sol.placement for leaf in leaves)


@pytest.mark.parametrize("name", ["greedy", "popularity", "random", "coactivation-blind",
                                  pytest.param("successive-best", marks=pytest.mark.slow)])  # ~25 s: slow
def test_solve_equals_solve_batch_item(name):
    """solve(batch[i], key=fold_in(k, i)) vs solve_batch(batch, key=k)[i]: what the docstrings
    guarantee (the programs differ in the batch size): J equal up to float32 rounding, placements
    equal up to exact ties."""
    insts = [_inst(10 + s) for s in range(3)]
    batch = slimjax.stack(insts)
    k = jax.random.key(5)
    sb = slimjax.solve_batch(batch, name, key=k)
    ones = [slimjax.solve(inst, name, key=jax.random.fold_in(k, i)) for i, inst in enumerate(insts)]
    assert_same_solutions(batch, [o.placement for o in ones], sb.placement, [o.objective for o in ones], sb.objective)


def test_instances_get_independent_keys():
    inst = _inst(3, N=3, L=3, E=6)
    copies = slimjax.stack([inst] * 6)
    sol = slimjax.solve_batch(copies, "random", key=0)
    distinct = {sol.placement[i].tobytes() for i in range(6)}
    assert len(distinct) >= 5  # one shared key would give 6 identical placements
    again = slimjax.solve_batch(copies, "random", key=0)
    np.testing.assert_array_equal(again.placement, sol.placement)  # and reproducible
    legacy = slimjax.solve_batch(copies, "random", key=jax.random.PRNGKey(0))  # raw uint32[2] keys work too
    assert legacy.placement.shape == sol.placement.shape


def test_compile_time_is_separated_from_solve_time():
    clear_cache()
    batch = slimjax.stack([_inst(40 + s) for s in range(4)])
    first = slimjax.solve_batch(batch, "popularity")
    assert first.compile_seconds > 0 and first.seconds > 0
    other = batch.replace(latency=batch.latency * 1.5)  # other values, same shapes: nothing compiles
    second = slimjax.solve_batch(other, "popularity")
    assert second.compile_seconds == 0.0
    assert second.seconds < first.compile_seconds  # the solve itself is far cheaper than compiling


@dataclasses.dataclass(frozen=True)
class _Overfill(Solver):
    name = "overfill-test"

    def chunk(self, static, shared, batch, size_units, capacity_units, per_instance, keys, start):
        return jnp.ones(batch.latency.shape[:1] + batch.latency.shape[-3:], bool), {}


def test_infeasible_output_is_caught_and_throw_false_reports_status():
    ok = _inst(1, capacity=(30, 30))  # room for everything (sizes are at most 3 per expert)
    tight = _inst(2, capacity=(0, 1))
    batch = slimjax.stack([ok, tight])
    solver = _Overfill()
    with pytest.raises(RuntimeError, match=r"infeasible placement \(a solver bug\) for instances \[1\]"):
        slimjax.solve_batch(batch, solver)
    sol = slimjax.solve_batch(batch, solver, throw=False)
    assert list(sol.status) == [Status.FEASIBLE, Status.FAILED]
    assert np.isfinite(sol.objective[0]) and np.isnan(sol.objective[1])
    assert list(sol.ok) == [True, False]


def test_feasible_and_placement_checks():
    inst = _inst(4, capacity=(1, 2))
    empty = np.zeros((2, 2, 4), bool)
    full = np.ones((2, 2, 4), bool)
    assert bool(slimjax.feasible(inst, empty).ok) and not bool(slimjax.feasible(inst, full).ok)
    np.testing.assert_allclose(slimjax.feasible(inst, full).used, np.asarray(inst.size).sum() * np.ones(2))
    batch = slimjax.stack([inst, inst])
    res = slimjax.feasible(batch, np.stack([empty, full]))
    assert res.ok.tolist() == [True, False] and res.used.shape == (2, 2)
    assert float(slimjax.objective(inst, empty.astype(np.int32))) == pytest.approx(float(slimjax.objective(inst, empty)))
    with pytest.raises(ValueError, match="placement: expected shape"):
        slimjax.objective(inst, np.zeros((2, 2, 5), bool))
    with pytest.raises(ValueError, match="placement: must be bool"):
        slimjax.objective(inst, np.zeros((2, 2, 4), np.float32))
    with pytest.raises(ValueError, match="only 0 and 1"):
        slimjax.feasible(inst, np.full((2, 2, 4), 2))
    with pytest.raises(ValueError, match=r"placement: expected shape \[batch"):
        slimjax.objective(batch, empty)


def test_progress_callback():
    batch = slimjax.stack([_inst(50 + s) for s in range(5)])
    seen = []
    slimjax.solve_batch(batch, "popularity", chunk_size=2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_capacity_unit_overflow_is_refused():
    """Bytes as the unit on a real-size model: capacities of ~1e10 units must not wrap int32."""
    batch = slimjax.generate.instances(jax.random.key(0), 2, model="mixtral_8x7b")
    with pytest.raises(ValueError, match=r"capacity_unit: .*grid units.*limit is 16777216"):
        slimjax.solve_batch(batch, "popularity", capacity_unit=1.0)
    with pytest.raises(ValueError, match="capacity_unit"):
        slimjax.solve_batch(batch, "successive", capacity_unit=float(batch.size.min()) / 60000)  # dense DP too big
    fine = slimjax.solve_batch(batch, "successive-fast", capacity_unit=float(batch.size.min()) / 64)
    assert (fine.objective < slimjax.solve_batch(batch, "popularity").objective + 1).all()
