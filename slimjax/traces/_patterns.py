"""A trace's tokens as the weighted routing patterns of an instance (the empirical distribution)."""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import Float, Int

from slimjax.traces._trace import Trace, token_index

__all__ = ["patterns"]


def _selected(trace: Trace, tokens: Any, user: int | None) -> np.ndarray:
    ids = trace.expert_ids[token_index(tokens, trace.num_tokens)]
    if user is not None:
        if trace.user is None:
            raise ValueError("user: the trace has no per-token user ids")
        users = trace.user[token_index(tokens, trace.num_tokens)]
        ids = ids[users == user]
    return ids


def patterns(
    trace: Trace, tokens: Any = None, user: int | None = None, merge: bool = True
) -> tuple[Int[np.ndarray, "L M K"], Float[np.ndarray, "L M"]]:
    """Empirical routing distribution of the selected tokens as weighted patterns.

    Args:
      trace: the trace.
      tokens: which tokens (indices, bool mask [T] or slice; default all).
      user: keep only tokens of this user (needs ``trace.user``).
      merge: merge identical expert *sets* per layer (ids sorted; order does not matter for
        max or sum) into one pattern whose weight is their share; layers are padded to a common
        M with zero-weight patterns. Without merging, M = T and every weight is 1/T.

    Returns:
      ``(patterns int32 [L, M, K], weight float64 [L, M])``, each layer's weights summing to 1.
    """
    ids = _selected(trace, tokens, user)
    T, L, K = ids.shape
    if T == 0:
        raise ValueError("tokens: no tokens selected")
    if not merge:
        return np.ascontiguousarray(ids.transpose(1, 0, 2)).astype(np.int32), np.full((L, T), 1.0 / T)
    per_layer = []
    for l in range(L):  # host-side preprocessing, once per trace
        uniq, cnt = np.unique(np.sort(ids[:, l], axis=1), axis=0, return_counts=True)
        order = np.argsort(-cnt, kind="stable")  # most frequent first
        per_layer.append((uniq[order], cnt[order]))
    M = max(u.shape[0] for u, _ in per_layer)
    pats = np.zeros((L, M, K), np.int32)
    w = np.zeros((L, M), np.float64)
    for l, (u, c) in enumerate(per_layer):
        pats[l, : u.shape[0]] = u
        pats[l, u.shape[0] :] = u[0]  # padding repeats a real pattern (weight 0)
        w[l, : u.shape[0]] = c / T
    return pats, w
