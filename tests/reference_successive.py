"""Naive per-instance NumPy reference of the successive decomposition (DESIGN §4.4).

Loops, obviously correct, float64. It implements exactly the algorithm of
:mod:`slimjax.solvers.successive` (same orders, oracles, DP backends, tie rules, union-first) and
is what the JAX version is checked against and what the benchmark times it against.

Tie rules (shared with the JAX code): among subsets of one size the smallest bit mask wins; a
larger size is used only when strictly better; the DP prefers the smallest count; candidates of
the greedy chain are ranked singles first, then completions in (user, pattern) order, first best
wins; best-of keeps the first of equal J.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "orders_ref",
    "pattern_latency_layer",
    "oracle_exact_ref",
    "oracle_greedy_ref",
    "dp_dense_ref",
    "dp_hull_ref",
    "dp_fptas_ref",
    "successive_ref",
]


def _arr(inst):
    return dict(
        lat=np.asarray(inst.latency, np.float64),
        fb=np.asarray(inst.fallback, np.float64),
        pat=np.asarray(inst.patterns),
        w=np.asarray(inst.weight, np.float64),
        tr=np.asarray(inst.traffic, np.float64),
    )


def orders_ref(lat, tr, cap):
    """The named node orders (see ``slimjax.solvers.successive.node_orders``)."""
    U, N = lat.shape[:2]
    key = np.zeros(N)
    for n in range(N):
        num = den = 0.0
        for u in range(U):
            fin = np.isfinite(lat[u, n])
            if fin.any():
                num += tr[u] * lat[u, n][fin].mean()
                den += tr[u]
        key[n] = num / den if den > 0 else np.inf
    idx = list(range(N))
    slow = [(-k if np.isfinite(k) else np.inf) for k in key]
    return {
        "fastest-first": sorted(idx, key=lambda n: key[n]),
        "largest-first": sorted(idx, key=lambda n: (-cap[n], key[n])),
        "given": idx,
        "slowest-first": sorted(idx, key=lambda n: slow[n]),
        "smallest-first": sorted(idx, key=lambda n: (cap[n], key[n])),
    }


def pattern_latency_layer(d_l, pat_l, aggregation):
    """[U, M] latency of every pattern of one layer given d_l [U, E]."""
    U, M, K = pat_l.shape
    out = np.zeros((U, M))
    for u in range(U):
        for m in range(M):
            vals = [d_l[u, pat_l[u, m, k]] for k in range(K)]
            out[u, m] = max(vals) if aggregation == "max" else sum(vals)
    return out


def _layer_gain(d_l, d2_l, pat_l, tw_l, aggregation):
    return float((tw_l * (pattern_latency_layer(d_l, pat_l, aggregation) - pattern_latency_layer(d2_l, pat_l, aggregation))).sum())


def _prefix_rule(g_exact):
    """g[c] = best of sizes ≤ c, first size attaining it."""
    C1 = len(g_exact)
    g = np.zeros(C1)
    idx = np.zeros(C1, int)
    best, bi = g_exact[0], 0
    for c in range(C1):
        if g_exact[c] > best:
            best, bi = g_exact[c], c
        g[c], idx[c] = best, bi
    return g, idx


def oracle_exact_ref(d, newp, pat, tw, aggregation="max"):
    """All 2^E subsets per layer. Returns (g [L, E+1], sets [L][E+1] of bool [E])."""
    U, L, E = d.shape
    g = np.zeros((L, E + 1))
    sets = []
    for l in range(L):
        best = np.full(E + 1, -np.inf)
        best_mask = np.zeros(E + 1, int)
        for mask in range(2**E):
            S = np.array([(mask >> e) & 1 for e in range(E)], bool)
            d2 = d[:, l].copy()
            d2[:, S] = newp[:, l][:, S]
            gain = _layer_gain(d[:, l], d2, pat[:, l], tw[:, l], aggregation) if mask else 0.0
            c = int(S.sum())
            if gain > best[c]:
                best[c], best_mask[c] = gain, mask
        best[0] = 0.0
        gl, idx = _prefix_rule(best)
        g[l] = gl
        sets.append([np.array([(best_mask[idx[c]] >> e) & 1 for e in range(E)], bool) for c in range(E + 1)])
    return g, sets


def oracle_greedy_ref(d, newp, pat, tw, aggregation="max", steps=None):
    """Greedy chain per layer (singles + pattern completions). Same return as the exact one."""
    U, L, E = d.shape
    if aggregation == "sum":
        return oracle_exact_ref(d, newp, pat, tw, "sum") if E <= 10 else _modular_ref(d, newp, pat, tw)
    M, K = pat.shape[2:]
    T = E if steps is None else max(1, min(steps, E))
    g = np.zeros((L, E + 1))
    sets = []
    for l in range(L):
        P0 = pattern_latency_layer(d[:, l], pat[:, l], "max")
        improv = (newp[:, l] < d[:, l]).any(0)
        inS = np.zeros(E, bool)
        cur = d[:, l].copy()
        sizes, gains = [0], [0.0]
        added_at = np.full(E, T + 1)
        single0 = None
        for t in range(T):
            curP = pattern_latency_layer(cur, pat[:, l], "max")
            single = np.zeros(E)
            alt = {}
            for u in range(U):
                for m in range(M):
                    members = list(dict.fromkeys(int(e) for e in pat[u, l, m]))  # distinct, in order
                    for e in members:
                        v = max([newp[u, l, e]] + [cur[u, f] for f in members if f != e])
                        alt[u, m, e] = v
                        single[e] += tw[u, l, m] * (curP[u, m] - v)
            if t == 0:
                single0 = single.copy()
            cands = [single[e] if (not inS[e] and improv[e]) else -np.inf for e in range(E)]
            comp_sets = []
            for u in range(U):
                for m in range(M):
                    members = list(dict.fromkeys(int(e) for e in pat[u, l, m]))
                    A = [e for e in members if not inS[e] and newp[u, l, e] < d[u, l, e]]
                    comp_sets.append(A)
                    if not A:
                        cands.append(-np.inf)
                        continue
                    full = max(newp[u, l, e] if e in A else cur[u, e] for e in members)
                    own = tw[u, l, m] * ((curP[u, m] - full) - sum(curP[u, m] - alt[u, m, e] for e in A))
                    est = sum(single[e] for e in A) + own
                    cands.append(est / len(A))
            b = int(np.argmax(cands))
            if cands[b] > 0:
                add = [b] if b < E else comp_sets[b - E]
                for e in add:
                    inS[e] = True
                    cur[:, e] = newp[:, l, e]
                    added_at[e] = min(added_at[e], t + 1)
            sizes.append(int(inS.sum()))
            gains.append(float((tw[:, l] * (P0 - pattern_latency_layer(cur, pat[:, l], "max"))).sum()))
        gains = np.maximum.accumulate(np.array(gains))
        t_of_c = [max(t for t in range(T + 1) if sizes[t] <= c) for c in range(E + 1)]
        g[l] = [gains[t] for t in t_of_c]
        g[l, 0] = 0.0
        sets.append([added_at <= t_of_c[c] for c in range(E + 1)])
        # every c >= 1 is at least the best single expert (first best), used when strictly better
        s0 = np.where(improv, single0, -np.inf)
        be = int(np.argmax(s0))
        for c in range(1, E + 1):
            if s0[be] > g[l, c]:
                g[l, c] = s0[be]
                sets[l][c] = np.arange(E) == be
    return g, sets


def _modular_ref(d, newp, pat, tw):
    U, L, E = d.shape
    g = np.zeros((L, E + 1))
    sets = []
    for l in range(L):
        ge = np.zeros(E)
        for u in range(U):
            for m in range(pat.shape[2]):
                for e in pat[u, l, m]:
                    ge[e] += tw[u, l, m] * (d[u, l, e] - newp[u, l, e])
        order = sorted(range(E), key=lambda e: -ge[e])
        g_exact = np.concatenate([[0.0], np.cumsum([ge[e] for e in order])])
        gl, idx = _prefix_rule(g_exact)
        g[l] = gl
        sets.append([np.isin(np.arange(E), order[: idx[c]]) for c in range(E + 1)])
    return g, sets


def dp_dense_ref(g, s, Q):
    """Exact multiple-choice knapsack by the layer DP. Returns (value, counts [L])."""
    L, C1 = g.shape
    Q = max(int(Q), 0)
    G = np.zeros(Q + 1)
    args = np.zeros((L, Q + 1), int)
    for l in range(L):
        newG = np.full(Q + 1, -np.inf)
        for q in range(Q + 1):
            for c in range(C1):
                if c * s[l] > q:
                    break
                v = G[q - c * s[l]] + g[l, c]
                if v > newG[q]:
                    newG[q], args[l, q] = v, c
        G = newG
    counts = np.zeros(L, int)
    q = Q
    for l in reversed(range(L)):
        counts[l] = args[l, q]
        q -= counts[l] * s[l]
    return float(G[Q]), counts


def _lp_bound(segs, Q):
    """LP bound of the sorted envelope segments: the prefix that fits plus a fraction of the first
    one that does not. Returns (lp, value of the prefix alone)."""
    lp, used = 0.0, 0
    for _, _, _, _, length, gain in segs:
        if used + length <= Q:
            lp += gain
            used += length
        else:
            return lp + (Q - used) / length * gain, lp
    return lp, lp


def _envelope_segments(g, s, Q, tol=None):
    """The upper concave envelopes' segments of every layer (counts up to Q // s[l]), sorted by
    decreasing gain per unit (a layer's slopes made non-increasing), ties by (layer, count):
    (slope, l, c, end, length, gain)."""
    L, C1 = g.shape
    if tol is None:
        tol = 64 * np.finfo(np.asarray(g).dtype).eps * (np.abs(g).max() + np.finfo(np.asarray(g).dtype).tiny)
    segs = []  # (slope_eff, l, c, end, length, gain)
    for l in range(L):
        cmax = min(Q // s[l], C1 - 1)
        on = []
        for c in range(cmax + 1):
            left = min([(g[l, c] - g[l, i]) / (c - i) for i in range(c)], default=np.inf)
            right = max([(g[l, j] - g[l, c]) / (j - c) for j in range(c + 1, cmax + 1)], default=-np.inf)
            on.append(left >= right - tol)
        pts = [c for c in range(cmax + 1) if on[c]]
        run_min = np.inf
        for a, b in zip(pts[:-1], pts[1:]):
            gain = g[l, b] - g[l, a]
            if gain > 0:
                length = (b - a) * s[l]
                run_min = min(run_min, gain / length)
                segs.append((run_min, l, a, b, length, gain))
    segs.sort(key=lambda t: (-t[0], t[1] * C1 + t[2]))
    return segs


def _lp_prefix(g, s, Q):
    """Value of the LP's sorted prefix (the envelope segments that fit in order): feasible."""
    return _lp_bound(_envelope_segments(g, s, max(int(Q), 0)), max(int(Q), 0))[1]


def dp_hull_ref(g, s, Q, tol=None):
    """Concave envelopes + skip-greedy (see ``slimjax.maxconv``). Returns (value, counts, lp_bound)."""
    L, C1 = g.shape
    Q = max(int(Q), 0)
    segs = _envelope_segments(g, s, Q, tol)
    lp, _ = _lp_bound(segs, Q)
    closed = np.zeros(L, bool)
    counts = np.zeros(L, int)
    r = Q
    for _, l, a, b, length, gain in segs:
        if closed[l]:
            continue
        if length <= r:
            counts[l] = b
            r -= length
        else:
            closed[l] = True
    value = float(sum(g[l, counts[l]] for l in range(L)))
    best_v, best_l, best_c = -np.inf, 0, 0
    for l in range(L):
        cmax = min(Q // s[l], C1 - 1)
        c = int(np.argmax(g[l, : cmax + 1]))
        if g[l, c] > best_v:
            best_v, best_l, best_c = g[l, c], l, c
    if best_v > value:
        counts = np.zeros(L, int)
        counts[best_l] = best_c
        value = float(best_v)
    return value, counts, max(lp, value)


def dp_fptas_ref(g, s, Q, eps, Qmax=None):
    """Value-scaled multiple-choice knapsack (see ``slimjax.ops._maxconv``). Returns
    (value, counts [L], bound). Exact (:func:`dp_dense_ref`) when ``Qmax + 1`` is at most the
    number of profit levels ``P = ceil(2·min(L, Qmax)/eps) + 1``; otherwise profits ``g[l, c] − g[l, 0]``
    are rounded down to multiples of ``delta = max(ub / (P − 1), eps·lb / n_use)`` (ub: the LP
    bound, lb: the better of the LP's sorted prefix and the best single count), the layer DP
    keeps the least units for every rounded profit, and the highest rounded profit that fits is
    backtracked (ties: the count with the largest true profit, then the smallest)."""
    L, C1 = g.shape
    n = L if Qmax is None else max(1, min(L, int(Qmax)))
    P = int(np.ceil(2 * n / eps - 1e-9)) + 1
    if Qmax is not None and Qmax + 1 <= P:
        v, counts = dp_dense_ref(g, s, min(max(int(Q), 0), Qmax))
        return v, counts, v
    Q = max(int(Q), 0)
    if Qmax is not None:
        Q = min(Q, int(Qmax))
    base = g[:, 0].copy()
    h = g - base[:, None]
    ok = np.array([[c * s[l] <= Q and (h[l, c] >= 0 or c == 0) for c in range(C1)] for l in range(L)])
    best_single = max([h[l, c] for l in range(L) for c in range(C1) if ok[l, c]] + [0.0])
    ub = max(dp_hull_ref(h, s, Q)[2], best_single, 0.0)
    # lb: the best single count or the LP's sorted prefix, both feasible (the bisection's choice)
    lb = max(best_single, _lp_prefix(np.where(ok, h, -1.0), s, Q), 0.0)
    n_use = int((np.cumsum(np.sort(s)) <= Q).sum())
    delta = ub / (P - 1) if ub > 0 else 1.0
    delta = max(delta, eps * (1 - 2.0**-12) * lb / max(n_use, 1))
    pi = np.where(ok, np.clip(np.floor(h / delta), 0, P - 1), 0).astype(int)
    INF = Q + 1
    tables = [np.array([0] + [INF] * (P - 1))]
    for l in range(L):
        W, new = tables[-1], np.full(P, INF)
        for p in range(P):
            for c in range(C1):
                if ok[l, c] and p - pi[l, c] >= 0:
                    new[p] = min(new[p], W[p - pi[l, c]] + c * s[l], INF)
        tables.append(new)
    pstar = max(p for p in range(P) if tables[-1][p] <= Q)
    counts = np.zeros(L, int)
    pp = pstar
    for l in reversed(range(L)):
        target, W = tables[l + 1][pp], tables[l]
        hits = [c for c in range(C1) if ok[l, c] and pp - pi[l, c] >= 0 and W[pp - pi[l, c]] + c * s[l] == target]
        c = max(hits, key=lambda c: (h[l, c], -c))
        counts[l] = c
        pp -= pi[l, c]
    value = float(sum(g[l, counts[l]] for l in range(L)))
    frac = np.where(ok, h - pi * delta, 0).max(axis=1)
    cert = pstar * delta + (np.sort(frac)[::-1][:n_use].sum() if n_use else 0.0)
    return value, counts, max(base.sum() + min(ub, cert), value)


def _J(a, d, aggregation):
    U, L, E = d.shape
    tot = 0.0
    for u in range(U):
        for l in range(L):
            pl = pattern_latency_layer(d[:, l], a["pat"][:, l], aggregation)[u]
            tot += a["tr"][u] * (a["w"][u, l] * pl).sum()
    return tot


def _node_pass_ref(a, s, cap, order, d, x, oracle, maxconv, aggregation):
    N = a["lat"].shape[1]
    tw = a["tr"][:, None, None] * a["w"]
    gains, bounds = np.zeros(N), np.zeros(N)
    for n in order:
        newp = np.minimum(d, a["lat"][:, n])
        if oracle == "exact":
            g, sets = oracle_exact_ref(d, newp, a["pat"], tw, aggregation)
        else:
            g, sets = oracle_greedy_ref(d, newp, a["pat"], tw, aggregation)
        if maxconv == "dense":
            v, counts = dp_dense_ref(g, s, cap[n])
            b = v
        else:
            v, counts, b = dp_hull_ref(g, s, cap[n])
        gains[n], bounds[n] = v, b
        for l in range(len(s)):
            S = sets[l][counts[l]]
            x[n, l] |= S
            d[:, l][:, S] = newp[:, l][:, S]
    return x, d, gains, bounds


def _revisit_ref(a, s, cap, order, x, oracle, maxconv, aggregation, rounds):
    """Per-node best response, ``rounds`` times over ``order``; a response is kept if J drops."""
    N = a["lat"].shape[1]
    tw = a["tr"][:, None, None] * a["w"]

    def d_of(x):
        d = a["fb"].copy()
        for n in range(N):
            d = np.where(x[n][None], np.minimum(d, a["lat"][:, n]), d)
        return d

    J = _J(a, d_of(x), aggregation)
    for _ in range(rounds):
        for n in order:
            others = x.copy()
            others[n] = False
            d = d_of(others)
            newp = np.minimum(d, a["lat"][:, n])
            if oracle == "exact":
                g, sets = oracle_exact_ref(d, newp, a["pat"], tw, aggregation)
            else:
                g, sets = oracle_greedy_ref(d, newp, a["pat"], tw, aggregation)
            counts = dp_dense_ref(g, s, cap[n])[1] if maxconv == "dense" else dp_hull_ref(g, s, cap[n])[1]
            cand = others.copy()
            for l in range(len(s)):
                cand[n, l] = sets[l][counts[l]]
            Jc = _J(a, d_of(cand), aggregation)
            if Jc < J:
                x, J = cand, Jc
    return x


def _union_ref(a, s, cap, oracle, maxconv, aggregation, K, qmax):
    U, N, L, E = a["lat"].shape
    small = [(cap[n] < K * min(s)) and cap[n] > 0 for n in range(N)]
    lat_g = np.full((U, L, E), -np.inf)
    for n in range(N):
        if small[n]:
            lat_g = np.maximum(lat_g, a["lat"][:, n])
    lat_g[np.isneginf(lat_g)] = np.inf
    qg = min(sum(cap[n] for n in range(N) if small[n]), qmax)
    d0 = a["fb"].copy()
    newp = np.minimum(d0, lat_g)
    tw = a["tr"][:, None, None] * a["w"]
    if oracle == "exact":
        g, sets = oracle_exact_ref(d0, newp, a["pat"], tw, aggregation)
    else:
        g, sets = oracle_greedy_ref(d0, newp, a["pat"], tw, aggregation)
    counts = dp_dense_ref(g, s, qg)[1] if maxconv == "dense" else dp_hull_ref(g, s, qg)[1]
    chosen = np.array([sets[l][counts[l]] for l in range(L)])
    imp = np.zeros(L * E)
    for u in range(U):
        for l in range(L):
            for m in range(a["pat"].shape[2]):
                for e in a["pat"][u, l, m]:
                    imp[l * E + e] += tw[u, l, m] * (d0[u, l, e] - newp[u, l, e])
    prio = sorted(range(L * E), key=lambda i: -imp[i])
    score = np.zeros((N, L, E))
    for n in range(N):
        for u in range(U):
            score[n] += a["tr"][u] * np.minimum(a["lat"][u, n], a["fb"][u])
    x = np.zeros((N, L, E), bool)
    rem = [cap[n] if small[n] else 0 for n in range(N)]
    for i in prio:
        l, e = divmod(i, E)
        if not chosen[l, e]:
            continue
        fits = [n for n in range(N) if small[n] and rem[n] >= s[l]]
        if fits:
            n = min(fits, key=lambda n: (score[n, l, e], n))
            x[n, l, e] = True
            rem[n] -= s[l]
    d = a["fb"].copy()
    for n in range(N):
        d = np.where(x[n][None], np.minimum(d, a["lat"][:, n]), d)
    left = np.array([cap[n] - sum(s[l] * x[n, l].sum() for l in range(L)) for n in range(N)])
    return x, d, left


def successive_ref(
    inst,
    size_units,
    capacity_units,
    *,
    order="fastest-first",
    best_of=("fastest-first", "largest-first", "given"),
    oracle="exact",
    maxconv="dense",
    union_first="off",
    aggregation="max",
    qmax=None,
    revisit=0,
):
    """The successive decomposition on one instance (no polish).

    Args:
      inst: one instance; size_units [L], capacity_units [N]: the integer grid.
      order, best_of, oracle ("exact"/"greedy"), maxconv ("dense"/"hull"), union_first
        ("on"/"off"/"auto"), aggregation, revisit (rounds): as the JAX method's options
        (no random restarts, no polish).
      qmax: a cap on the union's capacity (default: none).

    Returns:
      (placement bool [N, L, E], info dict with J, order, node_gain, node_bound).
    """
    a = _arr(inst)
    U, N, L, E = a["lat"].shape
    K = a["pat"].shape[-1]
    s = [int(v) for v in np.asarray(size_units)]
    cap = [int(v) for v in np.asarray(capacity_units)]
    qmax = sum(cap) if qmax is None else qmax
    named = orders_ref(a["lat"], a["tr"], cap)
    if order == "best-of":
        cands = [(o, union_first == "on") for o in best_of]
        if union_first == "auto" and aggregation == "max" and K >= 2:
            cands.append(("fastest-first", True))
    else:
        cands = [(order, union_first == "on")]
    best = None
    for i, (o, uni) in enumerate(cands):
        ordr = named[o] if isinstance(o, str) else list(o)
        if uni:
            x, d, left = _union_ref(a, s, cap, oracle, maxconv, aggregation, K, qmax)
        else:
            x, d, left = np.zeros((N, L, E), bool), a["fb"].copy(), list(cap)
        x, d, gains, bounds = _node_pass_ref(a, s, left, ordr, d, x, oracle, maxconv, aggregation)
        if revisit:
            x = _revisit_ref(a, s, cap, ordr, x, oracle, maxconv, aggregation, revisit)
            d = a["fb"].copy()
            for n in range(N):
                d = np.where(x[n][None], np.minimum(d, a["lat"][:, n]), d)
        J = _J(a, d, aggregation)
        if best is None or J < best[1]:
            best = (x, J, dict(order=ordr, candidate=i, node_gain=gains, node_bound=bounds, J=J))
    return best[0], best[2]
