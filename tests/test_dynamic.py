"""slimjax.dynamic: timelines, policies, the migration-aware window solve and its exact references."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slimjax
from slimjax import dynamic
from slimjax.dynamic._myopic import WindowConfig, window_solve
from slimjax.dynamic._policies import _lru_window, forecast_window
from slimjax.ops._oracle import exact_oracle, greedy_oracle, modular_oracle, pattern_prep
from slimjax.traces import Trace
from tests.helpers import random_instance

LIGHT = "successive"  # one order, no revisit, no local search: cheap to compile
PLACEMENT = ("static", "resolve", "incremental", "lfu", "lru", "hindsight")  # the window-level policies


def tiny_timeline(seed, T=4, U=1, N=2, L=2, E=4, M=5, K=2, **kw):
    """A timeline over one random network; every window draws its own routing (and traffic)."""
    base = random_instance(seed, U=U, N=N, L=L, E=E, M=M, K=K, **kw)
    wins = [base]
    for t in range(1, T):
        r = random_instance(1000 * seed + t, U=U, N=N, L=L, E=E, M=M, K=K, **kw)
        wins.append(base.replace(patterns=r.patterns, weight=r.weight, traffic=r.traffic))
    return dynamic.timeline(wins)


def tiny_batch(seeds, **kw):
    return dynamic.stack_timelines([tiny_timeline(s, **kw) for s in seeds])


def net_cost(inst, x, x_prev, penalty):
    size = np.asarray(inst.size, np.float64)
    moved = (np.asarray(x) & ~np.asarray(x_prev)) * size[None]
    return float(slimjax.objective(inst, x)) + penalty * float(moved.sum())


def moved_np(tl, xs):
    size = np.asarray(tl.windows.size[:, 0], np.float64)  # [B, L, E]
    prev = np.concatenate([xs[:, :1], xs[:, :-1]], axis=1)
    return np.einsum("btnle,ble->btn", (xs & ~prev).astype(np.float64), size)


# ----------------------------------------------------------------------------------------------
# The item cost of the layer oracles
# ----------------------------------------------------------------------------------------------


def _net_gain_table(d, newp, pats, w, cost, agg):
    """Brute force: the best net gain with at most c experts of each layer, [L, E+1]."""
    L, E = d.shape
    out = np.full((L, E + 1), -np.inf)
    for l in range(L):
        for mask in range(2**E):
            S = [e for e in range(E) if mask >> e & 1]
            dd = d[l].copy()
            dd[S] = newp[l][S]
            red = (lambda v: v.max(-1)) if agg == "max" else (lambda v: v.sum(-1))
            g = (w[l] * (red(d[l][pats[l]]) - red(dd[pats[l]]))).sum() - cost[l, S].sum()
            out[l, len(S)] = max(out[l, len(S)], g)
    out[:, 0] = 0.0
    return np.maximum.accumulate(out, axis=1)


@functools.partial(jax.jit, static_argnames=("kind", "agg"))
def _oracle_jit(d, newp, patterns, tw, dup, cost, kind, agg):
    E = d.shape[-1]
    if kind == "exact":
        g, select = exact_oracle(d, newp, patterns, tw, dup, agg, item_cost=cost)
    elif kind == "greedy":
        g, select = greedy_oracle(d, newp, patterns, tw, dup, agg, item_cost=cost)
    else:
        g, select = modular_oracle(d, newp, patterns, tw, item_cost=cost)
    L = g.shape[0]
    return g, jax.vmap(lambda c: select(jnp.full((L,), c, jnp.int32)))(jnp.arange(E + 1))


def _oracle_all(kind, d, newp, patterns, tw, dup, agg="max", item_cost=None):
    """(g [L, E+1], the selected sets for every uniform count c: [E+1, L, E]) in one jitted call."""
    g, sets = _oracle_jit(d, newp, patterns, tw, dup, item_cost, kind=kind, agg=agg)
    return np.asarray(g), np.asarray(sets)


@pytest.mark.parametrize("agg", ["max", "sum"])
def test_oracle_item_cost_is_exact(agg):
    for seed in range(4):
        inst = random_instance(seed, U=1, N=2, L=2, E=5, M=6, K=2)
        tw, dup = pattern_prep(inst.patterns, inst.weight, inst.traffic)
        d = inst.fallback
        newp = jnp.minimum(d, inst.latency[:, 0])
        rng = np.random.default_rng(seed)
        cost = (rng.uniform(0, 1.0, (2, 5)) * (rng.random((2, 5)) < 0.6)).astype(np.float32)
        g, sets = _oracle_all("exact", d, newp, inst.patterns, tw, dup, agg, jnp.asarray(cost))
        ref = _net_gain_table(np.asarray(d[0]), np.asarray(newp[0]), np.asarray(inst.patterns[0]), np.asarray(tw[0]),
                              cost.astype(np.float64), agg)
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5)
        assert (sets.sum(-1) <= np.arange(6)[:, None]).all()  # the set behind g[l, c] has at most c experts


def test_oracle_item_cost_none_and_zero_agree():
    """The cost path with a zero cost reproduces the plain oracle (the modular one: see the "sum" case above)."""
    inst = random_instance(3, U=2, N=2, L=3, E=6, M=7, K=3)
    tw, dup = pattern_prep(inst.patterns, inst.weight, inst.traffic)
    d = inst.fallback
    newp = jnp.minimum(d, inst.latency[:, 1])
    zero = jnp.zeros((3, 6), jnp.float32)
    for kind in ("exact", "greedy"):
        g0, s0 = _oracle_all(kind, d, newp, inst.patterns, tw, dup)
        gz, sz = _oracle_all(kind, d, newp, inst.patterns, tw, dup, item_cost=zero)
        if kind == "greedy":  # another selection rule along the chain (best state of each size): same values
            np.testing.assert_allclose(g0, gz, rtol=1e-6, atol=1e-7)
        else:  # x - 0 is exact
            np.testing.assert_array_equal(g0, gz)
            np.testing.assert_array_equal(s0, sz)


def test_greedy_oracle_item_cost_values_are_its_sets():
    for seed in range(4):
        inst = random_instance(seed, U=1, N=2, L=2, E=6, M=8, K=3)
        tw, dup = pattern_prep(inst.patterns, inst.weight, inst.traffic)
        d = inst.fallback
        newp = jnp.minimum(d, inst.latency[:, 0])
        cost = np.random.default_rng(seed).uniform(0, 1.5, (2, 6)).astype(np.float32)
        g, sets = _oracle_all("greedy", d, newp, inst.patterns, tw, dup, item_cost=jnp.asarray(cost))
        gx, _ = _oracle_all("exact", d, newp, inst.patterns, tw, dup, item_cost=jnp.asarray(cost))
        pats, w = np.asarray(inst.patterns[0]), np.asarray(tw[0], np.float64)
        dn, nn = np.asarray(d[0], np.float64), np.asarray(newp[0], np.float64)
        for c in range(7):
            S = sets[c]
            for l in range(2):
                dd = dn[l].copy()
                dd[S[l]] = nn[l][S[l]]
                net = (w[l] * (dn[l][pats[l]].max(-1) - dd[pats[l]].max(-1))).sum() - cost[l][S[l]].sum()
                assert S[l].sum() <= c
                assert abs(float(g[l, c]) - net) <= 1e-5
        assert (g <= gx + 1e-5).all()  # never above the exact optimum


# ----------------------------------------------------------------------------------------------
# Timelines from a trace with a task shift (tiny: every policy compiles once on these shapes)
# ----------------------------------------------------------------------------------------------


def shift_trace(T=120, L=2, E=4, K=2, shift=60, request=12, seed=0):
    """A synthetic trace whose task switches at token ``shift``: task 0 prefers the low expert ids,
    task 1 the high ones; requests of ``request`` tokens."""
    rng = np.random.default_rng(seed)
    pop = np.linspace(1.0, 0.1, E) ** 2
    ids = np.zeros((T, L, K), np.int32)
    task = (np.arange(T) >= shift).astype(np.int64)
    for t in range(T):
        p = pop if task[t] == 0 else pop[::-1]
        for l in range(L):
            ids[t, l] = rng.choice(E, K, replace=False, p=p / p.sum())
    return Trace(ids, E, task=task, request=np.arange(T) // request, source="synthetic task shift")


NETS = [random_instance(s, U=1, N=2, L=2, E=4, M=3, K=2) for s in range(5)]


@pytest.fixture(scope="module")
def tls():
    """5 timelines (one per network) of 5 windows of 24 tokens, unmerged patterns (M = 24)."""
    return dynamic.timeline_from_trace(shift_trace(), 24, slimjax.stack(NETS), merge=False)


@pytest.fixture(scope="module")
def results(tls):
    """Every policy on the same timelines, with a budget of 2 units per node and window."""
    out = {p: dynamic.run(tls, p, budget=2.0, solver=LIGHT) for p in PLACEMENT}
    out["incremental-zero"] = dynamic.run(tls, "incremental", budget=0.0, solver=LIGHT)
    out["incremental-free"] = dynamic.run(tls, "incremental", solver=LIGHT)
    out["resolve-free"] = dynamic.run(tls, "resolve", solver=LIGHT)
    return out


def test_shapes_and_accounting(tls, results):
    B, T = len(tls), tls.num_windows
    U, N, L, E, M, K = tls.shape
    trace = shift_trace()
    for name, r in results.items():
        assert r.placements.shape == (B, T, N, L, E) and r.placements.dtype == bool
        assert r.objective.shape == (B, T) and r.moved.shape == (B, T, N) and r.p95.shape == (B, T)
        np.testing.assert_allclose(r.moved, moved_np(tls, r.placements), rtol=1e-6, atol=1e-6)
        assert (r.moved[:, 0] == 0).all()
        np.testing.assert_allclose(r.total, r.objective[:, 1:].sum(-1))
        for b, t in itertools.product(range(B), range(T)):  # J of x_t on window t's true routing
            inst = tls.windows[b, t]
            x = r.placements[b, t]
            assert abs(r.objective[b, t] - float(slimjax.objective(inst, x))) <= 1e-5 * r.objective[b, t]
            assert slimjax.feasible(inst, x).ok
            if b == 0:  # p95 and J are the replay of the window's tokens through x_t
                lat = np.asarray(slimjax.replay(NETS[b], x, trace.expert_ids[24 * t: 24 * (t + 1)]), np.float64)
                assert r.p95[b, t] == pytest.approx(np.percentile(lat, 95, method="inverted_cdf"), rel=1e-6)
                assert r.info["p50"][b, t] == pytest.approx(np.percentile(lat, 50, method="inverted_cdf"), rel=1e-6)
                assert r.objective[b, t] == pytest.approx(lat.mean(), rel=1e-5)
        assert r.seconds >= 0 and r.compile_seconds >= 0


def test_every_policy_starts_from_the_same_deployment(results):
    x0 = results["static"].placements[:, 0]
    for r in results.values():
        np.testing.assert_array_equal(r.placements[:, 0], x0)


def test_budget_holds_in_every_window_of_every_policy(results):
    for name, r in results.items():
        if name.endswith("-free") or name == "static":  # Static has no budget (it never moves)
            assert np.isinf(r.info["budget"]).all()
            continue
        bud = 0.0 if name == "incremental-zero" else 2.0
        assert (r.moved <= bud + 1e-6).all(), name
        assert (r.info["budget"] == bud).all()
    assert results["resolve-free"].moved.max() > 2.0  # the budget did bind


def test_static_never_moves(results):
    r = results["static"]
    assert (r.moved == 0).all()
    np.testing.assert_array_equal(r.placements, np.broadcast_to(r.placements[:, :1], r.placements.shape))


def test_zero_budget_incremental_is_static(results):
    np.testing.assert_array_equal(results["incremental-zero"].placements, results["static"].placements)
    np.testing.assert_array_equal(results["incremental-zero"].objective, results["static"].objective)


def test_free_incremental_is_resolve_on_every_window(results):
    inc, res = results["incremental-free"], results["resolve-free"]
    np.testing.assert_array_equal(inc.placements, res.placements)
    np.testing.assert_array_equal(inc.objective, res.objective)
    assert inc.moved.sum() > 0  # the windows differ, so re-solving moves copies


def test_task_shift_incremental_beats_static(results):
    inc, static, hind = results["incremental"], results["static"], results["hindsight"]
    assert (inc.total <= static.total * (1 + 1e-6)).all()
    assert (inc.total < static.total * (1 - 1e-3)).any()  # the shift is worth following
    assert (hind.total <= static.total * (1 + 1e-6)).all()
    # window 1: both start from x_0; each is at least as good as x_0 on what it optimised
    assert (inc.info["forecast_objective"][:, 1] <= static.info["forecast_objective"][:, 1] * (1 + 1e-6)).all()
    assert (hind.objective[:, 1] <= static.objective[:, 1] * (1 + 1e-6)).all()


def test_lru_devices_change_servers_stay(results):
    r, static = results["lru"], results["static"]
    np.testing.assert_array_equal(r.placements[:, :, 1:], static.placements[:, :, 1:])  # node 0 is the device
    assert (r.info["loaded"] >= r.moved - 1e-6).all()  # token-level loads include re-loads
    assert (r.info["loaded"][:, :, 1:] == 0).all()
    assert r.info["loaded"].sum() > 0


def test_lfu_without_budget_is_the_popularity_solver(tls):
    r = dynamic.run(tls, "lfu", solver=LIGHT)
    for t in range(1, tls.num_windows):
        sol = slimjax.solve_batch(tls.windows[:, t - 1], "popularity", merge_patterns=False)
        np.testing.assert_array_equal(r.placements[:, t], sol.placement)


def test_lfu_with_ema_forecast(tls):
    r = dynamic.run(tls, "lfu", budget=2.0, forecast="ema", ema_alpha=0.5, ema_horizon=2, solver=LIGHT)
    assert (r.moved <= 2.0 + 1e-6).all()
    last = dynamic.run(tls, "lfu", budget=2.0, solver=LIGHT)
    np.testing.assert_array_equal(r.placements[:, 1], last.placements[:, 1])  # one past window: the same forecast


def test_penalty_prices_migration(tls, results):
    free = results["incremental-free"]
    inf = np.full(2, np.inf)  # no limit, through the budgeted program (shares its compilation)
    priced = dynamic.run(tls, "incremental", budget=inf, penalty=1e3, solver=LIGHT)
    mild = dynamic.run(tls, "incremental", budget=inf, penalty=1e-3, solver=LIGHT)
    assert priced.moved.sum() == 0  # a penalty above any gain per unit moves nothing
    assert 0 < mild.moved.sum() <= free.moved.sum()


def test_vmap_vs_loop(tls, results):
    """A timeline alone gives what it gives in the batch (another compiled program: J to float
    rounding, placements equal except among placements of equal J)."""
    r = results["incremental"]
    b = 3
    one = dynamic.run(tls[b], "incremental", budget=2.0, solver=LIGHT)
    np.testing.assert_allclose(one.objective[0], r.objective[b], rtol=1e-5)
    for t in range(tls.num_windows):
        if not np.array_equal(one.placements[0, t], r.placements[b, t]):
            inst = tls.windows[b, t]
            ja = float(slimjax.objective(inst, one.placements[0, t]))
            jb = float(slimjax.objective(inst, r.placements[b, t]))
            assert abs(ja - jb) <= 1e-5 * abs(jb)


def test_no_recompile_on_second_call(tls, results):
    again = dynamic.run(tls, "incremental", budget=1.0, solver=LIGHT)  # another budget: traced
    assert again.compile_seconds == 0.0
    assert (again.moved <= 1.0 + 1e-6).all()


def test_sweep_rows_are_the_runs(tls, results):
    cap = np.asarray(tls.windows.capacity[:, 0], np.float64)
    share = 0.25
    out = dynamic.sweep(tls, ("static", "incremental", "hindsight"), (share, None), solver=LIGHT)
    w, tot = out["windows"], out["totals"]
    B, T = len(tls), tls.num_windows
    assert len(w["objective"]) == 2 * 3 * B * T and len(tot["total"]) == 2 * 3 * B
    assert all(len(v) == len(w["objective"]) for v in w.values())
    ref = dynamic.run(tls, "incremental", budget=share * cap, solver=LIGHT)
    sel = (w["policy"] == "incremental") & (w["budget_share"] == share)
    np.testing.assert_array_equal(w["objective"][sel], ref.objective.reshape(-1))
    np.testing.assert_array_equal(w["moved"][sel], ref.moved.sum(-1).reshape(-1))
    np.testing.assert_array_equal(w["timeline"][sel], np.repeat(np.arange(B), T))
    np.testing.assert_array_equal(w["window"][sel], np.tile(np.arange(T), B))
    assert (w["moved_max_node"][sel] <= share * cap.max() + 1e-6).all()
    assert not w["evaluated"][w["window"] == 0].any() and w["evaluated"][w["window"] > 0].all()
    free = (w["policy"] == "incremental") & np.isinf(w["budget_share"])
    np.testing.assert_array_equal(w["objective"][free], results["incremental-free"].objective.reshape(-1))
    assert (w["moved"][w["policy"] == "static"] == 0).all()
    # totals and the share of the static -> hindsight gap recovered, per timeline
    t_sel = (tot["policy"] == "incremental") & (tot["budget_share"] == share)
    np.testing.assert_array_equal(tot["total"][t_sel], ref.total)
    st = tot["total"][(tot["policy"] == "static") & (tot["budget_share"] == share)]
    hi = tot["total"][(tot["policy"] == "hindsight") & (tot["budget_share"] == share)]
    gap = st - hi
    want = np.where(gap > 0, (st - ref.total) / np.where(gap > 0, gap, 1), np.nan)
    np.testing.assert_allclose(tot["gap_recovered"][t_sel], want, equal_nan=True)
    st_rec = tot["gap_recovered"][(tot["policy"] == "static") & (tot["budget_share"] == share)]
    assert (st_rec[gap > 0] == 0).all() and np.isnan(st_rec[gap <= 0]).all()
    assert np.isfinite(tot["gap_recovered"]).any()


def test_sweep_bad_input_names_the_field(tls):
    with pytest.raises(ValueError, match="policies"):
        dynamic.sweep(tls, ("static", "nope"), (0.1,))
    with pytest.raises(ValueError, match="policies"):
        dynamic.sweep(tls, "static", (0.1,))
    with pytest.raises(ValueError, match="budget_shares"):
        dynamic.sweep(tls, ("static",), 0.1)
    with pytest.raises(ValueError, match="budget_shares"):
        dynamic.sweep(tls, ("static",), (-0.1,))
    with pytest.raises(ValueError, match="budget"):
        dynamic.sweep(tls, ("static",), (0.1,), budget=1.0)


def test_sampled_tokens_follow_the_routing(tls):
    plain = dynamic.Timeline(tls.windows)  # no tokens
    # every b has the same routing (one trace): pool the tokens of window 0 over b and 12 keys
    draws = [np.asarray(dynamic.sample_tokens(plain, 24, key=k).tokens[:, 0, :, 0]) for k in range(12)]
    freq = np.bincount(np.concatenate(draws).reshape(-1), minlength=4) / np.concatenate(draws).size
    w = tls.windows[0, 0]
    ref = np.asarray(slimjax.ops.expert_frequency(w.patterns, w.weight, 4, False))[0, 0] / 2  # K = 2 per token
    np.testing.assert_allclose(freq, ref, atol=0.04)
    r = dynamic.run(plain, "lru", budget=2.0, solver=LIGHT, sampled_tokens=24, key=0)  # the LRU program of `results`
    assert np.isfinite(r.p95).all() and (r.moved <= 2.0 + 1e-6).all()


def test_lru_without_budget_follows_the_tokens(tls, results):
    """Without a budget the device ends every window holding the most recently used experts."""
    r = dynamic.run(tls, "lru", solver=LIGHT)  # the same program as with a budget (the budget is traced)
    assert r.compile_seconds == 0.0
    assert r.info["loaded"].sum() > results["lru"].info["loaded"].sum()
    su = np.asarray(slimjax.ops.capacity_grid(tls.windows[:, 0]).size_units)
    cu = np.asarray(slimjax.ops.capacity_grid(tls.windows[:, 0]).capacity_units)
    tok = np.asarray(tls.tokens)
    for b, t in itertools.product(range(len(tls)), range(1, tls.num_windows)):
        held = r.placements[b, t, 0]
        last = tok[b, t - 1, -1]  # the window's last token: its last layer's experts were used last
        l = last.shape[0] - 1
        if su[b, l] * len(set(last[l])) <= cu[b, 0]:
            assert held[l, last[l]].all(), (b, t)


# ----------------------------------------------------------------------------------------------
# The default solver against the brute force of every window's problem
# ----------------------------------------------------------------------------------------------


def test_incremental_is_the_myopic_optimum_within_quality_bars():
    """Every window of incremental (default solver: successive-best) against the brute force of its
    own problem: the forecast (window t-1), the previous placement x_{t-1}, the budget and the
    penalty (random per timeline and node). Quality bars of successive-best: median >= 99 %,
    5th percentile >= 95 % of the optimal gain over the empty placement."""
    seeds = range(20, 40)
    tl = dynamic.stack_timelines([tiny_timeline(s, T=3, U=2, E=3, M=5) for s in seeds])
    rng = np.random.default_rng(0)
    budget = rng.integers(0, 4, size=(len(seeds), 2)).astype(float)
    penalty = rng.choice([0.0, 0.02, 0.2], size=len(seeds))
    r = dynamic.run(tl, "incremental", budget=budget, penalty=penalty)
    fracs = []
    for b in range(len(tl)):
        for t in range(1, tl.num_windows):
            F = tl.windows[b, t - 1]
            prev, x = r.placements[b, t - 1], r.placements[b, t]
            got = net_cost(F, x, prev, penalty[b])
            _, opt = dynamic.brute_force_window(F, prev, budget[b], penalty[b])
            empty = float(slimjax.objective(F, np.zeros_like(x)))
            assert got >= opt - 1e-5 * abs(opt)  # the brute force is the optimum
            assert got <= net_cost(F, prev, prev, penalty[b]) * (1 + 1e-6)  # never worse than keeping x_{t-1}
            fracs.append((empty - got) / (empty - opt) if empty - opt > 1e-6 * empty else 1.0)
    fracs = np.array(fracs)
    assert np.median(fracs) >= 0.99 and np.percentile(fracs, 5) >= 0.95, fracs


def test_node_choice_jit_vs_eager():
    """The per-node step with the budget bisection (the traced control flow of the window solve)
    run op by op equals its compiled form."""
    from slimjax.dynamic._myopic import _choose, _oracle

    inst = random_instance(11, U=1, N=2, L=2, E=3, M=3, K=2)
    grid = slimjax.ops.capacity_grid(inst)
    cfg = dynamic.window_config(LIGHT, inst.shape, grid, "max", budgeted=True, bisect=2, migration=True)
    su = jnp.asarray(grid.size_units)
    new = jnp.asarray(np.array([[True, False, True], [True, True, False]]))
    newsz = jnp.where(new, inst.size, 0)

    def f(inst, q, b, pen):
        tw, dup = pattern_prep(inst.patterns, inst.weight, inst.traffic)
        oracle = _oracle(cfg, inst.patterns, tw, dup, su)
        d = inst.fallback
        newp = jnp.minimum(d, inst.latency[:, 0])
        return _choose(oracle, inst, tw, d, newp, q, b, su, new, newsz, pen, cfg)

    args = (inst, jnp.int32(grid.capacity_units[0]), jnp.int32(1), jnp.float32(0.05))
    x_jit = jax.jit(f)(*args)
    with jax.disable_jit():
        x_eager = f(*args)
    np.testing.assert_array_equal(np.asarray(x_eager), np.asarray(x_jit))
    assert int(jnp.where(x_jit & new, su[:, None], 0).sum()) <= 1


def test_budget_attempts_stop_when_the_budget_does_not_bind():
    """A node runs one oracle + DP attempt when μ = 0 fits its budget, 2 + bisect when the budget
    binds; the result is the one of the 1.0 route (every attempt run, ``stop_early=False``)."""
    from slimjax.dynamic._myopic import _choose, _oracle

    inst = random_instance(11, U=1, N=2, L=2, E=3, M=3, K=2)
    grid = slimjax.ops.capacity_grid(inst)
    su = jnp.asarray(grid.size_units)
    new = jnp.asarray(np.array([[True, False, True], [True, True, False]]))
    newsz = jnp.where(new, inst.size, 0)
    q = jnp.int32(grid.capacity_units[0])

    def choose(cfg, b, count):
        tw, dup = pattern_prep(inst.patterns, inst.weight, inst.traffic)
        base = _oracle(cfg, inst.patterns, tw, dup, su)

        def oracle(*a):
            jax.debug.callback(lambda: count.append(1))
            return base(*a)

        d = inst.fallback
        return _choose(oracle, inst, tw, d, jnp.minimum(d, inst.latency[:, 0]), q, b, su, new, newsz,
                       jnp.float32(0.0), cfg)

    for stop in (True, False):
        cfg = dynamic.window_config(LIGHT, inst.shape, grid, "max", budgeted=True, bisect=3, migration=True)
        cfg = cfg._replace(stop_early=stop)
        got = {}
        count: list = []  # one list for the one program of this cfg (the budget is its argument)
        run = jax.jit(lambda b, cfg=cfg, count=count: choose(cfg, b, count))
        for b in (0, 1, 100):
            count.clear()
            got[b] = np.asarray(run(jnp.int32(b)))
            jax.effects_barrier()
            # budget 100 never binds (μ = 0 fits); 0 and 1 bind for these new copies
            assert len(count) == (1 if (stop and b == 100) else 2 + 3), (stop, b, len(count))
        if stop:
            first = got
        else:
            for b in got:
                np.testing.assert_array_equal(got[b], first[b])


def test_stop_early_gives_the_same_timelines(tls, results, monkeypatch):
    """The incremental runs with a budget that binds in some windows and nodes (2 units) and one
    that never binds (inf through the budgeted program): the 1.0 route gives the same placements."""
    from slimjax.dynamic import _run

    real = _run.window_config
    inf = np.full(2, np.inf)
    fast = {"2": results["incremental"], "inf": dynamic.run(tls, "incremental", budget=inf, solver=LIGHT)}
    monkeypatch.setattr(_run, "window_config", lambda *a, **k: real(*a, **k)._replace(stop_early=False))
    for name, bud in (("2", 2.0), ("inf", inf)):
        slow = dynamic.run(tls, "incremental", budget=bud, solver=LIGHT)
        np.testing.assert_array_equal(slow.placements, fast[name].placements, err_msg=name)
    np.testing.assert_array_equal(fast["inf"].placements, results["incremental-free"].placements)


# ----------------------------------------------------------------------------------------------
# Forecasts, LRU, timelines from traces
# ----------------------------------------------------------------------------------------------


def test_ema_forecast_is_the_mixture_of_past_windows():
    w = tiny_timeline(2, T=5).windows
    x = np.random.default_rng(0).random(w.latency.shape[-3:]) < 0.4
    alpha, H = 0.6, 3
    for t in (1, 2, 4):
        F = forecast_window(w, t, "ema", alpha, H)
        np.testing.assert_allclose(np.asarray(F.weight).sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(float(F.traffic.sum()), 1.0, rtol=1e-6)
        ks = [k for k in range(H) if t - 1 - k >= 0]
        a = np.array([alpha * (1 - alpha) ** k for k in ks])
        a /= a.sum()
        # J is linear in the routing: J of the forecast is the weighted mix of the windows' J (U = 1)
        Js = np.array([float(slimjax.objective(w[t - 1 - k], x)) for k in ks])
        np.testing.assert_allclose(float(slimjax.objective(F, x)), (a * Js).sum(), rtol=1e-5)
    last = forecast_window(w, 3, "last", alpha, H)
    np.testing.assert_array_equal(np.asarray(last.patterns), np.asarray(w.patterns[2]))
    one = forecast_window(w, 3, "ema", 1.0, H)  # alpha = 1: all weight on the last window
    np.testing.assert_allclose(float(slimjax.objective(one, x)), float(slimjax.objective(w[2], x)), rtol=1e-6)


def _lru_reference(x_dev, ts, clock, prev_dev, tokens, weight, su, cap, bud):
    """Plain-Python token-level LRU of one device; ``loads`` [L, E]: times each copy was loaded."""
    L, E = x_dev.shape
    x, ts = x_dev.copy(), ts.copy()
    used = int((x * su[:, None]).sum())
    spent = 0
    loads = np.zeros((L, E), np.int64)
    for w in range(tokens.shape[0]):
        if weight[w] <= 0:
            continue
        for l in range(L):
            for e in tokens[w, l]:
                if x[l, e]:
                    ts[l, e] = clock
                elif su[l] <= cap and (prev_dev[l, e] or spent + su[l] <= bud):
                    while used + su[l] > cap:
                        flat = np.where(x, ts, np.iinfo(np.int32).max).reshape(-1)
                        v = int(np.argmin(flat))
                        x.reshape(-1)[v] = False
                        used -= su[v // E]
                    x[l, e] = True
                    used += su[l]
                    loads[l, e] += 1
                    spent += 0 if prev_dev[l, e] else su[l]
                    ts[l, e] = clock
                clock += 1
    return x, ts, clock, loads


def test_lru_window_matches_reference():
    rng = np.random.default_rng(1)
    L, E, K, W = 2, 5, 2, 12
    su = np.array([1, 2], np.int32)
    f = jax.jit(lambda *a: _lru_window(*a, devices=(0,), evict=2))
    for trial in range(4):
        x = np.zeros((2, L, E), bool)
        x[0, 0, :2] = True
        x[1, 1, 3] = True
        ts = np.where(x, -1, np.iinfo(np.int32).max).astype(np.int32)
        tokens = np.stack([[rng.choice(E, K, replace=False) for _ in range(L)] for _ in range(W)]).astype(np.int32)
        weight = np.where(rng.random(W) < 0.85, 1.0 / W, 0.0)
        cap = np.array([4 + trial, 6], np.int32)
        bud = np.array([2 + 2 * trial, 0], np.int32)
        xo, tso, clo, ld = f(jnp.asarray(x), jnp.asarray(ts), jnp.int32(0), jnp.asarray(x), jnp.asarray(tokens),
                             jnp.zeros(W, jnp.int32), jnp.asarray(weight, jnp.float32), jnp.asarray(su),
                             jnp.asarray(cap), jnp.asarray(bud))
        xr, tsr, clr, ldr = _lru_reference(x[0], ts[0], 0, x[0], tokens, weight, su, int(cap[0]), int(bud[0]))
        np.testing.assert_array_equal(np.asarray(xo[0]), xr)
        np.testing.assert_array_equal(np.asarray(xo[1]), x[1])  # only the tokens' device changes
        assert int(clo) == clr and ldr.sum() > 0
        np.testing.assert_array_equal(np.asarray(ld[0]), ldr)
        assert (np.asarray(ld[1]) == 0).all()
        np.testing.assert_array_equal(np.asarray(tso[0])[xr], tsr[xr])


@pytest.fixture(scope="module")
def odd_sizes():
    """The LRU on sizes that are not multiples of the grid unit (1.1 and 2.53: unit 1.1, layer 1
    charged 3 units = 3.3), and float32 sizes whose sums are not exact in float32."""
    nets = [n.replace(size=np.repeat([[1.1], [2.53]], 4, axis=1).astype(np.float32), capacity=np.array([12.0, 6.0]))
            for n in NETS[:2]]
    tl = dynamic.timeline_from_trace(shift_trace(), 24, slimjax.stack(nets), merge=False)
    return tl, dynamic.run(tl, "lru", solver=LIGHT)


def test_moved_is_the_float64_sum_of_the_float64_sizes(odd_sizes):
    import math

    tl, r = odd_sizes
    size = np.asarray(tl.windows.size, np.float64)  # [B, T, L, E]
    xs = r.placements
    B, T, N = r.moved.shape
    assert r.moved.dtype == np.float64
    want = np.zeros((B, T, N))
    for b, t, n in itertools.product(range(B), range(1, T), range(N)):
        want[b, t, n] = math.fsum(size[b, t][xs[b, t, n] & ~xs[b, t - 1, n]].tolist())
    np.testing.assert_array_equal(r.moved, want)
    assert want.sum() > 0
    new32 = (xs[:, 1:] & ~xs[:, :-1]).astype(np.float32)
    f32 = np.einsum("btnle,btle->btn", new32, size[:, 1:].astype(np.float32))
    assert (f32 != want[:, 1:]).any()  # a float32 sum is not exact here


def test_lru_loaded_is_in_size_units(odd_sizes):
    """``info["loaded"]`` is Σ of the real sizes of the copies the LRU loaded (re-loads included),
    not the rounded-up grid units its budget counts: the reference LRU on the device (node 0),
    window by window, its loads at the float64 sizes."""
    import math

    tl, r = odd_sizes
    grid = slimjax.ops.capacity_grid(tl.windows[:, 0])
    su, cu, unit = np.asarray(grid.size_units), np.asarray(grid.capacity_units), np.asarray(grid.unit)
    assert (su[:, 1] * unit > 2.53 * 1.25).all()  # the grid charges layer 1 3.3 for 2.53
    size = np.asarray(tl.windows.size, np.float64)  # [B, T, L, E]
    tok, tw = np.asarray(tl.tokens), np.asarray(tl.token_weight)
    B, T, N = r.moved.shape
    assert r.info["loaded"].dtype == np.float64 and r.info["loaded"].shape == (B, T, N)
    for b in range(B):
        x = r.placements[b, 0, 0]
        ts, clock = np.where(x, -1, np.iinfo(np.int32).max).astype(np.int64), 0
        grid_loaded = 0.0
        for t in range(1, T):
            x, ts, clock, loads = _lru_reference(x, ts, clock, x, tok[b, t - 1], tw[b, t - 1], su[b], int(cu[b, 0]),
                                                 np.iinfo(np.int32).max)
            np.testing.assert_array_equal(r.placements[b, t, 0], x)
            assert r.info["loaded"][b, t, 0] == pytest.approx(math.fsum((loads * size[b, t]).ravel()), rel=1e-12)
            grid_loaded += float((loads * su[b][:, None]).sum() * unit[b])
        assert (r.info["loaded"][b, :, 1:] == 0).all() and (r.info["loaded"][b, 0] == 0).all()
        assert grid_loaded > r.info["loaded"][b].sum() * 1.05  # what counting grid units reported
    assert (r.info["loaded"] >= r.moved - 1e-9).all() and r.info["loaded"].sum() > 0


def test_timeline_from_trace_windows():
    net = NETS[0]
    trace = shift_trace(T=100, shift=50, request=30)
    tl = dynamic.timeline_from_trace(trace, 30, net)
    assert tl.num_windows == 3  # 100 tokens: 3 full windows, the remainder of 10 is dropped
    np.testing.assert_array_equal(np.asarray(tl.tokens[1]), trace.expert_ids[30:60])
    x = np.random.default_rng(0).random(net.latency.shape[1:]) < 0.5
    for t in range(3):  # merged patterns: J of the window is still the mean of its replayed tokens
        lat = slimjax.replay(net, x, trace.expert_ids[30 * t: 30 * (t + 1)])
        np.testing.assert_allclose(float(slimjax.objective(tl.windows[t], x)), float(lat.mean()), rtol=1e-5)
    assert tl.shape[4] < 30  # identical expert sets were merged
    counts = lambda t: (np.asarray(t.token_weight) > 0).sum(-1).tolist()  # noqa: E731
    req = dynamic.timeline_from_trace(trace, 45, net, align="request")  # requests of 30: never split
    assert counts(req) == [30, 30, 40]
    assert np.allclose(np.asarray(req.token_weight).sum(-1), 1.0)
    assert counts(dynamic.timeline_from_trace(trace, 70, net, align="task")) == [50, 50]
    assert counts(dynamic.timeline_from_trace(trace, 20, net, align="task")) == [20, 20, 10, 20, 20, 10]
    kept = dynamic.timeline_from_trace(trace, 30, net, drop_last=False)
    assert counts(kept) == [30, 30, 30, 10]
    batched = dynamic.timeline_from_trace(trace, 30, slimjax.stack([net, NETS[1]]))
    assert batched.batch_shape == (2,)
    np.testing.assert_array_equal(np.asarray(batched.windows.capacity[1, 2]), np.asarray(NETS[1].capacity))


def test_timeline_from_trace_two_users():
    net = random_instance(4, U=2, N=3, L=2, E=4, M=3, K=2, unreachable=False)
    base = shift_trace(T=60)
    user = (np.arange(60) % 3 == 0).astype(np.int64)  # a third of the tokens are user 1's
    tr = Trace(base.expert_ids, 4, user=user)
    tl = dynamic.timeline_from_trace(tr, 30, net)
    np.testing.assert_allclose(np.asarray(tl.windows.traffic), [[2 / 3, 1 / 3]] * 2, rtol=1e-6)
    x = np.random.default_rng(1).random(net.latency.shape[1:]) < 0.5
    lat = np.concatenate([np.asarray(slimjax.replay(net, x, tr.expert_ids[:30][user[:30] == u], user=u)) for u in (0, 1)])
    np.testing.assert_allclose(float(slimjax.objective(tl.windows[0], x)), lat.mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="user ids"):
        dynamic.timeline_from_trace(base, 30, net)


# ----------------------------------------------------------------------------------------------
# The drift generator
# ----------------------------------------------------------------------------------------------


def test_drift_generator_determinism_and_drift():
    kw = dict(model={"layers": 2, "experts": 8, "top_k": 2, "hidden": 64, "ffn": 64}, network={"servers": 1},
              routing={"tokens": 200})
    a = dynamic.drift(jax.random.key(3), 3, 8, period=4, **kw)
    assert a.batch_shape == (3,) and a.num_windows == 8 and a.has_tokens
    # the network is fixed, the routing moves: popularity changes more across phases than within
    E = 8
    freq = np.asarray(jax.vmap(jax.vmap(lambda w: slimjax.ops.expert_frequency(w.patterns, w.weight, E, True)))(a.windows))
    within = np.abs(freq[:, 1] - freq[:, 0]).sum(-1).mean()
    across = np.abs(freq[:, 4] - freq[:, 3]).sum(-1).mean()
    assert across > 2 * within
    smooth = dynamic.drift(jax.random.key(3), 3, 8, period=4, mode="smooth", **kw)  # the same program
    np.testing.assert_array_equal(np.asarray(smooth.windows.capacity), np.asarray(a.windows.capacity))  # same networks
    # window 0 has the same mix in both modes (the phase's start): the same tokens
    np.testing.assert_array_equal(np.asarray(smooth.tokens[:, 0]), np.asarray(a.tokens[:, 0]))
    assert not np.array_equal(np.asarray(smooth.tokens[:, 2]), np.asarray(a.tokens[:, 2]))
    tok = np.asarray(a.tokens[0, 0])  # the tokens are the patterns
    np.testing.assert_array_equal(tok, np.asarray(a.windows.patterns[0, 0, 0]).transpose(1, 0, 2))


@pytest.mark.slow
def test_drift_timeline_depends_only_on_key_and_index():
    kw = dict(model={"layers": 2, "experts": 8, "top_k": 2, "hidden": 64, "ffn": 64}, network={"servers": 1},
              routing={"tokens": 50})
    a = dynamic.drift(jax.random.key(3), 3, 4, **kw)
    b = dynamic.drift(jax.random.key(3), 2, 4, **kw)
    np.testing.assert_array_equal(np.asarray(a.windows.patterns[:2]), np.asarray(b.windows.patterns))


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_bad_input_names_the_field(tls):
    with pytest.raises(ValueError, match="policy"):
        dynamic.run(tls, "oracle")
    with pytest.raises(ValueError, match="forecast"):
        dynamic.run(tls, "static", forecast="arima")
    with pytest.raises(ValueError, match="budget"):
        dynamic.run(tls, "incremental", budget=-1.0)
    with pytest.raises(ValueError, match="budget"):
        dynamic.run(tls, "incremental", budget=np.ones(7))
    with pytest.raises(ValueError, match="budget"):
        dynamic.run(tls, "incremental", budget=np.nan)
    with pytest.raises(ValueError, match="penalty"):
        dynamic.run(tls, "incremental", penalty=-0.1)
    with pytest.raises(ValueError, match="ema_alpha"):
        dynamic.run(tls, "incremental", forecast="ema", ema_alpha=0.0)
    with pytest.raises(ValueError, match="solver"):
        dynamic.run(tls, "incremental", solver="greedy")
    with pytest.raises(ValueError, match="devices"):
        dynamic.run(tls, "lru", devices=(5,))
    w = [tls.windows[0, t] for t in range(3)]
    with pytest.raises(ValueError, match="windows.capacity"):
        dynamic.timeline([w[0], w[1].replace(capacity=w[1].capacity + 1), w[2]])
    with pytest.raises(ValueError, match="T >= 2"):
        dynamic.timeline([w[0]])
    with pytest.raises(ValueError, match="tokens"):
        dynamic.timeline(w, tokens=[np.full((3, 2, 2), 9)] * 3)
    net = NETS[0]
    trace = shift_trace(T=60)
    with pytest.raises(ValueError, match="E=6"):
        dynamic.timeline_from_trace(trace, 10, random_instance(0, U=1, N=2, L=2, E=6, M=3, K=2))
    with pytest.raises(ValueError, match="L=3"):
        dynamic.timeline_from_trace(trace, 10, random_instance(0, U=1, N=2, L=3, E=4, M=3, K=2))
    with pytest.raises(ValueError, match="window_tokens"):
        dynamic.timeline_from_trace(trace, 0, net)
    with pytest.raises(ValueError, match="at least 2"):
        dynamic.timeline_from_trace(trace, 60, net)
    with pytest.raises(ValueError, match="align"):
        dynamic.timeline_from_trace(Trace(trace.expert_ids, 4), 10, net, align="request")
    with pytest.raises(ValueError, match="mode"):
        dynamic.drift(0, 1, 4, mode="jump")
    with pytest.raises(ValueError, match="windows"):
        dynamic.drift(0, 1, 1)


# ----------------------------------------------------------------------------------------------
# Real traces (../shared)
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_traces_accounting_and_incremental_vs_static(shared_dir):
    import os

    from slimjax.traces import load

    raw = os.path.join(shared_dir, "traces", "raw")
    for path, model in ((os.path.join(raw, "weiran0129__vLLM-MoE-Logger"), "qwen1_5_moe_a2_7b"),
                        (os.path.join(raw, "KaxitPandya__cerebras-assesment2", "moe_routes.jsonl"), "olmoe_1b_7b")):
        trace = load(path)
        m = {"name": model, "layers": trace.num_layers}
        nets = slimjax.generate.instances(jax.random.key(0), 2, model=m, network={"servers": 2},
                                          routing={"tokens": 8})
        tl = dynamic.timeline_from_trace(trace, 512, nets)
        budget = 0.1 * np.asarray(tl.windows.capacity[:, 0])
        static = dynamic.run(tl, "static", solver=LIGHT)
        inc = dynamic.run(tl, "incremental", budget=budget, solver=LIGHT)
        np.testing.assert_allclose(inc.moved, moved_np(tl, inc.placements), rtol=1e-6)
        assert (inc.moved <= budget[:, None] * (1 + 1e-6)).all()
        assert (inc.total <= static.total * (1 + 1e-6)).all()


# ----------------------------------------------------------------------------------------------
# Policy objects: names are sugar, options validated, typed results
# ----------------------------------------------------------------------------------------------

RESULT_ARRAYS = ("placements", "objective", "token_objective", "forecast_objective", "moved", "loaded", "hits",
                 "accesses", "p50", "p95", "p99", "budget", "status")


def test_objects_and_names_give_identical_results(tls, results):
    objs = {"static": dynamic.Static(), "resolve": dynamic.Resolve(budget=2.0),
            "incremental": dynamic.Incremental(budget=2.0), "lfu": dynamic.LFU(budget=2.0),
            "lru": dynamic.LRU(budget=2.0), "hindsight": dynamic.Hindsight(budget=2.0)}
    assert set(objs) == set(PLACEMENT) and set(dynamic.POLICIES) == set(PLACEMENT) | {"token-lru", "token-lfu", "belady"}
    for name, obj in objs.items():
        r = dynamic.run(tls, obj, solver=LIGHT)
        assert r.compile_seconds == 0.0, name  # the name's run compiled the same programs
        assert r.policy == name == obj.name
        for f in RESULT_ARRAYS:
            np.testing.assert_array_equal(getattr(r, f), getattr(results[name], f), err_msg=f"{name}.{f}")
    # an option on the object or as a keyword with the object: the same run
    a = dynamic.run(tls, dynamic.Incremental(budget=2.0, penalty=1e-3), solver=LIGHT)
    b = dynamic.run(tls, dynamic.Incremental(), budget=2.0, penalty=1e-3, solver=LIGHT)
    np.testing.assert_array_equal(a.placements, b.placements)


def test_status_and_typed_fields(results):
    for name, r in results.items():
        want = dynamic.Status.OFFLINE if name == "hindsight" else dynamic.Status.ONLINE
        assert r.status.dtype == np.int8 and (r.status == want).all(), name
        assert set(r.status_names) == {want.name.lower()}
        assert r.info["p99"] is r.p99 and r.info["loaded"] is r.loaded  # the 0.x dict, from the fields
        assert (r.p50 <= r.p95).all() and (r.p95 <= r.p99).all()
        # tokens are the windows' patterns here: the replayed mean is J (float32 program vs float64 sum)
        np.testing.assert_allclose(r.token_objective, r.objective, rtol=1e-5)
        assert ((r.hits <= r.accesses) & (r.accesses[:, :, :1] > 0).all()).all()
        if name not in ("lru",):
            np.testing.assert_array_equal(r.loaded, r.moved)


def test_policy_objects_validate_and_document_their_options():
    import dataclasses

    for cls in (dynamic.Static, dynamic.Resolve, dynamic.Incremental, dynamic.LFU, dynamic.LRU, dynamic.Hindsight,
                dynamic.TokenLRU, dynamic.TokenLFU, dynamic.Belady):
        obj = cls()
        assert hash(obj) == hash(cls()) and obj == cls() and obj.label == obj.name
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc") and f.name in (cls.__doc__ or ""), (cls, f.name)
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.name2 = 1  # type: ignore[attr-defined]
    bad = [(dict(forecast="nope"), "forecast"), (dict(ema_alpha=0.0), "ema_alpha"), (dict(ema_horizon=0), "ema_horizon"),
           (dict(bisect=-1), "bisect"), (dict(budget=-1.0), "budget"), (dict(budget=[1.0, float("nan")]), "budget"),
           (dict(penalty=-1.0), "penalty"), (dict(penalty=float("inf")), "penalty"), (dict(budget="x"), "budget")]
    for kw, field in bad:
        with pytest.raises(ValueError, match=field):
            dynamic.Incremental(**kw)
        with pytest.raises(ValueError, match=field):  # the name form validates the 0.x options, used or not
            dynamic.run(tiny_timeline(0), "static", **kw)
    with pytest.raises(TypeError):
        dynamic.Static(budget=1.0)  # an option the policy does not have
    with pytest.raises(ValueError, match="options"):
        dynamic.Static().replace(budget=1.0)
    with pytest.raises(ValueError, match="policy"):
        dynamic.as_policy("nope")
    with pytest.raises(ValueError, match="options"):
        dynamic.as_policy("resolve", nope=1)
    inc = dynamic.Incremental(budget=np.array([1.0, 2.0]), forecast="ema")
    assert inc.budget == (1.0, 2.0) and hash(inc) and inc.label == "incremental(forecast='ema')"
    assert dynamic.as_policy("static", budget=2.0, penalty=1.0) == dynamic.Static()  # 0.x: ignored by static
    assert dynamic.as_policy("hindsight", budget=2.0, forecast="ema") == dynamic.Hindsight(budget=2.0)


def test_sweep_takes_objects_and_solves_x0_once(tls, monkeypatch):
    from slimjax.dynamic import _run, _sweep

    calls = []
    real = _run._Setup.deployment
    monkeypatch.setattr(_run._Setup, "deployment", lambda self, clock: calls.append(1) or real(self, clock))
    pols = (dynamic.Static(), dynamic.Incremental(), dynamic.Incremental(forecast="ema", ema_horizon=2), "lru")
    out = _sweep.sweep(tls, pols, (0.25, None), solver=LIGHT)
    assert len(calls) == 1  # one deployment for 2 shares x 4 policies
    w, tot = out["windows"], out["totals"]
    assert set(w["policy"]) == {"static", "incremental", "incremental(forecast='ema', ema_horizon=2)", "lru"}
    B, T = len(tls), tls.num_windows
    assert len(w["objective"]) == 2 * 4 * B * T
    st = w["policy"] == "static"  # no budget: one run, its rows repeated for every share
    np.testing.assert_array_equal(w["objective"][st & (w["budget_share"] == 0.25)], w["objective"][st & np.isinf(w["budget_share"])])
    cap = np.asarray(tls.windows.capacity[:, 0], np.float64)
    ref = dynamic.run(tls, dynamic.Incremental(forecast="ema", ema_horizon=2, budget=0.25 * cap), solver=LIGHT)
    sel = (w["policy"] == "incremental(forecast='ema', ema_horizon=2)") & (w["budget_share"] == 0.25)
    np.testing.assert_array_equal(w["objective"][sel], ref.objective.reshape(-1))
    assert np.isfinite(tot["hit_rate"]).all() and (tot["loaded"] >= tot["moved"] - 1e-6).all()
    with pytest.raises(ValueError, match="label"):
        dynamic.sweep(tls, (dynamic.Incremental(), "incremental"), (0.1,))
    with pytest.raises(ValueError, match="policy options"):
        dynamic.sweep(tls, (dynamic.Incremental(),), (0.1,), penalty=1.0)
