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
from slimjax.dynamic._objects import POLICIES, Policy, as_policy
from slimjax.dynamic._run import DynamicResult, _as_batched, deploy, run
from slimjax.dynamic._timeline import Timeline

__all__ = ["result_rows", "sweep"]


def _share(b) -> float:
    if b is None:
        return float("inf")
    if isinstance(b, bool) or not isinstance(b, numbers.Real) or not (b >= 0):
        raise ValueError(f"budget_shares: every share must be None or a number >= 0 (inf = no limit), got {b!r}")
    return float(b)


def result_rows(result: DynamicResult, budget_share: float = float("inf"), label: str | None = None) -> dict[str, np.ndarray]:
    """One row per (timeline, window) of a :class:`DynamicResult`, as columns of NumPy arrays.

    Args:
      result: what :func:`run` returned.
      budget_share: the label of the ``budget_share`` column (inf = no budget).
      label: the ``policy`` column (default: the policy's name).

    Returns:
      a dict of arrays of length B·T: ``policy`` (str), ``budget_share``, ``timeline``,
      ``window``, ``objective`` (J of x_t on window t's true routing), ``forecast_objective``,
      ``token_objective`` (mean per-token latency of the replayed tokens), ``moved`` (storage moved
      into all nodes in the window), ``moved_max_node`` (the largest node's), ``loaded`` (storage
      loaded, re-loads included, in the unit of ``size``), ``hits`` and ``accesses`` (over all
      nodes), ``hit_rate`` (their ratio, NaN without accesses), ``copies`` (experts held over all
      nodes), ``p50``, ``p95``, ``p99`` (NaN without tokens), ``status`` (int, a
      :class:`~slimjax.dynamic.Status`), ``evaluated`` (False for window 0, the free initial
      deployment).
    """
    B, T = result.objective.shape
    hits, acc = result.hits.sum(-1), result.accesses.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(acc > 0, hits / np.where(acc > 0, acc, 1), np.nan)
    cols = {
        "policy": np.full(B * T, result.policy if label is None else label, dtype=object),
        "budget_share": np.full(B * T, float(budget_share)),
        "timeline": np.repeat(np.arange(B), T),
        "window": np.tile(np.arange(T), B),
        "objective": result.objective,
        "forecast_objective": result.forecast_objective,
        "token_objective": result.token_objective,
        "moved": result.moved.sum(-1),
        "moved_max_node": result.moved.max(-1),
        "loaded": result.loaded.sum(-1),
        "hits": hits,
        "accesses": acc,
        "hit_rate": rate,
        "copies": result.placements.sum(axis=(2, 3, 4)),
        "p50": result.p50,
        "p95": result.p95,
        "p99": result.p99,
        "status": np.repeat(result.status.astype(np.int64), T),
        "evaluated": np.tile(np.arange(T) >= 1, B),
    }
    return {k: (np.asarray(v).reshape(B * T) if np.ndim(v) == 2 else np.asarray(v)) for k, v in cols.items()}


