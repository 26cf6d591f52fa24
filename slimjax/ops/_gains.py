"""Exact per-layer gain kernels of one instance ("max" aggregation unless noted).

Building blocks of local search (polish), greedy and the baselines: the slowest distinct members
of every pattern, the exact J decrease of adding an expert to a node, the exact J increase of
dropping one, the second-best holder of an expert, and activation frequencies. Shapes are those
of one layer of one instance: ``d_l [U, E]``, ``lat_l [U, N, E]``, ``pat_l [U, M, K]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from slimjax._kernels import repeated_member

__all__ = ["pattern_top", "scatter_e", "add_gain_layer", "drop_loss_layer", "second_best", "expert_frequency"]

_NEG = -jnp.inf


def pattern_top(d_l: Float[Array, "U E"], pat_l: Int[Array, "U M K"], k: int = 3):
    """The ``k`` slowest *distinct* members of every pattern.

    Returns:
      values float [U, M, k] (descending, ``-inf`` padding), ids int32 [U, M, k] (-1 padding),
      dup bool [U, M, K] (True where a position repeats an earlier id of its pattern).
    """
    K = pat_l.shape[-1]
    vals = jnp.take_along_axis(d_l[:, None, :], pat_l, axis=-1)  # [U, M, K]
    dup = repeated_member(pat_l)
    vals = jnp.where(dup, _NEG, vals)
    ids = pat_l
    if K < k:
        pad = k - K
        vals = jnp.concatenate([vals, jnp.full(vals.shape[:-1] + (pad,), _NEG, vals.dtype)], -1)
        ids = jnp.concatenate([ids, jnp.full(ids.shape[:-1] + (pad,), -1, ids.dtype)], -1)
    v, idx = jax.lax.top_k(vals, k)
    ids = jnp.take_along_axis(ids, idx, axis=-1)
    ids = jnp.where(v == _NEG, -1, ids).astype(jnp.int32)
    return v, ids, dup


def scatter_e(vals: Array, ids: Array, E: int) -> Array:
    """Sum ``vals [N, *S]`` into ``[N, E]`` by ids ``[*S]`` (ids < 0 are dropped)."""
    N = vals.shape[0]
    flat = vals.reshape(N, -1).T  # [S, N]
    idx = ids.reshape(-1)
    flat = jnp.where((idx >= 0)[:, None], flat, 0)
    return jax.ops.segment_sum(flat, jnp.maximum(idx, 0), num_segments=E).T  # [N, E]


def add_gain_layer(
    lat_l: Float[Array, "U N E"],
    d_l: Float[Array, "U E"],
    top_v: Float[Array, "U M k"],
    top_ids: Int[Array, "U M k"],
    w_l: Float[Array, "U M"],
    traffic: Float[Array, "U"],
) -> Float[Array, "N E"]:
    """Exact decrease of the layer's J ("max") from caching expert e on node n, for all (n, e)."""
    E = d_l.shape[-1]
    new = jnp.minimum(d_l[:, None, :], lat_l)  # [U, N, E]
    id1 = top_ids[..., 0]  # [U, M] (always a real id)
    newval = jnp.take_along_axis(new, jnp.broadcast_to(id1[:, None, :], (new.shape[0], new.shape[1], id1.shape[1])), axis=-1)
    after = jnp.maximum(top_v[..., 1][:, None, :], newval)  # [U, N, M]
    g = (traffic[:, None] * w_l)[:, None, :] * (top_v[..., 0][:, None, :] - after)  # [U, N, M]
    g = jnp.moveaxis(g, 1, 0)  # [N, U, M]
    return scatter_e(g, id1, E)


def drop_loss_layer(
    d_drop_l: Float[Array, "U N E"],
    pat_l: Int[Array, "U M K"],
    top_v: Float[Array, "U M k"],
    top_ids: Int[Array, "U M k"],
    dup: Bool[Array, "U M K"],
    w_l: Float[Array, "U M"],
    traffic: Float[Array, "U"],
) -> Float[Array, "N E"]:
    """Exact increase of the layer's J ("max") from removing (n, e) (0 where it is not cached)."""
    U, N, E = d_drop_l.shape
    M, K = pat_l.shape[1:]
    idx = jnp.broadcast_to(pat_l.reshape(U, 1, M * K), (U, N, M * K))
    dropped = jnp.take_along_axis(d_drop_l, idx, axis=-1).reshape(U, N, M, K)
    rest = jnp.where(pat_l == top_ids[..., :1], top_v[..., 1:2], top_v[..., 0:1])  # [U, M, K]
    after = jnp.maximum(rest[:, None], dropped)  # [U, N, M, K]
    loss = (traffic[:, None] * w_l)[:, None, :, None] * (after - top_v[..., 0][:, None, :, None])
    loss = jnp.where(dup[:, None], 0.0, loss)
    return scatter_e(jnp.moveaxis(loss, 1, 0), pat_l, E)


def second_best(
    lat_l: Float[Array, "U N E"], fb_l: Float[Array, "U E"], x_l: Bool[ArrayLike, "N E"]
) -> Float[Array, "U N E"]:
    """Expert latency after removing node n's copy: ``d_drop[u, n, e]``."""
    N = lat_l.shape[1]
    masked = jnp.where(x_l[None], lat_l, jnp.inf)
    b = jnp.argmin(masked, axis=1)  # [U, E]
    m1 = masked.min(axis=1)
    is_b = jnp.arange(N)[None, :, None] == b[:, None, :]
    m2 = jnp.where(is_b, jnp.inf, masked).min(axis=1)
    return jnp.minimum(fb_l[:, None, :], jnp.where(is_b, m2[:, None, :], m1[:, None, :]))


def expert_frequency(patterns: Int[Array, "U L M K"], weight: Float[Array, "U L M"], E: int, distinct: bool) -> Array:
    """Σ_m weight · (number of times e is in pattern m) per [U, L, E] (``distinct``: count once)."""
    cnt = jax.nn.one_hot(patterns, E, dtype=weight.dtype)  # [U, L, M, K, E]
    c = cnt.max(-2) if distinct else cnt.sum(-2)
    return jnp.einsum("ulm,ulme->ule", weight, c)
