"""The experiment app: a pure ``run(cfg) -> dict`` behind the ``slimjax`` command.

``run`` takes a composed Hydra config (``conf/config.yaml``), generates a batch of instances,
solves it with every method in ``cfg.solvers`` (:func:`slimjax.solve_batch`), evaluates them and
writes to the run directory:

- ``results.parquet``: one row per instance x solver (config fields, ``J``, ``total``, storage
  ``used``, ``seconds`` per instance, ``gap_best`` to the best method on that instance,
  ``gap_opt`` to ``milp`` when it ran, ``p50``/``p95``/``p99`` of replayed tokens for traces);
- ``summary.csv`` and a printed table: mean J with a 95% interval per solver, relative to the best;
- figures (:mod:`slimjax.plots`), ``config.yaml`` (resolved) and a completion marker
  ``.complete.json``. Files are written to a temporary name and renamed, so an interrupted run
  never looks complete; with ``resume=true`` a directory whose marker matches the config is
  skipped (a re-run multirun recomputes only its missing grid points).

:func:`collect` merges the runs of a multirun directory (``slimjax-collect``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "MARKER",
    "RESULTS",
    "CollectCallback",
    "collect",
    "config_hash",
    "is_complete",
    "make_batch",
    "output_dir_for",
    "run",
    "solver_options",
    "summarize",
]

log = logging.getLogger("slimjax")

RESULTS = "results.parquet"
SUMMARY = "summary.csv"
MARKER = ".complete.json"
MERGED = "results_all.parquet"
#: Config keys that do not change results (excluded from the completion hash).
_HASH_EXCLUDE = ("resume", "paths", "output", "collect", "hydra")


# ---------------------------------------------------------------------------------------------
# small helpers


def _to_container(cfg: Any) -> Any:
    if isinstance(cfg, (DictConfig,)) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def config_hash(cfg: DictConfig) -> str:
    """A stable hash of the parts of the resolved config that change results."""
    d = {k: v for k, v in _to_container(cfg).items() if k not in _HASH_EXCLUDE}
    used = set()
    for m in d.get("solvers") or []:
        parts = str(m).split("+")
        used.update([parts[0]] + (["polish"] if "polish" in parts[1:] else []))
    d["solver"] = {k: v for k, v in (d.get("solver") or {}).items() if k in used}  # only the methods that run
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def output_dir_for(cfg: DictConfig) -> Path:
    """``cfg.paths.output_dir`` if set, else the Hydra run/job directory, else the cwd."""
    explicit = OmegaConf.select(cfg, "paths.output_dir")
    if explicit:
        return Path(str(explicit)).expanduser()
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # not inside a Hydra app (e.g. run(cfg) from Python)
        return Path.cwd()


def sweep_name() -> str | None:
    """The multirun directory's name when running inside a Hydra multirun job."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if str(hc.mode) == "RunMode.MULTIRUN":
            return Path(str(hc.sweep.dir)).name
    except Exception:
        pass
    return None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def is_complete(out_dir: Path | str, cfg: DictConfig | None = None) -> bool:
    """True when ``out_dir`` holds finished results (for ``cfg``'s hash when given)."""
    out_dir = Path(out_dir)
    marker = out_dir / MARKER
    if not marker.is_file() or not (out_dir / RESULTS).is_file():
        return False
    if cfg is None:
        return True
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("config_hash") == config_hash(cfg)


def set_precision(precision: str) -> None:
    """App-level dtype switch (never called by library code): float32 or float64."""
    import jax

    if precision not in ("float32", "float64"):
        raise ValueError(f"precision: must be float32 or float64, got {precision!r}")
    jax.config.update("jax_enable_x64", precision == "float64")


def enable_compilation_cache(path: str | None) -> None:
    """Turn on JAX's persistent compilation cache in ``path`` (None/empty: leave it off)."""
    if not path:
        return
    import jax

    path = os.path.expanduser(str(path))
    try:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except Exception as e:  # a read-only home must not stop the app
        log.warning("JAX compilation cache disabled (%s)", e)