def sweep(
    timelines: Timeline | Instance,
    policies: Sequence[Policy | str] = ("static", "incremental", "hindsight"),
    budget_shares: Sequence[float | None] = (0.1,),
    **run_options: Any,
) -> dict[str, Any]:
    """Run every policy at every budget over one batch of timelines; results as flat rows.

    A policy with a ``budget`` option is run once per share, with ``budget = share · capacity``
    of every node (replacing the object's budget); a policy without one (``static``, the
    per-token caches) is run once and its rows repeated for every share, so every (policy,
    share) pair has its rows. x_0 is solved once (:func:`deploy`) and shared by every run.

    Args:
      timelines: a :class:`Timeline` ``[(B,) T, ...]`` (or an Instance with a window axis).
      policies: policy objects or names from :data:`POLICIES` (a name takes the policy options
        among ``run_options``, as in :func:`run`); labels (:attr:`Policy.label`) must differ.
      budget_shares: budgets as shares of each node's storage per window; None = no limit.
      **run_options: passed to :func:`run` (``solver``, ``key``, ... and, for names, policy
        options such as ``penalty`` or ``forecast``); not ``budget`` (give shares).

    Returns:
      a dict: ``windows`` — columns of :func:`result_rows` for all runs concatenated (one row per
      policy, share, timeline and window; ``policy`` is the policy's label); ``totals`` — one row
      per policy, share and timeline: ``policy``, ``budget_share``, ``timeline``, ``total`` (Σ J
      over windows 1..T-1), ``moved`` (total storage moved), ``loaded``, ``hit_rate`` (over
      windows 1..T-1 and all nodes), ``gap_recovered`` (``(total_static − total) /
      (total_static − total_hindsight)`` at the same share, NaN where either is missing or the
      gap is 0), ``seconds``, ``compile_seconds``.

    Raises:
      ValueError: an unknown policy, a bad share, or ``budget`` among the options.

    Examples:
      >>> import jax
      >>> from slimjax import dynamic
      >>> tl = dynamic.drift(jax.random.key(0), 2, 4, model="mixtral_8x7b", network={"servers": 2})
      >>> out = dynamic.sweep(tl, ("static", dynamic.Incremental()), (0.1,), solver="successive")
      >>> sorted(out), len(out["windows"]["objective"]), len(out["totals"]["total"])
      (['totals', 'windows'], 16, 4)
    """
    if "budget" in run_options:
        raise ValueError("budget: give budgets to sweep as budget_shares (shares of each node's storage)")
    if isinstance(policies, (str, Policy)) or not len(policies):
        raise ValueError(f"policies: must be a non-empty sequence of policy objects or names from {POLICIES}, "
                         f"got {policies!r}")
    run_keys = {"solver", "devices", "sampled_tokens", "key", "capacity_unit", "aggregation"}
    policy_opts = {k: v for k, v in run_options.items() if k not in run_keys}
    run_kw = {k: v for k, v in run_options.items() if k in run_keys}
    objs = []
    if policy_opts and any(isinstance(p, Policy) for p in policies):
        raise ValueError(f"options: {sorted(policy_opts)} are policy options; with policy objects, set them on the objects")
    for p in policies:
        if not isinstance(p, (str, Policy)) or (isinstance(p, str) and p not in POLICIES):
            raise ValueError(f"policies: must be policy objects or names from {POLICIES}, got {p!r}")
        objs.append(as_policy(p, **policy_opts) if isinstance(p, str) else p)
    labels = [o.label for o in objs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"policies: two policies have one label {labels}; give them different options")
    if isinstance(budget_shares, (str, numbers.Number)) or budget_shares is None or not len(budget_shares):
        raise ValueError(f"budget_shares: must be a non-empty sequence of shares (None = no limit), got {budget_shares!r}")
    shares = [_share(b) for b in budget_shares]
    tl, _ = _as_batched(timelines)
    cap = np.asarray(tl.windows.capacity[:, 0], np.float64)  # [B, N]
    x0 = deploy(tl, **{k: v for k, v in run_kw.items() if k in ("solver", "capacity_unit", "aggregation")})
    rows: list[dict] = []
    totals: dict[tuple[str, float], np.ndarray] = {}
    tot_rows: list[dict] = []
    once: dict[str, DynamicResult] = {}
    for share in shares:
        for obj, label in zip(objs, labels):
            if hasattr(obj, "budget"):
                r = run(tl, obj.replace(budget=None if np.isinf(share) else share * cap), x0=x0, **run_kw)
            else:  # no budget: one run serves every share
                r = once.get(label) or run(tl, obj, x0=x0, **run_kw)
                once[label] = r
            rows.append(result_rows(r, share, label))
            totals[(obj.name, share)] = r.total
            B = r.objective.shape[0]
            tot_rows.append({"policy": np.full(B, label, dtype=object), "budget_share": np.full(B, share),
                             "timeline": np.arange(B), "total": r.total, "moved": r.total_moved,
                             "loaded": r.total_loaded, "hit_rate": _pooled_rate(r),
                             "seconds": np.full(B, r.seconds), "compile_seconds": np.full(B, r.compile_seconds),
                             "_name": obj.name})
    for t in tot_rows:
        share = float(t["budget_share"][0])
        st, hi = totals.get(("static", share)), totals.get(("hindsight", share))
        if st is None or hi is None:
            t["gap_recovered"] = np.full(len(t["total"]), np.nan)
        else:
            gap = st - hi
            with np.errstate(divide="ignore", invalid="ignore"):
                t["gap_recovered"] = np.where(gap > 0, (st - t["total"]) / gap, np.nan)
        del t["_name"]
    cat = lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}  # noqa: E731
    return {"windows": cat(rows), "totals": cat(tot_rows)}


def _pooled_rate(r: DynamicResult) -> np.ndarray:
    """float64 [B]: hits / accesses over windows 1..T-1 and every node (NaN without accesses)."""
    h, a = r.hits[:, 1:].sum(axis=(1, 2)), r.accesses[:, 1:].sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(a > 0, h / np.where(a > 0, a, 1), np.nan)
