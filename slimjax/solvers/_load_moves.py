"""Single-flip moves of the load-aware repair and polish, all of them scored at once.

A flip of copy ``(n, l, e)`` changes the assignment (:func:`slimjax.queueing.assignment`) of
expert (l, e) only, and only for some users:

* **removing** it moves the users whose fastest copy it was to their second-fastest holder (or
  the fallback);
* **adding** it moves the users for whom node n beats their current holder (lowest index on
  ties, as the assignment rule), provided it does not lose to the fallback.

So the utilisation change of every flip is exact and cheap: one segment sum over the moved users,
``drho [N, L, E, N]`` in O(U·N·L·E·N) for all flips together (experts of different (l, e) are
independent, so these changes also add up exactly). The change of J_load is estimated, also for
all flips at once:

* **direct**: the moved users' own expert times at the current waits, through the two slowest
  distinct members of each pattern (:func:`slimjax.ops.drop_loss_layer`: exact for a change of
  one member), O(U·N·L·M·K);
* **queue**: every node's wait ``service · r / (1 − r)`` at its new utilisation times the
  first-order weight of the experts it serves (the pattern weight of the slowest member).

The repair and the polish rank the flips by these and evaluate J_load exactly (a new assignment,
utilisation and J from scratch) only for the best :data:`EXACT` of them per step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from slimjax.ops import drop_loss_layer, pattern_top

__all__ = ["EXACT", "Moves", "moves", "removal_column", "removal_jloads", "wait_factor"]

#: flips evaluated exactly (J_load from scratch) per repair or polish step
EXACT = 8


class Moves(NamedTuple):
    """The single flips of a placement ``x`` [N, L, E]: ``drho[n, l, e, m]`` the exact change of
    node m's utilisation when copy (n, l, e) flips, ``dj[n, l, e]`` the estimated change of J_load."""

    rho: jax.Array  # [N] the utilisation of x itself
    drho: jax.Array  # [N, L, E, N]
    dj: jax.Array  # [N, L, E]


def wait_factor(rho, clip):
    """``r / (1 − r)`` with ``r = min(rho, clip)`` (finite for ``clip < 1``)."""
    r = jnp.minimum(rho, clip)
    return r / (1.0 - r)


def _state(lat, fb, x):
    """Fastest and second-fastest caching node of every (u, l, e), with the assignment rule."""
    N = lat.shape[1]
    masked = jnp.where(x[None], lat, jnp.inf)  # [U, N, L, E]
    b = masked.argmin(axis=1).astype(jnp.int32)  # lowest index on ties
    bt = masked.min(axis=1)
    a = jnp.where(bt <= fb, b, jnp.int32(N))
    is_b = jnp.arange(N)[None, :, None, None] == b[:, None]
    masked2 = jnp.where(is_b, jnp.inf, masked)
    b2 = masked2.argmin(axis=1).astype(jnp.int32)
    bt2 = masked2.min(axis=1)
    a2 = jnp.where(bt2 <= fb, b2, jnp.int32(N))
    return a, b, bt, a2, bt2


def removal_column(lat_c, fb_c, w_c, x_c):
    """The utilisation change [n, m] of removing copy n of one expert (l, e): ``lat_c`` [U, N] its
    latencies, ``fb_c`` [U] its fallback, ``w_c`` [U, N] the load it puts on each node
    (``rate · p · service``), ``x_c`` [N] its copies (rows of nodes without a copy: zero)."""
    N = lat_c.shape[1]
    dt = lat_c.dtype
    masked = jnp.where(x_c[None], lat_c, jnp.inf)  # [U, N]
    b = masked.argmin(axis=1)
    bt = masked.min(axis=1)
    a = jnp.where(bt <= fb_c, b, N)
    masked2 = jnp.where(jnp.arange(N)[None] == b[:, None], jnp.inf, masked)
    b2 = masked2.argmin(axis=1)
    a2 = jnp.where(masked2.min(axis=1) <= fb_c, b2, N)
    A = jax.nn.one_hot(a, N, dtype=dt)  # [U, N]; the fallback: zeros
    A2 = jax.nn.one_hot(a2, N, dtype=dt)
    rm = A.T @ (A2 * w_c) - jnp.diag((A * w_c).sum(0))
    return jnp.where(x_c[:, None], rm, 0.0)


