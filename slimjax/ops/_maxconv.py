"""Batched (max,+) convolution and the capacity DP over layers.

Per node the storage ``Q`` (integer grid units) is split over ``L`` layers. With ``g[l, c]`` the
best gain from caching ``c`` experts of layer ``l`` (cost ``c * s[l]`` units, ``c = 0..C``) the
split is the multiple-choice knapsack

    G_l[q] = max_{c : c·s_l ≤ q} G_{l-1}[q − c·s_l] + g_l[c],   G_0 ≡ 0,

solved by :func:`capacity_dp` with one of three backends (:data:`BACKENDS`):

- ``"dense"`` — exact. Every layer is one (max,+) convolution: a broadcast ``[Qmax+1, C+1]``
  gather, mask and max inside a ``lax.scan`` over layers, keeping the tables ``G_{l-1}``
  ``[L, Qmax+1]``; the backtrack from ``Q`` recomputes one row of ``C+1`` candidates per layer
  and takes the smallest maximizing count (the same optimum and tie rule as an argmax table;
  :func:`maxplus_conv` is the one-layer operation). O(L·Qmax·C).
- ``"hull"`` — every curve is replaced by its upper concave envelope (:func:`upper_envelope`);
  the envelope segments of all layers are taken in decreasing gain-per-unit order while they fit,
  skipping (and closing the layer of) those that do not. The value is ≥ the LP bound − the largest
  segment, it is exact for concave curves with equal sizes, and it is returned only if it beats
  the best single-layer point, so it is ≥ OPT / 2 (the multiple-choice-knapsack LP argument,
  Sinha & Zoltners 1979). It also returns that LP bound, which certifies the gap.
  O(L·C² + L·C·log(L·C)), independent of ``Q`` (the segments are ordered by
  :func:`~slimjax.ops._sort.stable_argsort`, a two-pass 16-bit radix sort of
  integers instead of a comparator sort).
  Real top-K layer curves are far from concave (a co-activated pair is worth far more than its
  two halves), and there it can lose tens of percent of a node's gain.
- ``"fptas"`` — value scaling of the multiple-choice knapsack (Lawler 1979; Kellerer, Pferschy &
  Pisinger 2004, section 11.10), **value ≥ (1 − eps)·OPT** for every input, in time polynomial in
  ``L``, ``C`` and ``1/eps`` and independent of ``Q``:

  1. ``ub`` = the Lagrangian (= LP) bound, by a fixed-trip bisection on the dual
     (``OPT ≤ ub ≤ 2·OPT``), and ``lb`` the best feasible choice the bisection meets;
  2. profits ``g[l, c] − g[l, 0]`` are rounded down to multiples of
     ``delta = max(ub / (P − 1), eps·lb / n_use)`` (the second term times ``1 − 2^-12``) with
     ``P = ceil(2·n/eps) + 1`` levels (:func:`fptas_levels`; ``n = min(L, Qmax)`` and
     ``n_use ≤ n`` bound the layers a solution uses);
  3. the layer DP over rounded profit, ``W_l[p] = min_c W_{l-1}[p − π_l(c)] + c·s_l`` (fewest
     units reaching rounded profit exactly ``p``, int32) in a ``lax.scan`` over layers, block by
     block of a quarter of the levels (per block a running min over the counts, each read as a
     contiguous slice of the padded table ``W_{l-1}``), filling only the blocks up to the highest level a
     feasible choice can reach (``ub / delta``, about ``n_use/eps · ub/lb`` ≈ half the table when
     the bound is tight); the highest ``p`` with ``W_L[p] ≤ Q`` is backtracked by recomputing
     one row per layer (ties: the largest true profit).

  Guarantee: OPT's own rounded profit fits, so the result's rounded profit is at least OPT's,
  and OPT loses less than ``delta`` per layer it uses: ``value ≥ OPT − n_use·delta``, and
  ``n_use·delta`` is at most ``eps·ub/2 ≤ eps·OPT`` (first term) or ``eps·lb ≤ eps·OPT`` (second),
  so ``value ≥ (1 − eps)·OPT`` for every input. ``bound`` certifies the instance:
  ``min(ub, p*·delta + Σ of the largest rounding remainders of the layers a solution can use) ≥
  OPT``. O(L·C·n/eps) time (O(L·C·n_use/eps·ub/lb) for the filled blocks), O(L·n/eps)
  memory. When ``Qmax + 1 ≤ P`` the capacity table is the smaller one and the problem is solved
  exactly instead (the ``dense`` optimum and tie rule, with a fused max per layer and a
  recomputing backtrack), so small nodes — every node of mixtral-sized instances — lose nothing.

Everything is pure JAX on one node's problem; ``jax.vmap`` it over nodes / instances. Capacities
and sizes are traced; ``Qmax`` (the DP table size of ``dense``) and ``eps`` are static. The loops
are fixed-trip (``lax.scan`` / ``fori_loop``; the hull's skip-greedy is a ``while_loop`` of at
most ``L + 1`` rounds), so the compiled programs stay small.

References:
  Sinha, P. and Zoltners, A. A. (1979). The multiple-choice knapsack problem. Operations
  Research 27(3), 503–515.
  Lawler, E. L. (1979). Fast approximation algorithms for knapsack problems. Mathematics of
  Operations Research 4(4), 339–356.
  Kellerer, H., Pferschy, U. and Pisinger, D. (2004). Knapsack Problems, Springer, ch. 11.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from slimjax.ops._sort import stable_argsort

__all__ = ["BACKENDS", "DEFAULT_EPS", "DPResult", "capacity_dp", "fptas_levels", "maxplus_conv", "upper_envelope"]

BACKENDS = ("dense", "hull", "fptas")

#: Default approximation parameter of the ``fptas`` backend (``value >= (1 - eps)·OPT``).
DEFAULT_EPS = 0.1

# fptas: bisection steps of the Lagrangian bound that sets the profit scale.
DUAL_ITERS = 40


class DPResult(NamedTuple):
    """Result of :func:`capacity_dp` for one node.

    Attributes:
      value: float [] — Σ_l g[l, counts[l]], the gain achieved (actual curve values).
      counts: int32 [L] — how many experts of each layer; Σ counts·s ≤ Q.
      bound: float [] — an upper bound on the optimum: ``value`` itself for ``dense`` (exact), the
        LP bound over the concave envelopes for ``hull``, the certified bound for ``fptas``
        (``value`` itself where it solves exactly).
      table: ``dense``: float [Qmax+1], ``G_L[q]`` the optimum for every capacity q ≤ Qmax;
        ``hull``: float [L, C+1], the upper concave envelopes at integer counts; ``fptas``:
        int32 [P], the fewest units reaching each rounded profit (``Q + 1`` = none fits), or
        ``dense``'s table where it solves exactly.
    """

    value: Float[Array, ""]
    counts: Int[Array, "L"]
    bound: Float[Array, ""]
    table: Optional[Array]


def maxplus_conv(
    a: Float[Array, "Q1"], b: Float[Array, "C1"], stride: Int[Array, ""] | int = 1
) -> tuple[Float[Array, "Q1"], Int[Array, "Q1"]]:
    """(max,+) convolution with argmax: ``out[q] = max_{c : c·stride ≤ q} a[q − c·stride] + b[c]``.

    Args:
      a: float [Q+1], the table so far (``a[q]`` = best with at most q units).
      b: float [C+1], the new curve (``b[c]`` = gain of c items of cost ``stride`` each).
      stride: int >= 1, the unit cost of one item (traced).

    Returns:
      (out float [Q+1], arg int32 [Q+1]) — ``arg`` is the smallest maximizing c.

    Examples:
      >>> import jax.numpy as jnp
      >>> out, arg = maxplus_conv(jnp.array([0., 1., 1., 1.]), jnp.array([0., 5., 6.]), 1)
      >>> out.tolist(), arg.tolist()
      ([0.0, 5.0, 6.0, 7.0], [0, 1, 1, 2])
    """
    Q1 = a.shape[-1]
    C1 = b.shape[-1]
    q = jnp.arange(Q1, dtype=jnp.int32)[:, None]
    c = jnp.arange(C1, dtype=jnp.int32)[None, :]
    idx = q - c * jnp.asarray(stride, jnp.int32)
    ok = idx >= 0
    vals = jnp.where(ok, a[jnp.maximum(idx, 0)] + b[None, :], -jnp.inf)  # [Q+1, C+1]
    arg = jnp.argmax(vals, axis=1).astype(jnp.int32)
    out = jnp.take_along_axis(vals, arg[:, None], axis=1)[:, 0]
    return out, arg


def _tol(g: Array) -> Array:
    """Absolute tolerance for slope comparisons on the scale of ``g``."""
    eps = jnp.finfo(g.dtype).eps
    return 64 * eps * (jnp.abs(g).max() + jnp.finfo(g.dtype).tiny)


def upper_envelope(
    g: Float[Array, "C1"], cmax: Int[Array, ""] | int, tol: Float[Array, ""] | None = None
) -> tuple[Bool[Array, "C1"], Int[Array, "C1"]]:
    """The points of ``g[0..cmax]`` on its upper concave envelope, and the next envelope point.

    A point c lies on the envelope iff some line supports it:
    ``min_{i<c} slope(i, c) ≥ max_{j>c} slope(c, j)`` (all points c ≤ cmax). Collinear points count
    as on the envelope. O(C²) time, O(C) memory (a loop over the offset j − i).

    Args:
      g: float [C+1] a curve.
      cmax: only points c ≤ cmax are usable (traced).
      tol: slope tolerance (default: 64·eps·max|g|).

    Returns:
      (on bool [C+1], nxt int32 [C+1]) — ``nxt[c]`` is the next envelope point after c (C+1 if none).
    """
    C1 = g.shape[-1]
    c = jnp.arange(C1, dtype=jnp.int32)
    valid = c <= cmax
    if tol is None:
        tol = _tol(g)
    # left[j] = min_{i<j} slope(i, j), right[i] = max_{j>i, j usable} slope(i, j), one offset
    # k = j − i per step of a loop: O(C) values per offset instead of materialized [C+1, C+1]
    # tables (the same float operations, so the same values; 2x faster at C = 64, 13x at 256).
    # For a usable j every i < j is usable.
    inf = jnp.asarray(jnp.inf, g.dtype)
    zeros = jnp.zeros((C1,), g.dtype)
    g_before = jnp.concatenate([zeros, g])  # g_before[C1 + j − k] = g[j − k]
    g_after = jnp.concatenate([g, zeros])  # g_after[i + k] = g[i + k]
    valid_after = jnp.concatenate([valid, jnp.zeros((C1,), bool)])

    def offset(k, st):
        left, right = st
        kf = jnp.asarray(k, g.dtype)
        a = lax.dynamic_slice_in_dim(g_before, C1 - k, C1)  # g[j − k] (0 where j < k)
        left = jnp.minimum(left, jnp.where(c >= k, (g - a) / kf, inf))
        b = lax.dynamic_slice_in_dim(g_after, k, C1)  # g[i + k]
        usable = lax.dynamic_slice_in_dim(valid_after, k, C1)
        return left, jnp.maximum(right, jnp.where(usable, (b - g) / kf, -inf))

    init = (jnp.full((C1,), jnp.inf, g.dtype), jnp.full((C1,), -jnp.inf, g.dtype))
    left, right = lax.fori_loop(1, C1, offset, init, unroll=8) if C1 > 1 else init
    on = valid & (left >= right - tol)
    # the next envelope point: a reverse running minimum of the envelope's indices, shifted by one
    nxt = _running(jnp.minimum, jnp.where(on, c, C1), reverse=True)
    nxt = jnp.concatenate([nxt[1:], jnp.full((1,), C1, jnp.int32)]).astype(jnp.int32)
    return on, nxt


def _prefix_sum(x: Int[Array, "S"]) -> Int[Array, "S"]:
    """Inclusive int32 prefix sum by an associative scan: exact (integers), and ~2x faster on
    XLA's CPU backend than ``jnp.cumsum``, which lowers to a reduce-window there."""
    return lax.associative_scan(jnp.add, jnp.asarray(x, jnp.int32))


