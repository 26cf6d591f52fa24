"""Layer oracles of the successive decomposition (step 1 for every node).

For one node, given the current expert latencies ``d [U, L, E]`` and what they would become if
this node cached the expert, ``newp = min(d, latency[:, n]) [U, L, E]``, an oracle returns for
every layer the curve ``g[l, c]`` = best gain with **at most** ``c`` experts of layer ``l`` on this
node (``c = 0..E``, non-decreasing, ``g[:, 0] = 0``) and a ``select(counts [L]) -> bool [L, E]``
that gives the expert set behind ``g[l, counts[l]]``. Gain = the layer's expected latency before
minus after, summed over users with ``traffic`` (``tw = traffic · weight``).

- :func:`exact_oracle`: every one of the 2^E subsets, vectorized. For "max" each pattern's gain
  depends on the subset only through its own ≤ K members, so its Möbius coefficients live on the
  2^K subsets of its members; they are scatter-added into a table over all 2^E expert sets and a
  zeta (subset-sum) transform gives the gain of every subset: O(M·K·2^K + E·2^E) per layer instead
  of O(2^E·M·K). For "sum" the gain is modular and the best sets are the top-c experts.
- :func:`greedy_oracle`: a chain of growing sets. Each step adds the candidate with the best gain
  per added expert; candidates are single experts (exact marginal gains) **and** completions of a
  pattern (its members that this node would make faster and are not in the set yet; gain
  estimated as the members' single gains plus the pattern's own co-activation term), so
  co-activated pairs are found when single gains are 0. The chain's gains are exact. Since a
  completion can add several experts at once, every size c >= 1 is also offered the best single
  expert (``g[c] = max(chain, best single)``, the set following the value).

Ties: among sets of one size the smallest bit mask wins; a larger size is used only when its
gain is strictly larger (so no expert without gain is ever added).

Item costs (optional, every oracle): ``item_cost [L, E]`` is subtracted once per chosen expert,
so ``g[l, c]`` is the best *net* gain (gain minus the chosen experts' costs) with at most ``c``
experts; e.g. the cost of migrating a copy the node does not hold yet. ``None`` (the default) is
the plain oracle, computed exactly as without the argument.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Float, Int, Shaped

from slimjax._kernels import repeated_member

__all__ = ["pattern_prep", "exact_oracle", "greedy_oracle", "modular_oracle", "EXACT_MAX_E"]

#: The largest E the exact oracle accepts (its table has L·2^E entries).
EXACT_MAX_E = 16
#: Up to this many 32-bit words per layer (E <= 128) the greedy chain reads its set as bit masks.
BITMASK_MAX_WORDS = 4

Select = Callable[[Array], Array]


def pattern_prep(patterns: Int[Array, "U L M K"], weight: Float[Array, "U L M"], traffic: Float[Array, "U"]):
    """``tw [U, L, M]`` = traffic·weight and ``dup bool [U, L, M, K]`` (position repeats an earlier id)."""
    dup = repeated_member(patterns)
    tw = traffic[:, None, None] * weight
    return tw, dup


def _minor_sum(slabs: list) -> Array:
    """``jnp.stack(slabs, -1).sum(-1)`` with the summation order of XLA CPU's reduction over a
    short minor axis (K <= 8: the K values padded with zeros to a power of two, then halved
    pairwise: ((x0 + x4) + (x2 + x6)) + ((x1 + x5) + (x3 + x7))), so that the position-major
    oracle gives bit for bit the sums of the ``[..., K].sum(-1)`` form it replaces (and so the
    same greedy chain: its ranking can tie). Above 8 the stacked sum itself."""
    K = len(slabs)
    if K > 8:
        return jnp.stack(slabs, axis=-1).sum(-1)
    W = 1 << max(K - 1, 0).bit_length()
    v = list(slabs) + [jnp.zeros_like(slabs[0])] * (W - K)
    while len(v) > 1:
        h = len(v) // 2
        v = [v[i] + v[i + h] for i in range(h)]
    return v[0]


def _flat_batching() -> bool:
    """Whether :func:`_take_flat` and :func:`_scatter_add_flat` flatten a vmapped batch (the CPU
    backend; elsewhere the default batching rules, whose programs are unchanged)."""
    return jax.default_backend() == "cpu"


@jax.custom_batching.custom_vmap
def _take_flat_cpu(table, idx):
    return table[idx]


@_take_flat_cpu.def_vmap
def _take_flat_vmap(axis_size, in_batched, table, idx):
    table_b, idx_b = in_batched
    if not table_b:
        return _take_flat_cpu(table, idx), idx_b
    P = table.shape[-1]
    if not idx_b:
        idx = jnp.broadcast_to(idx, (axis_size,) + idx.shape)
    off = (jnp.arange(axis_size, dtype=idx.dtype) * P).reshape((axis_size,) + (1,) * (idx.ndim - 1))
    return _take_flat_cpu(table.reshape(-1), idx + off), True


def _take_flat(table: Shaped[Array, "P"], idx: Int[Array, "..."]) -> Array:
    """``table[idx]`` for a 1-D ``table``. Under ``vmap`` (the solvers map the oracle over
    instances and candidates) the CPU form flattens the batched table and adds the offsets to
    ``idx``, so the gather stays one-dimensional: the default batching rule gives an [..., 2] index
    (8 bytes per pattern member read in every chain step, and a 2-D address per element). The same
    values either way."""
    return _take_flat_cpu(table, idx) if _flat_batching() else table[idx]


def _scatter_add_flat(P: int, idx: Int[Array, "n"], vals: Shaped[Array, "n"]) -> Array:
    """``zeros(P).at[idx].add(vals)``, whose batched CPU form is one 1-D scatter over the flattened
    batch (as :func:`_take_flat`). The updates keep their order (batch-major), so every entry adds
    the same values in the same order as the default batching rule's scatter."""
    if not _flat_batching():
        return jnp.zeros((P,), vals.dtype).at[idx].add(vals)

    @jax.custom_batching.custom_vmap
    def scatter(idx, vals):
        return jnp.zeros((P,), vals.dtype).at[idx].add(vals)

    @scatter.def_vmap
    def _(axis_size, in_batched, idx, vals):
        idx_b, vals_b = in_batched
        idx = idx if idx_b else jnp.broadcast_to(idx, (axis_size,) + idx.shape)
        vals = vals if vals_b else jnp.broadcast_to(vals, (axis_size,) + vals.shape)
        off = (jnp.arange(axis_size, dtype=idx.dtype) * P).reshape((axis_size,) + (1,) * (idx.ndim - 1))
        out = _scatter_add_flat(P * axis_size, (idx + off).reshape(-1), vals.reshape(-1))
        return out.reshape(axis_size, P), True

    return scatter(idx, vals)


