"""slimjax.dynamic's per-token device caches (TokenLRU, TokenLFU, Belady) against plain-Python
references, and the properties of the caching literature (Belady bounds LRU and LFU; a cache of
the whole model misses only cold starts). One shape per test, so every cache compiles once."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import slimjax
from slimjax import dynamic
from tests.helpers import random_instance

SOLVER = "successive"  # x_0 only: cheap to compile
T, W, U, N, L, E, K = 4, 5, 2, 3, 2, 4, 2  # devices: node 0 (user 0) and node 1 (user 1); node 2 a server
CACHES = ("token-lru", "token-lfu", "belady")
INF = np.iinfo(np.int32).max


def make_timeline(seed: int, capacity, sizes=(1.0, 1.0), reuse: float = 0.5) -> dynamic.Timeline:
    """T windows over one network (device capacities ``capacity``), tokens with some reuse."""
    rng = np.random.default_rng(seed)
    inst = random_instance(seed, U=U, N=N, L=L, E=E, M=3, K=K, unreachable=False, equal_sizes=True)
    inst = inst.replace(size=np.repeat(np.asarray(sizes, np.float32)[:, None], E, 1),
                        capacity=np.asarray(capacity, np.float32))
    tok = np.empty((T, W, L, K), np.int32)
    prev = None
    for t in range(T):
        for w in range(W):
            for l in range(L):
                if prev is not None and rng.random() < reuse:
                    tok[t, w, l] = prev[l]
                else:
                    tok[t, w, l] = rng.choice(E, K, replace=False)
            prev = tok[t, w]
    user = rng.integers(0, U, size=(T, W)).astype(np.int32)
    windows = slimjax.stack([inst] * T)
    return dynamic.timeline(windows, tokens=tok, token_user=user)


def reference(kind: str, tl: dynamic.Timeline, x0: np.ndarray, warm: bool):
    """Plain-Python replay of windows 1..T-1: (hits [T, N], loads [T, N, L, E], held [T, N, L, E],
    per-access hit flags in access order)."""
    grid = slimjax.ops.capacity_grid(tl.windows[0])
    su = np.asarray(grid.size_units).astype(int)
    cu = np.asarray(grid.capacity_units).astype(int)
    tok, usr = np.asarray(tl.tokens), np.asarray(tl.token_user)
    seq = [(int(usr[t, w]), l, int(tok[t, w, l, k]), t) for t in range(1, T) for w in range(W) for l in range(L)
           for k in range(K)]
    # next use of every access at the same device (user u's device is node u)
    nxt = [INF] * len(seq)
    last: dict = {}
    for i in range(len(seq) - 1, -1, -1):
        u, l, e, _ = seq[i]
        nxt[i] = last.get((u, l, e), INF)
        last[(u, l, e)] = i
    held = {n: {(l, e) for l in range(L) for e in range(E) if warm and x0[n, l, e]} for n in range(U)}
    ts = {n: {it: -1 for it in held[n]} for n in range(U)}
    nu = {n: {it: last.get((n,) + it, INF) for it in held[n]} for n in range(U)}
    cnt = {n: {} for n in range(U)}
    hits = np.zeros((T, N), int)
    loads = np.zeros((T, N, L, E), int)
    snap = np.repeat(x0[None], T, 0).copy()
    flags = []
    t_prev = 0
    for i, (n, l, e, t) in enumerate(seq):
        if t != t_prev:  # the start of window t: every device's holdings
            for d in range(U):
                snap[t, d] = False
                for (hl, he) in held[d]:
                    snap[t, d, hl, he] = True
            t_prev = t
        it = (l, e)
        hit = it in held[n]
        flags.append(hit)
        if hit:
            hits[t, n] += 1
            ts[n][it], nu[n][it] = i, nxt[i]
        else:
            used = sum(su[hl] for hl, _ in held[n])
            need = su[l]
            if kind == "belady":
                room = cu[n] - used + sum(su[hl] for (hl, he) in held[n] if nu[n][(hl, he)] > nxt[i])
                admit = nxt[i] < INF and need <= cu[n] and room >= need
            else:
                admit = need <= cu[n]
            while admit and used + need > cu[n]:
                flat = lambda x: x[0] * E + x[1]  # noqa: E731 - ties: the lowest flat index
                if kind == "token-lru":
                    v = min(held[n], key=lambda x: (ts[n][x], flat(x)))
                elif kind == "token-lfu":
                    v = min(held[n], key=lambda x: (cnt[n].get(x, 0), ts[n][x], flat(x)))
                else:
                    v = min(held[n], key=lambda x: (-nu[n][x], flat(x)))
                held[n].discard(v)
                used -= su[v[0]]
            if admit:
                held[n].add(it)
                loads[t, n, l, e] += 1
                ts[n][it], nu[n][it] = i, nxt[i]
        cnt[n][it] = cnt[n].get(it, 0) + 1
    return hits, loads, snap, np.array(flags)


def check_against_reference(tl, kind, warm):
    x0 = dynamic.deploy(tl, solver=SOLVER)
    r = dynamic.run(tl, dynamic.as_policy(kind, warm=warm), solver=SOLVER, x0=x0)
    hits, loads, snap, flags = reference(kind, tl, x0[0], warm)
    np.testing.assert_array_equal(r.hits[0, 1:], hits[1:])
    np.testing.assert_array_equal(r.placements[0, 1:], snap[1:])
    size = np.asarray(tl.windows.size[0], np.float64)
    np.testing.assert_allclose(r.loaded[0, 1:], np.einsum("tnle,le->tn", loads[1:], size), rtol=1e-12)
    # J: every access served from the device on a hit, else from the servers' x_0 or the fallback
    inst = tl.windows[0]
    lat, fb = np.asarray(inst.latency, np.float64), np.asarray(inst.fallback, np.float64)
    servers = x0[0].copy()
    servers[:U] = False
    d_miss = np.minimum(fb, np.where(servers[None], lat, np.inf).min(1))
    tok, usr = np.asarray(tl.tokens), np.asarray(tl.token_user)
    i = 0
    for t in range(1, T):
        per_token = []
        for w in range(W):
            u, total = usr[t, w], 0.0
            for l in range(L):
                worst = 0.0
                for k in range(K):
                    e = tok[t, w, l, k]
                    v = min(lat[u, u, l, e], d_miss[u, l, e]) if flags[i] else d_miss[u, l, e]
                    worst, i = max(worst, v), i + 1
                total += worst
            per_token.append(total)
        # float32 latencies summed in the program, float64 here
        assert r.objective[0, t] == pytest.approx(np.mean(per_token), rel=1e-5)
        assert r.p99[0, t] == pytest.approx(np.percentile(per_token, 99, method="inverted_cdf"), rel=1e-5)
    return r


@pytest.mark.parametrize("kind", CACHES)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6), cap=st.integers(0, 5), warm=st.booleans())
def test_each_cache_matches_the_python_reference(kind, seed, cap, warm):
    tl = make_timeline(seed, (cap, cap + 1, 3))
    r = check_against_reference(tl, kind, warm)
    assert r.status[0] == (dynamic.Status.OFFLINE if kind == "belady" else dynamic.Status.ONLINE)


@pytest.mark.parametrize("kind", CACHES)
def test_each_cache_matches_the_reference_with_two_expert_sizes(kind):
    """Layer 1's experts take 2 units: a miss may evict two experts (the eviction loop)."""
    for seed in range(3):
        for warm in (True, False):
            check_against_reference(make_timeline(seed, (5, 4, 3), sizes=(1.0, 2.0)), kind, warm)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10**6), cap=st.integers(1, 6), warm=st.booleans(), reuse=st.floats(0.0, 0.9))