def _running(op, x: Array, axis: int = 0, reverse: bool = False) -> Array:
    """``lax.cummax``/``lax.cummin`` (``op`` = ``jnp.maximum``/``jnp.minimum``) by an associative
    scan: the same values (max and min are exact in any order; no NaN here), faster on CPU."""
    return lax.associative_scan(op, x, reverse=reverse, axis=axis)


def _envelope_values(g, on, nxt):
    """Envelope evaluated at every integer c (linear between envelope points)."""
    C1 = g.shape[-1]
    c = jnp.arange(C1, dtype=jnp.int32)
    # previous envelope point at or before c
    prev = _running(jnp.maximum, jnp.where(on, c, 0))
    nx = nxt[prev]
    has = nx < C1
    nxc = jnp.minimum(nx, C1 - 1)
    frac = (c - prev).astype(g.dtype) / jnp.maximum(nxc - prev, 1).astype(g.dtype)
    lin = g[prev] + frac * (g[nxc] - g[prev])
    return jnp.where(on, g, jnp.where(has, lin, g[prev]))


def _hull_segments(g, s, cmax) -> tuple[Array, ...]:
    """Envelope segments per layer: ``on``, ``nxt``, end ``nxc``, gain, length (units), usable [L, C1]; ``c``."""
    C1 = g.shape[1]
    tol = _tol(g)
    on, nxt = jax.vmap(upper_envelope, in_axes=(0, 0, None))(g, cmax, tol)  # [L, C1]
    c = jnp.arange(C1, dtype=jnp.int32)[None, :]
    has_next = nxt < C1
    nxc = jnp.minimum(nxt, C1 - 1)
    seg_gain = jnp.take_along_axis(g, nxc, axis=1) - g  # [L, C1]
    seg_len = (nxc - c) * s[:, None]  # units
    seg_ok = on & has_next & (seg_gain > 0)
    return on, nxt, nxc, seg_gain, seg_len, seg_ok, c