# ---------------------------------------------------------------------------------------------
# instances


def _plain(node: Any) -> Any:
    return _to_container(node) if OmegaConf.is_config(node) else node


def make_batch(cfg: DictConfig, key) -> tuple[Any, dict]:
    """Generate the batch described by ``cfg.model``, ``cfg.network`` and ``cfg.routing``.

    Returns:
      ``(batch, extra)``: an :class:`~slimjax.Instance` with leading axis ``batch_size`` and a
      dict with ``"tokens"`` (held-out expert ids [T, L, K] to replay, for ``routing=trace``)
      and ``"trace"`` (a description of the trace) when a trace is used.
    """
    from slimjax import generate

    routing = _plain(cfg.routing)
    model = _plain(cfg.model)
    network = _plain(cfg.network)
    B = int(cfg.batch_size)
    if B < 1:
        raise ValueError(f"batch_size: must be >= 1, got {B}")
    if routing.get("kind") == "trace":
        network = {k: v for k, v in network.items() if k != "name"}
        return _trace_batch(key, B, model, network, routing)
    network = {k: v for k, v in network.items() if k != "name"}
    batch = generate.instances(key, B, model=model, network=network, routing=routing)
    return batch, {}


def _trace_batch(key, B: int, model: dict, network: dict, routing: dict) -> tuple[Any, dict]:
    """Instances whose patterns come from the training part of a real trace.

    Every instance has the same patterns (the trace's) and its own sampled network; the held-out
    tokens are returned for replay.
    """
    import jax

    from slimjax import generate, traces
    from slimjax._instance import stack
    path = routing.get("path")
    if not path:
        raise ValueError("routing.path: routing=trace needs a trace file (routing.path=/path/to/trace.npz)")
    path = os.path.expanduser(str(path))
    trace = traces.load(path, **dict(routing.get("load_options") or {}))
    train, test = traces.split(
        trace,
        float(routing.get("train_fraction", 0.5)),
        by=str(routing.get("split_by", "token")),
        seed=routing.get("split_seed", 0),
    )
    keys = jax.random.split(key, B)
    insts = [
        generate.instance_from_trace(
            train, model=model, network=network, key=keys[i], merge=bool(routing.get("merge", True))
        )
        for i in range(B)
    ]
    tokens = np.asarray(test.expert_ids)
    if insts[0].shape[0] > 1:  # several users: replay user 0's held-out tokens
        tokens = tokens[np.asarray(test.user) == 0] if test.user is not None else tokens
    return stack(insts), {"tokens": tokens, "trace": os.path.basename(path)}


# ---------------------------------------------------------------------------------------------
# solving


#: keys of ``solve_options`` that are keyword arguments of ``solve_batch`` (not solver options)
EXECUTION_KEYS = ("aggregation", "capacity_unit", "chunk_size", "memory_budget_mb", "progress", "merge_patterns")


def execution_options(cfg: DictConfig) -> dict:
    """``solve_options`` (the problem-level and execution keywords of ``solve_batch``)."""
    opts = dict(_plain(cfg.get("solve_options")) or {})
    unknown = set(opts) - set(EXECUTION_KEYS)
    if unknown:
        raise ValueError(f"solve_options: unknown key(s) {sorted(unknown)}; valid keys are {list(EXECUTION_KEYS)}")
    return opts


def make_solver(cfg: DictConfig, name: str):
    """The solver object of ``name`` (a name from ``slimjax.methods()`` or ``"A+B"``) with the
    options of ``solver.<name>`` (for ``"A+B"``: ``solver.A`` for stage A, ``solver.B`` for B)."""
    from slimjax.solvers import as_solver, chain

    table = _plain(OmegaConf.select(cfg, "solver")) or {}
    parts = str(name).split("+")
    if len(parts) == 1:
        return as_solver(name, **(table.get(name) or {}))
    if len(set(parts)) != len(parts):
        raise ValueError(f"solvers: {name!r} names a stage twice")
    return chain(*(as_solver(p, **(table.get(p) or {})) for p in parts))


