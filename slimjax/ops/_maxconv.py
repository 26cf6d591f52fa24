"""Batched (max,+) convolution and the capacity DP over layers.

Per node the storage ``Q`` (integer grid units) is split over ``L`` layers. With ``g[l, c]`` the
best gain from caching ``c`` experts of layer ``l`` (cost ``c * s[l]`` units, ``c = 0..C``) the
split is the multiple-choice knapsack

    G_l[q] = max_{c : c·s_l ≤ q} G_{l-1}[q − c·s_l] + g_l[c],   G_0 ≡ 0,

solved by :func:`capacity_dp` with one of two backends:

- ``"dense"`` — exact. Every layer is one (max,+) convolution (:func:`maxplus_conv`): a broadcast
  ``[Qmax+1, C+1]`` gather, mask, max/argmax, inside a ``lax.scan`` over layers; the argmax table
  ``[L, Qmax+1]`` is backtracked from ``Q``. O(L·Qmax·C).
- ``"hull"`` — the accelerated method. Every curve is replaced by its upper concave envelope
  (:func:`upper_envelope`); the envelope segments of all layers are taken in decreasing
  gain-per-unit order while they fit, skipping (and closing the layer of) those that do not. The
  value is ≥ the LP bound − the largest segment, it is exact for concave curves with equal sizes,
  and it is returned only if it beats the best single-layer point, so it is ≥ OPT / 2 (the
  multiple-choice-knapsack LP argument, Sinha & Zoltners 1979). It also returns that LP bound,
  which certifies the gap. O(L·C² + L·C·log(L·C)), independent of ``Q``.

Everything is pure JAX on one node's problem; ``jax.vmap`` it over nodes / instances. Capacities
and sizes are traced; only ``Qmax`` (the DP table size of ``dense``) is static.

References:
  Sinha, P. and Zoltners, A. A. (1979). The multiple-choice knapsack problem. Operations
  Research 27(3), 503–515.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

__all__ = ["DPResult", "maxplus_conv", "upper_envelope", "capacity_dp", "BACKENDS"]

BACKENDS = ("dense", "hull")


class DPResult(NamedTuple):
    """Result of :func:`capacity_dp` for one node.

    Attributes:
      value: float [] — Σ_l g[l, counts[l]], the gain achieved (actual curve values).
      counts: int32 [L] — how many experts of each layer; Σ counts·s ≤ Q.
      bound: float [] — an upper bound on the optimum: ``value`` itself for ``dense`` (exact), the
        LP bound over the concave envelopes for ``hull``.
      table: ``dense``: float [Qmax+1], ``G_L[q]`` the optimum for every capacity q ≤ Qmax;
        ``hull``: float [L, C+1], the upper concave envelopes at integer counts.
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


def _dense(g, s, Q, Qmax: int) -> DPResult:
    g = jnp.asarray(g)
    G0 = jnp.zeros((Qmax + 1,), g.dtype)

    def step(G, gs):
        gl, sl = gs
        out, arg = maxplus_conv(G, gl, sl)
        return out, arg

    G, args = lax.scan(step, G0, (g, s))  # G [Qmax+1], args [L, Qmax+1]
    Qc = jnp.clip(Q, 0, Qmax)

    def back(q, xs):
        arg_l, sl = xs
        c = arg_l[q]
        return q - c * sl, c

    _, counts = lax.scan(back, Qc, (args, s), reverse=True)
    value = G[Qc]
    return DPResult(value, counts.astype(jnp.int32), value, G)


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
    as on the envelope. O(C²), fully vectorized.

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
    dg = g[None, :] - g[:, None]  # [i, j] = g[j] − g[i]
    dc = (c[None, :] - c[:, None]).astype(g.dtype)
    slope = dg / jnp.where(dc == 0, 1, dc)
    lower = c[:, None] < c[None, :]  # i < j
    left = jnp.where(lower & valid[:, None], slope, jnp.inf).min(axis=0)  # for j: min over i < j
    right = jnp.where(lower & valid[None, :], slope, -jnp.inf).max(axis=1)  # for i: max over j > i
    on = valid & (left >= right - tol)
    nxt = jnp.where(lower & on[None, :], c[None, :], C1).min(axis=1).astype(jnp.int32)
    return on, nxt


def _envelope_values(g, on, nxt):
    """Envelope evaluated at every integer c (linear between envelope points)."""
    C1 = g.shape[-1]
    c = jnp.arange(C1, dtype=jnp.int32)
    # previous envelope point at or before c
    prev = lax.cummax(jnp.where(on, c, 0), axis=0)
    nx = nxt[prev]
    has = nx < C1
    nxc = jnp.minimum(nx, C1 - 1)
    frac = (c - prev).astype(g.dtype) / jnp.maximum(nxc - prev, 1).astype(g.dtype)
    lin = g[prev] + frac * (g[nxc] - g[prev])
    return jnp.where(on, g, jnp.where(has, lin, g[prev]))