def _sorted_segments(seg_gain, seg_len, seg_ok) -> tuple[Array, ...]:
    """Segments by decreasing gain per unit: ``layer``, usable, length, gain (flat), ``rank [L, C1]``, ``pos``."""
    L, C1 = seg_gain.shape
    slope = seg_gain / jnp.maximum(seg_len, 1).astype(seg_gain.dtype)
    # Float noise must never reorder one layer's segments: make slopes non-increasing in c.
    slope = _running(jnp.minimum, jnp.where(seg_ok, slope, jnp.inf), axis=1)
    key = jnp.where(seg_ok, -slope, jnp.inf).reshape(-1)
    perm = stable_argsort(key)  # (layer, c) order among ties
    layer = (perm // C1).astype(jnp.int32)
    ok_s = seg_ok.reshape(-1)[perm]
    len_s = jnp.where(ok_s, seg_len.reshape(-1)[perm], 0).astype(jnp.int32)
    gain_s = jnp.where(ok_s, seg_gain.reshape(-1)[perm], 0)
    S = L * C1
    pos = jnp.arange(S, dtype=jnp.int32)
    # rank[l, c]: the sorted position of segment (l, c); per-layer minima over sorted positions are
    # then row minima in the [L, C1] layout (a gather and a reduction instead of a scatter-min,
    # which XLA's CPU backend runs element by element).
    rank = jnp.zeros(S, jnp.int32).at[perm].set(pos).reshape(L, C1)
    return layer, ok_s, len_s, gain_s, rank, pos


def _lp_bound(ok_s, len_s, gain_s, Q) -> Float[Array, ""]:
    """LP bound: the sorted prefix that fits plus a fraction of the first one that does not."""
    dt = gain_s.dtype
    cum = _prefix_sum(len_s)
    full = ok_s & (cum <= Q)
    brk = ok_s & (cum > Q)
    has_brk = brk.any()
    b = jnp.argmax(brk)
    frac = (Q - (cum[b] - len_s[b])).astype(dt) / jnp.maximum(len_s[b], 1).astype(dt)
    return jnp.where(full, gain_s, 0).sum() + jnp.where(has_brk, frac * gain_s[b], 0)


def _skip_greedy(layer, ok_s, len_s, rank, pos, Q) -> Bool[Array, "S"]:
    """The sorted segments the skip-greedy takes (bool, flat in sorted order)."""
    L, C1 = rank.shape
    S = L * C1
    # Skip-greedy: take segments in order while they fit; a segment that does not fit is skipped
    # and closes its layer (later segments of that layer would not be contiguous). Done in rounds
    # from the last position p0 with r units left: every live segment longer than r can never fit,
    # so it closes its layer at once (``first_bad``); the remaining eligible segments are taken in
    # order while the running sum fits, and the first one that overflows closes its layer and ends
    # the round. Each round closes at least one layer, so at most L + 1 rounds — in practice a few,
    # since only the rare overflows of segments shorter than r cost a round.
    def cond(st):
        it, _, _, _, _, done = st
        return (~done) & (it <= L)

    def body(st):
        it, taken, closed, r, p0, _ = st
        live = ok_s & (pos > p0) & ~closed[layer]
        bad = live & (len_s > r)
        first_bad = jnp.where(bad[rank], rank, S).min(axis=1)  # [L] the first bad segment of each layer
        elig = live & ~bad & (pos < first_bad[layer])
        cs = _prefix_sum(jnp.where(elig, len_s, 0))
        over = elig & (cs > r)
        has_over = over.any()
        f = jnp.where(has_over, jnp.argmax(over), S).astype(jnp.int32)
        take = elig & (pos < f)
        r = r - jnp.where(take, len_s, 0).sum(dtype=jnp.int32)
        lf = layer[jnp.minimum(f, S - 1)]
        closed = closed | (first_bad < f) | ((jnp.arange(L) == lf) & has_over)
        return it + 1, taken | take, closed, r, f, ~has_over

    init = (jnp.int32(0), jnp.zeros(S, bool), jnp.zeros(L, bool), Q, jnp.int32(-1), jnp.bool_(False))
    _, taken, _, _, _, _ = lax.while_loop(cond, body, init)
    return taken


def _or_best_single(g, c, cmax, value, counts) -> tuple[Array, Array]:
    """``(value, counts)`` or, where strictly better, the best single-layer point (>= OPT/2 with the LP bound)."""
    L = g.shape[0]
    usable = c <= cmax[:, None]
    gs = jnp.where(usable, g, -jnp.inf)
    best_c = jnp.argmax(gs, axis=1).astype(jnp.int32)
    best_v = jnp.take_along_axis(gs, best_c[:, None], axis=1)[:, 0]
    bl = jnp.argmax(best_v)
    single = best_v[bl]
    use_single = single > value
    counts = jnp.where(use_single, jnp.zeros(L, jnp.int32).at[bl].set(best_c[bl]), counts)
    value = jnp.where(use_single, single, value)
    return value, counts


def _hull(g, s, Q) -> DPResult:
    """The ``hull`` backend (see the module docstring)."""
    g = jnp.asarray(g)
    C1 = g.shape[1]
    s = jnp.asarray(s, jnp.int32)
    Q = jnp.maximum(jnp.asarray(Q, jnp.int32), 0)
    cmax = jnp.minimum(Q // jnp.maximum(s, 1), C1 - 1)  # [L]
    on, nxt, nxc, seg_gain, seg_len, seg_ok, c = _hull_segments(g, s, cmax)
    layer, ok_s, len_s, gain_s, rank, pos = _sorted_segments(seg_gain, seg_len, seg_ok)
    lp = _lp_bound(ok_s, len_s, gain_s, Q)
    taken = _skip_greedy(layer, ok_s, len_s, rank, pos, Q)
    taken_layout = taken[rank]
    counts = jnp.where(taken_layout, nxc, 0).max(axis=1).astype(jnp.int32)
    value = jnp.take_along_axis(g, counts[:, None], axis=1)[:, 0].sum()
    value, counts = _or_best_single(g, c, cmax, value, counts)
    env = jax.vmap(_envelope_values)(g, on, nxt)
    return DPResult(value, counts, jnp.maximum(lp, value), env)


def _exact(g: Float[Array, "L C1"], s: Int[Array, "L"], Q: Int[Array, ""], Qmax: int) -> DPResult:
    """Exact layer DP (``dense``'s optimum and tie rule) with a fused max per layer: the forward
    pass keeps only the tables ``G_{l-1}`` [L, Qmax+1]; the backtrack recomputes one row of
    candidates per layer (C+1 values) and takes the first maximum, which is the smallest
    maximizing count, exactly as ``dense``'s argmax table.
    """
    C1 = g.shape[1]
    q = jnp.arange(Qmax + 1, dtype=jnp.int32)[:, None]
    c = jnp.arange(C1, dtype=jnp.int32)

    def step(G, gs):
        gl, sl = gs
        idx = q - c[None, :] * sl
        out = jnp.where(idx >= 0, G[jnp.maximum(idx, 0)] + gl[None, :], -jnp.inf).max(axis=1)
        return out, G

    G, prev = lax.scan(step, jnp.zeros((Qmax + 1,), g.dtype), (g, s))
    Qc = jnp.clip(Q, 0, Qmax)

    def back(qq, xs):
        Gp, gl, sl = xs
        idx = qq - c * sl
        cand = jnp.where(idx >= 0, Gp[jnp.maximum(idx, 0)] + gl, -jnp.inf)
        cl = jnp.argmax(cand).astype(jnp.int32)
        return qq - cl * sl, cl

    _, counts = lax.scan(back, Qc, (prev, g, s), reverse=True)
    value = G[Qc]
    return DPResult(value, counts, value, G)


def fptas_levels(L: int, eps: float, Qmax: int | None = None) -> int:
    """Profit levels of the ``fptas`` table: ``ceil(2·n/eps) + 1`` with ``n = min(L, Qmax)`` (the
    most layers a solution can use, every size being >= 1 unit)."""
    n = L if Qmax is None else max(1, min(L, int(Qmax)))
    return math.ceil(2 * n / eps - 1e-9) + 1


def _dual_bound(
    h: Float[Array, "L C1"], s: Int[Array, "L"], Q: Int[Array, ""], ok: Bool[Array, "L C1"], iters: int = DUAL_ITERS
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Lagrangian bound ``ub = min_λ D(λ)``, ``D(λ) = λ·Q + Σ_l max_{c usable} (h[l, c] − λ·c·s[l])``,
    and the value ``lb`` of a feasible choice found on the way. Returns ``(ub, lb)``,
    ``lb ≤ OPT ≤ ub``.

    Every ``D(λ)`` with ``λ >= 0`` is an upper bound on OPT (weak duality); its minimum is the LP
    bound over the concave envelopes, which is at most 2·OPT (the sorted prefix before the break
    segment is feasible, and so is the break segment's end point alone). ``D`` is convex: a
    fixed-trip bisection on its right derivative ``Q − Σ_l c_l(λ)·s[l]`` (smallest maximizing
    counts) over ``[0, max slope]`` reaches the LP bound up to ``2^-iters`` of the range; the
    smallest ``D`` seen is returned (so the bound holds whatever the float rounding of ``λ``).
    Wherever the smallest maximizing counts fit in ``Q`` they are a feasible choice, and ``lb`` is
    the best of their values and of the best single usable count (so ``lb >= ub / 2`` up to the
    bisection's resolution: the sorted prefix and the break segment's end point). O(iters·L·C),
    no sort and no envelope, so it compiles to a small loop.
    """
    C1 = h.shape[1]
    dt = h.dtype
    cs = (jnp.arange(C1, dtype=jnp.int32)[None, :] * s[:, None]).astype(dt)  # units of c items
    hm = jnp.where(ok, h, -jnp.inf)
    hi0 = jnp.where(ok & (cs > 0), h / jnp.maximum(cs, 1), 0).max()

    def body(_, st):
        lo, hi, ub, lb = st
        lam = 0.5 * (lo + hi)
        phi = hm - lam * cs
        best = phi.max(axis=1)
        argmax = phi >= best[:, None]
        least = jnp.where(argmax, cs, jnp.inf).min(axis=1)  # [L] units of the smallest maximizers
        used = least.sum()
        right = used <= Q.astype(dt)  # D's right derivative Q − used >= 0: the minimum is at or left of lam
        # their value, a feasible choice when they fit (cs grows with c, so cs == least picks them)
        val = jnp.where(argmax & (cs == least[:, None]), h, -jnp.inf).max(axis=1).sum()
        lb = jnp.where(right, jnp.maximum(lb, val), lb)
        return jnp.where(right, lo, lam), jnp.where(right, lam, hi), jnp.minimum(ub, lam * Q.astype(dt) + best.sum()), lb

    ub0 = hm.max(axis=1).sum()  # D(0)
    lb0 = jnp.where(ok, h, 0).max()  # the best single usable count
    _, _, ub, lb = lax.fori_loop(0, iters, body, (jnp.zeros((), dt), hi0, ub0, lb0))
    return jnp.maximum(ub, 0), jnp.maximum(lb, 0)


def _fptas_chunk(P: int) -> int:
    """Levels per block of the ``fptas`` forward pass: a quarter of the table, rounded up to 8."""
    return -(-max(1, -(-P // 4)) // 8) * 8


def _fptas_scale(h, s, Q, ok, eps: float, P: int) -> tuple[Array, Array, Array]:
    """The profit scale ``(ub, n_use, delta)``: the Lagrangian bound, the most layers used, the rounding unit."""
    dt = h.dtype
    ub, lb = _dual_bound(h, s, Q, ok)  # lb <= OPT <= ub <= 2·OPT
    # The scale: a solution loses < delta per layer it uses, at most n_use layers (the most whose
    # smallest sizes fit in Q). delta = ub / (P − 1) loses <= eps·ub/2 <= eps·OPT whatever lb is;
    # eps·lb / n_use loses <= eps·lb <= eps·OPT. The larger one needs fewer levels.
    n_use = (jnp.cumsum(jnp.sort(s)) <= Q).sum()
    delta = jnp.where(ub > 0, ub / (P - 1), 1).astype(dt)
    # (1 − 2^-12): lb is the value of a choice, often one count, whose profit would otherwise be an
    # exact multiple of delta, where floor() would depend on the last bit of the division.
    delta = jnp.maximum(delta, (eps * (1 - 2.0**-12) * lb / jnp.maximum(n_use, 1)).astype(dt))
    return ub, n_use, delta


def _fptas_round(h, ok, ub, delta, P: int) -> tuple[Array, Array, Array]:
    """Rounded-down profit levels ``pi`` [L, C1], their remainders ``frac``, the highest reachable ``live`` [L]."""
    dt = h.dtype
    pi = jnp.clip(jnp.floor(h / delta), 0, P - 1).astype(jnp.int32)  # [L, C1] rounded-down profit
    pi = jnp.where(ok, pi, 0)
    frac = jnp.where(ok, h - pi.astype(dt) * delta, 0)  # in [0, delta)
    # No feasible choice rounds above ub / delta (one level of slack for float rounding of ub), and
    # none reaches above the sum of the layers' largest rounded profits so far: the forward pass
    # fills only the blocks of levels up to `live[l]`; the rest stay "none fits".
    top = jnp.minimum(jnp.floor(ub / delta).astype(jnp.int32) + 1, P - 1)
    live = jnp.minimum(jnp.cumsum(pi.max(axis=1)), top)  # [L]
    return pi, frac, live


def _fptas_forward(pi, ok, s, live, inf, P: int) -> tuple[Array, Array, Array]:
    """The layer DP over rounded profit: fewest units per level ``W [PP]``, ``prev`` tables, levels ``p``."""
    C1 = pi.shape[1]
    CH = _fptas_chunk(P)
    PP = -(-P // CH) * CH
    p = jnp.arange(PP, dtype=jnp.int32)
    W0 = jnp.where(p == 0, 0, inf)
    block = jnp.arange(CH, dtype=jnp.int32)

    def step(W, xs):
        pl, okl, sl, lv = xs
        # W behind PP levels of "none fits": W[p − pl[c]] of a block is one contiguous slice
        Wpad = jnp.concatenate([jnp.full((PP,), inf, jnp.int32), W])

        def fill(k, Wn):
            pp = k * CH + block

            def count(ci, acc):  # min over the counts, one count at a time (O(CH) memory)
                prior = lax.dynamic_slice_in_dim(Wpad, PP + k * CH - pl[ci], CH)  # W[pp − pl[c]] (none if < 0)
                return jnp.minimum(acc, jnp.where(okl[ci], prior + ci * sl, inf))

            best = lax.fori_loop(0, C1, count, jnp.full((CH,), inf, jnp.int32), unroll=8)
            Wb = jnp.where(pp <= lv, best, inf)
            # a select of block k (no dynamic_update_slice: under vmap that becomes a scatter)
            return jnp.where(jnp.arange(PP // CH, dtype=jnp.int32)[:, None] == k, Wb[None, :], Wn)

        Wn = lax.fori_loop(0, lv // CH + 1, fill, jnp.full((PP // CH, CH), inf, jnp.int32))
        return Wn.reshape(PP), W

    W, prev = lax.scan(step, W0, (pi, ok, s, live))  # W [PP]: min units of rounded profit exactly p
    return W, prev, p


def _fptas_backtrack(W, prev, p, pi, ok, h, s, c, Q, inf) -> tuple[Array, Array]:
    """``(pstar, counts)``: the highest level that fits and its counts (ties: largest true profit, then smallest)."""
    feasible = W <= Q
    pstar = jnp.max(jnp.where(feasible, p, 0)).astype(jnp.int32)

    def back(carry, xs):
        pp, target = carry
        Wp, pl, okl, hl, sl = xs
        idx = pp - pl
        cand = jnp.where(okl & (idx >= 0), Wp[jnp.maximum(idx, 0)] + c * sl, inf)
        hit = cand == target  # every count that continues a path to (pp, target)
        cl = jnp.argmax(jnp.where(hit, hl, -jnp.inf)).astype(jnp.int32)  # best true profit, then smallest
        nxt = pp - pl[cl]
        return (nxt, Wp[nxt]), cl

    _, counts = lax.scan(back, (pstar, W[pstar]), (prev, pi, ok, h, s), reverse=True)
    return pstar, counts


def _fptas(g: Float[Array, "L C1"], s: Int[Array, "L"], Q: Int[Array, ""], eps: float, Qmax: int | None) -> DPResult:
    """The ``fptas`` backend (see the module docstring): exact when ``Qmax + 1 <= P``, else the
    layer DP over ``P = fptas_levels(L, eps, Qmax)`` rounded-profit levels. Returns a
    :class:`DPResult` with ``table`` int32 [P] (or ``dense``'s [Qmax+1] where exact)."""
    L, C1 = g.shape
    P = fptas_levels(L, eps, Qmax)
    if Qmax is not None and Qmax + 1 <= P:
        # The capacity axis is the smaller table: solve exactly (cheaper than the profit DP).
        return _exact(g, s, Q, Qmax)
    dt = g.dtype
    Q = jnp.maximum(Q, 0)
    if Qmax is not None:
        Q = jnp.minimum(Q, Qmax)
    base = g[:, :1]
    h = g - base  # the profit of c items over taking none (c = 0 is always feasible)
    c = jnp.arange(C1, dtype=jnp.int32)
    ok = ((c[None, :] * s[:, None]) <= Q) & (h >= 0)  # a choice with h < 0 is beaten by c = 0
    ok = ok.at[:, 0].set(True)
    ub, n_use, delta = _fptas_scale(h, s, Q, ok, eps, P)
    pi, frac, live = _fptas_round(h, ok, ub, delta, P)
    inf = Q + 1  # "no solution of this profit fits"
    W, prev, p = _fptas_forward(pi, ok, s, live, inf, P)
    pstar, counts = _fptas_backtrack(W, prev, p, pi, ok, h, s, c, Q, inf)
    value = jnp.take_along_axis(g, counts[:, None], axis=1)[:, 0].sum()
    # OPT's rounded profit is <= pstar, and OPT rounds down by at most the largest frac of each
    # layer it uses: at most n_use layers.
    top_frac = jnp.cumsum(-jnp.sort(-frac.max(axis=1)))
    cert = pstar.astype(dt) * delta + jnp.where(n_use > 0, top_frac[jnp.maximum(n_use - 1, 0)], 0)
    bound = base.sum() + jnp.minimum(ub, cert)
    return DPResult(value, counts, jnp.maximum(bound, value), W[:P])


def capacity_dp(
    g: Float[Array, "L C1"],
    s: Int[Array, "L"],
    Q: Int[Array, ""] | int,
    *,
    Qmax: int | None = None,
    backend: str = "dense",
    eps: float = DEFAULT_EPS,
) -> DPResult:
    """Split capacity ``Q`` over layers: maximize Σ_l g[l, c_l] s.t. Σ_l c_l·s[l] ≤ Q.

    Args:
      g: float [L, C+1] finite gain curves (``g[:, 0] = 0``; the DP does not need them
        non-decreasing, but the ``hull`` guarantees are stated for non-decreasing curves).
        ``fptas`` takes any ``g[:, 0]``: its guarantee is on the gain over ``Σ_l g[l, 0]``, so it
        holds for the value itself whenever ``g[:, 0] >= 0``.
      s: int [L] unit cost of one item of each layer (>= 1).
      Q: int capacity (traced, may be 0).
      Qmax: static upper bound on Q (the table size of ``dense``; ``Q`` is clipped to it).
        ``fptas`` uses it to bound the layers a solution can use and to solve exactly when the
        capacity table is the smaller one.
      backend: ``"dense"`` (exact), ``"hull"`` (concave envelopes + skip-greedy, LP bound) or
        ``"fptas"`` (value-scaled DP, ``value >= (1 - eps)·OPT``).
      eps: static, ``0 < eps < 1``: the approximation guarantee of ``fptas`` (ignored by the
        other backends). Default :data:`DEFAULT_EPS`.

    Returns:
      :class:`DPResult` (value, counts [L], bound, table).

    Raises:
      ValueError: unknown backend, ``dense`` without ``Qmax``, ``Qmax < 0``, ``eps`` not in (0, 1),
        or ``g``/``s`` shapes that disagree.

    Examples:
      >>> import jax.numpy as jnp
      >>> g = jnp.array([[0., 3., 4.], [0., 2., 6.]])
      >>> r = capacity_dp(g, jnp.array([1, 1]), 2, Qmax=4)
      >>> float(r.value), r.counts.tolist()
      (6.0, [0, 2])
      >>> r = capacity_dp(g, jnp.array([1, 1]), 2, backend="fptas", eps=0.1)
      >>> float(r.value), r.counts.tolist(), float(r.bound) >= 6.0
      (6.0, [0, 2], True)
    """
    if backend not in BACKENDS:
        raise ValueError(f"maxconv: unknown backend {backend!r}; valid backends are {BACKENDS}")
    if Qmax is not None and int(Qmax) < 0:
        raise ValueError(f"Qmax: must be >= 0, got {Qmax}")
    if jnp.ndim(g) != 2 or jnp.ndim(s) != 1 or jnp.shape(s)[0] != jnp.shape(g)[0]:
        raise ValueError(f"g, s: need g [L, C+1] and s [L] with the same L, got shapes {jnp.shape(g)} and {jnp.shape(s)}")
    g = jnp.asarray(g)
    if not jnp.issubdtype(g.dtype, jnp.floating):
        g = g.astype(jnp.result_type(float))
    s = jnp.asarray(s, jnp.int32)
    Qa = jnp.asarray(Q, jnp.int32)
    if backend == "dense":
        if Qmax is None:
            raise ValueError("Qmax: the dense backend needs a static Qmax (table size)")
        return _exact(g, s, Qa, int(Qmax))
    if backend == "hull":
        if Qmax is not None:
            Qa = jnp.minimum(Qa, int(Qmax))
        return _hull(g, s, Qa)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < float(eps) < 1:
        raise ValueError(f"eps: must be a float with 0 < eps < 1 (static), got {eps!r}")
    return _fptas(g, s, Qa, float(eps), None if Qmax is None else int(Qmax))
