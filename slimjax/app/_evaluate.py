"""Result rows: one per instance x solver, with the config fields, gaps and replayed percentiles.

``gap_opt``/``gain_frac_opt`` are filled only against a *proven* optimum (an exact solver with
status ``optimal``); ``gap_lb`` = J / best lower bound − 1 is a certified gap wherever a bound
exists. Lower bounds come from the exact solvers that ran (HiGHS's dual bound, brute force's
optimum) and :func:`slimjax.lower_bound` (``bound.method``); :func:`reference` is the one place to
add another source of bounds.

``gap_lb`` is computed in float64 throughout, as :func:`slimjax.certify` does: its J is
:func:`slimjax.bounds.objective64` of the row's placement (the ``J`` column is the solver's own
evaluation, float32 unless ``precision=float64``, which can lie a rounding below the float64 value
and so below a tight float64 bound: the gap came out as -1e-7), and a proven optimum counts as a
bound with that float64 J too. ``lower_bound`` is capped at the smallest float64 J of the run's
valid placements of the instance (no lower bound can exceed a feasible J: the cap removes the
rounding of bounds taken from float32 values, see :func:`_cap`). So ``gap_lb >= 0`` on every row
of a solver of J. Solvers with ``load=True`` report J_load (their ``J`` column), and their
``gap_lb`` is J_load / bound − 1.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from slimjax.app._config import plain

__all__ = ["config_columns", "evaluate", "reference"]

#: the first columns of every results table, in this order
LEAD = ["name", "solver", "instance", "J", "total", "gap_best"]


def _flat(prefix: str, node: Any) -> dict:
    out = {}
    node = plain(node)
    if isinstance(node, dict):
        for k, v in node.items():
            out.update(_flat(f"{prefix}.{k}" if prefix else str(k), v))
    elif isinstance(node, (list, tuple)):
        out[prefix] = json.dumps(node)
    else:
        out[prefix] = node
    return out


def config_columns(cfg: DictConfig, shape: tuple) -> dict:
    """The config fields written on every result row."""
    U, N, L, E, M, K = shape
    path = OmegaConf.select(cfg, "instance.path")
    cols = {
        "name": cfg.get("name"),
        "seed": int(cfg.seed),
        "batch_size": int(cfg.batch_size) if path is None else None,
        "precision": cfg.precision,
        "model": OmegaConf.select(cfg, "model.name") if path is None else None,
        "network": OmegaConf.select(cfg, "network.name") if path is None else None,
        "routing": (OmegaConf.select(cfg, "routing.kind") or OmegaConf.select(cfg, "routing.name"))
        if path is None else "file",
        "aggregation": OmegaConf.select(cfg, "solve_options.aggregation"),
        "U": U, "N": N, "L": L, "E": E, "M": M, "K": K,
    }
    if path is not None:  # a user's saved instances: the generator's settings do not apply
        cols["instance.path"] = str(path)
        return cols
    for group in ("model", "network", "routing"):
        for k, v in _flat(group, cfg.get(group)).items():
            if k.endswith(".name") or k == "routing.kind":
                continue
            cols[k] = v
    return cols


def _scalar_info(info: dict, B: int) -> dict:
    out = {}
    for k, v in info.items():
        a = np.asarray(v)
        if a.shape != (B,):
            continue
        if a.dtype.kind in "biuf":
            out[f"info.{k}"] = a.astype(np.float64) if a.dtype.kind == "f" else a
        elif a.dtype.kind in "USO":
            out[f"info.{k}"] = a.astype(str)
    return out


def placement_objectives(batch, sols: dict, aggregation: str) -> dict:
    """``{name: float64 [B]}``: :func:`slimjax.bounds.objective64` of every solver's placement
    (what :func:`slimjax.certify` certifies); NaN where the solver failed."""
    from slimjax.bounds import objective64

    out = {}
    for name, sol in sols.items():
        J64 = np.asarray(objective64(batch, np.asarray(sol.placement), aggregation), np.float64)
        out[name] = np.where(np.asarray(sol.ok) & np.isfinite(np.asarray(sol.objective, np.float64)), J64, np.nan)
    return out


def reference(batch, sols: dict, objs: dict, j64: dict | None = None) -> dict:
    """Per instance: the proven optimum (NaN where none), the best lower bound, the reference's status.

    A solver's J counts as the optimum only where its status is ``OPTIMAL`` and it is exact by
    construction (``Solver.exact``: brute force, or HiGHS when it proved optimality); a time-limited
    MILP is never the optimum. Lower bounds: every exact solver's ``info["bound"]`` (HiGHS's dual
    bound; brute force's optimum) and every proven optimum. (A bound computed without an exact
    solver, e.g. an LP relaxation, would be combined here with ``np.fmax`` into ``lower_bound``.)
    With ``j64`` (:func:`placement_objectives`), a proven optimum enters the lower bound as the
    float64 J of its placement rather than the solver's float32 J.
    """
    from slimjax.solvers import Status

    B = batch.batch_shape[0]
    opt = np.full(B, np.nan)
    lb = np.full(B, -np.inf)
    status = np.full(B, "none", dtype=object)
    for name, sol in sols.items():
        if not getattr(objs.get(name), "exact", False):
            continue
        st = np.asarray(sol.status)
        proven = (st == Status.OPTIMAL) & np.isfinite(sol.objective)
        opt = np.where(np.isnan(opt) & proven, np.asarray(sol.objective, np.float64), opt)
        bound = np.asarray(sol.info.get("bound", np.full(B, -np.inf)), np.float64)
        lb = np.fmax(lb, np.where(np.isfinite(bound), bound, -np.inf))
        best = j64[name] if j64 is not None and name in j64 else np.asarray(sol.objective, np.float64)
        lb = np.where(proven & np.isfinite(best), np.fmax(lb, best), lb)
        fresh = status == "none"
        status = np.where(fresh, np.asarray(sol.status_names, dtype=object), status)
    return {"J_opt": opt, "lower_bound": np.where(np.isfinite(lb), lb, np.nan), "ref_status": status.astype(str)}


def certified_bound(cfg: DictConfig, batch) -> dict | None:
    """``slimjax.lower_bound`` of every instance (``cfg.bound``), or None when ``bound.method`` is null.

    Returns ``{"lower": float64 [B], "status": str [B], "seconds": float, "compile_seconds": float}``;
    a method that does not apply to these instances warns and returns None (no column is faked).
    """
    method = OmegaConf.select(cfg, "bound.method")
    if method in (None, "null", "none"):
        return None
    import warnings

    import slimjax

    agg = OmegaConf.select(cfg, "solve_options.aggregation") or "max"
    limit = OmegaConf.select(cfg, "bound.time_limit")
    try:
        b = slimjax.lower_bound(batch, str(method), aggregation=agg, time_limit=None if limit is None else float(limit))
    except (ValueError, ImportError) as err:
        warnings.warn(f"bound.method={method}: no certified bound for these instances ({err})", stacklevel=2)
        return None
    B = batch.batch_shape[0]
    return {"lower": np.broadcast_to(np.asarray(b.value, np.float64), (B,)),
            "status": np.broadcast_to(np.asarray(b.status_names).astype(str), (B,)),
            "seconds": float(b.seconds), "compile_seconds": float(getattr(b, "compile_seconds", 0.0))}


#: relative excess of a lower bound over a feasible float64 J that float32 rounding explains
_ROUNDING = 1e-6


def _cap(lower: np.ndarray, j64: dict, first: int) -> np.ndarray:
    """``lower`` capped at the smallest float64 J of the instance's valid placements.

    No lower bound can exceed the J of a feasible placement, so the cap keeps every bound valid.
    What it removes: float32 rounding of bounds taken from a solver's float32 J (brute force's
    optimum), and HiGHS's ``mip_rel_gap`` where an ``optimal`` incumbent counts as the optimum. A
    larger excess is logged (the job log), as it would also be the sign of a wrong bound.
    """
    with np.errstate(all="ignore"):
        Js = np.stack(list(j64.values()))
        best = np.where(np.isnan(Js).all(0), np.inf, np.nanmin(np.where(np.isnan(Js), np.inf, Js), 0))
        over = np.isfinite(lower) & (lower > best)
        large = over & (lower > best * (1 + _ROUNDING))
    if large.any():
        import logging

        i = int(np.flatnonzero(large)[0])
        logging.getLogger("slimjax").info(
            "lower_bound: %d instance(s) had a lower bound above the float64 J of a valid placement by more than "
            "float32 rounding (instance %d: bound %r > J %r); capped at that J", int(large.sum()), first + i,
            float(lower[i]), float(best[i]))
    return np.where(over, best, lower)


def _gain_frac(j_empty, J, j_ref):
    """Share of the reference's gain J(empty) - J(ref) that J achieves (1 when both gain nothing;
    NaN where J or the reference is missing)."""
    denom = j_empty - j_ref
    with np.errstate(invalid="ignore"):
        frac = np.where(denom > 1e-12 * np.maximum(j_empty, 1), (j_empty - J) / np.where(denom > 0, denom, 1.0), 1.0)
    return np.where(np.isnan(J) | np.isnan(j_ref), np.nan, frac)


def _replay(batch, placement, tokens, agg) -> tuple[dict, np.ndarray]:
    """p50/p95/p99 and mean of held-out tokens for every instance; the token latencies of the first one."""
    from slimjax._replay import replay, replay_stats

    st = replay_stats(batch, placement, tokens, aggregation=agg)  # batched, chunked to a memory budget
    p = {"p50": st["p50"], "p95": st["p95"], "p99": st["p99"], "replay_mean": st["mean"]}
    lat0 = np.asarray(replay(batch[0], placement[0], tokens, aggregation=agg), np.float64)  # the CDF figure
    return p, lat0


def evaluate(cfg: DictConfig, batch, sols: dict, extra: dict, objs: dict | None = None, *, first: int = 0,
             chunk: int = 0) -> tuple[pd.DataFrame, dict]:
    """Rows (instance x solver) of solved methods, and per-token latencies (for the CDF).

    Args:
      batch: the solved instances (rows ``first ..`` of the run).
      sols: ``{name: Solution}``; objs: ``{name: solver object}`` (for ``exact``).
      extra: ``{"tokens": ...}`` to replay held-out tokens (traces).
      first: the run's index of ``batch[0]`` (the ``instance`` column is the run's index).
      chunk: the chunk these rows belong to (the ``chunk`` column).
    """
    import jax.numpy as jnp

    import slimjax
    from slimjax.solvers import as_solver

    objs = objs or {n: as_solver(n) for n in sols}
    B = batch.batch_shape[0]
    agg = OmegaConf.select(cfg, "solve_options.aggregation") or "max"
    empty = jnp.zeros(batch.latency.shape[:1] + batch.latency.shape[2:], bool)  # [B, N, L, E]
    j_empty = np.asarray(slimjax.objective(batch, empty, agg), np.float64)
    Js = np.stack([np.asarray(s.objective, np.float64) for s in sols.values()])  # [S, B]
    with np.errstate(all="ignore"):  # NaN where every solver failed
        j_best = np.where(np.isnan(Js).all(0), np.nan, np.nanmin(np.where(np.isnan(Js), np.inf, Js), 0))
    has_ref = any(getattr(o, "exact", False) for o in objs.values())
    bound = certified_bound(cfg, batch)
    j64 = placement_objectives(batch, sols, agg) if has_ref or bound is not None else None
    ref = reference(batch, sols, objs, j64)
    lower = ref["lower_bound"]
    if bound is not None:  # the best of the exact solvers' bounds and slimjax.lower_bound's
        lower = np.fmax(lower, np.where(np.isfinite(bound["lower"]), bound["lower"], np.nan))
    if j64 is not None:
        lower = _cap(lower, j64, first)
    capacity = np.asarray(batch.capacity, np.float64).sum(-1)
    base = config_columns(cfg, batch.shape)
    frames = []
    token_lat: dict[str, np.ndarray] = {}
    tokens = extra.get("tokens")
    for name, sol in sols.items():
        J = np.asarray(sol.objective, np.float64)
        used = np.asarray(sol.used, np.float64).sum(-1)
        d = {
            "solver": name,
            "instance": np.arange(first, first + B, dtype=np.int64),
            "chunk": np.full(B, chunk, dtype=np.int64),
            "J": J,
            "total": np.asarray(sol.total, np.float64),
            "status": np.asarray(sol.status_names).astype(str),
            "J_empty": j_empty,
            "used": used,
            "used_frac": np.where(capacity > 0, used / np.maximum(capacity, 1e-300), 0.0),
            "cached": np.asarray(sol.placement).reshape(B, -1).sum(-1),
            "seconds": np.full(B, sol.seconds / B),
            "batch_seconds": np.full(B, sol.seconds),
            "compile_seconds": np.full(B, sol.compile_seconds),
            "gap_best": J / np.maximum(j_best, 1e-300) - 1.0,
            "gain_frac_best": _gain_frac(j_empty, J, j_best),
        }
        if has_ref:
            d["gap_opt"] = J / np.maximum(ref["J_opt"], 1e-300) - 1.0  # NaN without a proven optimum
            d["gain_frac_opt"] = np.where(np.isfinite(ref["J_opt"]), _gain_frac(j_empty, J, ref["J_opt"]), np.nan)
            d["ref_status"] = ref["ref_status"]
        if j64 is not None:  # float64 J of the placement (J_load as reported for load=True solvers)
            Jc = J if getattr(objs.get(name), "load_objective", False) else j64[name]
            with np.errstate(invalid="ignore"):
                d["gap_lb"] = np.where(lower > 0, Jc / np.where(lower > 0, lower, 1.0) - 1.0, np.nan)
            d["lower_bound"] = lower
        if bound is not None:
            d["bound_status"] = bound["status"]
            d["bound_seconds"] = np.full(B, bound["seconds"] / B)
            d["bound_compile_seconds"] = np.full(B, bound["compile_seconds"])
        if tokens is not None:
            stats, lat0 = _replay(batch, sol.placement, tokens, agg)
            d.update(stats)
            token_lat[name] = lat0
        d.update(_scalar_info(sol.info, B))
        df = pd.DataFrame(d)
        for k, v in base.items():
            df[k] = v
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df = df[[c for c in LEAD if c in df] + [c for c in df.columns if c not in LEAD]]
    return df, token_lat