def moves(lat, fb, service, rate, p, patterns, weight, traffic, x, clip, aggregation: str, adds: bool = True) -> Moves:
    """Every single flip of ``x`` [N, L, E] on one instance (arrays of that instance; ``p`` the
    activation probabilities [U, L, E]); waits at ``min(rho, clip)``. See the module docstring.
    ``adds=False``: removals only (the scores of the additions are then those of no move)."""
    U, N, L, E = lat.shape
    dt = lat.dtype
    a, b, bt, a2, bt2 = _state(lat, fb, x)
    ld = (rate[:, None, None] * p)[..., None] * jnp.moveaxis(service, 0, -1)[None]  # [U, L, E, N] load if served at m
    A = jax.nn.one_hot(a, N, dtype=dt)  # [U, L, E, N]; the fallback (a = N) is all zeros
    A2 = jax.nn.one_hot(a2, N, dtype=dt)
    Ald = A * ld
    rho = Ald.sum((0, 1, 2))
    # removal of (n, l, e): its users (a = n) go to a2 (the column function, as the repair updates one column)
    col = jax.vmap(jax.vmap(removal_column, in_axes=(2, 1, 2, 1), out_axes=1), in_axes=(2, 1, 2, 1), out_axes=1)
    rm = col(lat, fb, ld.transpose(0, 3, 1, 2), x)  # [N, L, E, N]
    latn = lat  # [U, N, L, E]
    if adds:
        # addition of (n, l, e): users for whom n beats their holder (ties to the lower index), not the fallback
        beats = (latn < bt[:, None]) | ((latn == bt[:, None]) & (jnp.arange(N)[None, :, None, None] < b[:, None]))
        mv = beats & (latn <= fb[:, None]) & ~x[None]  # [U, N, L, E]
        mvf = mv.astype(dt)
        gain = jnp.einsum("unle,ulen->nle", mvf, ld)
        add = gain[..., None] * jnp.eye(N, dtype=dt)[:, None, None, :] - jnp.einsum("unle,ulem->nlem", mvf, Ald)
        drho = jnp.where(x[..., None], rm, add)
    else:
        mv = jnp.zeros((), bool)
        drho = rm

    # estimated change of J_load: direct (the moved users' own times) + queue (the waits)
    f = wait_factor(rho, clip)  # [N]
    svc_f = service * f[:, None, None]  # [N, L, E] the wait of (l, e) at n
    wait_a = (A * jnp.moveaxis(svc_f, 0, -1)[None]).sum(-1)  # [U, L, E]
    wait_a2 = (A2 * jnp.moveaxis(svc_f, 0, -1)[None]).sum(-1)
    d = jnp.where(a < N, bt + wait_a, fb)  # loaded expert time now
    d2 = jnp.where(a2 < N, bt2 + wait_a2, fb)  # after losing the holder
    on_n = a[:, None] == jnp.arange(N)[None, :, None, None]  # [U, N, L, E]
    d_rm = jnp.where(on_n, d2[:, None], d[:, None])  # [U, N, L, E]
    d_new = jnp.where(x[None], d_rm, jnp.where(mv, latn + svc_f[None], d[:, None])) if adds else d_rm
    if aggregation == "max":
        def layer(d_l, dnew_l, pat_l, w_l):
            top_v, top_ids, dup = pattern_top(d_l, pat_l, 2)
            return drop_loss_layer(dnew_l, pat_l, top_v, top_ids, dup, w_l, traffic), top_ids[..., 0]

        direct, top1 = jax.vmap(layer, in_axes=(1, 2, 1, 1), out_axes=(1, 1))(d, d_new, patterns, weight)  # [N, L, E]
        # first-order weight of each expert: the pattern weight where it is the slowest member
        uu = jnp.arange(U)[:, None, None]
        ll = jnp.arange(L)[None, :, None]
        g = jnp.zeros((U, L, E), dt).at[uu, ll, top1].add(traffic[:, None, None] * weight)
    else:  # "sum": every member counts (repeats included)
        uu = jnp.arange(U)[:, None, None, None]
        ll = jnp.arange(L)[None, :, None, None]
        g = jnp.zeros((U, L, E), dt).at[uu, ll, patterns].add(jnp.broadcast_to((traffic[:, None, None] * weight)[..., None],
                                                                                   patterns.shape))
        direct = jnp.einsum("ule,unle->nle", g, d_new - d[:, None])
    G = jnp.einsum("ule,ulen,nle->n", g, A, service)  # weight of each node's wait
    fq = wait_factor(rho[None, None, None] + drho, clip)  # [N, L, E, N]
    queue = ((fq - f) * G).sum(-1)
    return Moves(rho=rho, drho=drho, dj=direct + queue)


