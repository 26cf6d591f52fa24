"""``experiment=caching``: a planned placement against per-token caches (placement or caching?).

The study replays token streams through the policies of :mod:`slimjax.dynamic` and asks where a
per-token device cache beats a planned placement:

- **streams**: synthetic streams of the locality generator
  (:func:`slimjax.generate.locality_trace`, the ``caching.preset`` calibrated on the real traces,
  ``caching.locality`` swept), and the shared real per-token traces (``caching.real``, found under
  ``caching.shared``/traces/raw; skipped when absent);
- **networks**: ``caching.networks`` networks per storage level (the run's ``network`` with
  ``storage_fraction`` = each of ``caching.storage``; network r and stream r share a key, so every
  locality and policy is compared on the same networks);
- **policies**: planned: ``static`` (x_0 = ``caching.solver`` on window 0, never moved) and
  ``incremental`` at every share of ``caching.budgets`` (re-solved with ``caching.window_solver``
  per window of ``caching.window_tokens`` tokens from the last window, at most that share of the
  node's storage moved in per window); per-token caches on the device (``caching.caches``: ``token-lru``,
  ``token-lfu``, and ``belady``, the offline optimum of the hit rate, a reference). Every policy
  starts from x_0, and windows 1.. are evaluated;
- **migration cost**: each of ``caching.migration`` (seconds of latency per GB moved into a node)
  prices the storage each policy loaded: ``cost = J + migration · GB loaded per token``. The
  token latencies themselves (J, p50/p95/p99) do not include it (a miss is served where the
  expert already is, the load happens beside it).

Outputs (in the run directory): ``results.parquet`` (one row per stream, storage level, network,
policy and migration cost: J, cost, p50/p95/p99, hit rate, GB loaded per token, times),
``region.csv`` (per stream kind, locality, storage and migration cost: the best planned policy,
the best online cache, their ratio in cost and in p99, Belady's), ``summary.csv``, the figure
``caching_region.png`` and the logger's records.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from slimjax._io import atomic_write
from slimjax.app._batch import _network
from slimjax.app._config import plain, sweep_name
from slimjax.app._hash import MARKER, code_fingerprint, config_hash, content_digest, resume_or_run

__all__ = ["CACHE_POLICIES", "run_caching", "run_caching_point"]

#: the per-token caches the study can run (``slimjax.dynamic`` names); ``belady`` is offline
CACHE_POLICIES = ("token-lru", "token-lfu", "belady")
ONLINE_CACHES = ("token-lru", "token-lfu")

_KEYS = {"quick", "preset", "layers", "tokens", "window_tokens", "locality", "reuse_window", "storage", "migration",
         "budgets", "caches", "networks", "real", "shared", "solver", "window_solver"}
_QUICK = {"tokens": 1024, "window_tokens": 256, "networks": 1}


def _fail(field: str, rule: str, value: Any) -> ValueError:
    return ValueError(f"caching.{field}: {rule}, got {value!r}")


def _num_list(d: dict, field: str, lo: float, hi: float, lo_open: bool = False) -> list[float]:
    v = d[field]
    if not isinstance(v, list) or not v:
        raise _fail(field, "must be a non-empty list of numbers", v)
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x > hi or x < lo \
                or (lo_open and x == lo):
            raise _fail(field, f"every entry must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]", v)
        out.append(float(x))
    return out


def _int(d: dict, field: str, lo: int) -> int:
    v = d[field]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _fail(field, f"must be an integer >= {lo}", v)
    return int(v)


def options(cfg: DictConfig) -> dict:
    """The validated ``caching`` block (quick mode applied): ValueError naming the key otherwise."""
    d = plain(cfg.caching) or {}
    unknown = set(d) - _KEYS
    if unknown:
        raise ValueError(f"caching: unknown keys {sorted(unknown)}; valid keys are {sorted(_KEYS)}")
    missing = _KEYS - set(d)
    if missing:
        raise ValueError(f"caching: missing keys {sorted(missing)} (see conf/experiment/caching.yaml)")
    if not isinstance(d["quick"], bool):
        raise _fail("quick", "must be true or false", d["quick"])
    if d["quick"]:
        d.update(_QUICK)
        for f in ("locality", "storage", "migration", "budgets"):
            if isinstance(d[f], list) and len(d[f]) > 2:
                d[f] = [d[f][0], d[f][-1]] if f != "storage" else [d[f][len(d[f]) // 2]]
    o = {"quick": d["quick"], "solver": str(d["solver"]), "window_solver": str(d["window_solver"]), "preset": d["preset"]}
    o["layers"] = None if d["layers"] is None else _int(d, "layers", 1)
    for f in ("tokens", "window_tokens", "reuse_window", "networks"):
        o[f] = _int(d, f, 1)
    if o["tokens"] < 2 * o["window_tokens"]:
        raise _fail("tokens", f"must hold at least 2 windows of window_tokens={o['window_tokens']}", o["tokens"])
    o["locality"] = _num_list(d, "locality", 0.0, 1.0)
    o["storage"] = _num_list(d, "storage", 0.0, 1.0, lo_open=True)
    o["migration"] = _num_list(d, "migration", 0.0, math.inf)
    o["budgets"] = [] if d["budgets"] in (None, []) else _num_list(d, "budgets", 0.0, 1.0, lo_open=True)
    caches = d["caches"]
    if not isinstance(caches, list) or any(c not in CACHE_POLICIES for c in caches):
        raise _fail("caches", f"must be a list of {list(CACHE_POLICIES)}", caches)
    o["caches"] = list(caches)
    real = d["real"] or []
    if not isinstance(real, list) or not all(isinstance(p, str) for p in real):
        raise _fail("real", "must be a list of trace paths (absolute, or relative to <shared>/traces/raw)", real)
    o["real"] = real
    o["shared"] = d["shared"]
    if o["preset"] is not None:
        from slimjax.generate import LOCALITY_PRESETS

        if o["preset"] not in LOCALITY_PRESETS:
            raise _fail("preset", f"must be null or one of {sorted(LOCALITY_PRESETS)}", o["preset"])
    return o


def _real_paths(o: dict) -> list[Path]:
    """The real traces that exist (relative entries resolved under <shared>/traces/raw)."""
    shared = o["shared"] or os.environ.get("SLIMJAX_SHARED")
    out = []
    for p in o["real"]:
        path = Path(p).expanduser()
        if not path.is_absolute():
            if not shared:
                continue
            path = Path(shared).expanduser() / "traces" / "raw" / p
        if path.exists():
            out.append(path)
    return out


def _label(policy: str, share: float | None) -> str:
    return policy if share is None else f"{policy}@{share:g}"


def _streams(o: dict, cfg: DictConfig, key) -> list[dict]:
    """The token streams: synthetic (one per locality and network index) and real (one each)."""
    import jax

    from slimjax import generate, traces

    model = plain(cfg.model)
    preset = o["preset"] if o["preset"] is not None else model.get("name")
    base = dict(generate.LOCALITY_PRESETS.get(preset, {}))
    out = []
    layers = o["layers"] if o["layers"] is not None else model["layers"]
    for r in range(o["networks"]):
        for rho in o["locality"]:
            cfg_l = generate.LocalityConfig(**{**base, "tokens": o["tokens"], "locality": rho,
                                               "window": o["reuse_window"]})
            tr = generate.locality_trace(jax.random.fold_in(key, r), cfg_l, model=model, layers=layers)
            out.append({"source": "synthetic", "locality": rho, "rep": r, "trace": tr, "model": {**model, "layers": layers}})
    for path in _real_paths(o):
        tr = traces.load(path)
        n = min(tr.num_tokens, o["tokens"]) if o["quick"] else tr.num_tokens
        tr = tr.select(slice(0, n))
        name = path.name if path.is_dir() else path.stem
        for r in range(o["networks"]):
            out.append({"source": f"real:{name}", "locality": float("nan"), "rep": r, "trace": tr, "model": None,
                        "path": path})
    return out


def _timelines(o: dict, cfg: DictConfig, streams: list[dict], key) -> dict:
    """Timelines grouped by shape: {shape: (meta rows, stacked Timeline)}."""
    import jax

    from slimjax import dynamic, generate

    net_cfg = _network(cfg)
    groups: dict[tuple, tuple[list, list]] = {}
    nets: dict[tuple, Any] = {}  # one network per (model, shape, storage, rep), shared by the streams
    for s in streams:
        tr = s["trace"]
        for share in o["storage"]:
            nk = (json.dumps(s["model"], sort_keys=True), tr.shape[1:], tr.num_experts, share, s["rep"])
            if nk not in nets:
                nets[nk] = generate.instance_from_trace(tr, model=s["model"], key=jax.random.fold_in(key, s["rep"]),
                                                        network={**net_cfg, "storage_fraction": share})
            net = nets[nk]
            tl = dynamic.timeline_from_trace(tr, o["window_tokens"], net, merge=False)
            shape = (tl.num_windows, *tl.shape)
            meta = {k: s[k] for k in ("source", "locality", "rep")}
            meta.update(storage=share, L=tr.num_layers, E=tr.num_experts, K=tr.top_k, tokens=tr.num_tokens,
                        expert_gb=float(np.asarray(net.size).max()) / 1e9)
            groups.setdefault(shape, ([], []))
            groups[shape][0].append(meta)
            groups[shape][1].append(tl)
    return {shape: (metas, dynamic.stack_timelines(tls)) for shape, (metas, tls) in groups.items()}


def _policies(o: dict, capacity: np.ndarray) -> list[tuple[str, str, float | None, Any]]:
    """(label, family, budget share, policy object) for one group."""
    from slimjax import dynamic

    pols: list[tuple[str, str, float | None, Any]] = [("static", "plan", None, dynamic.Static())]
    for b in o["budgets"]:
        pols.append((_label("incremental", b), "plan", b, dynamic.Incremental(budget=b * capacity)))
    for c in o["caches"]:
        fam = "oracle" if c == "belady" else "cache"
        pols.append((c, fam, None, dynamic.as_policy(c)))
    return pols


def _measure(o: dict, groups: dict, key, rep) -> pd.DataFrame:
    """Run every policy on every group; one row per (timeline, policy)."""
    from slimjax import dynamic

    rows = []
    for metas, tl in groups.values():
        capacity = np.asarray(tl.windows.capacity)[:, 0]  # [B, N]
        t0 = time.perf_counter()
        x0 = dynamic.deploy(tl, solver=o["solver"])  # every policy starts from the same x_0
        rep.line(f"caching: x_0 of {len(metas)} timelines (shape {tl.shape}) in {time.perf_counter() - t0:.1f} s")
        for label, family, share, pol in _policies(o, capacity):
            res = dynamic.run(tl, pol, solver=o["window_solver"], key=key, x0=x0)
            rep.line(f"caching: {label} in {res.seconds:.1f} s (+ {res.compile_seconds:.1f} s compiling)")
            tokens = np.asarray(tl.token_weight)[:, 1:] > 0  # [B, T-1, W]
            n_tok = tokens.sum((1, 2))
            J = np.asarray(res.token_objective)[:, 1:].mean(1)
            hits = np.asarray(res.hits)[:, 1:].sum((1, 2))
            acc = np.asarray(res.accesses)[:, 1:].sum((1, 2))
            loaded = np.asarray(res.loaded)[:, 1:].sum((1, 2))
            for b, m in enumerate(metas):
                rows.append({**m, "policy": label, "family": family, "budget_share": np.nan if share is None else share,
                             "J": float(J[b]), "p50": float(np.asarray(res.p50)[b, 1:].mean()),
                             "p95": float(np.asarray(res.p95)[b, 1:].mean()),
                             "p99": float(np.asarray(res.p99)[b, 1:].mean()),
                             "hit_rate": float(hits[b] / acc[b]) if acc[b] else np.nan,
                             "gb_per_token": float(loaded[b] / n_tok[b] / 1e9),
                             "seconds": float(res.seconds), "compile_seconds": float(res.compile_seconds)})
    return pd.DataFrame(rows)


def with_costs(df: pd.DataFrame, migration: list[float]) -> pd.DataFrame:
    """One row per (measured row, migration cost): ``cost = J + migration · gb_per_token``."""
    parts = []
    for c in migration:
        part = df.copy()
        part["migration"] = c
        part["cost"] = part["J"] + c * part["gb_per_token"]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def region(results: pd.DataFrame) -> pd.DataFrame:
    """Per (source, locality, storage, migration): best planned policy vs best online cache.

    Means over the networks first; ``ratio`` = best online cache's cost / best plan's cost (< 1:
    caching wins), ``p99_ratio`` the same for p99 (each family's best p99), ``belady_ratio``
    Belady's cost / best plan's (what an offline-optimal cache would reach).
    """
    keys = ["source", "locality", "storage", "migration"]
    mean = (results.groupby([*keys, "policy", "family"], dropna=False, sort=False)
            [["cost", "J", "p99", "hit_rate", "gb_per_token"]].mean().reset_index())
    rows = []
    for k, g in mean.groupby(keys, dropna=False, sort=False):
        plan = g[g.family == "plan"]
        cache = g[g.family == "cache"]
        oracle = g[g.family == "oracle"]
        if plan.empty:
            continue
        bp = plan.loc[plan.cost.idxmin()]
        row = dict(zip(keys, k))
        row.update(best_plan=bp.policy, plan_cost=bp.cost, plan_J=bp.J, plan_p99=plan.p99.min(),
                   plan_hit_rate=bp.hit_rate)
        if not cache.empty:
            bc = cache.loc[cache.cost.idxmin()]
            row.update(best_cache=bc.policy, cache_cost=bc.cost, cache_J=bc.J, cache_p99=cache.p99.min(),
                       cache_hit_rate=bc.hit_rate, cache_gb_per_token=bc.gb_per_token,
                       ratio=bc.cost / bp.cost, p99_ratio=cache.p99.min() / plan.p99.min())
        if not oracle.empty:
            o = oracle.iloc[0]
            row.update(belady_cost=o.cost, belady_hit_rate=o.hit_rate, belady_ratio=o.cost / bp.cost)
        rows.append(row)
    return pd.DataFrame(rows)


def region_figure(reg: pd.DataFrame, path: Path, source: str = "synthetic", real: str | None = None) -> Path:
    """Heat maps of ``ratio`` (best online cache / best plan, in cost) over locality x storage, one
    panel per migration cost, plus one of ``p99_ratio``; a real trace (``real``) as the first column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    syn = reg[reg.source == source]
    if real is not None:
        syn = pd.concat([reg[reg.source == real].assign(locality=-1.0), syn])
    costs = sorted(syn.migration.unique())
    locs = sorted(syn.locality.unique())
    stores = sorted(syn.storage.unique())
    xt = ["real" if x < 0 else f"{x:g}" for x in locs]
    panels = [("ratio", f"cost ratio, migration {c:g} s/GB", c) for c in costs] + [("p99_ratio", "p99 ratio", costs[0])]
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.9 * ncol + 1, 3.4 * nrow), squeeze=False)
    fig.subplots_adjust(wspace=0.35, hspace=0.45)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    vals = np.log2(np.clip(syn[["ratio", "p99_ratio"]].to_numpy(dtype=float), 1e-3, 1e3))
    lim = max(1.0, float(np.nanmax(np.abs(vals)))) if np.isfinite(vals).any() else 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim)
    im = None
    for ax, (col, title, c) in zip(axes.flat, panels):
        sub = syn[syn.migration == c]
        grid = np.full((len(stores), len(locs)), np.nan)
        for _, r in sub.iterrows():
            grid[stores.index(r.storage), locs.index(r.locality)] = r[col] if col in r and pd.notna(r[col]) else np.nan
        im = ax.imshow(np.log2(grid), origin="lower", cmap="RdBu_r", norm=norm, aspect="auto")
        for i in range(len(stores)):
            for j in range(len(locs)):
                if np.isfinite(grid[i, j]):
                    dark = abs(np.log2(grid[i, j])) > 0.6 * lim
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            weight="bold" if grid[i, j] < 1 else "normal", color="white" if dark else "black")
        ax.set_xticks(range(len(locs)), xt, fontsize=7)
        ax.set_yticks(range(len(stores)), [f"{s:g}" for s in stores], fontsize=7)
        ax.set_xlabel("locality", fontsize=8)
        ax.set_ylabel("storage share", fontsize=8)
        ax.set_title(title, fontsize=8)
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
        cb.set_label("log2(cache / plan): < 0 (blue) = caching wins", fontsize=7)
    fig.suptitle("Per-token caching vs planned placement (best online cache / best plan)", fontsize=9)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def run_caching(cfg: DictConfig, out: Path, rep, digest: str) -> dict:
    """Run the caching study of ``cfg.caching`` into ``out`` (see the module docstring)."""
    import jax

    from slimjax.app._loggers import NullLogger, make_logger

    o = options(cfg)
    t0 = time.perf_counter()
    k_trace, k_net, k_run = jax.random.split(jax.random.key(int(cfg.seed)), 3)
    streams = _streams(o, cfg, k_trace)
    real = sorted({s["source"] for s in streams if s["source"] != "synthetic"})
    rep.line(f"slimjax caching: locality {o['locality']} x storage {o['storage']} x migration {o['migration']} s/GB, "
             f"{o['networks']} network(s) per point, real traces {real or 'none'} -> {out}")
    groups = _timelines(o, cfg, streams, k_net)
    measured = _measure(o, groups, k_run, rep)
    measured["name"] = str(cfg.get("name", "caching"))
    measured["seed"] = int(cfg.seed)
    measured["model.name"] = str(OmegaConf.select(cfg, "model.name"))
    measured["solver"] = measured["policy"]
    results = with_costs(measured, o["migration"])
    reg = region(results)
    summary = (results.groupby(["source", "policy"], sort=False)
               .agg(n=("cost", "size"), J_mean=("J", "mean"), p99_mean=("p99", "mean"),
                    hit_rate=("hit_rate", "mean"), gb_per_token=("gb_per_token", "mean"))
               .reset_index())
    summary.insert(0, "solver", summary["source"] + "/" + summary["policy"])
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "results.parquet") as tmp:
        results.to_parquet(tmp, index=False)
    with atomic_write(out / "region.csv") as tmp:
        reg.to_csv(tmp, index=False)
    with atomic_write(out / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    figures = {}
    if OmegaConf.select(cfg, "output.figures", default=True):
        qwen = next((r for r in real if "vLLM-MoE-Logger" in r), None)
        real_col = qwen if qwen is not None and not reg[reg.source == qwen].empty and \
            groups and _same_shape(measured, qwen) else None
        figures["caching_region"] = region_figure(reg, out / f"caching_region.{cfg.output.figure_format}", real=real_col)
    logger = NullLogger()
    ok = False
    try:
        logger = make_logger(cfg, out, group=sweep_name())
        logger.log_run(cfg, measured.drop_duplicates("solver"), summary, figures)
        ok = True
    finally:
        logger.finish(exit_code=0 if ok else 1)
    if OmegaConf.select(cfg, "output.summary", default=True):
        cols = ["source", "locality", "storage", "migration", "best_plan", "best_cache", "ratio", "p99_ratio",
                "belady_ratio"]
        rep.line(reg[[c for c in cols if c in reg]].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        rep.line("ratio = best online cache's cost / best planned policy's (< 1: caching wins); cost = J + migration "
                 "(s/GB) x GB loaded per token")
    kind = OmegaConf.select(cfg, "logger.kind", default="none") or "none"
    meta = {"config_hash": digest, "code": code_fingerprint(), "rows": len(results), "instances": len(measured),
            "solvers": list(summary["solver"]), "finished": time.time(), "seconds": time.perf_counter() - t0,
            "logged": [] if kind == "none" else [kind]}
    with atomic_write(out / MARKER) as tmp:  # last: the run now counts as complete
        tmp.write_text(json.dumps(meta))
    rep.line(f"results: {out / 'results.parquet'}, region: {out / 'region.csv'} ({time.perf_counter() - t0:.0f} s)")
    return {"output_dir": str(out), "skipped": False, "best": None,
            "files": {"results": out / "results.parquet", "region": out / "region.csv", "figures": figures},
            "summary": {r["solver"]: {k: v for k, v in r.items() if k != "solver"} for r in summary.to_dict("records")}}


def _same_shape(measured: pd.DataFrame, source: str) -> bool:
    a = measured[measured.source == "synthetic"][["L", "E", "K"]].drop_duplicates()
    b = measured[measured.source == source][["L", "E", "K"]].drop_duplicates()
    return len(a) == 1 and len(b) == 1 and (a.to_numpy() == b.to_numpy()).all()


def _digest(cfg: DictConfig) -> str:
    """The config hash, plus the content of the real traces the study reads."""
    import hashlib

    h = hashlib.sha256(config_hash(cfg).encode())
    try:
        o = options(cfg)
    except ValueError:
        return h.hexdigest()[:16]
    for p in _real_paths(o):
        h.update(str(p).encode() + b"\0" + json.dumps(content_digest(str(p)), sort_keys=True).encode())
    return h.hexdigest()[:16]


def _held(out: Path) -> bool:
    """Whether ``out`` holds anything besides Hydra's bookkeeping (``.hydra/``, logs)."""
    return out.is_dir() and any(p.name != ".hydra" and p.suffix != ".log" for p in out.iterdir())


def run_caching_point(cfg: DictConfig, out: Path) -> dict:
    """``slimjax experiment=caching``: resume, run; a failed run leaves no directory it made."""
    from slimjax.app._progress import Reporter, make_console

    held = _held(out)

    def cleanup():
        if not held and out.is_dir() and out.resolve() != Path.cwd().resolve():
            shutil.rmtree(out, ignore_errors=True)

    if cfg.get("distributed", False):
        cleanup()
        raise ValueError("distributed: experiment=caching runs its whole study in one process; set distributed=false "
                         "and spread studies over processes as a multirun (`slimjax -m experiment=caching seed=0,1`)")
    return resume_or_run(cfg, out, Reporter(make_console()), _digest(cfg), run_caching, cleanup)