def _first_max(v: Float[Array, "... n"], top: Float[Array, "..."]) -> Int[Array, "..."]:
    """``jnp.argmax(v, -1)`` given ``top = v.max(-1)`` (the first index attaining it), as two plain
    reductions: XLA CPU's variadic (value, index) reduce of ``argmax`` is several times slower.
    The same index when ``v`` has no NaN (the scores here never do)."""
    n = v.shape[-1]
    return jnp.where(v == top[..., None], jnp.arange(n, dtype=jnp.int32), n).min(-1)


def _members(v: Shaped[Array, "U L E"], patterns: Int[Array, "U L M K"]) -> Shaped[Array, "U L M K"]:
    return jnp.take_along_axis(v[:, :, None, :], patterns, axis=-1)


@functools.lru_cache(maxsize=None)
def _masks_by_size(E: int) -> np.ndarray:
    """int32 [E+1, W]: row c lists the bit masks with c bits set in ascending order, padded with
    2^E (W = the largest binomial coefficient C(E, c))."""
    P = 2**E
    pop = np.array([bin(i).count("1") for i in range(P)])
    rows = [np.flatnonzero(pop == c) for c in range(E + 1)]
    W = max(len(r) for r in rows)
    out = np.full((E + 1, W), P, np.int32)
    for c, r in enumerate(rows):
        out[c, : len(r)] = r
    return out