def _hull(g, s, Q) -> DPResult:
    g = jnp.asarray(g)
    L, C1 = g.shape
    dt = g.dtype
    s = jnp.asarray(s, jnp.int32)
    Q = jnp.maximum(jnp.asarray(Q, jnp.int32), 0)
    cmax = jnp.minimum(Q // jnp.maximum(s, 1), C1 - 1)  # [L]
    tol = _tol(g)
    on, nxt = jax.vmap(upper_envelope, in_axes=(0, 0, None))(g, cmax, tol)  # [L, C1]
    c = jnp.arange(C1, dtype=jnp.int32)[None, :]
    has_next = nxt < C1
    nxc = jnp.minimum(nxt, C1 - 1)
    seg_gain = jnp.take_along_axis(g, nxc, axis=1) - g  # [L, C1]
    seg_len = (nxc - c) * s[:, None]  # units
    seg_ok = on & has_next & (seg_gain > 0)
    slope = seg_gain / jnp.maximum(seg_len, 1).astype(dt)
    # Float noise must never reorder one layer's segments: make slopes non-increasing in c.
    slope = lax.cummin(jnp.where(seg_ok, slope, jnp.inf), axis=1)
    key = jnp.where(seg_ok, -slope, jnp.inf).reshape(-1)
    perm = jnp.argsort(key, stable=True)  # (layer, c) order among ties
    layer = (perm // C1).astype(jnp.int32)
    ok_s = seg_ok.reshape(-1)[perm]
    len_s = jnp.where(ok_s, seg_len.reshape(-1)[perm], 0).astype(jnp.int32)
    gain_s = jnp.where(ok_s, seg_gain.reshape(-1)[perm], 0)
    S = L * C1
    pos = jnp.arange(S, dtype=jnp.int32)

    # LP bound: the sorted prefix that fits plus a fraction of the first one that does not.
    cum = jnp.cumsum(len_s, dtype=jnp.int32)
    full = ok_s & (cum <= Q)
    brk = ok_s & (cum > Q)
    has_brk = brk.any()
    b = jnp.argmax(brk)
    frac = (Q - (cum[b] - len_s[b])).astype(dt) / jnp.maximum(len_s[b], 1).astype(dt)
    lp = jnp.where(full, gain_s, 0).sum() + jnp.where(has_brk, frac * gain_s[b], 0)

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
        first_bad = jnp.full((L,), S, jnp.int32).at[layer].min(jnp.where(bad, pos, S))
        elig = live & ~bad & (pos < first_bad[layer])
        cs = jnp.cumsum(jnp.where(elig, len_s, 0), dtype=jnp.int32)
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
    taken_layout = jnp.zeros(S, bool).at[perm].set(taken).reshape(L, C1)
    counts = jnp.where(taken_layout, nxc, 0).max(axis=1).astype(jnp.int32)
    value = jnp.take_along_axis(g, counts[:, None], axis=1)[:, 0].sum()

    # The best single-layer point (guarantees >= OPT/2 together with the LP argument).
    usable = c <= cmax[:, None]
    gs = jnp.where(usable, g, -jnp.inf)
    best_c = jnp.argmax(gs, axis=1).astype(jnp.int32)
    best_v = jnp.take_along_axis(gs, best_c[:, None], axis=1)[:, 0]
    bl = jnp.argmax(best_v)
    single = best_v[bl]
    use_single = single > value
    counts = jnp.where(use_single, jnp.zeros(L, jnp.int32).at[bl].set(best_c[bl]), counts)
    value = jnp.where(use_single, single, value)
    env = jax.vmap(_envelope_values)(g, on, nxt)
    return DPResult(value, counts, jnp.maximum(lp, value), env)


def capacity_dp(
    g: Float[Array, "L C1"],
    s: Int[Array, "L"],
    Q: Int[Array, ""] | int,
    *,
    Qmax: int | None = None,
    backend: str = "dense",
) -> DPResult:
    """Split capacity ``Q`` over layers: maximize Σ_l g[l, c_l] s.t. Σ_l c_l·s[l] ≤ Q.

    Args:
      g: float [L, C+1] gain curves (``g[:, 0] = 0``; the DP does not need them non-decreasing,
        but the ``hull`` guarantees are stated for non-decreasing curves).
      s: int [L] unit cost of one item of each layer (>= 1).
      Q: int capacity (traced, may be 0).
      Qmax: static upper bound on Q (the table size of ``dense``; ``Q`` is clipped to it).
      backend: ``"dense"`` (exact) or ``"hull"`` (concave envelopes + skip-greedy, LP bound).

    Returns:
      :class:`DPResult` (value, counts [L], bound, table).

    Raises:
      ValueError: unknown backend, or ``dense`` without ``Qmax``.

    Examples:
      >>> import jax.numpy as jnp
      >>> g = jnp.array([[0., 3., 4.], [0., 2., 6.]])
      >>> r = capacity_dp(g, jnp.array([1, 1]), 2, Qmax=4)
      >>> float(r.value), r.counts.tolist()
      (6.0, [0, 2])
    """
    if backend == "dense":
        if Qmax is None:
            raise ValueError("Qmax: the dense backend needs a static Qmax (table size)")
        if int(Qmax) < 0:
            raise ValueError(f"Qmax: must be >= 0, got {Qmax}")
        return _dense(g, jnp.asarray(s, jnp.int32), jnp.asarray(Q, jnp.int32), int(Qmax))
    if backend == "hull":
        Qa = jnp.asarray(Q, jnp.int32)
        if Qmax is not None:
            Qa = jnp.minimum(Qa, int(Qmax))
        return _hull(g, s, Qa)
    raise ValueError(f"maxconv: unknown backend {backend!r}; valid backends are {BACKENDS}")