def _solve_all(cfg: DictConfig, batch, key, console) -> tuple[dict, dict]:
    """``({name: Solution}, {name: solver object})`` for every name in ``cfg.solvers``."""
    import slimjax

    names = [str(n) for n in cfg.solvers]
    if not names:
        raise ValueError("solvers: the list is empty; name at least one solver (slimjax.methods())")
    if len(set(names)) != len(names):
        raise ValueError(f"solvers: duplicate names in {names}")
    objs = {n: make_solver(cfg, n) for n in names}  # fails before any work for a typo
    exe = execution_options(cfg)
    sols = {}
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as prog:
        task = prog.add_task("solving", total=len(names))
        for n in names:
            prog.update(task, description=f"solving with {n}")
            sol = slimjax.solve_batch(batch, objs[n], key=key, throw=False, **exe)
            sol = dataclasses.replace(sol, solver=n)
            failed = int((~sol.ok).sum())
            if failed:  # one failed instance must not cost the other rows of a sweep
                log.warning("%s: %d of %d instances failed (status 'failed', J = NaN in the results)", n, failed,
                            len(sol.objective))
                console.print(f"{n}: {failed} of {len(sol.objective)} instances failed (status 'failed', J = NaN)")
            log.info("%s: mean J %.6g, %.3f s solve + %.2f s compile for %d instances", n,
                     float(np.nanmean(sol.objective)), sol.seconds, sol.compile_seconds, len(sol.objective))
            if not console.is_terminal:
                console.print(f"solved with {n}: {sol.seconds:.2f} s (+ {sol.compile_seconds:.2f} s compile)")
            sols[n] = sol
            prog.advance(task)
    return sols, objs


# ---------------------------------------------------------------------------------------------
# evaluation


def _flat(prefix: str, node: Any) -> dict:
    out = {}
    node = _plain(node)
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
    cols = {
        "name": cfg.get("name"),
        "seed": int(cfg.seed),
        "batch_size": int(cfg.batch_size),
        "precision": cfg.precision,
        "model": OmegaConf.select(cfg, "model.name"),
        "network": OmegaConf.select(cfg, "network.name"),
        "routing": OmegaConf.select(cfg, "routing.kind") or OmegaConf.select(cfg, "routing.name"),
        "aggregation": OmegaConf.select(cfg, "solve_options.aggregation"),
        "U": U,
        "N": N,
        "L": L,
        "E": E,
        "M": M,
        "K": K,
    }
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


def reference(batch, sols: dict, objs: dict) -> dict:
    """Per instance: the proven optimum (NaN where none), the best lower bound, the reference's status.

    A solver's J counts as the optimum only where its status is ``OPTIMAL`` and it is exact by
    construction (``Solver.exact``: brute force, or HiGHS when it proved optimality); a time-limited
    MILP is never the optimum. Lower bounds: every exact solver's ``info["bound"]`` (HiGHS's dual
    bound; brute force's optimum) and every proven optimum.
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
        lb = np.where(proven, np.fmax(lb, np.asarray(sol.objective, np.float64)), lb)
        fresh = status == "none"
        status = np.where(fresh, np.asarray(sol.status_names, dtype=object), status)
    return {"J_opt": opt, "lower_bound": np.where(np.isfinite(lb), lb, np.nan), "ref_status": status.astype(str)}


def evaluate(cfg: DictConfig, batch, sols: dict, extra: dict, objs: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """Rows (instance x solver) and per-token latencies (for the CDF) of solved methods.

    ``gap_opt``/``gain_frac_opt`` are filled only against a proven optimum (else NaN);
    ``gap_lb`` = J / best lower bound − 1 is a certified gap wherever a bound exists.
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
    j_best = np.nanmin(Js, 0)
    ref = reference(batch, sols, objs)
    has_ref = any(getattr(o, "exact", False) for o in objs.values())
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
            "instance": np.arange(B),
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
            lbv = ref["lower_bound"]
            d["gap_lb"] = np.where(lbv > 0, J / np.where(lbv > 0, lbv, 1.0) - 1.0, np.nan)
            d["ref_status"] = ref["ref_status"]
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
    lead = ["name", "solver", "instance", "J", "total", "gap_best"]
    df = df[[c for c in lead if c in df] + [c for c in df.columns if c not in lead]]
    return df, token_lat


