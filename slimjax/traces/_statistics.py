"""Routing statistics of a trace, used to calibrate the routing generators against real traces."""

from __future__ import annotations

import numpy as np
from jaxtyping import Int

from slimjax.traces._counts import sample_from_counts
from slimjax.traces._trace import Trace

__all__ = ["statistics"]


def statistics(expert_ids: Trace | Int[np.ndarray, "T L K"], num_experts: int | None = None) -> dict[str, float]:
    """Routing statistics of a trace (means over layers).

    Returns:
      ``freq_cv``: coefficient of variation of the experts' activation frequencies;
      ``top10_share``: share of activations taken by the 10% most used experts;
      ``entropy``: entropy of the activation frequencies / log E (1 = uniform);
      ``distinct_share``: distinct expert sets / tokens;
      ``pair_top10_share``: share of co-activated pairs (K >= 2) falling on the 10% most frequent
        pairs among the E(E-1)/2 possible (NaN when K = 1);
      ``pair_lift``: ``pair_top10_share`` divided by the same statistic of tokens sampled
        independently from the same marginals (Plackett–Luce) — 1 means no co-activation beyond
        popularity, > 1 means structured co-activation.
    """
    if isinstance(expert_ids, Trace):
        E = expert_ids.num_experts if num_experts is None else num_experts
        ids = expert_ids.expert_ids
    else:
        ids = np.asarray(expert_ids)
        E = int(ids.max()) + 1 if num_experts is None else num_experts
    T, L, K = ids.shape
    counts = np.zeros((L, E))
    np.add.at(counts, (np.broadcast_to(np.arange(L)[None, :, None], ids.shape), ids), 1.0)
    f = counts / counts.sum(-1, keepdims=True)
    cv = f.std(-1) / f.mean(-1)
    top = max(1, int(round(0.1 * E)))
    top_share = np.sort(f, -1)[:, ::-1][:, :top].sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(f > 0, f * np.log(f), 0.0), -1) / np.log(E)
    distinct = np.mean([np.unique(np.sort(ids[:, l], 1), axis=0).shape[0] / T for l in range(L)])
    out = {
        "freq_cv": float(cv.mean()),
        "top10_share": float(top_share.mean()),
        "entropy": float(ent.mean()),
        "distinct_share": float(distinct),
        "pair_top10_share": float("nan"),
        "pair_lift": float("nan"),
    }
    if K >= 2:
        share = _pair_top_share(ids, E)
        base_ids = sample_from_counts(np.maximum(counts, 0), K, T, seed=12345, calibrate=True) if T else ids
        base = _pair_top_share(base_ids, E)
        out["pair_top10_share"] = float(share.mean())
        out["pair_lift"] = float((share / np.maximum(base, 1e-12)).mean())
    return out


def _pair_top_share(ids: np.ndarray, E: int) -> np.ndarray:
    """Per layer: share of within-token expert pairs that fall on the top 10% of possible pairs."""
    T, L, K = ids.shape
    s = np.sort(ids, -1)
    a, b = np.triu_indices(K, 1)
    lo, hi = s[..., a], s[..., b]  # [T, L, P]
    valid = lo != hi
    code = lo * E + hi
    n_pairs = E * (E - 1) // 2
    top = max(1, int(round(0.1 * n_pairs)))
    res = np.zeros(L)
    for l in range(L):
        c = np.bincount(code[:, l][valid[:, l]], minlength=E * E).astype(np.float64)
        tot = c.sum()
        res[l] = np.sort(c)[::-1][:top].sum() / tot if tot else np.nan
    return res