def _prefix_best(g_exact: Float[Array, "L C1"]) -> tuple[Array, Array]:
    """g[c] = max_{c' ≤ c} g_exact[c'] and the first c' attaining it."""
    C1 = g_exact.shape[-1]
    tri = jnp.arange(C1)[None, :] <= jnp.arange(C1)[:, None]  # [c, c']
    vals = jnp.where(tri[None], g_exact[:, None, :], -jnp.inf)
    idx = jnp.argmax(vals, axis=-1).astype(jnp.int32)  # [L, C1]
    g = jnp.take_along_axis(g_exact, idx, axis=-1)
    return g, idx


def modular_oracle(
    d: Float[Array, "U L E"],
    newp: Float[Array, "U L E"],
    patterns: Int[Array, "U L M K"],
    tw: Float[Array, "U L M"],
    item_cost: Float[Array, "L E"] | None = None,
) -> tuple[Float[Array, "L E1"], Select]:
    """Exact oracle for ``aggregation="sum"`` (J separates per expert): top-c experts by (net) gain."""
    U, L, M, K = patterns.shape
    E = d.shape[-1]
    imp = _members(d - newp, patterns)  # [U, L, M, K] (duplicates count twice, as in the sum)
    contrib = tw[..., None] * imp
    lidx = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32)[None, :, None, None], patterns.shape)
    ge = jnp.zeros((L * E,), d.dtype).at[(lidx * E + patterns).reshape(-1)].add(contrib.reshape(-1)).reshape(L, E)
    if item_cost is not None:
        ge = ge - jnp.asarray(item_cost, d.dtype)
    order = jnp.argsort(-ge, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1).astype(jnp.int32)  # rank[l, e]
    sorted_g = jnp.take_along_axis(ge, order, axis=-1)
    g_exact = jnp.concatenate([jnp.zeros((L, 1), d.dtype), jnp.cumsum(sorted_g, axis=-1)], axis=-1)
    g, idx = _prefix_best(g_exact)

    def select(counts):
        c = jnp.take_along_axis(idx, counts[:, None], axis=-1)  # [L, 1]
        return rank < c

    return g, select