def _gain_frac(j_empty, J, j_ref):
    """Share of the reference's gain J(empty) - J(ref) that J achieves (1 when both gain nothing)."""
    denom = j_empty - j_ref
    return np.where(denom > 1e-12 * np.maximum(j_empty, 1), (j_empty - J) / np.where(denom > 0, denom, 1.0), 1.0)


def _replay(batch, placement, tokens, agg) -> tuple[dict, np.ndarray]:
    """p50/p95/p99 and mean of held-out tokens for every instance; the token latencies of instance 0."""
    from slimjax._replay import replay, replay_stats

    st = replay_stats(batch, placement, tokens, aggregation=agg)  # batched, chunked to a memory budget
    p = {"p50": st["p50"], "p95": st["p95"], "p99": st["p99"], "replay_mean": st["mean"]}
    lat0 = np.asarray(replay(batch[0], placement[0], tokens, aggregation=agg), np.float64)  # the CDF figure
    return p, lat0


def summarize(df: pd.DataFrame, by: Iterable[str] = ("solver",)) -> pd.DataFrame:
    """Mean and 95% interval of J per group, relative to the best group (by mean J).

    Columns: n, J_mean, J_ci95 (half width of Student's t interval over the instances, which are
    independent draws), J_rel (mean J / best mean J), gap_best (mean), gap_opt and gain_frac_opt
    (means over the ``n_opt`` instances with a proven optimum), gap_lb (mean certified gap to the
    best lower bound), ms_per_instance (solve time without compilation), compile_s (compilation
    of the call), p95 (traces).
    """
    from scipy import stats

    by = list(by)
    g = df.groupby(by, sort=False)
    out = g["J"].agg(n="count", J_mean="mean", J_std="std").reset_index()
    tq = np.where(out["n"] > 1, stats.t.ppf(0.975, np.maximum(out["n"] - 1, 1)), np.nan)
    out["J_ci95"] = tq * out["J_std"] / np.sqrt(out["n"].clip(lower=1))
    out = out.drop(columns="J_std")
    rest = [b for b in by if b != "solver"]
    if rest:
        best = out.groupby(rest)["J_mean"].transform("min")
    else:
        best = out["J_mean"].min()
    out["J_rel"] = out["J_mean"] / best
    cols = {c: (c, "mean") for c in ("gap_best", "gain_frac_best", "gap_opt", "gain_frac_opt", "gap_lb", "p95", "seconds")
            if c in df}
    if "gap_opt" in df:
        cols["n_opt"] = ("gap_opt", "count")
    if "compile_seconds" in df:
        cols["compile_s"] = ("compile_seconds", "mean")
    out = out.merge(g.agg(**cols).reset_index(), on=by)
    if "seconds" in out:
        out["ms_per_instance"] = 1e3 * out.pop("seconds")
    return out


_DISPLAY = {  # summary column -> (header, format)
    "n": ("n", "{:d}"),
    "J_mean": ("J mean", "{:.5g}"),
    "J_ci95": ("±95%", "{:.2g}"),
    "J_rel": ("vs best", "{:.4f}"),
    "gap_best": ("gap best", "{:.2%}"),
    "gap_opt": ("gap opt", "{:.2%}"),
    "n_opt": ("n opt", "{:d}"),
    "gain_frac_opt": ("gain/opt", "{:.4f}"),
    "gap_lb": ("gap lb", "{:.2%}"),
    "p95": ("p95", "{:.4g}"),
    "ms_per_instance": ("ms/inst", "{:.3g}"),
    "compile_s": ("compile s", "{:.3g}"),
}



