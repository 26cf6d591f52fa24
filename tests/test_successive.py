"""``successive`` / ``successive-fast``: NumPy reference, brute-force optima, special cases, batching.

Instances are grouped by shape so that each (shape, options) compiles once.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import slimjax
from slimjax.solvers import _successive as succ
from slimjax.ops._grid import bucket_units
from slimjax.solvers._successive import successive_instance
from tests.helpers import assert_same_solutions, random_instance
from tests.reference import brute_force_ref, feasible_ref, latency_ref
from tests.reference_successive import successive_ref

#: successive-best without its polish stage
BEST_NO_POLISH = slimjax.solvers.Successive(order="best-of", union_first="auto", revisit="auto", restarts="auto")


def _empty(batch):
    return np.zeros((len(batch),) + tuple(batch.latency.shape[-3:]), bool)


def _gain_ratio(inst, J, J_opt):
    J0 = latency_ref(inst, np.zeros(inst.latency.shape[-3:], bool))
    return 1.0 if J0 - J_opt < 1e-9 else (J0 - J) / (J0 - J_opt)


# -- the JAX method equals the NumPy reference ----------------------------------------------------

REF_CONFIGS = [
    dict(order="fastest-first", oracle="exact", maxconv="dense", union_first="off", revisit=0),
    dict(order="fastest-first", oracle="greedy", maxconv="hull", union_first="off", revisit=1),
    dict(order="best-of", oracle="exact", maxconv="dense", union_first="auto", revisit=1),
]


@pytest.mark.parametrize("cfg", REF_CONFIGS, ids=lambda c: f"{c['order']}-{c['oracle']}-{c['maxconv']}")
def test_matches_numpy_reference(cfg, x64):
    insts = [random_instance(s, U=2, N=3, L=2, E=4, M=5, K=2, dtype=np.float64) for s in range(5)]
    insts += [random_instance(10 + s, U=2, N=3, L=2, E=4, M=5, K=2, capacity=(1, 3), dtype=np.float64) for s in range(3)]
    batch = slimjax.stack(insts)
    sol = slimjax.solve_batch(batch, "successive", restarts=0, **cfg)
    _g = slimjax.ops.capacity_grid(batch)  # the grid the method uses
    su, cu, mu = _g.size_units, _g.capacity_units, _g.max_units
    for i, inst in enumerate(insts):
        x, info = successive_ref(inst, su[i], cu[i], **cfg)
        assert feasible_ref(inst, x)
        assert sol.objective[i] == pytest.approx(latency_ref(inst, x), rel=1e-9, abs=1e-9)
        np.testing.assert_array_equal(sol.placement[i], x)
        if not cfg["revisit"]:
            np.testing.assert_allclose(sol.info["node_gain"][i], info["node_gain"], rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(sol.info["node_bound"][i], info["node_bound"], rtol=1e-9, atol=1e-9)


def test_matches_numpy_reference_sum_k3(x64):
    insts = [random_instance(30 + s, U=1, N=2, L=2, E=4, M=4, K=3, dtype=np.float64) for s in range(4)]
    batch = slimjax.stack(insts)
    _g = slimjax.ops.capacity_grid(batch)
    su, cu = _g.size_units, _g.capacity_units
    for agg in ("sum", "max"):
        cfg = dict(order="largest-first", oracle="exact", maxconv="dense", union_first="off")
        sol = slimjax.solve_batch(batch, "successive", aggregation=agg, **cfg)
        for i, inst in enumerate(insts):
            x, _ = successive_ref(inst, su[i], cu[i], aggregation=agg, **cfg)
            assert sol.objective[i] == pytest.approx(latency_ref(inst, x, agg), rel=1e-9, abs=1e-9)


# -- quality against brute force -------------------------------------------------------------------

# (U, N, L, E, K): N·L·E ≤ 12, K in {1, 2, 3}, U in {1, 2}; capacities 1..E size units.
TINY = [(1, 2, 2, 3, 2), (2, 3, 1, 4, 3), (1, 2, 1, 5, 1), (2, 2, 2, 2, 2)]


def _tiny_groups(per_group, seed0=0):
    out = []
    for gi, (U, N, L, E, K) in enumerate(TINY):
        insts = [random_instance(seed0 + 100 * gi + i, U=U, N=N, L=L, E=E, M=4, K=K, capacity=(1, E)) for i in range(per_group)]
        out.append((slimjax.stack(insts), insts, [brute_force_ref(i)[0] for i in insts]))
    return out


@pytest.fixture(scope="module")
def tiny():
    return _tiny_groups(6)


def _ratios(groups, method, **opts):
    ratios = []
    for batch, insts, opt in groups:
        sol = slimjax.solve_batch(batch, method, **opts)
        for i, inst in enumerate(insts):
            assert feasible_ref(inst, sol.placement[i])
            assert sol.objective[i] >= opt[i] - 1e-4 * max(1.0, abs(opt[i]))
            ratios.append(_gain_ratio(inst, sol.objective[i], opt[i]))
    return np.array(ratios)


def test_plain_is_the_paper_method(x64):
    """``successive`` (no options) and ``Successive()`` are the plain paper method: fastest-first,
    exact oracle, dense DP, nothing else — equal to the independent NumPy implementation."""
    from slimjax.solvers import Successive

    insts = [random_instance(500 + s, U=2, N=3, L=2, E=4, M=5, K=2, dtype=np.float64) for s in range(4)]
    batch = slimjax.stack(insts)
    by_name = slimjax.solve_batch(batch, "successive")
    by_object = slimjax.solve_batch(batch, Successive())
    np.testing.assert_array_equal(by_name.placement, by_object.placement)  # same program: exact equality
    g = slimjax.ops.capacity_grid(batch)
    for i, inst in enumerate(insts):
        x, _ = successive_ref(inst, g.size_units[i], g.capacity_units[i], order="fastest-first", oracle="exact",
                              maxconv="dense", union_first="off", revisit=0)
        np.testing.assert_array_equal(by_name.placement[i], x)


@pytest.mark.slow  # brute-force quality; the default run has tests/test_properties.py's solver property
def test_default_quality_vs_brute_force(tiny):
    r = _ratios(tiny, "successive-best")
    assert np.median(r) >= 0.99, r
    assert np.percentile(r, 5) >= 0.95, r


@pytest.mark.slow
def test_best_of_without_polish_quality(tiny):
    r = _ratios(tiny, BEST_NO_POLISH)
    assert np.median(r) >= 0.97, r
    assert np.percentile(r, 5) >= 0.80, r


@pytest.mark.slow
def test_default_quality_vs_brute_force_many():
    groups = _tiny_groups(20, seed0=7)
    r = _ratios(groups, "successive-best")
    assert np.median(r) >= 0.99, r
    assert np.percentile(r, 5) >= 0.95, r
    rf = _ratios(groups, "successive-fast")
    assert np.median(rf) >= 0.9, rf


# -- special cases -----------------------------------------------------------------------------------


def test_k1_single_node_closed_form():
    """K = 1, one node, equal sizes: the optimum caches the top-Q experts by weight × speed-up."""
    rng = np.random.default_rng(4)
    insts = []
    for s in range(4):
        L, E, M = 2, 5, 4
        lat = rng.uniform(1, 5, (1, 1, L, E))
        fb = rng.uniform(6, 9, (1, L, E))
        pats = np.stack([[rng.choice(E, M, replace=False)[:, None] for _ in range(L)]])
        w = rng.random((1, L, M)) + 0.1
        w /= w.sum(-1, keepdims=True)
        insts.append(
            slimjax.Instance(latency=lat, fallback=fb, size=np.ones((L, E)), capacity=np.array([float(s + 2)]),
                             patterns=pats.astype(np.int32), weight=w)
        )
    batch = slimjax.stack(insts)
    for method, opts in (("successive", {}), ("successive-fast", {})):
        sol = slimjax.solve_batch(batch, method, **opts)
        for i, inst in enumerate(insts):
            pats, w = np.asarray(inst.patterns), np.asarray(inst.weight, np.float64)
            gain = np.zeros((2, 5))
            for l in range(2):
                for m in range(4):
                    e = pats[0, l, m, 0]
                    gain[l, e] += w[0, l, m] * (float(inst.fallback[0, l, e]) - float(inst.latency[0, 0, l, e]))
            J0 = latency_ref(inst, np.zeros((1, 2, 5), bool))
            best = J0 - np.sort(gain.ravel())[::-1][: i + 2].sum()
            assert sol.objective[i] == pytest.approx(best, rel=1e-5), method


def _below_k_instance(seed):
    """Three nodes of capacity 1 expert, K = 2, equal fallback: no single copy helps any pattern."""
    rng = np.random.default_rng(seed)
    U, N, L, E, M, K = 1, 3, 1, 4, 3, 2
    lat = rng.uniform(1, 3, (U, N, L, E))
    fb = np.full((U, L, E), 10.0)
    pats = np.array([[[[0, 1], [2, 3], [1, 2]]]], np.int32)
    w = np.array([[[0.6, 0.3, 0.1]]])
    return slimjax.Instance(latency=lat, fallback=fb, size=np.ones((L, E)), capacity=np.ones(N), patterns=pats, weight=w)


def test_capacity_below_k_union_first_repairs():
    insts = [_below_k_instance(s) for s in range(3)]
    batch = slimjax.stack(insts)
    J0 = np.asarray(slimjax.objective(batch, _empty(batch)))
    plain = slimjax.solve_batch(batch, "successive")
    np.testing.assert_allclose(plain.objective, J0)  # the pure per-node pass gains nothing
    union = slimjax.solve_batch(batch, "successive", union_first="on")
    assert (union.objective < J0 - 1.0).all()
    best = slimjax.solve_batch(batch, BEST_NO_POLISH)  # best-of includes the union candidate
    assert (best.objective <= union.objective + 1e-6).all()
    for i, inst in enumerate(insts):
        J_opt = brute_force_ref(inst)[0]
        assert union.objective[i] == pytest.approx(J_opt, rel=1e-5)  # here the union is optimal
        assert union.used[i].max() <= 1.0


# -- batching, jit, recompiles, options ---------------------------------------------------------------


def test_vmap_vs_loop_and_no_recompile(tiny):
    batch, insts, _ = tiny[0]
    first = slimjax.solve_batch(batch, BEST_NO_POLISH, key=3)
    second = slimjax.solve_batch(batch, BEST_NO_POLISH, key=3)
    assert second.compile_seconds == 0.0  # no recompile with the same shapes and options
    np.testing.assert_array_equal(first.placement, second.placement)
    for i in range(3):
        # solve(batch[i], key=fold_in(key, i)) is solve_batch(batch, key)[i] (restarts are random)
        one = slimjax.solve(insts[i], BEST_NO_POLISH, key=jax.random.fold_in(jax.random.key(3), i))
        assert_same_solutions(batch[i:i + 1], one.placement[None], first.placement[i:i + 1], [one.objective],
                              first.objective[i:i + 1])


@pytest.mark.slow  # jit vs eager of every configuration; the default run keeps test_vmap_vs_loop_and_no_recompile
def test_jit_vs_eager():
    import jax

    inst = random_instance(3, U=1, N=2, L=1, E=3, M=3, K=2)
    grid = slimjax.ops.capacity_grid(inst)
    cfg = succ.SuccessiveConfig(Qmax=bucket_units(grid.max_units), orders=("fastest-first", "given"),
                                unions=(False, True), oracle="greedy", maxconv="hull", aggregation="max")
    args = (inst, np.asarray(grid.size_units), np.asarray(grid.capacity_units))
    xj, ij = jax.jit(successive_instance, static_argnums=3)(*args, cfg)
    with jax.disable_jit():
        xe, ie = successive_instance(*args, cfg)
    np.testing.assert_array_equal(np.asarray(xj), np.asarray(xe))
    np.testing.assert_allclose(np.asarray(ij["node_gain"]), np.asarray(ie["node_gain"]), rtol=1e-5)


def test_fast_reports_bounds():
    insts = [random_instance(50 + s, U=1, N=2, L=3, E=6, M=6, K=2) for s in range(4)]
    sol = slimjax.solve_batch(slimjax.stack(insts), "successive-fast")
    assert (sol.info["node_bound"] >= sol.info["node_gain"] - 1e-5).all()
    assert (sol.info["node_gap"] >= 0).all()
    assert sol.info["order"].shape == (4, 2)
    for i, inst in enumerate(insts):
        assert feasible_ref(inst, sol.placement[i])


def test_bad_options():
    inst = random_instance(0, U=1, N=2, L=1, E=3, M=3, K=2)
    with pytest.raises(ValueError, match="order"):
        slimjax.solve(inst, "successive", order="random-first")
    with pytest.raises(ValueError, match="permutation"):
        slimjax.solve(inst, "successive", order=(0, 0))
    with pytest.raises(ValueError, match="oracle"):
        slimjax.solve(inst, "successive", oracle="magic")
    with pytest.raises(ValueError, match="maxconv"):
        slimjax.solve(inst, "successive", maxconv="sparse")
    with pytest.raises(ValueError, match="revisit"):
        slimjax.solve(inst, "successive", revisit=-1)
    with pytest.raises(ValueError, match="unknown option.*'polish'"):
        slimjax.solve(inst, "successive", polish=3)  # no hidden second stage: chain a Polish instead
    with pytest.raises(ValueError, match="tabu"):
        slimjax.solvers.Successive(tabu=1.5)
    with pytest.raises(ValueError, match="union_first"):
        slimjax.solve(inst, "successive", union_first="maybe")
    big = random_instance(0, U=1, N=1, L=1, E=17, M=3, K=2)
    with pytest.raises(ValueError, match="E <= 16"):
        slimjax.solve(big, "successive", oracle="exact")


def test_refined_grid_keeps_real_optima():
    """Sizes 2 and 3 with the smallest-size unit (2) cost 1 and 2 units; the default grid uses unit 1."""
    inst = random_instance(3, U=1, N=2, L=2, E=3, M=4, K=2, capacity=(1, 3))  # sizes [2, 3], capacities [3, 1]
    batch = slimjax.stack([inst])
    coarse = slimjax.ops.capacity_grid(batch, unit=2.0)
    np.testing.assert_array_equal(coarse.size_units[0], [1, 2])
    grid = slimjax.ops.capacity_grid(batch)
    np.testing.assert_array_equal(grid.size_units[0], [2, 3])
    np.testing.assert_array_equal(grid.capacity_units[0], [3, 1])
    assert grid.max_units == 3
    sol = slimjax.solve(inst, "successive")
    assert sol.objective == pytest.approx(brute_force_ref(inst)[0], rel=1e-5)


# -- successive-fast quality (greedy chain offers the best single expert) --------------------------


@pytest.mark.slow  # brute-force quality; the default run has tests/test_properties.py's solver property
def test_fast_quality_vs_brute_force(tiny):
    """successive with the greedy oracle and the hull DP on tiny instances: it must gain something wherever
    gain is possible (a node holding fewer experts than the pattern size K still gets its best
    single expert), and be near-optimal in the median."""
    r = _ratios(tiny, "successive", oracle="greedy", maxconv="hull")
    assert (r > 0.05).all(), r
    assert np.median(r) >= 0.97, r
    assert np.percentile(r, 5) >= 0.5, r


def test_greedy_oracle_sizes_one_and_sets_consistent(x64):
    """greedy_oracle: g[:, 1] is the exact optimum over single experts (= exact_oracle's g[:, 1]),
    g is non-decreasing, and the set behind every g[l, c] has at most c experts and that exact gain."""
    import jax.numpy as jnp

    from slimjax.ops._oracle import exact_oracle, greedy_oracle, pattern_prep
    from tests.reference_successive import pattern_latency_layer

    for seed in range(6):
        inst = random_instance(200 + seed, U=2, N=2, L=2, E=5, M=4, K=3, dtype=np.float64)
        lat, fb = np.asarray(inst.latency), np.asarray(inst.fallback)
        d = fb.copy()
        newp = np.minimum(d, lat[:, 0])
        pat, w, tr = inst.patterns, inst.weight, inst.traffic
        tw, dup = pattern_prep(pat, w, tr)
        g, select = greedy_oracle(jnp.asarray(d), jnp.asarray(newp), pat, tw, dup, "max")
        ge, _ = exact_oracle(jnp.asarray(d), jnp.asarray(newp), pat, tw, dup, "max")
        g, ge, twn, patn = np.asarray(g), np.asarray(ge), np.asarray(tw), np.asarray(pat)
        np.testing.assert_allclose(g[:, 1], ge[:, 1], rtol=1e-9, atol=1e-12)
        assert (np.diff(g, axis=1) >= -1e-12).all()
        assert (g <= ge + 1e-9).all()
        E = d.shape[-1]
        for c in range(E + 1):
            sel = np.asarray(select(jnp.full((g.shape[0],), c, jnp.int32)))
            assert (sel.sum(-1) <= c).all()
            for l in range(g.shape[0]):
                d2 = np.where(sel[l][None], newp[:, l], d[:, l])
                gain = (twn[:, l] * (pattern_latency_layer(d[:, l], patn[:, l], "max")
                                     - pattern_latency_layer(d2, patn[:, l], "max"))).sum()
                assert gain == pytest.approx(g[l, c], rel=1e-9, abs=1e-12)


def test_greedy_oracle_limit_stops_early_and_keeps_feasible_sizes():
    """With ``limit`` the chain stops once every layer holds ``limit[l]`` experts: g and the sets
    for counts ≤ limit equal the unlimited chain's (the DP never uses more), and it does not run
    past ``steps`` either."""
    import jax.numpy as jnp

    from slimjax.ops._oracle import greedy_oracle, pattern_prep
    inst = random_instance(300, U=1, N=2, L=3, E=24, M=12, K=3)
    d = np.asarray(inst.fallback)
    newp = np.minimum(d, np.asarray(inst.latency)[:, 0])
    tw, dup = pattern_prep(inst.patterns, inst.weight, inst.traffic)
    args = (jnp.asarray(d), jnp.asarray(newp), inst.patterns, tw, dup, "max")
    g_full, sel_full = greedy_oracle(*args)
    limit = jnp.asarray([2, 5, 0], jnp.int32)
    g_lim, sel_lim = greedy_oracle(*args, limit=limit)
    g_full, g_lim = np.asarray(g_full), np.asarray(g_lim)
    for l, lim in enumerate([2, 5, 0]):
        np.testing.assert_array_equal(g_lim[l, : lim + 1], g_full[l, : lim + 1])
        assert (np.diff(g_lim[l]) >= 0).all()
    for c in range(6):
        counts = jnp.minimum(jnp.full((3,), c, jnp.int32), limit)
        np.testing.assert_array_equal(np.asarray(sel_lim(counts)), np.asarray(sel_full(counts)))
    assert g_full[:, -1].max() > g_lim[:, -1].max()  # the limited chain really stopped early


# -- the fast paths of large instances equal the plain ones ---------------------------------------------


@pytest.mark.parametrize("oracle", ["greedy", pytest.param("exact", marks=pytest.mark.slow)])  # default: the one large instances use
def test_sequential_candidates_equal_vmapped(oracle):
    """``sequential`` (candidates one after another, twins and unchanged revisits skipped) gives the
    placement and info of the side-by-side candidates, bit for bit: with twin orders, the union
    candidate, restarts (tabu) and two revisit rounds. Two batches (four random instances, three
    below-K ones): one program per batch shape and path."""
    import jax.numpy as jnp

    batches = (slimjax.stack([random_instance(400 + s, U=2, N=3, L=3, E=6, M=7, K=3) for s in range(4)]),
               slimjax.stack([_below_k_instance(s) for s in range(3)]))
    for batch in batches:
        grid = slimjax.ops.capacity_grid(batch)
        base = succ.SuccessiveConfig(Qmax=bucket_units(grid.max_units), orders=("fastest-first", "given", "given",
                                     "fastest-first"), unions=(False, False, False, True), oracle=oracle,
                                     maxconv="dense", aggregation="max", revisit=2, restarts=2,
                                     Qunion=bucket_units(2 * grid.max_units))
        keys = jax.random.split(jax.random.key(7), len(batch))
        args = (batch, jnp.asarray(grid.size_units, jnp.int32), jnp.asarray(grid.capacity_units, jnp.int32))
        x0, i0 = succ.successive_batch(*args, base, keys)
        x1, i1 = succ.successive_batch(*args, base._replace(sequential=True), keys)
        np.testing.assert_array_equal(np.asarray(x0), np.asarray(x1))
        for k in i0:
            np.testing.assert_array_equal(np.asarray(i0[k]), np.asarray(i1[k]))


def test_sequential_is_chosen_for_large_pattern_counts():
    shape_small, shape_large = (1, 3, 4, 16, 100, 4), (1, 3, 26, 64, 7345, 6)
    grid = slimjax.ops.capacity_grid(random_instance(1, U=1, N=3, L=4, E=16, M=10, K=4))
    assert not BEST_NO_POLISH.config(shape_small, grid, "max").sequential
    assert BEST_NO_POLISH.config(shape_large, grid, "max").sequential
    assert not slimjax.solvers.Successive().config(shape_large, grid, "max").sequential  # one candidate


#: default: one 32-bit word (E = 8) and four, the last one partly used (E = 100); --slow also two
#: words, exactly full words and the gathers of E > 128 against themselves
@pytest.mark.parametrize("E", [e if e in (8, 100) else pytest.param(e, marks=pytest.mark.slow) for e in (8, 40, 64, 100, 200)])
def test_greedy_oracle_bitmask_equals_gathers(E, monkeypatch):
    """The greedy chain reads its set as per-layer bit masks (E <= 128) or by gathers: same curves and sets."""
    import jax.numpy as jnp

    from slimjax.ops import _oracle
    inst = random_instance(500 + E, U=2, N=2, L=3, E=E, M=40, K=4)
    d = np.asarray(inst.fallback)
    newp = np.minimum(d, np.asarray(inst.latency)[:, 0])
    tw, dup = _oracle.pattern_prep(inst.patterns, inst.weight, inst.traffic)
    args = (jnp.asarray(d), jnp.asarray(newp), inst.patterns, tw, dup, "max")
    g1, s1 = _oracle.greedy_oracle(*args)
    monkeypatch.setattr(_oracle, "BITMASK_MAX_WORDS", 0)
    g0, s0 = _oracle.greedy_oracle(*args)
    np.testing.assert_array_equal(np.asarray(g1), np.asarray(g0))
    for c in (1, 3, E // 2, E):
        counts = jnp.full((3,), c, jnp.int32)
        np.testing.assert_array_equal(np.asarray(s1(counts)), np.asarray(s0(counts)))


@pytest.mark.parametrize("E", [8, 200])  # bit masks (set flags) and gathers (E > 128)
def test_greedy_oracle_vmapped_equals_one_by_one(E):
    """The chain's flat gather and scatter (their own vmap rules: the batch flattened into one 1-D
    index) give, vmapped once and twice, bit for bit the curves and sets of one instance at a time."""
    import jax
    import jax.numpy as jnp

    from slimjax.ops import _oracle
    insts = [random_instance(700 + E + i, U=2, N=2, L=3, E=E, M=40, K=4) for i in range(4)]
    d = jnp.stack([jnp.asarray(i.fallback) for i in insts])
    newp = jnp.minimum(d, jnp.stack([jnp.asarray(i.latency)[:, 0] for i in insts]))
    pat = jnp.stack([i.patterns for i in insts])
    tw, dup = jax.vmap(_oracle.pattern_prep)(pat, jnp.stack([i.weight for i in insts]), jnp.stack([i.traffic for i in insts]))
    counts = jnp.asarray([1, E // 3, E], jnp.int32)

    def one(d, newp, pat, tw, dup):
        g, select = _oracle.greedy_oracle(d, newp, pat, tw, dup, "max")
        return g, select(counts)

    ref = [jax.jit(one)(d[b], newp[b], pat[b], tw[b], dup[b]) for b in range(4)]
    args = (d, newp, pat, tw, dup)
    g1, x1 = jax.jit(jax.vmap(one))(*args)
    g2, x2 = jax.jit(jax.vmap(jax.vmap(one)))(*jax.tree.map(lambda a: a.reshape((2, 2) + a.shape[1:]), args))
    for b in range(4):
        for g, x in ((g1[b], x1[b]), (g2[b // 2, b % 2], x2[b // 2, b % 2])):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(ref[b][0]))
            np.testing.assert_array_equal(np.asarray(x), np.asarray(ref[b][1]))


def _callers_of(hlo: str, op: str) -> set:
    """Names of the computations of a compiled HLO text that call a fused computation containing ``op``."""
    comps, name = {}, None
    for line in hlo.splitlines():
        head = line.split(" (", 1)[0]
        if line and not line.startswith(" ") and "{" in line and "(" in line:
            name = head.split()[-1].lstrip("%")
            comps[name] = []
        elif name is not None:
            comps[name].append(line)
    with_op = {c for c, body in comps.items() if any(f" {op}(" in b for b in body)}
    return {c for c, body in comps.items() for b in body for f in with_op if f"calls=%{f}" in b}


def test_maybe_skips_under_vmap():
    """``_maybe`` keeps its body inside the loop under ``vmap`` (the predicate batched): XLA's
    while-loop-invariant code motion must not hoist it into the caller, where it would run whatever
    the predicate (skipped candidates and revisits ran all the same before the barrier)."""
    import jax.numpy as jnp

    def f(pred, x):
        return succ._maybe(pred, lambda y: jnp.cos(y) * 3.0, x, (x,))

    hlo = jax.jit(jax.vmap(f)).lower(jnp.array([False, True]), jnp.ones((2, 64))).compile().as_text()
    callers = _callers_of(hlo, "cosine")
    assert callers, "no fused cosine found in the compiled program"
    entry = [ln.split()[1].lstrip("%") for ln in hlo.splitlines() if ln.startswith("ENTRY")]
    assert not set(entry) & callers, f"the body was hoisted out of the loop into {callers}"
    np.testing.assert_allclose(np.asarray(jax.vmap(f)(jnp.array([False, True]), jnp.ones((2, 3)))),
                               np.array([[1.0] * 3, [np.cos(1.0) * 3.0] * 3]), rtol=1e-6)
