"""``experiment=dynamic``: re-placement policies over drifting timelines, in the app.

The run draws ``dynamic.timelines`` drifting timelines of ``dynamic.windows`` windows
(:func:`slimjax.dynamic.drift`, over the run's model and network) — or, with ``routing.path``
set (``routing=trace routing.path=/path/to/trace``), cuts that real trace into windows in its
time order (:func:`slimjax.dynamic.timeline_from_trace`: ``dynamic.window_tokens`` tokens per
window, default the trace's tokens split into ``dynamic.windows``; ``dynamic.align``), one
timeline per sampled network — runs every policy of ``dynamic.policies`` (names of
:data:`slimjax.dynamic.POLICIES`: placement policies and the per-token caches ``token-lru``,
``token-lfu``, ``belady``) at every budget share of ``dynamic.budget_shares``
(:func:`slimjax.dynamic.sweep`), and writes:

- ``results.parquet``: one row per (policy, budget share, timeline, window) — J of the window,
  storage moved, p50/p95/p99 of its tokens, ...;
- ``totals.parquet``: one row per (policy, budget share, timeline) — total J over windows
  1..T-1, total moved, the share of the static → hindsight gap recovered, times;
- ``summary.csv``: means over the timelines per (policy, budget share); ``dynamic_windows.png``:
  mean J per window for each policy and share;
- the logger's records: the per-window curves (wandb: one step per window) and the summary.

Policies and budgets are config values, so a Hydra grid sweeps them like anything else
(``slimjax -m experiment=dynamic dynamic.penalty=0,1e-3``). The study runs in one process:
``distributed=true`` is refused (``ValueError``; every process would run every timeline and log
its own run); a multirun spreads several studies over processes or nodes instead.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from slimjax._io import atomic_write
from slimjax.app._batch import _network
from slimjax.app._config import plain, sweep_name
from slimjax.app._hash import MARKER, code_fingerprint

__all__ = ["run_dynamic"]

_KEYS = {"timelines", "windows", "mode", "period", "tokens", "policies", "budget_shares", "penalty",
         "forecast", "solver"}
#: keys that may be absent (configs written before they existed): their defaults
_OPTIONAL = {"window_tokens": None, "align": "token"}


def _options(cfg: DictConfig) -> dict:
    d = plain(cfg.dynamic) or {}
    unknown = set(d) - _KEYS - set(_OPTIONAL)
    if unknown:
        raise ValueError(f"dynamic: unknown keys {sorted(unknown)}; valid keys are {sorted(_KEYS | set(_OPTIONAL))}")
    d = {**_OPTIONAL, **d}
    missing = _KEYS - set(d)
    if missing:
        raise ValueError(f"dynamic: missing keys {sorted(missing)} (see conf/experiment/dynamic.yaml)")
    if not isinstance(d["policies"], list) or not d["policies"]:
        raise ValueError(f"dynamic.policies: must be a non-empty list of policy names, got {d['policies']!r}")
    if not isinstance(d["budget_shares"], list) or not d["budget_shares"]:
        raise ValueError(f"dynamic.budget_shares: must be a non-empty list (null = no limit), got {d['budget_shares']!r}")
    w = d["window_tokens"]
    if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
        raise ValueError(f"dynamic.window_tokens: must be null (the trace split into dynamic.windows) or an integer >= 1, "
                         f"got {w!r}")
    return d


def _trace_path(cfg: DictConfig) -> str | None:
    """``routing.path`` when set (a real trace's time order replaces the drift generator)."""
    kind = OmegaConf.select(cfg, "routing.kind")
    path = OmegaConf.select(cfg, "routing.path", default=None)
    if not path:
        if kind == "trace":
            raise ValueError("routing.path: routing=trace needs a trace file (routing.path=/path/to/trace)")
        return None
    full = os.path.expanduser(str(path))
    if not os.path.exists(full):
        raise ValueError(f"routing.path: no such file: {path}")
    return full


def _trace_timelines(cfg: DictConfig, d: dict, path: str, key):
    """One timeline per sampled network over the trace at ``path``, windows in its time order."""
    import jax

    from slimjax import dynamic, generate, stack, traces

    trace = traces.load(path, **dict(plain(OmegaConf.select(cfg, "routing.load_options", default=None)) or {}))
    B = int(d["timelines"])
    wt = d["window_tokens"] or trace.num_tokens // int(d["windows"])
    if wt < 1:
        raise ValueError(f"dynamic.windows: {d['windows']} windows of a trace of {trace.num_tokens} tokens leave none")
    first = np.arange(min(wt, trace.num_tokens))  # the network only: routing from the first window's tokens
    nets = stack([generate.instance_from_trace(trace, model=plain(cfg.model), network=_network(cfg), key=k,
                                               tokens=first) for k in jax.random.split(key, B)])
    return dynamic.timeline_from_trace(trace, int(wt), nets, align=str(d["align"])), os.path.basename(path.rstrip("/"))


def _label(policy: str, share) -> str:
    return f"{policy}@{'inf' if share is None or not np.isfinite(share) else f'{share:g}'}"


def run_dynamic(cfg: DictConfig, out: Path, rep, digest: str) -> dict:
    """Run the dynamic study of ``cfg.dynamic`` into ``out`` (see the module docstring)."""
    import jax

    from slimjax import dynamic
    from slimjax.app._loggers import NullLogger, make_logger

    d = _options(cfg)
    shares = [None if s is None else float(s) for s in d["budget_shares"]]
    k_gen, k_solve = jax.random.split(jax.random.key(int(cfg.seed)))
    path = _trace_path(cfg)
    if path is None:
        tl = dynamic.drift(k_gen, int(d["timelines"]), int(d["windows"]), model=plain(cfg.model),
                           network=_network(cfg), routing={"tokens": int(d["tokens"])}, mode=str(d["mode"]),
                           period=int(d["period"]))
        source = "drift"
    else:
        tl, source = _trace_timelines(cfg, d, path, k_gen)
    rep.line(f"slimjax dynamic: {len(tl)} timelines x {tl.num_windows} windows ({source}), policies {d['policies']}, "
             f"budget shares {shares} -> {out}")
    logger = NullLogger()
    ok = False
    try:
        res = dynamic.sweep(tl, list(d["policies"]), shares, penalty=float(d["penalty"]),
                            forecast=str(d["forecast"]), solver=str(d["solver"]), key=k_solve)
        windows, totals = pd.DataFrame(res["windows"]), pd.DataFrame(res["totals"])
        for df in (windows, totals):
            df["name"] = str(cfg.get("name", "dynamic"))
            df["seed"] = int(cfg.seed)
            df["model.name"] = str(OmegaConf.select(cfg, "model.name"))
            df["source"] = source
            df["solver"] = [_label(p, s) for p, s in zip(df["policy"], df["budget_share"])]
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "results.parquet") as tmp:
            windows.to_parquet(tmp, index=False)
        with atomic_write(out / "totals.parquet") as tmp:
            totals.to_parquet(tmp, index=False)
        summary = (totals.groupby("solver", sort=False)
                   .agg(n=("total", "size"), total_mean=("total", "mean"), moved_mean=("moved", "mean"),
                        gap_recovered=("gap_recovered", "mean"), seconds=("seconds", "mean"))
                   .reset_index())
        with atomic_write(out / "summary.csv") as tmp:
            summary.to_csv(tmp, index=False)
        curves = (windows[windows["evaluated"].astype(bool)]
                  .groupby(["solver", "window"], sort=True)[["objective", "moved", "p95"]].mean().reset_index())
        figures = {}
        if OmegaConf.select(cfg, "output.figures", default=True):
            figures["dynamic_windows"] = _figure(curves, out / f"dynamic_windows.{cfg.output.figure_format}")
        logger = make_logger(cfg, out, group=sweep_name())
        if hasattr(logger, "log_curves"):
            logger.log_curves(curves)
        logger.log_run(cfg, windows.drop_duplicates("solver"), summary, figures)
        if OmegaConf.select(cfg, "output.summary", default=True):
            rep.line(summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
            rep.line("total_mean = mean over timelines of sum of J over windows 1..T-1 (s); moved_mean = storage "
                     "moved (bytes); gap_recovered = share of the static -> hindsight gap closed at the same budget")
        kind = OmegaConf.select(cfg, "logger.kind", default="none") or "none"
        meta = {"config_hash": digest, "code": code_fingerprint(), "rows": len(windows), "instances": int(d["timelines"]),
                "solvers": list(summary["solver"]), "finished": time.time(),
                "logged": [] if kind == "none" else [kind]}
        with atomic_write(out / MARKER) as tmp:  # last: the run now counts as complete
            tmp.write_text(json.dumps(meta))
        rep.line(f"results: {out / 'results.parquet'} (windows), {out / 'totals.parquet'} (timelines)")
        if getattr(logger, "location", None):
            rep.line(f"{logger.kind}: {logger.location}")
        ok = True
        best = summary.loc[summary["total_mean"].idxmin(), "solver"]
        return {"output_dir": str(out), "skipped": False, "best": best, "files": {"results": out / "results.parquet",
                "totals": out / "totals.parquet", "figures": figures},
                "summary": {r["solver"]: {k: v for k, v in r.items() if k != "solver"} for r in summary.to_dict("records")}}
    finally:
        logger.finish(exit_code=0 if ok else 1)


def _figure(curves: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, g in curves.groupby("solver", sort=False):
        ax.plot(g["window"], g["objective"], marker="o", ms=3, label=name)
    ax.set_xlabel("window")
    ax.set_ylabel("mean J over timelines (s per token)")
    ax.set_title("Re-placement policies per window")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=120)
    plt.close(fig)
    return path