def removal_jloads(lat, fb, service, patterns, weight, traffic, x, rho, drho, cands, clip, aggregation: str):
    """The clipped J_load (waits at ``min(rho, clip)``) after removing each copy ``cands`` [C]
    (flat indices into ``x`` [N, L, E], copies of ``x``) — exact, as J_load from scratch, for
    ``rho`` [N] the utilisation of ``x`` and ``drho`` [N, L, E, N] its removal changes (exact).

    The pattern members' holders, fastest and second-fastest, are gathered once for all
    candidates; a candidate then only re-weights the waits (``rho + drho[c]``) and moves the
    users of its own (l, e) whose holder it was to their second-fastest: O(U·L·M·K) elementwise
    per candidate, no assignment and no gather of its own."""
    U, N, L, E = lat.shape
    dt = lat.dtype
    a, _, bt, a2, bt2 = _state(lat, fb, x)
    svc = jnp.concatenate([service, jnp.zeros((1, L, E), dt)])  # [N + 1, L, E]; the fallback: no wait
    ll = jnp.arange(L)[None, :, None]
    ee = jnp.arange(E)[None, None, :]
    base = jnp.where(a < N, bt, fb)
    sv = svc[a, ll, ee]  # [U, L, E]
    base2 = jnp.where(a2 < N, bt2, fb)
    sv2 = svc[a2, ll, ee]

    def members(v):  # [U, L, E] -> [U, L, M, K]
        return jnp.take_along_axis(v[:, :, None, :], patterns, axis=-1)

    Bp, Sp, Np, B2p, S2p, N2p = (members(v) for v in (base, sv, a, base2, sv2, a2))
    wt = traffic[:, None, None] * weight  # [U, L, M]
    C = cands.shape[0]
    n, l, e = cands // (L * E), (cands // E) % L, cands % E
    F = jnp.concatenate([wait_factor(rho[None] + drho[n, l, e], clip), jnp.zeros((C, 1), dt)], axis=1)  # [C, N + 1]
    # the candidates last (contiguous): rows of the small wait table gathered by each member's holder
    Ft = F.T  # [N + 1, C]
    W, W2 = Ft[Np], Ft[N2p]  # [U, L, M, K, C]
    lay = jnp.arange(L)[None, :, None, None, None]
    moved = (patterns[..., None] == e) & (lay == l) & (Np[..., None] == n)
    d = jnp.where(moved, B2p[..., None] + S2p[..., None] * W2, Bp[..., None] + Sp[..., None] * W)
    pl = d.max(-2) if aggregation == "max" else d.sum(-2)  # [U, L, M, C]
    return (wt[..., None] * pl).sum((0, 1, 2))  # summed as J from scratch (an einsum rounds differently)