def _summary_cells(row, keys, vals) -> list[str]:
    """One summary row as display strings: the key columns, then the formatted value columns."""
    cells = [str(row[c]) for c in keys]
    for c in vals:
        v = row[c]
        try:
            if c not in ("n", "n_opt") and not np.isfinite(float(v)):
                cells.append("–")  # nothing to show (e.g. no proven optimum)
            else:
                cells.append(_DISPLAY[c][1].format(int(v) if c in ("n", "n_opt") else float(v)))
        except (TypeError, ValueError):
            cells.append(str(v))
    return cells

def summary_caption(summary: pd.DataFrame) -> str:
    """What the summary's gap and time columns mean (printed under the table, and in markdown)."""
    notes = []
    if "gap_opt" in summary:
        notes.append("gap opt = J / proven optimum - 1, over the 'n opt' instances with one")
    if "gap_lb" in summary:
        notes.append("gap lb = J / best lower bound - 1 (certified)")
    if "ms_per_instance" in summary:
        notes.append("ms/inst = solve time without compilation; compile s = compilation of the call")
    return "; ".join(notes)


def print_summary(summary: pd.DataFrame, title: str, console=None) -> None:
    """A rich table of :func:`summarize`'s output (the best row per group in bold green)."""
    from rich.table import Table

    console = console or make_console()
    t = Table(title=title, title_justify="left", caption=summary_caption(summary), caption_justify="left")
    keys = [c for c in summary.columns if c not in _DISPLAY and c not in ("gain_frac_best",)]
    vals = [c for c in _DISPLAY if c in summary.columns]
    for c in keys:
        t.add_column(c, justify="left")
    for c in vals:
        t.add_column(_DISPLAY[c][0], justify="right")
    for _, row in summary.iterrows():
        cells = _summary_cells(row, keys, vals)
        best = bool(np.isclose(float(row["J_rel"]), 1.0))
        t.add_row(*cells, style="bold green" if best else None)
    console.print(t)


# ---------------------------------------------------------------------------------------------
# the app


def run(cfg: DictConfig) -> dict:
    """Run one study point: generate, solve with every listed method, evaluate, write outputs.

    Args:
      cfg: a composed config (``conf/config.yaml``; Hydra's compose API or ``@hydra.main``).

    Returns:
      ``{"output_dir", "skipped", "summary": {solver: {J_mean, J_ci95, J_rel, ...}}, "best"}``.
    """
    import jax

    from slimjax import logging as slog
    from slimjax import plots

    console = make_console()
    out = output_dir_for(cfg)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("resume", True) and is_complete(out, cfg):
        summary = pd.read_csv(out / SUMMARY) if (out / SUMMARY).is_file() else summarize(pd.read_parquet(out / RESULTS))
        console.print(
            f"resume: {out} already holds complete results for this config; skipped", markup=False, style="dim"
        )
        log.info("resume: skipped %s (complete)", out)
        return _result(out, summary, skipped=True)
    (out / MARKER).unlink(missing_ok=True)

    set_precision(str(cfg.precision))
    key = jax.random.key(int(cfg.seed))
    k_gen, k_solve = jax.random.split(key)
    logger = slog.make_logger(cfg, out, group=sweep_name())
    ok = False
    try:
        t0 = time.perf_counter()
        batch, extra = make_batch(cfg, k_gen)
        if cfg.precision == "float64":
            batch = batch.astype(jax.numpy.float64)
        log.info(
            "generated %d instances of shape (U,N,L,E,M,K)=%s in %.2f s",
            len(batch),
            batch.shape,
            time.perf_counter() - t0,
        )
        sols, objs = _solve_all(cfg, batch, k_solve, console)
        df, token_lat = evaluate(cfg, batch, sols, extra, objs)
        summary = summarize(df)
        resolved = OmegaConf.to_yaml(cfg, resolve=True)
        _atomic_write_bytes(out / "config.yaml", resolved.encode())
        _atomic_parquet(df, out / RESULTS)
        _atomic_csv(summary, out / SUMMARY)
        figures = {}
        if OmegaConf.select(cfg, "output.figures", default=True):
            figures = plots.run_figures(
                df,
                sols,
                batch,
                out,
                token_lat=token_lat,
                fmt=OmegaConf.select(cfg, "output.figure_format", default="png"),
                heatmap_solver=OmegaConf.select(cfg, "output.heatmap_solver"),
            )
        if OmegaConf.select(cfg, "output.summary", default=True):
            print_summary(
                summary,
                f"slimjax: {batch.batch_shape[0]} x {cfg.model.name} (U,N,L,E,M,K={batch.shape}), J in s",
                console,
            )
            console.print(f"results: {out}", soft_wrap=True)
        logger.log_run(cfg, df, summary, figures)
        meta = {"config_hash": config_hash(cfg), "rows": len(df), "solvers": list(cfg.solvers), "finished": time.time()}
        _atomic_write_bytes(out / MARKER, json.dumps(meta).encode())
        ok = True
        return _result(out, summary, skipped=False)
    finally:
        logger.finish(exit_code=0 if ok else 1)