def test_belady_hits_at_least_lru_and_lfu_per_node(seed, cap, warm, reuse):
    tl = make_timeline(seed, (cap, max(cap - 1, 0), 3), reuse=reuse)
    x0 = dynamic.deploy(tl, solver=SOLVER)
    res = {k: dynamic.run(tl, dynamic.as_policy(k, warm=warm), solver=SOLVER, x0=x0) for k in CACHES}
    bel = res["belady"].hits[:, 1:].sum(1)
    for k in ("token-lru", "token-lfu"):
        assert (bel >= res[k].hits[:, 1:].sum(1)).all(), k
        np.testing.assert_array_equal(res[k].accesses, res["belady"].accesses)
    rate = res["belady"].hit_rate
    assert np.isnan(rate[:, 2]).all()  # node 2 is no user's device
    assert ((rate[:, :2] >= res["token-lru"].hit_rate[:, :2]) | np.isnan(rate[:, :2])).all()


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_a_cache_of_the_whole_model_misses_only_cold_starts(seed):
    tl = make_timeline(seed, (L * E, L * E, 3), reuse=0.2)
    x0 = dynamic.deploy(tl, solver=SOLVER)
    tok, usr = np.asarray(tl.tokens), np.asarray(tl.token_user)
    for kind in CACHES:
        for warm in (False, True):
            r = dynamic.run(tl, dynamic.as_policy(kind, warm=warm), solver=SOLVER, x0=x0)
            for n in range(U):
                touched = {(l, int(e)) for t in range(1, T) for w in range(W) if usr[t, w] == n
                           for l in range(L) for e in tok[t, w, l]}
                if warm:
                    touched = {(l, e) for l, e in touched if not x0[0, n, l, e]}
                misses = r.accesses[0, 1:, n].sum() - r.hits[0, 1:, n].sum()
                assert misses == len(touched), (kind, warm, n)


def test_names_are_sugar_and_placement_policies_count_hits():
    tl = make_timeline(7, (3, 2, 3))
    x0 = dynamic.deploy(tl, solver=SOLVER)
    for obj in (dynamic.TokenLRU(), dynamic.TokenLFU(warm=False), dynamic.Belady()):
        a = dynamic.run(tl, obj, solver=SOLVER, x0=x0)
        b = dynamic.run(tl, obj.name, warm=obj.warm, solver=SOLVER, x0=x0)
        for f in ("placements", "objective", "hits", "loaded", "p95"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        assert np.isnan(a.forecast_objective).all() and (a.budget == np.inf).all()
    # a placement's hits: the accesses whose expert its device holds in x_t
    s = dynamic.run(tl, "static", solver=SOLVER, x0=x0)
    tok, usr = np.asarray(tl.tokens), np.asarray(tl.token_user)
    want = np.zeros((T, N), int)
    for t in range(T):
        for w in range(W):
            u = usr[t, w]
            want[t, u] += sum(x0[0, u, l, e] for l in range(L) for e in tok[t, w, l])
    np.testing.assert_array_equal(s.hits[0], want)
    assert (s.accesses[0, :, :U].sum(-1) == W * L * K).all() and (s.accesses[0, :, U:] == 0).all()
    # a cache's J is its replay (the windows' patterns here are not their tokens, so a placement's differs)
    np.testing.assert_array_equal(a.objective[:, 1:], a.token_objective[:, 1:])


def test_cache_options_are_validated():
    with pytest.raises(ValueError, match="warm"):
        dynamic.TokenLRU(warm=1)
    with pytest.raises(ValueError, match="options"):
        dynamic.as_policy("belady", forecast_horizon=3)
    with pytest.raises(TypeError):
        dynamic.Belady(budget=1.0)  # a cache has no budget
