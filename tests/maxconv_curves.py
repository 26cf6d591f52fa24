"""Layer-oracle curves of generated instances: the node problems the capacity DP really sees.

:func:`node_problems` replays the plain successive pass (fastest-first, no polish) on a batch
with the exact ``dense`` DP and records, for every node it visits, the layer-oracle curves
``g [L, E+1]``, the layer sizes ``s [L]`` (grid units) and the node capacity ``Q`` (grid units).
Used by ``tests/test_maxconv.py`` and by part c of ``scripts/bench.py`` to compare DP backends on
curves of real top-K routing (far from concave: a co-activated pair is worth far more than its two
halves), not only on synthetic ones.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from slimjax.ops._grid import bucket_units, capacity_grid
from slimjax.ops._maxconv import capacity_dp
from slimjax.ops._oracle import EXACT_MAX_E, exact_oracle, greedy_oracle, pattern_prep
from slimjax.ops._order import node_orders

__all__ = ["NodeProblems", "model_problems", "node_problems"]


class NodeProblems(NamedTuple):
    """P node problems: ``g`` float [P, L, E+1], ``s`` int32 [P, L], ``Q`` int32 [P], and ``Qmax``
    (a static DP table size >= every Q)."""

    g: np.ndarray
    s: np.ndarray
    Q: np.ndarray
    Qmax: int


def node_problems(batch, oracle: str = "auto") -> NodeProblems:
    """The node problems of the plain successive pass on ``batch`` (fastest-first, dense DP).

    Args:
      batch: a batched :class:`~slimjax.Instance` ``[B, ...]``.
      oracle: ``"exact"``, ``"greedy"`` or ``"auto"`` (exact when E <= 12).

    Returns:
      :class:`NodeProblems` with P = B·N problems (nodes in the order they were solved), zero
      capacity nodes included.
    """
    _, N, L, E, _, _ = batch.shape
    if oracle == "auto":
        oracle = "exact" if E <= 12 else "greedy"
    if oracle not in ("exact", "greedy") or (oracle == "exact" and E > EXACT_MAX_E):
        raise ValueError(f"oracle: must be 'exact' (E <= {EXACT_MAX_E}), 'greedy' or 'auto', got {oracle!r} with E={E}")
    grid = capacity_grid(batch)
    Qmax = bucket_units(grid.max_units)

    def one(inst, s, cap):
        cap = jnp.minimum(cap, Qmax)
        tw, dup = pattern_prep(inst.patterns, inst.weight, inst.traffic)
        order = node_orders(inst.latency, inst.traffic, cap)["fastest-first"]

        def body(d, n):
            newp = jnp.minimum(d, jnp.take(inst.latency, n, axis=1))
            if oracle == "exact":
                g, select = exact_oracle(d, newp, inst.patterns, tw, dup)
            else:
                g, select = greedy_oracle(d, newp, inst.patterns, tw, dup, steps=min(E, max(Qmax, 1)), limit=cap[n] // s)
            res = capacity_dp(g, s, cap[n], Qmax=Qmax)
            d = jnp.where(select(res.counts)[None], newp, d)
            return d, (g, cap[n])

        _, (gs, qs) = lax.scan(body, inst.fallback, order)
        return gs, qs

    s = jnp.asarray(grid.size_units, jnp.int32)
    gs, qs = jax.jit(jax.vmap(one))(batch, s, jnp.asarray(grid.capacity_units, jnp.int32))
    B = gs.shape[0]
    g = np.asarray(gs).reshape(B * N, L, E + 1)
    S = np.repeat(np.asarray(s), N, axis=0)
    return NodeProblems(g, S.astype(np.int32), np.asarray(qs).reshape(-1).astype(np.int32), int(Qmax))


def model_problems(model: str, batch: int, seed: int = 0, tokens: int | None = None, oracle: str = "auto") -> NodeProblems:
    """:func:`node_problems` of ``batch`` generated instances of a model preset (1 device + 4 servers).

    ``tokens`` (optional) sets the routing tokens per instance (the generator's default otherwise).
    """
    import slimjax

    routing = None if tokens is None else {"tokens": int(tokens)}
    b = slimjax.generate.instances(jax.random.key(seed), batch, model=model, routing=routing)
    return node_problems(b, oracle)