def exact_oracle(
    d: Float[Array, "U L E"],
    newp: Float[Array, "U L E"],
    patterns: Int[Array, "U L M K"],
    tw: Float[Array, "U L M"],
    dup: Bool[Array, "U L M K"],
    aggregation: str = "max",
    item_cost: Float[Array, "L E"] | None = None,
) -> tuple[Float[Array, "L E1"], Select]:
    """Exact layer oracle by enumerating all 2^E subsets (see the module docstring).

    Args:
      d: current expert latencies [U, L, E].
      newp: latencies if this node caches the expert, ``min(d, latency[:, n])`` [U, L, E].
      patterns: [U, L, M, K]; tw: traffic·weight [U, L, M]; dup: repeated positions [U, L, M, K].
      aggregation: "max" or "sum" (static).
      item_cost: float [L, E] or None: subtracted once per chosen expert (``g`` is then the best
        net gain; a larger set is still used only when strictly better).

    Returns:
      (g float [L, E+1], select: counts int [L] -> bool [L, E]).
    """
    if aggregation == "sum":
        return modular_oracle(d, newp, patterns, tw, item_cost)
    U, L, M, K = patterns.shape
    E = d.shape[-1]
    if E > EXACT_MAX_E:
        raise ValueError(f"oracle: 'exact' enumerates 2^E subsets and needs E <= {EXACT_MAX_E}, got E={E}; use 'greedy'")
    dt = d.dtype
    old = jnp.where(dup, 0, _members(d, patterns))  # latencies are >= 0: a zero never decides a max
    new = jnp.where(dup, 0, _members(newp, patterns))
    p_old = old.max(-1)  # [U, L, M]
    # A[T] = max_{k∈T} new_k, C[T] = max_{k∈T} old_k, mask[T] = OR_{k∈T} bit(p_k) (bit k of T = position k).
    A = jnp.zeros(p_old.shape + (1,), dt)
    C = jnp.zeros(p_old.shape + (1,), dt)
    mk = jnp.zeros(p_old.shape + (1,), jnp.int32)
    for k in range(K):
        A = jnp.concatenate([A, jnp.maximum(A, new[..., k : k + 1])], axis=-1)
        C = jnp.concatenate([C, jnp.maximum(C, old[..., k : k + 1])], axis=-1)
        mk = jnp.concatenate([mk, mk | (jnp.int32(1) << patterns[..., k : k + 1])], axis=-1)
    val = jnp.maximum(A, C[..., ::-1])  # members in T new, the others old
    f = tw[..., None] * (p_old[..., None] - val)  # [U, L, M, 2^K] gain of the pattern per member subset
    for k in range(K):  # Möbius transform over the K positions
        f = f.reshape(p_old.shape + (2 ** (K - 1 - k), 2, 2**k))
        f = jnp.stack([f[..., 0, :], f[..., 1, :] - f[..., 0, :]], axis=-2).reshape(p_old.shape + (2**K,))
    P = 2**E
    lidx = jnp.arange(L, dtype=jnp.int32)[None, :, None, None]
    H = jnp.zeros((L * P,), dt).at[(lidx * P + mk).reshape(-1)].add(f.reshape(-1)).reshape(L, P)
    if item_cost is not None:  # a modular term: -cost at the singletons, summed into every superset below
        H = H.at[:, jnp.asarray(1 << np.arange(E), jnp.int32)].add(-jnp.asarray(item_cost, dt))
    for i in range(E):  # zeta (subset-sum) transform over the E experts
        H = H.reshape(L, 2 ** (E - 1 - i), 2, 2**i)
        H = jnp.stack([H[:, :, 0, :], H[:, :, 1, :] + H[:, :, 0, :]], axis=2)
    gain = jnp.concatenate([H.reshape(L, P), jnp.full((L, 1), -jnp.inf, dt)], axis=-1)  # [L, P+1]
    by_size = jnp.asarray(_masks_by_size(E))  # [E+1, W]: the masks of each size, ascending, padded with P
    vals = gain[:, by_size]  # [L, E+1, W]
    j = jnp.argmax(vals, axis=-1)  # first maximum = the smallest mask among ties
    m_exact = by_size[jnp.arange(E + 1)[None, :], j].astype(jnp.int32)  # [L, E+1]
    g_exact = jnp.take_along_axis(vals, j[..., None], axis=-1)[..., 0]
    g_exact = g_exact.at[:, 0].set(0.0)
    g, idx = _prefix_best(g_exact)
    sel_mask = jnp.take_along_axis(m_exact, idx, axis=-1)  # [L, E+1]

    def select(counts):
        m = jnp.take_along_axis(sel_mask, counts[:, None], axis=-1)  # [L, 1]
        return ((m >> jnp.arange(E, dtype=jnp.int32)[None, :]) & 1).astype(bool)

    return g, select


class _Members(NamedTuple):
    """The greedy chain's fixed data: the pattern members position-major ([K] lists of [U, L, M] slabs)."""

    improv: Array  # [L, E]: this node makes the expert faster for some user
    new_k: list  # the members' latencies if cached here (0 at repeated positions)
    old_k: list  # the members' current latencies (0 at repeated positions)
    pat_k: list  # the members' expert ids
    dup_k: list  # the position repeats an earlier id
    fix_k: list  # addable: not repeated and made faster by this node for the pattern's user
    flat_k: list  # the members' flat indices l·E + e into an [L, E] table
    lidx3: Array  # [U, L, M] the layer index
    p0: Array  # [U, L, M] the patterns' current latencies
    word_k: list  # the members' word (e // 32) of the per-layer bit mask, or [] (gathers instead)
    bit_k: list  # the members' bit (e % 32) in that word, uint32


