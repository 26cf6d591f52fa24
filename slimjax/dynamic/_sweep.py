"""``sweep``: several policies and budgets over one batch of timelines, as flat result rows.

The shape an experiment runner or a dashboard wants: one row per (policy, budget, timeline,
window), columns as NumPy arrays of equal length, plus one summary row per (policy, budget,
timeline). Budgets are given as shares of each node's storage (``0.1`` = a tenth of the node's
capacity may move in per window; ``None`` = no limit).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from slimjax._instance import Instance
from slimjax.dynamic._policies import POLICIES
from slimjax.dynamic._run import DynamicResult, _as_batched, run
from slimjax.dynamic._timeline import Timeline

__all__ = ["result_rows", "sweep"]


def _share(b) -> float:
    if b is None:
        return float("inf")
    if isinstance(b, bool) or not isinstance(b, numbers.Real) or not (b >= 0):
        raise ValueError(f"budget_shares: every share must be None or a number >= 0 (inf = no limit), got {b!r}")
    return float(b)


def result_rows(result: DynamicResult, budget_share: float = float("inf")) -> dict[str, np.ndarray]:
    """One row per (timeline, window) of a :class:`DynamicResult`, as columns of NumPy arrays.

    Args:
      result: what :func:`run` returned.
      budget_share: the label of the ``budget_share`` column (inf = no budget).

    Returns:
      a dict of arrays of length B·T: ``policy`` (str), ``budget_share``, ``timeline``,
      ``window``, ``objective`` (J of x_t on window t's true routing), ``forecast_objective``,
      ``moved`` (storage moved into all nodes in the window), ``moved_max_node`` (the largest
      node's), ``loaded`` (storage the LRU loaded, re-loads included, in the unit of ``size``; 0 for other policies),
      ``copies`` (experts held over all nodes), ``p50``, ``p95``, ``p99`` (NaN without tokens),
      ``evaluated`` (False for window 0, the free initial deployment).
    """
    B, T = result.objective.shape
    nan = np.full((B, T), np.nan)
    cols = {
        "policy": np.full(B * T, result.policy, dtype=object),
        "budget_share": np.full(B * T, float(budget_share)),
        "timeline": np.repeat(np.arange(B), T),
        "window": np.tile(np.arange(T), B),
        "objective": result.objective,
        "forecast_objective": result.info["forecast_objective"],
        "moved": result.moved.sum(-1),
        "moved_max_node": result.moved.max(-1),
        "loaded": result.info["loaded"].sum(-1),
        "copies": result.placements.sum(axis=(2, 3, 4)),
        "p50": result.info.get("p50", nan),
        "p95": result.p95,
        "p99": result.info.get("p99", nan),
        "evaluated": np.tile(np.arange(T) >= 1, B),
    }
    return {k: (np.asarray(v).reshape(B * T) if np.ndim(v) == 2 else np.asarray(v)) for k, v in cols.items()}


def sweep(
    timelines: Timeline | Instance,
    policies: Sequence[str] = ("static", "incremental", "hindsight"),
    budget_shares: Sequence[float | None] = (0.1,),
    **run_options: Any,
) -> dict[str, Any]:
    """Run every policy at every budget over one batch of timelines; results as flat rows.

    Policies that do not use a budget (``static``, and ``hindsight``/``lru`` only with one) are
    run once per share anyway, so every (policy, share) pair has its rows; ``static`` moves
    nothing, so its rows repeat. Every run starts from the same ``x_0``.

    Args:
      timelines: a :class:`Timeline` ``[(B,) T, ...]`` (or an Instance with a window axis).
      policies: names from :data:`POLICIES`.
      budget_shares: budgets as shares of each node's storage per window; None = no limit.
      **run_options: passed to :func:`run` (``penalty``, ``forecast``, ``solver``, ``key``, ...);
        not ``budget`` (give shares).

    Returns:
      a dict: ``windows`` — columns of :func:`result_rows` for all runs concatenated (one row per
      policy, share, timeline and window); ``totals`` — one row per policy, share and timeline:
      ``policy``, ``budget_share``, ``timeline``, ``total`` (Σ J over windows 1..T-1),
      ``moved`` (total storage moved), ``gap_recovered`` (``(total_static − total) /
      (total_static − total_hindsight)`` at the same share, NaN where either is missing or the
      gap is 0), ``seconds``, ``compile_seconds``.

    Raises:
      ValueError: an unknown policy, a bad share, or ``budget`` among the options.

    Examples:
      >>> import jax
      >>> from slimjax import dynamic
      >>> tl = dynamic.drift(jax.random.key(0), 2, 4, model="mixtral_8x7b", network={"servers": 2})
      >>> out = dynamic.sweep(tl, ("static", "incremental"), (0.1,), solver="successive")
      >>> sorted(out), len(out["windows"]["objective"]), len(out["totals"]["total"])
      (['totals', 'windows'], 16, 4)
    """
    if "budget" in run_options:
        raise ValueError("budget: give budgets to sweep as budget_shares (shares of each node's storage)")
    if isinstance(policies, str) or not len(policies):
        raise ValueError(f"policies: must be a non-empty sequence of names from {POLICIES}, got {policies!r}")
    for p in policies:
        if p not in POLICIES:
            raise ValueError(f"policies: must be names from {POLICIES}, got {p!r}")
    if isinstance(budget_shares, (str, numbers.Number)) or budget_shares is None or not len(budget_shares):
        raise ValueError(f"budget_shares: must be a non-empty sequence of shares (None = no limit), got {budget_shares!r}")
    shares = [_share(b) for b in budget_shares]
    tl, _ = _as_batched(timelines)
    cap = np.asarray(tl.windows.capacity[:, 0], np.float64)  # [B, N]
    rows: list[dict] = []
    totals: dict[tuple[str, float], np.ndarray] = {}
    tot_rows: list[dict] = []
    for share in shares:
        for p in policies:
            r = run(tl, p, budget=None if np.isinf(share) else share * cap, **run_options)
            rows.append(result_rows(r, share))
            totals[(p, share)] = r.total
            B = r.objective.shape[0]
            tot_rows.append({"policy": np.full(B, p, dtype=object), "budget_share": np.full(B, share),
                             "timeline": np.arange(B), "total": r.total, "moved": r.total_moved,
                             "seconds": np.full(B, r.seconds), "compile_seconds": np.full(B, r.compile_seconds)})
    for t in tot_rows:
        key = (t["policy"][0], float(t["budget_share"][0]))
        st, hi = totals.get(("static", key[1])), totals.get(("hindsight", key[1]))
        if st is None or hi is None:
            t["gap_recovered"] = np.full(len(t["total"]), np.nan)
        else:
            gap = st - hi
            with np.errstate(divide="ignore", invalid="ignore"):
                t["gap_recovered"] = np.where(gap > 0, (st - t["total"]) / gap, np.nan)
    cat = lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return {"windows": cat(rows), "totals": cat(tot_rows)}
