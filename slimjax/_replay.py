"""Trace replay (DESIGN §4.2): every token's latency under a placement, and its percentiles.

A token's latency is Σ_l max_k d[user, l, expert_ids[t, l, k]] (or Σ_k with aggregation="sum").
The mean over the tokens equals :func:`slimjax.latency` of the instance whose patterns are those
tokens (each with weight 1/T).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from slimjax._instance import Instance
from slimjax._objective import expert_latency_from, _check_aggregation
__all__ = ["replay", "replay_stats", "token_latency"]


@partial(jax.jit, static_argnames=("aggregation",))
def token_latency(d: Float[Array, "L E"], expert_ids: Int[Array, "T L K"], aggregation: str = "max") -> Float[Array, "T"]:
    """Per-token latency [T] from expert latencies d [L, E] of one user."""
    L = d.shape[0]
    member = d[jnp.arange(L)[None, :, None], expert_ids]  # [T, L, K]
    per_layer = member.max(-1) if aggregation == "max" else member.sum(-1)
    return per_layer.sum(-1)


def replay(
    inst: Instance,
    placement: Bool[Array, "N L E"],
    expert_ids: Int[Array, "T L K"],
    *,
    user: int = 0,
    aggregation: str = "max",
    include_base: bool = False,
    chunk: int = 65536,
) -> Float[Array, "T"]:
    """Replay one user's tokens through a placement; returns each token's latency [T].

    Args:
      inst: a single (unbatched) instance.
      placement: bool [N, L, E].
      expert_ids: int [T, L, K] chosen experts of each token at each MoE layer (any K' ≤ E works).
      user: which user of a multi-user instance the tokens belong to.
      aggregation: "max" or "sum", as in :func:`slimjax.latency`.
      include_base: add that user's non-expert ``base`` latency.
      chunk: tokens per device call (long traces are replayed in chunks of this many tokens).
    """
    _check_aggregation(aggregation)
    if inst.latency.ndim != 4:
        raise ValueError("inst: replay takes a single instance, not a batch")
    U, N, L, E, M, K = inst.shape
    if not 0 <= user < U:
        raise ValueError(f"user: must be in [0, U={U}), got {user}")
    ids = np.asarray(expert_ids)
    if ids.ndim != 3 or ids.shape[1] != L:
        raise ValueError(f"expert_ids: expected shape [T, L={L}, K], got {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= E):
        bad = np.argwhere((ids < 0) | (ids >= E))[0]
        raise ValueError(f"expert_ids: ids must be in [0, E={E}), got {ids[tuple(bad)]} at index {tuple(bad)}")
    placement = jnp.asarray(placement)
    if placement.shape != (N, L, E):
        raise ValueError(f"placement: expected shape [N, L, E] = {(N, L, E)}, got {placement.shape}")
    d = expert_latency_from(inst.latency, inst.fallback, placement)[user]
    T = ids.shape[0]
    out = []
    for start in range(0, T, chunk):
        part = ids[start : start + chunk]
        pad = chunk - part.shape[0] if T > chunk else 0
        if pad:  # fixed chunk shape: one compile for a long trace
            part = np.concatenate([part, np.zeros((pad,) + part.shape[1:], part.dtype)])
        res = token_latency(d, jnp.asarray(part, jnp.int32), aggregation)
        out.append(res[: res.shape[0] - pad] if pad else res)
    lat = jnp.concatenate(out) if out else jnp.zeros((0,), d.dtype)
    if include_base:
        lat = lat + inst.base[user]
    return lat


def replay_stats(token_lat, percentiles=(50, 95, 99)) -> dict[str, float]:
    """Mean and percentiles of per-token latencies: ``{"mean", "p50", "p95", "p99"}``."""
    a = np.asarray(token_lat, dtype=np.float64)
    if a.size == 0:
        raise ValueError("token_lat: empty; no tokens were replayed")
    out = {"mean": float(a.mean())}
    for p in percentiles:
        out[f"p{p:g}"] = float(np.percentile(a, p))
    return out