def _greedy_members(d, newp, patterns, dup) -> _Members:
    """The members' latencies, ids and flags position-major, as :class:`_Members`."""
    L, E = patterns.shape[1], d.shape[-1]
    improv = (newp < d).any(0)  # [L, E]: this node makes the expert faster for some user
    # Pattern members position-major ([K] lists of [U, L, M] slabs): every per-pattern max, argmax
    # and count over the K members is then K - 1 elementwise steps (vectorised) instead of a
    # reduction over a short minor axis; the values are the same (max/argmax/any are exact).
    improv_u = _members((newp < d).astype(jnp.int32), patterns) > 0  # [U, L, M, K]
    new4 = jnp.where(dup, 0, _members(newp, patterns))
    old4 = jnp.where(dup, 0, _members(d, patterns))
    lidx = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32)[None, :, None, None], patterns.shape)
    lidx3 = lidx[..., 0]  # [U, L, M]
    p0 = old4.max(-1)
    pos = lambda a: list(jnp.moveaxis(a, -1, 0))  # noqa: E731 (materialised position-major, outside the loop)
    new_k, old_k, pat_k, dup_k = pos(new4), pos(old4), pos(patterns), pos(dup)
    fix_k = [~dk & iu for dk, iu in zip(dup_k, pos(improv_u))]  # addable unless already in the set
    flat_k = pos((lidx * E + patterns))
    if E <= 32 * BITMASK_MAX_WORDS:
        word_k = [p >> 5 for p in pat_k]
        bit_k = [(p & 31).astype(jnp.uint32) for p in pat_k]
    else:
        word_k, bit_k = [], []
    return _Members(improv, new_k, old_k, pat_k, dup_k, fix_k, flat_k, lidx3, p0, word_k, bit_k)