def make_console():
    """A rich console; 140 columns wide when stdout is not a terminal (logs, pipes)."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 140)


def _result(out: Path, summary: pd.DataFrame, skipped: bool) -> dict:
    s = {
        r["solver"]: {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items() if k != "solver"}
        for r in summary.to_dict("records")
    }
    best = min(s, key=lambda k: s[k]["J_mean"]) if s else None
    return {"output_dir": str(out), "skipped": skipped, "summary": s, "best": best}


# ---------------------------------------------------------------------------------------------
# multirun: collect


def find_runs(root: Path | str) -> list[Path]:
    """Run directories under ``root`` holding complete results (sorted)."""
    root = Path(root)
    return sorted(p.parent for p in root.rglob(RESULTS) if (p.parent / MARKER).is_file())


def varying_columns(df: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """Config columns whose value differs between runs (the swept parameters)."""
    skip = set(exclude) | {
        "solver",
        "instance",
        "run",
        "J",
        "total",
        "J_empty",
        "used",
        "used_frac",
        "cached",
        "seconds",
        "batch_seconds",
        "compile_seconds",
        "status",
        "ref_status",
        "gap_lb",
        "gap_best",
        "gap_opt",
        "gain_frac_best",
        "gain_frac_opt",
        "p50",
        "p95",
        "p99",
        "replay_mean",
    }
    cols = []
    for c in df.columns:
        if c in skip or c.startswith("info."):
            continue
        try:
            if df.groupby("run")[c].first().nunique(dropna=False) > 1:
                cols.append(c)
        except TypeError:
            continue
    return cols


def collect(
    root: Path | str,
    *,
    x: str | None = None,
    y: str = "J",
    logx: bool = False,
    out: Path | str | None = None,
    fmt: str = "png",
    console=None,
    quiet: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge every complete run under ``root`` into ``root/results_all.parquet`` and summarize.

    Args:
      root: a multirun directory (or any folder holding run directories).
      x: a swept parameter (a result column, e.g. ``network.servers``) for the sweep figure.
      y: the metric on the figure's y axis.
      out: also write ``results.csv`` (summary), ``summary.csv`` and the figures here.

    Returns:
      ``(merged rows, summary by solver and swept parameters)``.

    Raises:
      ValueError: when ``root`` holds no complete run, or ``x``/``y`` is not a column.
    """
    from slimjax import plots

    root = Path(root)
    runs = find_runs(root)
    if not runs:
        raise ValueError(f"collect: no complete runs (with {RESULTS} and {MARKER}) under {root}")
    frames = []
    for r in runs:
        d = pd.read_parquet(r / RESULTS)
        d.insert(0, "run", str(r.relative_to(root)) if r != root else ".")
        frames.append(d)
    df = pd.concat(frames, ignore_index=True)
    _atomic_parquet(df, root / MERGED)
    swept = varying_columns(df)
    summary = summarize(df, by=swept + ["solver"])
    _atomic_csv(summary, root / "summary_all.csv")
    if not quiet:
        print_summary(
            summary, f"slimjax-collect: {len(runs)} runs, {len(df)} rows, swept {swept or 'nothing'}", console
        )
        (console or make_console()).print(f"merged: {root / MERGED}", soft_wrap=True)
    dests = [root]
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _atomic_csv(summary, out / "results.csv")
        _atomic_write_bytes(out / "table.md", markdown_table(summary).encode())
        dests.append(out)
    if x is not None:
        for col, what in ((x, "x"), (y, "y")):
            if col not in df.columns:
                raise ValueError(f"collect: {what}={col!r} is not a result column; columns: {sorted(df.columns)}")
        for d in dests:
            plots.sweep_figure(df, x=x, y=y, path=d / f"sweep_{_safe(y)}_vs_{_safe(x)}.{fmt}", logx=logx)
    return df, summary


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (the columns of the printed one)."""
    keys = [c for c in summary.columns if c not in _DISPLAY and c != "gain_frac_best"]
    vals = [c for c in _DISPLAY if c in summary.columns]
    head = keys + [_DISPLAY[c][0] for c in vals]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(keys) + ["---:"] * len(vals)) + "|"]
    for _, row in summary.iterrows():
        cells = _summary_cells(row, keys, vals)
        lines.append("| " + " | ".join(cells) + " |")
    caption = summary_caption(summary)
    return "\n".join(lines) + "\n" + (f"\n{caption}.\n" if caption else "")


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


class CollectCallback(Callback):
    """Hydra callback: merge a finished multirun (``collect``), with the ``collect.*`` settings."""

    def on_multirun_end(self, config, **kw):
        root = Path(str(config.hydra.sweep.dir))
        c = config.get("collect") or {}
        try:
            collect(root, x=c.get("x"), y=c.get("y") or "J", logx=bool(c.get("logx", False)), out=c.get("out"))
        except ValueError as e:  # e.g. every job failed: the jobs' own errors matter more
            log.warning("collect after multirun: %s", e)


def solver_config(name: str) -> dict:
    """``{option: default}`` of a named solver as it appears in ``conf/solver/<name>.yaml``
    (for a chain: every stage's options; an option applies to each stage that has it)."""
    from slimjax.solvers import methods

    obj = methods()[name]
    out: dict = {}
    for stage in obj.stages():
        for k, v in stage.options().items():
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


def write_solver_configs(directory: Path | str | None = None, names: Iterable[str] | None = None) -> list[Path]:
    """(Re)write ``conf/solver/<name>.yaml`` from the solver objects' defaults (maintenance helper).

    ``python -c "import slimjax.experiment as e; e.write_solver_configs()"`` after a solver's
    options change; ``tests/test_config.py`` checks that the files match the objects.
    """
    from slimjax.solvers import methods

    directory = Path(directory) if directory else Path(__file__).with_name("conf") / "solver"
    written = []
    for name in names or methods():
        obj = methods()[name]
        body = OmegaConf.to_yaml({name: solver_config(name)})
        head = (
            f"# Options of solver '{name}' = {obj!r}\n"
            f"# Override with solver.{name}.<option>=... (help(slimjax.solvers.{type(obj.stages()[0]).__name__}) explains each).\n"
            "# Problem-level and execution options (aggregation, capacity_unit, chunk_size, ...) are in solve_options.\n"
        )
        p = directory / f"{name}.yaml"
        p.write_text(head + body)
        written.append(p)
    return written
