"""Polish: batched best-improvement local search with add and swap moves.

``polish_instance`` improves one placement by repeating, for at most ``rounds`` trips:

1. evaluate, all at once, the exact change of J of
   - every **add** ``(n, l, e)`` that fits on node ``n``,
   - every **swap** on one node: drop a cached ``(n, l_i, e_i)`` and add ``(n, l_j, e_j)`` when the
     node still fits afterwards;
   - every **pair add** of two experts of one layer on one node (``"max"``, E ≤ 32): co-activated
     experts whose single adds gain nothing (ties, K ≥ 2) are only useful together;
2. take the single best strictly improving move (the new J is recomputed exactly and the move is
   kept only when J drops by more than a float tolerance), or stop when none improves.

All deltas are exact (computed from the per-layer building blocks below, not estimated):

- an add only changes the patterns whose slowest member is the added expert, so with the two
  slowest *distinct* members of each pattern the gain is a gather plus a scatter-add;
- a drop raises the expert to its second-best holder (or the fallback);
- a swap across two layers is the sum of a drop and an add (J separates per layer);
- a swap inside one layer is evaluated jointly with the three slowest distinct members of each
  pattern ("max") or as the sum of both ("sum", separable).

**Bounded neighbourhood.** Cross-layer swaps cost O(N·L²) (best drop and best add per layer).
Same-layer swaps: for ``E <= 32`` all E×E pairs are evaluated, as ``loss[a] − gain[b]`` plus a
correction scattered from the member pairs of the patterns that hold both (O(U·M·K²·N + N·E²)
per layer), so a finished run is a true local optimum for adds and swaps. For ``E > 32`` only the
``swap_candidates`` cheapest drops × the ``swap_candidates`` best adds of each (node, layer) are
evaluated (O(U·M·N·k²) per layer): a restricted neighbourhood.

The loop is a ``lax.while_loop`` bounded by ``rounds`` (under ``vmap`` the batch runs until every
instance has stopped or ``rounds`` is reached; finished instances are no-ops).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from slimjax._instance import Instance
from slimjax.ops import add_gain_layer, drop_loss_layer, expert_frequency, pattern_top, second_best, scatter_e
from slimjax.solvers._base import Solver, check_int, document_options, option
__all__ = ["Polish", "polish_batch", "polish_instance"]

_NEG = -jnp.inf
#: Up to this many experts per layer the same-layer swap neighbourhood is complete (E×E per node).
DENSE_SWAP_MAX_E = 32


# ----------------------------------------------------------------------------------------------
# One round: all moves, exact deltas
# ----------------------------------------------------------------------------------------------


def _same_layer_swaps(lat_l, d_l, d_drop_l, x_l, pat_l, top_v, top_ids, w_l, traffic, add_l, drop_l, k):
    """Best exact same-layer swap per node ("max"): (gain [N], drop id [N], add id [N])."""
    U, N, _ = lat_l.shape
    dscore = jnp.where(x_l, -drop_l, _NEG)  # [N, E]
    ds, di = jax.lax.top_k(dscore, k)  # [N, k]
    ascore = jnp.where(x_l, _NEG, add_l)
    as_, aj = jax.lax.top_k(ascore, k)
    new_i = jnp.take_along_axis(d_drop_l, jnp.broadcast_to(di[None], (U, N, k)), axis=-1)  # [U, N, k]
    newd = jnp.minimum(d_l[:, None, :], lat_l)
    new_j = jnp.take_along_axis(newd, jnp.broadcast_to(aj[None], (U, N, k)), axis=-1)  # [U, N, k]
    # membership [U, M, N, k]
    in_i = (pat_l[:, :, None, None, :] == di[None, None, :, :, None]).any(-1)
    in_j = (pat_l[:, :, None, None, :] == aj[None, None, :, :, None]).any(-1)
    a = top_ids[:, :, None, None, None, :]  # [U, M, 1, 1, 1, 3]
    excl = (a == di[None, None, :, :, None, None]) | (a == aj[None, None, :, None, :, None])
    rest = jnp.where(excl, _NEG, top_v[:, :, None, None, None, :]).max(-1)  # [U, M, N, k, k]
    vi = jnp.where(in_i, jnp.moveaxis(new_i, 0, 0)[:, None], _NEG)  # [U, M, N, k]
    vj = jnp.where(in_j, new_j[:, None], _NEG)
    after = jnp.maximum(rest, jnp.maximum(vi[..., :, None], vj[..., None, :]))
    delta = jnp.einsum("um,umnij->nij", traffic[:, None] * w_l, after - top_v[..., 0][:, :, None, None, None])
    valid = (ds > _NEG)[:, :, None] & (as_ > _NEG)[:, None, :]
    gain = jnp.where(valid, -delta, _NEG).reshape(N, k * k)
    best = jnp.argmax(gain, axis=-1)
    g = jnp.take_along_axis(gain, best[:, None], -1)[:, 0]
    ei = jnp.take_along_axis(di, (best // k)[:, None], -1)[:, 0]
    ej = jnp.take_along_axis(aj, (best % k)[:, None], -1)[:, 0]
    return g, ei, ej


def _same_layer_swaps_dense(lat_l, d_l, d_drop_l, x_l, pat_l, top_v, top_ids, dup, w_l, traffic, add_l, drop_l):
    """Best exact same-layer swap per node ("max") over *all* (drop i, add j) pairs.

    ΔJ(drop a, add b) = loss[a] − gain[b] + corr[a, b], where corr is non-zero only for patterns
    holding both a and b; it is scattered from the K·(K−1) member pairs of every pattern, so the
    cost is O(U·M·K²·N + N·E²) per layer.
    """
    U, N, E = lat_l.shape
    M, K = pat_l.shape[1:]
    a = pat_l[:, :, :, None]  # [U, M, K, 1]  dropped member
    b = pat_l[:, :, None, :]  # [U, M, 1, K]  added member
    pair_ok = (a != b) & ~dup[:, :, :, None] & ~dup[:, :, None, :]  # [U, M, K, K]
    idx = jnp.broadcast_to(pat_l.reshape(U, 1, M * K), (U, N, M * K))
    dd = jnp.take_along_axis(d_drop_l, idx, axis=-1).reshape(U, N, M, K)  # after dropping member k
    nb = jnp.take_along_axis(jnp.minimum(d_l[:, None, :], lat_l), idx, axis=-1).reshape(U, N, M, K)  # after adding
    v1, v2, id1 = top_v[..., 0], top_v[..., 1], top_ids[..., 0]  # [U, M]
    excl = (top_ids[:, :, None, None, :] == a[..., None]) | (top_ids[:, :, None, None, :] == b[..., None])
    rest = jnp.where(excl, _NEG, top_v[:, :, None, None, :]).max(-1)  # [U, M, K, K]
    joint = jnp.maximum(rest[:, None], jnp.maximum(dd[..., :, None], nb[..., None, :]))  # [U, N, M, K, K]
    rest_a = jnp.where(pat_l == id1[..., None], v2[..., None], v1[..., None])  # [U, M, K]
    c_drop = jnp.maximum(rest_a[:, None], dd) - v1[:, None, :, None]  # [U, N, M, K]
    c_add = jnp.where((pat_l == id1[..., None])[:, None], jnp.maximum(v2[:, None, :, None], nb), v1[:, None, :, None])
    c_add = c_add - v1[:, None, :, None]
    corr = joint - v1[:, None, :, None, None] - c_drop[..., :, None] - c_add[..., None, :]
    corr = jnp.where(pair_ok[:, None], corr, 0.0) * (traffic[:, None] * w_l)[:, None, :, None, None]
    flat = jnp.moveaxis(corr, 1, 0).reshape(N, -1)  # [N, U*M*K*K]
    pid = jnp.broadcast_to(a * E + b, (U, M, K, K)).reshape(-1)
    corr_ab = jax.ops.segment_sum(flat.T, pid, num_segments=E * E).T.reshape(N, E, E)
    gain = add_l[:, None, :] - drop_l[:, :, None] - corr_ab
    gain = jnp.where(x_l[:, :, None] & ~x_l[:, None, :], gain, _NEG).reshape(N, E * E)
    best = jnp.argmax(gain, axis=-1)
    swap = (
        jnp.take_along_axis(gain, best[:, None], -1)[:, 0],
        (best // E).astype(jnp.int32),
        (best % E).astype(jnp.int32),
    )
    # pair adds (a and b both added): gain[a] + gain[b] − corr, corr from patterns holding both
    pjoint = jnp.maximum(rest[:, None], jnp.maximum(nb[..., :, None], nb[..., None, :]))  # [U, N, M, K, K]
    pcorr = pjoint - v1[:, None, :, None, None] - c_add[..., :, None] - c_add[..., None, :]
    pcorr = jnp.where(pair_ok[:, None], pcorr, 0.0) * (traffic[:, None] * w_l)[:, None, :, None, None]
    pflat = jnp.moveaxis(pcorr, 1, 0).reshape(N, -1)
    pcorr_ab = jax.ops.segment_sum(pflat.T, pid, num_segments=E * E).T.reshape(N, E, E)
    pgain = add_l[:, :, None] + add_l[:, None, :] - pcorr_ab
    upper = jnp.triu(jnp.ones((E, E), bool), 1)
    pgain = jnp.where(upper[None] & ~x_l[:, :, None] & ~x_l[:, None, :], pgain, _NEG).reshape(N, E * E)
    pbest = jnp.argmax(pgain, axis=-1)
    pair = (
        jnp.take_along_axis(pgain, pbest[:, None], -1)[:, 0],
        (pbest // E).astype(jnp.int32),
        (pbest % E).astype(jnp.int32),
    )
    return swap, pair


def _layer_moves(lat_l, fb_l, d_l, x_l, pat_l, w_l, freq_l, traffic, aggregation, k):
    """Per layer: add gains [N, E], drop losses [N, E], best same-layer swap per node."""
    d_drop = second_best(lat_l, fb_l, x_l)
    N = lat_l.shape[1]
    if aggregation == "max":
        top_v, top_ids, dup = pattern_top(d_l, pat_l, 3)
        add = add_gain_layer(lat_l, d_l, top_v, top_ids, w_l, traffic)
        drop = drop_loss_layer(d_drop, pat_l, top_v, top_ids, dup, w_l, traffic)
        drop = jnp.where(x_l, drop, 0.0)
        E = lat_l.shape[-1]
        none = (jnp.full((N,), _NEG, d_l.dtype), jnp.zeros(N, jnp.int32), jnp.zeros(N, jnp.int32))
        if k > 0 and E <= DENSE_SWAP_MAX_E:
            (sg, si, sj), pair = _same_layer_swaps_dense(
                lat_l, d_l, d_drop, x_l, pat_l, top_v, top_ids, dup, w_l, traffic, add, drop
            )
        elif k > 0:
            sg, si, sj = _same_layer_swaps(lat_l, d_l, d_drop, x_l, pat_l, top_v, top_ids, w_l, traffic, add, drop, k)
            pair = none
        else:
            (sg, si, sj), pair = none, none
    else:  # "sum": J separates per expert
        tf = traffic[:, None] * freq_l  # [U, E]
        add = jnp.einsum("ue,une->ne", tf, d_l[:, None, :] - jnp.minimum(d_l[:, None, :], lat_l))
        drop = jnp.where(x_l, jnp.einsum("ue,une->ne", tf, d_drop - d_l[:, None, :]), 0.0)
        # separable: the best same-layer swap is the best add minus the cheapest drop
        a = jnp.where(x_l, _NEG, add)
        dd = jnp.where(x_l, -drop, _NEG)
        sj = jnp.argmax(a, -1)
        si = jnp.argmax(dd, -1)
        sg = a.max(-1) + dd.max(-1)
        sg = jnp.where(jnp.isfinite(sg), sg, _NEG)
        # pair adds are never better than two single adds when J separates
        pair = (jnp.full((N,), _NEG, d_l.dtype), jnp.zeros(N, jnp.int32), jnp.zeros(N, jnp.int32))
    return add, drop, sg, si.astype(jnp.int32), sj.astype(jnp.int32), *pair


def _tolerance(J: Array) -> Array:
    return 64 * jnp.finfo(J.dtype).eps * (jnp.abs(J) + jnp.finfo(J.dtype).tiny)


def _layer_eval(lat, fb, pat, w, tr, freq, aggregation, k, x, l):
    """Layer l under x: its J, float table [N, 2E+2] (add, drop, swap/pair gain), int table [N, 4] (their ids)."""
    lat_l, fb_l, pat_l, w_l, x_l = lat[:, :, l, :], fb[:, l], pat[:, l], w[:, l], x[:, l]
    d_l = jnp.minimum(fb_l, jnp.where(x_l[None], lat_l, jnp.inf).min(axis=1))  # [U, E]
    member = jnp.take_along_axis(d_l[:, None, :], pat_l, axis=-1)  # [U, M, K]
    pl = member.max(-1) if aggregation == "max" else member.sum(-1)
    J_l = (tr[:, None] * w_l * pl).sum()
    add, drop, sg, si, sj, qg, qa, qb = _layer_moves(lat_l, fb_l, d_l, x_l, pat_l, w_l, freq[:, l], tr,
                                                     aggregation, k)
    F = jnp.concatenate([add, drop, sg[:, None], qg[:, None]], axis=-1)
    I = jnp.stack([jnp.asarray(v, jnp.int32) for v in (si, sj, qa, qb)], axis=-1)
    return J_l, F, I


def _cross_layer_swaps(x, add, drop, used, su, cu):
    """Best drop of layer li plus best add of layer lj per node: gains [N, L, L], drop ids, add ids [N, L]."""
    L = x.shape[1]
    best_add = jnp.where(x, _NEG, add)
    ba_e = jnp.argmax(best_add, -1)  # [N, L]
    ba = best_add.max(-1)
    cheap = jnp.where(x, -drop, _NEG)
    cd_e = jnp.argmax(cheap, -1)
    cd = cheap.max(-1)  # -loss
    fit2 = (used[:, None, None] - su[None, :, None] + su[None, None, :]) <= cu[:, None, None]  # [N, li, lj]
    ok = fit2 & ~jnp.eye(L, dtype=bool)[None] & (cd > _NEG)[:, :, None] & (ba > _NEG)[:, None, :]
    pair = jnp.where(ok, cd[:, :, None] + ba[:, None, :], _NEG)
    return pair, cd_e, ba_e


def _propose(x, F, I, su, cu):
    """The best move under the tables: x after it, its estimated gain and the two layers it touches."""
    N, L, E = x.shape
    add, drop, sg, qg = F[..., :E], F[..., E : 2 * E], F[..., 2 * E], F[..., 2 * E + 1]
    si, sj, qa, qb = I[..., 0], I[..., 1], I[..., 2], I[..., 3]
    used = jnp.einsum("nle,l->n", x.astype(jnp.int32), su)
    # adds that fit
    fits = (used[:, None] + su[None, :]) <= cu[:, None]  # [N, L]
    add_s = jnp.where(~x & fits[:, :, None], add, _NEG)
    a_flat = jnp.argmax(add_s.reshape(-1))
    an, al, ae = jnp.unravel_index(a_flat, (N, L, E))
    # same-layer swaps (size-neutral)
    s_flat = jnp.argmax(sg.reshape(-1))
    sn, sl = jnp.unravel_index(s_flat, (N, L))
    # cross-layer swaps: the cheapest drop of layer li and the best add of layer lj on one
    # node (exact: J separates per layer)
    pair, cd_e, ba_e = _cross_layer_swaps(x, add, drop, used, su, cu)
    p_flat = jnp.argmax(pair.reshape(-1))
    pn, pli, plj = jnp.unravel_index(p_flat, (N, L, L))
    # pair adds inside one layer (co-activated experts whose single gains are 0)
    qg = jnp.where(((used[:, None] + 2 * su[None, :]) <= cu[:, None]), qg, _NEG)  # [N, L]
    q_flat = jnp.argmax(qg.reshape(-1))
    qn, ql = jnp.unravel_index(q_flat, (N, L))
    # the four moves as (gain, node, layer 1, expert 1, value 1, layer 2, expert 2, value 2)
    gains = jnp.stack([add_s.reshape(-1)[a_flat], sg.reshape(-1)[s_flat], pair.reshape(-1)[p_flat],
                       qg.reshape(-1)[q_flat]])
    i32 = lambda *v: jnp.stack([jnp.asarray(a, jnp.int32) for a in v])  # noqa: E731
    node = i32(an, sn, pn, qn)
    l1 = i32(al, sl, pli, ql)
    e1 = i32(ae, si[sn, sl], cd_e[pn, pli], qa[qn, ql])
    l2 = i32(al, sl, plj, ql)
    e2 = i32(ae, sj[sn, sl], ba_e[pn, plj], qb[qn, ql])
    v1 = jnp.array([True, False, False, True])
    which = jnp.argmax(gains)
    n = node[which]
    x_new = x.at[n, l1[which], e1[which]].set(v1[which]).at[n, l2[which], e2[which]].set(True)
    return x_new, gains[which], l1[which], l2[which]


def polish_instance(
    inst: Instance,
    size_units: Int[ArrayLike, "L"],
    capacity_units: Int[ArrayLike, "N"],
    placement: Bool[Array, "N L E"],
    *,
    rounds: int,
    aggregation: str = "max",
    swap_candidates: int = 8,
) -> tuple[Bool[Array, "N L E"], Int[Array, ""]]:
    """Best-improvement add/swap local search on one instance (see the module docstring).

    Args:
      inst: one (unbatched) instance.
      size_units: int32 [L] expert size of each layer in grid units.
      capacity_units: int32 [N] node capacities in grid units.
      placement: bool [N, L, E] start (feasible on the grid, or at least in real units; moves
        never increase a node's grid usage beyond its capacity unless they keep it unchanged).
      rounds: maximum number of moves (static).
      aggregation: "max" or "sum" (static).
      swap_candidates: k of the same-layer swap neighbourhood (static; 0 disables those swaps).

    Returns:
      (placement bool [N, L, E], moves int32 []) — J never increases.
    """
    N, L, E = placement.shape
    x0 = jnp.asarray(placement, bool)
    if rounds == 0:
        return x0, jnp.int32(0)
    k = int(min(E, swap_candidates))
    su = jnp.asarray(size_units, jnp.int32)
    cu = jnp.asarray(capacity_units, jnp.int32)
    lat, fb, pat, w, tr = inst.latency, inst.fallback, inst.patterns, inst.weight, inst.traffic
    freq = expert_frequency(pat, w, E, distinct=False) if aggregation == "sum" else jnp.zeros(fb.shape, fb.dtype)

    layer_eval = partial(_layer_eval, lat, fb, pat, w, tr, freq, aggregation, k)

    # One loop, one copy of the layer evaluation: the first ``n_init`` trips fill the tables two
    # layers at a time, every later trip proposes the best move and re-evaluates the two layers
    # it touches; the search stops at the first move that does not improve J.
    P = min(L, 2)
    n_init = -(-L // P)
    init_ls = jnp.minimum(jnp.arange(n_init * P, dtype=jnp.int32).reshape(n_init, P), L - 1)

    def cond(c):
        i, _, _, _, _, moves, go = c
        return (i < n_init) | (go & (moves < rounds))

    def body(c):
        i, x, J_l, F, I, moves, _ = c
        filling = i < n_init
        J = J_l.sum()
        x_new, g, l1, l2 = _propose(x, F, I, su, cu)
        ls = jnp.where(filling, init_ls[jnp.minimum(i, n_init - 1)], jnp.stack([l1, l2])[:P])
        x_eval = jnp.where(filling, x, x_new)
        J2, F2, I2 = jax.vmap(layer_eval, in_axes=(None, 0))(x_eval, ls)
        J_l = J_l.at[ls].set(J2)
        F = F.at[:, ls].set(jnp.moveaxis(F2, 0, 1))
        I = I.at[:, ls].set(jnp.moveaxis(I2, 0, 1))
        tol = _tolerance(J)
        take = ~filling & (g > tol) & (J_l.sum() < J - tol)
        # A move that is not taken ends the search, so the tables it left behind are never read.
        x = jnp.where(take, x_new, x)
        return i + 1, x, J_l, F, I, moves + take.astype(jnp.int32), filling | take

    dt = fb.dtype
    init = (jnp.int32(0), x0, jnp.zeros((L,), dt), jnp.zeros((N, L, 2 * E + 2), dt),
            jnp.zeros((N, L, 4), jnp.int32), jnp.int32(0), jnp.bool_(True))
    _, x, _, _, _, moves, _ = jax.lax.while_loop(cond, body, init)
    return x, moves


@partial(jax.jit, static_argnames=("rounds", "aggregation", "swap_candidates"))
def polish_batch(
    batch: Instance,
    size_units: Int[Array, "B L"],
    capacity_units: Int[Array, "B N"],
    placement: Bool[Array, "B N L E"],
    *,
    rounds: int,
    aggregation: str = "max",
    swap_candidates: int = 8,
):
    """:func:`polish_instance` vmapped over a batch and jitted. Returns (placement, moves [B])."""

    def f(i, s, c, p):
        return polish_instance(i, s, c, p, rounds=rounds, aggregation=aggregation, swap_candidates=swap_candidates)

    return jax.vmap(f)(batch, size_units, capacity_units, placement)


def _polish_bytes(shape: tuple, swap_candidates: int) -> float:
    U, N, L, E, M, K = shape
    k = min(E, int(swap_candidates))
    per_layer_swap = U * M * N * k * k * 3
    return 4.0 * (16 * (U * N * L * E + U * L * M * K) + min(L, 16) * per_layer_swap * 4 + N * L * L * 4)


@document_options
@dataclasses.dataclass(frozen=True)
class Polish(Solver):
    """Best-improvement local search with add, swap and pair-add moves (see the module docstring).

    Starts from the placement of the previous stage of a :func:`~slimjax.solvers.chain` (or from
    nothing when used alone) and never increases J. Cost per round: O(U·M·K²·N + N·E²) per layer
    for E <= 32 (complete same-layer swaps), O(U·M·N·k²) per layer above.
    """

    name: ClassVar[str] = "polish"
    refines: ClassVar[bool] = True
    rounds: int = option(64, "maximum number of improving moves (int >= 0); the search stops earlier at a local optimum")
    swap_candidates: int = option(8, "for E > 32: cheapest drops x best adds evaluated per (node, layer) (int >= 1)")

    def validate(self) -> None:
        check_int("rounds", self.rounds, 0)
        check_int("swap_candidates", self.swap_candidates, 1)

    def chunk(self, static, shared, batch, size_units, capacity_units, per_instance, keys, start):
        B = batch.latency.shape[0]
        N, L, E = batch.latency.shape[-3:]
        if start is None:
            start = jnp.zeros((B, N, L, E), bool)
        x, moves = polish_batch(batch, size_units, capacity_units, start, rounds=int(self.rounds),
                                aggregation=static, swap_candidates=int(self.swap_candidates))
        return x, {"moves": moves}

    def bytes_per_instance(self, shape, static) -> float:
        return _polish_bytes(shape, self.swap_candidates)