def _member_flags(inS: Bool[Array, "L E"], m: _Members) -> list:
    """[K] of [U, L, M]: whether each member's expert is in the set ``inS``."""
    if m.word_k:  # the set as W uint32 words per layer: a member's flag is a shift, not a gather
        L, E = inS.shape
        W = -(-E // 32)
        bits = jnp.pad(inS, ((0, 0), (0, 32 * W - E))).reshape(L, W, 32).astype(jnp.uint32)
        words = (bits << jnp.arange(32, dtype=jnp.uint32)).sum(-1, dtype=jnp.uint32)  # [L, W], exact
        in_s = []
        for wk, bk in zip(m.word_k, m.bit_k):
            word = jnp.broadcast_to(words[None, :, None, 0], wk.shape)
            for j in range(1, W):
                word = jnp.where(wk == j, words[None, :, None, j], word)
            in_s.append(((word >> bk) & 1) > 0)
        return in_s
    flat = inS.reshape(-1)
    return [_take_flat(flat, f) for f in m.flat_k]


def _members_grow(add: Bool[Array, "L E"], m: _Members, signed: list) -> list:
    """The carried member state (see :func:`_signed_members`) after the experts ``add`` join the
    set: a member whose expert was added gets its ``newp`` latency (and is no longer addable)."""
    return [jnp.where(a, nw, c) for a, nw, c in zip(_member_flags(add, m), m.new_k, signed)]


def _signed_members(signed: list) -> tuple[list, list]:
    """``(cur, A)`` from the carried state: each member's latency under the set ``cur = |signed|``
    and ``A = signed < 0`` (addable: made faster by this node and not in the set yet). Exact: an
    addable member's latency is > its ``newp`` >= 0, so the sign is free to carry the flag."""
    return [jnp.abs(c) for c in signed], [c < 0 for c in signed]


def _set_gain(tw, p0, curP, inS, cost) -> Float[Array, "L"]:
    """The exact (net) gain of the set per layer, from the patterns' latencies ``curP`` under it."""
    gain = (tw * (p0 - curP)).sum(axis=(0, 2))
    if cost is not None:
        gain = gain - jnp.where(inS, cost, 0).sum(-1)
    return gain


def _slowest_member(cur: list, m: _Members) -> tuple[Array, ...]:
    """Per pattern: its latency ``curP``, slowest member ``i1``, ``top2`` and i1's new latency, id, dup flag."""
    # one pass over the members: the slowest (first among ties, as argmax) i1, its new latency,
    # id and dup flag, and the largest other value top2 (>= 0, as a max with a 0 at i1)
    curP, i1, top2 = cur[0], jnp.zeros(cur[0].shape, jnp.int32), jnp.zeros_like(cur[0])
    new1, e1, dup1 = m.new_k[0], m.pat_k[0], m.dup_k[0]
    for k in range(1, len(cur)):
        gt = cur[k] > curP
        top2 = jnp.where(gt, curP, jnp.maximum(top2, cur[k]))
        curP = jnp.where(gt, cur[k], curP)
        i1 = jnp.where(gt, k, i1)
        new1 = jnp.where(gt, m.new_k[k], new1)
        e1 = jnp.where(gt, m.pat_k[k], e1)
        dup1 = jnp.where(gt, m.dup_k[k], dup1)
    return curP, i1, top2, new1, e1, dup1


def _single_gains(tw, slowest, lidx3, E: int, dt, cost) -> tuple[Array, Array]:
    """``drop1 [U, L, M]`` and the exact (net) single-expert gains ``single [L, E]``."""
    curP, _, top2, new1, e1, dup1 = slowest
    L = lidx3.shape[1]
    # Adding a member lowers the pattern's latency only when it is the (first) slowest member i1
    # (every member's new latency is <= the pattern's), so each pattern contributes to one expert:
    # curP - max(its new latency, the other members' max).
    drop1 = jnp.where(dup1, 0, curP - jnp.maximum(new1, top2))  # [U, L, M]
    idx1 = (lidx3 * E + e1).reshape(-1)
    single = _scatter_add_flat(L * E, idx1, (tw * drop1).reshape(-1)).reshape(L, E)
    if cost is not None:
        single = single - cost  # net single gains (a completion's estimate sums its members' net gains)
    return drop1, single


def _completion_scores(tw, m: _Members, A, cur, slowest, drop1, single, dt) -> Array:
    """Pattern completions (the members each adds: ``A``, [K] of [U, L, M]): the estimated gain per expert ``r_c``."""
    curP, i1 = slowest[0], slowest[1]
    size_a = sum(a.astype(jnp.int32) for a in A)
    full = jnp.where(A[0], m.new_k[0], cur[0])
    a1 = A[0] & (i1 == 0)
    for k in range(1, len(A)):
        full = jnp.maximum(full, jnp.where(A[k], m.new_k[k], cur[k]))
        a1 = a1 | (A[k] & (i1 == k))
    own = tw * ((curP - full) - jnp.where(a1, drop1, 0))
    # rounded on its own, as in the [..., K].sum(-1) form: LLVM would contract the product into the
    # sum below (an FMA, est off in the last bit, which can flip a near-tie of the ranking); a
    # select (never taken: own is finite) between them prevents the contraction
    own = jnp.where(own == own, own, 0.0)
    sflat = single.reshape(-1)
    est = _minor_sum([jnp.where(a, _take_flat(sflat, f), 0) for a, f in zip(A, m.flat_k)]) + own
    r_c = jnp.where(size_a > 0, est / jnp.maximum(size_a, 1).astype(dt), -jnp.inf)  # [U, L, M]
    return r_c


def _greedy_choice(inS, improv, single, A, r_c, patterns, active) -> tuple[Array, Array]:
    """One greedy step's choice: ``add [L, E]``, the best candidate per added expert if positive, and ``go [L]``."""
    U, L, M = patterns.shape[:3]
    E = inS.shape[-1]
    r_s = jnp.where(~inS & improv, single, -jnp.inf)  # [L, E]
    cand = jnp.concatenate([r_s, jnp.moveaxis(r_c, 0, 1).reshape(L, U * M)], axis=-1)
    top = cand.max(axis=-1)
    best = _first_max(cand, top)
    go = (top > 0) & active
    is_single = best < E
    ci = jnp.maximum(best - E, 0)
    cu, cm = ci // M, ci % M
    ar = jnp.arange(L)
    a_sel = jnp.stack([a[cu, ar, cm] for a in A], axis=-1)  # [L, K]
    p_sel = patterns[cu, ar, cm]  # [L, K]
    comp = (jax.nn.one_hot(p_sel, E, dtype=jnp.int32) * a_sel[..., None]).max(-2) > 0  # [L, E]
    add = jnp.where(is_single[:, None], jax.nn.one_hot(best, E, dtype=bool), comp) & go[:, None]
    return add, go


def _greedy_step(m: _Members, patterns, tw, lim, cost, state):
    """One greedy step: the candidate scores on the current set, the best one added, the set's gain/size at ``t``."""
    t, active, inS, s0, added_at, gains, sizes, signed = state
    dt = s0.dtype
    E = inS.shape[-1]
    # Each member's latency under the set and whether it is addable are carried from step to step
    # (one signed float per member, :func:`_signed_members`), updated from the experts each step
    # adds: XLA's CPU backend has no multi-output loop fusion, so every consumer of a value
    # computed from the set (the slowest member, the single gains' scatter, the completion scores)
    # recomputes it, and reading the members' latencies, ids and set flags in each of those passes
    # was most of the chain's time. The values are the same selects of the same latencies.
    cur, A = _signed_members(signed)
    slowest = _slowest_member(cur, m)
    gain_now = _set_gain(tw, m.p0, slowest[0], inS, cost)  # [L] exact gain of the current set
    size_now = inS.sum(-1).astype(jnp.int32)
    drop1, single = _single_gains(tw, slowest, m.lidx3, E, dt, cost)
    r_c = _completion_scores(tw, m, A, cur, slowest, drop1, single, dt)
    add, go = _greedy_choice(inS, m.improv, single, A, r_c, patterns, active)
    inS = inS | add
    signed = _members_grow(add, m, signed)
    s0 = jnp.where(t == 0, single, s0)
    added_at = jnp.where(add, t + 1, added_at)  # the state after step t holds the experts added in steps < t
    gains = lax.dynamic_update_index_in_dim(gains, gain_now, t, 0)
    sizes = lax.dynamic_update_index_in_dim(sizes, size_now, t, 0)
    active = go & (inS.sum(-1) < lim)
    return (t + 1, active, inS, s0, added_at, gains, sizes, signed)


def _chain_curve(gains, sizes, c, cost) -> tuple[Array, Array]:
    """``(g, t_of_c)`` [L, E+1]: the best (net) gain of a chain state of size <= c, and that state's step."""
    if cost is None:
        gains = lax.cummax(gains, axis=1)  # exact gains are non-decreasing already; guard float noise
        t_of_c = (sizes[:, None, :] <= c[None, :, None]).sum(-1) - 1  # [L, E+1] largest t with size_t ≤ c
        g = jnp.take_along_axis(gains, t_of_c, axis=-1)
    else:  # net gains can fall along the chain: the best state of size ≤ c (the first among ties)
        vals = jnp.where(sizes[:, None, :] <= c[None, :, None], gains[:, None, :], -jnp.inf)  # [L, E+1, T+1]
        t_of_c = jnp.argmax(vals, axis=-1).astype(jnp.int32)
        g = jnp.take_along_axis(vals, t_of_c[..., None], axis=-1)[..., 0]
    g = g.at[:, 0].set(0.0)
    return g, t_of_c


def _single_repair(g, c, improv, singles0) -> tuple[Array, Array, Array]:
    """The repair: every ``g[c >= 1]`` at least the best single expert's (``use1``: where that expert ``one`` wins)."""
    E = improv.shape[-1]
    # The chain may jump past small sizes (a completion adds several experts at once), so a node
    # holding fewer experts than a pattern would get nothing: every c >= 1 is at least the best
    # single expert (its exact gain against d). Still non-decreasing; used only when strictly better.
    s0 = jnp.where(improv, singles0, -jnp.inf)  # [L, E]
    best_e = jnp.argmax(s0, axis=-1).astype(jnp.int32)  # [L]
    best_v = jnp.take_along_axis(s0, best_e[:, None], axis=-1)  # [L, 1]
    use1 = (c[None, :] >= 1) & (best_v > g)  # [L, E+1]
    g = jnp.where(use1, best_v, g)
    one = jax.nn.one_hot(best_e, E, dtype=bool)  # [L, E]
    return g, use1, one


def greedy_oracle(
    d: Float[Array, "U L E"],
    newp: Float[Array, "U L E"],
    patterns: Int[Array, "U L M K"],
    tw: Float[Array, "U L M"],
    dup: Bool[Array, "U L M K"],
    aggregation: str = "max",
    steps: int | None = None,
    limit: Int[Array, "L"] | None = None,
    item_cost: Float[Array, "L E"] | None = None,
) -> tuple[Float[Array, "L E1"], Select]:
    """Greedy chain layer oracle (see the module docstring).

    The chain is a ``lax.while_loop`` of at most ``steps`` steps that stops as soon as no layer can
    grow: a layer stops when no candidate has a positive gain or when its set holds ``limit[l]``
    experts (the most the node can store). Every step adds ≥ 1 expert to each growing layer, and
    pattern completions add up to K, so on large E the chain usually ends long before ``steps``.
    Sizes above ``limit`` never fit, so stopping there changes no value the DP can use.

    Args:
      d: as :func:`exact_oracle`.
      newp: as :func:`exact_oracle`.
      patterns: as :func:`exact_oracle`.
      tw: as :func:`exact_oracle`.
      dup: as :func:`exact_oracle`.
      aggregation: as :func:`exact_oracle`.
      steps: most chain steps (static; default E; at most E). Sets larger than ``steps`` experts are
        never formed, so ``min(E, Qmax)`` loses nothing.
      limit: int [L], the most experts of each layer the node can hold (dynamic; default E).
      item_cost: float [L, E] or None: subtracted once per chosen expert. Candidates are ranked
        by net gain and ``g[c]`` is the best net gain of the chain's sets of size ≤ c.

    Returns:
      (g float [L, E+1], select: counts int [L] -> bool [L, E]).
    """
    if aggregation == "sum":
        return modular_oracle(d, newp, patterns, tw, item_cost)
    L, E = patterns.shape[1], d.shape[-1]
    T = E if steps is None else max(1, min(int(steps), E))
    dt = d.dtype
    m = _greedy_members(d, newp, patterns, dup)
    lim = jnp.full((L,), E, jnp.int32) if limit is None else jnp.minimum(jnp.asarray(limit, jnp.int32), E)
    cost = None if item_cost is None else jnp.asarray(item_cost, dt)
    step = functools.partial(_greedy_step, m, patterns, tw, lim, cost)
    # Rows of steps that never run keep size E + 1 (> any count), so they are never selected.
    init = (jnp.int32(0), lim > 0, jnp.zeros((L, E), bool), jnp.zeros((L, E), dt),
            jnp.full((L, E), T + 1, jnp.int32), jnp.zeros((T + 1, L), dt), jnp.full((T + 1, L), E + 1, jnp.int32),
            [jnp.where(f, -o, o) for f, o in zip(m.fix_k, m.old_k)])  # the empty set: all at d
    t_end, _, inS, singles0, added_at, gains, sizes, signed = lax.while_loop(
        lambda st: (st[0] < T) & st[1].any(), step, init)  # singles0: gains vs d
    pT = functools.reduce(jnp.maximum, _signed_members(signed)[0])
    gain_end = _set_gain(tw, m.p0, pT, inS, cost)
    gains = lax.dynamic_update_index_in_dim(gains, gain_end, t_end, 0).T  # [L, T+1]
    sizes = lax.dynamic_update_index_in_dim(sizes, inS.sum(-1).astype(jnp.int32), t_end, 0).T  # [L, T+1]
    c = jnp.arange(E + 1, dtype=jnp.int32)
    g, t_of_c = _chain_curve(gains, sizes, c, cost)
    g, use1, one = _single_repair(g, c, m.improv, singles0)

    def select(counts):
        t = jnp.take_along_axis(t_of_c, counts[:, None], axis=-1)  # [L, 1]
        u = jnp.take_along_axis(use1, counts[:, None], axis=-1)  # [L, 1]
        return jnp.where(u, one, added_at <= t)

    return g, select
